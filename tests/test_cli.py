"""Command-line basics: --version, and --help saying which subcommands need a config."""
from __future__ import annotations

import pytest

import rapo_ray
from rapo_ray.cli import build_parser


def _out(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    assert _out(["--version"], capsys).strip() == f"rapo-ray {rapo_ray.__version__}"


@pytest.mark.parametrize("cmd,required", [("train", False), ("sft", True), ("sft-data", True), ("dpo", True),
                                          ("pipeline", True)])
def test_help_says_whether_a_config_is_required(cmd, required, capsys):
    text = " ".join(_out([cmd, "--help"], capsys).split())
    assert text.count("(required)") == int(required)
    assert ("(default: quickstart)" in text) == (not required)
    assert "a path or a shipped config's name" in text



def test_shipped_configs_load_by_name_from_anywhere(tmp_path, monkeypatch):
    from rapo_ray.config import ConfigError, load_config
    from rapo_ray.config.loading import packaged_configs

    monkeypatch.chdir(tmp_path)  # no job_configs/ here
    assert {"quickstart", "safety_cpu", "ablation", "eval_cpu", "cluster_7b"} <= set(packaged_configs())
    assert load_config("safety_cpu").name == load_config("job_configs/safety_cpu.yaml").name == "safety_cpu"
    assert load_config(None).name == load_config("quickstart.yaml").name == "quickstart"
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")
    assert load_config("quickstart.yaml").name == "mine"  # a file that exists wins over a shipped name
    with pytest.raises(ConfigError, match="not found: nope.yaml .*shipped configs, usable by name: ablation, "):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config("elsewhere/quickstart.yaml")  # a path into another folder is never swapped for a shipped one


def test_a_non_editable_install_ships_the_job_configs(tmp_path):
    """issue 18: `pip install --no-deps .` (not editable) carries job_configs/ as package data, so `rapo-ray`
    run outside a checkout finds its configs by name."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src, target = tmp_path / "src", tmp_path / "site"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:  # the checkout's files (links kept as links), so the build leaves nothing in the checkout
        if (repo / f).exists() or (repo / f).is_symlink():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, src / f, follow_symlinks=False)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path / "whl")],
                   check=True, cwd=tmp_path, timeout=300)
    wheel = next((tmp_path / "whl").glob("rapo_ray-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=300)
    shipped = sorted(p.name for p in (target / "rapo_ray" / "job_configs").iterdir())
    assert shipped == sorted(p.name for p in (repo / "job_configs").glob("*.yaml"))
    assert all(not p.is_symlink() for p in (target / "rapo_ray" / "job_configs").iterdir())
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    where = subprocess.run([sys.executable, "-c", "import rapo_ray; print(rapo_ray.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))  # the installed copy, not the checkout
    for args, name in ((["safety_cpu"], "safety_cpu"), ([], "quickstart")):
        out = subprocess.run([sys.executable, "-m", "rapo_ray", "config", "show", *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"name: {name}" in out.stdout
