"""Hydra overrides for verl's `ppo_trainer` config, every value generated from the typed params.

`build_overrides` maps params.yaml onto verl's config (docs/verl.md has the table): our RL
parquet, the policy and its rollout engine, our agent loop and reward function with their
settings, GRPO or Router-R1's PPO, the trainer, and the env of every Ray worker verl starts.
`routerops.training.verl.validation` composes and checks them; nothing here imports verl.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from routerops.config import Params
from routerops.training.verl.agent_loop import AGENT_LOOP_FILE
from routerops.training.verl.costs import COST_LOG_FILE
from routerops.training.verl.reward import MODULE as REWARD_MODULE
from routerops.training.verl.reward import REWARD_FN_NAME
from routerops.training.verl.runtime import (
    PARAMS_ENV,
    POOL_ENV,
    TELEMETRY_ENV,
    resolve_params_path,
    resolve_pool_path,
)

__all__ = ["build_overrides", "hydra_value"]

_BARE = re.compile(r"^[A-Za-z_/.][A-Za-z0-9_.\-/:@]*$")  # what Hydra parses as a plain string
_RESERVED = {"true", "false", "null", "none", "nan", "inf"}


def hydra_value(value: Any) -> str:
    """Format a Python value as a Hydra override value (strings quoted unless plainly safe)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot pass {value} to Hydra")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    s = str(value)
    if _BARE.match(s) and s.lower() not in _RESERVED:
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ov(key: str, value: Any) -> str:
    return f"{key}={hydra_value(value)}"


