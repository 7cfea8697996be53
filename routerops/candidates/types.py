"""Typed results and the backend protocol shared by every way of calling a candidate."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from routerops.candidates.budget import Budget
from routerops.pool import Candidate

__all__ = [
    "REPLY_ORIGINS",
    "CallContext",
    "CallOrigin",
    "CallResult",
    "CallTask",
    "CandidateBackend",
    "CandidateFailure",
    "CandidateReply",
    "FailureKind",
    "QuestionInfo",
    "candidate_messages",
]

# Our wording of the instruction each candidate receives with the router's sub-question.
HELPER_INSTRUCTION = (
    "You are one of several assistants working together on a question. Reply to the request "
    "below as directly as you can. If you cannot answer it fully, give the facts or context "
    "that would help someone else answer it. Keep your reply short."
)


# A baseline's call: the question itself, answered short in a stated format, as Router-R1's
# direct-answer baselines ask, so the answer is read from the reply the way a user would read it.
DIRECT_INSTRUCTION = (
    "Answer the question below. Reply with the short answer only (a name, a date, a number or a "
    "few words), on one line, in the form\nAnswer: <short answer>"
)


class CallTask(enum.StrEnum):
    HELP = "help"  # the router's sub-question: help it answer (Router-R1's helper instruction)
    DIRECT = "direct"  # a baseline: answer the question itself, short, as `Answer: ...`


def candidate_messages(query: str, task: CallTask = CallTask.HELP) -> list[dict[str, str]]:
    """The single user message sent to a candidate: instruction + sub-question (Router-R1's
    helper call), or, for a baseline, the direct-answer instruction + the question."""
    if task is CallTask.DIRECT:
        return [{"role": "user", "content": f"{DIRECT_INSTRUCTION}\n\nQuestion: {query.strip()}"}]
    return [{"role": "user", "content": f"{HELPER_INSTRUCTION}\n\nRequest: {query.strip()}"}]


class FailureKind(enum.StrEnum):
    CONNECT = "connect"            # could not connect / connection dropped
    TIMEOUT = "timeout"            # connect or read timeout, after all retries
    HTTP_STATUS = "http_status"    # non-retryable 4xx, or retryable status after all retries
    MALFORMED = "malformed"        # 2xx with a body that is not an OpenAI chat completion
    BUDGET = "budget"              # refused before calling: request or run budget spent
    NOT_CONFIGURED = "not_configured"  # endpoint env vars missing


class CallOrigin(enum.StrEnum):
    """Where a call's outcome came from. The first five are replies; the last two are not."""

    HTTP = "http"                        # an OpenAI-compatible endpoint answered
    CACHE = "cache"                      # the response cache answered (a reply paid for earlier)
    REPLAY_RECORDED = "replay:recorded"  # offline replay pool, the recorded score's outcome as is
    REPLAY_CALIBRATED = "replay:calibrated"  # a recorded outcome that calibration changed (a draw, really)
    REPLAY_PRIOR = "replay:prior"        # offline replay pool, correctness drawn from a prior
    FAILED = "failed"                    # the backend returned a CandidateFailure (see its kind)
    UNKNOWN_MODEL = "unknown_model"      # the router named no model of the pool: nothing was called


REPLY_ORIGINS = frozenset({CallOrigin.HTTP, CallOrigin.CACHE, CallOrigin.REPLAY_RECORDED, CallOrigin.REPLAY_CALIBRATED,
                           CallOrigin.REPLAY_PRIOR})


@dataclass(frozen=True)
class QuestionInfo:
    """The user question an episode answers; the replay pool keys correctness on it."""

    id: str
    text: str
    data_source: str = "unknown"
    golden_answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class CandidateReply:
    model: str                 # pool name of the candidate
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int = 1
    usage_estimated: bool = False  # True when the server sent no usage and we counted locally
    origin: CallOrigin = CallOrigin.HTTP  # one of REPLY_ORIGINS

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class CandidateFailure:
    model: str
    kind: FailureKind
    status: int | None
    attempts: int
    detail: str
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return False


CallResult = CandidateReply | CandidateFailure


@dataclass
class CallContext:
    """Per-call context: the episode's question and the budget the call is charged to."""

    question: QuestionInfo | None = None
    budget: Budget | None = None
    tags: dict[str, str] = field(default_factory=dict)
    task: CallTask = CallTask.HELP


@runtime_checkable
class CandidateBackend(Protocol):
    """Anything that answers a sub-question as a candidate: HTTP, replay, cache wrapper."""

    async def call(self, candidate: Candidate, query: str, context: CallContext | None = None) -> CallResult: ...
