from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerops.candidates.types import CallOrigin
from routerops.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
Q = "Qwen2.5-7B-Instruct"
GOOD = (f"<think>t</think><search>{Q}: q</search>\n\n<information>It is Paris.</information>\n\n"
        "<think>t</think><answer>Paris</answer>")


def test_pool_validate_ok() -> None:
    res = runner.invoke(app, ["pool", "validate", str(ROOT / "pool.yaml")])
    assert res.exit_code == 0, res.output
    assert "OK  snapshot" in res.output and "Mixtral-8x22B-Instruct" in res.output


def test_pool_validate_names_model_and_field(tmp_path) -> None:
    bad = tmp_path / "pool.yaml"
    bad.write_text((ROOT / "pool.yaml").read_text().replace("output_usd_per_mtok: 1.20", "output_usd_per_mtok: -1"))
    res = runner.invoke(app, ["pool", "validate", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}: model 'Mixtral-8x22B-Instruct': field 'price.output_usd_per_mtok'" in res.output


def write(tmp_path: Path, lines: list[str | bytes]) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return p


def test_score_prints_one_breakdown_per_line(tmp_path) -> None:
    lines = [
        json.dumps({"response": GOOD, "golden_answers": ["Paris"], "calls": [{"model": Q, "completion_tokens": 100}]}),
        json.dumps({"response": GOOD, "golden_answers": ["Paris"], "alpha": 0.9,
                    "calls": [{"model": "mixtral-8x22b", "prompt_tokens": 5, "completion_tokens": 1000}]}),
        json.dumps({"response": "<answer>Paris</answer>", "golden_answers": ["Paris"]}),
        "",
    ]
    res = runner.invoke(app, ["score", str(write(tmp_path, lines))])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 3
    assert set(rows[0]) == {"format", "em", "f1", "cost_usd", "cost_norm", "reward", "answer", "violations", "alpha"}
    assert rows[0]["cost_usd"] == pytest.approx(100 * 0.3e-6) and rows[0]["reward"] == 1.0
    assert rows[1]["alpha"] == 0.9 and rows[1]["cost_usd"] == pytest.approx(1000 * 1.2e-6)
    assert rows[1]["reward"] == pytest.approx(0.1)  # dearest in the batch: cost_norm 0
    assert rows[2]["format"] == -1.0 and rows[2]["reward"] == -1.0 and rows[2]["em"] == 1.0


SCORE_ERRORS = [
    ("not-json", "{oops", "in.jsonl:1: invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("not-utf8", b'{"response": "\xff"}', "in.jsonl:1: not valid UTF-8"),
    ("missing-response", '{"golden_answers": ["a"]}', "in.jsonl:1: response: Field required"),
    ("response-not-string", '{"response": 3, "golden_answers": ["a"]}', "in.jsonl:1: response: Input should be a valid string"),
    ("no-golds", '{"response": "x", "golden_answers": []}', "in.jsonl:1: golden_answers: List should have at least 1 item"),
    ("blank-gold", '{"response": "x", "golden_answers": [" "]}', "in.jsonl:1: golden_answers: Value error, gold answers must be non-blank"),
    ("alpha-too-big", '{"response": "x", "golden_answers": ["a"], "alpha": 2}', "in.jsonl:1: alpha: Input should be less than or equal to 1"),
    ("unknown-key", '{"response": "x", "golden_answers": ["a"], "cost": 1}', "in.jsonl:1: cost: Extra inputs are not permitted"),
    ("negative-tokens", '{"response": "x", "golden_answers": ["a"], "calls": [{"model": "qwen2.5-7b", "completion_tokens": -1}]}',
     "in.jsonl:1: calls.0.completion_tokens: Input should be greater than or equal to 0"),
    ("unknown-model", '{"response": "x", "golden_answers": ["a"], "calls": [{"model": "qwen-72b", "completion_tokens": 1}]}',
     "in.jsonl:1: calls: model 'qwen-72b' is not in the pool"),
    ("array-line", '[1, 2]', "in.jsonl:1: <line>: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("case", "line", "message"), SCORE_ERRORS, ids=[c[0] for c in SCORE_ERRORS])
def test_score_rejects_malformed_lines(tmp_path, case, line, message) -> None:
    path = write(tmp_path, [line])
    res = runner.invoke(app, ["score", str(path)])
    assert res.exit_code == 1
    assert f"error: {tmp_path}/{message}" in res.stderr


def test_score_reports_the_failing_line_number(tmp_path) -> None:
    good = json.dumps({"response": GOOD, "golden_answers": ["Paris"]})
    res = runner.invoke(app, ["score", str(write(tmp_path, [good, good, "nope"]))])
    assert res.exit_code == 1 and "in.jsonl:3: invalid JSON" in res.stderr and res.stdout == ""


def test_score_frozen_bounds_and_bad_options(tmp_path) -> None:
    path = write(tmp_path, [json.dumps({"response": GOOD, "golden_answers": ["Paris"], "alpha": 1.0,
                                        "calls": [{"model": Q, "completion_tokens": 100}]})])
    res = runner.invoke(app, ["score", str(path), "--cost-bounds", "0,1"])
    assert res.exit_code == 0 and json.loads(res.stdout)["cost_norm"] == pytest.approx(1 - (100 * 0.3e-6) ** 0.5)
    assert runner.invoke(app, ["score", str(path), "--cost-bounds", "x"]).exit_code == 2
    assert runner.invoke(app, ["score", str(path), "--outcome", "bleu"]).exit_code == 2
    assert runner.invoke(app, ["score", str(tmp_path / "missing.jsonl")]).exit_code == 1


def test_ask_replay_prints_trace_calls_and_dollars() -> None:
    res = runner.invoke(app, ["ask", "who wrote i will follow you into the dark", "--route-to", Q])
    assert res.exit_code == 0, res.output
    assert "gold: Ben Gibbard" in res.stdout
    assert f"<search>{Q}: who wrote i will follow you into the dark?</search>" in res.stdout
    # Qwen's recorded success on this matrix question is one calibration thins (deterministically):
    # the trace says the outcome is a draw over a record, not the record
    assert "[replay:calibrated]" in res.stdout and "micro-USD" in res.stdout


def test_ask_json_and_errors() -> None:
    res = runner.invoke(app, ["ask", "capital of france", "--gold", "Paris", "--source", "popqa", "--json",
                              "--route-to", "LLaMA-3.1-70B-Instruct"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["calls"][0]["origin"] == "replay:prior" and out["golden_answers"] == ["Paris"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--route-to", "qwen"], 2, "error: --route-to 'qwen' is not in the pool (Qwen2.5-7B-Instruct, "
                                "LLaMA-3.1-8B-Instruct, LLaMA-3.1-70B-Instruct, Mistral-7B-Instruct, "
                                "Mixtral-8x22B-Instruct, Gemma-2-27B-Instruct)"),
    (["--candidates", "carrier-pigeon"], 2, "error: --candidates must be replay or openai, got 'carrier-pigeon'"),
    (["--policy", "/nonexistent"], 1, "error: /nonexistent: not a HuggingFace model directory (no config.json)"),
    (["--params", "/nonexistent.yaml"], 1, "error: /nonexistent.yaml: file not found"),
])
def test_ask_rejects_bad_input(args, code, message) -> None:
    res = runner.invoke(app, ["ask", "q", *args])
    assert (res.exit_code, res.stderr.strip()) == (code, message)


def test_ask_openai_without_endpoint_reports_not_configured(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("ROUTEROPS_CANDIDATE_BASE_URL", raising=False)
    monkeypatch.delenv("ROUTEROPS_CANDIDATE_API_KEY", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace(
        "cache_path: .routerops/cache/responses.sqlite", f"cache_path: {tmp_path / 'cache.sqlite'}"))
    res = runner.invoke(app, ["ask", "capital of france", "--candidates", "openai", "--route-to", Q, "--json",
                              "--params", str(params)])
    assert res.exit_code == 0, res.output
    call = json.loads(res.stdout)["calls"][0]
    assert (call["ok"], call["origin"], call["failure"], call["attempts"]) == (False, "failed", "not_configured", 0)
    assert call["failure_detail"] == ("env var(s) ROUTEROPS_CANDIDATE_BASE_URL, ROUTEROPS_CANDIDATE_API_KEY not set "
                                      "for model 'Qwen2.5-7B-Instruct'")


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "routerops"
    proc = subprocess.run([str(exe), "pool", "validate"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "OK  snapshot" in proc.stdout


def _trajectories(tmp_path: Path, extra_calls: tuple = ()) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routerops.evaluation import Call, EvalRecord

    mix = "Mixtral-8x22B-Instruct"
    recs = [EvalRecord("router", "a", "nq", "q?", ("Paris",), "Paris", True, (Call(mix, CallOrigin.HTTP, 100), *extra_calls)),
            EvalRecord("router", "b", "nq", "q?", ("Rome",), "Lyon", True, (Call(Q, CallOrigin.HTTP, 200),)),
            EvalRecord(f"single:{Q}", "a", "nq", "q?", ("Paris",), "Paris", True, (Call(Q, CallOrigin.HTTP, 50),))]
    path = tmp_path / "trajectories.parquet"
    pq.write_table(pa.Table.from_pylist([r.as_row() for r in recs]), path)
    return path


def test_eval_reprice_prints_old_against_new_and_draws_the_plot(tmp_path) -> None:
    new_pool = tmp_path / "pool.yaml"
    new_pool.write_text((ROOT / "pool.yaml").read_text().replace(
        "Mixtral-8x22B-Instruct: {input_usd_per_mtok: 1.20, output_usd_per_mtok: 1.20}",
        "Mixtral-8x22B-Instruct: {input_usd_per_mtok: 12.0, output_usd_per_mtok: 12.0}"))
    plot = tmp_path / "out" / "pareto.png"
    res = runner.invoke(app, ["eval", "reprice", "--pool", str(new_pool), "--trajectories",
                              str(_trajectories(tmp_path)), "--old-pool", str(ROOT / "pool.yaml"),
                              "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    assert "repriced 3 records from trajectories.parquet" in res.output and "(0 candidate calls)" in res.output
    # router: (100 x 1.20 + 200 x 0.30) / 2 = 90 micro-USD before; (100 x 12 + 200 x 0.30) / 2 = 630 after
    router = next(line for line in res.output.splitlines() if line.startswith("router "))
    assert router.split()[1:] == ["0.500", "0.500", "90.0", "630.0", "+600.0%"]
    single = next(line for line in res.output.splitlines() if line.startswith(f"single:{Q}"))
    assert single.split()[1:] == ["1.000", "1.000", "15.0", "15.0", "+0.0%"]
    assert plot.read_bytes()[:4] == b"\x89PNG" and f"Pareto plot under the new prices: {plot}" in res.output


@pytest.mark.parametrize(("case", "error"), [
    ("no trajectories", "no evaluation trajectories; run `dvc repro evaluate_router` first"),
    ("unpriced model", "no price for model(s) Mystery-1B that the evaluation called"),
    ("bad pool", "field 'price.output_usd_per_mtok'"),
])
def test_eval_reprice_rejects_bad_input(tmp_path, case, error) -> None:
    from routerops.evaluation import Call

    pool = ROOT / "pool.yaml"
    traj = _trajectories(tmp_path, (Call("Mystery-1B", CallOrigin.HTTP, 5),) if case == "unpriced model" else ())
    if case == "no trajectories":
        traj = tmp_path / "missing.parquet"
    if case == "bad pool":
        pool = tmp_path / "bad.yaml"
        pool.write_text((ROOT / "pool.yaml").read_text().replace("output_usd_per_mtok: 1.20", "output_usd_per_mtok: -1"))
    res = runner.invoke(app, ["eval", "reprice", "--pool", str(pool), "--trajectories", str(traj),
                              "--old-pool", str(ROOT / "pool.yaml")])
    assert res.exit_code == 1
    assert error in res.output
