"""The job config: YAML loading, dotted overrides, and errors that name the key and the file."""
from __future__ import annotations

import pytest

from rapo_ray.cli import main
from rapo_ray.config import ConfigError, build_config, load_config


def _write(tmp_path, text: str):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_quickstart_loads_and_overrides_apply():
    cfg = load_config(None, ["rollout.n=8", "learner.zero_stage=3", "data.recipe=stratasword:400,starbenign:400"])
    assert cfg.rollout.n == 8 and cfg.learner.zero_stage == 3
    assert [(d.name, d.cap) for d in cfg.data.recipe] == [("stratasword", 400), ("starbenign", 400)]
    assert cfg.model.name_or_path == "smollm2-135m-instruct"


@pytest.mark.parametrize("text,key,why", [
    ("rollout: {n: 0}\n", "rollout.n", "greater than or equal to 1"),
    ("learner: {lr: -1.0e-6}\n", "learner.lr", "greater than 0"),
    ("learner: {zero_stage: 5}\n", "learner.zero_stage", "less than or equal to 3"),
    ("rollout: {temperature: hot}\n", "rollout.temperature", "valid number"),
    ("rollout: {nn: 4}\n", "rollout.nn", "unknown key"),
    ("judge: {backend: hook}\n", "judge", "module:function"),
    ("judge: {levels: {1: {min_sentences: 5, max_sentences: 2}, 2: {min_sentences: 1, max_sentences: 2}, "
     "3: {min_sentences: 1, max_sentences: 2}}}\n", "judge.levels.1", "min_sentences must be <= max_sentences"),
    ("data: {benign_share: 1.5}\n", "data.benign_share", "within 0..1"),
    ("data: {benign_share: {0: 0.5, 8: -0.1}}\n", "data.benign_share", "within 0..1"),
    ("data: {benign_share: {8: 0.5}}\n", "data.benign_share", "first key must be step 0"),
    ("judge: {schedule: {0: {fair_credit: graded}}}\n", "judge.schedule", "step >= 1"),
    ("judge: {schedule: {8: {backend: llm}}}\n", "judge.schedule", "not schedulable: backend"),
    ("judge: {schedule: {8: {fair_credit: steep}}}\n", "judge", "judge.schedule[8]: fair_credit"),
    ("judge: {schedule: {8: {levels: {1: {min_sentences: 4, max_sentences: 3}}}}}\n", "judge",
     "min_sentences must be <= max_sentences"),
])
def test_bad_values_name_the_key_and_the_file(tmp_path, text, key, why):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and key in msg and why in msg


def test_benign_share_schedule_resolves_per_step_and_round_trips(tmp_path):
    cfg = load_config(None, ["data.benign_share={16: 0.5, 0: 0.375}"])
    assert cfg.data.benign_schedule(8) == {0: 3, 16: 4} and cfg.data.benign_per_batch(8) == 3
    again = load_config(_write(tmp_path, cfg.to_yaml()))  # a run's saved config.yaml resumes with the same schedule
    assert again.data.benign_schedule(8) == {0: 3, 16: 4}
    assert load_config(None, ["data.benign_share=0.5"]).data.benign_schedule(6) == {0: 3}
    assert load_config(None).data.benign_schedule(8) is None


def test_judge_schedule_resolves_per_step_and_round_trips(tmp_path):
    """Entries add up in step order; a levels entry replaces only the levels it names; evaluation's stage (at
    train.total_steps) and a run's saved config.yaml agree; no schedule: the judge itself."""
    cfg = load_config(None, ["judge.schedule={48: {fair_credit: graded, levels: {1: {min_sentences: 2, "
                             "max_sentences: 3}}}, 60: {answer_repeat_price: 1.0}}", "train.total_steps=80"])
    assert cfg.judge.at(0) == cfg.judge.at(47) and cfg.judge.at(0).schedule == {}
    assert (cfg.judge.at(47).fair_credit, cfg.judge.at(47).band(1).max_sentences) == ("step", 4)
    mid, end = cfg.at_step(48).judge, cfg.at_step(80).judge
    assert (mid.fair_credit, mid.band(1).max_sentences, mid.band(2), mid.answer_repeat_price) == \
        ("graded", 3, cfg.judge.band(2), 0.0)
    assert (end.fair_credit, end.band(1).max_sentences, end.answer_repeat_price) == ("graded", 3, 1.0)
    again = load_config(_write(tmp_path, cfg.to_yaml()))  # a run's saved config.yaml resumes with the same schedule
    assert again.at_step(80) == cfg.at_step(80) and again.at_step(10) == cfg.at_step(10)
    plain = load_config(None)
    assert plain.at_step(80) is plain


