"""Stage: train the router policy (`python -m stages.train_router`).

backend `local` (CPU, the embedded default) runs the tiny-policy SFT + GRPO trainer; backend
`verl` launches verl on GPUs (one node, or `ray job submit` to a cluster) and exports the final
actor with verl's model merger. Both give the same `Outputs`: the policy, to be saved as a
HuggingFace directory in `train_router.out_dir`, and one `TrainSummary` shape for the metrics.

The checkpoint directory persists across runs so a killed run resumes. It carries a fingerprint
of everything that shapes training (params, prices, dataset, the code this stage runs); when that
changes, old checkpoints belong to another run and are cleared rather than resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from routerops.codebase import code_hash, import_closure
from routerops.config import Params, load_params
from routerops.cost_calibration import CALIBRATION_FILE, CostCalibration, read_calibration
from routerops.io import atomic_dir, write_json_atomic, write_text_atomic
from routerops.paths import default_params_file, default_pool_file, project_root
from routerops.pool import Pool, load_pool
from routerops.rl_dataset import read_questions, split_path
from routerops.runtime import replay_pool

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from routerops.policy import CausalLM

__all__ = ["FINAL_WINDOW", "Inputs", "Outputs", "TrainStats", "TrainSummary", "TrainingLaunchError",
           "fingerprint", "main", "prepare_checkpoints", "run", "write"]

FINAL_WINDOW = 5  # GRPO steps averaged into the reported final metrics
# What a checkpoint's fingerprint covers of the code: everything this module imports in the repo.
CODE_MODULES = (__spec__.name if __spec__ is not None else __name__,)


class TrainingLaunchError(RuntimeError):
    """An external training step (the verl launch or its model export) exited non-zero."""

    def __init__(self, step: str, command: Sequence[str], returncode: int) -> None:
        self.step, self.command, self.returncode = step, tuple(command), returncode
        super().__init__(f"{step} exited {returncode}: {' '.join(command)}")


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    dataset_dir: Path
    data_dir: Path  # the raw snapshot (the replay pool's quality matrix under pool/)
    checkpoint_dir: Path  # persisted between runs: what a killed run resumes from
    root: Path  # the project (params file, code)

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        return cls(load_pool(default_pool_file()), root / params.build_dataset.out_dir,
                   root / params.build_dataset.raw_dir, root / params.train_router.checkpoint_dir, root)


@dataclass(frozen=True)
class TrainStats:
    """Rollout metrics of a training step, or the mean over the last steps."""

    reward: float
    format_valid: float
    em: float
    usd_per_question: float
    calls_per_question: float
    call_share: Mapping[str, float] = field(default_factory=dict)
    losses: Mapping[str, float] = field(default_factory=dict)  # backend diagnostics (kl, entropy, ...)


@dataclass(frozen=True)
class TrainSummary:
    """metrics/train.json, the same shape for both backends."""

    backend: Literal["local", "verl"]
    steps: int
    resumed: bool
    final_window_steps: int
    start: TrainStats | None  # after the warm start, before RL (local backend)
    final: TrainStats | None  # None when verl logged no training step
    replay: Mapping[str, object] | None  # where candidate outcomes came from (replay pool only)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        lines = ["# Router training", "", "| metric | value |", "|---|---|",
                 f"| backend / RL steps | {self.backend} / {self.steps}{' (resumed)' if self.resumed else ''} |"]
        s, f = self.start, self.final
        if f is not None:
            def change(name: str, fmt: str) -> str:
                end = format(getattr(f, name), fmt)
                return f"{format(getattr(s, name), fmt)} -> {end}" if s is not None else end
            lines += [f"| reward (warm start -> final) | {change('reward', '.3f')} |",
                      f"| format-valid | {change('format_valid', '.3f')} |",
                      f"| exact match | {change('em', '.3f')} |",
                      f"| USD per question | {f.usd_per_question:.8f} |",
                      f"| calls per question | {f.calls_per_question:.2f} |",
                      f"| call share | {', '.join(f'{k} {v:.2f}' for k, v in f.call_share.items())} |"]
        lines += ["", f"Final = mean of the last {self.final_window_steps} RL steps.", ""]
        return "\n".join(lines)


class TrainedPolicy(Protocol):
    def save(self, directory: Path) -> None: ...


@dataclass(frozen=True)
class InMemoryPolicy:
    model: CausalLM
    tokenizer: PreTrainedTokenizerFast

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


@dataclass(frozen=True)
class ExportedPolicy:
    """A HuggingFace directory verl's model merger wrote."""

    path: Path

    def save(self, directory: Path) -> None:
        shutil.copytree(self.path, directory, dirs_exist_ok=True)


