from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from routerops.codebase import import_closure
from routerops.config import Params, load_params
from stages.build_dataset import Inputs as BuildInputs
from stages.build_dataset import run as build
from stages.build_dataset import write as write_dataset
from stages.train_router import (
    CODE_MODULES,
    Inputs,
    TrainingLaunchError,
    fingerprint,
    prepare_checkpoints,
    run,
    write,
)

# Small enough for seconds per run on 2 cores, big enough to learn the format.
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "copy_drills": 0, "retry_drills": 0, "context_drills": 0, "grpo_drills_per_step": 2,
        "grpo_retry_drills_per_step": 1, "sft_examples": 1000,
        "sft_epochs": 3, "sft_batch_size": 16, "sft_lr": 0.006, "grpo_steps": 4, "questions_per_step": 4,
        "group_size": 3, "checkpoint_every": 2}


def tiny_params(repo_root: Path, **local) -> Params:
    params = load_params(repo_root / "params.yaml")
    tp = params.train_router
    return params.model_copy(update={"train_router": tp.model_copy(update={
        "local": tp.local.model_copy(update={**TINY, **local})})})


@pytest.fixture(scope="module")
def dataset(repo_root, pool, shared_data, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data") / "dataset"
    params = load_params(repo_root / "params.yaml")
    write_dataset(build(params, BuildInputs(pool, shared_data)), d, d.parent / "card.json")
    return d


def inputs_for(pool, dataset: Path, shared_data: Path, ckpt: Path, root: Path) -> Inputs:
    return Inputs(pool, dataset, shared_data, ckpt, root)


@pytest.mark.slow
@pytest.mark.timeout(900)  # several CPU trainings; ~1-3 min on an idle 2-core machine
def test_short_local_run_learns_the_format(repo_root, pool, dataset, shared_data, tmp_path) -> None:
    params = tiny_params(repo_root)
    out = run(params, inputs_for(pool, dataset, shared_data, tmp_path / "ckpt", repo_root))
    untrained, final = out.history[0], out.history[-1]
    assert untrained["phase"] == "untrained" and final["step"] == TINY["grpo_steps"]
    assert untrained["format_valid"] == 0.0 and untrained["reward"] == -1.0
    # learning, not an exact value: the trained policy's samples are valid and score far above -1
    assert final["format_valid"] > 0.5 and final["reward"] > untrained["reward"] + 0.5
    s = out.summary
    assert (s.backend, s.steps, s.resumed, s.final_window_steps) == ("local", TINY["grpo_steps"], False, 4)
    assert s.start is not None and s.final is not None and set(s.final.call_share) == set(pool.names)
    assert s.replay is not None
    assert s.replay["calls"] == (s.replay["recorded_as_is"] + s.replay["recorded_changed_by_calibration"]
                                 + s.replay["drawn_from_priors"])
    assert s.replay["calls"] >= TINY["sft_examples"]  # every synthetic warm-start trajectory calls a model

    write(out, tmp_path / "router", tmp_path / "train.json", tmp_path / "history.csv")
    meta = json.loads((tmp_path / "router" / "routerops.json").read_text())
    assert meta == {"backend": "local", "pool_snapshot": pool.snapshot_id, "prices_id": pool.pricing.id,
                    "alpha": params.rewards.alpha, "steps": TINY["grpo_steps"], "seed": params.train_router.seed,
                    # where the training's candidate outcomes came from, for the evaluation's report
                    "provenance": {"replay:recorded": s.replay["recorded_as_is"],
                                   "replay:calibrated": s.replay["recorded_changed_by_calibration"],
                                   "replay:prior": s.replay["drawn_from_priors"]},
                    # the cost bounds calibrated before the first step, as the checkpoint folder holds them
                    "cost_normalizer": {"mode": "calibrated",
                                        **json.loads((tmp_path / "ckpt" / "cost_bounds.json").read_text())}}
    assert (tmp_path / "router" / "config.json").is_file()
    assert (tmp_path / "router" / "summary.md").read_text().startswith("# Router training\n")
    assert json.loads((tmp_path / "train.json").read_text()) == json.loads(json.dumps(s.as_json()))
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + len(out.history)
    assert rows[0].split(",") == list(dict.fromkeys(k for row in out.history for k in row))


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from routerops.config import load_params
    from routerops.pool import load_pool
    from stages.train_router import Inputs, run
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
    run(params, Inputs(load_pool({pool!r}), Path({dataset!r}), Path({data!r}), Path({ckpt!r}), Path({root!r})))
""")


@pytest.mark.slow
@pytest.mark.timeout(900)  # several CPU trainings; ~1-3 min on an idle 2-core machine
def test_killed_run_resumes_exactly(repo_root, pool, dataset, shared_data, tmp_path) -> None:
    deadline = time.monotonic() + 840  # inside the test's own timeout, whatever else the machine runs
    params = tiny_params(repo_root)
    ref = run(params, inputs_for(pool, dataset, shared_data, tmp_path / "ref-ckpt", repo_root))

    script = tmp_path / "killed.py"
    # Killed after GRPO step 1 (only the warm start saved) and after step 3 (the step-2 checkpoint
    # saved, step 4's not yet): either way the resumed run ends where the uninterrupted one does.
    for kill_at, kept in ((1, []), (3, ["step_00002"])):
        ckpt = tmp_path / f"ckpt-{kill_at}"
        script.write_text(KILLED_RUN.format(
            root=str(repo_root), params=str(repo_root / "params.yaml"), tiny=TINY, pool=str(repo_root / "pool.yaml"),
            dataset=str(dataset), data=str(shared_data), ckpt=str(ckpt)))
        proc = subprocess.run([sys.executable, str(script)], env={**os.environ, "KILL_AT_STEP": str(kill_at)},
                              capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert (ckpt / "sft" / "_COMPLETE").is_file()
        assert sorted(p.name for p in ckpt.glob("step_*")) == kept

        resumed = run(params, inputs_for(pool, dataset, shared_data, ckpt, repo_root))
        assert resumed.summary.resumed is True  # from its warm start, or from step 2
        assert resumed.history == ref.history, kill_at
        a = torch.load(ckpt / "step_00004" / "model.pt")
        b = torch.load(tmp_path / "ref-ckpt" / "step_00004" / "model.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kill_at
    ckpt = tmp_path / "ckpt-3"
    # The budget's ledger kept what the killed process spent: the resumed run paid for step 3
    # twice, so it holds more than the uninterrupted run's, never a fresh zero.
    killed, whole = (json.loads((tmp_path / d / "run_budget.json").read_text()) for d in ("ckpt-3", "ref-ckpt"))
    assert killed["calls"] > whole["calls"] and killed["spent_usd"] > whole["spent_usd"] > 0
    # The cost bounds were calibrated once, before the first step, and read back on resume.
    assert (ckpt / "cost_bounds.json").read_text() == (tmp_path / "ref-ckpt" / "cost_bounds.json").read_text()
    assert resumed.meta["cost_normalizer"]["mode"] == "calibrated"


def test_changed_inputs_clear_old_checkpoints(repo_root, pool, dataset, shared_data, tmp_path) -> None:
    params = tiny_params(repo_root)
    inputs = inputs_for(pool, dataset, shared_data, tmp_path / "c", repo_root)
    fp = fingerprint(params, inputs)
    assert prepare_checkpoints(tmp_path / "c", fp) is False
    (tmp_path / "c" / "step_00002").mkdir()
    assert prepare_checkpoints(tmp_path / "c", fp) is True and (tmp_path / "c" / "step_00002").exists()
    other = fingerprint(params.model_copy(update={"rewards": params.rewards.model_copy(update={"alpha": 0.5})}),
                        inputs)
    assert other != fp
    assert prepare_checkpoints(tmp_path / "c", other) is False and not (tmp_path / "c" / "step_00002").exists()
    # checkpoint cadence is not part of the fingerprint
    assert fingerprint(tiny_params(repo_root, checkpoint_every=1), inputs) == fp


def test_the_fingerprint_covers_exactly_the_code_the_stage_runs(repo_root, pool, dataset, shared_data,
                                                                tmp_path) -> None:
    code = import_closure(CODE_MODULES, repo_root)
    assert {"stages/train_router.py", "routerops/policy.py", "routerops/training/local_backend.py",
            "routerops/rewards.py"} <= set(code)
    for rel in (*code, "routerops/report.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo_root / rel, tmp_path / rel)
    params = tiny_params(repo_root)

    def fp() -> str:
        return fingerprint(params, inputs_for(pool, dataset, shared_data, tmp_path / "c", tmp_path))

    before = fp()
    assert before == fingerprint(params, inputs_for(pool, dataset, shared_data, tmp_path / "c", repo_root))
    (tmp_path / "routerops" / "report.py").write_text("# not imported by training\n")
    assert fp() == before
    policy = tmp_path / "routerops" / "policy.py"
    policy.write_text(policy.read_text() + "\n# changed\n")
    assert fp() != before


def test_a_failed_verl_launch_is_a_typed_error(repo_root, pool, dataset, shared_data, tmp_path, monkeypatch) -> None:
    from routerops.training.verl import launch

    failing = (sys.executable, "-c", "raise SystemExit(3)")
    monkeypatch.setattr(launch, "dry_run", lambda *a, **kw: launch.DryRun(tmp_path, (), (), failing))
    params = load_params(repo_root / "params.yaml")
    params = params.model_copy(update={"train_router": params.train_router.model_copy(update={"backend": "verl"})})
    with pytest.raises(TrainingLaunchError, match=r"^verl training exited 3: ") as err:
        run(params, inputs_for(pool, dataset, shared_data, tmp_path / "ckpt", repo_root))
    assert (err.value.step, err.value.command, err.value.returncode) == ("verl training", failing, 3)


@pytest.mark.slow
def test_the_verl_launch_starts_with_every_path_in_place(repo_root, pool, dataset, shared_data, tmp_path,
                                                         monkeypatch) -> None:
    # The real dry run and command, stopped at the one thing a CPU cannot do: starting verl.
    import stages.train_router as stage

    started: list[tuple[str, ...]] = []

    def start(command, cwd) -> int:
        started.append(tuple(command))
        return 7

    monkeypatch.setattr(stage, "_start", start)
    params = load_params(repo_root / "params.yaml")
    params = params.model_copy(update={"train_router": params.train_router.model_copy(update={"backend": "verl"})})
    with pytest.raises(TrainingLaunchError, match=r"^verl training exited 7: "):
        run(params, inputs_for(pool, dataset, shared_data, tmp_path / "ckpt", repo_root))
    (command,) = started
    values = [a.split("=", 1)[1] if "=" in a else a for a in command]
    paths = [Path(v) for v in values if v.startswith("/")]
    assert f"data.train_files={dataset / 'rl' / 'train.parquet'}" in command
    assert f"data.val_files={dataset / 'rl' / 'validation.parquet'}" in command
    # every path exists but the cost log, which the run itself writes into its checkpoint folder
    from routerops.training.verl.costs import COST_LOG_FILE

    assert len(paths) >= 6 and [p for p in paths if not p.exists()] == [tmp_path / "ckpt" / COST_LOG_FILE]


def test_a_missing_launch_input_stops_before_anything_starts(repo_root, pool, shared_data, tmp_path,
                                                             monkeypatch) -> None:
    import stages.train_router as stage

    monkeypatch.setattr(stage, "_start", lambda command, cwd: pytest.fail("nothing may start"))
    params = load_params(repo_root / "params.yaml")
    params = params.model_copy(update={"train_router": params.train_router.model_copy(update={"backend": "verl"})})
    empty = tmp_path / "dataset"
    empty.mkdir()
    from routerops.training.verl.launch import LaunchInputError

    with pytest.raises(LaunchInputError, match=(
            rf"^cannot launch verl, missing: train split {empty}/rl/train\.parquet; validation split "
            rf"{empty}/rl/validation\.parquet \(build the dataset: `dvc repro build_dataset`\)$")):
        run(params, inputs_for(pool, empty, shared_data, tmp_path / "ckpt", repo_root))
    assert not (tmp_path / "ckpt").exists()  # nothing was written: not even the checkpoint folder
