"""Real vLLM against the evaluation's policy backend and the candidate client.

(a) The router served by vLLM, driven through `CompletionsPolicy` exactly as `evaluate_router`
drives it (`build_policy`, `encode_prompt`, `run_episode`, the replay candidates), plays the same
greedy episodes as the in-process policy, token for token. (b) The candidate client, pointed at
vLLM's chat endpoint with the same router as its model, reads the usage vLLM reports, gets the
reply cut at its max_tokens (or at the model's context, which vLLM clamps to) and nowhere else,
and fails a cap past the context with vLLM's reason, unretried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from routerops.candidates.client import ClientConfig, OpenAIChatClient
from routerops.candidates.types import (
    CallContext,
    CallResult,
    CallTask,
    CandidateFailure,
    CandidateReply,
    FailureKind,
    QuestionInfo,
    candidate_messages,
)
from routerops.config import Params
from routerops.policy import build_policy, load_transformers_policy
from routerops.policy_server import CompletionsPolicy
from routerops.pool import Candidate, Pool, Sampling, load_pool
from routerops.prompt import apply_chat_template
from routerops.rl_dataset import read_questions
from routerops.rollout import Trajectory, run_episode
from routerops.runtime import build_backend, encode_prompt
from routerops.testing.vllm_server import VllmServer
from routerops.tokens import Tokenizer, decode_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_questions(params: Params, n: int) -> list[QuestionInfo]:
    """`n` test-split questions spread evenly over the split (its benchmarks come in blocks)."""
    test = read_questions(REPO_ROOT / params.build_dataset.out_dir, "test")
    step = max(1, len(test) // n)
    return test[::step][:n]


def completions_params(params: Params) -> Params:
    """The same params with the local profile's router behind a completions server, as the gpu
    profile runs it; candidates stay the local replay pool, so both runs see the same replies."""
    ep = params.evaluate_router
    policy = {**ep.policy, params.profile: "completions"}
    return params.model_copy(update={"evaluate_router": ep.model_copy(update={"policy": policy,
                                                                               "policy_model": "router"})})


async def router_episodes(params: Params, pool: Pool, router_dir: Path, questions: Sequence[QuestionInfo],
                          environ: Mapping[str, str]) -> tuple[list[Trajectory], Tokenizer, CompletionsPolicy | None]:
    """The router's episodes the way `stages.evaluate_router._router_records` runs them."""
    dataset = REPO_ROOT / params.build_dataset.out_dir
    distractors = [*read_questions(dataset, "test"),
                   *read_questions(dataset, "train")[: params.evaluate_router.knn_train_questions]]
    backends = build_backend(params.candidates, data_dir=REPO_ROOT / params.build_dataset.raw_dir,
                             distractor_questions=distractors)
    gen, tok, client = build_policy(params, router_dir, environ)
    limits = params.router_limits()
    sem = asyncio.Semaphore(params.evaluate_router.concurrency)

    async def one(q: QuestionInfo) -> Trajectory:
        async with sem:
            return await run_episode(q, encode_prompt(q.text, pool, tok, params), generator=gen, tokenizer=tok,
                                     pool=pool, backend=backends.backend, limits=limits,
                                     budget=backends.request_budget(params.candidates.request_budget_usd))

    try:
        return list(await asyncio.gather(*(one(q) for q in questions))), tok, client
    finally:
        if client is not None:
            await client.aclose()
        await backends.aclose()


@dataclass(frozen=True)
class Divergence:
    question_id: str
    at: int          # first response position where the token ids differ
    turn: int        # policy turn (1-based) that position falls in, or 0 in an observation
    local: str       # the in-process text from there (a few tokens)
    served: str

    def __str__(self) -> str:
        where = f"policy turn {self.turn}" if self.turn else "an observation"
        return (f"{self.question_id}: response token {self.at} ({where}): in-process {self.local!r}, "
                f"vLLM {self.served!r}")


def divergence(local: Trajectory, served: Trajectory, tok: Tokenizer) -> Divergence | None:
    a, b = local.response_ids, served.response_ids
    if a == b:
        return None
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    mask = local.loss_mask[: at + 1]
    # turns are the runs of policy tokens (mask 1) in the response
    turn = sum(1 for i, m in enumerate(mask) if m == 1 and (i == 0 or mask[i - 1] == 0)) if mask[-1:] == [1] else 0
    return Divergence(local.question.id, at, turn, decode_text(tok, a[at: at + 8]), decode_text(tok, b[at: at + 8]))


