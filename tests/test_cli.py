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
    assert ("YAML job config (required)" in text) == required
    assert ("default: job_configs/quickstart.yaml" in text) == (not required)
