"""``rapo-ray judge CONFIG --input FILE.jsonl --output OUT.jsonl``: score a JSONL with the configured judge."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rapo_ray.config import JobConfig
from rapo_ray.judge.reward import JudgeError, prepare_row


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


def cmd_judge(cfg: JobConfig, input_path: str, output_path: str) -> dict[str, Any]:
    """Score every row of ``input_path`` with a judge pool and write one breakdown per row (same order) to
    ``output_path``. Returns the pool's metrics plus ``rows`` and ``output``."""
    from rapo_ray.driver import init_ray
    from rapo_ray.judge.pool import JudgePool

    rows = read_rows(input_path, cfg)
    init_ray()
    pool = JudgePool(cfg)
    try:
        results = pool.score(rows)
        stats = pool.stats()
    finally:
        pool.close()
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for b in results:
            f.write(json.dumps(b.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(out)
    summary = {"rows": len(rows), "output": str(out), **stats}
    mean = sum(b.total for b in results) / len(results) if results else 0.0
    print(f"judged {len(rows)} rows with the {cfg.judge.backend} judge -> {out} (mean total {mean:.3f}, "
          f"fallbacks {stats['judge/fallbacks']}, malformed {stats['judge/malformed']})")
    return summary
