"""The run skeleton (``rapo_ray.run``) with fake learners: schedule, resume, saves and their upload, and how a run
that fails or is stopped ends (one line: step, last complete checkpoint, resume command)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rapo_ray.config import build_config
from rapo_ray.learner import LearnerError
from rapo_ray.run import Run, RunInterrupted, RunStopped, due
from rapo_ray.storage import Storage

REPO = Path(__file__).resolve().parents[1]


class FakeLearners:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    def save_checkpoint(self, path: str, state: dict) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_text(f"weights at {state['step']}")

    def load_checkpoint(self, path: str) -> None:
        self.loaded.append(Path(path).name)


def _cfg(tmp_path: Path, **checkpoint):
    return build_config({"name": "job", "checkpoint": {"keep_last": 5, **checkpoint}})


def _run(cfg, tmp_path: Path, total: int, fail_at: int | None = None, resume: bool = False, **kw) -> Run:
    """A fake loop: log a metric and maybe save every step, raising ``fail_at``'s error at that step."""
    run = Run(cfg, tmp_path / "run", "sft", total, resume, **kw)
    learners, closed = FakeLearners(), []
    run.begin()
    with run.loop(lambda: closed.append(True)):
        run.restore(learners)
        for step in run.steps():
            if step + 1 == fail_at:
                raise LearnerError("learner group: train failed on rank 1: ray::LearnerWorker.train()\n  File x\n"
                                   "ValueError: nan loss")
            run.log({"loss": 1.0 / (step + 1)}, loss=f"{step}")
            run.maybe_save(learners)
    assert closed == [True]
    return run


@pytest.mark.parametrize("step, every, last, want", [
    (4, 2, None, True), (3, 2, None, False), (3, 0, None, False), (3, 0, 3, True), (5, 2, 5, True), (0, 0, None, False),
])
def test_due(step, every, last, want):
    assert due(step, every, last) is want


def test_saves_on_schedule_upload_and_resume_from_the_latest(tmp_path):
    cfg = _cfg(tmp_path, every=2, upload_uri=f"file://{tmp_path / 'bucket'}")
    run = _run(cfg, tmp_path, 5, upload_name="job/sft")
    assert [p.name for p in run.ckpts.complete()] == ["step_2", "step_4", "step_5"]
    metrics = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    remote = Storage(str(tmp_path / "bucket" / "job" / "sft"))
    assert remote.list_complete("checkpoints/step_") == [f"checkpoints/step_{n}" for n in (2, 4, 5)]
    assert (tmp_path / "bucket/job/sft/logs/metrics.jsonl").read_text() == (run.run_dir / "metrics.jsonl").read_text()
    assert "name: job" in (tmp_path / "bucket/job/sft/logs/config.yaml").read_text()

    resumed = Run(cfg, tmp_path / "run", "sft", 7, resume=True, upload_name="job/sft")
    assert resumed.latest.name == "step_5" and resumed.start == 5 and not resumed.finished
    assert Run(cfg, tmp_path / "run", "sft", 5, resume=True).finished
    assert Run(cfg, tmp_path / "run", "sft", 7).start == 0  # no --resume: from scratch
    # An empty output folder resumes from the upload.
    fresh = Run(cfg, tmp_path / "elsewhere", "sft", 7, resume=True, upload_name="job/sft")
    assert fresh.latest == tmp_path / "elsewhere" / "checkpoints" / "step_5"


def test_save_final_off_and_the_final_checkpoint(tmp_path):
    run = _run(_cfg(tmp_path, every=2), tmp_path, 3, save_final=False)
    assert [p.name for p in run.ckpts.complete()] == ["step_2"]
    with pytest.raises(RunStopped, match="no complete final checkpoint"):
        run.final_checkpoint()
    assert _run(_cfg(tmp_path), tmp_path, 4).final_checkpoint().name == "step_4"


def test_a_learner_error_ends_in_one_line_with_the_resume_command(tmp_path):
    with pytest.raises(RunStopped) as err:
        _run(_cfg(tmp_path, every=2), tmp_path, 5, fail_at=3)
    msg = str(err.value)
    assert "\n" not in msg and "sft stopped at step 3: LearnerError: learner group: train failed on rank 1" in msg
    assert "ValueError: nan loss" in msg and "`rapo-ray sft CONFIG --resume`" in msg
    assert f"last complete checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step_2'};" in msg
    assert "File x" in (tmp_path / "run" / "error.log").read_text()
    assert isinstance(err.value.__cause__, LearnerError)


def test_an_error_before_the_loop_is_not_translated(tmp_path):
    run = Run(_cfg(tmp_path), tmp_path / "run", "dpo", 3)
    run.begin()
    with pytest.raises(LearnerError, match="no HF model"), run.loop():
        raise LearnerError("no HF model")


