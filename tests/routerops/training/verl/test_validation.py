"""The generated config composed with verl's own ppo_trainer and checked by verl's own validation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from routerops.config import Params, load_params
from routerops.cost_calibration import read_calibration
from routerops.training.verl.agent_loop import AGENT_LOOP_FILE
from routerops.training.verl.launch import dry_run
from routerops.training.verl.validation import VerlConfigError


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_generated_overrides_compose_and_pass_verls_validation(tmp_path: Path, algorithm: str, repo_root: Path,
                                                                write_params: Callable[..., Path],
                                                                dataset: Path) -> None:
    params = load_params(write_params(tmp_path / "p.yaml", algorithm=algorithm))
    run = dry_run(params, out_dir=tmp_path / "out", params_path=tmp_path / "p.yaml", dataset_dir=dataset,
                  checkpoint_dir=tmp_path / "ckpt")
    assert run.ok, run.error
    cfg = run.config
    v = params.train_router.verl
    assert cfg.algorithm.adv_estimator == ("grpo" if algorithm == "grpo" else "gae")
    assert cfg.actor_rollout_ref.rollout.n == (v.group_size if algorithm == "grpo" else 1)
    assert cfg.critic.enable is (algorithm == "ppo")
    assert cfg.actor_rollout_ref.actor.use_kl_loss is (algorithm == "grpo")
    assert cfg.actor_rollout_ref.rollout.prompt_length == params.rollout.max_prompt_tokens  # via verl's interpolation
    assert cfg.reward.custom_reward_function.reward_kwargs.params_path == str((tmp_path / "p.yaml").resolve())
    assert any(c.startswith("verl.utils.config.validate_config") for c in run.checked)
    assert f"critic={algorithm == 'ppo'}" in " ".join(run.checked)
    entries = yaml.safe_load((tmp_path / "out" / AGENT_LOOP_FILE).read_text())
    assert entries == [{"name": "router_agent", "_target_": "routerops.training.verl.agent_loop.RouterAgentLoop",
                        "params_path": str((tmp_path / "p.yaml").resolve()), "pool_path": str((repo_root / "pool.yaml").resolve()),
                        "ledger_path": str((tmp_path / "ckpt" / "run_budget.json").resolve())}]
    # The cost bounds every reward worker reads, calibrated on the training split before launch.
    bounds = cfg.reward.custom_reward_function.reward_kwargs.cost_bounds_path
    assert bounds == str((tmp_path / "out" / "cost_bounds.json").resolve())
    assert read_calibration(bounds).questions == 2


BAD_CASES = [
    # (params change that our pydantic model lets through or cannot see, extra overrides, verl's words)
    ({"train_batch_size": 64, "group_size": 5, "n_gpus_per_node": 3}, [],
     "real_train_batch_size (320) must be divisible by minimal possible batch size (3)"),
    ({"train_batch_size": 64, "ppo_mini_batch_size": 128}, [],
     "train_batch_size (64) must be >= actor.ppo_mini_batch_size (128)"),
    ({}, ["actor_rollout_ref.actor.loss_agg_mode=bogus"], "Invalid loss_agg_mode: bogus"),
    ({}, ["trainer.no_such_key=1"], "Could not override 'trainer.no_such_key'"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("change", "extra", "message"), BAD_CASES)
def test_bad_settings_fail_with_verls_message(tmp_path: Path, change: dict[str, Any], extra: list[str],
                                              message: str, repo_root: Path,
                                              with_verl: Callable[..., Params], dataset: Path) -> None:
    params = with_verl(load_params(repo_root / "params.yaml"), **change)  # no pydantic check: verl must catch it
    with pytest.raises(VerlConfigError) as info:
        dry_run(params, out_dir=tmp_path / "out", dataset_dir=dataset, extra_overrides=extra)
    assert message in str(info.value)
