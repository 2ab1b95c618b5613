"""Reward hooks (TRL's reward-function contract) beside the RAPO reward: values, None, weights, async, token ids."""
from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

import judge_hooks
from rapo_ray.config import ConfigError, JobConfig, build_config
from rapo_ray.driver import assign_advantages
from rapo_ray.judge import JudgeError, JudgePool, make_judge
from rapo_ray.judge.reward import FB_HOOK
from rapo_ray.learner.packing import loss_token_count
from rapo_ray.metrics import reward_metrics
from rapo_ray.runtime import score
from rapo_ray.types import Sample

HERE = Path(__file__).resolve().parent
HOOKS, TRL = HERE / "judge_hooks.py", HERE / "trl_rewards.py"


def _cfg(fn: str) -> JobConfig:
    """The older form: one hook replacing the RAPO reward."""
    return JobConfig.model_validate({"judge": {"backend": "hook", "hook": f"{HOOKS}:{fn}"}})


def _hooks(*hooks: tuple[str, float], rapo_weight: float = 1.0, path: Path | str = HOOKS, **judge) -> JobConfig:
    """``path``: a file, or a module name (then the tests see the module the judge imports)."""
    return JobConfig.model_validate({"judge": {"rapo_weight": rapo_weight, **judge, "reward_hooks": [
        {"hook": f"{path}:{fn}", "weight": w} for fn, w in hooks]}})


ROWS = [{"prompt": "p", "completion": "<think>The request is harmful. I refuse.</think>I can't help.",
         "harmful_label": 1, "level": 2, "source": "keep"},
        {"prompt": "q", "completion": "<think>Benign", "harmful_label": 0, "truncated": True, "source": "drop"}]
RULE = make_judge(JobConfig()).score(ROWS)


def test_backend_hook_is_one_hook_replacing_the_rapo_reward():
    cfg = _cfg("length_reward")
    assert (cfg.judge.backend, cfg.judge.rapo_weight, [h.key for h in cfg.judge.reward_hooks]) == \
        ("rule", 0.0, ["length_reward"])
    out = make_judge(cfg).score(ROWS)
    assert [b.total for b in out] == [float(len(r["completion"])) for r in ROWS]
    assert [(b.risk_reward, b.general_reward, b.case) for b in out] == [(b.risk_reward, b.general_reward, b.case)
                                                                        for b in RULE]
    assert out[0].components == {"rapo": RULE[0].total, "length_reward": out[0].total} and out[0].scored
    assert JobConfig.model_validate(cfg.model_dump()) == cfg  # the written config reads back the same


def test_dict_values_and_row_columns_reach_the_hook():
    out = make_judge(_cfg("columns_reward")).score(ROWS)
    assert (out[0].general_reward, out[0].total, out[0].level, out[0].refused) == (1, 10.0, 2, False)
    assert (out[1].general_reward, out[1].total, out[1].level, out[1].refused) == (-1, 0.0, 5, True)
    assert out[1].level_source == "judge"


def test_none_does_not_apply_and_invalid_values_are_counted():
    rows = [dict(ROWS[0], completion=f"<think>c{i}</think>answer words here") for i in range(7)]
    out = make_judge(_cfg("mixed_reward")).score(rows)
    assert (out[0].total, out[0].fallbacks, out[0].scored) == (0.5, [], True)
    assert (out[1].scored, out[1].total, out[1].fallbacks) == (False, 0.0, [])  # None: not the rule judge's total
    for b in out[2:5] + out[6:]:  # NaN, text, out-of-range dict, bool
        assert b.fallbacks == [f"{FB_HOOK}/mixed_reward"] and not b.scored and b.components["mixed_reward"] is None
    assert "mixed_reward: nan" in out[2].raw
    assert out[5].fallbacks == [] and (out[5].case, out[5].risk_reward) == ("Adequate", 1)
    assert out[5].total == 1 + out[5].general_reward  # dict without total: risk + general


