"""``rapo-ray dpo``: a DPO-family loss (``pairs.loss``: dpo or ipo) on offline pairs, trained by the online stage's
DeepSpeed learner group (``LearnerGroup.train(pairs, objective="dpo")``: no second trainer).

Reference log-probs: with ``pairs.reference: precomputed`` they are computed once before the first step, by the
learner group still holding the starting weights (a resumed run recomputes the same values before it loads its
checkpoint); with ``frozen`` every learner keeps a frozen copy of the starting weights. Each optimizer step takes
``pairs.pairs_per_step`` pairs, in a seeded permutation per pass over the pairs. The run (checkpoints every
``checkpoint.every`` steps and at the end, mirrored under ``checkpoint.upload_uri`` as ``<name>/dpo``; metrics;
resume) is a ``rapo_ray.run.Run``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rapo_ray.config import JobConfig
from rapo_ray.learner import LearnerGroup
from rapo_ray.models import resolve_model
from rapo_ray.pairs import cmd_pairs, load_pairs, pair_samples, pairs_dir, resolve_start_model
from rapo_ray.run import Run
from rapo_ray.runtime import init_ray
from rapo_ray.types import Sample

REF_CHUNK = 64  # samples per reference log-prob call


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


def precompute_reference(learners: LearnerGroup, samples: list[Sample], chunk: int = REF_CHUNK) -> None:
    """Every sample's reference log-probs, from the learners still holding the starting weights, ``chunk``
    samples per call (one call over every pair outlasted the learner call timeout on a CPU: 436 sequences)."""
    for i in tqdm(range(0, len(samples), chunk), desc="dpo reference", unit="chunk"):
        part = samples[i:i + chunk]
        for s, lp in zip(part, learners.compute_logprobs(part, temperature=1.0)):
            s.ref_logprobs = lp


def learner_config(cfg: JobConfig) -> JobConfig:
    """The job config the learners run with: ``pairs.lr`` when set; no KL term (the loss holds the reference)."""
    learner = cfg.learner.model_copy(update={"lr": cfg.pairs.lr or cfg.learner.lr})
    return cfg.model_copy(update={"learner": learner, "algo": cfg.algo.model_copy(update={"kl_coef": 0.0})})


def train_dpo(cfg: JobConfig, resume: bool = False) -> Path:
    """Train on the complete pairs folder ``pairs_dir(cfg)`` from ``pairs.model`` (resolved like the pairs' sampler);
    returns the final checkpoint (an HF model folder). A run whose final checkpoint exists is left as it is."""
    pairs = load_pairs(pairs_dir(cfg))
    steps = total_steps(cfg, len(pairs))
    run = Run(cfg, dpo_dir(cfg), "dpo", steps, resume, upload_name=f"{cfg.name}/dpo", desc=cfg.pairs.loss)
    if run.finished:
        print(f"dpo: {run.latest} reached {steps} steps; skipped")
        return run.latest
    run.begin()
    model_path = str(resolve_model(resolve_start_model(cfg, cfg.pairs.model)))
    samples = pair_samples(pairs)
    init_ray()
    learners = LearnerGroup(learner_config(cfg), model_path)
    with run.loop(learners.kill):
        t0 = time.perf_counter()
        if cfg.pairs.reference == "precomputed":
            precompute_reference(learners, samples)
        ref_s = time.perf_counter() - t0
        run.restore(learners)
        run.log({"dpo/pairs_total": len(pairs), "timing/ref": ref_s})
        for step in run.steps():
            idx = batch_indices(len(pairs), cfg.pairs.pairs_per_step, step, cfg.seed)
            t = time.perf_counter()
            m = learners.train([s for k in idx for s in samples[2 * k:2 * k + 2]], objective=cfg.pairs.loss)
            run.log({f"dpo/{k}": v for k, v in m.items()} | {"timing/step": time.perf_counter() - t},
                    loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}", margin=f"{m['margin']:.3f}")
            run.maybe_save(learners)
    final = run.final_checkpoint()
    print(f"dpo: model at {final}")
    return final


def cmd_dpo(cfg: JobConfig, resume: bool = False) -> Path:
    """``rapo-ray dpo CONFIG``: build the pairs when they are not complete yet, then train on them."""
    cmd_pairs(cfg)
    return train_dpo(cfg, resume=resume)
