"""The evaluation report folder: ``metrics.json``, ``report.md`` (models as columns), PNG plots, and the scored
completions of each model (``completions/<n>.jsonl``)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rapo_ray.eval import plots
from rapo_ray.eval.stats import fmt_rate
from rapo_ray.judge.reward import CASES

PLOTS = ("asr_by_level.png", "reasoning_by_level.png", "overrefusal_vs_asr.png", "cases_by_level.png")


def write_report(out: Path, payload: dict[str, Any]) -> dict[str, Path]:
    """Write every report file under ``out``; returns them by name."""
    out = Path(out)
    (out / "completions").mkdir(parents=True, exist_ok=True)
    metrics = {**payload, "models": {k: {kk: vv for kk, vv in m.items() if kk != "records"}
                                     for k, m in payload["models"].items()}}
    files = {"metrics.json": out / "metrics.json", "report.md": out / "report.md"}
    files["metrics.json"].write_text(json.dumps(metrics, indent=1))
    for i, (label, m) in enumerate(payload["models"].items()):
        path = out / "completions" / f"{i}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[-60:]}.jsonl"
        with path.open("w") as f:
            for task, recs in m["records"].items():
                for r in recs:
                    f.write(json.dumps({"model": label, **r}) + "\n")
        files[f"completions/{path.name}"] = path
    files["report.md"].write_text(markdown(metrics))
    for name, draw in zip(PLOTS, (plots.asr_by_level, plots.reasoning_by_level, plots.overrefusal_vs_asr,
                                  plots.cases_by_level)):
        files[name] = draw(metrics, out / name)
    return files


def _row(name: str, values: list[str]) -> str:
    return "| " + " | ".join([name, *values]) + " |"


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return None
        d = d[k]
    return d


def markdown(metrics: dict[str, Any]) -> str:
    """The report as Markdown: one column per model, one row per metric, rates with their intervals."""
    models = metrics["models"]
    labels = list(models)
    ms = [models[k] for k in labels]
    ev = metrics["settings"]["eval"]
    conf = f"{100 * ev['confidence']:g}% {ev['interval']} interval"
    lines = ["# Safety evaluation", "",
             f"Rates are shown as `rate [{conf}] (n)`. ASR: attack success rate on harmful prompts, by the judge "
             "(no refusal, or no well-formed answer) and by \"phrases\", a second refusal detector independent of the "
             "reward's (rapo_ray/eval/keywords.py), on the visible response. "
             "Over-refusal: refusals on benign prompts.", "",
             _row("metric", [f"`{k}`" for k in labels]), "|" + "---|" * (len(labels) + 1)]

    def rate_row(name: str, *keys: str) -> None:
        vals = [_get(m, *keys) for m in ms]
        if any(v and v.get("n") for v in vals):
            lines.append(_row(name, [fmt_rate(v) for v in vals]))

    rate_row("**ASR, all harmful (judge)**", "safety", "harmful", "asr_judge")
    rate_row("**ASR, all harmful (phrases)**", "safety", "harmful", "asr_phrase")
    rate_row("**over-refusal, all benign (judge)**", "safety", "benign", "over_refusal_judge")
    rate_row("**over-refusal, all benign (phrases)**", "safety", "benign", "over_refusal_phrase")
    sets = sorted({s for m in ms for s in m["safety"]["sets"]})
    for s in sets:
        both = any(_get(m, "safety", "sets", s, "benign") and _get(m, "safety", "sets", s, "harmful") for m in ms)
        what = f"compliance on unsafe, {s}" if both else f"ASR, {s}"
        rate_row(f"{what} (judge)", "safety", "sets", s, "harmful", "asr_judge")
        rate_row(f"{what} (phrases)", "safety", "sets", s, "harmful", "asr_phrase")
        rate_row(f"over-refusal on safe, {s} (judge)", "safety", "sets", s, "benign", "over_refusal_judge")
        rate_row(f"over-refusal on safe, {s} (phrases)", "safety", "sets", s, "benign", "over_refusal_phrase")
        rate_row(f"matched pairs told apart, {s} (judge)", "safety", "sets", s, "pairs_told_apart")
        set_levels = sorted({lv for m in ms for lv in _get(m, "safety", "sets", s, "by_level") or {}}, key=int)
        for lv in set_levels if len(set_levels) > 1 else []:
            rate_row(f"ASR, {s} level {lv} (judge)", "safety", "sets", s, "by_level", lv, "asr_judge")
            rate_row(f"ASR, {s} level {lv} (phrases)", "safety", "sets", s, "by_level", lv, "asr_phrase")
    levels = sorted({lv for m in ms for lv in m["safety"]["levels"]}, key=int)
    for lv in levels:
        rate_row(f"ASR, level {lv}, all sets (judge)", "safety", "levels", lv, "asr_judge")
        rate_row(f"ASR, level {lv}, all sets (phrases)", "safety", "levels", lv, "asr_phrase")
    rate_row("well-formed think block", "safety", "well_formed")
    rate_row("cut at max tokens", "safety", "truncated")
    for lv in levels:
        vals = []
        for m in ms:
            rsum = _get(m, "safety", "levels", lv, "reasoning_sentences")
            vals.append("-" if not rsum or not rsum["n"] else
                        f"{rsum['mean']:.1f} / {rsum['median']:g} (n={rsum['n']})")
        lines.append(_row(f"safety-paragraph sentences, level {lv} (mean / median)", vals))
    for lv in levels:
        vals = []
        for m in ms:
            lvl = _get(m, "safety", "levels", lv)
            vals.append("-" if not lvl or not lvl["n"] else
                        " / ".join(f"{c[0]} {100 * lvl['cases'][c] / lvl['n']:.0f}%" for c in CASES))
        lines.append(_row(f"judge cases, level {lv} (A / F / E / P)", vals))
    tasks = sorted({t for m in ms for t in m["utility"]})
    names = {"humaneval": "HumanEval pass rate (greedy)", "gsm8k": "GSM8K exact match"}
    for t in tasks:
        rate_row(names.get(t, t), "utility", t, "correct")
        rate_row(f"{t}: well-formed think block", "utility", t, "well_formed")
    skipped = [str(m["safety"]["skipped"] + sum(u["skipped"] for u in m["utility"].values())) for m in ms]
    lines.append(_row("prompts skipped (longer than the engine's context)", skipped))
    lines += ["", "## Models", ""]
    for k, m in zip(labels, ms):
        cache = ", ".join(f"{t}: generation {c['generation']}, scores {c['scores']}" for t, c in m["cache"].items())
        lines.append(f"- `{k}`: {m['path']} (weights sha256 {m['fingerprint']['weights'][:16]}...; cache: {cache})")
    dec = metrics["settings"]["decoding"]
    lines += ["", "## Settings", "",
              f"- decoding: {json.dumps(dec)}",
              f"- judge: `{metrics['settings']['judge']['identity']}`",
              f"- prompt sets: {json.dumps(metrics['settings']['tasks'])}",
              f"- data read: {json.dumps(metrics['data'].get('sets', {}))}", "",
              "Plots: " + ", ".join(f"`{p}`" for p in PLOTS), ""]
    return "\n".join(lines)