def test_weighted_sum_of_the_components_that_score_a_sample():
    out = make_judge(_hooks(("length_reward", 0.5), ("harmful_only", -2.0))).score(ROWS)
    lengths = [len(r["completion"]) for r in ROWS]
    assert out[0].total == pytest.approx(RULE[0].total + 0.5 * lengths[0] - 4.0)
    assert out[1].total == pytest.approx(RULE[1].total + 0.5 * lengths[1])  # harmful_only: None on a benign row
    assert out[1].components == {"rapo": RULE[1].total, "length_reward": lengths[1], "harmful_only": None}
    assert all(b.scored for b in out)


def test_a_sample_no_component_scores_is_unscored():
    assert all(b.scored and b.total == r.total for b, r in
               zip(make_judge(_hooks(("never_applies", 1.0))).score(ROWS), RULE))  # the RAPO reward scores
    out = make_judge(_hooks(("never_applies", 1.0), ("harmful_only", 1.0), rapo_weight=0.0)).score(ROWS)
    assert (out[0].scored, out[0].total) == (True, 2.0)
    assert (out[1].scored, out[1].total, out[1].components["rapo"]) == (False, 0.0, RULE[1].total)
    zero = make_judge(_hooks(("length_reward", 0.0), ("harmful_only", 1.0), rapo_weight=0.0)).score(ROWS)
    assert [b.scored for b in zero] == [True, False]  # a weight-0 component does not count
    old_fallback = make_judge(_cfg("rapo_on_benign")).score(ROWS)  # {}: what None meant before reward hooks
    assert [b.total for b in old_fallback] == [3.0, RULE[1].total]


def test_unscored_samples_leave_advantages_loss_and_reward_means():
    samples = [Sample(prompt_id=g, sample_index=i, prompt="p", prompt_ids=[1], completion_ids=[5] * (i + 1),
                      completion=f"<think>Safe {i}.</think>{'x' * i}", sampling_logprobs=[], truncated=False,
                      policy_version=0, harmful_label=int(g == "a"))
               for g in ("a", "b") for i in range(3)]
    score(make_judge(_hooks(("harmful_only", 1.0), rapo_weight=0.0)), samples)
    assert [s.scored for s in samples] == [True] * 3 + [False] * 3
    samples[1].reward = 5.0  # spread in the scored group
    assign_advantages(JobConfig(), samples)
    assert [s.advantage for s in samples[3:]] == [0.0] * 3 and samples[1].advantage > 0 > samples[0].advantage
    assert [loss_token_count(s, mask_truncated=False) for s in samples] == [1, 2, 3, 0, 0, 0]
    m = reward_metrics(samples)
    assert (m["reward/unscored"], m["reward/benign/total"], m["reward/component/harmful_only"]) == (3.0, None, 2.0)
    assert m["reward/all/total"] == pytest.approx((2 + 5 + 2) / 3)


def test_completion_ids_trainer_state_and_columns_are_passed():
    judge_hooks.SEEN.clear()
    rows = [dict(ROWS[0], completion_ids=[1, 2, 3], answer="42"), ROWS[1]]
    out = make_judge(_hooks(("seen_kwargs", 1.0), rapo_weight=0.0, path="judge_hooks")).score(rows)
    assert [b.total for b in out] == [3.0, -1.0]
    seen = judge_hooks.SEEN[-1]
    assert seen["completion_ids"] == [[1, 2, 3], None] and seen["trainer_state"] is None
    assert (seen["prompts"], seen["answer"], seen["source"]) == (["p", "q"], ["42", None], ["keep", "drop"])
    assert (seen["harmful_label"], seen["level"], seen["truncated"]) == ([1, 0], [2, None], [False, True])
    with pytest.raises(JudgeError, match="row 0: 'completion_ids' must be a list"):
        make_judge(JobConfig()).score([dict(ROWS[0], completion_ids="1 2")])


