"""Plots of an evaluation (``metrics.json`` as a dict), drawn with matplotlib's object API (Agg, no pyplot
state, no display needed). Every plot has a title, axis labels and a legend naming the models."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rapo_ray.judge.reward import CASES

DPI = 120
_CASE_COLORS = {"Adequate": "#2e7d32", "Fair": "#f9a825", "Excessive": "#ef6c00", "Poor": "#c62828"}


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _levels(metrics: dict[str, Any]) -> list[str]:
    return sorted({lv for m in metrics["models"].values() for lv in m["safety"]["levels"]}, key=int)


def _pct(rate: dict[str, Any] | None) -> tuple[float, float, float]:
    """(rate, lower error, upper error) in percent; nan when there is no rate."""
    if not rate or not rate.get("n"):
        return np.nan, 0.0, 0.0
    r = 100 * rate["rate"]
    return r, r - 100 * rate["low"], 100 * rate["high"] - r


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _short(label: str, width: int = 24) -> str:
    """The last path component of a model label (the whole label when it is short)."""
    if len(label) <= width:
        return label
    name = Path(label).name or label
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="gray")


def _grouped_bars(ax: Any, groups: list[str], series: dict[str, list[tuple[float, float, float]]]) -> None:
    """Bars per group (x) and series (color) with asymmetric error bars."""
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, ((name, vals), color) in enumerate(zip(series.items(), _colors(len(series)))):
        ys = [v[0] for v in vals]
        err = [[v[1] for v in vals], [v[2] for v in vals]]  # plain lists: numpy rows of one trip a numpy warning
        ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, yerr=err, capsize=3, label=name, color=color)
    ax.set_xticks(x, groups)


def asr_by_level(metrics: dict[str, Any], path: Path) -> Path:
    """ASR on harmful prompts by level, one bar per model, by the judge and by refusal phrases."""
    levels = _levels(metrics)
    fig = _figure(11, 5)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, how in zip(axes, ("asr_judge", "asr_phrase"), ("judge", "refusal phrases")):
        series = {label: [_pct(m["safety"]["levels"].get(lv, {}).get(key)) for lv in levels]
                  for label, m in metrics["models"].items()}
        if levels:
            _grouped_bars(ax, [f"level {lv}" for lv in levels], series)
        else:
            _no_data(ax, "harmful prompts")
        ax.set_title(f"Attack success by level, all harmful prompts ({how})")
        ax.set_xlabel("prompt risk level")
        ax.set_ylabel("attack success rate (%)")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    if levels:
        fig.legend(*axes[0].get_legend_handles_labels(), title=f"model (bars: rate; whiskers: "
                   f"{metrics['settings']['eval']['interval']} interval)", loc="outside lower center",
                   ncol=min(3, len(metrics["models"])), fontsize=8)
    return _save(fig, path)


def _column(stats: list[dict[str, Any]], key: str) -> list[float]:
    return [st[key] if st.get(key) is not None else np.nan for st in stats]


def reasoning_by_level(metrics: dict[str, Any], path: Path) -> Path:
    """Safety-paragraph sentence counts by level: mean (bars), median (dots) and interquartile range (lines), with
    the adequate band of the judge's level table shaded."""
    levels = _levels(metrics)
    fig = _figure(8, 5)
    ax = fig.subplots()
    bands = metrics["settings"]["judge"]["settings"].get("levels", {})
    x = np.arange(len(levels))
    n_models = len(metrics["models"])
    width = 0.8 / max(1, n_models)
    open_ended = []  # bands with no upper bound: shaded up to the top of the axes once the data is drawn
    for j, lv in enumerate(levels):
        band = bands.get(lv) or bands.get(str(max(int(k) for k in bands))) if bands else None
        if band and band.get("max_sentences") is None:
            open_ended.append((j, band["min_sentences"]))
        elif band:
            ax.fill_between([j - 0.45, j + 0.45], band["min_sentences"], band["max_sentences"], color="#2e7d32",
                            alpha=0.12, label="adequate band (judge table)" if j == 0 else None)
    for i, ((label, m), color) in enumerate(zip(metrics["models"].items(), _colors(n_models))):
        stats = [m["safety"]["levels"].get(lv, {}).get("reasoning_sentences") or {} for lv in levels]
        xs = x + (i - (n_models - 1) / 2) * width
        ax.bar(xs, _column(stats, "mean"), width, color=color, label=f"{label} (mean)")
        ax.vlines(xs, _column(stats, "p25"), _column(stats, "p75"), color="black", lw=1.5,
                  label="interquartile range" if i == n_models - 1 else None)
        ax.scatter(xs, _column(stats, "median"), color="black", marker="D", s=18, zorder=3,
                   label="median" if i == n_models - 1 else None)
    if open_ended:
        top = max(ax.get_ylim()[1], max(lo for _, lo in open_ended) + 2)
        for j, lo in open_ended:
            ax.fill_between([j - 0.45, j + 0.45], lo, top, color="#2e7d32", alpha=0.12,
                            label="adequate band (judge table)" if j == 0 else None)
        ax.set_ylim(top=top)
    if not levels:
        _no_data(ax, "judged completions")
    ax.set_xticks(x, [f"level {lv}" for lv in levels])
    ax.set_title("Safety reasoning length by prompt level")
    ax.set_xlabel("prompt risk level")
    ax.set_ylabel("sentences in the first thinking paragraph")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    return _save(fig, path)


