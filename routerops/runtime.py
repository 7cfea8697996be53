"""Assembles the parts a run needs from params: candidate backend, budgets, policy, prompts.

CLI commands, stages and services all build their runs here, so a setting means the same thing
everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from routerops.candidates.budget import RequestBudget, RunBudget, SharedRunBudget
from routerops.candidates.cache import CachedBackend, ResponseCache
from routerops.candidates.client import ClientConfig, OpenAIChatClient
from routerops.candidates.replay import QualityMatrix, ReplayPool
from routerops.candidates.types import CandidateBackend, QuestionInfo
from routerops.config import CandidatesParams, Params
from routerops.paths import project_root
from routerops.pool import Pool
from routerops.prompt import apply_chat_template, build_messages, load_template
from routerops.rollout import RolloutLimits, TokenGenerator, Trajectory, run_episodes
from routerops.tokens import Tokenizer

__all__ = ["Backends", "build_backend", "client_config", "encode_prompt", "prompt_template", "replay_pool",
           "route_questions", "router_messages"]

# Where the replay pool's quality matrix sits inside a raw data snapshot (data/ or ../shared/data).
MATRIX_DIR = "pool"


@dataclass
class Backends:
    """The backend to call plus what the caller reports on or closes afterwards."""

    backend: CandidateBackend
    run_budget: RunBudget
    replay: ReplayPool | None = None
    client: OpenAIChatClient | None = None
    cache: ResponseCache | None = None

    def request_budget(self, limit_usd: float | None) -> RequestBudget:
        """A budget for one episode, charged to this run's budget too."""
        return RequestBudget(limit_usd, self.run_budget)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.cache is not None:
            self.cache.close()


def client_config(p: CandidatesParams, include_prompt_cost: bool = False) -> ClientConfig:
    return ClientConfig(
        max_concurrency=p.concurrency, connect_timeout_s=p.connect_timeout_s, read_timeout_s=p.read_timeout_s,
        max_attempts=p.max_attempts, backoff_base_s=p.backoff_base_s, backoff_max_s=p.backoff_max_s,
        max_retry_after_s=p.max_retry_after_s, include_prompt_cost=include_prompt_cost,
    )


def replay_pool(p: CandidatesParams, data_dir: Path, distractor_questions: Iterable[QuestionInfo] = ()) -> ReplayPool:
    """The offline replay pool over the quality matrix of the raw snapshot `data_dir`.

    Wrong replies state answers of `distractor_questions` (of the same source); with none given,
    the matrix's own questions serve.
    """
    matrix = QualityMatrix.load(data_dir / MATRIX_DIR)
    questions = list(distractor_questions) or list(matrix.questions.values())
    return ReplayPool(matrix, ReplayPool.distractors_from(questions), seed=p.replay_seed,
                      decline_share=p.replay_decline_share, calibrate=p.replay_calibrate,
                      correlated=p.replay_correlated)


def build_backend(p: CandidatesParams, *, data_dir: Path, distractor_questions: Iterable[QuestionInfo] = (),
                  include_prompt_cost: bool = False, base_url: str | None = None,
                  api_key: str | None = None, ledger_path: Path | None = None) -> Backends:
    """The candidate backend `p.backend` names: the replay pool over `data_dir`, or the HTTP
    client (behind the response cache unless `p.cache_path` is null). With `ledger_path` the run
    budget is that file's (`SharedRunBudget`: shared by the run's processes, kept on resume)."""
    run_budget = RunBudget(p.run_budget_usd) if ledger_path is None else SharedRunBudget(p.run_budget_usd, ledger_path)
    if p.backend == "replay":
        replay = replay_pool(p, data_dir, distractor_questions)
        return Backends(replay, run_budget, replay=replay)
    client = OpenAIChatClient(client_config(p, include_prompt_cost), base_url=base_url, api_key=api_key)
    if p.cache_path is None:
        return Backends(client, run_budget, client=client)
    cache_file = Path(p.cache_path)
    cache = ResponseCache(cache_file if cache_file.is_absolute() else project_root() / cache_file)
    return Backends(CachedBackend(client, cache), run_budget, client=client, cache=cache)


def prompt_template(params: Params) -> str | None:
    """The profile's prompt template text (paths are relative to the repository), or None."""
    path = params.prompt.template_for(params.profile)
    if path is None:
        return None
    p = Path(path)
    return load_template(p if p.is_absolute() else project_root() / p)


def router_messages(question: str, pool: Pool, params: Params) -> list[dict[str, str]]:
    return build_messages(question, pool, max_turns=params.rollout.max_turns,
                          show_prices=params.prompt.show_prices, template=prompt_template(params))


def encode_prompt(question: str, pool: Pool, tokenizer: Tokenizer, params: Params) -> list[int]:
    text = apply_chat_template(tokenizer, router_messages(question, pool, params))
    return list(tokenizer.encode(text, add_special_tokens=False))


async def route_questions(questions: Sequence[QuestionInfo], *, params: Params, pool: Pool,
                          tokenizer: Tokenizer, generator: TokenGenerator, backends: Backends,
                          limits: RolloutLimits) -> list[Trajectory]:
    """Answer questions with the router: prompts from params, one request budget per episode."""
    items = [(q, encode_prompt(q.text, pool, tokenizer, params)) for q in questions]
    budgets = [backends.request_budget(params.candidates.request_budget_usd) for _ in questions]
    return await run_episodes(items, concurrency=params.rollout.concurrency, budgets=budgets, generator=generator,
                              tokenizer=tokenizer, pool=pool, backend=backends.backend, limits=limits)
