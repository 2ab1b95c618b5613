"""What the hardware computes natively, and the ``auto`` precision rule.

``learner.precision: auto`` and ``rollout.dtype`` / ``judge.dtype: auto`` resolve *where the role runs* (inside the
learner, rollout and judge actors, or a probe task with the role's resources), never in the driver: a CPU-only head
must not decide for GPU workers. The rule: bf16 where it is computed natively (a CUDA device with bf16 support; a
CPU with AVX512-BF16 or AMX-BF16), float32 elsewhere. On an AVX2-only CPU bf16 matmuls are emulated (~50x slower
than float32 for the learner, ~3x for vLLM), so ``auto`` never picks it there. fp16 is used only when set
explicitly (it needs loss scaling).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rapo_ray.config import JobConfig
from rapo_ray.placement import actor_options

log = logging.getLogger(__name__)

# CPU flags that matter for what the kernels can run natively (as /proc/cpuinfo names them).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_vnni", "avx_vnni", "fma")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int
    capability: str  # torch's dispatch level (e.g. AVX2, AVX512); says AVX512 also without BF16

    @property
    def isa(self) -> str:
        """One word for the CPU kind, e.g. ``AVX512-BF16+AMX`` or ``AVX2``."""
        if "avx512f" in self.flags:
            base = "AVX512-BF16" if "avx512_bf16" in self.flags else "AVX512"
        else:
            base = "AVX2" if "avx2" in self.flags else "pre-AVX2"
        return base + ("+AMX" if "amx_bf16" in self.flags else "")


def _cpu_flags() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; elsewhere the platform's processor name, no flags."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return (fields.get("model name") or platform.processor() or platform.machine(),
            frozenset(fields.get("flags", "").split()))


def cpu_info() -> CpuInfo:
    model, flags = _cpu_flags()
    return CpuInfo(model=model, flags=flags, cores=os.cpu_count() or 1,
                   capability=torch.backends.cpu.get_cpu_capability())


def machine_summary() -> dict[str, Any]:
    """The facts a published figure must name: CPU model, kind and flags, cores, CUDA devices."""
    info = cpu_info()
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": info.model, "cpu_kind": info.isa, "cpu_flags": [f for f in ISA_FLAGS if f in info.flags],
            "cores": info.cores, "torch_capability": info.capability, "cuda": cuda}


def machine_line(summary: dict[str, Any] | None = None) -> str:
    s = summary or machine_summary()
    gpus = f"; CUDA {', '.join(s['cuda'])}" if s["cuda"] else "; no GPU"
    return (f"machine: {s['cpu']} ({s['cpu_kind']}; flags {' '.join(s['cpu_flags']) or 'none'}), "
            f"{s['cores']} cores{gpus}")


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why. torch's own queries first (they see through
    containers' flag lists the same way its kernels do); the CPU flags when torch lacks them."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is not None and amx is not None:
        has_bf16, has_amx = bool(avx512_bf16()), bool(amx())
    else:
        flags = _cpu_flags()[1]
        has_bf16, has_amx = "avx512_bf16" in flags, "amx_bf16" in flags
    if has_amx:
        return True, "CPU with AMX-BF16"
    if has_bf16:
        return True, "CPU with AVX512-BF16"
    return False, f"CPU without AVX512-BF16 or AMX-BF16 ({torch.backends.cpu.get_cpu_capability()}): bf16 is emulated"


def cuda_bf16() -> tuple[bool, str]:
    """Whether the current CUDA device computes bf16 natively, and why."""
    name = torch.cuda.get_device_name()
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"CUDA device {name} supports bf16"
    return False, f"CUDA device {name} has no native bf16"


def role_device(gpus: float) -> str:
    """The device a role's kernels run on: CUDA when it was given GPUs and torch sees one."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def bf16_native(device: str) -> tuple[bool, str]:
    return cuda_bf16() if device == "cuda" else cpu_bf16()


@dataclass(frozen=True)
class Resolved:
    """A setting as configured, the value it resolved to here, and why."""

    setting: str
    value: str
    reason: str


def _resolve(setting: str, device: str, bf16: str, fp32: str) -> Resolved:
    if setting != "auto":
        return Resolved(setting, setting, "set explicitly")
    native, why = bf16_native(device)
    return Resolved(setting, bf16 if native else fp32, why)


def resolve_precision(setting: str, device: str) -> Resolved:
    """``learner.precision`` here: ``bf16`` (autocast, fp32 masters) or ``fp32``."""
    return _resolve(setting, device, "bf16", "fp32")


def resolve_dtype(setting: str, device: str) -> Resolved:
    """An engine dtype here (``rollout.dtype``, ``judge.dtype``): ``bfloat16`` or ``float32`` for ``auto``."""
    return _resolve(setting, device, "bfloat16", "float32")


def _probe(cfg_tree: dict[str, Any], role: str) -> dict[str, str]:
    cfg = JobConfig.model_validate(cfg_tree)
    gpus = {"rollout": cfg.resources.rollout_gpus, "learner": cfg.resources.learner_gpus,
            "judge": cfg.resources.judge_gpus}[role]
    device = role_device(gpus)
    if role == "learner":
        r = resolve_precision(cfg.learner.precision, device)
    else:
        r = resolve_dtype(cfg.rollout.dtype if role == "rollout" else cfg.judge.dtype, device)
    return {"value": r.value, "reason": r.reason, "device": device, "cpu": cpu_info().isa}


def resolve_for_role(cfg: Any, role: str) -> dict[str, str]:
    """Resolve a role's precision in a small Ray task with that role's resources (so it lands on the kind of
    node the role's actors do) without starting the role: e.g. the eval cache key needs the rollout dtype
    before any engine starts."""
    import ray

    opts = actor_options(cfg, role)
    opts.pop("runtime_env", None)
    return ray.get(ray.remote(_probe).options(**opts).remote(cfg.model_dump(mode="json"), role))


def resolved_comment(resolved: dict[str, Any]) -> str:
    """YAML comment lines recording what each ``auto`` resolved to (the config itself keeps ``auto``, so a config
    moved to another machine resolves again)."""
    lines = [f"# resolved on {platform.node()} at start (the keys above keep their settings):"]
    lines += [f"#   {key}: {r['value']}  ({r['reason']})" for key, r in resolved.items()]
    return "\n".join(lines) + "\n"


def isa_key() -> str:
    """A short key of the instruction sets JIT-compiled code may use on this CPU (it differs between CPU kinds
    whose compiled ops cannot be shared)."""
    info = cpu_info()
    present = ",".join(f for f in ISA_FLAGS if f in info.flags) or info.capability
    return f"{platform.machine()}-{info.isa.lower()}-{hashlib.blake2b(present.encode(), digest_size=4).hexdigest()}"


def extension_cache_dir() -> str:
    """Where torch's JIT extensions (DeepSpeed ops, built with ``-march=native``) go on this machine:
    ``TORCH_EXTENSIONS_DIR`` when the user set it, else a folder keyed by this CPU's instruction sets."""
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        return os.environ["TORCH_EXTENSIONS_DIR"]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch_extensions"
    return str(root / isa_key())


def key_extension_cache() -> str:
    """Point torch's JIT extension cache at :func:`extension_cache_dir` (call before DeepSpeed builds an op): an
    op built on an AVX-512 machine and loaded on an AVX2 one would die with an illegal instruction."""
    os.environ["TORCH_EXTENSIONS_DIR"] = extension_cache_dir()
    return os.environ["TORCH_EXTENSIONS_DIR"]
