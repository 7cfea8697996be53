"""Calling candidate models: typed results, budgets, the HTTP client and the reply cache."""

from routerops.candidates.budget import Budget, RequestBudget, RunBudget
from routerops.candidates.cache import CachedBackend, CachedEntry, ResponseCache, cache_key, cost_of_cached
from routerops.candidates.client import (
    ClientConfig,
    OpenAIChatClient,
    TokenCounter,
    approx_token_count,
    estimate_prompt_tokens,
    parse_retry_after,
    request_body,
)
from routerops.candidates.types import (
    REPLY_ORIGINS,
    CallContext,
    CallOrigin,
    CallResult,
    CallTask,
    CandidateBackend,
    CandidateFailure,
    CandidateReply,
    FailureKind,
    QuestionInfo,
    candidate_messages,
)

__all__ = [
    "REPLY_ORIGINS",
    "Budget",
    "CachedBackend",
    "CachedEntry",
    "CallContext",
    "CallOrigin",
    "CallResult",
    "CallTask",
    "CandidateBackend",
    "CandidateFailure",
    "CandidateReply",
    "ClientConfig",
    "FailureKind",
    "OpenAIChatClient",
    "QuestionInfo",
    "RequestBudget",
    "ResponseCache",
    "RunBudget",
    "TokenCounter",
    "approx_token_count",
    "cache_key",
    "candidate_messages",
    "cost_of_cached",
    "estimate_prompt_tokens",
    "parse_retry_after",
    "request_body",
]
