"""Persistence: the event log's hash chain, job records, config round trip."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.config import NodeConfig, config_from_dict, load_config, render_config
from node.store import GENESIS, EventLog, Store
from protocol.envelope import envelope_hash
from protocol.errors import UserError
from protocol.messages import JobEvent
from tests.net.conftest import JOB_ID, ident, now_ms


def event(state: str, job_id: bytes = JOB_ID) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        attempt=1,
        state=state,
        worker_did=None,
        artifact_hash=None,
        duration_ms=None,
        exit_code=None,
        timestamp=now_ms(),
        prompt_hash=None,
        prev=bytes(32),
        detail={},
    )


def test_event_log_chains_and_survives_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.db")
    log = EventLog(store, ident(1))
    other_job = b"\x12\x20" + bytes(32)
    h1 = log.append(event("requested"))
    h2 = log.append(event("requested", other_job))
    h3 = log.append(event("funded"))
    store.close()
    log = EventLog(Store(tmp_path / "node.db"), ident(1))
    assert log.head() == h3
    assert log.verify_chain() == 3
    mine = log.events(JOB_ID)
    assert [e.message.state for e in mine] == ["requested", "funded"]  # type: ignore[attr-defined]
    assert mine[0].message.prev == GENESIS  # type: ignore[attr-defined]
    assert mine[1].message.prev == h2  # type: ignore[attr-defined]
    assert envelope_hash(mine[0].raw) == h1


def test_event_log_is_append_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.db")
    EventLog(store, ident(1)).append(event("requested"))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM events")


def test_a_job_state_and_its_event_commit_together_or_not_at_all(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.db")
    log = EventLog(store, ident(1))
    first = log.append(event("requested"))
    with store.transaction():  # the lifecycle's pattern: record and event, one commit
        store.put_job(JOB_ID, role="client", state="funded", data={"n": 1})
        second = log.append(event("funded"))

    def interrupted() -> None:
        with store.transaction():
            store.put_job(JOB_ID, role="client", state="assigned", data={"n": 2})
            log.append(event("assigned"))
            raise RuntimeError("crash between the writes")

    with pytest.raises(RuntimeError, match="crash"):
        interrupted()
    record = store.get_job(JOB_ID)
    assert record is not None
    assert (record.state, record.data) == ("funded", {"n": 1})  # the rolled-back write is gone
    assert log.head() == second  # and so is its event: the cached head was forgotten
    third = log.append(event("assigned"))
    assert log.verify_chain() == 3
    store.close()
    reopened = Store(tmp_path / "node.db")
    chain = [s.message for s in EventLog(reopened, ident(1)).events()]
    assert [e.state for e in chain] == ["requested", "funded", "assigned"]
    assert EventLog(reopened, ident(1)).head() == third != first


def test_jobs_table(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.db")
    store.put_job(JOB_ID, role="client", state="requested", data={"k": 1})
    store.put_job(JOB_ID, role="client", state="funded", data={"k": 2})
    record = store.get_job(JOB_ID)
    assert record is not None
    assert (record.state, record.data) == ("funded", {"k": 2})
    assert store.job_state(JOB_ID) == "funded"
    assert store.job_state(b"\x12\x20" + bytes(32)) is None
    assert [j.job_id for j in store.jobs("funded")] == [JOB_ID]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_config_template_round_trips(tmp_path: Path) -> None:
    text = render_config()
    assert text.count("# ") > 20  # every option carries a comment
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert load_config(path) == NodeConfig()
    assert load_config(tmp_path / "missing.toml") == NodeConfig()


def test_config_rejects_unknown_and_mistyped_options() -> None:
    with pytest.raises(UserError, match="unknown option"):
        config_from_dict({"network": {"lisen": []}})
    with pytest.raises(UserError, match="must be"):
        config_from_dict({"gossip": {"ad_ttl_s": "long"}})
    cfg = config_from_dict({"light": True, "gossip": {"heartbeat_s": 2}})
    assert cfg.light
    assert cfg.gossip.heartbeat_s == 2.0


@pytest.mark.parametrize(("sync", "pragma"), [("normal", 1), ("full", 2)])
def test_storage_sync_setting(tmp_path: Path, sync: str, pragma: int) -> None:
    store = Store(tmp_path / "node.db", sync=sync)
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == pragma
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    with pytest.raises(UserError, match="storage sync"):
        Store(tmp_path / "other.db", sync="sometimes")
    assert config_from_dict({"storage": {"sync": "full"}}).storage.sync == "full"


async def test_blob_put_file_async_matches_put_file(tmp_path: Path) -> None:
    import hashlib

    from node.blobstore import BlobStore

    store = Store(tmp_path / "node.db")
    blobs = BlobStore(tmp_path / "blobs", store)
    src = tmp_path / "src.bin"
    src.write_bytes(b"c0 artifact " * 100_000)
    digest = await blobs.put_file_async(src)
    assert digest == hashlib.sha256(src.read_bytes()).digest()
    assert blobs.has(digest)
    assert blobs.path_of(digest).read_bytes() == src.read_bytes()
    assert await blobs.put_file_async(src) == digest == blobs.put_file(src)  # held: no copy
    assert list(blobs.partial_dir.iterdir()) == []  # no partial file left behind
    assert store.blob_count() == 1
    with pytest.raises(UserError):
        await blobs.put_file_async(tmp_path / "missing")


def test_job_records_keep_big_integers_and_refuse_objects(tmp_path: Path) -> None:
    """Records are written with orjson when it can (64-bit integers), with json otherwise:
    wei amounts beyond 2**64 must come back exact, never as floats."""
    import dataclasses

    store = Store(tmp_path / "node.db")
    data = {"wei": 10**20, "small": 5, "by_attempt": {1: "a"}, "list": (1, 2), "f": 0.5}
    store.put_job(JOB_ID, role="client", state="funded", data=data)
    record = store.get_job(JOB_ID)
    assert record is not None
    assert record.data == {"wei": 10**20, "small": 5, "by_attempt": {"1": "a"}, "list": [1, 2],
                           "f": 0.5}  # fmt: skip
    assert isinstance(record.data["wei"], int)
    raw = store.db.execute("SELECT data FROM jobs WHERE job_id=?", (JOB_ID,)).fetchone()[0]
    assert raw.startswith('{"by_attempt": ')  # too big for orjson: json wrote it
    store.put_job(JOB_ID, role="client", state="funded", data={"small": 2**63 - 1, "b": [1]})
    assert store.get_job(JOB_ID).data == {"small": 2**63 - 1, "b": [1]}  # type: ignore[union-attr]
    raw = store.db.execute("SELECT data FROM jobs WHERE job_id=?", (JOB_ID,)).fetchone()[0]
    assert raw == '{"b":[1],"small":9223372036854775807}'  # orjson: compact, keys sorted

    @dataclasses.dataclass
    class Thing:
        x: int

    with pytest.raises(TypeError):
        store.put_job(JOB_ID, role="client", state="funded", data={"thing": Thing(1)})


async def test_a_blob_already_held_is_not_synced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new blob is synced (file and folder) before it is indexed; the same bytes put
    again are hashed and dropped without touching the disk's journal."""
    import os

    from node import blobstore
    from node.blobstore import BlobStore

    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(blobstore.os, "fsync", counting_fsync)
    blobs = BlobStore(tmp_path / "blobs", Store(tmp_path / "node.db"))
    src = tmp_path / "out.txt"
    src.write_bytes(b"hello from c0")
    digest = await blobs.put_file_async(src)
    assert len(synced) >= 2  # the file, then its folder
    assert blobs.path_of(digest).read_bytes() == b"hello from c0"
    synced.clear()
    assert await blobs.put_file_async(src) == digest
    assert synced == []
    assert list(blobs.partial_dir.iterdir()) == []


