"""The ablation's comparison (``comparison.json`` as a dict, see ``rapo_ray.ablate``): ``report.md`` with a table
of every arm's final checkpoint and of every evaluated point, rates with their intervals, and two PNG figures
(reward and ASR against generated samples, and against step time)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from rapo_ray.eval.plots import DPI, _colors, _pct
from rapo_ray.eval.stats import fmt_rate

FIGURES = ("vs_samples.png", "vs_time.png")
ARM_NAMES = {"online": "online RAPO (on-policy GRPO)", "offline": "offline pairs + DPO",
             "stale": "online RAPO, one-step-stale policy"}


def write_comparison(root: Path, comparison: dict[str, Any]) -> dict[str, Path]:
    """Write ``comparison.json``, ``report.md`` and the figures under ``root``; returns them by name."""
    root = Path(root)
    files = {"comparison.json": root / "comparison.json", "report.md": root / "report.md"}
    files["comparison.json"].write_text(json.dumps(comparison, indent=1))
    files["report.md"].write_text(markdown(comparison))
    for name, x_key, x_label in zip(FIGURES, ("samples", "time_s"), ("generated samples", "step time (s)")):
        files[name] = curves(comparison, x_key, x_label, root / name)
    return files


def fmt_mean(d: dict[str, Any] | None) -> str:
    """A mean with its interval: ``0.412 [0.301, 0.520] (n=90)``."""
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}] (n={d['n']})"


def _row(values: list[Any]) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def markdown(c: dict[str, Any]) -> str:
    b = c["budget"]
    ev = c["start"]["eval_reward"]
    lines = ["# On-policy vs offline ablation", "",
             f"Every arm starts from `{c['start_model']}` with seed {c['seed']} and the same budget: "
             f"{b['samples']} generated samples ({b['steps']} steps x {b['prompts_per_step']} prompts x {b['n']} "
             f"samples) and {b['optimizer_steps']} optimizer steps.", "",
             f"Evaluation: the harness's prompt sets, greedy by default (`{c['eval']['report']}` holds its full "
             f"report). Eval reward: the judge's mean total reward (risk + general, in [-2, 2] for the built-in "
             f"judges) on the evaluation prompts, with a {100 * ev['confidence']:g}% bootstrap interval; rates: "
             "`rate [interval] (n)`. "
             "Step time: the summed time of the arm's steps (online: generation to weight sync; offline: sampling "
             "and judging the pairs, the reference pass and the DPO steps); elapsed: wall time of the arm's runs "
             "including start-up and checkpoints.", "",
             "## Final checkpoints", "",
             _row(["arm", "generated samples", "optimizer steps", "step time (s)", "elapsed (s)", "eval reward",
                   "ASR (judge)", "ASR (phrases)", "over-refusal (judge)", "well-formed think block"]),
             "|" + "---|" * 10]

    def cells(e: dict[str, Any]) -> list[str]:
        return [fmt_mean(e["eval_reward"]), fmt_rate(e["asr_judge"]), fmt_rate(e["asr_phrase"]),
                fmt_rate(e["over_refusal_judge"]), fmt_rate(e["well_formed"])]

    lines.append(_row(["start model", 0, 0, "-", "-", *cells(c["start"])]))
    for arm, r in c["arms"].items():
        p = r["points"][-1]
        lines.append(_row([ARM_NAMES.get(arm, arm), p["samples"], p["optimizer_steps"], f"{p['time_s']:.0f}",
                           f"{r['elapsed_s']:.0f}", *cells(p["eval"])]))
    levels = sorted({lv for r in c["arms"].values() for lv in r["points"][-1]["eval"]["asr_by_level"]}
                    | set(c["start"]["asr_by_level"]), key=int)
    if levels:
        lines += ["", "## ASR (judge) by level, final checkpoints", "",
                  _row(["arm", *[f"level {lv}" for lv in levels]]), "|" + "---|" * (len(levels) + 1)]
        finals = [("start model", c["start"])] + [(ARM_NAMES.get(a, a), r["points"][-1]["eval"])
                                                  for a, r in c["arms"].items()]
        for name, e in finals:
            lines.append(_row([name, *[fmt_rate(e["asr_by_level"].get(lv)) for lv in levels]]))
    lines += ["", "## Every evaluated checkpoint", "",
              _row(["arm", "step", "generated samples", "optimizer steps", "step time (s)", "eval reward",
                    "ASR (judge)"]), "|" + "---|" * 7]
    for arm, r in c["arms"].items():
        for p in r["points"]:
            lines.append(_row([arm, p["step"], p["samples"], p["optimizer_steps"], f"{p['time_s']:.0f}",
                               fmt_mean(p["eval"]["eval_reward"]), fmt_rate(p["eval"]["asr_judge"])]))
    lines += ["", "## Training", ""]
    for arm, r in c["arms"].items():
        curve = r["train_curve"]
        if arm == "offline":
            s, d = r["pairs"], r["dpo_final"]
            lines.append(f"- offline: {s['pairs']} pairs kept of {s['prompts']} prompts ({s['outcome']}); sampler's "
                         f"mean reward {s['reward_mean']:.3f}, chosen {s['chosen_reward_mean']:.3f}, rejected "
                         f"{s['rejected_reward_mean']:.3f}; last DPO step: loss {d['loss']:.4f}, "
                         f"accuracy {d['accuracy']:.2f}, margin {d['margin']:.4f}")
        else:
            lines.append(f"- {arm}: training reward {curve[0]['reward']:.3f} at the first step, "
                         f"{curve[-1]['reward']:.3f} at the last; max staleness "
                         f"{max((p.get('staleness') or 0) for p in curve)}")
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in FIGURES), ""]
    return "\n".join(lines)


def curves(c: dict[str, Any], x_key: str, x_label: str, path: Path) -> Path:
    """Three panels against ``x_key``: the reward of the samples trained on (offline: the fixed sampler's, while
    the pairs are collected), the evaluation reward and the ASR (judge) of each evaluated checkpoint, the start
    model at 0 in every arm, with their intervals."""
    fig = Figure(figsize=(17, 4.8), layout="constrained")
    ax_train, ax_rew, ax_asr = fig.subplots(1, 3)
    start = {"samples": 0, "time_s": 0.0, "eval": c["start"]}
    arms = list(c["arms"].items())
    x_max = max([p[x_key] for _, r in arms for p in r["points"] + r["train_curve"]] + [1e-9])
    for i, ((arm, r), color) in enumerate(zip(arms, _colors(len(arms)))):
        name = ARM_NAMES.get(arm, arm)
        marker = "os^Dv"[i % 5]
        tc = r["train_curve"]
        ax_train.plot([p[x_key] for p in tc], [p["reward"] for p in tc], marker=marker, ms=4, color=color, label=name,
                      linestyle="--" if arm == "offline" else "-", alpha=0.85)
        pts = [start] + r["points"]
        dodge = (i - (len(arms) - 1) / 2) * 0.012 * x_max  # arms side by side where their points coincide
        xs = [p[x_key] + dodge for p in pts]
        rew = [p["eval"]["eval_reward"] for p in pts]
        mean = [e["mean"] if e["mean"] is not None else math.nan for e in rew]
        err = [[m - e["low"] if e["low"] is not None else 0.0 for m, e in zip(mean, rew)],
               [e["high"] - m if e["high"] is not None else 0.0 for m, e in zip(mean, rew)]]
        ax_rew.errorbar(xs, mean, yerr=err, marker=marker, ms=4, capsize=3, color=color, label=name)
        asr = [_pct(p["eval"]["asr_judge"]) for p in pts]
        ax_asr.errorbar(xs, [a[0] for a in asr], yerr=[[a[1] for a in asr], [a[2] for a in asr]], marker=marker,
                        ms=4, capsize=3, color=color, label=name)
    titles = ("reward of the training samples", "eval reward (mean, bootstrap interval)",
              "ASR by the judge (Wilson interval)")
    for ax, title, ylabel in zip((ax_train, ax_rew, ax_asr), titles, ("mean total reward", "mean total reward",
                                                                      "ASR (%)")):
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_asr.set_ylim(-2, 102)
    fig.suptitle(f"Ablation from {Path(c['start_model']).name}: {c['budget']['samples']} samples, "
                 f"{c['budget']['optimizer_steps']} optimizer steps per arm")
    fig.savefig(path, dpi=DPI)
    return path
