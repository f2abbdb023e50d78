"""SqliteMetadataStore: what only sqlite does (a new store at revision 0, reopening the file,
its lock and worker thread, exact lease expiry under an injected clock, bounded watch history).
The MetadataStore contract shared with etcd is in test_metadata_contract.py."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kafscale.metadata import (
    Compare,
    Delete,
    KeyValue,
    LeaseNotFound,
    Put,
    SqliteMetadataStore,
    WatchCompacted,
    WatchEvent,
)

T = TypeVar("T")


class FakeClock:
    """A settable monotonic clock, so lease expiry happens exactly when a test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(
    fn: Callable[[SqliteMetadataStore], Awaitable[T]],
    path: Path | str = ":memory:",
    **kwargs: Any,
) -> T:
    """Run ``fn`` with a fresh store in a fresh event loop, closing the store after."""

    async def main() -> T:
        store = SqliteMetadataStore(path, **kwargs)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def take(it: AsyncIterator[WatchEvent], n: int, timeout: float = 5.0) -> list[WatchEvent]:
    """The next ``n`` events, failing rather than hanging if they do not come."""

    async def collect() -> list[WatchEvent]:
        return [await anext(it) for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout)


async def nothing_more(it: AsyncIterator[WatchEvent], wait: float = 0.05) -> bool:
    """True if no event arrives within ``wait`` seconds."""
    try:
        await asyncio.wait_for(anext(it), wait)
    except TimeoutError:
        return True
    return False


