"""Price lists in LiteLLM's, OpenRouter's and our own format into pool.yaml's pricing block:
conversions, provenance, the rest of the file kept, and every bad input refused with nothing written."""

from __future__ import annotations

import copy
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from routerops.pool import load_pool, parse_pool
from routerops.prices import PriceSourceError, apply_to_pool_text, parse_prices, price_changes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "prices"
WHEN = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@pytest.fixture
def pool_file(repo_root: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "pool.yaml"
    shutil.copy(repo_root / "pool.yaml", dest)
    return dest


def _doc(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_litellm_prices_per_token_become_usd_per_million_and_match_the_default_pool(pool_file) -> None:
    pool = load_pool(pool_file)
    pulled = parse_prices((FIXTURES / "litellm.json").read_bytes(), "litellm", pool, "litellm.json", WHEN)
    assert pulled.prices == pool.prices()  # the fixture holds Router-R1's Together prices
    assert price_changes(pool, pulled) == []
    assert len(pulled.sha256) == 64 and pulled.retrieved_at == WHEN


def test_openrouter_decimal_strings_convert_exactly(pool_file) -> None:
    pool = load_pool(pool_file)
    pulled = parse_prices((FIXTURES / "openrouter.json").read_bytes(), "openrouter", pool, "models.json", WHEN)
    mixtral = pulled.prices["Mixtral-8x22B-Instruct"]
    assert (mixtral.input_usd_per_mtok, mixtral.output_usd_per_mtok) == (0.9, 0.9)
    mistral = pulled.prices["Mistral-7B-Instruct"]
    assert (mistral.input_usd_per_mtok, mistral.output_usd_per_mtok) == (0.028, 0.054)
    assert len(price_changes(pool, pulled)) == 12  # every side of every model moved


def test_our_own_pool_format(pool_file, tmp_path) -> None:
    pool = load_pool(pool_file)
    doc = yaml.safe_load(pool_file.read_text())
    doc["pricing"]["prices"]["Mixtral-8x22B-Instruct"]["output_usd_per_mtok"] = 2.4
    pulled = parse_prices(yaml.safe_dump(doc).encode(), "pool", pool, "new-pool.yaml", WHEN)
    changes = price_changes(pool, pulled)
    assert [(c.model, c.side, c.old, c.new) for c in changes] == [("Mixtral-8x22B-Instruct", "output", 1.2, 2.4)]


def _litellm(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    doc = copy.deepcopy(_doc("litellm.json"))
    mutate(doc)
    return json.dumps(doc).encode()


def _openrouter(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    doc = copy.deepcopy(_doc("openrouter.json"))
    mutate({r["id"]: r for r in doc["data"]})
    return json.dumps(doc).encode()


MIX_LITELLM = "together_ai/mistralai/Mixtral-8x22B-Instruct-v0.1"
MIX = r"src: model 'Mixtral-8x22B-Instruct' \("

BAD = [
    ("litellm", _litellm(lambda d: d.pop(MIX_LITELLM)),
     f"^{MIX}litellm id '{MIX_LITELLM}'\\): not in the source$"),
    ("litellm", _litellm(lambda d: d[MIX_LITELLM].update(output_cost_per_token="1.2e-06")),
     f"^{MIX}litellm id '{MIX_LITELLM}'\\): field 'output_cost_per_token': not a number \\('1.2e-06'\\)$"),
    ("litellm", _litellm(lambda d: d[MIX_LITELLM].update(input_cost_per_token=-1e-06)),
     r"field 'input_cost_per_token': negative \(-1e-06\)$"),
    ("litellm", _litellm(lambda d: d[MIX_LITELLM].update(output_cost_per_token=True)),
     r"field 'output_cost_per_token': not a number \(True\)$"),
    ("litellm", _litellm(lambda d: d[MIX_LITELLM].pop("output_cost_per_token")),
     r"field 'output_cost_per_token': missing$"),
    ("litellm", _litellm(lambda d: d[MIX_LITELLM].update(input_cost_per_token=None)),
     r"field 'input_cost_per_token': not a number \(None\)$"),
    ("openrouter", _openrouter(lambda d: d["mistralai/mixtral-8x22b-instruct"]["pricing"].update(completion="free")),
     f"^{MIX}openrouter id 'mistralai/mixtral-8x22b-instruct'\\): field 'completion': not a number \\('free'\\)$"),
    ("openrouter", _openrouter(lambda d: d["mistralai/mixtral-8x22b-instruct"]["pricing"].update(prompt="-1")),
     r"field 'prompt': negative \('-1'\)$"),
    ("openrouter", _openrouter(lambda d: d["mistralai/mixtral-8x22b-instruct"]["pricing"].update(prompt="NaN")),
     r"field 'prompt': not a finite number \('NaN'\)$"),
    ("openrouter", _openrouter(lambda d: d["mistralai/mixtral-8x22b-instruct"].pop("pricing")),
     r"field 'pricing': missing$"),
    ("openrouter", b'{"models": []}', r'^src: an OpenRouter model list is \{"data": \[\.\.\.\]\}$'),
    ("litellm", b"[1, 2]", r"^src: a LiteLLM price file is a JSON object of model -> prices$"),
    ("litellm", b"{not json", r"^src: not valid JSON \("),
    ("pool", b"pricing: {}", r"^src: a pool price list has a pricing.prices mapping$"),
    ("csv", b"{}", r"^src: unknown format 'csv' \(one of litellm, openrouter, pool\)$"),
]


@pytest.mark.parametrize(("fmt", "data", "error"), BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_bad_price_lists_are_refused_naming_the_model_and_field(pool_file, fmt, data, error) -> None:
    with pytest.raises(PriceSourceError, match=error):
        parse_prices(data, fmt, load_pool(pool_file), "src", WHEN)


def test_a_candidate_without_a_source_id_is_named(pool_file) -> None:
    doc = yaml.safe_load(pool_file.read_text())
    del doc["price_sources"]["openrouter"]["Gemma-2-27B-Instruct"]
    pool = parse_pool(doc, str(pool_file))
    with pytest.raises(PriceSourceError, match=r"^src: model 'Gemma-2-27B-Instruct': pool.yaml has no "
                                               r"price_sources.openrouter id for it$"):
        parse_prices((FIXTURES / "openrouter.json").read_bytes(), "openrouter", pool, "src", WHEN)


def test_the_new_pricing_block_replaces_the_old_and_keeps_everything_else(pool_file) -> None:
    pool = load_pool(pool_file)
    text = pool_file.read_text()
    pulled = parse_prices((FIXTURES / "openrouter.json").read_bytes(), "openrouter", pool, "models.json", WHEN)
    new = apply_to_pool_text(text, pool, pulled, label="openrouter-2026-12-01", effective=date(2026, 12, 1))
    new_pool = parse_pool(yaml.safe_load(new), "pool.yaml")
    assert new_pool.prices() == pulled.prices
    assert (new_pool.pricing.label, new_pool.pricing.effective_date) == ("openrouter-2026-12-01", date(2026, 12, 1))
    assert new_pool.pricing.retrieved_at == WHEN and new_pool.pricing.source_sha256 == pulled.sha256
    assert new_pool.pricing.source == "openrouter: models.json"
    assert new_pool.price_sources == pool.price_sources
    assert [c.model_dump(exclude={"price"}) for c in new_pool] == [c.model_dump(exclude={"price"}) for c in pool]
    # outside the block, the file is byte for byte what it was (comments included)
    before, after = text.split("\npricing:", 1)[0], new.split("\npricing:", 1)[0]
    assert before == after
    assert text[text.index("# Defaults shared"):] == new[new.index("# Defaults shared"):]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "routerops.cli", "prices", "pull", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_only_when_a_price_changed_and_nothing_on_error(pool_file, tmp_path) -> None:
    original = pool_file.read_bytes()
    same = _cli("--source", str(FIXTURES / "litellm.json"), "--format", "litellm", "--pool", str(pool_file),
                cwd=tmp_path)
    assert same.returncode == 0 and same.stdout.startswith("prices unchanged (6 models, litellm: ")
    assert pool_file.read_bytes() == original
    bad = tmp_path / "bad.json"
    bad.write_text(_openrouter(lambda d: d["google/gemma-2-27b-it"]["pricing"].update(prompt="-0.1")).decode())
    refused = _cli("--source", str(bad), "--format", "openrouter", "--pool", str(pool_file), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"error: {bad}: model 'Gemma-2-27B-Instruct' (openrouter id "
                                      "'google/gemma-2-27b-it'): field 'prompt': negative ('-0.1')")
    missing = _cli("--source", str(tmp_path / "nope.json"), "--format", "openrouter", "--pool", str(pool_file),
                   cwd=tmp_path)
    assert missing.returncode == 1 and "nope.json: cannot be read: No such file or directory" in missing.stderr
    assert pool_file.read_bytes() == original
    dry = _cli("--source", str(FIXTURES / "openrouter.json"), "--format", "openrouter", "--pool", str(pool_file),
               "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "dry run: 12 price(s) would change" in dry.stdout
    assert pool_file.read_bytes() == original
    wrote = _cli("--source", str(FIXTURES / "openrouter.json"), "--format", "openrouter", "--pool", str(pool_file),
                 "--effective-date", "2026-12-01", cwd=tmp_path)
    assert wrote.returncode == 0, wrote.stderr
    assert "  Mixtral-8x22B-Instruct     output    1.2000 ->    0.9000 USD/1M tokens" in wrote.stdout
    assert load_pool(pool_file).pricing.label == "openrouter-2026-12-01"


@pytest.fixture
def served() -> Iterator[str]:
    """The OpenRouter fixture served over loopback HTTP, as `GET /api/v1/models`."""
    body = (FIXTURES / "openrouter.json").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 200 if self.path == "/api/v1/models" else 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if code == 200 else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_source_and_a_dead_one(pool_file, served, tmp_path) -> None:
    ok = _cli("--source", f"{served}/api/v1/models", "--format", "openrouter", "--pool", str(pool_file),
              "--dry-run", cwd=tmp_path)
    assert ok.returncode == 0 and "12 price(s) would change" in ok.stdout
    gone = _cli("--source", f"{served}/api/v2/models", "--format", "openrouter", "--pool", str(pool_file),
                cwd=tmp_path)
    assert gone.returncode == 1 and gone.stderr.strip() == f"error: {served}/api/v2/models: HTTP 404"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    dead = _cli("--source", f"http://127.0.0.1:{port}/api/v1/models", "--format", "openrouter", "--pool",
                str(pool_file), cwd=tmp_path)
    assert dead.returncode == 1 and f"127.0.0.1:{port}/api/v1/models: cannot be read: " in dead.stderr
