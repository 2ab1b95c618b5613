"""Raw records from files (CSV/TSV, JSON, JSONL, parquet, text) and from data set folders.

A folder is either a ``datasets`` ``save_to_disk`` folder or anything ``datasets.load_dataset(folder)``
reads (CSV, JSON or parquet files, as a downloaded hub snapshot has them, with or without a README that
declares configs). Records are plain dicts; a folder yields ``{split: records}``.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rapo_ray.data.rows import DataError

csv.field_size_limit(1 << 24)  # Strata-Sword holds 21k-character prompts; allow far longer ones


def read_csv(path: Path, delimiter: str | None = None) -> list[dict[str, Any]]:
    """CSV (or TSV by suffix); lines starting with '#' before the header are skipped."""
    delim = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    with path.open(newline="", encoding="utf-8-sig") as f:
        while True:
            pos = f.tell()
            if not f.readline().startswith("#"):
                break
        f.seek(pos)
        return list(csv.DictReader(f, delimiter=delim, restkey="_overflow"))


def _json_lines(path: Path, text: str) -> list[Any]:
    out = []
    for i, ln in enumerate(text.splitlines(), 1):
        if ln.strip():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not a JSON record ({e.msg} at column {e.colno}); fix or delete that "
                                f"line (a file cut short by a killed writer ends in such a line)") from None
    return out


def read_json(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects (or an object holding one list of objects), or JSON lines."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        return _json_lines(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(path, text)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON object must hold exactly one list of records")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records")
    return data


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def read_file(path: Path) -> list[dict[str, Any]]:
    """Records of one file, by suffix: .csv/.tsv, .json/.jsonl, .parquet, .txt (one prompt a line). A file that
    is not UTF-8, not of its type, empty, or holds a record that is not an object is a ``DataError`` naming it."""
    try:
        recs = _read_file(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); convert it, "
                        f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`") from None
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot be read as {path.suffix.lstrip('.')} ({type(e).__name__}: {e})") from None
    if not recs:
        raise DataError(f"{path}: holds no records (an empty file?)")
    bad = next((i for i, r in enumerate(recs) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad + 1} is a {type(recs[bad]).__name__}, not an object with named columns")
    return recs


def _read_file(path: Path) -> list[dict[str, Any]]:
    suf = path.suffix.lower()
    if suf in (".csv", ".tsv"):
        return read_csv(path)
    if suf in (".json", ".jsonl"):
        return read_json(path)
    if suf == ".parquet":
        return read_parquet(path)
    if suf == ".txt":
        return [{"prompt": ln} for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    raise DataError(f"{path}: unsupported file type '{suf}' (csv, tsv, json, jsonl, parquet, txt)")


def _is_saved(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()


def load_folder(folder: Path, data_set: str, config: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{split: records}`` of a save_to_disk folder or a hub-snapshot folder.

    For a snapshot declaring several configs, ``config`` picks one (it must then be among them); a folder
    with a single config, or none, loads as is.
    """
    import datasets

    if _is_saved(folder):
        ds = datasets.load_from_disk(str(folder))
        return {"train": ds.to_list()} if isinstance(ds, datasets.Dataset) else {k: v.to_list() for k, v in ds.items()}
    names = datasets.get_dataset_config_names(str(folder))
    if len(names) > 1 and config not in names:
        raise DataError(f"data set '{data_set}': {folder} declares configs {names}; expected one named '{config}'")
    try:
        dd = datasets.load_dataset(str(folder), config if config in names else None)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as e:
        raise DataError(f"data set '{data_set}': cannot load folder {folder}: {e}") from e
    return {k: v.to_list() for k, v in dd.items()}


def pick_split(splits: dict[str, list[dict[str, Any]]], prefer: Sequence[str], data_set: str,
               folder: Path) -> list[dict[str, Any]]:
    """The first preferred split present, else the only split; otherwise an error listing the splits."""
    for name in prefer:
        if name in splits:
            return splits[name]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise DataError(f"data set '{data_set}': {folder} has splits {sorted(splits)}; expected one of {list(prefer)}")


def records(path: Path, data_set: str, config: str | None = None,
            prefer: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Records of a file, or of one split of a folder."""
    if path.is_dir():
        return pick_split(load_folder(path, data_set, config), prefer, data_set, path)
    return read_file(path)


def pick_column(rows: list[dict[str, Any]], candidates: Sequence[str], data_set: str, where: Path) -> str:
    """The first candidate column that the records have."""
    cols = list(rows[0]) if rows else []
    for c in candidates:
        if c in cols:
            return c
    if not rows:
        return candidates[0]
    raise DataError(f"data set '{data_set}': {where} has no column among {list(candidates)} (columns: {cols}); "
                    f"name the right one in the recipe entry (prompt_column, label_column, level_column, id_column)")
