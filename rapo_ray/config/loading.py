"""Loading a ``JobConfig``: YAML file (default: the quickstart), dotted ``--set`` overrides, readable errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .base import ConfigError
from .job import JobConfig


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (key.sub, YAML-parsed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not of the form key.sub=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML: {e}") from e


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = e["type"] != "extra_forbidden" and not isinstance(e.get("input"), (dict, list))
        lines.append(f"  {key}: {msg} (got {e.get('input')!r})" if shown else f"  {key}: {msg}")
    return "\n".join(lines)


def build_config(tree: dict | None, overrides: list[str] = (), source: str = "<dict>") -> JobConfig:
    tree = dict(tree or {})
    for item in overrides:
        k, v = parse_override(item)
        _set_dotted(tree, k, v)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


PACKAGED = Path(__file__).resolve().parents[1] / "job_configs"  # package data (a link to ../job_configs in a checkout)


def packaged_configs() -> list[str]:
    """Names of the job configs that ship with the package (``rapo-ray train NAME``)."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def default_config_path() -> Path:
    """The quickstart config, shipped with the package (whatever the current folder holds)."""
    path = PACKAGED / "quickstart.yaml"
    if not path.is_file():
        raise ConfigError(f"no config given and the shipped {path} is missing (a broken install?)")
    return path


def config_path(arg: str | os.PathLike) -> Path:
    """``arg`` when that file exists; else a shipped config named by it (``quickstart``, ``safety_cpu.yaml`` or
    ``job_configs/quickstart.yaml`` run from a folder without one, as after ``pip install rapo-ray``)."""
    p = Path(arg)
    if p.exists():
        return p
    if p.parent in (Path("."), Path("job_configs")) and p.suffix in ("", ".yaml"):
        shipped = PACKAGED / f"{p.stem}.yaml"
        if shipped.is_file():
            return shipped
    raise ConfigError(f"config file not found: {p} (shipped configs, usable by name: "
                      f"{', '.join(packaged_configs()) or 'none found'})")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> JobConfig:
    """Load a YAML job config (a path or a shipped config's name; None: the quickstart) and apply dotted
    overrides."""
    p = config_path(path) if path is not None else default_config_path()
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {p}: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"invalid config {p}: top level must be a mapping, got {type(tree).__name__}")
    return build_config(tree, overrides, source=str(p))
