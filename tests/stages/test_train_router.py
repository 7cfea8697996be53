from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from routerops.config import load_params
from stages.build_dataset import Inputs as BuildInputs
from stages.build_dataset import run as build
from stages.build_dataset import write
from stages.train_router import TRAINING_CODE, Inputs, code_hash, fingerprint, prepare_checkpoints, run_local

# Small enough for seconds per run on 2 cores, big enough to learn the format.
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "copy_drills": 0, "context_drills": 0, "grpo_drills_per_step": 2, "sft_examples": 1000, "sft_epochs": 3, "sft_batch_size": 16,
        "sft_lr": 0.006, "grpo_steps": 4, "questions_per_step": 4, "group_size": 3, "checkpoint_every": 2}


def tiny_params(repo_root: Path, **local):
    params = load_params(repo_root / "params.yaml")
    tp = params.train_router
    return params.model_copy(update={"train_router": tp.model_copy(update={
        "local": tp.local.model_copy(update={**TINY, **local})})})


@pytest.fixture(scope="module")
def inputs(repo_root, pool, shared_data, tmp_path_factory) -> Inputs:
    d = tmp_path_factory.mktemp("data") / "dataset"
    params = load_params(repo_root / "params.yaml")
    write(build(params, BuildInputs(pool, shared_data)), d, d.parent / "card.json")
    return Inputs(pool, d, shared_data / "pool")


@pytest.mark.slow
@pytest.mark.timeout(900)  # several CPU trainings; ~1-3 min on an idle 2-core machine
def test_short_local_run_learns_the_format(repo_root, inputs, tmp_path) -> None:
    summary = run_local(tiny_params(repo_root), inputs, tmp_path / "router", tmp_path / "ckpt", progress=False)
    hist = summary["history"]
    untrained, final = hist[0], hist[-1]
    assert untrained["phase"] == "untrained" and final["step"] == TINY["grpo_steps"]
    assert untrained["format_valid"] == 0.0 and untrained["reward"] == -1.0
    assert final["format_valid"] > 0.5 and final["reward"] > untrained["reward"] + 0.5
    assert summary["replay"]["calls"] > 0
    # the exported policy is a loadable HuggingFace directory with its lineage note
    meta = json.loads((tmp_path / "router" / "routerops.json").read_text())
    assert meta["pool_snapshot"] == inputs.pool.snapshot_id and (tmp_path / "router" / "config.json").is_file()


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from routerops.config import load_params
    from routerops.pool import load_pool
    from stages.train_router import Inputs, run_local
    from routerops.training import local_backend
    kill_at = int(os.environ["KILL_AT_STEP"])
    class Killer(local_backend.LocalTrainer):
        def __init__(self, *a, **kw):
            kw["on_step"] = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None
            super().__init__(*a, **kw)
    local_backend.LocalTrainer = Killer
    params = load_params({params!r})
    tp = params.train_router
    params = params.model_copy(update={{"train_router": tp.model_copy(update={{
        "local": tp.local.model_copy(update={tiny!r})}})}})
    inputs = Inputs(load_pool({pool!r}), Path({dataset!r}), Path({replay!r}))
    run_local(params, inputs, Path({out!r}), Path({ckpt!r}), progress=False)
""")


@pytest.mark.slow
@pytest.mark.timeout(900)  # several CPU trainings; ~1-3 min on an idle 2-core machine
def test_killed_run_resumes_exactly(repo_root, inputs, tmp_path) -> None:
    params = tiny_params(repo_root)
    ref = run_local(params, inputs, tmp_path / "ref-router", tmp_path / "ref-ckpt", progress=False)

    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN.format(
        root=str(repo_root), params=str(repo_root / "params.yaml"), tiny=TINY, pool=str(repo_root / "pool.yaml"),
        dataset=str(inputs.dataset_dir), replay=str(inputs.replay_dir), out=str(tmp_path / "router"),
        ckpt=str(tmp_path / "ckpt")))
    proc = subprocess.run([sys.executable, str(script)], env={**os.environ, "KILL_AT_STEP": "3"},
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "router").exists()  # nothing half-exported
    steps = sorted(p.name for p in (tmp_path / "ckpt").glob("step_*"))
    assert steps == ["step_00002"]  # killed after step 3, before the step-4 checkpoint

    resumed = run_local(params, inputs, tmp_path / "router", tmp_path / "ckpt", progress=False)
    assert resumed["resumed"] is True
    assert resumed["history"] == ref["history"]
    a = torch.load(tmp_path / "ckpt" / "step_00004" / "model.pt")
    b = torch.load(tmp_path / "ref-ckpt" / "step_00004" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_changed_inputs_clear_old_checkpoints(repo_root, inputs, tmp_path) -> None:
    params = tiny_params(repo_root)
    fp = fingerprint(params, inputs)
    assert prepare_checkpoints(tmp_path / "c", fp) is False
    (tmp_path / "c" / "step_00002").mkdir()
    assert prepare_checkpoints(tmp_path / "c", fp) is True and (tmp_path / "c" / "step_00002").exists()
    other = fingerprint(params.model_copy(update={"rewards": params.rewards.model_copy(update={"alpha": 0.5})}),
                        inputs)
    assert other != fp
    assert prepare_checkpoints(tmp_path / "c", other) is False and not (tmp_path / "c" / "step_00002").exists()
    # checkpoint cadence is not part of the fingerprint; the training code is
    assert fingerprint(tiny_params(repo_root, checkpoint_every=1), inputs) == fp
    assert set(TRAINING_CODE) >= {"routerops/training", "routerops/policy.py", "stages/train_router.py"}


def test_code_change_changes_the_fingerprint(repo_root, tmp_path) -> None:
    import shutil

    for rel in TRAINING_CODE:
        src = repo_root / rel
        dst = tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    before = code_hash(tmp_path)
    assert before == code_hash(repo_root)
    (tmp_path / "routerops" / "policy.py").write_text((tmp_path / "routerops" / "policy.py").read_text() + "\n# x\n")
    assert code_hash(tmp_path) != before
