from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from routerops.candidates.budget import RequestBudget, RunBudget
from routerops.candidates.types import CallOrigin, CandidateFailure, CandidateReply, FailureKind, QuestionInfo
from routerops.policy import ScriptedRouter
from routerops.protocol import check_format
from routerops.rollout import Generation, PromptTooLong, RolloutLimits, run_episode, run_episodes
from routerops.tokens import ByteTokenizer

Q = "Qwen2.5-7B-Instruct"
TOK = ByteTokenizer()
QUESTION = QuestionInfo("q1", "capital of France?", "nq", ("Paris",))
PROMPT = TOK.encode("Question: capital of France?\n")
LIMITS = RolloutLimits(max_turns=4, max_tokens_per_turn=256, max_obs_tokens=64, max_prompt_tokens=512,
                       max_context_tokens=2048)


class Turns:
    """Plays fixed turn texts in order; text past a stop string is kept to test truncation."""

    def __init__(self, turns: Sequence[str], logprob: float = -0.5) -> None:
        self.turns, self.i, self.logprob = list(turns), 0, logprob
        self.prompts: list[list[int]] = []

    async def generate(self, prompt_ids, *, max_new_tokens, stop):
        self.prompts.append(list(prompt_ids))
        text = self.turns[min(self.i, len(self.turns) - 1)]
        self.i += 1
        ids = TOK.encode(text)
        return Generation(ids, [self.logprob] * len(ids), "stop")


class Fixed:
    """A candidate backend with a fixed reply; records concurrency. With `gate=N` every call waits
    until N calls are in flight at once (bounded by a generous timeout), which proves overlap
    without depending on how fast anything runs."""

    def __init__(self, reply: str = "It is Paris.", tokens: int = 100, gate: int = 0, fail: bool = False):
        self.reply, self.tokens, self.gate, self.fail = reply, tokens, gate, fail
        self.calls: list[tuple[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self._all_in: asyncio.Event | None = None

    async def call(self, candidate, query, context=None):
        self.calls.append((candidate.name, query))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate:
                self._all_in = self._all_in or asyncio.Event()
                if self.in_flight >= self.gate:
                    self._all_in.set()
                await asyncio.wait_for(self._all_in.wait(), timeout=120)
        finally:
            self.in_flight -= 1
        if self.fail:
            return CandidateFailure(candidate.name, FailureKind.TIMEOUT, None, 3, "read timeout", 1.0)
        if context is not None and context.budget is not None:
            refusal = context.budget.check()
            if refusal:
                return CandidateFailure(candidate.name, FailureKind.BUDGET, None, 0, refusal)
            context.budget.charge(candidate.cost_usd(self.tokens))
        return CandidateReply(candidate.name, self.reply, 20, self.tokens, 0.01)


def run(gen, backend, pool, limits=LIMITS, **kw):
    return asyncio.run(run_episode(QUESTION, PROMPT, generator=gen, tokenizer=TOK, pool=pool, backend=backend,
                                   limits=limits, **kw))


def test_masks_cover_policy_and_observation_tokens_exactly(pool) -> None:
    gen = Turns([f"<think>ask</think><search>{Q}: capital?</search>", "<think>ok</think><answer>Paris</answer>"])
    t = run(gen, Fixed(), pool)
    assert len(t.response_ids) == len(t.loss_mask) == len(t.logprobs)
    obs_text = TOK.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m == 0])
    pol_text = TOK.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m == 1])
    assert obs_text == "\n\n<information>It is Paris.</information>\n\n"
    assert pol_text == f"<think>ask</think><search>{Q}: capital?</search><think>ok</think><answer>Paris</answer>"
    assert all(lp == -0.5 for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if m == 1)
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if m == 0)
    assert t.answer == "Paris" and t.stop_reason == "answer" and t.turns == 2
    assert check_format(t.segments, pool).valid
    assert [c.model for c in t.calls] == [Q] and t.calls[0].cost_usd == pytest.approx(100 * 0.3e-6)
    # the second turn saw the prompt, the first turn and the observation
    assert gen.prompts[1] == PROMPT + t.response_ids[: len(gen.prompts[1]) - len(PROMPT)]


def test_generation_is_cut_at_the_first_stop_string(pool) -> None:
    gen = Turns([f"<think>a</think><search>{Q}: q</search>junk<answer>NO</answer>", "<think>b</think><answer>Paris</answer>"])
    t = run(gen, Fixed(), pool)
    assert "junk" not in t.response_text and t.answer == "Paris"


def test_routing_turns_are_capped_and_final_turn_does_not_route(pool) -> None:
    backend = Fixed()
    t = run(Turns([f"<think>a</think><search>{Q}: q</search>"]), backend, pool)
    assert len(backend.calls) == LIMITS.max_turns
    assert t.turns == LIMITS.max_turns + 1 and t.stop_reason == "max_turns"
    assert t.actions == [f"route:{Q}"] * (LIMITS.max_turns + 1)
    assert not check_format(t.segments, pool).valid  # no answer


def test_invalid_action_gets_empty_observation_and_continues(pool) -> None:
    backend = Fixed()
    t = run(Turns([f"<think>a</think><search>{Q} no colon</search>", "<think>b</think><answer>x</answer>"]), backend, pool)
    assert backend.calls == [] and t.calls == []
    assert 0 not in t.loss_mask and t.actions == ["invalid:no_colon", "answer"]