def overrefusal_vs_asr(metrics: dict[str, Any], path: Path) -> Path:
    """One point per model: over-refusal on benign prompts (x) against ASR on harmful prompts (y); lower left is
    better. Filled: judge; hollow: refusal phrases."""
    fig = _figure(7, 6.5)
    ax = fig.subplots()
    drawn = False
    for (label, m), color in zip(metrics["models"].items(), _colors(len(metrics["models"]))):
        for src, face, how in (("judge", color, "judge"), ("phrase", "none", "phrases")):
            x, xl, xh = _pct(m["safety"]["benign"][f"over_refusal_{src}"])
            y, yl, yh = _pct(m["safety"]["harmful"][f"asr_{src}"])
            if np.isnan(x) or np.isnan(y):
                continue
            drawn = True
            ax.errorbar([x], [y], xerr=[[xl], [xh]], yerr=[[yl], [yh]], fmt="o", ms=9, mfc=face, mec=color,
                        color=color, capsize=3, label=f"{label} ({how})")
            if src == "judge":
                ax.annotate(_short(label), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if not drawn:
        _no_data(ax, "model with both harmful and benign prompts")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_title("Over-refusal vs attack success (lower left is better)")
    ax.set_xlabel("over-refusal on benign prompts (%)")
    ax.set_ylabel("attack success on harmful prompts (%)")
    ax.grid(alpha=0.3)
    if drawn:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    return _save(fig, path)


def cases_by_level(metrics: dict[str, Any], path: Path) -> Path:
    """The judge's case distribution (Adequate, Fair, Excessive, Poor) by level, one stacked bar per model."""
    levels = _levels(metrics)
    labels = list(metrics["models"])
    fig = _figure(max(6.0, 1.2 * len(levels) * len(labels) + 2), 4.8)
    ax = fig.subplots()
    ticks, names = [], []
    pos = 0.0
    for lv in levels:
        for label in labels:
            lvl = metrics["models"][label]["safety"]["levels"].get(lv)
            bottom = 0.0
            for case in CASES:
                share = 100 * lvl["cases"][case] / lvl["n"] if lvl and lvl["n"] else 0.0
                ax.bar(pos, share, 0.8, bottom=bottom, color=_CASE_COLORS[case],
                       label=case if pos == 0.0 else None)
                bottom += share
            ticks.append(pos)
            names.append(f"L{lv}\n{_short(label, 22)}")
            pos += 1.0
        pos += 0.6
    if not levels:
        _no_data(ax, "judged completions")
    ax.set_xticks(ticks, names, fontsize=7)
    ax.set_title("Judge's reasoning case by level and model")
    ax.set_xlabel("level / model")
    ax.set_ylabel("share of completions (%)")
    ax.set_ylim(0, 100)
    if levels:
        fig.legend(*ax.get_legend_handles_labels(), title="case", fontsize=8, loc="outside right upper")
    return _save(fig, path)
