"""The node's one SQLite database (WAL): peers, ads, jobs, the event log, the blob index.

Every write commits before it returns, so what a caller has been told is stored survives
`kill -9`; with `storage.sync = "full"` (SQLite synchronous=FULL) it also survives power
loss, at a disk sync per commit (the default, NORMAL, may roll the last commits back on
power loss, never corrupt the database). Writes that belong together (a job's
new state and its event) share one commit through `transaction()`. Calls are short and
synchronous.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from node.home import private_file
from protocol.envelope import MAX_TTL_MS, SignedMessage, envelope_hash, open_envelope, seal
from protocol.errors import LocalProtocolError, UserError
from protocol.identity import Identity
from protocol.messages import JobEvent

__all__ = ["DB_FILE", "GENESIS", "EventLog", "JobRecord", "Store"]

DB_FILE = "node.db"
GENESIS = bytes(32)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY, did TEXT, addrs TEXT NOT NULL DEFAULT '[]',
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ads (
    did TEXT PRIMARY KEY, peer_id TEXT NOT NULL, seq INTEGER NOT NULL,
    envelope BLOB NOT NULL, received_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id BLOB PRIMARY KEY, role TEXT NOT NULL, state TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}', created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id BLOB NOT NULL, hash BLOB NOT NULL UNIQUE,
    prev BLOB NOT NULL, envelope BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 BLOB PRIMARY KEY, size INTEGER NOT NULL, added_ms INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS events_append_only_u BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_d BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A job as the lifecycle last wrote it: `data` is the lifecycle's own JSON."""

    job_id: bytes
    role: str  # "client" | "worker" | "verifier"
    state: str
    data: dict[str, Any]
    created_ms: int
    updated_ms: int


_BACKSTOP_CHECKPOINT_PAGES = 10_000
CHECKPOINT_EVERY_S = 0.5


