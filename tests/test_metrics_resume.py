"""A resumed run's logs: the steps past the checkpoint, done again after a hard kill, appear once."""
from __future__ import annotations

import json

from rapo_ray.metrics import MetricsLogger
from rapo_ray.types import Sample


def _sample(step: int) -> Sample:
    return Sample(prompt_id=f"p{step}", sample_index=0, prompt="p", prompt_ids=[1], completion_ids=[2],
                  completion="c", sampling_logprobs=[], truncated=False, policy_version=step, harmful_label=0)


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_drops_logged_steps_past_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(tmp_path)
    for step in range(1, 6):  # steps 1-5 logged, the checkpoint was at 3, then a hard kill
        log.log(step, {"x": float(step)})
        log.log_rollouts(step, [_sample(step)])
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "x": ')  # a row cut off by the kill

    log = MetricsLogger(tmp_path, start_step=3)
    assert log.dropped == {"metrics.jsonl": 3, "rollouts.jsonl": 2}
    for step in (4, 5):
        log.log(step, {"x": 10.0 * step})
        log.log_rollouts(step, [_sample(step)])
    log.close()
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert _steps(tmp_path / "rollouts.jsonl") == [1, 2, 3, 4, 5]
    assert [json.loads(x)["x"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 40, 50]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]


def test_a_fresh_run_starts_its_logs_empty(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(1, {"x": 1.0})
    log.close()
    log = MetricsLogger(tmp_path, tensorboard=False)  # start_step 0: nothing of the earlier run is kept
    log.log(1, {"x": 2.0})
    log.close()
    assert _steps(tmp_path / "metrics.jsonl") == [1]
