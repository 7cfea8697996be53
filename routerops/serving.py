"""Answering one request with a packaged router, and its bill.

`Router` runs the same episode loop (`routerops.rollout.run_episode`) with the same policy and
candidate backends (`routerops.runtime.build_policy`, `build_backend`) as training and evaluation:
one code path runs an episode, whether it is a GRPO rollout, an evaluation question or a client's
request. Every request gets a `Bill`: which models were called with which sub-questions, their
tokens, dollars (under the packaged prices), latency and typed outcome.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from routerops.candidates.budget import RequestBudget
from routerops.candidates.replay import question_key
from routerops.candidates.types import CallOrigin, FailureKind, QuestionInfo
from routerops.config import CandidatesParams
from routerops.packaging import LoadedPackage
from routerops.policy import build_policy
from routerops.pool import Pool
from routerops.prompt import normalize_question
from routerops.protocol import FormatRules, check_format
from routerops.rollout import PromptTooLong, Trajectory, run_episode
from routerops.runtime import Backends, build_backend, encode_prompt

__all__ = ["KEYS_DB_ENV", "STATE_DIR_ENV", "Answer", "Bill", "BillLine", "QuestionTooLong",
           "RequestError", "Router", "UnknownCandidate", "keys_db_path", "serving_candidates", "state_dir"]

KEYS_DB_ENV = "ROUTEROPS_KEYS_DB"
STATE_DIR_ENV = "ROUTEROPS_STATE_DIR"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where a service keeps what it writes (key store, response cache): `$ROUTEROPS_STATE_DIR`,
    else `routerops/` under BentoML's home (`$BENTOML_HOME`, else ~/bentoml). State of the
    deployment, never of the package: BentoML may run the worker inside the Bento's directory."""
    env = os.environ if environ is None else environ
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV])
    home = Path(env["BENTOML_HOME"]) if env.get("BENTOML_HOME") else Path.home() / "bentoml"
    return home / "routerops"


def keys_db_path(environ: Mapping[str, str] | None = None) -> Path:
    """The API key store a service uses: `$ROUTEROPS_KEYS_DB`, else `keys.sqlite` in `state_dir`."""
    env = os.environ if environ is None else environ
    if env.get(KEYS_DB_ENV):
        return Path(env[KEYS_DB_ENV])
    return state_dir(env) / "keys.sqlite"


def serving_candidates(p: CandidatesParams, environ: Mapping[str, str] | None = None) -> CandidatesParams:
    """The packaged candidate settings with a relative response cache moved into `state_dir`
    (its file name kept): relative to a server's working directory it would land in the Bento."""
    if p.cache_path is None or Path(p.cache_path).is_absolute():
        return p
    return p.model_copy(update={"cache_path": str(state_dir(environ) / Path(p.cache_path).name)})


