"""Training jobs on a Ray cluster that need nothing from the submitting machine's disk.

`ray job submit` ships the repository as the job's `working_dir` (code, params.yaml, pool.yaml,
dvc.lock; never environments, outputs or `.dvc/config.local`, which holds keys). Data comes from
the DVC remote on S3, by the md5 that dvc.lock records: the job downloads each input into its own
folder, checks every file's md5 and the directory's hash, and refuses anything that differs.
Results go back to the same bucket, under `<remote prefix>/jobs/<job id>/`. The S3 endpoint and
keys are the nodes' (`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, or an
instance role): nothing secret is put in the runtime env.

    python -m routerops.training.cluster rollout --remote s3://bucket/dvc --input artifacts/dataset=<md5>.dir \
        --input data=<md5>.dir --job-id ID [--questions 8]
    python -m routerops.training.cluster verl --remote ... --input ... --job-id ID [--dry-run]

`rollout` is the CPU-sized piece of the training path: the episode loop our verl agent loop runs
(`routerops.rollout.run_episodes`) over a batch of training questions with the replay pool and
the run's shared budget ledger, each trajectory scored by verl's reward entrypoint
(`routerops.training.verl.reward.compute_score`) under bounds calibrated in the job. The policy is
the scripted router of the local warm start (each question routed to the pool's candidates in a
rotating order), because the piece proves the plumbing, not a policy. `verl` stages the same inputs,
runs the dry run in the job (so every path in verl's overrides is the job's), uploads the
generated files, and then starts verl (`--dry-run` stops before it).
`submit_command` builds the submission for either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.lineage import ObjectMissing, RemoteUnavailable, dvc_dir_md5, lock_artifact, md5_hex
from routerops.remote import DvcS3Remote, RemoteConfig

__all__ = ["JOB_MODULE", "JobError", "JobInput", "JobStore", "job_inputs", "job_runtime_env", "main",
           "materialise", "rollout_piece", "submit_command"]

JOB_MODULE = __spec__.name if __spec__ is not None else __name__
# Never uploaded with the working directory: environments, data, outputs, DVC's cache and its
# local config (endpoint and keys). gitignore syntax, relative to the repository root.
RAY_EXCLUDES = ("/.venv", "/.venv-*", "/.git", "/artifacts", "/checkpoints", "/data", "/runs", "/plots",
                "/.routerops", "/.dvc/cache", "/.dvc/tmp", "/.dvc/config.local", "__pycache__", "*.parquet",
                "*.safetensors", "*.pt")
RESULT_FILE = "result.json"
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class JobError(ValueError):
    """A cluster job's input or output that cannot be used; the message names it."""


@dataclass(frozen=True)
class JobInput:
    """A DVC-tracked folder or file the job downloads: its path in the repository and its md5."""

    path: str
    md5: str

    @classmethod
    def parse(cls, text: str) -> JobInput:
        path, sep, md5 = text.partition("=")
        digest = md5.removesuffix(".dir")
        if not sep or not path or len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            raise JobError(f"--input {text!r}: expected PATH=<32 hex md5>[.dir]")
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise JobError(f"--input {text!r}: the path must be relative to the repository, inside it")
        return cls(path, md5)

    def arg(self) -> str:
        return f"{self.path}={self.md5}"


def job_inputs(lock: Mapping[str, Any], data_dvc: Mapping[str, Any], dataset_path: str) -> tuple[JobInput, ...]:
    """The training inputs as dvc.lock and data.dvc record them: the dataset stage's output
    (`dataset_path`, params `build_dataset.out_dir`) and the raw snapshot (`data`, whose pool/
    holds the replay pool's quality matrix)."""
    dataset = lock_artifact(lock, "build_dataset", dataset_path)
    outs = [o for o in data_dvc.get("outs") or [] if o.get("path") == "data" and o.get("md5")]
    if not outs:
        raise JobError("data.dvc: no 'data' output with an md5 (run `dvc add data`)")
    return JobInput(dataset.path, dataset.md5), JobInput("data", str(outs[0]["md5"]))


