"""Hydra overrides generated from the typed params (no verl needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from routerops.config import Params, load_params
from routerops.training.verl.overrides import build_overrides, hydra_value


@pytest.mark.parametrize(("value", "expected"), [
    (True, "true"), (None, "null"), (4, "4"), (1e-6, "1e-06"), (0.95, "0.95"),
    ("vllm", "vllm"), ("Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct"),
    ("pkg://routerops.training.verl.reward", "pkg://routerops.training.verl.reward"),
    ("1", "'1'"), ("false", "'false'"), ("a b", "'a b'"), ("it's", "'it\\'s'"),
    (["console", "wandb"], "[console,wandb]"),
])
def test_hydra_values(value: Any, expected: str) -> None:
    assert hydra_value(value) == expected


def test_overrides_are_generated_from_params(tmp_path: Path, write_params: Callable[..., Path],
                                             with_verl: Callable[..., Params]) -> None:
    params = load_params(write_params(tmp_path / "p.yaml", kl_coef=0.004, group_size=7, actor_lr=3.0e-6,
                                      norm_adv_by_std=False))
    ov = build_overrides(params, train_file=tmp_path / "ds" / "train.parquet", val_file=tmp_path / "ds" / "val.parquet",
                         out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ck", params_path=tmp_path / "p.yaml")
    d = dict(o.split("=", 1) for o in ov)
    assert d["algorithm.adv_estimator"] == "grpo" and d["actor_rollout_ref.actor.use_kl_loss"] == "true"
    assert d["actor_rollout_ref.actor.kl_loss_coef"] == "0.004" and d["actor_rollout_ref.rollout.n"] == "7"
    assert d["actor_rollout_ref.actor.optim.lr"] == "3e-06" and d["algorithm.norm_adv_by_std_in_grpo"] == "false"
    assert d["data.max_prompt_length"] == str(params.rollout.max_prompt_tokens)
    assert d["data.train_files"] == str((tmp_path / "ds" / "train.parquet").resolve())
    assert d["data.val_files"] == str((tmp_path / "ds" / "val.parquet").resolve())
    assert d["actor_rollout_ref.rollout.agent.agent_loop_config_path"] == str((tmp_path / "out" / "agent_loop.yaml").resolve())
    assert d["trainer.default_local_dir"] == str((tmp_path / "ck").resolve()) and d["trainer.resume_mode"] == "auto"
    assert d["trainer.logger"] == "[console]"
    assert d["reward.custom_reward_function.path"] == "pkg://routerops.training.verl.reward"
    assert d["+reward.custom_reward_function.reward_kwargs.params_path"] == str((tmp_path / "p.yaml").resolve())
    ppo = dict(o.split("=", 1) for o in build_overrides(
        with_verl(params, algorithm="ppo"), train_file=tmp_path / "t", val_file=tmp_path / "v", out_dir=tmp_path,
        checkpoint_dir=tmp_path))
    assert ppo["algorithm.adv_estimator"] == "gae" and ppo["critic.enable"] == "true"
    assert ppo["algorithm.use_kl_in_reward"] == "true" and ppo["actor_rollout_ref.actor.use_kl_loss"] == "false"
    assert ppo["critic.optim.lr"] == "1e-05" and ppo["actor_rollout_ref.rollout.n"] == "1"
