"""Launch and export commands, and the dry run behind `routerops train --backend verl --dry-run`.

`launch_inputs` resolves what a launch reads (params, pool, the RL parquet under the dataset's
`rl/`, the checkpoint folder) once, for the dry run and the real run alike, and refuses a missing
input before anything is written or launched. `dry_run` writes the generated files (agent-loop
YAML, overrides, composed config, launch script), composes and validates the config on CPU and
returns the launch command (this node, or `ray job submit` to `train_router.verl.ray_address`);
`dry_run_report` is what the CLI prints; `export_command` is verl's model merger for a checkpoint.

    python -m routerops.training.verl.launch PARAMS_YAML OUT_DIR

runs the dry run without the CLI.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from routerops.candidates.budget import LEDGER_FILE
from routerops.config import Params, load_params
from routerops.cost_calibration import CALIBRATION_FILE, training_calibration, write_calibration
from routerops.paths import project_root
from routerops.pool import load_pool
from routerops.rl_dataset import read_questions, split_path
from routerops.training.verl.agent_loop import AGENT_LOOP_FILE, agent_loop_entries
from routerops.training.verl.overrides import build_overrides
from routerops.training.verl.runtime import (
    resolve_params_path,
    resolve_pool_path,
)
from routerops.training.verl.validation import VerlConfigError, compose_config, validate

__all__ = [
    "CONFIG_FILE",
    "LAUNCH_FILE",
    "OVERRIDES_FILE",
    "DryRun",
    "LaunchInputError",
    "LaunchInputs",
    "dry_run",
    "dry_run_report",
    "export_command",
    "latest_checkpoint_step",
    "launch_command",
    "launch_inputs",
    "main",
]

# `python -m` runs this file as __main__; its spec still has the module's own name.
MODULE = __spec__.name if __spec__ is not None else __name__
OVERRIDES_FILE = "overrides.txt"
CONFIG_FILE = "verl_config.yaml"
LAUNCH_FILE = "launch.sh"

def launch_command(params: Params, overrides: Sequence[str], *, python: str = "python",
                   params_path: str | os.PathLike[str] | None = None,
                   pool_path: str | os.PathLike[str] | None = None) -> list[str]:
    """The command that trains: on this node, or a job submitted to `train_router.verl.ray_address`.

    Re-running the same command resumes from the latest checkpoint (trainer.resume_mode=auto).
    A cluster job carries the repository as its working_dir and its data from the DVC remote (the
    md5s in dvc.lock and data.dvc), and runs this dry run again on the cluster, so no path of
    this machine reaches it (`routerops.training.cluster`); `overrides` are this node's.
    """
    v = params.train_router.verl
    base = [python, "-m", "verl.trainer.main_ppo", *overrides]
    if not v.ray_address:
        return base
    from routerops.remote import read_remote_config
    from routerops.training.cluster import job_inputs, submit_command

    root = project_root()
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
        data_dvc = yaml.safe_load((root / "data.dvc").read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise LaunchInputError(f"a cluster job reads its data from the DVC remote by md5: {exc.filename} is "
                               "missing (run `dvc repro build_dataset` and `dvc push`)") from None
    inputs = job_inputs(lock, data_dvc, params.build_dataset.out_dir)
    # One job per (experiment, dataset, params file): a run with other params never shares its
    # results prefix, nor (with a shared checkpoint_dir) resumes another's checkpoints.
    params_digest = hashlib.sha256(resolve_params_path(params_path).read_bytes()).hexdigest()[:8]
    job_id = f"{v.experiment_name}-{inputs[0].md5[:8]}-{params_digest}"
    return submit_command(v.ray_address, "verl", remote_url=read_remote_config(root).url, inputs=inputs,
                          job_id=job_id, params_path=str(resolve_params_path(params_path)),
                          pool_path=str(resolve_pool_path(pool_path)), python=python)


def latest_checkpoint_step(checkpoint_dir: str | os.PathLike[str]) -> int | None:
    """The step in verl's tracker file (latest_checkpointed_iteration.txt), if any."""
    tracker = Path(checkpoint_dir) / "latest_checkpointed_iteration.txt"
    try:
        return int(tracker.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        return None


def export_command(checkpoint_dir: str | os.PathLike[str], step: int | None, target_dir: str | os.PathLike[str],
                   *, python: str = "python", backend: str = "fsdp") -> list[str]:
    """verl's model merger: sharded actor checkpoint of `step` (None: latest) to a HF directory."""
    if step is None:
        step = latest_checkpoint_step(checkpoint_dir)
        if step is None:
            raise FileNotFoundError(f"{checkpoint_dir}: no latest_checkpointed_iteration.txt; pass a step")
    actor = Path(checkpoint_dir) / f"global_step_{int(step)}" / "actor"
    return [python, "-m", "verl.model_merger", "merge", "--backend", backend,
            "--local_dir", str(actor), "--target_dir", str(target_dir)]


@dataclass(frozen=True)
class DryRun:
    out_dir: Path
    files: tuple[Path, ...]
    overrides: tuple[str, ...]
    command: tuple[str, ...]
    checked: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None  # verl's message when the config is invalid
    config: Any = None  # the composed DictConfig, when it composed

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def default_checkpoint_dir(params: Params) -> Path:
    """`<train_router.checkpoint_dir>/verl/<experiment_name>` (kept apart from the local backend's)."""
    tr = params.train_router
    base = Path(tr.checkpoint_dir)
    return (base if base.is_absolute() else project_root() / base) / "verl" / tr.verl.experiment_name


def default_dataset_dir(params: Params) -> Path:
    """The dataset stage's output (params `build_dataset.out_dir`); its RL splits lie under rl/."""
    out = Path(params.build_dataset.out_dir)
    return out if out.is_absolute() else project_root() / out


class LaunchInputError(ValueError):
    """An input of the verl launch is missing: raised before anything is written or launched."""


@dataclass(frozen=True)
class LaunchInputs:
    """Everything a verl launch reads, as absolute paths: what the overrides and the agent-loop
    file name."""

    params_path: Path
    pool_path: Path
    train_file: Path
    val_file: Path
    checkpoint_dir: Path
    dataset_dir: Path


def launch_inputs(params: Params, *, dataset_dir: str | os.PathLike[str] | None = None,
                  params_path: str | os.PathLike[str] | None = None, pool_path: str | os.PathLike[str] | None = None,
                  checkpoint_dir: str | os.PathLike[str] | None = None, val_split: str = "validation"
                  ) -> LaunchInputs:
    """The launch's inputs: `dataset_dir` is the dataset stage's output (default params
    `build_dataset.out_dir`), read as `routerops.rl_dataset.split_path` lays it out. Raises
    `LaunchInputError` naming every input that does not exist."""
    root = Path(dataset_dir).resolve() if dataset_dir else default_dataset_dir(params)
    found = LaunchInputs(resolve_params_path(params_path).resolve(), resolve_pool_path(pool_path).resolve(),
                         split_path(root, "train").resolve(), (root / "rl" / f"{val_split}.parquet").resolve(),
                         Path(checkpoint_dir).resolve() if checkpoint_dir else default_checkpoint_dir(params), root)
    missing = [f"{what} {path}" for what, path in (("params", found.params_path), ("pool", found.pool_path),
                                                    ("train split", found.train_file),
                                                    (f"{val_split} split", found.val_file))
               if not path.is_file()]
    if missing:
        hint = " (build the dataset: `dvc repro build_dataset`)" if any("split" in m for m in missing) else ""
        raise LaunchInputError("cannot launch verl, missing: " + "; ".join(missing) + hint)
    return found


def dry_run(params: Params, *, out_dir: str | os.PathLike[str], params_path: str | os.PathLike[str] | None = None,
            pool_path: str | os.PathLike[str] | None = None, dataset_dir: str | os.PathLike[str] | None = None,
            checkpoint_dir: str | os.PathLike[str] | None = None, extra_overrides: Sequence[str] = (),
            raise_on_error: bool = True) -> DryRun:
    """Write the generated files, compose + validate the config, return the launch command.

    `dataset_dir` is the dataset stage's output (its RL parquet under rl/); a missing input raises
    `LaunchInputError` before any file is written (`launch_inputs`).

    Files (in `out_dir`): cost_bounds.json (with `rewards.normalizer: calibrated`: the cost bounds
    calibrated on the pool and the training split, read by every reward worker), agent_loop.yaml
    (verl's agent-loop registry entry, naming the run's budget ledger in the checkpoint folder),
    overrides.txt (one Hydra override per line), verl_config.yaml (the composed config, only when
    it composes) and launch.sh (the exact command). With `raise_on_error=False` an invalid config
    is reported in `DryRun.error` instead of raising `VerlConfigError`.
    """
    inputs = launch_inputs(params, dataset_dir=dataset_dir, params_path=params_path, pool_path=pool_path,
                           checkpoint_dir=checkpoint_dir)
    pp, pl, ckpt = inputs.params_path, inputs.pool_path, inputs.checkpoint_dir
    calibration = None
    if params.rewards.normalizer == "calibrated":
        calibration = training_calibration(params, load_pool(pl), read_questions(inputs.dataset_dir, "train"))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    agent_name = params.build_dataset.agent_name
    v = params.train_router.verl

    notes: list[str] = []
    if v.ray_address and not Path(params.train_router.checkpoint_dir).is_absolute():
        notes.append("cluster run with a relative checkpoint_dir: use a path on storage shared by all nodes")

    files = [out / AGENT_LOOP_FILE, out / OVERRIDES_FILE]
    bounds = None if calibration is None else write_calibration(out / CALIBRATION_FILE, calibration)
    files[0].write_text(yaml.safe_dump(agent_loop_entries(agent_name, params_path=str(pp), pool_path=str(pl),
                                                          ledger_path=str(ckpt / LEDGER_FILE)),
                                       sort_keys=False), encoding="utf-8")
    overrides = build_overrides(params, train_file=inputs.train_file, val_file=inputs.val_file, out_dir=out,
                                checkpoint_dir=ckpt, params_path=pp, pool_path=pl, cost_bounds_path=bounds,
                                extra=extra_overrides)
    files[1].write_text("\n".join(overrides) + "\n", encoding="utf-8")
    if bounds is not None:
        files.insert(0, bounds)
    command = launch_command(params, overrides, params_path=pp, pool_path=pl)
    launch = out / LAUNCH_FILE
    launch.write_text("#!/usr/bin/env bash\n# Generated by routerops (verl backend); re-run to resume.\n"
                      f"set -euo pipefail\ncd {shlex.quote(str(project_root()))}\n{shlex.join(command)}\n",
                      encoding="utf-8")
    launch.chmod(0o755)
    files.append(launch)

    error: str | None = None
    checked: list[str] = []
    cfg = None
    try:
        cfg = compose_config(overrides)
        from omegaconf import OmegaConf

        config_file = out / CONFIG_FILE
        config_file.write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
        files.append(config_file)
        checked = validate(cfg, agent_name=agent_name)
    except VerlConfigError as exc:
        if raise_on_error:
            raise
        error = str(exc)
    return DryRun(out, tuple(files), tuple(overrides), tuple(command), tuple(checked), tuple(notes), error, cfg)


def dry_run_report(params_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                   extra_overrides: Sequence[str] = (),
                   dataset_dir: str | os.PathLike[str] | None = None) -> tuple[int, str]:
    """`routerops train --backend verl --dry-run`: (exit code, printable report). `dataset_dir`
    defaults to params `build_dataset.out_dir`, as the real run's."""
    from routerops.config import ParamsError

    try:
        params = load_params(params_path)
    except ParamsError as exc:
        return 2, f"invalid params: {exc}\n"
    try:
        result = dry_run(params, out_dir=out_dir, params_path=params_path, dataset_dir=dataset_dir,
                         extra_overrides=extra_overrides, raise_on_error=False)
    except (OSError, ValueError) as exc:  # LaunchInputError included: a missing input
        return 2, f"dry run failed: {exc}\n"
    lines = [f"verl dry run ({params.train_router.verl.algorithm}) -> {result.out_dir}", "",
             "generated files:"]
    lines += [f"  {f}" for f in result.files]
    lines += ["", "launch command (re-run it to resume from the latest checkpoint):", f"  {result.command_line}"]
    if result.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in result.warnings]
    if result.error is not None:
        lines += ["", "INVALID CONFIG - verl says:", f"  {result.error}"]
        return 1, "\n".join(lines) + "\n"
    lines += ["", "checked on CPU:"] + [f"  - {c}" for c in result.checked]
    lines += ["", "not checked without GPUs: model download/loading, vLLM/SGLang engine start, GPU memory, "
                  "Ray cluster resources, candidate endpoints"]
    return 0, "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m routerops.training.verl.launch PARAMS OUT_DIR`: the dry run without the CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(f"usage: python -m {MODULE} PARAMS_YAML OUT_DIR", file=sys.stderr)
        return 2
    code, text = dry_run_report(args[0], args[1])
    print(text, end="")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
