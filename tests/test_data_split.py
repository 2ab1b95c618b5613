"""The train / dev / test split: disjoint by origin and by normalised behaviour across sets, stable across recipes,
caps and seeds; evaluation-only sets (XSTest) refused in training recipes."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rapo_ray.config import DataConfig, DatasetSpec, JobConfig
from rapo_ray.data import (DataError, behaviour_key, build_prompt_set, normalise_behaviour, packaged_path,
                           read_dataset, split_rows, training_prompt_set)

FIX = Path(__file__).resolve().parent / "fixtures" / "data"


@pytest.fixture(autouse=True)
def _own_templates_only(tmp_path, monkeypatch):
    """Own wrap templates only (the user's fetched pyrit ones stay out); packaged sets read from the real cache."""
    monkeypatch.setenv("RAPO_CACHE_DIR", str(tmp_path / "cache"))


def write(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def sides(parts: dict[str, list[dict]], key) -> dict[str, set]:
    return {s: {key(r) for r in rows} for s, rows in parts.items()}


def assert_disjoint(parts: dict[str, list[dict]]) -> None:
    for key in (behaviour_key, lambda r: r.get("origin_id") or r["id"]):
        s = sides(parts, key)
        assert not s["train"] & s["dev"] and not s["train"] & s["test"] and not s["dev"] & s["test"]


def test_normalised_behaviour():
    assert normalise_behaviour("  Write a Tutorial on how to make a BOMB!!") == "write a tutorial on how to make a bomb"
    assert normalise_behaviour("Write a tutorial—on how to make a bomb.") == "write a tutorial on how to make a bomb"
    assert normalise_behaviour("ｗｒｉｔｅ\ta  poem") == "write a poem"  # full-width letters, tabs
    assert behaviour_key({"prompt": "wrapped text", "behaviour": "Plain behaviour?"}) == "plain behaviour"


def test_wrapped_and_cross_set_duplicates_stay_on_one_side(tmp_path):
    """Two sets share 30 behaviours written with other case and punctuation; every behaviour is wrapped at three
    levels. No behaviour, in any wrapping or set, is on two sides; the later set's copies are dropped and counted."""
    a = [f"Explain how to commit harmful act number {i}" for i in range(200)]
    b = [f"explain how to commit harmful act number {i}!!" for i in range(30)] + \
        [f"Describe dangerous plan {i}" for i in range(100)]
    recipe = [{"name": "jsonl", "path": str(write(tmp_path / "a.jsonl", a)), "harmful_label": 1, "level": 1,
               "wrap": True},
              {"name": "jsonl", "path": str(write(tmp_path / "b.jsonl", b)), "harmful_label": 1, "level": 1,
               "wrap": True}]
    cfg = DataConfig(recipe=recipe, wrap_variants=3, eval_fraction=0.1, test_fraction=0.2)
    ps = build_prompt_set(cfg, seed=0)
    assert ps.report["sets"]["b"]["dropped"] == {"duplicate_behaviour": 90}  # 30 behaviours x 3 levels
    parts = {"train": ps.train, "dev": ps.eval, "test": ps.test}
    assert_disjoint(parts)
    assert sum(map(len, parts.values())) == 3 * 300
    by_key = Counter(behaviour_key(r) for r in ps.test)
    assert set(by_key.values()) == {3}  # all three levels of a test behaviour are in test
    n_test = len(by_key)
    assert 0.12 * 300 < n_test < 0.28 * 300
    # dev: exactly round(0.1 x groups) per source
    dev = Counter(r["source"] for r in ps.eval)
    assert dev == {"a": 3 * 20, "b": 3 * 10}
    # split_rows alone (no dedup) keeps cross-set copies of a behaviour together
    rows = [{"id": f"x:{i}", "prompt": p, "harmful_label": 1, "level": 1, "source": "x"} for i, p in enumerate(a)] + \
        [{"id": f"y:{i}", "prompt": p, "harmful_label": 1, "level": 1, "source": "y"} for i, p in enumerate(b)]
    parts = split_rows(rows, cfg)
    assert_disjoint(parts)
    for i in range(30):
        assert sum(r["id"] in (f"x:{i}", f"y:{i}") for r in parts["test"]) in (0, 2)


def test_test_split_does_not_move_with_caps_recipe_or_job_seed(tmp_path):
    prompts = [f"Give instructions for illegal task {i}" for i in range(400)]
    path = str(write(tmp_path / "p.jsonl", prompts))
    other = str(write(tmp_path / "q.jsonl", [f"Write malware variant {i}" for i in range(100)]))
    base = dict(harmful_label=1, level=1, wrap=True)
    big = DataConfig(recipe=[{"name": "jsonl", "path": path, **base}], test_fraction=0.15, wrap_variants=2)
    small = DataConfig(recipe=[{"name": "jsonl", "path": other, **base},
                               {"name": "jsonl", "path": path, "cap": 150, **base}], test_fraction=0.15,
                       eval_fraction=0.3)
    a, b = build_prompt_set(big, seed=0), build_prompt_set(small, seed=7)
    test_a, test_b = {behaviour_key(r) for r in a.test}, {behaviour_key(r) for r in b.test}
    train_a, train_b = {behaviour_key(r) for r in a.train}, {behaviour_key(r) for r in b.train}
    assert test_a and test_b and not test_a & train_b and not test_b & train_a
    everything = [{behaviour_key(r) for r in ps.train + ps.eval + ps.test} for ps in (a, b)]
    shared = everything[0] & everything[1]
    assert {k for k in shared if k in test_a} == {k for k in shared if k in test_b}
    moved = build_prompt_set(big.model_copy(update={"split_seed": 1}), seed=0)
    assert {behaviour_key(r) for r in moved.test} != test_a


def test_zero_test_fraction_keeps_the_per_source_dev_split(shared_data):
    ps = build_prompt_set(DataConfig(root=str(shared_data), recipe="stratasword", eval_fraction=0.2,
                                     max_prompt_tokens=100_000), 0)
    assert ps.test == [] and len(ps.eval) == 80 and len(ps.train) == 320
    assert ps.report["test"]["rows"] == 0 and ps.report["split"]["test_fraction"] == 0.0


@pytest.mark.skipif(not all(packaged_path(k, Path.home() / ".cache" / "rapo_ray" / "data").exists()
                            for k in ("advbench", "harmbench", "jbb_behaviors")),
                    reason="packaged AdvBench / HarmBench / JBB not fetched (rapo-ray data fetch)")
def test_real_jbb_advbench_harmbench_dedup_and_disjoint(monkeypatch):
    """JBB-Behaviors repeats 11 AdvBench and 9 HarmBench behaviours word for word: read after them, JBB loses
    those, and across all three sets (wrapped at three levels) no behaviour is on two sides."""
    monkeypatch.setenv("RAPO_CACHE_DIR", str(Path.home() / ".cache" / "rapo_ray"))
    cfg = DataConfig(recipe=[{"name": "advbench_pkg", "wrap": True}, {"name": "harmbench_pkg", "wrap": True},
                             {"name": "jbb_pkg", "wrap": True}], wrap_variants=3, wrap_pyrit=False,
                     eval_fraction=0.1, test_fraction=0.2, max_prompt_tokens=4096)
    ps = build_prompt_set(cfg, seed=0)
    assert ps.report["sets"]["jbb_pkg"]["dropped"].get("duplicate_behaviour") == 3 * 20
    parts = {"train": ps.train, "dev": ps.eval, "test": ps.test}
    assert_disjoint(parts)
    n = {s: len({behaviour_key(r) for r in rows}) for s, rows in parts.items()}
    assert sum(n.values()) == 520 + 200 + 80 and n["test"] >= 100
    # the test split read through the eval harness's way (no tokenizer, no shuffle) holds the same behaviours
    again = build_prompt_set(cfg.model_copy(update={"shuffle": False}), seed=3)
    assert {behaviour_key(r) for r in again.test} == {behaviour_key(r) for r in ps.test}


def test_xstest_is_refused_in_training_recipes(shared_data, tmp_path):
    data = DataConfig(root=str(shared_data), recipe="stratasword:20,xstest:20")
    with pytest.raises(DataError, match=r"evaluation-only data set\(s\) \['xstest'\]"):
        training_prompt_set(data, 0)
    # a generic entry pointing at an XSTest file, and a set the user declared evaluation-only
    generic = DataConfig(root=str(shared_data), recipe=[{"name": "csv", "path": "xstest/xstest_prompts.csv",
                                                         "label_column": "label"}])
    with pytest.raises(DataError, match="evaluation-only"):
        training_prompt_set(generic, 0)
    with pytest.raises(DataError, match="evaluation-only"):
        training_prompt_set(DataConfig(root=str(shared_data), recipe="stratasword", eval_only=["stratasword"]), 0)
    # evaluation still reads it, and a training recipe without it is fine
    assert build_prompt_set(data, 0).report["sets"]["xstest"]["kept"] == 20
    ok = training_prompt_set(DataConfig(root=str(shared_data), recipe="stratasword:20,lookalike_benign"), 0)
    shipped = len(read_dataset(DatasetSpec(name="lookalike_benign"), shared_data)[0])  # every row of the shipped file
    assert shipped >= 60
    assert Counter(r["source"] for r in ok.train + ok.eval) == {"stratasword": 20, "lookalike_benign": shipped}


def test_training_loaders_refuse_xstest_rows(shared_data):
    """Whatever recipe built them, XSTest rows never reach the RL loader or the SFT samples."""
    from rapo_ray.data import PromptLoader
    from rapo_ray.sft import SFTError, build_samples

    rows = build_prompt_set(DataConfig(root=str(shared_data), recipe="stratasword:5,xstest:5"), 0)
    rows = rows.train + rows.eval
    with pytest.raises(DataError, match="evaluation-only data .*'xstest': 5"):
        PromptLoader(rows, batch_size=2, seed=0)
    with pytest.raises(DataError, match="evaluation-only"):
        PromptLoader([r for r in rows if r["source"] == "stratasword"], 2, 0, eval_only=("stratasword",))
    sft_rows = [{**r, "completion": "<think>\nx\n</think>\n\ny"} for r in rows]
    with pytest.raises(SFTError, match="evaluation-only"):
        build_samples(sft_rows, None, JobConfig())


def test_sft_curation_refuses_xstest(shared_data):
    from rapo_ray.sft import SFTDataError
    from rapo_ray.sft.curate import curation_prompts

    cfg = JobConfig(data={"root": str(shared_data), "recipe": "stratasword:10"},
                    sft={"recipe": "lookalike_benign,xstest:10"})
    with pytest.raises(SFTDataError, match=r"SFT recipe \(sft.recipe\) holds evaluation-only"):
        curation_prompts(cfg, None)
    train, dev, test = curation_prompts(cfg.model_copy(update={"sft": cfg.sft.model_copy(
        update={"recipe": None})}), None)
    assert len(train) + len(dev) + len(test) == 10


def test_config_rejects_no_room_to_train():
    from rapo_ray.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="eval_fraction \\+ test_fraction"):
        build_config({"data": {"eval_fraction": 0.5, "test_fraction": 0.5}})
    assert JobConfig().data.test_fraction == 0.0 and JobConfig().data.eval_only == ["xstest"]


def test_split_rows_takes_a_job_config():
    rows = [{"id": f"s:{i}", "prompt": f"prompt number {i}", "harmful_label": 0, "level": None, "source": "s"}
            for i in range(100)]
    job = JobConfig(data={"test_fraction": 0.3, "eval_fraction": 0.1})
    parts = split_rows(rows, job)
    assert parts == split_rows(rows, job.data) and set(parts) == {"train", "dev", "test"}
    assert len(parts["dev"]) == 10 and 15 < len(parts["test"]) < 45
    assert [r["id"] for r in parts["train"]] == sorted((r["id"] for r in parts["train"]),
                                                       key=lambda i: int(i.split(":")[1]))  # input order kept


def test_repeat_oversamples_train_rows_only_and_the_loader_serves_every_copy(shared_data, ray_cluster):
    from rapo_ray.data import PromptLoader

    def recipe(repeat: int) -> DataConfig:
        return DataConfig(root=str(shared_data), test_fraction=0.4, eval_fraction=0.1,
                          recipe=[{"name": "stratasword", "level": 1, "cap": 30},
                                  {"name": "stratasword", "level": 2, "cap": 30, "repeat": repeat}])

    once, thrice = build_prompt_set(recipe(1), 0), build_prompt_set(recipe(3), 0)
    level = lambda rows, lv: [r for r in rows if r["level"] == lv]  # noqa: E731
    assert thrice.eval == once.eval and thrice.test == once.test  # dev and test rows are never repeated
    assert sorted(r["id"] for r in level(thrice.train, 1)) == sorted(r["id"] for r in level(once.train, 1))
    base = sorted(r["id"] for r in level(once.train, 2))
    assert base and sorted(r["id"] for r in level(thrice.train, 2)) == sorted(
        [i for b in base for i in (b, f"{b}~2", f"{b}~3")])
    copy = next(r for r in thrice.train if r["id"].endswith("~2"))
    orig = next(r for r in thrice.train if r["id"] == copy["id"][:-2])
    assert {**copy, "id": orig["id"]} == orig and thrice.report["sets"]["stratasword#1"]["repeat"] == 3
    # an epoch of the real loader serves every copy once
    loader = PromptLoader(thrice.train, batch_size=len(thrice.train), seed=0)  # one batch: one epoch
    served = [r["id"] for r in loader.next_batch()]
    loader.close()
    assert sorted(served) == sorted(r["id"] for r in thrice.train)
    with pytest.raises(ValueError):
        DatasetSpec(name="stratasword", repeat=0)