def build_overrides(params: Params, *, train_file: str | os.PathLike[str], val_file: str | os.PathLike[str],
                    out_dir: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str],
                    params_path: str | os.PathLike[str] | None = None,
                    pool_path: str | os.PathLike[str] | None = None,
                    cost_bounds_path: str | os.PathLike[str] | None = None, extra: Sequence[str] = ()) -> list[str]:
    """verl Hydra overrides, every value derived from `params` (never hand-written per run).

    `train_file` and `val_file` are the RL parquet files (`launch.launch_inputs` resolves and checks
    them); `out_dir` holds the generated agent-loop YAML; `checkpoint_dir` becomes
    trainer.default_local_dir (and holds the cost log, so it survives resumes); `cost_bounds_path`
    is the calibration the reward reads under `rewards.normalizer: calibrated`. `extra` is
    appended last, so it wins (Hydra applies overrides in order).
    """
    tr = params.train_router
    v = tr.verl
    agent_name = params.build_dataset.agent_name
    out, ckpt = Path(out_dir).resolve(), Path(checkpoint_dir).resolve()
    pp = resolve_params_path(params_path).resolve()
    pl = resolve_pool_path(pool_path).resolve()
    grpo = v.algorithm == "grpo"
    micro = v.ppo_micro_batch_size_per_gpu
    gpus = v.nnodes * v.n_gpus_per_node

    o: list[str] = [
        # data: our RL parquet (stages/build_dataset.py)
        _ov("data.train_files", str(Path(train_file).resolve())),
        _ov("data.val_files", str(Path(val_file).resolve())),
        _ov("data.prompt_key", "prompt"),
        _ov("data.train_batch_size", v.train_batch_size),
        _ov("data.max_prompt_length", params.rollout.max_prompt_tokens),
        _ov("data.max_response_length", v.max_response_length),
        _ov("data.filter_overlong_prompts", True),
        _ov("data.truncation", "error"),
        _ov("data.return_raw_chat", True),
        _ov("data.seed", tr.seed),
        # policy
        _ov("actor_rollout_ref.model.path", v.model_path),
        _ov("actor_rollout_ref.actor.optim.lr", v.actor_lr),
        _ov("actor_rollout_ref.actor.ppo_mini_batch_size", v.ppo_mini_batch_size),
        _ov("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", micro),
        _ov("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", micro),
        _ov("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", micro),
        # rollout engine and sampling
        _ov("actor_rollout_ref.rollout.name", v.rollout_name),
        _ov("actor_rollout_ref.rollout.mode", "async"),
        _ov("actor_rollout_ref.rollout.n", v.group_size if grpo else 1),
        _ov("actor_rollout_ref.rollout.temperature", v.temperature),
        _ov("actor_rollout_ref.rollout.top_p", v.top_p),
        _ov("actor_rollout_ref.rollout.gpu_memory_utilization", v.gpu_memory_utilization),
        _ov("actor_rollout_ref.rollout.tensor_model_parallel_size", v.tensor_model_parallel_size),
        _ov("actor_rollout_ref.rollout.max_model_len", params.rollout.max_prompt_tokens + v.max_response_length),
        _ov("actor_rollout_ref.rollout.seed", tr.seed),
        _ov("actor_rollout_ref.rollout.calculate_log_probs", True),
        # SGLang only applies stop strings with its tokenizer loaded (vLLM always loads it).
        _ov("actor_rollout_ref.rollout.skip_tokenizer_init", False),
        # multi-turn: our agent loop, one agent-loop worker per GPU
        _ov("actor_rollout_ref.rollout.agent.num_workers", gpus),
        _ov("actor_rollout_ref.rollout.agent.default_agent_loop", agent_name),
        _ov("actor_rollout_ref.rollout.agent.agent_loop_config_path", str(out / AGENT_LOOP_FILE)),
        # reward: ours, with its settings and the cost log
        _ov("reward.custom_reward_function.path", f"pkg://{REWARD_MODULE}"),
        _ov("reward.custom_reward_function.name", REWARD_FN_NAME),
        _ov("+reward.custom_reward_function.reward_kwargs.params_path", str(pp)),
        _ov("+reward.custom_reward_function.reward_kwargs.pool_path", str(pl)),
        _ov("+reward.custom_reward_function.reward_kwargs.cost_log_path", str(ckpt / COST_LOG_FILE)),
    ]
    if cost_bounds_path is not None:
        o.append(_ov("+reward.custom_reward_function.reward_kwargs.cost_bounds_path",
                     str(Path(cost_bounds_path).resolve())))
    if grpo:
        o += [
            _ov("algorithm.adv_estimator", "grpo"),
            _ov("algorithm.norm_adv_by_std_in_grpo", v.norm_adv_by_std),
            _ov("algorithm.use_kl_in_reward", False),
            _ov("actor_rollout_ref.actor.use_kl_loss", True),
            _ov("actor_rollout_ref.actor.kl_loss_coef", v.kl_coef),
            _ov("actor_rollout_ref.actor.kl_loss_type", "low_var_kl"),
            _ov("critic.enable", False),
        ]
    else:
        # Router-R1 (after Search-R1): PPO, GAE critic, KL to the reference in the reward.
        o += [
            _ov("algorithm.adv_estimator", "gae"),
            _ov("algorithm.gamma", v.gamma),
            _ov("algorithm.lam", v.lam),
            _ov("algorithm.use_kl_in_reward", True),
            _ov("algorithm.kl_ctrl.type", "fixed"),
            _ov("algorithm.kl_ctrl.kl_coef", v.kl_coef),
            _ov("actor_rollout_ref.actor.use_kl_loss", False),
            _ov("critic.enable", True),
            _ov("critic.model.path", v.model_path),
            _ov("critic.optim.lr", v.critic_lr),
            _ov("critic.ppo_mini_batch_size", v.ppo_mini_batch_size),
            _ov("critic.ppo_micro_batch_size_per_gpu", micro),
        ]
    o += [
        _ov("trainer.logger", list(v.logger)),
        _ov("trainer.project_name", v.project_name),
        _ov("trainer.experiment_name", v.experiment_name),
        _ov("trainer.nnodes", v.nnodes),
        _ov("trainer.n_gpus_per_node", v.n_gpus_per_node),
        _ov("trainer.total_training_steps", v.total_training_steps),
        # Every epoch has at least one step, so epochs never end training before the step count.
        _ov("trainer.total_epochs", v.total_training_steps),
        _ov("trainer.save_freq", v.save_freq),
        _ov("trainer.test_freq", v.test_freq),
        _ov("trainer.default_local_dir", str(ckpt)),
        _ov("trainer.resume_mode", "auto"),
        _ov("trainer.val_before_train", v.test_freq > 0),
        _ov("trainer.log_val_generations", 0),
    ]
    env = {**TELEMETRY_ENV, PARAMS_ENV: str(pp), POOL_ENV: str(pl)}
    if os.environ.get("ROUTEROPS_SHARED_DATA"):
        env["ROUTEROPS_SHARED_DATA"] = str(Path(os.environ["ROUTEROPS_SHARED_DATA"]).resolve())
    # verl merges ray_kwargs.ray_init.runtime_env into the env of every Ray worker it starts.
    o += [_ov(f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}", val) for k, val in sorted(env.items())]
    return o + list(extra)