class _Checkpointer:
    """A daemon thread that runs a passive WAL checkpoint every CHECKPOINT_EVERY_S on its
    own connection: it never waits for or blocks the node's writes, and sqlite3 releases
    the GIL while it copies and syncs. It stops when the store closes or is collected."""

    def __init__(self, path: Path) -> None:
        self._stop = threading.Event()
        self._done = threading.Condition()
        self.rounds = 0  # checkpoints run so far
        self._thread = threading.Thread(
            target=self._run, args=(path,), name="store-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the commit-time backstop still checkpoints
        try:
            while not self._stop.wait(CHECKPOINT_EVERY_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # e.g. the database busy or gone: the next round tries again
                with self._done:
                    self.rounds += 1
                    self._done.notify_all()
        finally:
            conn.close()

    def wait_rounds(self, after: int, timeout: float) -> bool:
        """Wait (at most `timeout` s) until more than `after` checkpoints have run."""
        with self._done:
            return self._done.wait_for(lambda: self.rounds > after, timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def signal_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self.signal_stop()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)


class Store:
    """One connection to the node database; single-threaded use (the trio thread)."""

    def __init__(self, path: Path, *, sync: str = "normal") -> None:
        if sync not in ("normal", "full"):
            raise UserError(f"storage sync must be 'normal' or 'full', not {sync!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # The database holds prompts and results: owner-only. SQLite gives the -wal and
        # -shm files it makes the database file's mode, so they are 0600 too.
        private_file(path)
        for suffix in ("-wal", "-shm"):
            if path.with_name(path.name + suffix).exists():
                private_file(path.with_name(path.name + suffix))
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit is in the WAL before it returns, so it survives the
        # process being killed; FULL also waits for the disk, which survives power loss.
        self.db.execute(f"PRAGMA synchronous={sync.upper()}")
        # Files the node writes beside the database (result folders) follow the same
        # policy: synced to disk only when every commit is.
        self.full_sync = sync == "full"
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        # Checkpoints (the WAL copied back into the database file, with two disk syncs)
        # run in a thread of their own, on its own connection, not in whichever commit
        # crosses SQLite's 1,000-page mark: there they held the event loop 5-10 ms each,
        # ~19 times in a client's 150-job burst. The commit-time checkpoint stays as a
        # backstop, at a WAL ten times larger.
        self.db.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_CHECKPOINT_PAGES}")
        self.db.executescript(_SCHEMA)
        self.set_meta("schema_version", str(SCHEMA_VERSION))
        self._depth = 0
        self._on_rollback: list[Callable[[], None]] = []
        self.checkpointer = _Checkpointer(path)
        weakref.finalize(self, self.checkpointer.signal_stop)  # a store never closed

    def close(self) -> None:
        self.checkpointer.stop()
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable commit for every write inside, nested ones included (a
        nested `transaction()` joins the enclosing one)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self._depth = 0
            self.db.execute("ROLLBACK")
            for hook in self._on_rollback:
                hook()
            raise
        self._depth = 0
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ peers
    def upsert_peer(self, peer_id: str, addrs: list[str], did: str | None = None) -> None:
        now = _now_ms()
        self.db.execute(
            "INSERT INTO peers (peer_id, did, addrs, first_seen_ms, last_seen_ms)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(peer_id) DO UPDATE SET"
            " did=COALESCE(excluded.did, did), addrs=excluded.addrs,"
            " last_seen_ms=excluded.last_seen_ms",
            (peer_id, did, json.dumps(addrs), now, now),
        )

    def peers(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT peer_id, did, addrs, first_seen_ms, last_seen_ms FROM peers"
            " ORDER BY last_seen_ms DESC"
        ).fetchall()
        return [
            {
                "peer_id": r[0],
                "did": r[1],
                "addrs": json.loads(r[2]),
                "first_seen_ms": r[3],
                "last_seen_ms": r[4],
            }
            for r in rows
        ]

    # ------------------------------------------------------------ ads
    def save_ad(
        self, did: str, peer_id: str, seq: int, raw: bytes, received: int, expires: int
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO ads (did, peer_id, seq, envelope, received_ms, expires_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (did, peer_id, seq, raw, received, expires),
        )

    def ads(self, now_ms: int) -> list[tuple[str, bytes, int, int]]:
        """(did, envelope, received_ms, expires_ms) of ads not yet expired."""
        self.db.execute("DELETE FROM ads WHERE expires_ms <= ?", (now_ms,))
        rows = self.db.execute("SELECT did, envelope, received_ms, expires_ms FROM ads").fetchall()
        return [(r[0], bytes(r[1]), r[2], r[3]) for r in rows]

    # ------------------------------------------------------------ jobs
    def put_job(self, job_id: bytes, *, role: str, state: str, data: dict[str, Any]) -> None:
        """Create or update a job's record; committed when this returns."""
        now = _now_ms()
        self.db.execute(
            "INSERT INTO jobs (job_id, role, state, data, created_ms, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET"
            " role=excluded.role, state=excluded.state, data=excluded.data,"
            " updated_ms=excluded.updated_ms",
            (job_id, role, state, _dumps(data), now, now),
        )

    def get_job(self, job_id: bytes) -> JobRecord | None:
        row = self.db.execute(
            "SELECT job_id, role, state, data, created_ms, updated_ms FROM jobs WHERE job_id=?",
            (job_id,),
        ).fetchone()
        return None if row is None else _job(row)

    def job_state(self, job_id: bytes) -> str | None:
        """A job's state without decoding its record."""
        row = self.db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def jobs(self, state: str | None = None) -> list[JobRecord]:
        sql = "SELECT job_id, role, state, data, created_ms, updated_ms FROM jobs"
        args: tuple[Any, ...] = ()
        if state is not None:
            sql, args = sql + " WHERE state=?", (state,)
        return [_job(r) for r in self.db.execute(sql + " ORDER BY created_ms", args)]

    def job_states(self) -> list[tuple[bytes, str, str, int]]:
        """(job_id, role, state, updated_ms) of every job, oldest first, without decoding
        the records: cheap enough to poll."""
        rows = self.db.execute(
            "SELECT job_id, role, state, updated_ms FROM jobs ORDER BY created_ms"
        ).fetchall()
        return [(bytes(r[0]), r[1], r[2], r[3]) for r in rows]

    # ------------------------------------------------------------ blobs
    def add_blob(self, sha256: bytes, size: int) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, added_ms) VALUES (?, ?, ?)",
            (sha256, size, _now_ms()),
        )

    def blob_size(self, sha256: bytes) -> int | None:
        row = self.db.execute("SELECT size FROM blobs WHERE sha256=?", (sha256,)).fetchone()
        return None if row is None else int(row[0])

    def remove_blob(self, sha256: bytes) -> None:
        self.db.execute("DELETE FROM blobs WHERE sha256=?", (sha256,))

    def blob_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])


