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


def default_config_path() -> Path:
    """The quickstart config, shipped in job_configs/ next to the package (source checkout) or inside it."""
    here = Path(__file__).resolve().parents[1]  # the rapo_ray package (this file is in rapo_ray/config/)
    for cand in (here.parent / "job_configs" / "quickstart.yaml", here / "job_configs" / "quickstart.yaml"):
        if cand.exists():
            return cand
    raise ConfigError("no config given and job_configs/quickstart.yaml not found")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> JobConfig:
    """Load a YAML job config (None: the quickstart) and apply dotted overrides."""
    p = Path(path) if path is not None else default_config_path()
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {p}: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"invalid config {p}: top level must be a mapping, got {type(tree).__name__}")
    return build_config(tree, overrides, source=str(p))
