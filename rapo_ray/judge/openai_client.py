"""An OpenAI-compatible chat endpoint as the LLM judge's engine (e.g. a judge served by ``vllm serve``).

Built on the ``openai`` package: its client retries connection errors, timeouts, 408/409/429 and 5xx with
exponential backoff, honouring a server's ``Retry-After``, at most ``judge.openai.max_retries`` times, each
request under ``timeout_s``. Requests run concurrently (at most ``concurrency`` at a time). A request rejected
because it is too long for the served model's context is reported as None (a counted fallback); any other
failure, after its retries, is a :class:`JudgeError` naming the endpoint.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai

from rapo_ray.config import JudgeConfig
from rapo_ray.judge.prompts import Message
from rapo_ray.judge.reward import JudgeError

_TOO_LONG_HINTS = ("maximum context length", "context length", "too long", "max_model_len", "maximum input length")


class OpenAIEngine:
    def __init__(self, jcfg: JudgeConfig):
        oc = jcfg.openai
        self.url = oc.base_url.rstrip("/") + "/chat/completions"
        self.model = oc.model
        self.max_tokens = jcfg.max_tokens
        self.concurrency = oc.concurrency
        self._sent = threading.local()  # requests sent by this thread's current call (first try + retries)
        self._lock = threading.Lock()
        self.http_retries = 0  # retried requests, for the metrics
        http = httpx2.Client(limits=httpx2.Limits(max_connections=oc.concurrency),
                             event_hooks={"request": [self._count]})
        # A served judge (vLLM) needs no key; the client requires one, and sends it as a bearer token.
        self.client = openai.OpenAI(base_url=oc.base_url, api_key=os.environ.get(oc.api_key_env) or "unused",
                                    max_retries=oc.max_retries, timeout=oc.timeout_s, http_client=http)

    def _count(self, request: httpx2.Request) -> None:
        self._sent.n = getattr(self._sent, "n", 0) + 1

    def generate(self, chats: list[list[Message]]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(chats)))) as pool:
            return list(pool.map(self._one, chats))

    def _one(self, chat: list[Message]) -> str | None:
        self._sent.n = 0
        try:
            resp = self.client.chat.completions.create(model=self.model, messages=chat, temperature=0.0,
                                                       max_tokens=self.max_tokens)
        except openai.BadRequestError as e:
            if any(h in str(e).lower() for h in _TOO_LONG_HINTS):
                return None
            raise self._error(f"HTTP 400: {_body(e)}") from e
        except openai.APIStatusError as e:
            raise self._error(f"HTTP {e.status_code}: {_body(e)}") from e
        except openai.APIConnectionError as e:  # timeouts included (APITimeoutError)
            cause = e.__cause__ or e
            raise self._error(f"{type(cause).__name__}: {cause}") from e
        finally:
            with self._lock:
                self.http_retries += max(self._sent.n - 1, 0)
        try:
            return resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as e:
            raise JudgeError(f"judge endpoint {self.url} sent an unexpected body: {str(resp)[:300]}") from e

    def _error(self, last: str) -> JudgeError:
        return JudgeError(f"judge endpoint {self.url} (model {self.model!r}) failed after {self._sent.n} "
                          f"attempt(s): {last}")

    def close(self) -> None:
        self.client.close()


def _body(e: openai.APIStatusError) -> str:
    return e.response.text[:300] if e.response is not None else str(e)[:300]
