"""Pair building: selection by total, risk reward and closeness to the adequate band; margins; file handling;
pair-aware learner shards."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from rapo_ray.config import JudgeConfig, LevelBand, build_config
from rapo_ray.learner import pair_shards
from rapo_ray.pairs import (PairsError, balance_labels, band_gap, build_pairs, cmd_pairs, load_pairs, pair_samples,
                            rank_key, read_jsonl, sampling_config, select_pair)

JUDGE = JudgeConfig()  # bands: level 1: 2-4 sentences, level 2: 5-8, level 3+: 9 or more


def row(idx: int, total: float, risk: int, sentences: int, level: int = 2, pid: str = "p", batch: int = 0,
        label: int = 1) -> dict:
    return {"batch": batch, "prompt_id": pid, "sample_index": idx, "prompt": f"prompt {pid}",
            "prompt_ids": [1, 2, 3], "completion": f"c{idx}", "completion_ids": [10 + idx, 20 + idx],
            "truncated": False, "harmful_label": label, "level": level, "source": "s", "reward": total,
            "breakdown": {"total": total, "risk_reward": risk, "general_reward": total - risk, "level": level,
                          "reasoning_sentences": sentences, "case": "Adequate"}}


def test_band_gap_and_rank_key():
    assert [band_gap(s, 2, JUDGE) for s in (0, 4, 5, 8, 9, 12)] == [5, 1, 0, 0, 1, 4]
    # past the table: the top band (at least 9, no upper bound by default)
    assert band_gap(30, 7, JUDGE) == 0 and band_gap(6, 7, JUDGE) == 3
    bounded = JUDGE.model_copy(update={"levels": {**JUDGE.levels, 3: LevelBand(min_sentences=9, max_sentences=20)}})
    assert band_gap(30, 7, bounded) == 10
    assert rank_key(row(0, 1.0, 0, 3)["breakdown"], JUDGE) == (1.0, 0, -2)


def test_chosen_highest_total_rejected_lowest():
    group = [row(0, 0.0, 0, 6), row(1, 2.0, 1, 6), row(2, -2.0, -1, 6), row(3, 1.0, 0, 6)]
    chosen, rejected, why = select_pair(group, JUDGE, min_margin=1.0)
    assert why == "kept" and chosen["sample_index"] == 1 and rejected["sample_index"] == 2


def test_ties_on_total_broken_by_risk_reward_then_band_closeness():
    # Totals tie at 1 (risk 1 + general 0 vs risk 0 + general 1): the higher risk reward is chosen.
    group = [row(0, 1.0, 0, 6), row(1, 1.0, 1, 6), row(2, -1.0, 0, 6)]
    assert select_pair(group, JUDGE, 1.0)[0]["sample_index"] == 1
    # Totals and risk rewards tie: the paragraph closer to the band (5-8) is chosen, the farther one rejected.
    group = [row(0, 0.0, 0, 3), row(1, 0.0, 0, 5), row(2, -1.0, 0, 20), row(3, -1.0, 0, 9)]
    chosen, rejected, why = select_pair(group, JUDGE, 1.0)
    assert (chosen["sample_index"], rejected["sample_index"], why) == (1, 2, "kept")
    # A full tie on every criterion goes to the lowest sample index on both sides.
    group = [row(0, 1.0, 1, 6), row(1, 1.0, 1, 6), row(2, -1.0, 0, 6), row(3, -1.0, 0, 6)]
    chosen, rejected, _ = select_pair(group, JUDGE, 1.0)
    assert (chosen["sample_index"], rejected["sample_index"]) == (0, 2)


def test_margin_threshold_and_ties():
    group = [row(0, 1.0, 1, 6), row(1, 0.0, 0, 6)]
    assert select_pair(group, JUDGE, 1.0)[2] == "kept"
    assert select_pair(group, JUDGE, 1.5) == (None, None, "margin")
    # Equal totals: dropped by any positive margin; with margin 0 the tie-breakers alone decide.
    group = [row(0, 0.0, 0, 3), row(1, 0.0, 0, 6)]
    assert select_pair(group, JUDGE, 0.5)[2] == "margin"
    chosen, rejected, why = select_pair(group, JUDGE, 0.0)
    assert why == "kept" and (chosen["sample_index"], rejected["sample_index"]) == (1, 0)
    # Identical on every criterion: never a pair, whatever the margin.
    same = [row(i, 0.0, 0, 6) for i in range(4)]
    assert select_pair(same, JUDGE, 0.0) == (None, None, "tie")
    assert select_pair(same[:1], JUDGE, 0.0) == (None, None, "tie")


def test_build_pairs_groups_by_batch_and_prompt_and_keeps_components():
    samples = ([row(i, t, r, 6, pid="a") for i, (t, r) in enumerate([(2.0, 1), (-2.0, -1)])]
               + [row(i, 0.0, 0, 6, pid="b") for i in range(2)]
               + [row(i, t, 0, 6, pid="a", batch=1) for i, t in enumerate([1.0, 0.5])])
    pairs, outcome = build_pairs(samples, JUDGE, min_margin=1.0)
    assert outcome == {"kept": 1, "tie": 1, "margin": 1}
    (p,) = pairs
    assert p["pair_id"] == "a@0" and p["margin"] == 4.0 and p["group_totals"] == [2.0, -2.0]
    assert p["chosen"]["breakdown"]["risk_reward"] == 1 and p["rejected"]["breakdown"]["general_reward"] == -1
    assert p["chosen"]["completion_ids"] == [10, 20] and p["prompt_ids"] == [1, 2, 3]
    s = pair_samples(pairs)
    assert [(x.prompt_id, x.sample_index, x.reward) for x in s] == [("a@0", 0, 2.0), ("a@0", 1, -2.0)]
    assert s[0].prompt_ids == s[1].prompt_ids and s[1].completion_ids == [11, 21]


def test_an_unscored_sample_takes_no_side():
    samples = [row(i, t, 0, 6) for i, t in enumerate([1.0, 0.0, -1.0])]
    samples[2]["breakdown"]["scored"] = False  # no reward component scored it (judge.reward_hooks): total unread
    (p,), outcome = build_pairs(samples, JUDGE, min_margin=1.0)
    assert outcome == {"kept": 1} and (p["chosen"]["sample_index"], p["rejected"]["sample_index"]) == (0, 1)
    assert p["group_totals"] == [1.0, 0.0]
    samples[1]["breakdown"]["scored"] = False
    assert build_pairs(samples, JUDGE, min_margin=1.0) == ([], {"tie": 1})


def test_pair_shards_keep_pairs_on_one_rank():
    pairs, _ = build_pairs([row(i, float(1 - 2 * i), 0, 6, pid=f"p{k}") for k in range(5) for i in range(2)],
                           JUDGE, 1.0)
    samples = pair_samples(pairs)
    for k, s in enumerate(samples):
        s.completion_ids = s.completion_ids * (k + 1)  # unequal lengths
    shards = pair_shards(samples, 2)
    assert sorted(i for sh in shards for i in sh) == list(range(10))
    for sh in shards:
        assert all(sh[j] % 2 == 0 and sh[j + 1] == sh[j] + 1 for j in range(0, len(sh), 2))
    assert pair_shards(samples[:2], 3)[1:] == [[], []]
    with pytest.raises(ValueError, match="even number"):
        pair_shards(samples[:3], 2)


def test_read_jsonl_drops_cut_last_line_but_not_inner_garbage(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(f) == [{"a": 1}, {"a": 2}]
    f.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(PairsError, match="x.jsonl:2"):
        read_jsonl(f)
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_load_pairs_needs_complete_folder_and_valid_rows(tmp_path):
    with pytest.raises(PairsError, match="rapo-ray pairs"):
        load_pairs(tmp_path)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"pair_id": "x"}) + "\n")
    (tmp_path / "COMPLETE").write_text("1")
    with pytest.raises(PairsError, match="row 0 is not a pair"):
        load_pairs(tmp_path)


def test_pairs_sample_with_their_own_settings_where_set():
    cfg = build_config({"rollout": {"n": 8, "temperature": 0.7, "prompts_per_step": 4, "max_tokens": 96},
                        "pairs": {"n": 1, "temperature": 0.0}})
    r = sampling_config(cfg).rollout
    assert (r.n, r.temperature, r.prompts_per_step, r.max_tokens) == (1, 0.0, 4, 96)
    assert cfg.rollout.n == 8  # the RL stage's settings are left as they are
    plain = build_config({"rollout": {"n": 8}})
    assert sampling_config(plain) is plain
    with pytest.raises(ValueError):
        build_config({"pairs": {"n": 0}})


def labelled_samples(harmful: int, benign: int, per_batch: int = 4) -> list[dict]:
    """Two scored completions (totals 2 and -2) for each of ``harmful`` + ``benign`` prompts, ``per_batch`` prompts
    a batch: every prompt gives a pair."""
    out = []
    for k in range(harmful + benign):
        label, batch = int(k < harmful), k // per_batch
        out += [row(0, 2.0, 1, 6, pid=f"q{k}", batch=batch, label=label),
                row(1, -2.0, -1, 6, pid=f"q{k}", batch=batch, label=label)]
    return out


def test_balance_labels_samples_the_larger_label_down_and_counts_it():
    pairs, outcome = build_pairs(labelled_samples(7, 3), JUDGE, 1.0)
    kept = balance_labels(pairs, outcome, [0, 17])
    assert sorted(p["harmful_label"] for p in kept) == [0, 0, 0, 1, 1, 1]
    assert [p for p in pairs if p in kept] == kept  # the original order
    assert outcome == {"kept": 6, "label_balance": 4}
    again, _ = build_pairs(labelled_samples(7, 3), JUDGE, 1.0)
    assert [p["pair_id"] for p in balance_labels(again, Counter(), [0, 17])] == [p["pair_id"] for p in kept]
    assert {p["pair_id"] for p in balance_labels(again, Counter(), [1, 17])} != {p["pair_id"] for p in kept}
    even, outcome = build_pairs(labelled_samples(2, 2), JUDGE, 1.0)
    assert balance_labels(even, outcome, 0) == even and outcome == {"kept": 4, "label_balance": 0}
    one_sided, outcome = build_pairs(labelled_samples(3, 0), JUDGE, 1.0)
    with pytest.raises(PairsError, match="no benign pair"):
        balance_labels(one_sided, outcome, 0)


def test_pairs_command_balances_labels_when_rebuilding_from_finished_samples(ray_cluster, tiny_model_dir,
                                                                             shared_data, tmp_path):
    """The command's own path: every batch already sampled and scored (a resumed run), so the pairs are rebuilt
    from samples.jsonl without generation; balance_labels keeps 3 + 3 of 7 harmful and 3 benign pairs, and a
    one-sided sample set fails with the samples left in place."""
    out = tmp_path / "pairs"
    out.mkdir()
    samples = labelled_samples(7, 3, per_batch=5)
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (out / "batches.jsonl").write_text("".join(json.dumps({"batch": k, "prompt_ids": [], "samples": 10, "gen_s": 1.0,
                                                           "reward_s": 1.0, "reward_mean": 0.0}) + "\n"
                                               for k in (0, 1)))
    cfg = build_config({"model": {"name_or_path": str(tiny_model_dir)}, "output_dir": str(tmp_path),
                        "data": {"root": str(shared_data), "recipe": [{"name": "stratasword", "level": 1, "cap": 10},
                                                          {"name": "jbb_benign_pkg", "cap": 10}]},
                        "rollout": {"prompts_per_step": 5},
                        "pairs": {"source": "sampled", "max_prompts": 10, "balance_labels": True}})
    assert cmd_pairs(cfg) == out and (out / "COMPLETE").is_file()
    pairs = load_pairs(out)
    assert sorted(p["harmful_label"] for p in pairs) == [0, 0, 0, 1, 1, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"] == {"kept": 6, "label_balance": 4} and summary["by_label"] == {"0": 3, "1": 3}
    one_sided = tmp_path / "one_sided"
    one_sided.mkdir()
    (one_sided / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in labelled_samples(10, 0, 5)))
    (one_sided / "batches.jsonl").write_text((out / "batches.jsonl").read_text())
    cfg = cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"out_dir": str(one_sided)})})
    with pytest.raises(PairsError, match="no benign pair"):
        cmd_pairs(cfg)
    assert len(read_jsonl(one_sided / "samples.jsonl")) == 20 and not (one_sided / "COMPLETE").exists()
