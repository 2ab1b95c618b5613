"""``rapo-ray judge CONFIG --input FILE.jsonl --output OUT.jsonl``: score a JSONL with the configured judge.

Each output line is the row's reward breakdown plus ``refused_text``: the rule refusal detector's verdict on
what a user would read (the answer when the think block closed, else the whole completion). For a model that
does not think (no think block) the reward still follows RAPO (no closed think block: no answer, general -1),
but ``refused_text`` says whether its plain reply declined.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rapo_ray import atomic
from rapo_ray.config import JobConfig
from rapo_ray.judge.pool import JudgePool
from rapo_ray.judge.refusal import detect_refusal
from rapo_ray.judge.reward import JudgeError, RewardBreakdown, prepare_row, split_completion
from rapo_ray.runtime import init_ray


def read_rows(path: str | Path, cfg: JobConfig) -> list[dict[str, Any]]:
    """Rows of a JSONL file (blank lines skipped); a bad line raises JudgeError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise JudgeError(f"judge input {p} not found")
    rows = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JudgeError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            prepare_row(row, where, cfg.model.think_open, cfg.model.think_close)  # validation only
            rows.append(row)
    return rows


def refused_text(row: dict[str, Any], cfg: JobConfig) -> bool:
    """The refusal detector on the visible text of ``row``: its answer when the think block closed (a cut
    answer included), else the whole completion without a leading open tag."""
    m = cfg.model
    s = split_completion(row["completion"], bool(row.get("truncated", False)), m.think_open, m.think_close)
    return detect_refusal(s.answer if s.think_closed else s.thinking)


def output_rows(rows: list[dict[str, Any]], results: list[RewardBreakdown], cfg: JobConfig) -> list[dict[str, Any]]:
    """The output lines: each breakdown with ``refused_text`` added."""
    return [{**b.to_dict(), "refused_text": refused_text(r, cfg)} for r, b in zip(rows, results)]


def cmd_judge(cfg: JobConfig, input_path: str, output_path: str) -> dict[str, Any]:
    """Score every row of ``input_path`` with a judge pool and write one breakdown per row (same order) to
    ``output_path``. Returns the pool's metrics plus ``rows``, ``output`` and ``unscored``."""
    rows = read_rows(input_path, cfg)
    init_ray()
    pool = JudgePool(cfg)
    try:
        results = pool.score(rows)
        stats = pool.stats()
    finally:
        pool.close()
    out = Path(output_path)
    lines = output_rows(rows, results, cfg)
    atomic.write_text(out, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    no_answer = [line for line in lines if not line["well_formed"]]
    summary = {"rows": len(rows), "output": str(out), **stats,
               "no_answer_refused_text": sum(line["refused_text"] for line in no_answer)}
    totals = [b.total for b in results if b.scored]  # an unscored row (reward hooks) has no total
    summary["unscored"] = len(results) - len(totals)
    mean = sum(totals) / len(totals) if totals else 0.0
    print(f"judged {len(rows)} rows with the {cfg.judge.backend} judge -> {out} (mean total {mean:.3f}, "
          f"fallbacks {stats['judge/fallbacks']}, malformed {stats['judge/malformed']}; of those, "
          f"{summary['no_answer_refused_text']} read as refusals on their raw text: refused_text)")
    return summary