@dataclass(frozen=True)
class Outputs:
    policy: TrainedPolicy
    summary: TrainSummary
    history: tuple[Mapping[str, Any], ...]  # one row per step (DVC plots); empty for verl
    meta: Mapping[str, Any]  # routerops.json inside the router directory


def fingerprint(params: Params, inputs: Inputs) -> str:
    """Hash of what a checkpoint depends on (params, prices, data, training code); checkpoint
    cadence and paths are left out."""
    tp = params.train_router
    local = tp.local.model_dump(exclude={"checkpoint_every"})
    code = code_hash(import_closure(CODE_MODULES, inputs.root), inputs.root)
    h = hashlib.sha256()
    h.update(json.dumps({"backend": tp.backend, "seed": tp.seed, "local": local, "verl": tp.verl.model_dump(),
                         "rewards": params.rewards.model_dump(), "rollout": params.rollout.model_dump(),
                         "prompt": params.prompt.model_dump(), "profile": params.profile,
                         "replay": [params.candidates.replay_seed, params.candidates.replay_decline_share,
                                    params.candidates.replay_calibrate, params.candidates.replay_correlated],
                         "pool": inputs.pool.snapshot_id, "code": code}, sort_keys=True).encode())
    h.update(hashlib.sha256(split_path(inputs.dataset_dir, "train").read_bytes()).digest())
    return h.hexdigest()[:16]


def prepare_checkpoints(ckpt_dir: Path, fp: str) -> bool:
    """Make `ckpt_dir` hold checkpoints of this fingerprint only. True when it can resume."""
    marker = ckpt_dir / "fingerprint.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp:
        return True
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    write_json_atomic(marker, {"fingerprint": fp})
    return False


def _stats(rows: Sequence[Mapping[str, Any]], pool: Pool) -> TrainStats:
    """Mean of per-step metric rows (local backend's history)."""
    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / len(rows)

    core = ("reward", "format_valid", "em", "usd_per_question", "calls_per_question")
    losses = sorted({k for r in rows for k in r if k not in (*core, "step", "phase") and not k.startswith("share/")})
    return TrainStats(mean("reward"), mean("format_valid"), mean("em"), mean("usd_per_question"),
                      mean("calls_per_question"), call_share={c.name: mean(f"share/{c.name}") for c in pool},
                      losses={k: mean(k) for k in losses if all(k in r for r in rows)})


def _run_local(params: Params, inputs: Inputs, resumed: bool) -> Outputs:
    from routerops.training.local_backend import LocalTrainer

    questions = read_questions(inputs.dataset_dir, "train")
    replay = replay_pool(params.candidates, inputs.data_dir, questions)
    trainer = LocalTrainer(params, inputs.pool, questions, replay, inputs.checkpoint_dir)
    result = trainer.run()
    history = result.history
    warm = next(h for h in history if h["phase"] == "warm-start")
    # One step samples only questions_per_step questions: report the mean of the last steps.
    tail = [h for h in history if h["phase"] == "grpo"][-FINAL_WINDOW:] or [history[-1]]
    start = _stats([warm], inputs.pool)
    summary = TrainSummary("local", int(history[-1]["step"]), resumed, len(tail),
                           TrainStats(start.reward, start.format_valid, start.em, start.usd_per_question,
                                      start.calls_per_question, start.call_share),
                           _stats(tail, inputs.pool), replay.stats.summary())
    # Where the training's candidate outcomes came from, for the evaluation's provenance table
    # (this process's calls: a resumed run counts only what it ran since the resume).
    return Outputs(InMemoryPolicy(result.model, result.tokenizer), summary, tuple(history),
                   {**_meta(params, inputs.pool, trainer.calibration), "provenance": replay.stats.by_origin()})


def _start(command: Sequence[str], cwd: Path) -> int:
    """Run an external training step to its end; its exit status."""
    return subprocess.run(list(command), cwd=cwd).returncode