def test_trainer_state_is_a_transformers_trainer_state_during_training():
    from transformers import TrainerState

    judge_hooks.SEEN.clear()
    cfg = JobConfig.model_validate({"judge": {"reward_hooks": [{"hook": "judge_hooks:seen_kwargs"},
                                                               {"hook": f"{TRL}:training_progress"}]}})
    out = make_judge(cfg).score(ROWS, {"global_step": 3, "max_steps": 12, "epoch": 0.5})
    assert [b.components["training_progress"] for b in out] == [0.25, 0.25]
    state = judge_hooks.SEEN[-1]["trainer_state"]
    assert isinstance(state, TrainerState) and (state.global_step, state.max_steps, state.epoch) == (3, 12, 0.5)
    with pytest.raises(JudgeError, match="training_progress.*AttributeError"):  # no training run: None, as documented
        make_judge(cfg).score(ROWS)


def test_chat_rows_reach_hooks_in_trl_conversational_format():
    judge_hooks.SEEN.clear()
    turns = [{"role": "user", "content": "Story?"}, {"role": "assistant", "content": "Sure."},
             {"role": "user", "content": "p"}]
    rows = [dict(ROWS[0], messages=turns, system="Be careful."), ROWS[1]]
    out = make_judge(_hooks(("seen_kwargs", 1.0), rapo_weight=0.0, path="judge_hooks")).score(rows)
    seen = judge_hooks.SEEN[-1]
    assert seen["prompts"] == [[{"role": "system", "content": "Be careful."}, *turns], "q"]
    assert seen["completions"] == [[{"role": "assistant", "content": ROWS[0]["completion"]}], ROWS[1]["completion"]]
    assert seen["messages"] == [turns, None] and len(out) == 2  # the row's columns still come as they are
    trl = make_judge(_hooks(("conversation_turns", 1.0), rapo_weight=0.0, path=TRL)).score(rows)
    assert [b.total for b in trl] == [4.0, 0.0]


def test_async_hooks_run_concurrently_on_one_loop():
    judge = make_judge(_hooks(("async_waits", 1.0), ("async_sets", 1.0), ("length_reward", 1.0), rapo_weight=0,
                              path="judge_hooks"))
    out = judge.score(ROWS)
    lengths = [len(r["completion"]) for r in ROWS]
    assert [b.components["async_waits"] for b in out] == [None, 1.0]
    assert [b.total for b in out] == [2.0 * lengths[0], 2.0 * lengths[1] + 1.0]

    async def inside_a_running_loop():
        return judge.score(ROWS)

    assert asyncio.run(inside_a_running_loop()) == out
    assert len(set(judge_hooks.LOOPS[-2:])) == 1  # the same loop on every call of this judge


def test_reward_functions_written_for_trl_run_unchanged():
    cfg = _hooks(("reward_len", 1.0), ("format_reward", 1.0), ("token_budget", 1.0), ("exact_answer", 2.0),
                 ("remote_grader", 1.0), path=TRL, rapo_weight=0.0)
    samples = [Sample(prompt_id="m:1", sample_index=i, prompt="What is 6 x 7?", prompt_ids=[1],
                      completion_ids=list(range(n)), completion=text, sampling_logprobs=[], truncated=False,
                      policy_version=0, harmful_label=0, columns={"id": "m:1", "answer": ans})
               for i, (n, text, ans) in enumerate([(4, "<think>Math.</think>42", "42"),
                                                   (12, "no think block at all, 41", "42"),
                                                   (6, "<think>Math.</think>It is 42.", None)])]
    score(make_judge(cfg), samples)
    c = [s.breakdown["components"] for s in samples]
    assert [x["reward_len"] for x in c] == [-abs(20 - len(s.completion)) for s in samples]
    assert [x["format_reward"] for x in c] == [1.0, 0.0, 1.0] and [x["token_budget"] for x in c] == [1, -1, 1]
    assert [x["exact_answer"] for x in c] == [1.0, 0.0, None] and [x["remote_grader"] for x in c] == [0.5] * 3
    expect = [x["reward_len"] + x["format_reward"] + x["token_budget"] + 2 * (x["exact_answer"] or 0) + 0.5
              for x in c]
    assert [s.reward for s in samples] == pytest.approx(expect)