def _dumps(data: dict[str, Any]) -> str:
    """A job record as JSON. orjson is ~15x faster than `json` for these records (a
    client writes each one ~10 times in a job's life); it refuses integers beyond 64 bits
    (wei amounts can be), dataclasses are kept from it, and either goes to `json`."""
    try:
        return orjson.dumps(
            data,
            option=orjson.OPT_SORT_KEYS
            | orjson.OPT_NON_STR_KEYS
            | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_SUBCLASS,
        ).decode()
    except TypeError:
        return json.dumps(data, sort_keys=True)


def _job(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(bytes(row[0]), row[1], row[2], json.loads(row[3]), row[4], row[5])


class EventLog:
    """This node's append-only, hash-chained log of signed JobEvents."""

    def __init__(self, store: Store, identity: Identity) -> None:
        self.store = store
        self.identity = identity
        self._head: bytes | None = None  # this process is the log's only writer
        store._on_rollback.append(self._forget_head)

    def _forget_head(self) -> None:
        self._head = None

    def head(self) -> bytes:
        if self._head is None:
            row = self.store.db.execute(
                "SELECT hash FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self._head = GENESIS if row is None else bytes(row[0])
        return self._head

    def append(self, event: JobEvent, *, now: int | None = None) -> bytes:
        """Chain `event` onto the log (its `prev` is set here), sign, commit; return its hash."""
        now = _now_ms() if now is None else now
        with self.store.transaction() as db:
            prev = self.head()  # 32 bytes: the genesis or a stored digest
            # A copy with its link set, without re-validating every field (the event was
            # checked when it was built; a replace() checked it again, per event).
            chained = copy.copy(event)
            object.__setattr__(chained, "prev", prev)
            raw = seal(self.identity, chained, now=now, ttl_ms=MAX_TTL_MS)
            digest = envelope_hash(raw)
            db.execute(
                "INSERT INTO events (job_id, hash, prev, envelope, created_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (chained.job_id, digest, prev, raw, now),
            )
            self._head = digest  # forgotten again if the enclosing transaction rolls back
        return digest

    def events(self, job_id: bytes | None = None) -> list[SignedMessage]:
        sql = "SELECT envelope, created_ms FROM events"
        args: tuple[Any, ...] = ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id=?", (job_id,)
        rows = self.store.db.execute(sql + " ORDER BY seq", args).fetchall()
        return [open_envelope(bytes(r[0]), now=r[1]) for r in rows]

    def verify_chain(self) -> int:
        """Check every link; return the number of events, or raise LocalProtocolError."""
        prev = GENESIS
        count = 0
        for raw, stored_prev, stored_hash, created in self.store.db.execute(
            "SELECT envelope, prev, hash, created_ms FROM events ORDER BY seq"
        ):
            signed = open_envelope(bytes(raw), now=created)
            event = signed.message
            if not isinstance(event, JobEvent) or event.prev != prev or bytes(stored_prev) != prev:
                raise LocalProtocolError(f"event log broken at event {count}")
            if envelope_hash(bytes(raw)) != bytes(stored_hash):
                raise LocalProtocolError(f"event log hash mismatch at event {count}")
            prev = bytes(stored_hash)
            count += 1
        return count
