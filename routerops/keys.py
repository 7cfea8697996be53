"""The service's API keys: hashed secrets, revocation and a USD budget per key, in one SQLite file.

A key is `rk-<key id>-<secret>`. The key id (8 hex digits) is not secret: it names the key in
logs, bills and `routerops keys` commands. Only the SHA-256 of the whole key is stored; the key
in clear is returned once, by `KeyStore.create`, and written nowhere.

Budget policy, as for run and request budgets (`routerops.candidates.budget`): a request is
refused once what the key has spent reaches its budget (spent >= budget, `KeyRecord.exhausted`).
We cannot know what a request will cost before answering it, so the caller caps each admitted
request's own USD budget at the key's `remaining_usd` and charges the bill afterwards. Requests
admitted at the same moment each see the same remaining dollars, so a key can end above its budget
by at most (requests in flight when it crossed) x (their remaining budget at admission).

Several server worker processes, and several threads in each, share one file: WAL journal mode
lets readers (authentication) proceed while a writer commits, writers wait on a busy timeout
instead of failing, and every change is a single SQL statement, so no charge is ever lost to a
read-modify-write race.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CreatedKey", "KeyNotFound", "KeyRecord", "KeyStore"]

KEY_PREFIX = "rk"
# 32 random bytes, base64url without padding: 43 characters from [A-Za-z0-9_-].
_SECRET_BYTES = 32
_KEY_RE = re.compile(rf"{KEY_PREFIX}-(?P<key_id>[0-9a-f]{{8}})-[A-Za-z0-9_-]{{43}}")
# 8 hex digits = 2^32 ids; a collision needs tens of thousands of keys to become likely, and
# create() draws again when one happens, so a handful of attempts always suffices.
_KEY_ID_ATTEMPTS = 8
# Writers queue behind one another; a charge commits in milliseconds, so 30 s is only ever
# reached by a stuck process, never by load.
_BUSY_TIMEOUT_S = 30.0
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    seq        INTEGER PRIMARY KEY,
    key_id     TEXT    NOT NULL UNIQUE,
    key_hash   TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    revoked_at REAL,
    budget_usd REAL    CHECK (budget_usd IS NULL OR budget_usd >= 0),
    spent_usd  REAL    NOT NULL DEFAULT 0 CHECK (spent_usd >= 0),
    requests   INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = "key_id, name, created_at, revoked_at, budget_usd, spent_usd, requests"


class KeyNotFound(LookupError):
    """No key has this id (revoked keys still exist: they are found, and refused at authentication)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r}")
        self.key_id = key_id


@dataclass(frozen=True)
class KeyRecord:
    """What the store knows about a key, never its secret or hash: safe to log and to show."""

    key_id: str
    name: str
    created_at: float
    revoked_at: float | None
    budget_usd: float | None
    spent_usd: float
    requests: int

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def remaining_usd(self) -> float | None:
        """None when unlimited; never negative, even after overshoot."""
        if self.budget_usd is None:
            return None
        return max(0.0, self.budget_usd - self.spent_usd)

    @property
    def exhausted(self) -> bool:
        """True once spend reaches the budget: the key's next request is refused."""
        return self.budget_usd is not None and self.spent_usd >= self.budget_usd


@dataclass(frozen=True)
class CreatedKey:
    """A new key and its secret, which exists only here: show it to the user once, then drop it."""

    record: KeyRecord
    secret: str = field(repr=False)  # kept out of repr so that logging the object never leaks it


def _hash(secret: str) -> str:
    # A plain SHA-256 suffices: keys carry 256 random bits, so there is nothing for a slow KDF
    # (bcrypt, scrypt) to protect against guessing; it would only slow every request down.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_key_id() -> str:
    return secrets.token_hex(4)


def _validate_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an API key's name must be a non-blank string, got {name!r}")
    return name.strip()


def _validate_budget(budget_usd: float | None) -> float | None:
    if budget_usd is None:
        return None
    if isinstance(budget_usd, bool) or not isinstance(budget_usd, int | float) or not math.isfinite(budget_usd) \
            or budget_usd < 0:
        raise ValueError(f"budget_usd must be None (unlimited) or a finite number >= 0, got {budget_usd!r}")
    return float(budget_usd) + 0.0  # + 0.0 turns -0.0 into 0.0


def _validate_charge(usd: float) -> float:
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0:
        raise ValueError(f"a charge must be a finite number >= 0, got {usd!r}")
    return float(usd) + 0.0


def _record(row: tuple[str, str, float, float | None, float | None, float, int]) -> KeyRecord:
    key_id, name, created_at, revoked_at, budget_usd, spent_usd, requests = row
    # float(): SQLite stores a whole-number REAL as an integer and `UPDATE ... RETURNING` (3.40) hands
    # it back as one (2.0 -> 2), where SELECT converts it back.
    return KeyRecord(key_id=key_id, name=name, created_at=float(created_at),
                     revoked_at=None if revoked_at is None else float(revoked_at),
                     budget_usd=None if budget_usd is None else float(budget_usd), spent_usd=float(spent_usd),
                     requests=requests)


