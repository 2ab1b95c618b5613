"""Measure the rule judge on public labelled data and print the figures.

    python bench/judge_quality.py [--strata DIR] [--refusal-csv FILE] [--write]

Refusal detector: precision / recall on pyrit==1.1.0's human-labelled refusal set (downloaded from the
wheel with pip into the data cache unless --refusal-csv is given) and on the project's own labelled set
(tests/fixtures/refusals_own.jsonl, held-out and tuning splits). Level estimator: confusion matrix on
Strata-Sword (default: ../shared/data/strata_sword next to the repository). --write also writes
docs/judge_quality.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rapo_ray.judge.quality import (evaluate_refusals, fetch_refusal_set, level_confusion, load_labelled_jsonl,
                                    load_refusal_set, load_strata, report_markdown)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strata", type=Path, default=REPO.parent / "shared" / "data" / "strata_sword")
    ap.add_argument("--refusal-csv", type=Path, default=None)
    ap.add_argument("--own", type=Path, default=REPO / "tests" / "fixtures" / "refusals_own.jsonl")
    ap.add_argument("--write", action="store_true", help="write docs/judge_quality.md")
    args = ap.parse_args()
    refusal_rows = load_refusal_set(args.refusal_csv or fetch_refusal_set())
    report = evaluate_refusals(refusal_rows)
    confusion, by_method = level_confusion(load_strata(args.strata))
    own = {split: evaluate_refusals(load_labelled_jsonl(args.own, split)) for split in ("holdout", "dev")}
    text = report_markdown(report, len(refusal_rows), confusion, by_method, own=own)
    print(text)
    if args.write:
        out = REPO / "docs" / "judge_quality.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
