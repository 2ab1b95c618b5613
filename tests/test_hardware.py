"""The `auto` precision rule (hardware queries mocked for each case), the keyed extension cache, `rapo-ray doctor`.
Through real Ray actors, a learner group and a rollout worker started with `auto` report what they resolved:
tests/test_train_e2e.py (the killed-rollout test)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from rapo_ray import hardware
from conftest import REPO
from rapo_ray.config import JobConfig, load_config
from rapo_ray.hardware import CpuInfo, resolve_dtype, resolve_precision, resolved_comment
from rapo_ray.weight_sync import wire_dtype


def _cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def _cuda(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


@pytest.mark.parametrize("avx512_bf16,amx,want", [(False, False, "fp32"), (True, False, "bf16"),
                                                   (False, True, "bf16"), (True, True, "bf16")])
def test_cpu_auto_is_bf16_only_where_native(monkeypatch, avx512_bf16, amx, want):
    _cpu(monkeypatch, avx512_bf16, amx)
    p = resolve_precision("auto", "cpu")
    assert p.value == want
    assert resolve_dtype("auto", "cpu").value == {"fp32": "float32", "bf16": "bfloat16"}[want]
    assert ("emulated" in p.reason) == (want == "fp32")
    assert ("with AMX" in p.reason) == amx


@pytest.mark.parametrize("bf16,want", [(True, "bf16"), (False, "fp32")])
def test_cuda_auto_follows_device_support(monkeypatch, bf16, want):
    _cpu(monkeypatch, False, False)  # the host CPU must not decide for the GPU
    _cuda(monkeypatch, bf16)
    assert resolve_precision("auto", "cuda").value == want
    assert resolve_dtype("auto", "cuda").value == {"bf16": "bfloat16", "fp32": "float32"}[want]
    assert "FakeGPU" in resolve_precision("auto", "cuda").reason


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_explicit_precision_wins(monkeypatch, setting):
    _cpu(monkeypatch, setting == "fp32", False)  # hardware says the opposite
    r = resolve_precision(setting, "cpu")
    assert (r.value, r.reason) == (setting, "set explicitly")


@pytest.mark.parametrize("setting", ["float32", "bfloat16", "float16"])
def test_explicit_dtype_wins(monkeypatch, setting):
    _cpu(monkeypatch, False, False)
    assert resolve_dtype(setting, "cpu").value == setting


def test_auto_never_picks_fp16(monkeypatch):
    for native in (False, True):
        _cpu(monkeypatch, native, False)
        _cuda(monkeypatch, native)
        assert {resolve_dtype("auto", d).value for d in ("cpu", "cuda")} <= {"float32", "bfloat16"}


def test_flags_fallback_when_torch_lacks_the_queries(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: ("X", frozenset({"avx2", "avx512f", "avx512_bf16"})))
    assert resolve_precision("auto", "cpu").value == "bf16"
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: ("X", frozenset({"avx2", "avx512f"})))
    assert resolve_precision("auto", "cpu").value == "fp32"


def test_role_device_needs_gpus_and_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.role_device(1) == "cuda" and hardware.role_device(0) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.role_device(1) == "cpu"


def test_defaults_are_auto():
    cfg = JobConfig()
    assert (cfg.learner.precision, cfg.rollout.dtype, cfg.judge.dtype) == ("auto", "auto", "auto")
    for path in ("quickstart", "ablation", "eval_cpu"):
        c = load_config(REPO / "job_configs" / f"{path}.yaml")
        assert (c.learner.precision, c.rollout.dtype) == ("auto", "auto"), path


def test_isa_key_differs_between_cpu_kinds(monkeypatch):
    keys = []
    for flags in ({"avx2", "fma"}, {"avx2", "fma", "avx512f", "avx512_bf16"}, {"avx2", "fma", "avx512f"}):
        monkeypatch.setattr(hardware, "_cpu_flags", lambda f=flags: ("X", frozenset(f)))
        keys.append(hardware.isa_key())
    assert len(set(keys)) == 3
    assert "avx2" in keys[0] and "avx512-bf16" in keys[1]


def test_extension_cache_is_keyed_unless_user_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: ("X", frozenset({"avx2"})))
    avx2 = hardware.key_extension_cache()
    assert avx2.startswith(str(tmp_path / "torch_extensions")) and "avx2" in avx2
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: ("X", frozenset({"avx2", "avx512f", "avx512_bf16"})))
    assert hardware.key_extension_cache() != avx2
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert hardware.key_extension_cache() == str(tmp_path / "mine")


def test_cpu_info_names_this_machine():
    info = hardware.cpu_info()
    assert info.model and info.cores >= 1
    assert info.isa in {"AVX2", "AVX512", "AVX512-BF16", "AVX2+AMX", "AVX512+AMX", "AVX512-BF16+AMX", "pre-AVX2"}
    assert CpuInfo("m", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), 2, "AVX512").isa == "AVX512-BF16+AMX"


def test_resolved_comment_keeps_config_loadable(tmp_path):
    cfg = JobConfig()
    text = cfg.to_yaml() + resolved_comment({"learner.precision": {"value": "fp32", "reason": "CPU without x"}})
    assert "#   learner.precision: fp32  (CPU without x)" in text
    again = JobConfig.model_validate(yaml.safe_load(text))
    assert again.learner.precision == "auto"


def test_wire_dtype():
    assert wire_dtype(["bfloat16", "bfloat16"]) == "bfloat16"
    assert wire_dtype(["float32"]) == "float32"
    assert wire_dtype(["bfloat16", "float32"]) == "float32"


def test_doctor_runs_and_reports_auto():
    out = subprocess.run([sys.executable, "-m", "rapo_ray", "doctor"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    local = resolve_precision("auto", "cpu").value
    assert f"auto on cpu: learner.precision={local}" in out.stdout
    for word in ("cpu:", "cpu flags:", "memory:", "torch:", "vllm:", "deepspeed:", "ray:", "transformers:", "ready"):
        assert word in out.stdout


def test_doctor_names_what_is_missing(monkeypatch, capsys):
    from rapo_ray import doctor

    monkeypatch.setattr(doctor, "_version", lambda dists: None if "deepspeed" in dists else "1.0")
    assert doctor.run_doctor() == 1
    out = capsys.readouterr().out
    assert "MISSING deepspeed" in out and "fix: bash scripts/setup.sh" in out
