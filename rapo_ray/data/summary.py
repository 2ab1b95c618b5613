"""``rapo-ray data inspect CONFIG``: what a job's data recipe yields, as text."""
from __future__ import annotations

from typing import Any

from rapo_ray.config import JobConfig
from rapo_ray.data.recipe import build_prompt_set

SAMPLE_CHARS = 160


def _table(title: str, counts: dict[str, Any]) -> list[str]:
    return [f"  {title}: " + ", ".join(f"{k}={v}" for k, v in counts.items())]


def inspect_report(cfg: JobConfig, tokenizer: Any = None, samples: int = 5) -> str:
    """Per-set read/dropped/kept counts, train/eval (dev)/test counts by source, level and label, sample rows."""
    ps = build_prompt_set(cfg.data, cfg.seed, tokenizer)
    rep = ps.report
    lines = [f"data root: {rep['root']}   prompt limit: {rep['max_prompt_tokens']} tokens ({rep['token_count']})",
             "sets:"]
    for key, s in rep["sets"].items():
        dropped = ", ".join(f"{k}={v}" for k, v in s["dropped"].items()) or "none"
        lines.append(f"  {key} ({s['name']}): read {s['read']}, kept {s['kept']}, dropped: {dropped}")
    sp = rep["split"]
    lines.append(f"split (seed {sp['split_seed']}): dev (eval) {sp['dev_fraction']:g} of each source's behaviours, "
                 f"test {sp['test_fraction']:g} by behaviour hash")
    for split in ("train", "eval", "test"):
        c = rep[split]
        lines.append(f"{split}: {c['rows']} rows")
        for name in ("by_source", "by_level", "by_label"):
            lines += _table(name[3:], c[name])
    lines.append(f"sample rows ({min(samples, len(ps.train))} of train):")
    for r in ps.train[:samples]:
        text = " ".join(r["prompt"].split())
        text = text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS - 3] + "..."
        lines.append(f"  [{r['source']} level={r['level']} harmful={r['harmful_label']}] {r['id']}: {text}")
    return "\n".join(lines)
