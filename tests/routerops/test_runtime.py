"""Runs assembled from params: the same setting means the same thing in every command."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from routerops.candidates.cache import CachedBackend
from routerops.candidates.client import OpenAIChatClient
from routerops.candidates.replay import ReplayPool
from routerops.candidates.types import QuestionInfo
from routerops.config import load_params
from routerops.policy import ScriptedRouter
from routerops.prompt import apply_chat_template
from routerops.runtime import build_backend, encode_prompt, replay_pool, route_questions, router_messages
from routerops.tokens import ByteTokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def params():
    return load_params(ROOT / "params.yaml")


def test_replay_backend_uses_the_snapshots_matrix_and_the_given_distractors(params, shared_data) -> None:
    backends = build_backend(params.candidates, data_dir=shared_data,
                             distractor_questions=[QuestionInfo("x", "q?", "nq", ("Atlantis",))])
    assert isinstance(backends.backend, ReplayPool) and backends.replay is backends.backend
    assert (backends.client, backends.cache) == (None, None)
    assert backends.replay.distractors == {"nq": ("Atlantis",)}
    assert len(backends.replay.matrix) == 1100  # 500 + 50 NQ and 500 + 50 TriviaQA questions scored
    own = replay_pool(params.candidates, shared_data)  # no distractors given: the matrix's own answers
    assert sum(len(v) for v in own.distractors.values()) == 1100
    assert (own.seed, own.decline_share, own.calibrate) == (params.candidates.replay_seed,
                                                            params.candidates.replay_decline_share,
                                                            params.candidates.replay_calibrate)


def test_openai_backend_is_the_client_behind_the_cache_unless_caching_is_off(params, shared_data, tmp_path) -> None:
    p = params.candidates.model_copy(update={"backend": "openai", "cache_path": str(tmp_path / "c.sqlite")})
    cached = build_backend(p, data_dir=shared_data)
    assert isinstance(cached.backend, CachedBackend) and isinstance(cached.client, OpenAIChatClient)
    asyncio.run(cached.aclose())
    assert (tmp_path / "c.sqlite").is_file()
    plain = build_backend(p.model_copy(update={"cache_path": None}), data_dir=shared_data)
    assert isinstance(plain.backend, OpenAIChatClient) and plain.cache is None
    asyncio.run(plain.aclose())


def test_prompts_come_from_the_profiles_template(params, pool) -> None:
    messages = router_messages("who wrote hamlet", pool, params)
    template = (ROOT / params.prompt.template["local"]).read_text().rstrip("\n")
    assert messages == [{"role": "user", "content": template.replace("$model_names", ", ".join(pool.names))
                         .replace("$question", "who wrote hamlet?").replace("$max_turns", "4")}]
    tok = ByteTokenizer()
    assert encode_prompt("who wrote hamlet", pool, tok, params) == tok.encode(apply_chat_template(tok, messages))


def test_route_questions_charges_one_request_budget_per_episode_to_the_run(params, pool, shared_data) -> None:
    one_call = pool.get("Qwen2.5-7B-Instruct").cost_usd(1000)  # far above one replayed call
    params = params.model_copy(update={"candidates": params.candidates.model_copy(
        update={"request_budget_usd": one_call, "run_budget_usd": None})})
    backends = build_backend(params.candidates, data_dir=shared_data)
    tok = ByteTokenizer()
    questions = [QuestionInfo(f"q{i}", f"who wrote book {i}?", "nq", (f"A{i}",)) for i in range(3)]
    limits = dataclasses.replace(params.rollout.limits(), max_prompt_tokens=4096, max_context_tokens=8192)
    trajs = asyncio.run(route_questions(questions, params=params, pool=pool, tokenizer=tok,
                                        generator=ScriptedRouter(tok, ["Qwen2.5-7B-Instruct"]), backends=backends,
                                        limits=limits))
    assert [t.question.id for t in trajs] == ["q0", "q1", "q2"]
    assert backends.run_budget.spent_usd == pytest.approx(sum(t.cost_usd for t in trajs))
    assert backends.run_budget.calls == sum(len(t.calls) for t in trajs)
