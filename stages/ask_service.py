"""Stage: serve the packaged Bento on loopback and ask it real questions with the official client.

`python -m stages.ask_service` (the demo's last step; not a DVC stage: it measures a running
service, it builds nothing). It imports the Bento from `package_router`'s archives when BentoML's
store lacks it, serves it with `bentoml serve` from a scratch directory (the Bento carries its own
code), creates a temporary API key, asks `demo.service_questions` real NQ questions with the
`openai` client, prints each answer, its calls and its dollars, and stops the service. Outputs
under `runs/ask_service/`: the replies (JSONL) and `summary.md`.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.candidates.replay import QualityMatrix
from routerops.config import Params, load_params
from routerops.io import write_text_atomic
from routerops.keys import KeyStore
from routerops.packaging import PackageRecord, bentoml_home
from routerops.paths import default_params_file, project_root, runs_dir
from routerops.rewards import exact_match
from routerops.service_process import ServiceProcess, import_package
from routerops.serving import KEYS_DB_ENV

__all__ = ["Inputs", "Outputs", "main", "run", "write"]


@dataclass(frozen=True)
class Inputs:
    package_dir: Path  # package_router's output: record and archives
    bentoml_home: Path
    matrix_dir: Path  # the real NQ questions asked come from the replay matrix

    @classmethod
    def of_project(cls, root: Path, params: Params) -> Inputs:
        return cls(root / params.package_router.out_dir, bentoml_home(params, root),
                   root / params.build_dataset.raw_dir / "pool")


@dataclass(frozen=True)
class Outputs:
    replies: tuple[Mapping[str, Any], ...]
    summary: str


def _summary(record: PackageRecord, replies: tuple[Mapping[str, Any], ...]) -> str:
    lines = [f"# The packaged router over HTTP (`{record.bento_tag}`)", "",
             "Asked with the official `openai` client; every reply carries its bill.", ""]
    for r in replies:
        bill = r["routerops"]
        lines += [f"**Q:** {r['question']}  ", f"**A:** {r['answer']!r} (gold: {' | '.join(r['gold'])}; "
                  f"EM {r['em']:.0f})  ",
                  f"{bill['turns']} turns, ${bill['total_usd']:.8f} ({bill['total_usd'] * 1e6:.1f} micro-USD), "
                  f"router tokens {r['usage']['prompt_tokens']} in / {r['usage']['completion_tokens']} out", "",
                  "| turn | model | sub-question | completion tokens | USD | outcome |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['turn']} | {c['model']} | {c['query']} | {c['completion_tokens']} | {c['usd']:.8f} | "
                  f"{c['outcome']} |" for c in bill["calls"]]
        lines.append("")
    return "\n".join(lines)


def run(params: Params, inputs: Inputs) -> Outputs:
    from openai import OpenAI

    record, _ = import_package(inputs.package_dir, inputs.bentoml_home)
    matrix = QualityMatrix.load(inputs.matrix_dir)
    nq = sorted((q for q in matrix.questions.values() if q.data_source == "nq"), key=lambda q: q.id)
    questions = random.Random(params.demo.seed).sample(nq, params.demo.service_questions)
    replies = []
    with tempfile.TemporaryDirectory(prefix="routerops-ask-") as scratch:
        keys_db = Path(scratch) / "keys.sqlite"
        key = KeyStore(keys_db).create("demo")
        with ServiceProcess(record.bento_tag, inputs.bentoml_home, cwd=Path(scratch),
                            env={KEYS_DB_ENV: str(keys_db)}) as svc:
            client = OpenAI(base_url=f"{svc.base_url}/v1", api_key=key.secret, max_retries=2, timeout=120)
            for q in questions:
                resp = client.chat.completions.create(model=record.model_tag,
                                                      messages=[{"role": "user", "content": q.text}])
                answer = resp.choices[0].message.content or ""
                extra = resp.model_extra or {}
                replies.append({"question": q.text, "gold": list(q.golden_answers), "answer": answer,
                                "em": exact_match(answer, q.golden_answers), "routerops": extra["routerops"],
                                "usage": resp.usage.model_dump() if resp.usage else {}})
    return Outputs(tuple(replies), _summary(record, tuple(replies)))


def write(out: Outputs, out_dir: Path) -> None:
    write_text_atomic(out_dir / "replies.jsonl", "".join(json.dumps(r) + "\n" for r in out.replies))
    write_text_atomic(out_dir / "summary.md", out.summary)


def main() -> None:
    root = project_root()
    params = load_params(default_params_file(root))
    out = run(params, Inputs.of_project(root, params))
    write(out, runs_dir(root) / "ask_service")
    sys.stdout.write(out.summary)


if __name__ == "__main__":
    main()
