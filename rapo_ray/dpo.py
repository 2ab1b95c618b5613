"""``rapo-ray dpo``: a DPO-family loss (``pairs.loss``: dpo or ipo) on offline pairs, trained by the online stage's
DeepSpeed learner group (``LearnerGroup.train(pairs, objective="dpo")``: no second trainer).

Reference log-probs: with ``pairs.reference: precomputed`` they are computed once before the first step, by the
learner group still holding the starting weights (a resumed run recomputes the same values before it loads its
checkpoint); with ``frozen`` every learner keeps a frozen copy of the starting weights. Each optimizer step takes
``pairs.pairs_per_step`` pairs, in a seeded permutation per pass over the pairs. Checkpoints (HF model folders,
``CheckpointManager``) every ``checkpoint.every`` steps and at the end; metrics to ``metrics.jsonl``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rapo_ray.checkpoint import CheckpointManager
from rapo_ray.config import JobConfig
from rapo_ray.learner import LearnerGroup
from rapo_ray.metrics import MetricsLogger
from rapo_ray.models import resolve_model
from rapo_ray.pairs import cmd_pairs, load_pairs, pair_samples, pairs_dir, resolve_start_model
from rapo_ray.runtime import init_ray


def dpo_dir(cfg: JobConfig) -> Path:
    return Path(cfg.pairs.dpo_dir or Path(cfg.output_dir) / "dpo")


def total_steps(cfg: JobConfig, n_pairs: int) -> int:
    """``pairs.steps``, else one pass over the pairs."""
    return cfg.pairs.steps or math.ceil(n_pairs / cfg.pairs.pairs_per_step)


def batch_indices(n_pairs: int, per_step: int, step: int, seed: int) -> list[int]:
    """The pairs of optimizer step ``step``: passes over the pairs, each in its own seeded order; a pass's last
    batch may be smaller."""
    per_pass = math.ceil(n_pairs / per_step)
    epoch, i = divmod(step, per_pass)
    order = np.random.default_rng([seed, 11, epoch]).permutation(n_pairs)
    return order[i * per_step:(i + 1) * per_step].tolist()


def learner_config(cfg: JobConfig) -> JobConfig:
    """The job config the learners run with: ``pairs.lr`` when set; no KL term (the loss holds the reference)."""
    learner = cfg.learner.model_copy(update={"lr": cfg.pairs.lr or cfg.learner.lr})
    return cfg.model_copy(update={"learner": learner, "algo": cfg.algo.model_copy(update={"kl_coef": 0.0})})


def train_dpo(cfg: JobConfig, resume: bool = False) -> Path:
    """Train on the complete pairs folder ``pairs_dir(cfg)`` from ``pairs.model`` (resolved like the pairs' sampler);
    returns the final checkpoint (an HF model folder). A run whose final checkpoint exists is left as it is."""
    pairs = load_pairs(pairs_dir(cfg))
    steps = total_steps(cfg, len(pairs))
    out = dpo_dir(cfg)
    ckpts = CheckpointManager(out, max(cfg.checkpoint.keep_last, 1))
    latest = ckpts.latest() if resume else None
    start = CheckpointManager.load_state(latest)["step"] if latest else 0
    if start >= steps:
        print(f"dpo: {latest} reached {steps} steps; skipped")
        return latest
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    model_path = str(resolve_model(resolve_start_model(cfg, cfg.pairs.model)))
    samples = pair_samples(pairs)
    init_ray()
    learners = LearnerGroup(learner_config(cfg), model_path)
    log = MetricsLogger(out)
    try:
        t0 = time.perf_counter()
        if cfg.pairs.reference == "precomputed":
            for s, lp in zip(samples, learners.compute_logprobs(samples, temperature=1.0)):
                s.ref_logprobs = lp
        ref_s = time.perf_counter() - t0
        if latest:
            learners.load_checkpoint(str(latest))
        log.log(start, {"dpo/pairs_total": len(pairs), "timing/ref": ref_s})
        bar = tqdm(range(start, steps), desc=cfg.pairs.loss, initial=start, total=steps, dynamic_ncols=True)
        for step in bar:
            idx = batch_indices(len(pairs), cfg.pairs.pairs_per_step, step, cfg.seed)
            batch = [s for k in idx for s in samples[2 * k:2 * k + 2]]
            t = time.perf_counter()
            m = learners.train(batch, objective=cfg.pairs.loss)
            metrics: dict[str, Any] = {f"dpo/{k}": v for k, v in m.items()}
            metrics["timing/step"] = time.perf_counter() - t
            log.log(step + 1, metrics)
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}", margin=f"{m['margin']:.3f}")
            every = cfg.checkpoint.every
            if (every and (step + 1) % every == 0) or step + 1 == steps:
                ckpts.save(step + 1, learners, {"step": step + 1})
    finally:
        log.close()
        learners.kill()
    final = ckpts.latest()
    if final is None or CheckpointManager.load_state(final)["step"] != steps:
        raise RuntimeError(f"dpo: no complete final checkpoint under {out / 'checkpoints'}")
    print(f"dpo: model at {final}")
    return final


def cmd_dpo(cfg: JobConfig, resume: bool = False) -> Path:
    """``rapo-ray dpo CONFIG``: build the pairs when they are not complete yet, then train on them."""
    cmd_pairs(cfg)
    return train_dpo(cfg, resume=resume)
