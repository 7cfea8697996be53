"""The agent loop inside verl's V1 agent-loop worker (`AgentLoopWorkerTQ`, what verl's default
trainer, `trainer.use_v1: true`, runs): real TransferQueue on a local Ray, the fake LLM server,
the real replay pool, and verl's reward worker (a Ray actor) with our reward function.

The V1 trainer never sees the worker's return value: it registers each prompt in TransferQueue,
dispatches the batch to `AgentLoopManagerTQ`, whose Ray-actor workers run `rollout.n` sessions per
prompt, score each with a reward-worker actor and write every trajectory (unpadded, with its
extra fields nested) under `{uid}_{session}_{index}`; the trainer's `ReplayBuffer` then samples
finished prompt groups. This test drives exactly that and checks the trajectories it reads back
from TransferQueue with the legacy test's checks (`router_episodes` in conftest.py).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import routerops
from routerops.training.verl.runtime import TELEMETRY_ENV

TQ_START_S = 90.0  # TransferQueue's two actors start in well under a minute on two CPUs
ROLLOUT_WAIT_S = 60.0  # the six scripted episodes take seconds; a hang must fail well within the test's timeout


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A loopback Ray on two CPUs whose workers import this checkout's routerops; shut down after."""
    import ray

    assert not ray.is_initialized(), "another test left Ray running"
    checkout = str(Path(routerops.__file__).resolve().parents[1])
    env = {**TELEMETRY_ENV, "PYTHONPATH": os.pathsep.join(p for p in (checkout, os.environ.get("PYTHONPATH")) if p)}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def v1_config(resolved_config: Any) -> Any:
    """The dry run's config with what verl's TaskRunnerV1 sets (TransferQueue on), sized for two CPUs:
    one reward worker and one TransferQueue storage unit (each storage unit holds a CPU)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(resolved_config, {
        "reward": {"num_workers": 1},
        "transfer_queue": {"enable": True, "backend": {"SimpleStorage": {"num_data_storage_units": 1}}},
    })


@pytest.fixture(scope="module")
def reward_loop(local_ray: None, v1_config: Any) -> Any:
    """verl's RewardLoopManager: its reward-worker actors (our reward function), as the V1 trainer
    builds them. Created before TransferQueue so that the actors start while TransferQueue does."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    return RewardLoopManager(v1_config)


@pytest.fixture(scope="module")
def transfer_queue(local_ray: None, v1_config: Any) -> Iterator[Future[Any]]:
    """TransferQueue's controller and storage actors, started as TaskRunnerV1 starts them (`tq.init`
    with the config's `transfer_queue`), shut down after.

    `tq.init` runs in a thread and the fixture returns once the controller exists: a V1 worker
    created from then on attaches to it and waits for its config, so the workers start while the
    storage unit does. The future is `tq.init`'s: wait for it before using TransferQueue.
    """
    import ray
    import transfer_queue as tq

    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(tq.init, v1_config.transfer_queue)
        try:
            deadline = time.monotonic() + TQ_START_S
            while True:
                try:
                    ray.get_actor("TransferQueueController", namespace="transfer_queue")
                    break
                except ValueError:
                    if started.done():
                        started.result()  # tq.init failed: raise its error
                    assert time.monotonic() < deadline, "TransferQueue's controller did not start"
                    time.sleep(0.2)
            yield started
        finally:
            try:
                started.result(timeout=TQ_START_S)
            finally:
                tq.close()


def _wait_for_groups(tq: Any, uids: list[str], timeout_s: float) -> dict[str, str]:
    """Poll the prompt groups' status tags until every group is terminal (finished or failure)."""
    deadline = time.monotonic() + timeout_s
    while True:
        tags = tq.kv_list("train").get("train", {})
        status = {u: tags.get(u, {}).get("status", "missing") for u in uids}
        if all(s in ("finished", "failure") for s in status.values()) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


