"""Stage: train the router policy (`python -m stages.train_router`).

backend `local` (CPU, the embedded default) runs the tiny-policy SFT + GRPO trainer; backend
`verl` launches verl on GPUs (one node, or `ray job submit` to a cluster) and exports the final
actor with verl's model merger. Both write a HuggingFace directory to `train_router.out_dir`.

The checkpoint directory persists across runs so a killed run resumes. It carries a fingerprint
of everything that shapes training (params, prices, dataset); when that changes, old
checkpoints belong to another run and are cleared rather than resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from routerops.candidates.replay import QualityMatrix, ReplayPool
from routerops.candidates.types import QuestionInfo
from routerops.config import Params, TrainRouterParams, load_params
from routerops.io import write_json_atomic
from routerops.paths import default_pool_file, project_root
from routerops.pool import Pool, load_pool

FINAL_WINDOW = 5  # GRPO steps averaged into the reported final metrics


@dataclass(frozen=True)
class Inputs:
    pool: Pool
    dataset_dir: Path
    replay_dir: Path  # the quality matrix folder (data/pool)


def train_questions(dataset_dir: Path) -> list[QuestionInfo]:
    rows = pq.read_table(dataset_dir / "rl" / "train.parquet").to_pylist()
    return [QuestionInfo(r["extra_info"]["id"], r["extra_info"]["question"], r["data_source"],
                         tuple(r["reward_model"]["ground_truth"])) for r in rows]


# Code whose change makes old checkpoints another run's (the stage's code deps in dvc.yaml).
TRAINING_CODE = ("routerops/training", "routerops/rollout.py", "routerops/rewards.py", "routerops/protocol.py",
                 "routerops/policy.py", "routerops/prompt.py", "routerops/tokens.py", "routerops/candidates/replay.py",
                 "stages/train_router.py")


def code_hash(root: Path) -> str:
    h = hashlib.sha256()
    for rel in TRAINING_CODE:
        p = root / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(params: Params, inputs: Inputs) -> str:
    """Hash of what a checkpoint depends on (params, prices, data, training code); checkpoint
    cadence and paths are left out."""
    tp: TrainRouterParams = params.require("train_router")
    local = tp.local.model_dump(exclude={"checkpoint_every"})
    h = hashlib.sha256()
    h.update(json.dumps({"backend": tp.backend, "seed": tp.seed, "local": local, "verl": tp.verl.model_dump(),
                         "rewards": params.rewards.model_dump(), "rollout": params.rollout.model_dump(),
                         "prompt": params.prompt.model_dump(), "profile": params.profile,
                         "replay": [params.candidates.replay_seed, params.candidates.replay_decline_share,
                                    params.candidates.replay_calibrate],
                         "pool": inputs.pool.snapshot_id,
                         "code": code_hash(Path(__file__).resolve().parents[1])}, sort_keys=True).encode())
    with (inputs.dataset_dir / "rl" / "train.parquet").open("rb") as fh:
        h.update(hashlib.sha256(fh.read()).digest())
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


def run_local(params: Params, inputs: Inputs, out_dir: Path, ckpt_dir: Path, progress: bool = True) -> dict[str, Any]:
    from routerops.training.local_backend import LocalTrainer

    questions = train_questions(inputs.dataset_dir)
    replay = ReplayPool(QualityMatrix.load(inputs.replay_dir), ReplayPool.distractors_from(questions),
                        seed=params.candidates.replay_seed, decline_share=params.candidates.replay_decline_share,
                        calibrate=params.candidates.replay_calibrate)
    resumed = prepare_checkpoints(ckpt_dir, fingerprint(params, inputs))
    result = LocalTrainer(params, inputs.pool, questions, replay, ckpt_dir, progress=progress).run(out_dir)
    first, last = result.history[0], result.final
    # One step samples only questions_per_step questions: report the mean of the last steps.
    tail = [h for h in result.history if h.get("phase") == "grpo"][-FINAL_WINDOW:] or [last]
    final = {k: sum(h[k] for h in tail) / len(tail) for k, v in last.items()
             if isinstance(v, (int, float)) and k != "step"}
    return {
        "backend": "local", "resumed": resumed, "steps": last["step"], "final_window_steps": len(tail),
        "start": {k: first[k] for k in ("reward", "format_valid", "em", "usd_per_question")},
        "final": final,
        "replay": replay.stats.summary(),
        "history": result.history,
    }


def run_verl(params: Params, inputs: Inputs, out_dir: Path, ckpt_dir: Path) -> dict[str, Any]:
    """Launch verl (needs GPUs and vLLM/SGLang), then export the final actor."""
    from routerops.training import verl_backend as vb

    prepare_checkpoints(ckpt_dir, fingerprint(params, inputs))
    dry = vb.dry_run(params, out_dir=ckpt_dir / "verl", params_path=project_root() / "params.yaml",
                     dataset_dir=inputs.dataset_dir, checkpoint_dir=ckpt_dir)
    subprocess.run(list(dry.command), check=True, cwd=project_root())
    step = vb.latest_checkpoint_step(ckpt_dir)
    subprocess.run(vb.export_command(ckpt_dir, step, out_dir), check=True, cwd=project_root())
    costs = vb.summarize_training_costs(ckpt_dir / vb.COST_LOG_FILE)
    train = costs.for_split("train")
    last = train[-1] if train else None
    return {"backend": "verl", "steps": step, "final": {} if last is None else {
        "reward": last.reward_mean, "em": last.em_mean, "format_valid": last.format_valid_share,
        "usd_per_question": last.cost_usd_mean, "calls_per_question": last.calls_mean}}


def main() -> None:
    params = load_params(project_root() / "params.yaml")
    tp: TrainRouterParams = params.require("train_router")
    inputs = Inputs(load_pool(default_pool_file()), project_root() / params.require("build_dataset").out_dir,
                    project_root() / params.require("build_dataset").raw_dir / "pool")
    out_dir, ckpt_dir = project_root() / tp.out_dir, project_root() / tp.checkpoint_dir
    if tp.backend == "local":
        summary = run_local(params, inputs, out_dir, ckpt_dir, progress=sys.stderr.isatty() or "CI" not in os.environ)
    else:
        summary = run_verl(params, inputs, out_dir, ckpt_dir)
    history = summary.pop("history", [])
    if history:
        from routerops.training.local_backend import write_history

        write_history(history, project_root() / tp.history)
    write_json_atomic(project_root() / tp.metrics, summary)
    f = summary.get("final", {})
    if f and "start" in summary:
        s = summary["start"]
        sys.stdout.write(
            f"train_router: {summary['steps']} GRPO steps{' (resumed)' if summary.get('resumed') else ''} "
            f"(final = mean of last {summary['final_window_steps']}); "
            f"reward {s['reward']:.3f} -> {f['reward']:.3f}, format-valid {s['format_valid']:.2f} -> "
            f"{f['format_valid']:.2f}, EM {s['em']:.2f} -> {f['em']:.2f}, "
            f"USD/question {f['usd_per_question'] * 1e6:.1f} micro-USD -> {out_dir}\n")


if __name__ == "__main__":
    main()