class KeyStore:
    """API keys in one SQLite file, shared by every thread and process that opens it.

    Each thread keeps one connection of its own (a process forked from one that used the store
    opens fresh ones, never an inherited one). A connection per call made a charge take 1.7 to 2
    times as long (p50 0.50-0.60 against 0.24-0.36 ms over runs of `python bench/keys.py` on this
    project's 2-core machine; closing the last connection of a WAL file checkpoints it); what is
    left is the commit's fsync. `close()` closes them all.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            self._set_wal(conn)
            conn.execute("BEGIN IMMEDIATE")  # one process creates the schema; the others wait, then see it
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > _SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path} has key store schema version {version}; this code knows "
                                       f"versions up to {_SCHEMA_VERSION}: upgrade routerops")
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            # isolation_level=None: autocommit, so each statement is its own transaction unless we
            # BEGIN one. The default synchronous=FULL fsyncs every commit: a charge survives power
            # loss. check_same_thread=False only so that close() may close it from another thread.
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._conns.append(conn)
        yield conn

    def close(self) -> None:
        """Close every thread's connection; a later call opens a new one."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # WAL is a property of the file, set once and kept. Switching takes a brief exclusive lock
        # that can report "locked" without going through the busy handler when several processes
        # open a new file at once; retry briefly.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode != "wal":
            raise RuntimeError(f"{self.path} cannot use SQLite's WAL journal (got {mode!r}); several server "
                               f"processes cannot share it: put it on a local filesystem")

    def _one(self, sql: str, params: tuple[object, ...], key_id: str) -> KeyRecord:
        """Run one `... RETURNING` statement on one key: a single atomic change, read back as it committed."""
        with self._connect() as conn:
            row = conn.execute(sql, params).fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return _record(row)

    def create(self, name: str, budget_usd: float | None = None) -> CreatedKey:
        """A new key; its secret is in the returned `CreatedKey` and nowhere else."""
        clean_name = _validate_name(name)
        budget = _validate_budget(budget_usd)
        for _ in range(_KEY_ID_ATTEMPTS):
            key_id = _new_key_id()
            secret = f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(_SECRET_BYTES)}"
            try:
                with self._connect() as conn:
                    row = conn.execute(
                        f"INSERT INTO api_keys (key_id, key_hash, name, created_at, budget_usd) VALUES (?, ?, ?, ?, ?) "
                        f"RETURNING {_COLUMNS}",
                        (key_id, _hash(secret), clean_name, time.time(), budget)).fetchone()
            except sqlite3.IntegrityError:
                continue  # the key id is taken: draw another
            return CreatedKey(record=_record(row), secret=secret)
        raise RuntimeError(f"could not find a free key id in {_KEY_ID_ATTEMPTS} attempts")

    def authenticate(self, secret: str) -> KeyRecord | None:
        """The key's record if `secret` is a live key; None if it is malformed, unknown or revoked."""
        match = _KEY_RE.fullmatch(secret) if isinstance(secret, str) else None
        if match is None:
            return None
        # Looking up by key id first leaks, through timing, only whether an id exists; ids are not secret.
        with self._connect() as conn:
            row = conn.execute(f"SELECT key_hash, {_COLUMNS} FROM api_keys WHERE key_id = ?",
                               (match["key_id"],)).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(secret)):
            return None
        record = _record(row[1:])
        return None if record.revoked else record

    def get(self, key_id: str) -> KeyRecord:
        """The key with this id, revoked or not; `KeyNotFound` if there is none."""
        with self._connect() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return _record(row)

    def list(self) -> builtins.list[KeyRecord]:
        """Every key, revoked ones included, oldest first (in the order they were created)."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY seq").fetchall()
        return [_record(row) for row in rows]

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key for good; revoking it again changes nothing and returns the same record."""
        return self._one(f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ? "
                         f"RETURNING {_COLUMNS}", (time.time(), key_id), key_id)

    def set_budget(self, key_id: str, budget_usd: float | None) -> KeyRecord:
        """Set, raise, lower or (None) lift a key's budget; what it has spent is kept."""
        budget = _validate_budget(budget_usd)
        return self._one(f"UPDATE api_keys SET budget_usd = ? WHERE key_id = ? RETURNING {_COLUMNS}",
                         (budget, key_id), key_id)

    def charge(self, key_id: str, usd: float) -> KeyRecord:
        """Bill one answered request to a key and return the updated record.

        A revoked key is still charged: a request admitted before the revocation was answered and
        cost what it cost. The budget is not checked here: admission is the caller's decision.
        """
        amount = _validate_charge(usd)
        return self._one(f"UPDATE api_keys SET spent_usd = spent_usd + ?, requests = requests + 1 WHERE key_id = ? "
                         f"RETURNING {_COLUMNS}", (amount, key_id), key_id)