@pytest.mark.slow
def test_agent_loop_runs_in_verls_v1_worker_over_transfer_queue(
        v1_config: Any, reward_loop: Any, transfer_queue: Future[Any], router_episodes: Any, fake_server: Any,
        episode_view: Any) -> None:
    import numpy as np
    import ray
    import torch
    import transfer_queue as tq
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import collate_fn

    cfg, step = v1_config, router_episodes.step
    # The config our dry run generates runs verl's V1 trainer (verl's default), in sync mode.
    assert cfg.trainer.use_v1 is True and cfg.trainer.v1.trainer_mode == "sync"
    # The small run's GRPO group: V1 workers run rollout.n sessions per prompt themselves (the legacy
    # worker gets the batch already repeated n times by the trainer).
    sessions = int(cfg.actor_rollout_ref.rollout.n)
    assert sessions >= 2

    # The trainer's batch: dataloader rows (collate_fn) -> TensorDict, a uid per prompt, the global step.
    rows = [{**r, "dummy_tensor": torch.zeros(1, dtype=torch.uint8)} for r in router_episodes.rows]
    batch_dict = collate_fn(rows)
    uids = [str(uuid.uuid4()) for _ in rows]
    batch_dict["uid"] = np.array(uids, dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", step)

    # The trainer's rollout components: reward-worker actors, the agent-loop manager and its worker actors.
    reward = reward_loop
    # The fake server travels to the worker actor as verl's LLMServerClient does; its class lives in
    # conftest.py, which no Ray worker can import, so it goes by value.
    fake_module = sys.modules[type(fake_server).__module__]
    ray.cloudpickle.register_pickle_by_value(fake_module)
    try:
        manager = AgentLoopManagerTQ.create(config=cfg, llm_client=fake_server, teacher_client=None,
                                            reward_loop_worker_handles=reward.reward_loop_worker_handles)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(fake_module)
    (worker,) = manager.agent_loop_workers
    # TransferQueue and both actors are up (so the wait below times the rollout alone), and the
    # agent-loop worker imports this checkout's routerops, not another copy installed in the venv.
    transfer_queue.result(timeout=TQ_START_S)
    ray.get([h.__ray_ready__.remote() for h in reward.reward_loop_worker_handles])
    assert ray.get(worker.__ray_call__.remote(lambda _: __import__("routerops").__file__)) == routerops.__file__

    # TrainerBase._submit_batch_to_rollout (sync mode): register the prompt groups, then dispatch.
    tq.kv_batch_put(keys=uids, partition_id="train",
                    tags=[{"is_prompt": True, "status": "pending", "global_steps": step} for _ in uids])
    manager.generate_sequences(batch)
    status = _wait_for_groups(tq, uids, ROLLOUT_WAIT_S)
    assert set(status.values()) == {"finished"}, (
        f"prompt groups {status}: the V1 worker failed or never finished our agent loop (its traceback is in "
        "the actor's log above)")

    # The trainer's sampling: the sync ReplayBuffer returns the finished groups' trajectory keys.
    sampler = cfg.trainer.v1.sampler

    def no_refill(count: int) -> int:
        raise AssertionError(f"the replay buffer asked to refill {count} failed prompt groups")

    buffer = ReplayBuffer(trainer_mode="sync", trainer_config=cfg.trainer.v1.get("sync", {}),
                          max_off_policy_threshold=sampler.max_off_policy_threshold,
                          max_off_policy_strategy=sampler.max_off_policy_strategy,
                          sampler_kwargs=sampler.sampler_kwargs, poll_interval=0.1, refill_fn=no_refill,
                          train_batch_size=len(uids), gen_batch_size=len(uids))
    meta, _ = buffer.sample(global_steps=step, partition_id="train", batch_size=len(uids))
    # One output per session ({uid}_{session}_0), n sessions per prompt.
    assert sorted(meta.keys) == sorted(f"{u}_{s}_0" for u in uids for s in range(sessions))
    # The tags the staleness control reads: our loop carries the engine's weight versions.
    for tag in meta.tags:
        assert tag["status"] == "success" and tag["global_steps"] == step
        assert tag["min_global_steps"] == step and tag["max_global_steps"] == step
        assert tag["seq_len"] == tag["prompt_len"] + tag["response_len"]

    data = tq.kv_batch_get(keys=meta.keys, partition_id="train")
    responses, masks = data["responses"].unbind(), data["response_mask"].unbind()
    loss_masks, logprobs = data["loss_mask"].unbind(), data["rollout_log_probs"].unbind()
    rm_scores, extras = data["rm_scores"].unbind(), list(data["extra_fields"])
    views = []
    for j, key in enumerate(meta.keys):
        # TransferQueue stores trajectories unpadded (jagged): every token is a real one.
        assert torch.equal(loss_masks[j], masks[j]) and len(responses[j]) <= cfg.actor_rollout_ref.rollout.response_length
        extra = dict(extras[j])
        views.append(episode_view(
            episode=uids.index(key.split("_")[0]), response=responses[j].tolist(), mask=masks[j].tolist(),
            logprobs=logprobs[j].tolist(), extra=extra, reward=dict(extra["reward_extra_info"]),
            score=float(rm_scores[j].sum())))
    requests, turns = ray.get(worker.__ray_call__.remote(lambda w: (w.llm_client.requests, w.llm_client.turns)))
    router_episodes.check(views, requests, turns, sessions=sessions)

    tq.kv_clear(keys=meta.keys, partition_id="train")
