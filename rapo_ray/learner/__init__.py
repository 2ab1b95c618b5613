"""The DeepSpeed learner group: ``packing`` (sharding and packed micro-batches), ``modeling`` (the policy's
packed forward), ``objectives`` (GRPO, SFT, DPO/IPO losses over one micro-batch), ``worker`` (one rank: DeepSpeed,
the shared accumulate-and-step loop, checkpoints) and ``group`` (the Ray actors). Importable without Ray or vLLM."""
from rapo_ray.learner.group import LearnerGroup
from rapo_ray.learner.packing import (MicroBatch, balanced_split, loss_token_count, pair_shards, prompt_units,
                                      shard_by_tokens, split_unit, unit_tokens)
from rapo_ray.learner.worker import LearnerError, LearnerWorker

__all__ = ["LearnerError", "LearnerGroup", "LearnerWorker", "MicroBatch", "balanced_split", "loss_token_count",
           "pair_shards", "prompt_units", "shard_by_tokens", "split_unit", "unit_tokens"]
