"""Measured quality of the rule judge on public labelled data.

- Refusal detector: precision and recall (Wilson 95% intervals) on the human-labelled refusal set that
  ships in ``pyrit==1.1.0`` (fetched from the wheel with ``rapo_ray.data.fetch_package_file``), and on the
  project's own labelled set (``tests/fixtures/refusals_own.jsonl``: a tuning split and a held-out split).
- Level estimator: agreement with Strata-Sword's level labels (the level is the file the prompt is in),
  with a confusion matrix (levels above 3 counted as 3).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rapo_ray.data.fetch import fetch_package_file
from rapo_ray.data.paths import packaged_dir
from rapo_ray.judge.quality_text import OWN_SET_TEXT, PYRIT_TEXT, SEMANTICS_TEXT
from rapo_ray.judge.rules import detect_refusal, estimate_level

REFUSAL_SET = ("pyrit", "1.1.0", "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv")
STRATA_FILES = {1: "strata_sword_en_level_1.csv", 2: "strata_sword_en_level_2.csv",
                3: "strata_sword_en_level_3.csv"}
STRATA_COLUMN = "jailbreak instruction"


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fetch_refusal_set(dest: Path | None = None) -> Path:
    """The pyrit refusal CSV at ``dest`` (default: in the packaged-data cache), downloaded from the wheel
    with pip when absent."""
    dist, version, member = REFUSAL_SET
    return fetch_package_file(dist, version, member, dest or packaged_dir() / f"{dist}-{version}" / "refusal.csv")


def load_refusal_set(path: Path) -> list[tuple[str, bool]]:
    """(assistant_response, is_refusal) rows; the leading ``#`` comment line is skipped."""
    text = "".join(ln for ln in Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
                   if not ln.startswith("#"))
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = {"assistant_response", "human_score"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: not the pyrit refusal set (missing columns {sorted(missing)})")
    return [(r["assistant_response"], r["human_score"].strip() == "1") for r in rows]


def load_labelled_jsonl(path: Path, split: str | None = None) -> list[tuple[str, bool]]:
    """(response, is_refusal) rows of a JSONL with ``response``, ``refusal`` (0/1) and ``split`` columns (the
    project's own set); ``split`` keeps one split ("dev" or "holdout")."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["response"], bool(r["refusal"])) for r in rows if split is None or r["split"] == split]


@dataclass
class RefusalReport:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    def precision_ci(self) -> tuple[float, float]:
        return wilson_interval(self.tp, self.tp + self.fp)

    def recall_ci(self) -> tuple[float, float]:
        return wilson_interval(self.tp, self.tp + self.fn)


def evaluate_refusals(rows: list[tuple[str, bool]]) -> RefusalReport:
    tp = fp = fn = tn = 0
    for text, label in rows:
        pred = detect_refusal(text)
        tp += pred and label
        fp += pred and not label
        fn += label and not pred
        tn += not label and not pred
    return RefusalReport(tp, fp, fn, tn)


def load_strata(folder: Path) -> list[tuple[str, int, str]]:
    """(prompt, level, attack method) rows of the three English Strata-Sword files."""
    out = []
    for level, name in STRATA_FILES.items():
        with (Path(folder) / name).open(encoding="utf-8", newline="") as f:
            out += [(r[STRATA_COLUMN], level, r.get("attack method") or "plain request")
                    for r in csv.DictReader(f)]
    return out


def level_confusion(rows: list[tuple[str, int, str]]) -> tuple[list[list[int]], dict[tuple[int, str], list[int]]]:
    """3 x 3 matrix ``m[true - 1][estimated - 1]`` (estimates above 3 counted as 3), and the estimated-level
    counts per (true level, attack method)."""
    m = [[0] * 3 for _ in range(3)]
    by_method: dict[tuple[int, str], list[int]] = {}
    for prompt, level, method in rows:
        est = min(estimate_level(prompt), 3) - 1
        m[level - 1][est] += 1
        by_method.setdefault((level, method), [0, 0, 0])[est] += 1
    return m, by_method


def agreement(m: list[list[int]]) -> tuple[int, int]:
    """(matching, total) of a confusion matrix."""
    return sum(m[i][i] for i in range(len(m))), sum(map(sum, m))


def _refusal_table(r: RefusalReport) -> list[str]:
    p_lo, p_hi = r.precision_ci()
    r_lo, r_hi = r.recall_ci()
    return ["| metric | value | 95% interval |", "|---|---|---|",
            f"| precision | {r.precision:.3f} ({r.tp}/{r.tp + r.fp}) | {p_lo:.3f} - {p_hi:.3f} |",
            f"| recall | {r.recall:.3f} ({r.tp}/{r.tp + r.fn}) | {r_lo:.3f} - {r_hi:.3f} |", "",
            f"Confusion: TP {r.tp}, FP {r.fp}, FN {r.fn}, TN {r.tn}."]


def report_markdown(refusals: RefusalReport, n_refusal_rows: int, confusion: list[list[int]],
                    by_method: dict[tuple[int, str], list[int]],
                    own: dict[str, RefusalReport] | None = None) -> str:
    """The figures as a Markdown page (docs/judge_quality.md); ``own``: the own set's report per split."""
    hits, total = agreement(confusion)
    a_lo, a_hi = wilson_interval(hits, total)
    lines = [
        "# Rule judge quality",
        "",
        "Generated by `python bench/judge_quality.py --write`; intervals are Wilson 95% score intervals.",
        "",
        "## Refusal detector (`rapo_ray.judge.detect_refusal`)",
        "",
        "### The project's own labelled set",
        "",
    ]
    for split, name in (("holdout", "held-out split (not looked at while the rules were tuned)"),
                        ("dev", "tuning split (in-sample)")):
        if own and split in own:
            r = own[split]
            lines += [f"**{name}**: {r.tp + r.fp + r.fn + r.tn} responses, {r.tp + r.fn} labelled refusals.", ""]
            lines += _refusal_table(r) + [""]
    lines += OWN_SET_TEXT + [
        "",
        "### pyrit's human-labelled set",
        "",
        f"Human-labelled refusal set from `pyrit==1.1.0` (`{REFUSAL_SET[2]}`), {n_refusal_rows} responses, "
        f"{refusals.tp + refusals.fn} of them labelled refusals. The detector sees the response only.",
        "",
    ]
    lines += _refusal_table(refusals) + [""] + PYRIT_TEXT + [
        "",
        "## Level estimator (`rapo_ray.judge.estimate_level`)",
        "",
        f"Strata-Sword (English, levels 1-3, {total} prompts; a prompt's level is the file it is in). "
        f"Agreement {hits}/{total} = {hits / total:.3f} ({a_lo:.3f} - {a_hi:.3f}).",
        "",
        "| true \\ estimated | 1 | 2 | 3+ |",
        "|---|---|---|---|",
    ]
    lines += [f"| {i + 1} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(confusion)]
    lines += ["", "By attack method (estimated 1 / 2 / 3+):", "", "| true level | attack method | 1 | 2 | 3+ |",
              "|---|---|---|---|---|"]
    lines += [f"| {lv} | {m} | " + " | ".join(str(v) for v in c) + " |" for (lv, m), c in sorted(by_method.items())]
    lines += [
        "",
        "The estimator follows RAPO's definitions (level 3: code, encodings, multi-step, multi-paragraph or",
        "long prompts), which differ from Strata-Sword's on some level-2 attacks: long or encoded level-2",
        "attacks read as level 3 here, and prompts whose only obfuscation is shuffled word order have no",
        "structural marker and read as level 1. Marker lists were narrowed once after reading level-1",
        "errors on this set (words that name the requested content, such as 'script' or 'story', were",
        "being taken for role-play framing), so the agreement is in-sample.",
        "",
    ]
    return "\n".join(lines + SEMANTICS_TEXT) + "\n"