@pytest.mark.parametrize("fn,msg", [
    ("wrong_length", "'.*judge_hooks.py:wrong_length' must return a list of 2 values, got 1 values"),
    ("broken", "'.*judge_hooks.py:broken' raised ValueError: hook exploded"),
    ("async_broken", "'.*judge_hooks.py:async_broken' raised KeyError: 'no such grader'"),
])
def test_bad_hooks_raise_clear_errors(fn, msg):
    with pytest.raises(JudgeError, match=msg):
        make_judge(_hooks((fn, 1.0))).score(ROWS)


@pytest.mark.parametrize("spec,msg", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    (f"{HOOKS}:missing", "has no function 'missing'"),
    ("/nonexistent/hooks.py:f", "no such file"),
    ("json:dumps_nope", "has no function"),
])
def test_bad_hook_specs(spec, msg):
    with pytest.raises(JudgeError, match=msg):
        make_judge(JobConfig.model_validate({"judge": {"reward_hooks": [{"hook": spec}]}}))


def test_module_spec_imports_by_name():
    judge = make_judge(JobConfig.model_validate({"judge": {"backend": "hook", "hook": "operator:length_hint"}}))
    assert judge.hooks.hooks[0].fn.__name__ == "length_hint"


@pytest.mark.parametrize("judge,msg", [
    ({"backend": "hook"}, "module:function"),
    ({"hook": "a:b"}, "hook is read only with backend: hook"),
    ({"reward_hooks": [{"hook": "no_function"}]}, "not of the form 'module:function'"),
    ({"reward_hooks": [{"hook": "a:f"}, {"hook": "b:f"}]}, "names must be unique"),
    ({"reward_hooks": [{"hook": "a:f", "weight": math.inf}]}, "finite number"),
    ({"rapo_weight": 0}, "nothing would score a sample"),
    ({"rapo_weight": 0, "reward_hooks": [{"hook": "a:f", "weight": 0}]}, "nothing would score a sample"),
])
def test_config_errors(judge, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config({"judge": judge})


def test_config_accepts_names_and_the_older_hook_null():
    cfg = build_config({"judge": {"hook": None, "reward_hooks": [{"hook": "a:f"}, {"hook": "b:f", "name": "g"}]}})
    assert [h.key for h in cfg.judge.reward_hooks] == ["f", "g"] and cfg.judge.rapo_weight == 1.0


@pytest.mark.slow
def test_hooks_through_the_judge_actor_pool(ray_cluster):
    """The real path: rows with token ids and columns sharded over two judge actors, sync and async hooks, the
    cache keyed on the ids, invalid values counted by hook."""
    cfg = _hooks(("async_sets", 0.5), ("nan_on_odd", 1.0), ("seen_kwargs", 1.0), rapo_weight=0.0, num_actors=2)
    rows = [dict(ROWS[0], completion=f"<think>c{i}</think>answer words here", completion_ids=list(range(i)),
                 answer=str(i)) for i in range(7)]
    pool = JudgePool(cfg)
    try:
        got = pool.score(rows)
        assert got == make_judge(cfg).score(rows)
        assert [b.components["seen_kwargs"] for b in got] == [float(i) for i in range(7)]
        assert [b.components["nan_on_odd"] for b in got] == [1.0, None] * 3 + [1.0]
        assert pool.score([rows[3], dict(rows[3], completion_ids=[9])])[1].components["seen_kwargs"] == 1.0
        s = pool.stats()
        assert (s["judge/judged"], s["judge/cache_hits"]) == (8, 1)
        state = {"global_step": 1, "max_steps": 2, "epoch": 0.0}  # training progress reaches the actors' hooks
        assert pool.score(rows[:2], state) == make_judge(cfg).score(rows[:2], state)
        assert pool.stats()["judge/cache_hits"] == 1  # the progress is part of the key: no stale hit
        assert s[f"judge/fallback/{FB_HOOK}/nan_on_odd"] == 4  # ids of length 1, 3, 5, and the new one
    finally:
        pool.close()