def test_greedy_episodes_through_vllm_equal_the_in_process_ones(vllm: VllmServer, params: Params, router_dir: Path,
                                                                questions_wanted: int) -> None:
    assert params.evaluate_router.decoding == "greedy", "the comparison is of greedy decoding"
    assert params.evaluate_router.policy[params.profile] == "transformers", "the local profile runs in process"
    pool = load_pool(REPO_ROOT / "pool.yaml")
    questions = sample_questions(params, questions_wanted)
    local, tok, _ = asyncio.run(router_episodes(params, pool, router_dir, questions, {}))
    served, _, client = asyncio.run(router_episodes(
        completions_params(params), pool, router_dir, questions,
        {params.evaluate_router.policy_base_url_env: vllm.base_url}))
    assert isinstance(client, CompletionsPolicy)

    # vLLM returned its token ids for every turn: nothing was re-encoded from text
    assert client.reencoded == 0 and all(t.reencoded_turns == 0 for t in served)
    assert client.attempts == sum(t.turns for t in served)  # one request per policy turn, no retries
    diverged = [d for lt, st in zip(local, served, strict=True) if (d := divergence(lt, st, tok)) is not None]
    turns = sum(t.turns for t in local)
    calls = sum(len(t.calls) for t in local)
    print(f"\nvLLM greedy episodes equal to in-process, token for token: {len(questions) - len(diverged)}"
          f"/{len(questions)} ({turns} policy turns, {calls} candidate calls, "
          f"{sum(len(t.response_ids) for t in local)} response tokens)")
    for d in diverged:
        print(f"  diverged: {d}")
    assert not diverged, f"{len(diverged)} of {len(questions)} episodes diverged:\n" + "\n".join(map(str, diverged))
    assert [(t.answer, t.stop_reason, t.loss_mask) for t in served] == [
        (t.answer, t.stop_reason, t.loss_mask) for t in local]


# ----- (b) the candidate client against vLLM's chat endpoint -------------------------------------

def chat_candidate(pool: Pool, max_tokens: int) -> Candidate:
    """A pool candidate whose provider model is the served router, greedy, capped at `max_tokens`."""
    return pool.candidates[0].model_copy(update={"provider_model_id": "router", "max_tokens": max_tokens,
                                                 "sampling": Sampling(temperature=0.0, top_p=1.0, seed=0)})


async def call(url: str, candidate: Candidate, query: str) -> CallResult:
    async with OpenAIChatClient(ClientConfig(max_attempts=3, read_timeout_s=600.0), base_url=url,
                                api_key="") as client:
        return await client.call(candidate, query, CallContext(task=CallTask.DIRECT))


def test_candidate_client_against_vllm_chat(vllm: VllmServer, params: Params, router_dir: Path) -> None:
    """The router as a chat model: it writes protocol text and never ends a reply by itself (the
    local trainer teaches no end of sequence), so every reply runs to the token cap."""
    pool = load_pool(REPO_ROOT / "pool.yaml")
    policy = load_transformers_policy(router_dir, greedy=True)
    tok = policy.tokenizer
    q = sample_questions(params, 1)[0]
    # The chat the client sends, rendered with the router's own template as vLLM renders it.
    prompt = tok.encode(apply_chat_template(tok, candidate_messages(q.text, CallTask.DIRECT)),
                        add_special_tokens=False)
    cap = params.router_limits().max_tokens_per_turn
    expected = asyncio.run(policy.generate(prompt, max_new_tokens=cap, stop=())).token_ids
    assert len(expected) == cap and tok.eos_token_id not in expected

    # max_tokens: the reply is cut at exactly the candidate's cap; usage is vLLM's count, not the
    # client's estimate; the text is the greedy reply, decoded as in process
    reply = asyncio.run(call(vllm.base_url, chat_candidate(pool, cap), q.text))
    assert isinstance(reply, CandidateReply) and not reply.usage_estimated
    assert (reply.prompt_tokens, reply.completion_tokens) == (len(prompt), cap)
    assert reply.text == decode_text(tok, expected)
    # stop: the client sends no stop strings, so the router protocol's own, which this reply writes,
    # cut nothing: it runs on past `</search>` to the cap
    assert "</search>" in reply.text[:-1], f"the router's chat reply writes no </search>: {reply.text!r}"

    # a cap past the room the context leaves: vLLM clamps it, and the client reports the tokens
    # vLLM generated, not the cap it asked for
    context = json.loads((router_dir / "config.json").read_text())["max_position_embeddings"]
    reply = asyncio.run(call(vllm.base_url, chat_candidate(pool, context), q.text))
    assert isinstance(reply, CandidateReply) and not reply.usage_estimated
    assert (reply.prompt_tokens, reply.completion_tokens) == (len(prompt), context - len(prompt))

    # a cap past the whole context: vLLM refuses it, and the client fails the call at once (a 400
    # is not retried) with vLLM's reason
    failure = asyncio.run(call(vllm.base_url, chat_candidate(pool, 2 * context), q.text))
    assert isinstance(failure, CandidateFailure)
    assert (failure.kind, failure.status, failure.attempts) == (FailureKind.HTTP_STATUS, 400, 1)
    assert failure.detail == (
        f'HTTP 400: {{"error":{{"message":"max_tokens={2 * context} cannot be greater than max_model_len={context}. '
        f'Please request fewer output tokens. (parameter=max_tokens, value={2 * context})","type":"BadRequestError",'
        '"param":"max_tokens","code":400}}')