class RequestError(ValueError):
    """A request the router cannot run; `param` names the request field at fault."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class QuestionTooLong(RequestError):
    pass


class UnknownCandidate(RequestError):
    pass


@dataclass(frozen=True)
class BillLine:
    """One routing action of the episode and what it cost."""

    turn: int
    model: str
    query: str
    prompt_tokens: int
    completion_tokens: int
    usd: float
    latency_s: float
    outcome: CallOrigin
    failure: FailureKind | None
    detail: str | None

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["outcome"] = self.outcome.value
        row["failure"] = None if self.failure is None else self.failure.value
        return row


@dataclass(frozen=True)
class Bill:
    router_version: str
    pool_snapshot: str
    pricing_id: str
    total_usd: float
    turns: int
    format_valid: bool
    stop_reason: str
    budget_usd: float | None  # the request's candidate budget, None when unlimited
    calls: tuple[BillLine, ...]

    @property
    def candidate_failures(self) -> tuple[BillLine, ...]:
        """Calls a candidate failed (budget refusals are the budget working, not a failure)."""
        return tuple(c for c in self.calls if c.outcome is CallOrigin.FAILED and c.failure is not FailureKind.BUDGET)

    @property
    def budget_refusals(self) -> int:
        return sum(1 for c in self.calls if c.failure is FailureKind.BUDGET)

    def as_json(self) -> dict[str, Any]:
        return {"router_version": self.router_version, "pool_snapshot": self.pool_snapshot,
                "pricing_id": self.pricing_id, "total_usd": self.total_usd, "turns": self.turns,
                "format_valid": self.format_valid, "stop_reason": self.stop_reason, "budget_usd": self.budget_usd,
                "budget_refusals": self.budget_refusals, "calls": [c.as_json() for c in self.calls]}


@dataclass(frozen=True)
class Answer:
    text: str  # the router's final answer; "" when it wrote none
    bill: Bill
    prompt_tokens: int  # the router's own prompt
    completion_tokens: int  # tokens the router generated (information blocks excluded)
    trajectory: Trajectory


def _bill(traj: Trajectory, pool: Pool, version: str, include_prompt: bool, budget_usd: float | None,
          rules: FormatRules) -> Bill:
    lines = tuple(BillLine(
        c.turn, c.model, c.query, c.prompt_tokens, c.completion_tokens,
        pool.get(c.model).cost_usd(c.completion_tokens, c.prompt_tokens, include_prompt) if c.ok else 0.0,
        c.latency_s, c.origin, c.failure, c.failure_detail) for c in traj.calls)
    return Bill(version, pool.snapshot_id, pool.pricing.id, sum(line.usd for line in lines), traj.turns,
                check_format(traj.segments, pool, rules).valid, str(traj.stop_reason), budget_usd, lines)


def _min_budget(*limits: float | None) -> float | None:
    given = [x for x in limits if x is not None]
    return min(given) if given else None


class Router:
    """A packaged router answering questions; build it once per process and share it."""

    def __init__(self, package: LoadedPackage, *, environ: Mapping[str, str] | None = None) -> None:
        params = package.params
        self.package, self.params, self.pool = package, params, package.pool
        self.version = package.record.version
        self.generator, self.tokenizer, self._policy_client = build_policy(params, package.router_dir, environ)
        self.backends: Backends = build_backend(serving_candidates(params.candidates, environ),
                                                data_dir=package.replay_data_dir,
                                                distractor_questions=package.questions,
                                                include_prompt_cost=params.rewards.include_prompt_cost)
        self.limits = params.router_limits()
        # What the replay pool knows of a question (its source and gold answers decide the replies):
        # the matrix's own questions, then the packaged evaluation questions.
        self._known: dict[str, QuestionInfo] = {}
        if self.backends.replay is not None and self.backends.replay.matrix is not None:
            self._known.update(self.backends.replay.matrix.questions)
        self._known.update({question_key(q.text): q for q in package.questions})

    def question_info(self, text: str, request_id: str) -> QuestionInfo:
        known = self._known.get(question_key(text))
        return known if known is not None else QuestionInfo(request_id, text, "unknown")

    def offered_pool(self, route_to: Sequence[str] | None) -> Pool:
        if not route_to:
            return self.pool
        unknown = [n for n in route_to if self.pool.resolve(n) is None]
        if unknown:
            raise UnknownCandidate(f"route_to names {', '.join(repr(n) for n in unknown)}, not in the pool "
                                   f"({', '.join(self.pool.names)})", param="routerops.route_to")
        return self.pool.restricted(route_to)

    async def answer(self, question: str, *, request_id: str = "request", max_usd: float | None = None,
                     route_to: Sequence[str] | None = None) -> Answer:
        """Run one episode. `max_usd` caps what its candidate calls may spend (on top of params
        `candidates.request_budget_usd`); calls beyond it are refused and billed at zero."""
        try:
            text = normalize_question(question)
        except ValueError:
            raise RequestError("the last user message is empty: there is no question to answer",
                               param="messages") from None
        pool = self.offered_pool(route_to)
        budget_usd = _min_budget(self.params.candidates.request_budget_usd, max_usd)
        info = self.question_info(text, request_id)
        prompt = encode_prompt(info.text, pool, self.tokenizer, self.params)
        try:
            traj = await run_episode(info, prompt, generator=self.generator, tokenizer=self.tokenizer, pool=pool,
                                     backend=self.backends.backend, limits=self.limits,
                                     budget=RequestBudget(budget_usd, self.backends.run_budget))
        except PromptTooLong as exc:
            raise QuestionTooLong(f"the question makes a router prompt of {exc.tokens} tokens; this router takes "
                                  f"at most {exc.limit} (shorten the question)", param="messages",
                                  code="context_length_exceeded") from None
        bill = _bill(traj, self.pool, self.version, self.params.rewards.include_prompt_cost, budget_usd,
                     self.limits.rules)
        return Answer(traj.answer or "", bill, len(traj.prompt_ids), sum(traj.loss_mask), traj)

    async def aclose(self) -> None:
        await self.backends.aclose()
        if self._policy_client is not None:
            await self._policy_client.aclose()
