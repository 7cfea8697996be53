"""The multi-round routing episode, independent of how tokens are produced.

One episode: the policy generates until `</search>` or `</answer>`; a search is parsed and, in
routing turns, executed against a candidate backend; the reply comes back as an information
block whose tokens are masked out of the loss (mask 0); after `max_turns` routing turns one
final turn runs in which routing is no longer executed. Episodes are independent coroutines, so
candidate calls overlap across trajectories; a generator may batch concurrent requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from routerops.candidates.budget import Budget
from routerops.candidates.types import (
    REPLY_ORIGINS,
    CallContext,
    CallOrigin,
    CandidateBackend,
    CandidateReply,
    FailureKind,
    QuestionInfo,
)
from routerops.pool import Pool
from routerops.protocol import (
    OBS_PREFIX,
    OBS_SUFFIX,
    ROUTER_R1,
    Action,
    Answer,
    FormatRules,
    Invalid,
    NoAction,
    Route,
    Segment,
    UnknownModel,
    extract_answer,
    parse_turn,
    render_observation,
)
from routerops.rewards import CallUsage
from routerops.tokens import Tokenizer, decode_text

__all__ = [
    "CallRecord",
    "Generation",
    "PromptTooLong",
    "RolloutLimits",
    "StopReason",
    "TokenGenerator",
    "Trajectory",
    "run_episode",
    "run_episodes",
]

STOP_STRINGS = ("</search>", "</answer>")

# Why an episode ended: an answer; end of sequence or the turn's token cap without an action; a
# turn that hit a stop string without a parsable action; the answer-only turn without an answer;
# no room left in the context.
StopReason = Literal["answer", "eos", "length", "no_action", "max_turns", "context_full"]


@dataclass(frozen=True)
class RolloutLimits:
    """Episode limits in policy tokens (params `rollout`, built by `RolloutParams.limits()`)."""

    max_turns: int             # routing turns; one answer-only turn follows
    max_tokens_per_turn: int
    max_obs_tokens: int        # inner text of one information block
    max_prompt_tokens: int
    max_context_tokens: int    # prompt + everything appended
    rules: FormatRules = ROUTER_R1  # which searches execute, and the format check (params `rollout.format`)

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_tokens_per_turn", "max_obs_tokens", "max_prompt_tokens", "max_context_tokens"):
            if getattr(self, name) < (0 if name == "max_turns" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_prompt_tokens >= self.max_context_tokens:
            raise ValueError("max_prompt_tokens must be below max_context_tokens")


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: Literal["stop", "length", "eos"] = "stop"
    # True when the ids are our tokenizer's encoding of a server's text rather than the ids the
    # policy generated (a completions server that returns no token ids). Byte-level BPE text does
    # not round-trip: the encoding can merge what the policy emitted as separate tokens, so such a
    # turn may be shorter than, and continue differently from, the policy's own.
    reencoded: bool = False


class TokenGenerator(Protocol):
    """Token ids in, new token ids (and their log-probs) out; stops at any of `stop`."""

    async def generate(self, prompt_ids: list[int], *, max_new_tokens: int, stop: Sequence[str]) -> Generation: ...


class PromptTooLong(ValueError):
    def __init__(self, question_id: str, tokens: int, limit: int) -> None:
        super().__init__(f"question {question_id}: prompt has {tokens} tokens, limit is {limit}")
        self.question_id, self.tokens, self.limit = question_id, tokens, limit


@dataclass(frozen=True)
class CallRecord:
    """One routing action of an episode: a call that replied, failed, or named no known model."""

    turn: int
    model: str  # the pool name, or what the router wrote when it named no pool model
    query: str
    reply: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    origin: CallOrigin
    latency_s: float
    attempts: int
    failure: FailureKind | None = None  # set exactly when origin is FAILED
    failure_detail: str | None = None

    @property
    def ok(self) -> bool:
        """A reply came back (and was charged)."""
        return self.origin in REPLY_ORIGINS

    def usage(self) -> CallUsage:
        return CallUsage(self.model, self.completion_tokens, self.prompt_tokens)


@dataclass
class Trajectory:
    question: QuestionInfo
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)   # 1 policy token, 0 observation token
    logprobs: list[float] = field(default_factory=list)  # 0.0 at observation tokens
    segments: list[Segment] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    turns: int = 0
    stop_reason: StopReason | None = None  # set when the episode ends
    reencoded_turns: int = 0  # policy turns whose ids were re-encoded from text (`Generation.reencoded`)

    @property
    def answer(self) -> str | None:
        return extract_answer(self.segments)

    @property
    def response_text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)

    def usages(self) -> list[CallUsage]:
        """Executed, successful calls: what cost accounting and repricing use."""
        return [c.usage() for c in self.calls if c.ok]

    def _append(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None, text: str) -> None:
        self.response_ids.extend(ids)
        self.loss_mask.extend([mask] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
        kind: Literal["policy", "observation"] = "policy" if mask else "observation"
        if self.segments and self.segments[-1].kind == kind:
            self.segments[-1] = Segment(kind, self.segments[-1].text + text)
        else:
            self.segments.append(Segment(kind, text))


def _truncate_at_stop(ids: list[int], tokenizer: Tokenizer, stops: Sequence[str]) -> tuple[int, bool]:
    """Smallest prefix length whose text contains a stop string (binary search on decodes)."""
    full = decode_text(tokenizer, ids)
    if not any(s in full for s in stops):
        return len(ids), False
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode_text(tokenizer, ids[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo, True


def _describe(action: Action) -> str:
    if isinstance(action, Route):
        return f"route:{action.model}"
    if isinstance(action, UnknownModel):
        return "unknown_model"
    if isinstance(action, Invalid):
        return f"invalid:{action.reason.value}"
    if isinstance(action, Answer):
        return "answer"
    return "none"


async def run_episode(
    question: QuestionInfo,
    prompt_ids: Sequence[int],
    *,
    generator: TokenGenerator,
    tokenizer: Tokenizer,
    pool: Pool,
    backend: CandidateBackend,
    limits: RolloutLimits,
    budget: Budget | None = None,
) -> Trajectory:
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise PromptTooLong(question.id, len(prompt_ids), limits.max_prompt_tokens)
    traj = Trajectory(question=question, prompt_ids=list(prompt_ids))
    tag_overhead = len(tokenizer.encode(OBS_PREFIX + OBS_SUFFIX, add_special_tokens=False))
    eos = tokenizer.eos_token_id

    for turn in range(limits.max_turns + 1):
        routing = turn < limits.max_turns
        room = limits.max_context_tokens - len(traj.prompt_ids) - len(traj.response_ids)
        if room <= 0:
            traj.stop_reason = "context_full"
            break
        gen = await generator.generate(
            traj.prompt_ids + traj.response_ids,
            max_new_tokens=min(limits.max_tokens_per_turn, room),
            stop=STOP_STRINGS,
        )
        ids = list(gen.token_ids)[: min(limits.max_tokens_per_turn, room)]
        cut, hit_stop = _truncate_at_stop(ids, tokenizer, STOP_STRINGS)
        ids = ids[:cut]
        lps = list(gen.logprobs)[:cut] if gen.logprobs is not None else None
        traj.turns = turn + 1
        traj.reencoded_turns += gen.reencoded
        text = decode_text(tokenizer, ids)
        traj._append(ids, 1, lps, text)
        action = parse_turn(text, pool, limits.rules) if ids else NoAction()
        traj.actions.append(_describe(action))

        if isinstance(action, Answer):
            traj.stop_reason = "answer"
            break
        if isinstance(action, NoAction):
            ended_eos = bool(ids) and eos is not None and ids[-1] == eos
            traj.stop_reason = "eos" if ended_eos or gen.finish_reason == "eos" else (
                "length" if not hit_stop else "no_action")
            break
        if not routing:
            traj.stop_reason = "max_turns"  # the final turn never executes routing
            break

        if isinstance(action, Invalid):
            continue  # Router-R1: empty observation, the episode goes on
        obs_room = limits.max_context_tokens - len(traj.prompt_ids) - len(traj.response_ids) - tag_overhead
        if obs_room <= 0:
            traj.stop_reason = "context_full"
            break
        if isinstance(action, UnknownModel):
            reply_text: str | None = None
            traj.calls.append(CallRecord(turn, action.written_name, action.query, None, 0, 0, 0.0,
                                         CallOrigin.UNKNOWN_MODEL, 0.0, 0))
        else:
            assert isinstance(action, Route)
            cand = pool.get(action.model)
            result = await backend.call(cand, action.query, CallContext(question=question, budget=budget))
            if isinstance(result, CandidateReply):
                reply_text = result.text
                traj.calls.append(CallRecord(
                    turn, cand.name, action.query, result.text, result.prompt_tokens,
                    result.completion_tokens, cand.cost_usd(result.completion_tokens, result.prompt_tokens),
                    result.origin, result.latency_s, result.attempts))
            else:
                reply_text = None  # the policy sees 'None', as for an unknown model; cost 0
                traj.calls.append(CallRecord(
                    turn, cand.name, action.query, None, 0, 0, 0.0, CallOrigin.FAILED,
                    result.latency_s, result.attempts, result.kind, result.detail))
        obs = render_observation(reply_text, tokenizer, min(limits.max_obs_tokens, obs_room))
        obs_ids = tokenizer.encode(obs, add_special_tokens=False)
        traj._append(obs_ids, 0, None, obs)
    return traj  # every way through the last turn sets stop_reason


async def run_episodes(
    items: Sequence[tuple[QuestionInfo, Sequence[int]]],
    *,
    concurrency: int = 16,
    budgets: Sequence[Budget | None] | None = None,
    **kwargs: object,
) -> list[Trajectory]:
    """Run many episodes concurrently (candidate calls overlap); results keep input order.

    `budgets`, when given, holds one request budget per item (None for unlimited).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if budgets is not None and len(budgets) != len(items):
        raise ValueError(f"{len(budgets)} budgets for {len(items)} episodes")
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Trajectory:
        q, ids = items[i]
        async with sem:
            return await run_episode(q, ids, budget=budgets[i] if budgets else None, **kwargs)  # type: ignore[arg-type]

    return list(await asyncio.gather(*(one(i) for i in range(len(items)))))