class JobStore(DvcS3Remote):
    """The DVC remote, plus the job's own result objects under `<prefix>/jobs/<job id>/`."""

    def job_key(self, job_id: str, name: str) -> str:
        return f"{self.prefix}/jobs/{job_id}/{name}".lstrip("/")

    def put(self, key: str, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise RemoteUnavailable(f"s3://{self.bucket}/{key}: {exc}") from None
        return f"s3://{self.bucket}/{key}"

    def read(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectMissing(f"s3://{self.bucket}/{key}") from None
            raise RemoteUnavailable(f"s3://{self.bucket}/{key}: {exc}") from None
        except BotoCoreError as exc:
            raise RemoteUnavailable(f"s3://{self.bucket}/{key}: {exc}") from None
        return body


def open_store(remote_url: str) -> JobStore:
    """The remote at `remote_url`; endpoint and keys from the node's AWS environment."""
    if not remote_url.startswith("s3://"):
        raise JobError(f"--remote {remote_url!r}: expected s3://bucket/prefix")
    return JobStore(RemoteConfig("job", remote_url.rstrip("/"), os.environ.get("AWS_ENDPOINT_URL_S3"), None, None,
                                 os.environ.get("AWS_DEFAULT_REGION")))


def materialise(store: DvcS3Remote, item: JobInput, root: Path) -> int:
    """Download `item` into `root / item.path`, every md5 checked; the number of files. A file
    already there with the listed md5 is kept (a retried job downloads only what it lacks)."""
    target = root / item.path
    if not item.md5.endswith(".dir"):
        data = store.get(item.md5)
        if md5_hex(data) != item.md5:
            raise JobError(f"{store.url(item.md5)}: content has md5 {md5_hex(data)}, expected {item.md5}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return 1
    listing = store.get(item.md5)
    if md5_hex(listing) + ".dir" != item.md5:
        raise JobError(f"{store.url(item.md5)}: listing has md5 {md5_hex(listing)}, expected {item.md5}")
    try:
        entries = {str(e["relpath"]): str(e["md5"]) for e in json.loads(listing)}
    except (ValueError, KeyError, TypeError) as exc:
        raise JobError(f"{store.url(item.md5)}: not a DVC directory listing ({exc})") from exc
    if dvc_dir_md5(entries) != item.md5:
        raise JobError(f"{store.url(item.md5)}: listing does not hash to {item.md5}")
    for rel, md5 in sorted(entries.items()):
        path = target / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise JobError(f"{store.url(item.md5)}: entry {rel!r} leaves the folder")
        if path.is_file() and md5_hex(path.read_bytes()) == md5:
            continue
        data = store.get(md5)
        if md5_hex(data) != md5:
            raise JobError(f"{store.url(md5)} ({item.path}/{rel}): content has md5 {md5_hex(data)}, expected {md5}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return len(entries)


def job_runtime_env(params_path: str, pool_path: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Ray runtime env: the repository as working_dir, params and pool named relative to it, the
    telemetry switches. Secrets are never put here."""
    from routerops.paths import project_root
    from routerops.training.verl.runtime import PARAMS_ENV, POOL_ENV, TELEMETRY_ENV

    root = project_root().resolve()
    rel = {}
    for what, value in (("params", params_path), ("pool", pool_path)):
        p = Path(value)
        p = (p if p.is_absolute() else root / p).resolve()
        if not p.is_relative_to(root):
            raise JobError(f"{what} file {p} is outside the repository ({root}): it would not travel with the job; "
                           "copy it into the repository (it is shipped as the job's working_dir)")
        rel[what] = str(p.relative_to(root))
    return {"working_dir": str(root), "excludes": list(RAY_EXCLUDES),
            "env_vars": {**TELEMETRY_ENV, PARAMS_ENV: rel["params"], POOL_ENV: rel["pool"], **(env or {})}}


def submit_command(address: str, mode: str, *, remote_url: str, inputs: Sequence[JobInput], job_id: str,
                   params_path: str = "params.yaml", pool_path: str = "pool.yaml", python: str = "python",
                   extra: Sequence[str] = ()) -> list[str]:
    """`ray job submit` of this module's `mode` (rollout or verl) to the cluster at `address`."""
    if mode not in ("rollout", "verl"):
        raise JobError(f"unknown job mode {mode!r} (rollout or verl)")
    env = json.dumps(job_runtime_env(params_path, pool_path), sort_keys=True)
    args = [python, "-m", JOB_MODULE, mode, "--remote", remote_url, "--job-id", job_id,
            *[a for i in inputs for a in ("--input", i.arg())], *extra]
    return ["ray", "job", "submit", "--address", address, "--runtime-env-json", env, "--", *args]


def rollout_piece(root: Path, scratch: Path, questions: int) -> dict[str, Any]:
    """The agent loop's episodes and verl's reward over `questions` training questions, from the
    inputs staged under `root` (params and pool from the job's working directory)."""
    from routerops.candidates.budget import LEDGER_FILE
    from routerops.config import load_params
    from routerops.cost_calibration import training_calibration, write_calibration
    from routerops.policy import ScriptedRouter
    from routerops.pool import load_pool
    from routerops.rl_dataset import read_questions
    from routerops.rollout import run_episodes
    from routerops.runtime import build_backend, encode_prompt
    from routerops.training.tiny_policy import train_tokenizer
    from routerops.training.verl.reward import compute_score
    from routerops.training.verl.runtime import resolve_params_path, resolve_pool_path

    params_path, pool_path = resolve_params_path().resolve(), resolve_pool_path().resolve()
    params, pool = load_params(params_path), load_pool(pool_path)
    dataset = root / params.build_dataset.out_dir
    train = read_questions(dataset, "train")
    batch = train[:questions]
    if not batch:
        raise JobError(f"{dataset}: the train split has no questions")
    names = list(pool.names)
    tok = train_tokenizer([q.text for q in batch] + names, params.train_router.local.vocab_size)
    router = ScriptedRouter(tok, lambda q: names[len(q) % len(names):] + names[:len(q) % len(names)])
    backends = build_backend(params.candidates, data_dir=root / "data", distractor_questions=train,
                             include_prompt_cost=params.rewards.include_prompt_cost,
                             ledger_path=scratch / LEDGER_FILE)
    items = [(q, encode_prompt(q.text, pool, tok, params)) for q in batch]
    trajs = asyncio.run(run_episodes(items, budgets=[backends.request_budget(params.candidates.request_budget_usd)
                                                     for _ in batch], generator=router, tokenizer=tok, pool=pool,
                                     backend=backends.backend, limits=params.router_limits()))
    bounds = write_calibration(scratch / "cost_bounds.json", training_calibration(params, pool, train))
    episodes = []
    for t in trajs:
        calls = json.dumps([{"model": c.model, "completion_tokens": c.completion_tokens,
                             "prompt_tokens": c.prompt_tokens, "ok": c.ok} for c in t.calls])
        score = compute_score(t.question.data_source, str(tok.decode(t.response_ids)), list(t.question.golden_answers),
                              {"split": "train", "route_calls": calls, "id": t.question.id},
                              params_path=str(params_path), pool_path=str(pool_path),
                              cost_log_path=str(scratch / "route_costs.jsonl"), cost_bounds_path=str(bounds))
        episodes.append({"id": t.question.id, "answer": t.answer, "calls": [c.model for c in t.calls],
                         "route_cost_usd": t.cost_usd, **score})
    ledger = backends.run_budget
    return {"questions": len(batch), "episodes": episodes, "ledger": {"calls": ledger.calls,
                                                                      "spent_usd": ledger.spent_usd},
            "replay": backends.replay.stats.summary() if backends.replay else None,
            "params": str(params_path.relative_to(Path.cwd().resolve())) if params_path.is_relative_to(
                Path.cwd().resolve()) else str(params_path)}


def _verl_piece(root: Path, scratch: Path, dry: bool) -> tuple[dict[str, Any], list[Path]]:
    from routerops.config import load_params
    from routerops.training.verl import launch
    from routerops.training.verl.runtime import resolve_params_path

    params_path = resolve_params_path().resolve()
    loaded = load_params(params_path)
    tr = loaded.train_router
    # The job is the cluster run: its launch is verl on this head, never another submission
    # (params still name the ray_address that sent the job here).
    params = loaded.model_copy(update={"train_router": tr.model_copy(update={
        "verl": tr.verl.model_copy(update={"ray_address": None})})})
    # verl's workers read the replay data the job staged (overrides forward the variable into
    # ray_init's runtime env), not a ../shared/data beside Ray's copy of the code.
    os.environ["ROUTEROPS_SHARED_DATA"] = str((root / "data").resolve())
    # An absolute checkpoint_dir is storage every node shares (docs/verl.md); a relative one is
    # the job's folder on the head: one node only, and said so in the result.
    configured = Path(tr.checkpoint_dir)
    ckpt = configured if configured.is_absolute() else scratch / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    run = launch.dry_run(params, out_dir=scratch / "verl", params_path=params_path,
                         dataset_dir=root / params.build_dataset.out_dir, checkpoint_dir=ckpt)
    local = [a.split("=", 1)[1] for a in run.overrides if "=" in a and a.split("=", 1)[1].startswith("/")]
    # What the run reads must exist now; what it writes (under the checkpoint folder) later.
    result: dict[str, Any] = {"command": list(run.command), "checked": list(run.checked),
                              "paths": {p: Path(p).exists() for p in local if not Path(p).is_relative_to(ckpt)},
                              "outputs": [p for p in local if Path(p).is_relative_to(ckpt)],
                              "warnings": [] if configured.is_absolute() else [
                                  f"train_router.checkpoint_dir is relative: checkpoints, ledger and cost bounds are "
                                  f"in {ckpt} on this node only; set an absolute path on shared storage for a "
                                  "multi-node run"]}
    if not dry:
        result["returncode"] = subprocess.run(list(run.command), cwd=Path.cwd()).returncode
    return result, list(run.files)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {JOB_MODULE}", description="A RouterOps job on a Ray cluster.")
    ap.add_argument("mode", choices=["rollout", "verl"])
    ap.add_argument("--remote", required=True, help="the DVC remote, s3://bucket/prefix")
    ap.add_argument("--input", action="append", default=[], help="PATH=MD5 of a DVC-tracked input (repeatable)")
    ap.add_argument("--job-id", required=True)
    ap.add_argument("--questions", type=int, default=8, help="rollout: training questions in the batch")
    ap.add_argument("--dry-run", action="store_true", help="verl: stop before starting verl")
    ap.add_argument("--scratch", type=Path, default=None, help="job folder (default: ./.routerops/jobs/<id>)")
    args = ap.parse_args(argv)
    try:
        if args.questions < 1:
            raise JobError("--questions must be >= 1")
        if not _JOB_ID.fullmatch(args.job_id):
            raise JobError(f"--job-id {args.job_id!r}: letters, digits, '.', '_' and '-' only (it names a folder "
                           "and an S3 prefix)")
        inputs = [JobInput.parse(t) for t in args.input]
        store = open_store(args.remote)
        scratch = (args.scratch or Path.cwd() / ".routerops" / "jobs" / args.job_id).resolve()
        root = scratch / "inputs"
        staged = {i.path: materialise(store, i, root) for i in inputs}
        print(f"staged {sum(staged.values())} files from {args.remote}: {staged}", flush=True)
        if args.mode == "rollout":
            result, files = rollout_piece(root, scratch, args.questions), [scratch / "cost_bounds.json"]
        else:
            result, files = _verl_piece(root, scratch, args.dry_run)
        import routerops

        result.update({"job_id": args.job_id, "mode": args.mode, "host": socket.gethostname(), "cwd": os.getcwd(),
                       "code": str(Path(routerops.__file__).resolve().parent),
                       "scratch": str(scratch), "inputs": [i.arg() for i in inputs], "staged_files": staged})
        for f in files:
            store.put(store.job_key(args.job_id, f.name), f.read_bytes())
        url = store.put(store.job_key(args.job_id, RESULT_FILE), json.dumps(result, indent=2, sort_keys=True).encode())
        print(f"result: {url}", flush=True)
        return 0 if result.get("returncode", 0) == 0 else 1
    except (JobError, ObjectMissing, RemoteUnavailable) as exc:
        print(f"{JOB_MODULE}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