def _run_verl(params: Params, inputs: Inputs, resumed: bool) -> Outputs:
    """Launch verl (needs GPUs and vLLM/SGLang), then export the final actor. The launch reads
    the dataset's RL parquet (`launch.launch_inputs`, the same resolution the CLI's dry run uses);
    a missing input stops here, before anything starts."""
    from routerops.training.verl import costs, launch

    ckpt = inputs.checkpoint_dir
    dry = launch.dry_run(params, out_dir=ckpt / "verl", params_path=inputs.root / "params.yaml",
                         dataset_dir=inputs.dataset_dir, checkpoint_dir=ckpt)
    returncode = _start(dry.command, inputs.root)
    if returncode != 0:
        raise TrainingLaunchError("verl training", dry.command, returncode)
    step = launch.latest_checkpoint_step(ckpt)
    staged = ckpt / "export"
    export = launch.export_command(ckpt, step, staged)
    returncode = _start(export, inputs.root)
    if returncode != 0:
        raise TrainingLaunchError("verl model export", export, returncode)
    train = costs.summarize_training_costs(ckpt / costs.COST_LOG_FILE).for_split("train")
    tail = train[-FINAL_WINDOW:]
    final = None if not tail else TrainStats(
        sum(s.reward_mean for s in tail) / len(tail), sum(s.format_valid_share for s in tail) / len(tail),
        sum(s.em_mean for s in tail) / len(tail), sum(s.cost_usd_mean for s in tail) / len(tail),
        sum(s.calls_mean for s in tail) / len(tail), call_share=_shares([s.calls_per_model for s in tail]))
    summary = TrainSummary("verl", step or 0, resumed, len(tail), None, final, None)
    bounds = dry.out_dir / CALIBRATION_FILE
    return Outputs(ExportedPolicy(staged), summary, (),
                   _meta(params, inputs.pool, read_calibration(bounds) if bounds.is_file() else None))


def _shares(per_step: Sequence[Mapping[str, int]]) -> dict[str, float]:
    totals: dict[str, int] = {}
    for counts in per_step:
        for m, n in counts.items():
            totals[m] = totals.get(m, 0) + n
    total = sum(totals.values())
    return {m: n / total for m, n in sorted(totals.items())} if total else {}


def _meta(params: Params, pool: Pool, calibration: CostCalibration | None) -> dict[str, Any]:
    """The router's routerops.json: what it was trained with, the cost normaliser included (the
    calibrated bounds, or Router-R1's window)."""
    tp = params.train_router
    steps = tp.local.grpo_steps if tp.backend == "local" else tp.verl.total_training_steps
    normalizer = ({"mode": "calibrated", **calibration.to_json()} if calibration is not None
                  else {"mode": params.rewards.normalizer, "window": params.rewards.window})
    return {"backend": tp.backend, "pool_snapshot": pool.snapshot_id, "prices_id": pool.pricing.id,
            "alpha": params.rewards.alpha, "steps": steps, "seed": tp.seed, "cost_normalizer": normalizer}


def run(params: Params, inputs: Inputs) -> Outputs:
    """Train with the configured backend; checkpoints go to `inputs.checkpoint_dir` as it runs.
    For verl every launch input is checked first (`launch.launch_inputs`): a missing one stops the
    stage before a checkpoint folder is touched."""
    if params.train_router.backend == "verl":
        from routerops.training.verl.launch import launch_inputs

        launch_inputs(params, dataset_dir=inputs.dataset_dir, params_path=inputs.root / "params.yaml",
                      checkpoint_dir=inputs.checkpoint_dir)
    resumed = prepare_checkpoints(inputs.checkpoint_dir, fingerprint(params, inputs))
    if params.train_router.backend == "local":
        return _run_local(params, inputs, resumed)
    return _run_verl(params, inputs, resumed)


def write_history(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Per-step metrics as CSV (DVC plots read it)."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join(f"{row.get(k, '')}" for k in keys))
    write_text_atomic(path, "\n".join(lines) + "\n")


def write(out: Outputs, out_dir: Path, metrics_path: Path, history_path: Path) -> None:
    """The policy, its metadata and the summary into one atomically swapped directory; then the
    metrics and the per-step history."""
    with atomic_dir(out_dir) as tmp:
        out.policy.save(tmp)
        write_json_atomic(tmp / "routerops.json", dict(out.meta))
        (tmp / "summary.md").write_text(out.summary.markdown())
    if out.history:
        write_history(out.history, history_path)
    write_json_atomic(metrics_path, out.summary.as_json())


def main() -> None:
    root = project_root()
    params = load_params(default_params_file())
    tp = params.train_router
    try:
        out = run(params, Inputs.of_project(root, params))
    except TrainingLaunchError as exc:
        sys.stderr.write(f"train_router: {exc}\n")
        raise SystemExit(1) from None
    write(out, root / tp.out_dir, root / tp.metrics, root / tp.history)
    sys.stdout.write(out.summary.markdown())


if __name__ == "__main__":
    main()