def test_checkpoints_run_off_the_committing_thread(tmp_path: Path) -> None:
    """Commits never checkpoint at SQLite's default 1,000-page mark: the store's own thread
    copies the WAL into the database file (a node's event loop is not held by it)."""
    path = tmp_path / "node.db"
    store = Store(path)
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 1000
    before = path.stat().st_size
    rounds = store.checkpointer.rounds
    blob = "x" * 3000
    with store.transaction() as db:  # ~1,500 pages into the WAL in one commit
        for i in range(2000):
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"k{i}", blob))
    assert path.stat().st_size == before  # committed: in the WAL, not yet in the file
    # bounded: a round every CHECKPOINT_EVERY_S; two rounds, so one started after the commit
    assert store.checkpointer.wait_rounds(rounds + 1, timeout=30.0)
    assert path.stat().st_size > before + 2000 * 3000
    store.close()
    assert not store.checkpointer.alive
    reopened = Store(path)
    assert reopened.get_meta("k1999") == blob
    reopened.close()


def test_a_store_never_closed_stops_its_checkpointer(tmp_path: Path) -> None:
    import gc

    store = Store(tmp_path / "node.db")
    checkpointer = store.checkpointer
    assert checkpointer.alive
    del store
    gc.collect()
    # only the finaliser can have told it to stop: wait (bounded) for the thread to end
    checkpointer._thread.join(timeout=10.0)
    assert not checkpointer.alive


async def test_a_small_blob_already_held_is_not_copied_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    import trio

    from node.blobstore import BlobStore

    store = Store(tmp_path / "node.db")
    blobs = BlobStore(tmp_path / "blobs", store)
    src = tmp_path / "payload.txt"
    src.write_text("hello")
    digest = await blobs.put_file_async(src)  # new: staged and synced in a thread
    assert digest == hashlib.sha256(b"hello").digest()
    assert blobs.has(digest)

    async def no_thread(*args: object, **kwargs: object) -> object:
        raise AssertionError("a held small file took a thread hop")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_thread)
    again = tmp_path / "again.txt"
    again.write_text("hello")
    assert await blobs.put_file_async(again) == digest  # hashed in place, nothing copied
    assert list(blobs.partial_dir.iterdir()) == []
    other = tmp_path / "other.txt"
    other.write_text("not held")
    with pytest.raises(AssertionError, match="thread hop"):  # a new blob still goes off-loop
        await blobs.put_file_async(other)
