"""The router served behind an OpenAI-compatible completions endpoint (the gpu profile's policy).

A router exported by verl is a HuggingFace directory; on GPUs it is served with vLLM (`vllm serve
artifacts/router --dtype float32`: vLLM's default dtype downcasts a float32 router to bfloat16) or
SGLang, and the evaluation talks to it over `/v1/completions`. Prompts go
as token ids (the OpenAI API accepts a list of ints), so the server sees exactly the context the
rollout built, and the reply comes back as the ids the server generated (`return_token_ids`, a
vLLM extension: `choices[0].token_ids`). Only a server without it gets its text encoded back with
the router's own tokenizer, which byte-level BPE does not round-trip (the encoding can merge
tokens the policy emitted apart); such turns are marked `Generation.reencoded`, counted on the
trajectory and in the evaluation record. Stop strings are kept in the output
(`include_stop_str_in_output`, a vLLM and SGLang extension; `stop_reason` is the fallback)
because the rollout parses `</search>` and `</answer>`.

Retries: connection errors, timeouts, 429 and 5xx, bounded, exponential backoff with full
jitter; this is the only retry layer on this path. Other errors raise `PolicyServerError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from routerops.rollout import Generation
from routerops.tokens import Tokenizer

__all__ = ["CompletionsPolicy", "PolicyServerConfig", "PolicyServerError"]

_RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
# How much of a malformed value an error message quotes: enough to see what the server sent.
_QUOTE_CHARS = 200

_log = logging.getLogger(__name__)


class PolicyServerError(RuntimeError):
    """The policy server failed for good: a non-retryable status, a malformed reply, or retries
    exhausted. The message names the URL and what went wrong."""


@dataclass(frozen=True)
class PolicyServerConfig:
    base_url: str                     # ends in /v1
    model: str                        # the served model name
    api_key: str | None = None
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0     # a 1,024-token turn of a 3B model under load
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 10.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"policy base_url must be an http(s) URL, got {self.base_url!r}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")


class CompletionsPolicy:
    """A TokenGenerator over `/v1/completions`. Log-probs are not requested (evaluation only)."""

    def __init__(self, config: PolicyServerConfig, tokenizer: Tokenizer, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config, self.tokenizer = config, tokenizer
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"), headers=headers, transport=transport,
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=config.max_connections,
                                max_keepalive_connections=config.max_connections))
        self._rng = random.Random(config.seed)
        self._calls = 0
        self.attempts = 0  # HTTP requests sent, retries included
        self.reencoded = 0  # replies without token ids, whose text was encoded back (see the module doc)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def generate(self, prompt_ids: list[int], *, max_new_tokens: int, stop: Sequence[str]) -> Generation:
        c = self.config
        # One seed per request, in call order: a sampled evaluation repeats exactly when requests
        # arrive in the same order (always with the replay pool; not with live candidates' jitter).
        self._calls += 1
        body: dict[str, Any] = {
            "model": c.model, "prompt": list(prompt_ids), "max_tokens": max_new_tokens, "stop": list(stop),
            "include_stop_str_in_output": True, "return_token_ids": True, "seed": c.seed + self._calls,
            "temperature": 0.0 if c.greedy else c.temperature, "top_p": 1.0 if c.greedy else c.top_p,
        }
        choice = await self._post(body)
        text = choice.get("text")
        if not isinstance(text, str):
            raise PolicyServerError(f"{c.base_url}/completions: reply has no choices[0].text")
        reason = choice.get("finish_reason")
        stop_reason = choice.get("stop_reason")
        patched = False
        if reason == "stop" and isinstance(stop_reason, str) and not text.endswith(stop_reason):
            text += stop_reason  # server without include_stop_str_in_output
            patched = True
        finish: Literal["stop", "length", "eos"]
        finish = "stop" if any(s in text for s in stop) else ("length" if reason == "length" else "eos")
        server_ids = choice.get("token_ids")
        # The server's ids, unless the text had to be completed with its stop string: then the
        # ids lack it and only the re-encoded text holds the closing tag the turn parses on.
        if server_ids is not None and not patched:
            ids = self._token_ids(server_ids)
            if len(ids) > max_new_tokens:  # a server that ignored max_tokens
                ids, finish = ids[:max_new_tokens], "length"
            return Generation(ids, None, finish)
        if self.reencoded == 0:
            _log.warning("%s/completions returns no token ids (vLLM's return_token_ids); re-encoding its text, "
                         "which can differ from the tokens the router generated", c.base_url)
        self.reencoded += 1
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > max_new_tokens:  # the server's tokens and ours can differ at the margin
            ids, finish = ids[:max_new_tokens], "length"
        return Generation(ids, None, finish, reencoded=True)

    def _token_ids(self, value: object) -> list[int]:
        # bool is an int subclass: `true` is a broken server, not token 1.
        if not isinstance(value, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            raise PolicyServerError(f"{self.config.base_url}/completions: choices[0].token_ids is not a list of "
                                    f"token ids: {repr(value)[:_QUOTE_CHARS]}")
        return value

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        url = f"{c.base_url}/completions"
        last = ""
        for attempt in range(1, c.max_attempts + 1):
            self.attempts += 1
            try:
                resp = await self._http.post("/completions", json=body)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    try:
                        payload = resp.json()
                        return dict(payload["choices"][0])
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise PolicyServerError(f"{url}: malformed reply: {resp.text[:_QUOTE_CHARS]!r}") from None
                if resp.status_code not in _RETRYABLE:
                    raise PolicyServerError(f"{url}: HTTP {resp.status_code}: {resp.text[:_QUOTE_CHARS]}")
                last = f"HTTP {resp.status_code}"
            if attempt < c.max_attempts:
                cap = min(c.backoff_max_s, c.backoff_base_s * 2 ** (attempt - 1))
                await asyncio.sleep(self._rng.uniform(0, cap))
        raise PolicyServerError(f"{url}: gave up after {c.max_attempts} attempts ({last})")
