"""``rapo-ray report RUN_DIR``: a training run's curves from its ``metrics.jsonl`` (one JSON object per step,
written by the driver). Plots go to ``RUN_DIR/report/``; a line that is not valid JSON is skipped and counted."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rapo_ray.eval.plots import DPI, _colors

GROUPS = ("all", "level1", "level2", "level3", "harmful", "benign")
PHASES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor", "update_weights")


class ReportError(ValueError):
    """A run folder without usable metrics."""


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(rows with a numeric ``step``, number of lines skipped as unreadable)."""
    if not path.is_file():
        raise ReportError(f"{path} not found: a training run writes metrics.jsonl in its run folder")
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
        else:
            bad += 1
    if not rows:
        raise ReportError(f"{path} holds no step metrics ({bad} unreadable lines)")
    return sorted(rows, key=lambda r: r["step"]), bad


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, leaving out steps where it is missing or not a finite number."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _panel(ax: Any, rows: list[dict[str, Any]], lines: dict[str, str], title: str, ylabel: str) -> int:
    """Draw ``{legend label: metric key}`` on ``ax``; returns how many series had data."""
    drawn = 0
    for (name, key), color in zip(lines.items(), _colors(len(lines))):
        xs, ys = series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, color=color, label=name)
            drawn += 1
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes, color="gray")
    return drawn


def _figure(path: Path, panels: list[tuple[dict[str, str], str, str]], rows: list[dict[str, Any]]) -> int:
    fig = Figure(figsize=(6.0 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    drawn = sum(_panel(ax, rows, *p) for ax, p in zip(axes, panels))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return drawn


def cmd_report(run_dir: str | Path) -> Path:
    """Draw the run's reward, refusal, length and phase-time curves into ``RUN_DIR/report``; returns it."""
    run_dir = Path(run_dir)
    rows, bad = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    comp = {c: f"reward/all/{c}" for c in ("total", "risk", "general")}
    figures = {
        "rewards.png": [(comp, "Reward by component (all prompts)", "mean reward"),
                        ({g: f"reward/{g}/total" for g in GROUPS}, "Total reward by group", "mean total reward")],
        "rewards_by_level.png": [({g: f"reward/{g}/risk" for g in GROUPS}, "Risk-aware reward by group",
                                  "mean risk reward"),
                                 ({g: f"reward/{g}/general" for g in GROUPS}, "General reward by group",
                                  "mean general reward")],
        "refusal.png": [({g: f"refusal_rate/{g}" for g in GROUPS}, "Refusal rate by group", "share refused")],
        "lengths.png": [({"response tokens (mean)": "response_length/mean"}, "Completion length", "tokens"),
                        ({g: f"reasoning_sentences/{g}" for g in GROUPS}, "Safety reasoning length by group",
                         "sentences (mean)")],
        "timing.png": [({p: f"timing/{p}" for p in PHASES}, "Time per phase", "seconds per step")],
    }
    drawn = {name: _figure(out / name, panels, rows) for name, panels in figures.items()}
    first, last = rows[0], rows[-1]
    lines = [f"# Training run `{run_dir}`", "", f"{len(rows)} steps logged ({first['step']} to {last['step']}); "
             f"{bad} unreadable lines skipped.", "", "| metric | first step | last step |", "|---|---|---|"]
    for key in ("reward/all/total", "reward/all/risk", "reward/all/general", "refusal_rate/harmful",
                "refusal_rate/benign", "response_length/mean"):
        a, b = first.get(key), last.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            lines.append(f"| {key} | {a:.3f} | {b:.3f} |")
    lines += ["", "Plots: " + ", ".join(f"`{n}` ({d} series)" for n, d in drawn.items()), ""]
    (out / "report.md").write_text("\n".join(lines))
    print(f"training report: {out}")
    return out
