"""The Python hook backend (TRL reward-function contract)."""
from __future__ import annotations

from pathlib import Path

import pytest

from rapo_ray.config import ConfigError, JobConfig, build_config
from rapo_ray.judge import JudgeError, make_judge
from rapo_ray.judge.reward import FB_HOOK

HOOKS = Path(__file__).resolve().parent / "judge_hooks.py"


def _cfg(fn: str) -> JobConfig:
    return JobConfig.model_validate({"judge": {"backend": "hook", "hook": f"{HOOKS}:{fn}"}})


ROWS = [{"prompt": "p", "completion": "<think>The request is harmful. I refuse.</think>I can't help.",
         "harmful_label": 1, "level": 2, "source": "keep"},
        {"prompt": "q", "completion": "<think>Benign", "harmful_label": 0, "truncated": True, "source": "drop"}]


def test_float_values_set_the_total_and_rule_components_stay():
    out = make_judge(_cfg("length_reward")).score(ROWS)
    assert [b.total for b in out] == [float(len(r["completion"])) for r in ROWS]
    rule = make_judge(JobConfig()).score(ROWS)
    assert [(b.risk_reward, b.general_reward, b.case) for b in out] == \
        [(b.risk_reward, b.general_reward, b.case) for b in rule]
    assert out[0].raw == repr(out[0].total)


def test_dict_values_and_row_columns_reach_the_hook():
    out = make_judge(_cfg("columns_reward")).score(ROWS)
    assert (out[0].general_reward, out[0].total, out[0].level, out[0].refused) == (1, 10.0, 2, False)
    assert (out[1].general_reward, out[1].total, out[1].level, out[1].refused) == (-1, 0.0, 5, True)
    assert out[1].level_source == "judge"


def test_invalid_values_fall_back_to_the_rule_judge_and_are_counted():
    rows = [dict(ROWS[0], completion=f"<think>c{i}</think>answer words here") for i in range(7)]
    out = make_judge(_cfg("mixed_reward")).score(rows)
    assert out[0].total == 0.5 and out[0].fallbacks == []
    for b in out[1:5] + out[6:]:  # None, NaN, text, out-of-range dict, bool
        assert b.fallbacks == [FB_HOOK]
    assert out[5].fallbacks == [] and (out[5].case, out[5].risk_reward) == ("Adequate", 1)
    assert out[5].total == 1 + out[5].general_reward  # dict without total: risk + general


@pytest.mark.parametrize("fn,msg", [("wrong_length", "must return a list of 2 values, got 1 values"),
                                    ("broken", "raised ValueError: hook exploded")])
def test_bad_hooks_raise_clear_errors(fn, msg):
    with pytest.raises(JudgeError, match=msg):
        make_judge(_cfg(fn)).score(ROWS)


@pytest.mark.parametrize("spec,msg", [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    (f"{HOOKS}:missing", "has no function 'missing'"),
    ("/nonexistent/hooks.py:f", "no such file"),
    ("json:dumps_nope", "has no function"),
])
def test_bad_hook_specs(spec, msg):
    with pytest.raises(JudgeError, match=msg):
        make_judge(JobConfig.model_validate({"judge": {"backend": "hook", "hook": spec}}))


def test_module_spec_imports_by_name():
    judge = make_judge(JobConfig.model_validate({"judge": {"backend": "hook", "hook": "operator:length_hint"}}))
    assert judge.backend.fn.__name__ == "length_hint"


def test_config_requires_a_hook_spec():
    with pytest.raises(ConfigError, match="module:function"):
        build_config({"judge": {"backend": "hook"}})
