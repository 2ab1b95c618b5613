"""One rank of the learner group: a DeepSpeed engine (ZeRO stage 0-3) in a torch.distributed group, training the
policy on its shard of the batch with one accumulate-and-step loop for every objective
(``rapo_ray.learner.objectives``), and exporting its weights and checkpoints.

Precision. ``learner.precision: auto`` resolves in each learner from its device (``rapo_ray.hardware``: bf16 where
it is computed natively, fp32 elsewhere). ``bf16`` runs the forward under ``torch.autocast(bfloat16)`` while the
parameters, gradients, gradient reductions and AdamW state stay float32: the float32 parameters *are* the
master weights. The same code path is used on CPU (autocast-cpu, AVX-512 BF16) and CUDA (autocast-cuda).
DeepSpeed's own ``bf16`` mode (bf16 parameters + a float32 master copy in the optimizer) would halve parameter
memory and ZeRO-3 all-gather traffic on GPUs, but it accumulates and reduces gradients in bf16 and makes the
gathered weights (what the rollout engines receive) bf16 roundings of the masters; autocast keeps one set of
float32 weights everywhere, at the price of 2x parameter memory, which is what we choose.

The engine is told about it (DeepSpeed's ``torch_autocast`` section): DeepSpeed runs its forward under
``autocast(enabled=False)`` when it sees CUDA autocast on outside and its own section off, which silently made CUDA
learners compute in float32. ``lower_precision_safe_modules`` is empty, so no parameter is tagged for bf16
gradient reduction: reductions stay float32 as stated above.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from rapo_ray import faults
from rapo_ray.algo import lr_factor
from rapo_ray.config import LearnerSettings
from rapo_ray.hardware import key_extension_cache, resolve_precision
from rapo_ray.learner import lora
from rapo_ray.learner.modeling import PolicyLogprobs, load_policy, resolve_attention
from rapo_ray.learner.objectives import Objective, Update, make_objective
from rapo_ray.learner.packing import MicroBatch, pack_units, sequence_units
from rapo_ray.types import Sample
from rapo_ray.weight_sync.common import free_port
from rapo_ray.weight_sync.endpoints import LearnerSyncMixin

_TOKENIZER_FILES = ("special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json")
log = logging.getLogger(__name__)
_DS_TAG = "state"
_CLIENT_KEY = "rapo_client_state"  # DeepSpeed mixes its own keys into the client state it returns


@contextmanager
def hidden_module(name: str) -> Iterator[None]:
    """Inside the block, ``import name`` raises ImportError (as if it were not installed) unless it is imported
    already; after the block it imports normally."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.modules.pop(name, None)