def summary(events: list[WatchEvent]) -> list[tuple[str, bytes, bytes, int]]:
    return [(e.kind, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


# -- basics --------------------------------------------------------------------------------


def test_new_store_is_empty_at_revision_zero() -> None:
    async def body(store: SqliteMetadataStore) -> tuple[int, KeyValue | None, list[KeyValue]]:
        return await store.revision(), await store.get(b"k"), await store.range(b"")

    assert run(body) == (0, None, [])


# -- durability ----------------------------------------------------------------------------


def test_reopen_keeps_data_and_revision(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"

    async def write(store: SqliteMetadataStore) -> None:
        await store.put(b"a", b"1")
        await store.put(b"a", b"2")
        await store.txn([], [Put(b"b", b"3"), Delete(b"a")])
        await store.put(b"c", b"4")

    async def read(store: SqliteMetadataStore) -> tuple[int, list[KeyValue], int]:
        before = await store.revision()
        kvs = await store.range(b"")
        return before, kvs, await store.put(b"d", b"5")

    run(write, path)
    before, kvs, next_revision = run(read, path)
    assert before == 4
    assert kvs == [KeyValue(b"b", b"3", 3, 1), KeyValue(b"c", b"4", 4, 1)]
    assert next_revision == 5  # the counter continues; it never restarts


def test_reopen_keeps_history_for_watches(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"

    async def write(store: SqliteMetadataStore) -> None:
        await store.put(b"/w/a", b"1")
        await store.txn([], [Delete(b"/w/a")])

    async def past(store: SqliteMetadataStore) -> list[tuple[str, bytes, bytes, int]]:
        return summary(await take(store.watch(b"/w/", start_revision=1), 1))

    run(write, path)
    assert run(past, path) == [("delete", b"/w/a", b"", 2)]


def test_second_store_on_same_file_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"

    async def body(store: SqliteMetadataStore) -> None:
        await store.put(b"k", b"v")
        other = SqliteMetadataStore(path, lock_timeout=0.05)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await other.get(b"k")
            with pytest.raises(sqlite3.OperationalError):
                await other.start()
        finally:
            await other.close()
        assert await store.get(b"k") == KeyValue(b"k", b"v", 1, 1)

    run(body, path)


def test_sqlite_runs_on_one_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[int] = set()
    real_connect = sqlite3.connect

    class SpyConnection(sqlite3.Connection):
        def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
            threads.add(threading.get_ident())
            return super().execute(*args, **kwargs)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, factory=SpyConnection, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)

    async def body(store: SqliteMetadataStore) -> None:
        await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(10)))
        await store.range(b"")
        await store.lease_grant(10)

    loop_thread = threading.get_ident()
    run(body)
    assert len(threads) == 1 and loop_thread not in threads


def test_queued_transactions_share_a_commit_each_with_its_own_revision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Group commit: transactions waiting for the worker run in one sqlite transaction (fewer
    COMMITs than transactions), in submission order, each with its own revision and outcome;
    one that fails (an unknown lease) fails alone, and its writes are not applied."""
    commits = 0
    real_connect = sqlite3.connect

    class CountingConnection(sqlite3.Connection):
        def execute(self, sql: str, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
            nonlocal commits
            commits += sql == "COMMIT"
            return super().execute(sql, *args, **kwargs)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, factory=CountingConnection, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)

    async def body(store: SqliteMetadataStore) -> None:
        await store.start()
        before = commits
        gate = threading.Event()
        held = asyncio.wrap_future(store._submit(gate.wait))  # the worker waits meanwhile
        asyncio.get_running_loop().call_later(0.05, gate.set)
        results = await asyncio.gather(
            *(store.put(b"k%02d" % i, b"v") for i in range(10)),
            store.txn([], [Put(b"bad", b"x", lease=12345)]),
            *(
                store.txn([Compare(b"k%02d" % i, "version", "==", 1)], [Delete(b"k%02d" % i)])
                for i in range(5)
            ),
            return_exceptions=True,
        )
        await held
        assert commits - before == 1  # all queued together: one COMMIT
        assert results[:10] == list(range(1, 11))  # puts: the new revision, in order
        assert isinstance(results[10], LeaseNotFound)
        assert [(r.succeeded, r.revision) for r in results[11:]] == [  # type: ignore[union-attr]
            (True, 11 + i) for i in range(5)
        ]
        assert await store.get(b"bad") is None
        assert [kv.key for kv in await store.range(b"k")] == [b"k%02d" % i for i in range(5, 10)]
        assert await store.revision() == 15

    run(body)


def test_a_watch_sees_exactly_the_transactions_submitted_after_it() -> None:
    """A batch of queued transactions never runs past a job submitted between them: a watch
    started between two transactions sees the second, not the first."""

    async def body(store: SqliteMetadataStore) -> None:
        await store.start()
        gate = threading.Event()
        held = asyncio.wrap_future(store._submit(gate.wait))  # all three queue behind it
        first = asyncio.ensure_future(store.put(b"w/1", b"a"))
        await asyncio.sleep(0.01)  # submitted
        watch = store.watch(b"w/")
        second = asyncio.ensure_future(store.put(b"w/2", b"b"))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(held, first, second)
        events = await take(watch, 1)
        assert [e.kv.key for e in events] == [b"w/2"]
        await watch.aclose()  # type: ignore[attr-defined]

    run(body)


# -- leases --------------------------------------------------------------------------------


def test_lease_ids_are_never_reused_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"

    async def grant(store: SqliteMetadataStore) -> list[int]:
        leases = [await store.lease_grant(10) for _ in range(3)]
        await store.lease_revoke(leases[-1])  # even the newest id is never handed out again
        return leases

    first = run(grant, path)
    second = run(grant, path)
    assert all(lease > 0 for lease in first + second)
    assert len(set(first + second)) == 6


def test_lease_expiry_deletes_keys_exactly_at_the_deadline() -> None:
    clock = FakeClock()

    async def body(store: SqliteMetadataStore) -> None:
        lease = await store.lease_grant(10)
        await store.put(b"/brokers/1", b"alive", lease=lease)
        await store.put(b"/brokers/2", b"alive", lease=lease)
        await store.put(b"/static", b"stays")
        # Granting a lease is not a key-value write: the first put is revision 1.
        assert (await store.get(b"/brokers/1")) == KeyValue(b"/brokers/1", b"alive", 1, 1, lease)
        clock.now += 9.999
        assert len(await store.range(b"/brokers/")) == 2
        clock.now += 0.001  # exactly ttl after the grant
        assert await store.range(b"/brokers/") == []
        # One revision for the lease's deletes.
        assert await store.revision() == 4
        assert await store.get(b"/static") == KeyValue(b"/static", b"stays", 3, 1)
        assert await store.lease_keepalive(lease) is False
        with pytest.raises(LeaseNotFound):
            await store.put(b"/brokers/1", b"again", lease=lease)
        await store.lease_revoke(lease)  # already gone: a no-op
        assert await store.revision() == 4

    run(body, clock=clock, sweep_interval=None)


def test_keepalive_extends_the_deadline() -> None:
    clock = FakeClock()

    async def body(store: SqliteMetadataStore) -> None:
        lease = await store.lease_grant(10)
        await store.put(b"k", b"v", lease=lease)
        for _ in range(5):
            clock.now += 9
            assert await store.lease_keepalive(lease) is True
        assert await store.get(b"k") is not None  # 45s after the grant, kept alive
        clock.now += 9.5
        assert await store.get(b"k") is not None
        clock.now += 0.5  # 10s after the last keep-alive
        assert await store.get(b"k") is None
        assert await store.lease_keepalive(lease) is False

    run(body, clock=clock, sweep_interval=None)


def test_put_without_lease_detaches_key() -> None:
    clock = FakeClock()

    async def body(store: SqliteMetadataStore) -> None:
        lease = await store.lease_grant(5)
        await store.put(b"k", b"leased", lease=lease)
        await store.put(b"k", b"mine now")  # etcd: a put without a lease detaches the key
        clock.now += 5
        assert await store.get(b"k") == KeyValue(b"k", b"mine now", 2, 2, 0)
        # The lease expired without deleting anything: no revision for it.
        assert await store.revision() == 2

    run(body, clock=clock, sweep_interval=None)


def test_several_leases_expire_in_revision_order() -> None:
    clock = FakeClock()

    async def body(store: SqliteMetadataStore) -> None:
        watch = store.watch(b"")
        short, long_ = await store.lease_grant(5), await store.lease_grant(6)
        await store.put(b"long", b"", lease=long_)  # revision 1
        await store.put(b"short", b"", lease=short)  # revision 2
        clock.now += 7
        assert await store.revision() == 4  # each lease took its own revision
        events = summary(await take(watch, 4))
        assert events[2:] == [("delete", b"short", b"", 3), ("delete", b"long", b"", 4)]

    run(body, clock=clock, sweep_interval=None)


def test_leases_survive_reopen_with_a_fresh_ttl(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    clock = FakeClock()
    holder: list[int] = []

    async def write(store: SqliteMetadataStore) -> None:
        lease = await store.lease_grant(10)
        holder.append(lease)
        await store.put(b"k", b"v", lease=lease)
        clock.now += 8

    run(write, path, clock=clock, sweep_interval=None)
    clock.now += 100  # down for a long time: deadlines restart on open, as in etcd

    async def reopened(store: SqliteMetadataStore) -> None:
        assert await store.get(b"k") == KeyValue(b"k", b"v", 1, 1, holder[0])
        clock.now += 9.9
        assert await store.lease_keepalive(holder[0]) is True
        clock.now += 10
        assert await store.get(b"k") is None

    run(reopened, path, clock=clock, sweep_interval=None)


def test_background_task_expires_idle_leases() -> None:
    # The real clock and the sweeper: nobody calls the store, yet the key goes and the
    # watcher hears about it.
    async def body(store: SqliteMetadataStore) -> None:
        lease = await store.lease_grant(0.1)
        await store.put(b"/brokers/1", b"", lease=lease)
        watch = store.watch(b"/brokers/")
        (event,) = await take(watch, 1, timeout=5)
        assert (event.kind, event.kv.key, event.kv.mod_revision) == ("delete", b"/brokers/1", 2)

    run(body, sweep_interval=0.02)


def test_expiry_emits_delete_events_with_fake_clock() -> None:
    clock = FakeClock()

    async def body(store: SqliteMetadataStore) -> None:
        lease = await store.lease_grant(3)
        await store.put(b"/e/a", b"1", lease=lease)
        await store.put(b"/e/b", b"2", lease=lease)
        watch = store.watch(b"/e/")
        clock.now += 3
        await store.revision()  # any operation expires what is due
        events = await take(watch, 2)
        assert events == [
            WatchEvent("delete", KeyValue(b"/e/a", b"", 3, 0)),
            WatchEvent("delete", KeyValue(b"/e/b", b"", 3, 0)),
        ]

    run(body, clock=clock, sweep_interval=None)


# -- watch ---------------------------------------------------------------------------------


def test_watch_history_spans_many_pages() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await store.txn([], [Put(f"/p/{i:05}".encode(), b"v") for i in range(2500)])  # rev 1
        await store.txn([], [Delete(b"/p/", prefix=True)])  # rev 2: 2500 deletes
        events = await take(store.watch(b"/p/", start_revision=1), 2500)
        assert {e.kind for e in events} == {"delete"}
        assert [e.kv.key for e in events] == [f"/p/{i:05}".encode() for i in range(2500)]
        everything = await take(store.watch(b"", start_revision=1), 2500)
        assert everything[0].kv.key == b"/p/00000" and everything[-1].kv.key == b"/p/02499"

    run(body)


def test_watch_history_is_bounded_and_compacted(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"

    async def body(store: SqliteMetadataStore) -> None:
        for i in range(1, 21):
            await store.put(b"k", str(i).encode())  # one event per revision
        # The last 10 events (revisions 11..20) are kept: after 10 works, after 9 does not.
        kept = await take(store.watch(b"k", start_revision=10), 10)
        assert [e.kv.mod_revision for e in kept] == list(range(11, 21))
        with pytest.raises(WatchCompacted) as info:
            await anext(store.watch(b"k", start_revision=9))
        assert info.value.compact_revision == 10
        # Watching from now never needs history.
        watch = store.watch(b"k")
        await store.put(b"k", b"live")
        assert [e.kv.mod_revision for e in await take(watch, 1)] == [21]

    run(body, path, history_limit=10)

    async def reopened(store: SqliteMetadataStore) -> None:
        with pytest.raises(WatchCompacted):
            await anext(store.watch(b"k", start_revision=10))
        assert len(await take(store.watch(b"k", start_revision=11), 10)) == 10

    run(reopened, path, history_limit=10)


def test_compaction_keeps_whole_revisions() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await store.txn([], [Put(b"a", b""), Put(b"b", b""), Put(b"c", b"")])  # 1: 3 events
        await store.txn([], [Put(b"d", b""), Put(b"e", b"")])  # 2: 2 events
        await store.put(b"f", b"")  # 3: 6 events > 4, so all of revision 1 goes
        events = await take(store.watch(b"", start_revision=1), 3)
        assert [e.kv.key for e in events] == [b"d", b"e", b"f"]
        await store.put(b"g", b"")  # 4: 4 events, none dropped
        assert len(await take(store.watch(b"", start_revision=1), 4)) == 4
        await store.put(b"h", b"")  # 5: 5 events > 4, so all of revision 2 goes
        with pytest.raises(WatchCompacted) as info:
            await anext(store.watch(b"", start_revision=1))
        assert info.value.compact_revision == 2
        events = await take(store.watch(b"", start_revision=2), 3)
        assert [e.kv.key for e in events] == [b"f", b"g", b"h"]

    run(body, history_limit=4)


def test_compaction_inside_a_revision_being_read_fails_the_watch() -> None:
    # A history page can end inside a big revision; if that revision is compacted before the
    # next page, the rest of it is gone and the watch must say so, not skip it.
    async def body(store: SqliteMetadataStore) -> None:
        await store.put(b"x", b"")  # 1
        await store.txn([], [Put(f"/b/{i:04}".encode(), b"") for i in range(1200)])  # 2
        watch = store.watch(b"", start_revision=1)
        assert len(await take(watch, 1000)) == 1000  # one page, ending inside revision 2
        await store.txn([], [Put(f"/c/{i:04}".encode(), b"") for i in range(400)])  # drops 1-2
        with pytest.raises(WatchCompacted):
            await anext(watch)

    run(body, history_limit=1500)


def test_slow_watcher_catches_up_from_history() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        watch = store.watch(b"/s/")
        # Far more than the queue holds, all before the watcher reads anything.
        for i in range(1, 31):
            await store.txn([], [Put(b"/s/a", str(i).encode()), Put(b"/s/b", str(i).encode())])
        events = await take(watch, 60)
        assert [(e.kv.key, e.kv.mod_revision) for e in events] == [
            (key, revision) for revision in range(1, 31) for key in (b"/s/a", b"/s/b")
        ]
        # And it is live again afterwards.
        await store.put(b"/s/c", b"live")
        assert summary(await take(watch, 1)) == [("put", b"/s/c", b"live", 31)]
        assert await nothing_more(watch)

    run(body, watch_queue_limit=5)


def test_slow_watcher_past_the_history_limit_gets_compacted() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        watch = store.watch(b"")
        for i in range(30):
            await store.put(b"k", str(i).encode())
        with pytest.raises(WatchCompacted):
            await take(watch, 30)

    run(body, watch_queue_limit=3, history_limit=10)


def test_closed_watch_is_unregistered() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        watch = store.watch(b"")
        await store.put(b"k", b"1")
        assert len(await take(watch, 1)) == 1
        await watch.aclose()  # type: ignore[attr-defined]
        assert not store._watchers  # unregistered
        await store.put(b"k", b"2")
        with pytest.raises(StopAsyncIteration):
            await anext(watch)

    run(body)