def test_bad_yaml_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "rollout: [n: 4\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="key.sub=value"):
        build_config({}, ["rollout.n"])
    with pytest.raises(ConfigError, match="'n' is not a section"):
        build_config({}, ["rollout.n=4", "rollout.n.x=1"])


def test_level_table_is_shared_and_open_ended():
    cfg = build_config({})
    assert [(cfg.judge.band(k).min_sentences, cfg.judge.band(k).max_sentences) for k in (1, 2, 3, 5)] == \
        [(2, 4), (5, 8), (9, None), (9, None)]  # level 3+: "more than 8", no upper bound by default


def test_cli_config_show_prints_resolved_config_and_reports_errors(tmp_path, capsys):
    assert main(["config", "show", str(_write(tmp_path, "rollout: {n: 6}\n"))]) == 0
    out = capsys.readouterr().out
    assert "n: 6" in out and "zero_stage: 2" in out  # overrides applied, defaults filled in
    assert main(["config", "show", str(_write(tmp_path, "rollout: {n: 0}\n"))]) == 2
    assert "rollout.n" in capsys.readouterr().err


def test_role_settings_carry_only_their_sections():
    import pickle

    from rapo_ray.config import JudgeSettings, LearnerSettings, RolloutSettings

    cfg = build_config({"seed": 3, "rollout": {"n": 5}, "learner": {"lr": 3e-5}, "judge": {"backend": "rule"}})
    ro, le, ju = RolloutSettings.of(cfg), LearnerSettings.of(cfg), JudgeSettings.of(cfg)
    assert (ro.seed, ro.rollout.n, le.learner.lr, le.rollout.n, ju.judge.backend) == (3, 5, 3e-5, 5, "rule")
    for settings, absent in ((ro, ("learner", "judge", "data", "sft")), (le, ("judge", "data", "eval", "sync")),
                             (ju, ("rollout", "learner", "resources"))):
        for name in absent:
            with pytest.raises(AttributeError):
                getattr(settings, name)
    assert pickle.loads(pickle.dumps(le)) == le  # what Ray ships to the actor
    assert RolloutSettings.of(le).rollout is cfg.rollout  # settings narrow further
    with pytest.raises(AttributeError):
        RolloutSettings.of(ju)


def test_sft_checkpoint_every_is_deprecated_for_checkpoint_every():
    with pytest.warns(FutureWarning, match="use checkpoint.every"):
        cfg = build_config({"sft": {"checkpoint_every": 3, "epochs": 1}, "checkpoint": {"keep_last": 4}})
    assert cfg.checkpoint.every == 3 and cfg.checkpoint.keep_last == 4 and cfg.sft.epochs == 1
    assert "checkpoint_every" not in cfg.to_yaml()  # the saved config loads without the warning
    with pytest.raises(ConfigError, match="set only checkpoint.every"):
        build_config({"sft": {"checkpoint_every": 3}, "checkpoint": {"every": 2}})


def test_gloo_with_gpu_learners_is_refused():
    with pytest.raises(ConfigError, match="would train on the CPU"):
        build_config({"learner": {"dist_backend": "gloo"}, "resources": {"learner_gpus": 1}})
    assert build_config({"learner": {"dist_backend": "auto"}, "resources": {"learner_gpus": 1}}).resources.learner_gpus
    assert build_config({"learner": {"dist_backend": "gloo"}}).learner.dist_backend == "gloo"


def test_eval_engine_takes_eval_enforce_eager_else_the_rollouts():
    """``eval.enforce_eager`` sets the evaluation engine's mode only; None leaves the rollout's."""
    from rapo_ray.eval.runner import eval_engine_config

    compiled = build_config({}, ["rollout.enforce_eager=false"])
    assert eval_engine_config(compiled).rollout.enforce_eager is False
    eager_eval = build_config({}, ["rollout.enforce_eager=false", "eval.enforce_eager=true", "eval.max_model_len=96"])
    engine = eval_engine_config(eager_eval)
    assert engine.rollout.enforce_eager is True and engine.rollout.max_model_len == 96
    assert eager_eval.rollout.enforce_eager is False  # the job's own config is left as it was


def test_eval_stages_and_answer_repeat_price_are_checked():
    assert build_config({}).eval.stages == ["base", "sft", "dpo", "rl"]
    assert build_config({}, ["eval.stages=[rl, base]"]).eval.stages == ["rl", "base"]
    for bad in ("eval.stages=[rl, rl]", "eval.stages=[]", "eval.stages=[rapo]", "judge.answer_repeat_price=-1",
                "judge.answer_repeat_free=-1"):
        with pytest.raises(ConfigError):
            build_config({}, [bad])