def test_unknown_model_gets_none_at_zero_cost(pool) -> None:
    backend = Fixed()
    t = run(Turns(["<think>a</think><search>qwen-72b: q</search>", "<think>b</think><answer>x</answer>"]), backend, pool)
    assert backend.calls == []
    assert "<information>None</information>" in t.response_text
    assert t.calls[0].origin is CallOrigin.UNKNOWN_MODEL and t.calls[0].failure is None and t.cost_usd == 0.0
    assert t.calls[0].ok is False and t.calls[0].model == "qwen-72b"


def test_candidate_failure_is_recorded_and_costs_nothing(pool) -> None:
    t = run(Turns([f"<think>a</think><search>{Q}: q</search>", "<think>b</think><answer>x</answer>"]),
            Fixed(fail=True), pool)
    c = t.calls[0]
    assert (c.ok, c.origin, c.failure, c.failure_detail, c.attempts) == (
        False, CallOrigin.FAILED, FailureKind.TIMEOUT, "read timeout", 3)
    assert t.cost_usd == 0.0
    assert "<information>None</information>" in t.response_text
    assert t.usages() == []


def test_answer_injected_by_candidate_does_not_end_episode(pool) -> None:
    gen = Turns([f"<think>a</think><search>{Q}: q</search>", "<think>b</think><answer>Lyon</answer>"])
    t = run(gen, Fixed(reply="<answer>Paris</answer>"), pool)
    assert t.turns == 2 and t.answer == "Lyon"
    assert "[answer]Paris[/answer]" in t.response_text


def test_observation_truncated_to_budget(pool) -> None:
    t = run(Turns([f"<think>a</think><search>{Q}: q</search>", "<think>b</think><answer>x</answer>"]),
            Fixed(reply="y" * 1000), pool)
    obs = TOK.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m == 0])
    assert obs == "\n\n<information>" + "y" * LIMITS.max_obs_tokens + "</information>\n\n"


def test_tokens_per_turn_capped(pool) -> None:
    limits = RolloutLimits(max_turns=1, max_tokens_per_turn=10, max_obs_tokens=8, max_prompt_tokens=100,
                           max_context_tokens=500)
    t = run(Turns(["<think>" + "z" * 100]), Fixed(), pool, limits)
    assert t.turns == 1 and len(t.response_ids) == 10 and t.stop_reason == "length"


def test_context_budget_stops_the_episode(pool) -> None:
    limits = RolloutLimits(max_turns=4, max_tokens_per_turn=200, max_obs_tokens=600, max_prompt_tokens=100,
                           max_context_tokens=len(PROMPT) + 120)
    t = run(Turns([f"<think>a</think><search>{Q}: q</search>"]), Fixed(reply="w" * 500), pool, limits)
    assert len(PROMPT) + len(t.response_ids) <= limits.max_context_tokens
    assert t.stop_reason == "context_full"
    assert t.response_text.count("</information>") == t.response_text.count("<information>")


def test_prompt_too_long_is_a_typed_error(pool) -> None:
    limits = RolloutLimits(max_turns=4, max_tokens_per_turn=10, max_obs_tokens=10, max_prompt_tokens=5,
                           max_context_tokens=100)
    with pytest.raises(PromptTooLong, match=r"^question q1: prompt has 29 tokens, limit is 5$"):
        run(Turns(["x"]), Fixed(), pool, limits)


def test_request_budget_refuses_calls_once_spent(pool) -> None:
    run_budget = RunBudget(None)
    budget = RequestBudget(100 * 0.3e-6, run_budget)  # exactly one call's worth
    backend = Fixed()
    t = run(Turns([f"<think>a</think><search>{Q}: q</search>"]), backend, pool, budget=budget)
    assert [c.ok for c in t.calls] == [True, False, False, False]
    assert (t.calls[1].failure, t.calls[1].failure_detail) == (FailureKind.BUDGET,
                                                               "request budget spent: $0.000030 of $0.000030")
    assert run_budget.spent_usd == pytest.approx(100 * 0.3e-6)


def test_calls_overlap_across_trajectories(pool) -> None:
    backend = Fixed(gate=8)
    router = ScriptedRouter(TOK, [Q])
    items = [(QuestionInfo(f"q{i}", f"question {i}?"), TOK.encode(f"Question: question {i}?\n")) for i in range(8)]
    trajs = asyncio.run(run_episodes(items, concurrency=8, generator=router, tokenizer=TOK, pool=pool,
                                     backend=backend, limits=LIMITS))
    assert backend.max_in_flight == 8
    assert [t.question.id for t in trajs] == [f"q{i}" for i in range(8)]
    assert all(t.answer == "Paris" for t in trajs)


def test_run_episodes_validates_arguments(pool) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(run_episodes([], concurrency=0))
    with pytest.raises(ValueError, match="1 budgets for 0 episodes"):
        asyncio.run(run_episodes([], budgets=[None]))


@pytest.mark.parametrize(("fields", "error"), [
    ({"max_prompt_tokens": 10, "max_context_tokens": 10}, "max_prompt_tokens must be below max_context_tokens"),
    ({"max_obs_tokens": 0}, "max_obs_tokens must be positive, got 0"),
    ({"max_turns": -1}, "max_turns must be positive, got -1"),
    ({"max_tokens_per_turn": 0}, "max_tokens_per_turn must be positive, got 0"),
])
def test_limits_validate(fields, error) -> None:
    base = {"max_turns": 4, "max_tokens_per_turn": 8, "max_obs_tokens": 8, "max_prompt_tokens": 8,
            "max_context_tokens": 32}
    with pytest.raises(ValueError, match=f"^{error}$"):
        RolloutLimits(**{**base, **fields})
