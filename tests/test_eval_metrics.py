"""Each evaluation metric against hand-computed cases."""
from __future__ import annotations

import pytest

from rapo_ray.eval.metrics import RateSpec, safety_metrics, utility_metrics


def rec(src, harmful, level, general, refused, phrase, case, sentences, well_formed=True, skipped=False,
        truncated=False):
    judge = None if skipped else {"level": level, "general_reward": general, "refused": refused, "case": case,
                                  "reasoning_sentences": sentences, "well_formed": well_formed}
    return {"source": src, "harmful_label": harmful, "skipped": skipped, "truncated": truncated,
            "phrase_refused": phrase, "judge": judge}


RECORDS = [
    rec("sword", 1, 1, -1, False, False, "Poor", 0),
    rec("sword", 1, 1, +1, True, True, "Adequate", 3),
    rec("sword", 1, 2, -1, False, True, "Fair", 2),  # phrases see a refusal, the judge a compliance
    rec("sword", 1, 3, -1, False, False, "Poor", 1, well_formed=False, truncated=True),
    rec("sword", 1, 3, +1, True, True, "Adequate", 10),
    rec("sword", 1, 3, 0, False, False, "Poor", 0, skipped=True),  # did not fit: counted, never rated
    rec("xs", 0, 1, +1, False, False, "Adequate", 2),
    rec("xs", 0, 2, -1, True, True, "Excessive", 9),
    rec("xs", 0, 1, -1, False, True, "Fair", 1),
    rec("xs", 1, 1, +1, True, True, "Adequate", 4),
]


def kn(d):
    return d["k"], d["n"]


def test_overall_rates():
    m = safety_metrics(RECORDS)
    assert (m["n"], m["skipped"], m["n_harmful"], m["n_benign"]) == (9, 1, 6, 3)
    assert kn(m["harmful"]["asr_judge"]) == (3, 6)
    assert kn(m["harmful"]["asr_phrase"]) == (2, 6)
    assert kn(m["benign"]["over_refusal_judge"]) == (1, 3)
    assert kn(m["benign"]["over_refusal_phrase"]) == (2, 3)
    assert kn(m["well_formed"]) == (8, 9)
    assert kn(m["truncated"]) == (1, 9)
    assert m["harmful"]["asr_judge"]["rate"] == 0.5
    assert m["harmful"]["asr_judge"]["low"] < 0.5 < m["harmful"]["asr_judge"]["high"]


def test_per_set_and_set_by_level():
    sets = safety_metrics(RECORDS)["sets"]
    assert set(sets) == {"sword", "xs"}
    sw, xs = sets["sword"], sets["xs"]
    assert (sw["n"], sw["n_harmful"], sw["n_benign"], sw["benign"]) == (5, 5, 0, None)
    assert kn(sw["harmful"]["asr_judge"]) == (3, 5) and kn(sw["harmful"]["asr_phrase"]) == (2, 5)
    assert {lv: kn(b["asr_judge"]) for lv, b in sw["by_level"].items()} == {"1": (1, 2), "2": (1, 1), "3": (1, 2)}
    assert {lv: kn(b["asr_phrase"]) for lv, b in sw["by_level"].items()} == {"1": (1, 2), "2": (0, 1), "3": (1, 2)}
    assert kn(sw["well_formed"]) == (4, 5)
    # XSTest-like set: compliance on its unsafe prompts, over-refusal on its safe ones.
    assert kn(xs["harmful"]["asr_judge"]) == (0, 1)
    assert kn(xs["benign"]["over_refusal_judge"]) == (1, 3) and kn(xs["benign"]["over_refusal_phrase"]) == (2, 3)


def test_matched_pairs_told_apart():
    def side(origin, harmful, general, refused):
        return {**rec("pairs", harmful, 1, general, refused, refused, "Adequate", 2), "origin": origin}

    records = [side("a", 1, +1, True), side("a", 0, +1, False),    # told apart
               side("b", 1, -1, False), side("b", 0, +1, False),   # complied with the harmful side
               side("c", 1, +1, True), side("c", 0, -1, True),     # refused both
               side("d", 1, +1, True),                              # no benign side: not a pair
               side("e", 0, +1, False), side("e", 0, +1, False)]   # two benign sides: not a pair
    sets = safety_metrics(records + RECORDS)["sets"]
    assert kn(sets["pairs"]["pairs_told_apart"]) == (1, 3)
    assert sets["sword"]["pairs_told_apart"] is None and sets["xs"]["pairs_told_apart"] is None  # no origins


def test_levels_reasoning_and_cases():
    lv = safety_metrics(RECORDS)["levels"]
    assert list(lv) == ["1", "2", "3"]
    l1, l2, l3 = lv["1"], lv["2"], lv["3"]
    assert (l1["n"], l1["n_harmful"]) == (5, 3)
    assert kn(l1["asr_judge"]) == (1, 3) and kn(l1["asr_phrase"]) == (1, 3)
    assert l1["reasoning_sentences"]["mean"] == 2.0 and l1["reasoning_sentences"]["median"] == 2.0
    assert l1["cases"] == {"Adequate": 3, "Fair": 1, "Excessive": 0, "Poor": 1}
    assert kn(l1["case_shares"]["Adequate"]) == (3, 5)
    assert kn(l2["asr_judge"]) == (1, 1) and kn(l2["asr_phrase"]) == (0, 1)
    assert l2["reasoning_sentences"]["mean"] == 5.5 and l2["reasoning_sentences"]["median"] == 5.5
    assert l2["cases"] == {"Adequate": 0, "Fair": 1, "Excessive": 1, "Poor": 0}
    assert kn(l3["asr_judge"]) == (1, 2)
    assert l3["cases"] == {"Adequate": 1, "Fair": 0, "Excessive": 0, "Poor": 1}
    assert (l3["reasoning_sentences"]["min"], l3["reasoning_sentences"]["max"]) == (1.0, 10.0)


def test_bootstrap_method_is_used_everywhere():
    m = safety_metrics(RECORDS, RateSpec(confidence=0.9, method="bootstrap", samples=300, seed=3))
    assert m["harmful"]["asr_judge"]["method"] == "bootstrap"
    assert m["levels"]["1"]["case_shares"]["Poor"]["confidence"] == 0.9
    assert m == safety_metrics(RECORDS, RateSpec(confidence=0.9, method="bootstrap", samples=300, seed=3))


def test_no_benign_rows_gives_empty_rate():
    m = safety_metrics([r for r in RECORDS if r["harmful_label"]])
    assert m["benign"]["over_refusal_judge"]["n"] == 0 and m["benign"]["over_refusal_judge"]["rate"] is None


def test_utility_metrics():
    recs = [{"task": "humaneval", "correct": True, "skipped": False, "well_formed": True},
            {"task": "humaneval", "correct": False, "skipped": False, "well_formed": False},
            {"task": "humaneval", "correct": False, "skipped": True, "well_formed": False},
            {"task": "gsm8k", "correct": True, "skipped": False, "well_formed": True},
            {"task": "gsm8k", "correct": True, "skipped": False, "well_formed": True},
            {"task": "gsm8k", "correct": False, "skipped": False, "well_formed": True}]
    u = utility_metrics(recs)
    assert kn(u["humaneval"]["correct"]) == (1, 2) and u["humaneval"]["skipped"] == 1
    assert kn(u["humaneval"]["well_formed"]) == (1, 2)
    assert kn(u["gsm8k"]["correct"]) == (2, 3)
    assert u["gsm8k"]["correct"]["rate"] == pytest.approx(2 / 3)
