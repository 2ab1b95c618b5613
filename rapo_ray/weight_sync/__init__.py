"""Weight sync from the learner group to the vLLM rollout workers: the contract in ``interface``, shared pieces
in ``common``, one module per transport (``broadcast``, ``object_store``), the LoRA-adapter sync (``lora_adapter``), the
``registry`` and the ends inside the actors (``endpoints``)."""
from rapo_ray.weight_sync.common import (DTYPES, Bucket, Checksums, ParamMeta, SyncStats, WeightSyncError,
                                         free_port, plan_buckets, wire_dtype)
from rapo_ray.weight_sync.interface import (Receiver, Sender, SyncPlan, SyncSpec, Transport, WeightSynchronizer,
                                            WeightUpdate)
from rapo_ray.weight_sync.registry import TRANSPORTS, make_synchronizer, transport

__all__ = ["DTYPES", "TRANSPORTS", "Bucket", "Checksums", "ParamMeta", "Receiver", "Sender", "SyncPlan", "SyncSpec",
           "SyncStats", "Transport", "WeightSyncError", "WeightSynchronizer", "WeightUpdate", "free_port",
           "make_synchronizer", "plan_buckets", "transport", "wire_dtype"]
