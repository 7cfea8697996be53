"""The API key store: hashed secrets, revocation, budgets, and charges that survive concurrency and restarts."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from routerops import keys
from routerops.keys import CreatedKey, KeyNotFound, KeyRecord, KeyStore

KEY_RE = re.compile(r"rk-[0-9a-f]{8}-[A-Za-z0-9_-]{43}")


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state" / "keys.sqlite")


def _record(budget_usd: float | None, spent_usd: float) -> KeyRecord:
    return KeyRecord(key_id="0123abcd", name="n", created_at=0.0, revoked_at=None, budget_usd=budget_usd,
                     spent_usd=spent_usd, requests=0)


# ----- creation and authentication -------------------------------------------------------------


def test_create_returns_a_well_formed_key_that_authenticates(store: KeyStore) -> None:
    created = store.create("alice", budget_usd=2.5)
    assert KEY_RE.fullmatch(created.secret)
    assert created.secret.split("-", 2)[1] == created.record.key_id
    rec = created.record
    assert (rec.name, rec.revoked_at, rec.budget_usd, rec.spent_usd, rec.requests) == ("alice", None, 2.5, 0.0, 0)
    assert store.authenticate(created.secret) == rec
    assert store.get(rec.key_id) == rec


def test_the_schema_and_the_file_are_created_with_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "keys.sqlite"
    KeyStore(path)
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(api_keys)")]
    conn.close()
    assert columns == ["seq", "key_id", "key_hash", "name", "created_at", "revoked_at", "budget_usd", "spent_usd",
                       "requests"]
    KeyStore(path)  # opening an existing store keeps it


def test_a_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    KeyStore(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with pytest.raises(RuntimeError, match=r"schema version 2; this code knows versions up to 1"):
        KeyStore(path)


def test_names_are_stripped_and_key_ids_are_unique(store: KeyStore) -> None:
    created = [store.create(f"  key {i}\t") for i in range(40)]
    assert [c.record.name for c in created] == [f"key {i}" for i in range(40)]
    assert len({c.record.key_id for c in created}) == 40
    assert len({c.secret for c in created}) == 40


def test_a_taken_key_id_is_drawn_again(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["deadbeef", "deadbeef", "cafef00d"])
    monkeypatch.setattr(keys, "_new_key_id", lambda: next(ids))
    first, second = store.create("first"), store.create("second")
    assert (first.record.key_id, second.record.key_id) == ("deadbeef", "cafef00d")
    assert second.secret.startswith("rk-cafef00d-")
    assert store.authenticate(second.secret) == second.record


def test_create_gives_up_when_every_id_is_taken(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_new_key_id", lambda: "deadbeef")
    store.create("first")
    with pytest.raises(RuntimeError, match=r"^could not find a free key id in 8 attempts$"):
        store.create("second")
    assert [r.name for r in store.list()] == ["first"]


def test_the_repr_of_a_created_key_hides_the_secret(store: KeyStore) -> None:
    created = store.create("alice")
    assert created.secret not in repr(created)
    assert created.record.key_id in repr(created)


def test_the_file_never_holds_the_clear_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    store = KeyStore(path)
    created = store.create("alice", budget_usd=1.0)
    assert store.authenticate(created.secret) is not None
    store.charge(created.record.key_id, 0.25)
    store.set_budget(created.record.key_id, 2.0)
    secret_part = created.secret.split("-", 2)[2]
    digest = hashlib.sha256(created.secret.encode()).hexdigest()
    # The WAL holds recent commits until a checkpoint: read the database and its sidecar files.
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("keys.sqlite"))
    assert path in files
    raw = b"".join(p.read_bytes() for p in files)
    assert digest.encode() in raw  # we are reading the bytes the key went into...
    assert created.secret.encode() not in raw and secret_part.encode() not in raw  # ...and the secret is not there
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT * FROM api_keys").fetchall()
    conn.close()
    assert len(rows) == 1
    assert digest in rows[0]
    assert not any(isinstance(value, str) and secret_part in value for value in rows[0])


def test_records_carry_no_secret_or_hash(store: KeyStore) -> None:
    store.create("alice")
    assert [f.name for f in dataclasses.fields(KeyRecord)] == [
        "key_id", "name", "created_at", "revoked_at", "budget_usd", "spent_usd", "requests"]


def _other_id(key_id: str) -> str:
    return f"{(int(key_id, 16) + 1) % 2**32:08x}"


def _flip_last(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


REJECTED: list[tuple[str, Callable[[CreatedKey, CreatedKey], str]]] = [
    ("empty string", lambda a, b: ""),
    ("whitespace", lambda a, b: "   "),
    ("no prefix", lambda a, b: a.secret.removeprefix("rk-")),
    ("other prefix", lambda a, b: "sk-" + a.secret.removeprefix("rk-")),
    ("wrong id, right secret", lambda a, b: f"rk-{_other_id(a.record.key_id)}-{a.secret.split('-', 2)[2]}"),
    ("another key's id", lambda a, b: f"rk-{b.record.key_id}-{a.secret.split('-', 2)[2]}"),
    ("right id, another key's secret", lambda a, b: f"rk-{a.record.key_id}-{b.secret.split('-', 2)[2]}"),
    ("right id, one character changed", lambda a, b: _flip_last(a.secret)),
    ("truncated by one", lambda a, b: a.secret[:-1]),
    ("truncated to the id", lambda a, b: f"rk-{a.record.key_id}-"),
    ("one character too many", lambda a, b: a.secret + "A"),
    ("trailing newline", lambda a, b: a.secret + "\n"),
    ("upper-cased id", lambda a, b: a.secret.replace(a.record.key_id, a.record.key_id.upper())),
    ("the key id alone", lambda a, b: a.record.key_id),
]


@pytest.mark.parametrize("make", [m for _, m in REJECTED], ids=[name for name, _ in REJECTED])
def test_wrong_and_malformed_keys_do_not_authenticate(store: KeyStore, monkeypatch: pytest.MonkeyPatch,
                                                      make: Callable[[CreatedKey, CreatedKey], str]) -> None:
    # Fixed ids with letters in them: an all-digit id would upper-case to the valid key itself.
    ids = iter(["0badc0de", "5eed1234"])
    monkeypatch.setattr(keys, "_new_key_id", lambda: next(ids))
    a, b = store.create("a"), store.create("b")
    assert store.authenticate(make(a, b)) is None
    assert store.authenticate(a.secret) == a.record and store.authenticate(b.secret) == b.record


def test_a_revoked_key_never_authenticates(store: KeyStore) -> None:
    created, other = store.create("alice"), store.create("bob")
    revoked = store.revoke(created.record.key_id)
    assert revoked.revoked and revoked.revoked_at is not None
    assert store.authenticate(created.secret) is None
    assert KeyStore(store.path).authenticate(created.secret) is None  # nor after a restart
    assert store.authenticate(other.secret) == other.record


def test_revoking_twice_keeps_the_first_revocation(store: KeyStore) -> None:
    created = store.create("alice")
    first = store.revoke(created.record.key_id)
    second = store.revoke(created.record.key_id)
    assert second == first
    assert store.get(created.record.key_id) == first
    assert store.authenticate(created.secret) is None


def test_list_returns_every_key_oldest_first(store: KeyStore) -> None:
    assert store.list() == []
    a, b, c = store.create("a"), store.create("b", budget_usd=1.0), store.create("c")
    store.revoke(b.record.key_id)
    listed = store.list()
    assert [r.key_id for r in listed] == [a.record.key_id, b.record.key_id, c.record.key_id]
    assert [r.revoked for r in listed] == [False, True, False]
    assert listed[0] == a.record and listed[2] == c.record


# ----- bad input ------------------------------------------------------------------------------

NAME_MSG = "an API key's name must be a non-blank string, got {!r}"
BUDGET_MSG = "budget_usd must be None (unlimited) or a finite number >= 0, got {!r}"
CHARGE_MSG = "a charge must be a finite number >= 0, got {!r}"

BAD_INPUT: list[tuple[str, Callable[[KeyStore, str], object], str]] = [
    ("create: empty name", lambda s, k: s.create(""), NAME_MSG.format("")),
    ("create: blank name", lambda s, k: s.create(" \t\n"), NAME_MSG.format(" \t\n")),
    ("create: name not a string", lambda s, k: s.create(None), NAME_MSG.format(None)),  # type: ignore[arg-type]
    ("create: negative budget", lambda s, k: s.create("x", budget_usd=-0.01), BUDGET_MSG.format(-0.01)),
    ("create: NaN budget", lambda s, k: s.create("x", budget_usd=math.nan), BUDGET_MSG.format(math.nan)),
    ("create: infinite budget", lambda s, k: s.create("x", budget_usd=math.inf), BUDGET_MSG.format(math.inf)),
    ("create: -inf budget", lambda s, k: s.create("x", budget_usd=-math.inf), BUDGET_MSG.format(-math.inf)),
    ("create: string budget", lambda s, k: s.create("x", budget_usd="5"), BUDGET_MSG.format("5")),  # type: ignore[arg-type]
    ("create: bool budget", lambda s, k: s.create("x", budget_usd=True), BUDGET_MSG.format(True)),
    ("charge: negative", lambda s, k: s.charge(k, -0.001), CHARGE_MSG.format(-0.001)),
    ("charge: NaN", lambda s, k: s.charge(k, math.nan), CHARGE_MSG.format(math.nan)),
    ("charge: inf", lambda s, k: s.charge(k, math.inf), CHARGE_MSG.format(math.inf)),
    ("charge: -inf", lambda s, k: s.charge(k, -math.inf), CHARGE_MSG.format(-math.inf)),
    ("charge: None", lambda s, k: s.charge(k, None), CHARGE_MSG.format(None)),  # type: ignore[arg-type]
    ("set_budget: negative", lambda s, k: s.set_budget(k, -1), BUDGET_MSG.format(-1)),
    ("set_budget: NaN", lambda s, k: s.set_budget(k, math.nan), BUDGET_MSG.format(math.nan)),
    ("set_budget: inf", lambda s, k: s.set_budget(k, math.inf), BUDGET_MSG.format(math.inf)),
]


@pytest.mark.parametrize(("call", "message"), [(c, m) for _, c, m in BAD_INPUT], ids=[n for n, _, _ in BAD_INPUT])
def test_bad_input_is_refused_with_an_exact_message_and_changes_nothing(
        store: KeyStore, call: Callable[[KeyStore, str], object], message: str) -> None:
    created = store.create("existing", budget_usd=1.0)
    with pytest.raises(ValueError) as info:
        call(store, created.record.key_id)
    assert str(info.value) == message
    assert store.list() == [created.record]


def test_the_messages_read_as_documented() -> None:
    assert BUDGET_MSG.format(math.nan) == "budget_usd must be None (unlimited) or a finite number >= 0, got nan"
    assert CHARGE_MSG.format(-0.001) == "a charge must be a finite number >= 0, got -0.001"
    assert NAME_MSG.format("") == "an API key's name must be a non-blank string, got ''"


@pytest.mark.parametrize("call", [
    lambda s: s.revoke("feedf00d"),
    lambda s: s.charge("feedf00d", 0.5),
    lambda s: s.set_budget("feedf00d", 1.0),
    lambda s: s.get("feedf00d"),
], ids=["revoke", "charge", "set_budget", "get"])
def test_an_unknown_key_id_raises_key_not_found(store: KeyStore, call: Callable[[KeyStore], object]) -> None:
    store.create("existing")
    with pytest.raises(KeyNotFound) as info:
        call(store)
    assert str(info.value) == "no API key with id 'feedf00d'"
    assert info.value.key_id == "feedf00d"
    assert isinstance(info.value, LookupError)


def test_zero_and_negative_zero_are_valid_amounts(store: KeyStore) -> None:
    created = store.create("free", budget_usd=-0.0)
    assert created.record.budget_usd == 0.0 and math.copysign(1.0, created.record.budget_usd) == 1.0
    rec = store.charge(created.record.key_id, 0)
    assert (rec.spent_usd, rec.requests) == (0.0, 1)
    assert isinstance(rec.spent_usd, float) and isinstance(rec.budget_usd, float)


# ----- spend and budgets ----------------------------------------------------------------------


def test_charges_add_up_and_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    first = KeyStore(path)
    created = first.create("alice", budget_usd=1.0)
    key_id = created.record.key_id
    assert first.charge(key_id, 0.25).spent_usd == 0.25
    after = first.charge(key_id, 0.5)
    assert (after.spent_usd, after.requests, after.remaining_usd) == (0.75, 2, 0.25)
    restarted = KeyStore(path)
    assert restarted.get(key_id) == after
    assert restarted.authenticate(created.secret) == after
    assert restarted.charge(key_id, 0.125).spent_usd == 0.875
    assert first.get(key_id).requests == 3


@pytest.mark.parametrize(("budget", "spent", "remaining", "exhausted"), [
    (1.0, 0.0, 1.0, False),
    (1.0, 0.25, 0.75, False),
    (1.0, 1.0, 0.0, True),
    (1.0, 1.5, 0.0, True),
    (0.0, 0.0, 0.0, True),
    (None, 0.0, None, False),
    (None, 1e9, None, False),
], ids=["nothing spent", "below", "exactly at", "above", "zero budget", "unlimited", "unlimited, much spent"])
def test_remaining_and_exhausted(budget: float | None, spent: float, remaining: float | None, exhausted: bool) -> None:
    rec = _record(budget, spent)
    assert (rec.remaining_usd, rec.exhausted) == (remaining, exhausted)


def test_a_key_is_exhausted_once_its_charges_reach_the_budget(store: KeyStore) -> None:
    key_id = store.create("alice", budget_usd=1.0).record.key_id
    observed = [(r.spent_usd, r.remaining_usd, r.exhausted) for r in (
        store.get(key_id), store.charge(key_id, 0.5), store.charge(key_id, 0.5), store.charge(key_id, 0.25))]
    assert observed == [(0.0, 1.0, False), (0.5, 0.5, False), (1.0, 0.0, True), (1.25, 0.0, True)]


def test_set_budget_raises_lowers_and_lifts_the_budget_and_keeps_spend(store: KeyStore) -> None:
    key_id = store.create("alice", budget_usd=1.0).record.key_id
    store.charge(key_id, 0.75)
    lowered = store.set_budget(key_id, 0.5)
    assert (lowered.budget_usd, lowered.spent_usd, lowered.remaining_usd, lowered.exhausted) == (0.5, 0.75, 0.0, True)
    raised = store.set_budget(key_id, 2)
    assert (raised.budget_usd, raised.remaining_usd, raised.exhausted) == (2.0, 1.25, False)
    assert isinstance(raised.budget_usd, float) and isinstance(raised.spent_usd, float)  # RETURNING gives 2, not 2.0
    lifted = store.set_budget(key_id, None)
    assert (lifted.budget_usd, lifted.remaining_usd, lifted.exhausted, lifted.requests) == (None, None, False, 1)
    assert store.get(key_id) == lifted


def test_a_revoked_key_is_still_charged_for_a_request_it_had_started(store: KeyStore) -> None:
    key_id = store.create("alice").record.key_id
    store.revoke(key_id)
    rec = store.charge(key_id, 0.5)
    assert (rec.spent_usd, rec.requests, rec.revoked) == (0.5, 1, True)


# ----- concurrency ----------------------------------------------------------------------------

_CHARGER = """
import sys
from routerops.keys import KeyStore
store = KeyStore(sys.argv[1])
for _ in range(int(sys.argv[3])):
    store.charge(sys.argv[2], 0.001)
