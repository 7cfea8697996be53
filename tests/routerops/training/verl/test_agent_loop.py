"""The agent loop inside verl's legacy agent-loop worker (fake LLM server, real replay pool), scored
by verl's reward worker with our reward function. The scenario and its checks are shared with the
V1 (TransferQueue) worker's test: `router_episodes` in conftest.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


class LocalRewardHandle:
    """Stands in for a Ray actor handle of verl's RewardLoopWorker (`handle.compute_score.remote`)."""

    def __init__(self, worker: Any) -> None:
        outer = self

        class _Method:
            def remote(self, data: Any) -> Any:
                return outer.worker.compute_score(data)

        self.worker, self.compute_score = worker, _Method()


@pytest.mark.slow
def test_agent_loop_runs_in_verls_worker_with_verls_reward_worker(resolved_config: Any, router_episodes: Any,
                                                                   fake_server: Any, episode_view: Any) -> None:
    import torch
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.protocol import DataProto

    n = len(router_episodes.rows)
    batch = DataProto.from_dict(tensors={"dummy_tensor": torch.zeros(n, 1, dtype=torch.uint8)},
                                non_tensors=router_episodes.non_tensors(),
                                meta_info={"validate": False, "global_steps": router_episodes.step})

    async def main() -> Any:
        reward_worker = RewardLoopWorker(resolved_config)  # built on this loop, as in its own actor
        worker = AgentLoopWorker(resolved_config, fake_server, None, [LocalRewardHandle(reward_worker)])
        return await worker.generate_sequences(batch)

    out = asyncio.run(main())
    nt, tb = out.non_tensor_batch, out.batch
    reward_keys = list(out.meta_info["reward_extra_keys"])
    extra_keys = ["route_cost_usd", "num_calls", "calls_per_model", "route_calls", "answer", "global_step",
                  "max_global_steps"]

    # The legacy worker keeps the batch order and pads: the real tokens are where the attention mask is 1.
    prompt_width = tb["prompts"].shape[1]
    views = []
    for i in range(n):
        valid = tb["attention_mask"][i, prompt_width:].bool()
        views.append(episode_view(
            episode=i, response=tb["responses"][i][valid].tolist(),
            mask=tb["response_mask"][i][valid].tolist(), logprobs=tb["rollout_log_probs"][i][valid].tolist(),
            extra={k: nt[k][i] for k in extra_keys}, reward={k: nt[k][i] for k in reward_keys},
            score=float(tb["rm_scores"][i].sum())))
    router_episodes.check(views, fake_server.requests, fake_server.turns)