class LearnerError(RuntimeError):
    """A learner actor failed; the group cannot continue."""


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: Python's, torch's CPU allocator's or a device's."""
    text = str(e).lower()
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text \
        or "out of memory" in text


class LearnerWorker(LearnerSyncMixin):
    """One rank of the learner group (the group wraps it with ``ray.remote``).

    Built in two phases so the group can ask rank 0's node for the rendezvous address first: construct with
    ``master_addr=None`` and call :meth:`setup` later, or pass the address to set up at once.
    """

    def __init__(self, cfg: LearnerSettings, model_path: str, rank: int, world_size: int,
                 master_addr: str | None = None, master_port: int | None = None):
        self.cfg, self.model_path, self.rank, self.world_size = cfg, str(model_path), rank, world_size
        if not os.path.isfile(os.path.join(self.model_path, "config.json")):
            raise LearnerError(f"learner rank {rank}: no HF model at {self.model_path} (config.json missing) on "
                               f"node {os.uname().nodename}")
        use_cuda = cfg.learner.dist_backend == "nccl" or (cfg.learner.dist_backend == "auto"
                                                           and cfg.resources.learner_gpus > 0)
        if use_cuda and not torch.cuda.is_available():
            raise LearnerError(f"learner rank {rank}: CUDA requested (learner_gpus={cfg.resources.learner_gpus}, "
                               f"dist_backend={cfg.learner.dist_backend}) but torch sees no GPU")
        self.device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")  # Ray exposes one GPU as cuda:0
        self.backend = "nccl" if use_cuda else "gloo"
        if cfg.learner.dist_backend not in ("auto", self.backend):
            raise LearnerError(f"dist_backend {cfg.learner.dist_backend} does not fit device {self.device}")
        if cfg.learner.attn_implementation == "flex" and not use_cuda:
            raise LearnerError("learner.attn_implementation flex attention needs a CUDA learner (FlexAttention has no "
                               "backward on CPU): use varlen_sdpa")
        self.precision = resolve_precision(cfg.learner.precision, self.device.type)
        self.attention = resolve_attention(cfg.learner.attn_implementation, self.device)
        if rank == 0:
            log.warning("learner precision: %s (%s); attention: %s", self.precision.value, self.precision.reason,
                        self.attention)
        rt = cfg.rollout.temperature
        self.temperature = rt if rt > 0 else 1.0  # log-probs of the distribution vLLM samples from
        self.engine: Any = None
        self.peft: Any = None  # the PeftModel around the policy when model.lora is set
        self.ref: PolicyLogprobs | None = None
        if master_addr is not None:
            self.setup(master_addr, int(master_port))

    # -- setup ---------------------------------------------------------------------------------------
    def master_endpoint(self) -> tuple[str, int]:
        """This actor's node IP and a free port on it (the group's rendezvous when this is rank 0)."""
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group, load the model and build the DeepSpeed engine (collective)."""
        key_extension_cache()  # before DeepSpeed builds any op: compiled ops are keyed by this CPU's ISA
        with hidden_module("mlflow"):  # imported by DeepSpeed's autotuner (unused) when installed: 2-3 s a start
            import deepspeed
            import deepspeed.ops

        # The process group would JIT-build DeepSpeed's shared-memory all-reduce op, used only by tensor-parallel
        # inference (inference_all_reduce), never here: about a minute of compiling on a 2-core CPU at the first
        # start on each machine, toolchain or venv. ZeRO's collectives go through torch.distributed either way.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

        lc = self.cfg.learner
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        deepspeed.init_distributed(dist_backend=self.backend, auto_mpi_discovery=False, verbose=False,
                                   timeout=timedelta(seconds=lc.init_timeout_s), rank=self.rank,
                                   world_size=self.world_size)
        policy = load_policy(self.cfg, self.model_path, self.device)
        if self.cfg.model.lora is not None:
            self.peft = lora.apply_lora(policy.hf, self.cfg.model.lora)  # in place: only adapters train
        if lc.gradient_checkpointing:
            policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # A client torch AdamW: DeepSpeed's FusedAdam would be JIT-compiled on CPU. ZeRO wraps it either way.
        # fused=True: one multi-tensor kernel per step (CPU and CUDA); the per-tensor default is ~6x slower on CPU.
        trainable = [p for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay,
                                fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, lc.warmup_steps, lc.lr_schedule, lc.lr_decay_steps))
        ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                     "gradient_clipping": lc.max_grad_norm, "zero_optimization": {"stage": lc.zero_stage},
                     "bf16": {"enabled": False}, "fp16": {"enabled": False},
                     "torch_autocast": {"enabled": self.precision.value == "bf16", "dtype": "bfloat16",
                                        "lower_precision_safe_modules": []},
                     "steps_per_print": 10**9, "wall_clock_breakdown": False}
        self.engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=opt, lr_scheduler=sched,
                                                    config=ds_config, dist_init_required=False)
        if self.cfg.algo.kl_coef > 0:
            self._reference()

    def ready(self) -> bool:
        return self.engine is not None

    def get_rank(self) -> int:
        return self.rank

    def resolved(self) -> dict[str, str]:
        """What ``learner.precision`` resolved to on this rank, and why."""
        return {"value": self.precision.value, "reason": self.precision.reason}

    @property
    def _hf(self) -> nn.Module:
        return self.engine.module.hf

    def _reference(self) -> PolicyLogprobs:
        """The frozen reference, loaded on first use: a forward-only, unsharded float32 copy of the starting
        weights on every rank (same numerics as the policy; no adapters)."""
        if self.ref is None:
            self.ref = load_policy(self.cfg, self.model_path, self.device).eval().requires_grad_(False)
        return self.ref

    # -- forward passes --------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.value == "bf16")

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Element-wise sum (or max) of ``values`` over the ranks, as float64 (collective)."""
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def _microbatches(self, samples: Sequence[Sample], units: Sequence[Sequence[int]]) -> list[MicroBatch]:
        """Pack ``units`` by token budget and pad with dummies to the largest count over the ranks (collective)."""
        lc = self.cfg.learner
        mbs = pack_units(samples, units, self.device, share_prompts=lc.prompt_sharing,
                         max_tokens=lc.micro_batch_tokens, packing=lc.packing)
        n = int(self.all_reduce([len(mbs)], "max")[0])
        return mbs + [MicroBatch.dummy(self.device) for _ in range(n - len(mbs))]

    def _forward(self, module: nn.Module, mb: MicroBatch,
                 temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            return module(input_ids=mb.input_ids, position_ids=mb.position_ids, index=mb.index, targets=mb.targets,
                          temperature=self.temperature if temperature is None else temperature, segments=mb.segments)

    @torch.no_grad()
    def logprobs(self, samples: Sequence[Sample], reference: bool = False,
                 temperature: float | None = None) -> list[torch.Tensor]:
        """Per-sample completion log-probs (float32, on device) under the policy or the frozen reference (loaded
        on first use), at ``temperature`` (default: the rollout's). Collective."""
        module = self._reference() if reference else self.engine
        module.eval()
        lc = self.cfg.learner
        units = sequence_units(samples, range(len(samples)), lc.prompt_sharing, lc.micro_batch_tokens)
        out: list[torch.Tensor] = [torch.zeros(0, device=self.device)] * len(samples)
        for mb in self._microbatches(samples, units):
            lp, _ = self._forward(module, mb, temperature)
            if not mb.members:  # a dummy micro-batch: forward only to keep ZeRO-3 gathers matched
                continue
            for i, part in zip(mb.members, lp.split(mb.counts)):
                out[i] = part
        return out

    def compute_logprobs(self, samples: list[Sample], temperature: float | None = None) -> list[list[float]]:
        """Completion-token log-probs of each sample under the current policy (collective), at ``temperature``
        (default: the rollout's)."""
        return [t.tolist() for t in self.logprobs(samples, temperature=temperature)]

    # -- the update ----------------------------------------------------------------------------------------
    def train_step(self, samples: list[Sample], global_token_count: int | None = None,
                   objective: str = "grpo", left_out: tuple[int, int] = (0, 0)) -> dict[str, float]:
        """One train step of ``objective`` (grpo, sft, dpo or ipo: ``rapo_ray.learner.objectives``) on this rank's
        shard; collective over the group. ``global_token_count``, when given, is checked against the loss tokens
        of the whole batch over all ranks (token objectives), ``left_out``'s (tokens, sequences) included: samples
        of the batch that no rank trains on but that count in the normalizer. Returns global metrics (identical on
        every rank)."""
        t0 = time.perf_counter()
        faults.point(f"learner{self.rank}_step")
        obj = make_objective(objective, self.cfg)
        sums = dict.fromkeys(("loss", "micro_batches", *obj.sum_keys), 0.0)  # over micro-batches, then ranks
        try:
            updates = obj.prepare(self, samples, global_token_count, left_out)
            self.engine.train()
            grad_norms = [self._update(obj, samples, u, sums) for u in updates]
        except (MemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            lc = self.cfg.learner
            raise LearnerError(f"learner rank {self.rank} ran out of memory in the update "
                               f"({str(e).splitlines()[0][:200]}); lower learner.micro_batch_tokens (now "
                               f"{lc.micro_batch_tokens}), or turn on learner.gradient_checkpointing (now "
                               f"{lc.gradient_checkpointing}) or a higher learner.zero_stage (now {lc.zero_stage})") from e
        order = list(sums)
        g = dict(zip(order, self.all_reduce([sums[k] for k in order])))
        n = max(len(grad_norms), 1)
        out = {"loss": g["loss"] / n, "micro_batches": g["micro_batches"], "updates": float(len(grad_norms)),
               "grad_norm": sum(grad_norms) / n, "lr": float(self.engine.get_lr()[0]), **obj.metrics(g)}
        timings = self.all_reduce([*obj.timings.values(), time.perf_counter() - t0], "max")
        out.update(zip((*obj.timings, "time_s"), timings))
        return out

    def _update(self, obj: Objective, samples: Sequence[Sample], update: Update, sums: dict[str, float]) -> float:
        """One optimizer step: gradients accumulated over the packed micro-batches of ``update.units`` (dummies
        where a rank has fewer, so every rank runs the same collectives); adds to ``sums``; returns the grad norm."""
        mbs = self._microbatches(samples, update.units)
        for k, mb in enumerate(mbs):
            self.engine.set_gradient_accumulation_boundary(k == len(mbs) - 1)
            lp, ent = self._forward(self.engine, mb, obj.temperature)
            if not mb.members:
                self.engine.backward(lp.sum() * 0.0)
                continue
            loss, m = obj.loss(mb, lp, ent, update.normalizer)
            self.engine.backward(loss)
            sums["loss"] += loss.item() / self.world_size
            sums["micro_batches"] += 1
            for key, v in m.items():
                sums[key] += v
        grad_norm = self._grad_norm_before_step()
        self.engine.step()
        return grad_norm if grad_norm is not None else self._grad_norm()

    def _grad_norm_before_step(self) -> float | None:
        """ZeRO-0 leaves no norm behind: take it from the (already all-reduced) gradients."""
        if self.cfg.learner.zero_stage != 0:
            return None
        sq = sum(p.grad.double().pow(2).sum() for p in self.engine.module.parameters() if p.grad is not None)
        return float(sq) ** 0.5

    def _grad_norm(self) -> float:
        gn = self.engine.get_global_grad_norm()
        if gn is None:
            return float("nan")
        return float(gn.item() if torch.is_tensor(gn) else gn)

    # -- weights out -----------------------------------------------------------------------------------------
    def named_full_params(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) for every parameter (tied ones once, under the HF checkpoint name that owns
        them); with LoRA, each adapted weight merged with its adapters under the base name, adapters not listed.
        Collective under ZeRO-3: every rank must iterate it fully; every rank receives the tensors. Under ZeRO-3
        or LoRA each yielded tensor is a copy; otherwise it is the live parameter (do not modify)."""
        import deepspeed

        zero3 = self.cfg.learner.zero_stage == 3
        for name, p in self._hf.named_parameters():
            if lora.is_adapter(name):
                continue
            layer = lora.owner(self._hf, name) if self.peft is not None and name.endswith(".weight") else None
            group = [p, *(lora.adapter_params(layer) if layer is not None else [])]
            with deepspeed.zero.GatheredParameters(group, modifier_rank=None, enabled=zero3):
                full = p.detach().clone() if zero3 and layer is None else p.detach()
                if layer is not None:
                    full = lora.merged(full, layer)
            yield lora.hf_name(name), full

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(HF name, full shape) in ``named_full_params`` order, without gathering (ZeRO-3 keeps it as ds_shape)."""
        return [(lora.hf_name(name), tuple(getattr(p, "ds_shape", p.shape)))
                for name, p in self._hf.named_parameters() if not lora.is_adapter(name)]

    def param_checksums(self) -> dict[str, float]:
        """float64 sum of every full parameter, on every rank (collective): equal across ranks when the ranks
        are in sync."""
        return {n: float(t.double().sum()) for n, t in self.named_full_params()}

    def gather_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The HF ``state_dict()`` with full float32 tensors on CPU on rank 0 (tied keys share a tensor; LoRA
        merged, under the base model's keys); None on other ranks. Collective."""
        full = {n: t.cpu().clone() for n, t in self.named_full_params()}
        if self.rank != 0:
            return None
        canonical = {}
        seen: dict[int, str] = {}
        for name, p in self._hf.named_parameters(remove_duplicate=False):
            if not lora.is_adapter(name):
                canonical[lora.hf_name(name)] = seen.setdefault(id(p), lora.hf_name(name))
        out = {}
        for key, v in self._hf.state_dict().items():
            if not lora.is_adapter(key):
                k = lora.hf_name(key)
                out[k] = full[canonical[k]] if k in canonical else v.detach().cpu().clone()
        return out

    def _adapter_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The adapters' full tensors under the PeftModel's keys, on rank 0 (None elsewhere). Collective."""
        import deepspeed

        named = [(n, p) for n, p in self.peft.named_parameters() if lora.is_adapter(n)]
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None,
                                               enabled=self.cfg.learner.zero_stage == 3):
            sd = {n: p.detach().cpu().clone() for n, p in named}
        return sd if self.rank == 0 else None

    def send_adapter(self) -> tuple[Any, list[float], list[Any]] | None:
        """Collective (ZeRO-3 gathers): rank 0 puts the adapters, saved by peft in PEFT's format, into the object
        store as file bytes; returns (their ref, each saved tensor's float64 sum, (name, dtype, shape) of each);
        other ranks None (``rapo_ray.weight_sync.lora_adapter``)."""
        import ray

        from rapo_ray.weight_sync.lora_adapter import pack_adapter

        if self.peft is None:
            raise RuntimeError("model.lora.rollout: adapter needs LoRA adapters on the learners (model.lora)")
        state = self._adapter_state_dict()
        if self.rank != 0:
            return None
        files, sums, meta = pack_adapter(self.peft, state)
        return ray.put(files), sums, meta

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str, client_state: dict) -> None:
        """Collective. Rank 0 writes the policy in HF format (safetensors, config, tokenizer files copied from
        the model folder; LoRA merged, and the adapters alone in PEFT format under ``adapter/``) to ``path``;
        every rank writes its DeepSpeed engine/optimizer shard under ``path/ds`` (so ``path`` must be on storage
        all learner nodes share)."""
        import torch.distributed as dist

        sd = self.gather_state_dict()
        adapter = self._adapter_state_dict() if self.peft is not None else None
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
            self._hf.save_pretrained(path, state_dict=sd)
            if self.peft is not None:
                self.peft.save_pretrained(os.path.join(path, lora.ADAPTER_DIR), state_dict=adapter)
            for f in sorted(os.listdir(self.model_path)):
                if f.startswith("tokenizer") or f in _TOKENIZER_FILES:
                    shutil.copy2(os.path.join(self.model_path, f), os.path.join(path, f))
        dist.barrier()
        self.engine.save_checkpoint(os.path.join(path, "ds"), tag=_DS_TAG,
                                    client_state={_CLIENT_KEY: dict(client_state)})
        dist.barrier()

    def load_checkpoint(self, path: str) -> dict:
        """Collective: restore weights, optimizer and scheduler from ``path/ds``; returns the client state."""
        ds_dir = os.path.join(path, "ds")
        if not os.path.isdir(os.path.join(ds_dir, _DS_TAG)):
            raise FileNotFoundError(f"no DeepSpeed state at {ds_dir}/{_DS_TAG}")
        load_path, client_state = self.engine.load_checkpoint(ds_dir, tag=_DS_TAG)
        if load_path is None:
            raise LearnerError(f"DeepSpeed could not load the checkpoint at {ds_dir}")
        return dict((client_state or {}).get(_CLIENT_KEY, {}))