@pytest.mark.parametrize("signum,code,why", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_sigterm_or_ctrl_c_ends_the_run_with_the_resume_command_and_restores_the_handler(tmp_path, signum, code,
                                                                                         why):
    before = signal.getsignal(signal.SIGTERM)
    # Python's own Ctrl-C handler, whatever this process inherited (CI may start it with SIGINT ignored)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    run = Run(_cfg(tmp_path, every=1), tmp_path / "run", "dpo", 4)
    run.begin()
    try:
        with pytest.raises(RunInterrupted) as err, run.loop():
            for step in run.steps():
                run.maybe_save(FakeLearners())
                if step == 1:
                    os.kill(os.getpid(), signum)
    finally:
        signal.signal(signal.SIGINT, old_int)
    assert err.value.exit_code == code and signal.getsignal(signal.SIGTERM) is before
    assert str(err.value) == (f"dpo stopped at step 2: interrupted by {why}; last complete checkpoint: "
                              f"{tmp_path / 'run' / 'checkpoints' / 'step_2'}; continue from it with "
                              f"`rapo-ray dpo CONFIG --resume`")


CLI_SCRIPT = """
import os, signal, sys
from rapo_ray import cli
from rapo_ray.config import build_config
from rapo_ray.run import Run

def fake_sft(args):
    run = Run(build_config({}), sys.argv[1], "sft", 5)
    run.begin()
    with run.loop():
        for step in run.steps():
            os.kill(os.getpid(), signal.SIGTERM)

cli.cmd_sft = fake_sft
sys.exit(cli.main(["sft", "job_configs/quickstart.yaml"]))
"""


def test_cli_prints_one_line_and_exits_143_on_sigterm(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CLI_SCRIPT, str(tmp_path / "run")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rapo-ray:")]
    assert lines == ["rapo-ray: sft stopped at step 1: interrupted by SIGTERM; last complete checkpoint: none; "
                     "continue from it with `rapo-ray sft CONFIG --resume`"]
    assert "Traceback" not in proc.stderr


class FakeDPOLearners(FakeLearners):
    killed = 0

    def __init__(self, cfg, model_path: str) -> None:
        super().__init__()

    def compute_logprobs(self, samples: list, temperature: float) -> list[list[float]]:
        return [[0.0] for _ in samples]

    def train(self, batch: list, objective: str) -> dict[str, float]:
        return {"loss": 0.5, "accuracy": 1.0, "margin": 0.1}

    def kill(self) -> None:
        FakeDPOLearners.killed += 1


def test_dpo_runs_on_the_skeleton_with_upload_and_resume(tmp_path, monkeypatch):
    """``train_dpo`` wired to fake learners: checkpoints on ``checkpoint.every``, mirrored; resume; skip when done."""
    from types import SimpleNamespace

    from rapo_ray import dpo

    monkeypatch.setattr(dpo, "load_pairs", lambda path: [{}] * 5)
    monkeypatch.setattr(dpo, "pair_samples", lambda pairs: [SimpleNamespace() for _ in range(2 * len(pairs))])
    monkeypatch.setattr(dpo, "resolve_start_model", lambda cfg, name: "m")
    monkeypatch.setattr(dpo, "resolve_model", lambda name: name)
    monkeypatch.setattr(dpo, "init_ray", lambda: None)
    monkeypatch.setattr(dpo, "LearnerGroup", FakeDPOLearners)
    cfg = build_config({"name": "job", "output_dir": str(tmp_path / "run"), "pairs": {"pairs_per_step": 1, "steps": 3},
                        "checkpoint": {"every": 2, "upload_uri": str(tmp_path / "bucket")}})
    assert dpo.train_dpo(cfg) == tmp_path / "run" / "dpo" / "checkpoints" / "step_3"
    assert Storage(str(tmp_path / "bucket" / "job" / "dpo")).list_complete("checkpoints/") == [
        "checkpoints/step_2", "checkpoints/step_3"]
    assert dpo.train_dpo(cfg, resume=True).name == "step_3" and FakeDPOLearners.killed == 1  # done: skipped
    longer = cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"steps": 4})})
    assert dpo.train_dpo(longer, resume=True).name == "step_4"
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 3, 4]  # the resumed run logs its setup row at step 3, then step 4


def test_dpo_reference_log_probs_come_in_bounded_calls():
    """One call over every pair outlasted the learner call timeout on a CPU: calls hold at most ``chunk`` samples,
    and every sample gets its own log-probs, in order."""
    from rapo_ray.dpo import precompute_reference
    from rapo_ray.types import Sample

    calls = []

    class Learners:
        def compute_logprobs(self, samples, temperature):
            calls.append(len(samples))
            return [[float(s.sample_index)] * 2 for s in samples]

    samples = [Sample(f"p{i // 2}", i, "x", [1], [2, 3], "", [], False, 0, 0) for i in range(10)]
    precompute_reference(Learners(), samples, chunk=4)
    assert calls == [4, 4, 2] and [s.ref_logprobs for s in samples] == [[float(i)] * 2 for i in range(10)]
