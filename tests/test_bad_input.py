"""The bad-input corpus (``tests/fixtures/bad/``, issue 19): every bad file, config, model folder or recipe gets a
clear error that names the file and the fix, or a counted drop; none reaches a run."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rapo_ray.config import ConfigError, DatasetSpec, JobConfig, ModelConfig, load_config
from rapo_ray.data import read_dataset
from rapo_ray.data.recipe import build_prompt_set
from rapo_ray.data.rows import DataError
from rapo_ray.models import ModelError, format_prompt, load_tokenizer, resolve_model

BAD = Path(__file__).parent / "fixtures" / "bad"


def _spec(name: str, **kw) -> DatasetSpec:
    return DatasetSpec(name=name.rsplit(".", 1)[1], path=str(BAD / name), label_column="label", **kw)


def test_every_file_of_the_corpus_is_covered():
    covered = {*ERRORS, *DROPS, *CONFIG_ERRORS, "missing_set.yaml"}
    assert sorted(p.name for p in BAD.iterdir() if p.name != "README.md") == sorted(covered)


ERRORS = {
    "truncated.jsonl": r"truncated\.jsonl:3: not a JSON record .*fix or delete that line",
    "latin1.jsonl": r"latin1\.jsonl: not UTF-8 text \(byte 0xe9 at offset 15\); convert it, e\.g\. `iconv",
    "missing_column.jsonl": r"missing_column\.jsonl has no column among \['prompt'\] \(columns: \['text', 'label'\]\); "
                            r"name the right one in the recipe entry",
    "empty.jsonl": r"empty\.jsonl: holds no records",
    "not_records.json": r"not_records\.json: record 1 is a str, not an object",
    "not_parquet.parquet": r"not_parquet\.parquet: cannot be read as parquet \(ArrowInvalid",
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_unreadable_data_files_are_clear_errors_naming_the_file(name):
    with pytest.raises(DataError, match=ERRORS[name]):
        read_dataset(_spec(name), BAD)


DROPS = {  # file: (rows kept, {drop reason: count})
    "nonstring_prompt.jsonl": (1, {"bad_prompt": 2, "empty_prompt": 2}),
    "bad_label.jsonl": (0, {"bad_label": 1}),
    "bad_quotes.csv": (1, {"bad_label": 1}),  # the unclosed quote swallows the rest of the file into one field
}


@pytest.mark.parametrize("name", sorted(DROPS))
def test_bad_rows_are_counted_drops(name):
    rows, report = read_dataset(_spec(name), BAD)
    kept, drops = DROPS[name]
    assert len(rows) == kept and dict(report.counts) == drops
    assert all(isinstance(r["prompt"], str) and r["prompt"] for r in rows)


def test_a_huge_row_is_a_counted_drop_of_the_recipe(tmp_path, tiny_model_dir):
    rows = [{"prompt": "word " * 200_000, "label": 1}] + [{"prompt": f"How do I bake loaf {i}?", "label": 0}
                                                          for i in range(4)]
    (tmp_path / "huge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = JobConfig(data={"recipe": [{"name": "jsonl", "path": str(tmp_path / "huge.jsonl"),
                                      "label_column": "label"}], "test_fraction": 0.0, "eval_fraction": 0.0})
    ps = build_prompt_set(cfg.data, 0, load_tokenizer(tiny_model_dir, cfg.model))
    assert len(ps.train) == 4 and all(len(r["prompt"]) < 100 for r in ps.train)
    assert "too_long" in json.dumps(ps.report)


CONFIG_ERRORS = {
    "wrong_types.yaml": r"(?s)rollout\.n: Input should be a valid integer.*got 'four'.*rollout\.max_tokens: Input should be "
                        r"greater than or equal to 1 \(got -3\)",
    "unknown_key.yaml": r"(?s)unknown_key\.yaml:.*rollot: unknown key",
    "not_yaml.yaml": r"invalid YAML in .*not_yaml\.yaml",
    "list_top.yaml": r"list_top\.yaml: top level must be a mapping, got list",
}


@pytest.mark.parametrize("name", sorted(CONFIG_ERRORS))
def test_bad_yaml_is_a_config_error_naming_the_file(name):
    with pytest.raises(ConfigError, match=CONFIG_ERRORS[name]) as e:
        load_config(BAD / name)
    assert "\n" not in str(e.value).split(":", 1)[0]


def test_a_recipe_naming_a_missing_set_fails_before_any_work(tiny_model_dir):
    cfg = load_config(BAD / "missing_set.yaml")
    with pytest.raises(DataError, match="unknown data set 'no_such_set'; known: .*stratasword"):
        build_prompt_set(cfg.data, 0, load_tokenizer(tiny_model_dir, cfg.model))


def test_cli_prints_one_line_and_exits_2_on_bad_input(tmp_path, tiny_model_dir):
    """Through the command line: no traceback, the file and the fix in one line, exit status 2."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"name: bad\nmodel: {{name_or_path: {tiny_model_dir}}}\n"
                   f"data:\n  recipe:\n    - {{name: jsonl, path: {BAD / 'truncated.jsonl'}, label_column: label}}\n")
    for argv, where in ((["data", "inspect", str(cfg)], "truncated.jsonl:3"),
                        (["data", "inspect", str(BAD / "wrong_types.yaml")], "wrong_types.yaml")):
        out = subprocess.run([sys.executable, "-m", "rapo_ray", *argv], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("rapo-ray: ")]
        assert len(lines) == 1 and "Traceback" not in out.stderr and where in lines[0], out.stderr


def test_model_folders_without_safetensors_weights_are_refused(tmp_path, tiny_model_dir):
    empty = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir, empty, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelError, match=r"no_weights has no \*\.safetensors weights \(a download or copy"):
        resolve_model(str(empty))
    pickled = tmp_path / "pickled"
    shutil.copytree(empty, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelError, match=r"it has pytorch_model\.bin: pickled or foreign formats are not loaded"):
        resolve_model(str(pickled))
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_a_tokenizer_without_a_chat_template_is_a_clear_error(tmp_path, tiny_model_dir):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare, ignore=shutil.ignore_patterns("chat_template.jinja"))
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ModelError, match=r"the tokenizer at .*bare has no chat template; set model\.chat_template"):
        format_prompt(load_tokenizer(bare, ModelConfig()), "Hi", ModelConfig())
    # the fix the message names works: a template in the config
    fixed = ModelConfig(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    text = format_prompt(load_tokenizer(bare, fixed), "Hi", fixed)
    assert text.startswith("Hi")
