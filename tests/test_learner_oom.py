"""issue 19, item 7: a learner whose micro-batch does not fit its memory ends with a clear message naming
``learner.micro_batch_tokens``, not a hang or a bare allocator error. Real path: a real DeepSpeed learner (rank 0
of 1, as the group builds it, without Ray) in a child process whose address space is capped with RLIMIT_AS."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r'''
import resource, sys
from rapo_ray.config import JobConfig, LearnerSettings
from rapo_ray.learner import LearnerWorker
from rapo_ray.learner.worker import LearnerError
from rapo_ray.weight_sync.common import free_port
from rapo_ray.types import Sample

cfg = JobConfig.model_validate({"learner": {"num_learners": 1, "zero_stage": 0, "precision": "fp32",
                                            "micro_batch_tokens": 8192, "lr": 1e-4}})
w = LearnerWorker(LearnerSettings.of(cfg), sys.argv[1], rank=0, world_size=1)
w.setup("127.0.0.1", free_port("127.0.0.1"))
s = Sample(prompt_id="p", sample_index=0, prompt="p", prompt_ids=list(range(100, 2100)),
           completion_ids=list(range(200, 6200)), completion="", sampling_logprobs=[], truncated=False,
           policy_version=0, harmful_label=0)
s.advantage = 1.0
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (96 << 20), resource.RLIM_INFINITY))  # 96 MiB to spare
try:
    w.train_step([s], 6000, "sft")
except LearnerError as e:
    print("LEARNER_ERROR", e, flush=True)
    sys.exit(3)
print("NO_ERROR", flush=True)
'''


def test_a_micro_batch_over_the_memory_limit_names_micro_batch_tokens(tiny_model_dir):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 3, (out.stdout[-2000:], out.stderr[-3000:])
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("LEARNER_ERROR"))
    assert "learner rank 0 ran out of memory in the update" in line
    assert "lower learner.micro_batch_tokens (now 8192)" in line and "gradient_checkpointing (now False)" in line
