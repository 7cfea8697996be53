"""Launch and export commands, the dry-run report the CLI prints, and a real training on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from routerops.config import Params, load_params
from routerops.training.verl.agent_loop import AGENT_LOOP_FILE
from routerops.training.verl.costs import COST_LOG_FILE, summarize_training_costs
from routerops.training.verl.launch import (
    OVERRIDES_FILE,
    default_dataset_dir,
    dry_run,
    dry_run_report,
    export_command,
    latest_checkpoint_step,
    launch_command,
)
from routerops.training.verl.runtime import PARAMS_ENV, TELEMETRY_ENV


def test_launch_and_export_commands(tmp_path: Path, repo_root: Path, with_verl: Callable[..., Params]) -> None:
    REPO = repo_root
    params = with_verl(load_params(REPO / "params.yaml"), ray_address=None)
    cmd = launch_command(params, ["a=1"])
    assert cmd == ["python", "-m", "verl.trainer.main_ppo", "a=1"]
    # A cluster job: the repository travels as working_dir, params and pool named relative to it;
    # the data by the md5s dvc.lock and data.dvc record, fetched from the DVC remote in the job,
    # which runs the dry run again there (routerops.training.cluster). No path of this machine.
    cluster = launch_command(with_verl(params, ray_address="http://head:8265"), ["a=1"])
    assert cluster[:5] == ["ray", "job", "submit", "--address", "http://head:8265"]
    job = cluster[cluster.index("--") + 1:]
    assert job[:4] == ["python", "-m", "routerops.training.cluster", "verl"] and "a=1" not in job
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    dataset = next(o["md5"] for o in lock["stages"]["build_dataset"]["outs"] if o["path"] == "artifacts/dataset")
    data = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"]
    assert job[job.index("--remote") + 1] == "s3://routerops/dvc"
    assert [job[i + 1] for i, a in enumerate(job) if a == "--input"] == [f"artifacts/dataset={dataset}", f"data={data}"]
    env = json.loads(cluster[cluster.index("--runtime-env-json") + 1])
    assert env["working_dir"] == str(REPO) and env["env_vars"]["WANDB_MODE"] == "disabled"
    assert env["env_vars"][PARAMS_ENV] == "params.yaml" and "/.dvc/config.local" in env["excludes"]
    assert not any(str(REPO) in v for v in env["env_vars"].values())

    with pytest.raises(FileNotFoundError):
        export_command(tmp_path, None, tmp_path / "hf")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("50")
    assert export_command(tmp_path, None, tmp_path / "hf") == [
        "python", "-m", "verl.model_merger", "merge", "--backend", "fsdp",
        "--local_dir", str(tmp_path / "global_step_50" / "actor"), "--target_dir", str(tmp_path / "hf")]
    assert export_command(tmp_path, 25, "out")[7] == str(tmp_path / "global_step_25" / "actor")


# ---------------------------------------------------------------------------------------------
# The dry-run report the CLI prints
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_report_prints_the_command_and_lists_files(tmp_path: Path, write_params: Callable[..., Path],
                                                           dataset: Path) -> None:
    code, text = dry_run_report(write_params(tmp_path / "p.yaml", algorithm="grpo", ray_address=None), tmp_path,
                                dataset_dir=dataset)
    assert code == 0, text
    command_line = text.split("launch command")[1].splitlines()[1].strip()
    assert command_line.startswith("python -m verl.trainer.main_ppo ")
    assert (tmp_path / "launch.sh").read_text().rstrip().endswith(command_line)
    for name in (AGENT_LOOP_FILE, OVERRIDES_FILE, "launch.sh", "verl_config.yaml"):
        assert (tmp_path / name).is_file() and str(tmp_path / name) in text
    overrides = (tmp_path / OVERRIDES_FILE).read_text().split()
    assert "algorithm.adv_estimator=grpo" in overrides and "trainer.resume_mode=auto" in overrides


@pytest.mark.slow
def test_dry_run_report_for_a_ray_cluster(tmp_path: Path, write_params: Callable[..., Path], dataset: Path,
                                          repo_root: Path) -> None:
    # A params file outside the repository cannot travel with the job: said before anything runs.
    params_file = write_params(tmp_path / "p.yaml", ray_address="http://ray-head:8265")
    code, text = dry_run_report(params_file, tmp_path / "out", dataset_dir=dataset)
    assert code == 2
    assert text == (f"dry run failed: params file {params_file} is outside the repository ({repo_root}): it would not "
                    "travel with the job; copy it into the repository (it is shipped as the job's working_dir)\n")


@pytest.mark.slow
def test_dry_run_report_fails_with_verls_message(tmp_path: Path, repo_root: Path,
                                                 write_params: Callable[..., Path], dataset: Path) -> None:
    code, text = dry_run_report(repo_root / "params.yaml", tmp_path, dataset_dir=dataset,
                                extra_overrides=["actor_rollout_ref.rollout.log_prob_micro_batch_size=8"])
    assert code == 1
    assert "INVALID CONFIG" in text and "You have set both 'actor_rollout_ref.rollout.log_prob_micro_batch_size'" in text
    assert "python -m verl.trainer.main_ppo" in text and (tmp_path / OVERRIDES_FILE).is_file()
    bad = write_params(tmp_path / "bad.yaml", n_gpus_per_node=3, train_batch_size=64, group_size=5)
    code, text = dry_run_report(bad, tmp_path / "bad", dataset_dir=dataset)
    assert code == 1 and "must be divisible by minimal possible batch size (3)" in text
    code, text = dry_run_report(tmp_path / "missing.yaml", tmp_path / "m")
    assert code == 2 and "file not found" in text
    # the dry run reads the dataset where the real run does (its rl/ folder), and a missing one stops it
    code, text = dry_run_report(repo_root / "params.yaml", tmp_path / "nodata", dataset_dir=tmp_path / "nowhere")
    assert code == 2 and text == (f"dry run failed: cannot launch verl, missing: train split {tmp_path}/nowhere/rl/"
                                  f"train.parquet; validation split {tmp_path}/nowhere/rl/validation.parquet (build "
                                  "the dataset: `dvc repro build_dataset`)\n")
    assert not (tmp_path / "nodata").exists()


# ---------------------------------------------------------------------------------------------
# A real two-step training: GPU, vLLM and a local model only
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_step_grpo_training_on_a_gpu(tmp_path: Path, repo_root: Path, write_params: Callable[..., Path]) -> None:
    import torch

    REPO = repo_root
    model = os.environ.get("ROUTEROPS_VERL_TEST_MODEL")
    if not model or not Path(model).is_dir():
        pytest.skip("set ROUTEROPS_VERL_TEST_MODEL to a local HF model directory (e.g. Qwen2.5-0.5B-Instruct)")
    pytest.importorskip("vllm")
    pytest.importorskip("transfer_queue")  # verl's default V1 trainer needs it (verl[verl-core])
    dataset = default_dataset_dir(load_params(REPO / "params.yaml"))
    if not (dataset / "rl" / "train.parquet").is_file():
        pytest.skip("build the dataset first (stages/build_dataset.py)")
    gpus = torch.cuda.device_count()
    params_file = write_params(tmp_path / "p.yaml", model_path=model, n_gpus_per_node=gpus, group_size=2,
                               train_batch_size=2 * gpus, ppo_mini_batch_size=2 * gpus, ppo_micro_batch_size_per_gpu=1,
                               total_training_steps=2, save_freq=2, test_freq=-1, max_response_length=1024,
                               gpu_memory_utilization=0.4)
    run = dry_run(load_params(params_file), out_dir=tmp_path / "out", params_path=params_file,
                  checkpoint_dir=tmp_path / "ckpt",
                  extra_overrides=["data.val_max_samples=8", "reward.num_workers=1"])
    proc = subprocess.run(list(run.command), cwd=REPO, timeout=1700, capture_output=True, text=True,
                          env={**os.environ, **TELEMETRY_ENV})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert latest_checkpoint_step(tmp_path / "ckpt") == 2
    summary = summarize_training_costs(tmp_path / "ckpt" / COST_LOG_FILE)
    assert [s.step for s in summary.for_split("train")] == [1, 2]
