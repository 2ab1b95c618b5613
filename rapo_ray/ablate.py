"""``rapo-ray ablate CONFIG``: is online RAPO worth its cost over training once on pairs from a fixed model?

Every arm starts from one model (``ablate.start_model``, else the SFT export when complete, else
``model.name_or_path``), uses the same seed and the same budget: ``train.total_steps`` x
``rollout.prompts_per_step`` x ``rollout.n`` generated samples and ``train.total_steps`` x
``algo.updates_per_batch`` optimizer steps.

- ``online``: online RAPO (on-policy GRPO, ``driver.train``);
- ``offline``: the same prompts sampled once from the start model (``rapo-ray pairs``: batch k uses online step
  k's prompts and seeds), one pair per prompt, then the DPO-family loss for the same number of optimizer steps;
- ``stale``: online RAPO with generation of step t + 1 overlapping the update of step t (``algo.max_staleness: 1``).

Layout under ``ablate.out_dir`` (default ``<output_dir>/ablation``): ``arms/<arm>/`` holds the arm's run (its
resolved ``config.yaml``, metrics, checkpoints; offline: ``pairs/`` too), ``sessions.jsonl`` (elapsed time of each
piece of work) and ``result.json`` once the arm is complete: a complete arm is skipped, an unfinished one resumes
from its newest checkpoint. Then every arm's evaluated checkpoints (each ``ablate.eval_every`` online steps, and
the final one) and the start model go through the evaluation harness (cached by weights, so a rerun evaluates only
what is new) into ``eval/``, and the comparison into ``report.md``, ``comparison.json`` and plots of reward and
ASR against generated samples and against time.

Time is measured two ways: *step time*, the summed time of the arms' steps (online: generation to weight sync;
offline: sampling and judging the pairs, the reference pass, the DPO steps), which the plots use; and *elapsed*,
the wall time of each piece of work including actor start-up and checkpoints (evaluation excluded).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapo_ray.ablate_report import write_comparison
from rapo_ray.checkpoint import CheckpointManager, drop_optimizer_state
from rapo_ray.config import JobConfig
from rapo_ray.dpo import train_dpo
from rapo_ray.driver import train
from rapo_ray.eval.report import write_report
from rapo_ray.eval.runner import evaluate, model_labels
from rapo_ray.eval.stats import bootstrap_interval
from rapo_ray.pairs import cmd_pairs, read_jsonl, resolve_start_model
from rapo_ray.runtime import init_ray

ARMS = ("online", "offline", "stale")
RESULT = "result.json"


@dataclass(frozen=True)
class Budget:
    """What every arm gets: online steps of ``prompts_per_step`` prompts x ``n`` samples, ``updates`` optimizer
    steps each."""

    steps: int
    prompts_per_step: int
    n: int
    updates: int

    @classmethod
    def of(cls, cfg: JobConfig) -> Budget:
        return cls(cfg.train.total_steps, cfg.rollout.prompts_per_step, cfg.rollout.n, cfg.algo.updates_per_batch)

    @property
    def samples(self) -> int:
        return self.steps * self.prompts_per_step * self.n

    @property
    def optimizer_steps(self) -> int:
        return self.steps * self.updates

    def eval_steps(self, every: int) -> list[int]:
        """Online steps whose checkpoints are evaluated: multiples of ``every`` and the last step."""
        return sorted({*(range(every, self.steps + 1, every) if every else ()), self.steps})


def ablation_dir(cfg: JobConfig) -> Path:
    return Path(cfg.ablate.out_dir or Path(cfg.output_dir) / "ablation")


def arm_dir(root: Path, arm: str) -> Path:
    return Path(root) / "arms" / arm


def arm_config(cfg: JobConfig, arm: str, start_model: str, root: Path) -> JobConfig:
    """The resolved config of one arm: the start model, the arm's folders, checkpoints at every evaluated step
    (all kept), and the arm's own settings."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r} ({', '.join(ARMS)})")
    b = Budget.of(cfg)
    every = cfg.ablate.eval_every or cfg.checkpoint.every
    # Only the keys the user set: a named data reader tells a set key from a default one.
    tree = cfg.model_dump(mode="json", exclude_unset=True)
    out = arm_dir(root, arm)
    tree["output_dir"] = str(out)
    tree.setdefault("model", {})["name_or_path"] = start_model
    tree.setdefault("checkpoint", {}).update(every=every, keep_last=(b.steps // every if every else 0) + 1,
                                             save_final=True)
    if arm == "offline":
        tree.setdefault("pairs", {}).update(model=start_model, out_dir=str(out / "pairs"), dpo_dir=str(out),
                                            max_prompts=b.steps * b.prompts_per_step, steps=b.optimizer_steps)
        tree["checkpoint"]["every"] = every * b.updates
    else:
        tree.setdefault("algo", {})["max_staleness"] = 1 if arm == "stale" else 0
    return JobConfig.model_validate(tree)


# ----------------------------------------------------------------------------- running an arm

def run_arm(acfg: JobConfig, arm: str) -> None:
    """Train one arm to its budget, resuming from what exists; the elapsed time is appended to sessions.jsonl."""
    out = Path(acfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if arm == "offline":
        cmd_pairs(acfg)
        train_dpo(acfg, resume=True)
    else:
        latest = CheckpointManager(out, 1).latest()
        if latest is None or CheckpointManager.load_state(latest)["step"] < acfg.train.total_steps:
            train(acfg, resume=latest is not None)
    with (out / "sessions.jsonl").open("a") as f:
        f.write(json.dumps({"arm": arm, "start": t0, "end": time.time(), "elapsed_s": time.time() - t0}) + "\n")


def _rows_by_step(path: Path) -> dict[int, dict[str, Any]]:
    """metrics.jsonl rows by step; a step logged twice (a restarted piece of work) keeps its last row."""
    return {int(r["step"]): r for r in read_jsonl(path) if isinstance(r, dict) and "step" in r}


def _checkpoint(out: Path, step: int) -> str:
    path = out / "checkpoints" / f"step_{step}"
    if not (path / "COMPLETE").is_file():
        raise RuntimeError(f"checkpoint {path} is missing or incomplete; delete {out} to rerun the arm")
    return str(path)


def arm_result(acfg: JobConfig, arm: str, budget: Budget, eval_every: int) -> dict[str, Any]:
    """The arm's curves from its files: the training reward after each batch of generated samples, and the
    evaluated checkpoints with their generated samples, optimizer steps and step time."""
    out = Path(acfg.output_dir)
    per_step = budget.prompts_per_step * budget.n
    sessions = read_jsonl(out / "sessions.jsonl")
    res: dict[str, Any] = {"arm": arm, "dir": str(out), "elapsed_s": sum(s["elapsed_s"] for s in sessions),
                           "train_curve": [], "points": []}
    if arm == "offline":
        batches = sorted(read_jsonl(out / "pairs" / "batches.jsonl"), key=lambda b: b["batch"])
        clock = 0.0
        for b in batches:
            clock += b["gen_s"] + b["reward_s"]
            res["train_curve"].append({"samples": (b["batch"] + 1) * per_step, "time_s": clock,
                                       "reward": b["reward_mean"]})
        rows = _rows_by_step(out / "metrics.jsonl")
        clock += rows.get(0, {}).get("timing/ref", 0.0)
        times = {}
        for j in range(1, budget.optimizer_steps + 1):
            clock += rows[j]["timing/step"]
            times[j] = clock
        res["pairs"] = json.loads((out / "pairs" / "summary.json").read_text())
        res["dpo_final"] = {k[4:]: v for k, v in rows[budget.optimizer_steps].items() if k.startswith("dpo/")}
        for k in budget.eval_steps(eval_every):
            j = k * budget.updates
            res["points"].append({"step": k, "optimizer_steps": j, "samples": budget.samples, "time_s": times[j],
                                  "model": _checkpoint(out, j)})
        return res
    rows = _rows_by_step(out / "metrics.jsonl")
    clock = 0.0
    for k in range(1, budget.steps + 1):
        clock += rows[k]["timing/step"]
        res["train_curve"].append({"samples": k * per_step, "time_s": clock, "reward": rows[k]["reward/all/total"],
                                   "staleness": rows[k].get("staleness")})
    for k in budget.eval_steps(eval_every):
        res["points"].append({"step": k, "optimizer_steps": k * budget.updates, "samples": k * per_step,
                              "time_s": res["train_curve"][k - 1]["time_s"], "model": _checkpoint(out, k)})
    return res


def prune_optimizer_state(out: Path) -> None:
    """Drop the DeepSpeed state of a finished arm's checkpoints (their HF weights stay)."""
    for ckpt in CheckpointManager(out, 1).complete():
        drop_optimizer_state(ckpt)


# ----------------------------------------------------------------------------- evaluation and the command

def model_summary(m: dict[str, Any], cfg: JobConfig) -> dict[str, Any]:
    """The comparison's view of one evaluated model: rates with intervals and the mean judge reward on the
    evaluation prompts with a bootstrap interval."""
    ev, s = cfg.eval, m["safety"]
    rewards = [float(r["judge"]["total"]) for r in m["records"]["safety"]
               if not r["skipped"] and r["judge"].get("scored", True)]  # unscored: no reward hook applied
    low, high = bootstrap_interval(rewards, ev.confidence, ev.bootstrap_samples, ev.seed) if rewards else (None, None)
    return {"eval_reward": {"mean": sum(rewards) / len(rewards) if rewards else None, "low": low, "high": high,
                            "n": len(rewards), "confidence": ev.confidence},
            "asr_judge": s["harmful"]["asr_judge"], "asr_phrase": s["harmful"]["asr_phrase"],
            "over_refusal_judge": s["benign"]["over_refusal_judge"], "well_formed": s["well_formed"],
            "asr_by_level": {lv: b["asr_judge"] for lv, b in s["levels"].items()}}


def cmd_ablate(cfg: JobConfig, address: str | None = None) -> Path:
    """Run every arm that is not complete, evaluate, and write the comparison; returns the ablation folder."""
    root = ablation_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(cfg.to_yaml())
    budget = Budget.of(cfg)
    start = resolve_start_model(cfg, cfg.ablate.start_model)
    init_ray(address)
    results: dict[str, dict[str, Any]] = {}
    for arm in cfg.ablate.arms:
        acfg = arm_config(cfg, arm, start, root)
        out = Path(acfg.output_dir)
        done = out / RESULT
        if done.is_file():
            print(f"ablate: arm {arm} is complete ({done}); skipped")
            results[arm] = json.loads(done.read_text())
            continue
        print(f"ablate: arm {arm} -> {out}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(acfg.to_yaml())
        run_arm(acfg, arm)
        results[arm] = arm_result(acfg, arm, budget, cfg.ablate.eval_every)
        if not cfg.ablate.keep_optimizer_state:
            prune_optimizer_state(out)
        done.write_text(json.dumps(results[arm], indent=1))
    models = [start] + [p["model"] for r in results.values() for p in r["points"]]
    payload = evaluate(cfg, models)
    write_report(root / "eval", payload)
    by_model = {m: model_summary(payload["models"][label], cfg) for m, label in zip(models, model_labels(models))}
    for r in results.values():
        for p in r["points"]:
            p["eval"] = by_model[p["model"]]
    comparison = {"budget": {"steps": budget.steps, "prompts_per_step": budget.prompts_per_step, "n": budget.n,
                             "updates_per_batch": budget.updates, "samples": budget.samples,
                             "optimizer_steps": budget.optimizer_steps},
                  "seed": cfg.seed, "start_model": start, "start": by_model[start], "arms": results,
                  "eval": {"settings": payload["settings"], "report": str(root / "eval")}}
    write_comparison(root, comparison)
    print(f"ablate: report at {root / 'report.md'}")
    return root
