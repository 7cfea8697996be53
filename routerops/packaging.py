"""A router package: everything a service needs to run the same episode the evaluation ran.

The package is a directory (stored as a BentoML model by `stages/package_router.py`; this module
knows nothing of BentoML):

    router/                   the policy: HuggingFace weights and tokenizer
    params.yaml               the project's params, byte for byte (limits, prompt, candidates, decoding)
    pool.yaml                 the pool the router was trained and priced with
    prompt_template.txt       the profile's prompt template, when it has one
    replay/pool/...           the replay pool's quality matrix (replay candidates only)
    replay/questions.json     the evaluation's test and kNN-fit questions with their gold answers:
                              the answers wrong replay replies state (in the evaluation's order), and
                              what the replay pool knows of a question a client asks
    routerops-package.json    the `PackageRecord`

Its version is the content hash of its lineage record (`routerops.lineage.version_id`: these files,
the service code that runs them, and the data, evaluation and environment that made them), so the
same inputs always make the same version and any changed input (a price, a weight, a line of
code) makes a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from routerops.candidates.types import QuestionInfo
from routerops.config import Params, load_params
from routerops.pool import Pool, load_pool

__all__ = ["BENTO_ARCHIVE", "MATRIX_FILES", "MODEL_ARCHIVE", "PACKAGE_RECORD", "RECORD_FILE", "LoadedPackage",
           "PackageError", "PackageRecord", "bentoml_home", "file_hashes", "load_package", "package_files",
           "runtime_env_names"]

PACKAGE_RECORD = "routerops-package.json"
# What `package_router` writes to its output directory: the record and the two BentoML archives.
RECORD_FILE = "package.json"
MODEL_ARCHIVE = "router.bentomodel"
BENTO_ARCHIVE = "service.bento"
ROUTER_DIR = "router"
PARAMS_FILE = "params.yaml"
POOL_FILE = "pool.yaml"
TEMPLATE_FILE = "prompt_template.txt"
REPLAY_DIR = "replay"
QUESTIONS_FILE = f"{REPLAY_DIR}/questions.json"
# The quality matrix files `QualityMatrix.load` reads (about 8 MB in all).
MATRIX_FILES = ("llmrouter_queries_train.jsonl", "llmrouter_queries_test.jsonl", "llmrouter_quality_train.json",
                "llmrouter_quality_test.json")


def runtime_env_names(params: Params, pool: Pool) -> tuple[str, ...]:
    """The env vars a service of this profile must be given: each candidate's endpoint (base URL,
    API key) when candidates are called over HTTP, the router server's when the policy is one.
    None for the local profile (replay pool, in-process policy). Names only, never values."""
    names: list[str] = []
    if params.candidates.backend == "openai":
        for c in pool.candidates:
            names += [c.endpoint.base_url_env, c.endpoint.api_key_env]
    ep = params.evaluate_router
    if ep.policy[params.profile] == "completions":
        names += [ep.policy_base_url_env, ep.policy_api_key_env]
    return tuple(dict.fromkeys(names))


class PackageError(ValueError):
    """A package directory is incomplete or inconsistent; the message names the file."""


class PackageRecord(BaseModel):
    """What a packaged router version is, written once at packaging time (labels are strings,
    as BentoML model labels must be)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int
    version: str
    model_tag: str
    bento_tag: str
    labels: dict[str, str]
    evaluation: dict[str, float | bool | None]
    files: dict[str, str]  # package file -> sha256
    code: dict[str, str]  # service code file -> sha256


def bentoml_home(params: Params, root: Path) -> Path:
    """BentoML's home for this project (params `package_router.bentoml_home`, relative to `root`)."""
    home = Path(params.package_router.bentoml_home)
    return home if home.is_absolute() else root / home


def file_hashes(files: Mapping[str, bytes]) -> dict[str, str]:
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in sorted(files.items())}


def package_files(*, params_file: Path, params: Params, pool_file: Path, router_dir: Path, template: Path | None,
                  matrix_dir: Path | None, questions: Sequence[QuestionInfo]) -> dict[str, bytes]:
    """The package's files (relative path -> bytes), the record aside."""
    if not (router_dir / "config.json").is_file():
        raise PackageError(f"{router_dir}: no trained router (config.json missing); run train_router first")
    files: dict[str, bytes] = {}
    for p in sorted(router_dir.rglob("*")):
        if p.is_file() and p.name != "_COMPLETE":
            files[f"{ROUTER_DIR}/{p.relative_to(router_dir).as_posix()}"] = p.read_bytes()
    files[PARAMS_FILE] = params_file.read_bytes()
    files[POOL_FILE] = pool_file.read_bytes()
    if template is not None:
        files[TEMPLATE_FILE] = template.read_bytes()
    if params.candidates.backend == "replay":
        if matrix_dir is None:
            raise PackageError("candidates.backend is replay: the package needs the quality matrix")
        for name in MATRIX_FILES:
            files[f"{REPLAY_DIR}/pool/{name}"] = (matrix_dir / name).read_bytes()
        files[QUESTIONS_FILE] = (json.dumps([[q.id, q.text, q.data_source, list(q.golden_answers)]
                                             for q in questions]) + "\n").encode()
    return files


@dataclass(frozen=True)
class LoadedPackage:
    """A package directory read back, ready for `routerops.serving.Router`."""

    root: Path
    record: PackageRecord
    params: Params  # as packaged, with the prompt template pointing into the package
    pool: Pool
    questions: tuple[QuestionInfo, ...]  # known to the replay pool (empty for HTTP candidates)

    @property
    def router_dir(self) -> Path:
        return self.root / ROUTER_DIR

    @property
    def replay_data_dir(self) -> Path:
        """The snapshot-shaped folder the replay pool reads its matrix from (`<dir>/pool`)."""
        return self.root / REPLAY_DIR


def load_package(root: Path, *, verify: bool = True) -> LoadedPackage:
    """Read a package directory; with `verify`, every file must match the record's hash."""
    record_path = root / PACKAGE_RECORD
    try:
        record = PackageRecord.model_validate_json(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{record_path}: missing; not a router package") from None
    except ValidationError as exc:
        raise PackageError(f"{record_path}: not a package record ({exc.error_count()} errors; first: "
                           f"{exc.errors()[0]['msg']})") from None
    if verify:
        for rel, digest in record.files.items():
            path = root / rel
            if not path.is_file():
                raise PackageError(f"{path}: listed in {PACKAGE_RECORD} but missing")
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise PackageError(f"{path}: content does not match {PACKAGE_RECORD} (sha256 {digest[:12]}...)")
    params = load_params(root / PARAMS_FILE)
    template = root / TEMPLATE_FILE
    params = params.model_copy(update={"prompt": params.prompt.model_copy(update={"template": {
        **params.prompt.template, params.profile: str(template) if template.is_file() else None}})})
    questions: tuple[QuestionInfo, ...] = ()
    if (root / QUESTIONS_FILE).is_file():
        rows: list[Any] = json.loads((root / QUESTIONS_FILE).read_text(encoding="utf-8"))
        questions = tuple(QuestionInfo(str(i), str(text), str(src), tuple(golds)) for i, text, src, golds in rows)
    return LoadedPackage(root, record, params, load_pool(root / POOL_FILE), questions)
