from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from routerops.datasets import load_file
from routerops.snapshot import FLASHRAG_CONFIGS, HUB_DATASET, seed_from_hub, seed_from_shared


def test_seed_from_shared_mirrors_and_is_idempotent(shared_data, tmp_path) -> None:
    dest = tmp_path / "data"
    first = seed_from_shared(shared_data, dest)
    assert first.files == first.copied == sum(1 for p in shared_data.rglob("*") if p.is_file())
    (dest / "stray.txt").write_text("not in the snapshot")
    (dest / "nq" / "nq_open_efficientqa_dev.jsonl").write_text("tampered")
    again = seed_from_shared(shared_data, dest)
    assert again.copied == 1 and not (dest / "stray.txt").exists()
    assert (dest / "nq" / "nq_open_efficientqa_dev.jsonl").read_bytes() == \
        (shared_data / "nq" / "nq_open_efficientqa_dev.jsonl").read_bytes()


def test_seed_from_shared_missing_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="shared data folder not found"):
        seed_from_shared(tmp_path / "nope", tmp_path / "data")


def test_hub_seed_writes_flashrag_rows_the_loader_reads(shared_data, tmp_path) -> None:
    # The real loader is datasets.load_dataset; offline, the same call shape replays FlashRAG's
    # own row schema from the shared sample.
    sample = [json.loads(x) for x in (shared_data / "flashrag" / "nq_test_sample.jsonl").read_text().splitlines()]
    calls = []

    def load(name, config, split):
        calls.append((name, config, split))
        return sample

    res = seed_from_hub(tmp_path, load=load)
    assert res.files == sum(len(s) for s in FLASHRAG_CONFIGS.values())
    assert calls[0] == (HUB_DATASET, "nq", "train")
    rows, rep = load_file(tmp_path / "flashrag" / "nq" / "test.jsonl", "flashrag", "test", "nq")
    assert len(rows) == len(sample) and not rep.rejected


def test_hub_unreachable_is_a_clear_error(tmp_path) -> None:
    def load(name, config, split):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    with pytest.raises(ConnectionError, match="could not load RUC-NLPIR/FlashRAG_datasets config 'nq'"):
        seed_from_hub(tmp_path, load=load)


@pytest.mark.slow
def test_cli_seed_reports_a_new_data_version(shared_data, tmp_path) -> None:
    """In a scratch git+DVC repo: the recorded version matches; an edited file is a new version."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env_py = sys.executable
    run = lambda *a: subprocess.run(a, cwd=repo, capture_output=True, text=True, timeout=120)  # noqa: E731
    assert run("git", "init", "-q").returncode == 0
    assert run(env_py, "-m", "dvc", "init", "-q").returncode == 0
    cli = [env_py, "-m", "routerops.cli", "data", "seed", "--dest", str(repo / "data")]
    first = run(*cli)
    assert first.returncode == 0 and "dvc add data" in first.stdout
    assert run(env_py, "-m", "dvc", "add", "-q", "data").returncode == 0
    same = run(*cli)
    assert same.returncode == 0 and "matches the data version recorded in data.dvc" in same.stdout
    (repo / "data" / "extra.jsonl").write_text("{}\n")  # removed again by the mirror
    assert run(*cli).returncode == 0
    # a fresh clone: the recorded version with an empty DVC cache is still the same version
    shutil.rmtree(repo / ".dvc" / "cache")
    fresh = run(*cli)
    assert fresh.returncode == 0 and "matches the data version" in fresh.stdout
    # ... but a changed file with an empty cache is a new version, and data.dvc is left alone
    recorded = (repo / "data.dvc").read_text()
    shutil.rmtree(repo / ".dvc" / "cache")
    edited_shared = tmp_path / "shared"
    shutil.copytree(shared_data, edited_shared)
    (edited_shared / "README.md").write_text("edited")
    edited = subprocess.run(cli, cwd=repo, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ROUTEROPS_SHARED_DATA": str(edited_shared)})
    assert edited.returncode == 3 and "new data version" in edited.stdout
    assert (repo / "data.dvc").read_text() == recorded
    (repo / "data.dvc").write_text((repo / "data.dvc").read_text().replace("md5: ", "md5: 0", 1))
    changed = run(*cli)
    assert changed.returncode == 3 and "this is a new data version" in changed.stdout
