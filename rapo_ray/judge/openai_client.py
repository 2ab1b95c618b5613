"""An OpenAI-compatible chat endpoint as the LLM judge's engine (e.g. a judge served by ``vllm serve``).

Requests run concurrently (at most ``concurrency`` at a time), each with a timeout and bounded retries
with exponential backoff on connection errors, timeouts, 429 and 5xx (or as long as a 429/503's ``Retry-After``
says, up to ``_MAX_RETRY_AFTER_S``). A request rejected because it is
too long for the served model's context is reported as None (a counted fallback); any other failure,
after its retries, is a :class:`JudgeError` naming the endpoint.
"""
from __future__ import annotations

import os
import time
from email.utils import parsedate_to_datetime
from concurrent.futures import ThreadPoolExecutor

import httpx

from rapo_ray.config import JudgeConfig
from rapo_ray.judge.prompts import Message
from rapo_ray.judge.reward import JudgeError

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_MAX_RETRY_AFTER_S = 60.0
_TOO_LONG_HINTS = ("maximum context length", "context length", "too long", "max_model_len", "maximum input length")


def _retry_after(resp: httpx.Response) -> float:
    """Seconds a 429/503 asks the client to wait (``Retry-After`` as seconds or an HTTP date), capped; else 0."""
    value = resp.headers.get("retry-after") if resp.status_code in (429, 503) else None
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


class OpenAIEngine:
    def __init__(self, jcfg: JudgeConfig, backoff_s: float = 0.5):
        oc = jcfg.openai
        self.url = oc.base_url.rstrip("/") + "/chat/completions"
        self.model = oc.model
        self.max_tokens = jcfg.max_tokens
        self.max_retries = oc.max_retries
        self.concurrency = oc.concurrency
        self.backoff_s = backoff_s
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(oc.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(oc.timeout_s),
                                   limits=httpx.Limits(max_connections=oc.concurrency))
        self.http_retries = 0  # retried requests, for the metrics

    def generate(self, chats: list[list[Message]]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(chats)))) as pool:
            return list(pool.map(self._one, chats))

    def _one(self, chat: list[Message]) -> str | None:
        body = {"model": self.model, "messages": chat, "temperature": 0.0, "max_tokens": self.max_tokens}
        last, attempt, wait = "", 0, 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.http_retries += 1
                time.sleep(max(wait, self.backoff_s * 2 ** (attempt - 1)))
            try:
                resp = self.client.post(self.url, json=body)
            except httpx.HTTPError as e:  # connection refused, timeouts, protocol errors: retried
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code == 200:
                return self._text(resp)
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            wait = _retry_after(resp)
            if resp.status_code == 400 and any(h in resp.text.lower() for h in _TOO_LONG_HINTS):
                return None
            if resp.status_code not in _RETRY_STATUS:
                break
        raise JudgeError(f"judge endpoint {self.url} (model {self.model!r}) failed after {attempt + 1} "
                         f"attempt(s): {last}")

    def _text(self, resp: httpx.Response) -> str:
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"judge endpoint {self.url} sent an unexpected body: {resp.text[:300]}") from e
        return content or ""

    def close(self) -> None:
        self.client.close()
