"""The OpenAI chat-completions wire format the router service speaks: requests, replies, stream
chunks and errors, as plain data (no web framework here).

What the service does with a conversation: the question is the content of the LAST user message.
Earlier messages (user or assistant turns) and system or developer prompts are not passed to the
router, whose prompt is its own (Router-R1's protocol has no conversation history); the reply
says how many messages were left out (`routerops.ignored_messages`), so a client never mistakes
that for the router having read them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from routerops.serving import Answer

__all__ = ["ApiError", "ChatRequest", "RouterOptions", "chat_completion", "error_body", "parse_chat_request",
           "sse_chunks"]


class ApiError(Exception):
    """An error reply in OpenAI's shape: HTTP status, type, message, param and code."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type_=self.type, param=self.param, code=self.code, extra=self.extra)


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}, **(extra or {})}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class RouterOptions(_Strict):
    """`extra_body={"routerops": {...}}`."""

    max_usd: float | None = Field(None, ge=0, allow_inf_nan=False)  # cap on this request's candidate spend
    route_to: tuple[str, ...] | None = Field(None, min_length=1)  # the candidates the router may call


class ChatRequest(_Strict):
    """The chat-completions fields the service reads; sampling fields a client may send are
    accepted and ignored (the router decodes as it was evaluated; see the docs)."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    routerops: RouterOptions = RouterOptions()

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"n must be 1 (one routed answer per request), got {v}")
        return v

    def question(self) -> tuple[str, int]:
        """(the last user message's text, how many other messages are left out)."""
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        if not users:
            raise ApiError(400, "messages has no user message: the question is the last user message",
                           param="messages")
        return self.messages[users[-1]].text(), len(self.messages) - 1


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ApiError(400, f"{loc}: {err['msg']}", param=loc or None) from None


def _finish(answer: Answer) -> str:
    return "stop" if answer.trajectory.stop_reason == "answer" else "length"


def _routerops(answer: Answer, ignored: int) -> dict[str, Any]:
    return {**answer.bill.as_json(), "ignored_messages": ignored}


def _usage(answer: Answer) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion(answer: Answer, *, model: str, ignored: int, completion_id: str,
                    created: int | None = None) -> dict[str, Any]:
    """A `ChatCompletion` with the `routerops` bill beside the standard fields."""
    return {
        "id": completion_id, "object": "chat.completion", "created": int(created or time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "logprobs": None,
                     "finish_reason": _finish(answer)}],
        "usage": _usage(answer), "routerops": _routerops(answer, ignored),
    }


def sse_chunks(answer: Answer, *, model: str, ignored: int, completion_id: str, include_usage: bool,
               created: int | None = None) -> Iterator[str]:
    """The reply as server-sent events: role, content, finish (with the bill), usage when asked,
    then `[DONE]`. The episode has ended before the first chunk, so a stream never fails midway."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(created or time.time()),
            "model": model}

    def event(choices: list[dict[str, Any]], **more: Any) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **more})}\n\n"

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    if answer.text:
        yield event([{"index": 0, "delta": {"content": answer.text}, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "finish_reason": _finish(answer)}], routerops=_routerops(answer, ignored))
    if include_usage:
        yield event([], usage=_usage(answer))
    yield "data: [DONE]\n\n"