"""


def test_concurrent_charges_from_processes_and_threads_lose_nothing(tmp_path: Path, repo_root: Path) -> None:
    path = tmp_path / "keys.sqlite"
    store = KeyStore(path)
    key_id = store.create("shared", budget_usd=100.0).record.key_id
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHARGER, str(path), key_id, "50"], cwd=repo_root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors: list[BaseException] = []

    def charge_50() -> None:
        try:
            for _ in range(50):
                store.charge(key_id, 0.001)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=charge_50) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        outcomes = [(p.communicate(timeout=120), p.returncode) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert not any(t.is_alive() for t in threads), "a charging thread did not finish within 120 s"
    assert errors == []
    assert [(rc, err) for (_, err), rc in outcomes] == [(0, "")] * 4
    final = KeyStore(path).get(key_id)
    assert final.requests == 400
    assert final.spent_usd == pytest.approx(0.4, abs=1e-9)


_OPENER = """
import sys
from routerops.keys import KeyStore
print(KeyStore(sys.argv[1]).create(sys.argv[2]).record.key_id)
"""


def test_several_processes_can_create_a_new_store_at_once(tmp_path: Path, repo_root: Path) -> None:
    path = tmp_path / "new" / "keys.sqlite"
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(path), f"worker {i}"], cwd=repo_root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    try:
        outcomes = [(p.communicate(timeout=120), p.returncode) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert [(rc, err) for (_, err), rc in outcomes] == [(0, "")] * 6
    listed = KeyStore(path).list()
    assert sorted(r.name for r in listed) == [f"worker {i}" for i in range(6)]
    assert sorted(r.key_id for r in listed) == sorted(out.strip() for (out, _), _ in outcomes)
