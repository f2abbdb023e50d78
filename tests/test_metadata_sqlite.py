"""SqliteMetadataStore: etcd's key-value, transaction, lease and watch semantics on sqlite."""

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
    MetadataStore,
    Put,
    SqliteMetadataStore,
    StoreClosed,
    TxnResult,
    WatchCompacted,
    WatchEvent,
)
from kafscale.metadata.sqlite import prefix_end

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


def test_is_a_metadata_store() -> None:
    async def body(store: SqliteMetadataStore) -> bool:
        return isinstance(store, MetadataStore)

    assert run(body)


def test_new_store_is_empty_at_revision_zero() -> None:
    async def body(store: SqliteMetadataStore) -> tuple[int, KeyValue | None, list[KeyValue]]:
        return await store.revision(), await store.get(b"k"), await store.range(b"")

    assert run(body) == (0, None, [])


def test_put_get_revisions_and_versions() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        assert await store.put(b"a", b"1") == 1
        assert await store.put(b"b", b"2") == 2
        assert await store.put(b"a", b"3") == 3
        assert await store.get(b"a") == KeyValue(b"a", b"3", mod_revision=3, version=2)
        assert await store.get(b"b") == KeyValue(b"b", b"2", mod_revision=2, version=1)
        assert await store.revision() == 3
        # Deleting resets the version: a re-created key starts again at 1.
        assert (await store.txn((), (Delete(b"a"),))).revision == 4
        assert await store.get(b"a") is None
        assert await store.put(b"a", b"4") == 5
        assert await store.get(b"a") == KeyValue(b"a", b"4", mod_revision=5, version=1)

    run(body)


def test_put_same_value_is_still_a_write() -> None:
    async def body(store: SqliteMetadataStore) -> KeyValue | None:
        await store.put(b"k", b"v")
        await store.put(b"k", b"v")
        return await store.get(b"k")

    assert run(body) == KeyValue(b"k", b"v", mod_revision=2, version=2)


def test_binary_keys_and_values() -> None:
    key, value = bytes(range(256)), b"\x00\xff" * 1000

    async def body(store: SqliteMetadataStore) -> KeyValue | None:
        await store.put(key, value)
        return await store.get(key)

    assert run(body) == KeyValue(key, value, 1, 1)


def test_empty_value_is_allowed_but_empty_key_is_not() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await store.put(b"k", b"")
        assert await store.get(b"k") == KeyValue(b"k", b"", 1, 1)
        with pytest.raises(ValueError):
            await store.put(b"", b"v")
        assert await store.revision() == 1

    run(body)


def test_keys_and_values_must_be_bytes() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        with pytest.raises(TypeError):
            await store.put("k", b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.put(b"k", "v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.txn((), (object(),))  # type: ignore[arg-type]
        assert await store.revision() == 0

    run(body)


# -- range ---------------------------------------------------------------------------------


def test_prefix_end() -> None:
    assert prefix_end(b"abc") == b"abd"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None
    assert prefix_end(b"\x00") == b"\x01"


def test_range_by_prefix() -> None:
    keys = [b"/t/a", b"/t/a/0", b"/t/a/1", b"/t/b", b"/t/ab", b"/u", b"/t", b"/s/z"]

    async def body(store: SqliteMetadataStore) -> None:
        for key in keys:
            await store.put(key, key)
        assert [kv.key for kv in await store.range(b"/t/a")] == [
            b"/t/a",
            b"/t/a/0",
            b"/t/a/1",
            b"/t/ab",
        ]
        assert [kv.key for kv in await store.range(b"/t/a/")] == [b"/t/a/0", b"/t/a/1"]
        assert [kv.key for kv in await store.range(b"")] == sorted(keys)
        assert [kv.key for kv in await store.range(b"/t/a", limit=2)] == [b"/t/a", b"/t/a/0"]
        assert [kv.key for kv in await store.range(b"", limit=1)] == [b"/s/z"]
        assert await store.range(b"/v") == []
        assert (await store.range(b"/t/b"))[0] == KeyValue(b"/t/b", b"/t/b", 4, 1)
        with pytest.raises(ValueError):
            await store.range(b"", limit=-1)

    run(body)


def test_range_prefix_edge_bytes() -> None:
    keys = [
        b"a",
        b"a\xff",
        b"a\xff\x00",
        b"a\xff\xff",
        b"b",
        b"b\x00",
        b"\xff",
        b"\xff\xff",
        b"\x00",
    ]

    async def body(store: SqliteMetadataStore) -> None:
        for key in keys:
            await store.put(key, b"")

        async def keys_under(prefix: bytes) -> list[bytes]:
            return [kv.key for kv in await store.range(prefix)]

        # Sorted bytewise (0xff after everything, 0x00 first), whatever the prefix's last byte.
        assert await keys_under(b"") == sorted(keys)
        assert await keys_under(b"a\xff") == [b"a\xff", b"a\xff\x00", b"a\xff\xff"]
        assert await keys_under(b"a\xff\xff") == [b"a\xff\xff"]
        assert await keys_under(b"a") == [b"a", b"a\xff", b"a\xff\x00", b"a\xff\xff"]
        assert await keys_under(b"\xff") == [b"\xff", b"\xff\xff"]
        assert await keys_under(b"\xff\xff") == [b"\xff\xff"]
        assert await keys_under(b"\x00") == [b"\x00"]
        assert await keys_under(b"b") == [b"b", b"b\x00"]
        # The same bounds drive prefix deletes.
        await store.txn((), (Delete(b"a\xff", prefix=True),))
        assert await keys_under(b"a") == [b"a"]
        await store.txn((), (Delete(b"\xff", prefix=True),))
        assert await keys_under(b"") == [b"\x00", b"a", b"b", b"b\x00"]

    run(body)


# -- transactions --------------------------------------------------------------------------


async def _seed(store: SqliteMetadataStore) -> None:
    # k: mod_revision 2, version 2, value b"m"; "missing" never exists.
    await store.put(b"k", b"a")  # revision 1
    await store.put(b"k", b"m")  # revision 2
    await store.put(b"other", b"x")  # revision 3


COMPARE_CASES = [
    # existing key: mod_revision 2
    (Compare(b"k", "mod_revision", "==", 2), True),
    (Compare(b"k", "mod_revision", "==", 3), False),
    (Compare(b"k", "mod_revision", "!=", 3), True),
    (Compare(b"k", "mod_revision", "!=", 2), False),
    (Compare(b"k", "mod_revision", "<", 3), True),
    (Compare(b"k", "mod_revision", "<", 2), False),
    (Compare(b"k", "mod_revision", ">", 1), True),
    (Compare(b"k", "mod_revision", ">", 2), False),
    # existing key: version 2
    (Compare(b"k", "version", "==", 2), True),
    (Compare(b"k", "version", "==", 1), False),
    (Compare(b"k", "version", "!=", 1), True),
    (Compare(b"k", "version", "!=", 2), False),
    (Compare(b"k", "version", "<", 3), True),
    (Compare(b"k", "version", "<", 2), False),
    (Compare(b"k", "version", ">", 1), True),
    (Compare(b"k", "version", ">", 2), False),
    # existing key: value b"m" (bytewise order)
    (Compare(b"k", "value", "==", b"m"), True),
    (Compare(b"k", "value", "==", b"n"), False),
    (Compare(b"k", "value", "!=", b"n"), True),
    (Compare(b"k", "value", "!=", b"m"), False),
    (Compare(b"k", "value", "<", b"n"), True),
    (Compare(b"k", "value", "<", b"m"), False),
    (Compare(b"k", "value", "<", b"m\x00"), True),
    (Compare(b"k", "value", ">", b"l\xff"), True),
    (Compare(b"k", "value", ">", b"m"), False),
    # missing key: mod_revision 0, version 0
    (Compare(b"missing", "mod_revision", "==", 0), True),
    (Compare(b"missing", "mod_revision", "!=", 0), False),
    (Compare(b"missing", "mod_revision", "<", 1), True),
    (Compare(b"missing", "mod_revision", ">", 0), False),
    (Compare(b"missing", "version", "==", 0), True),
    (Compare(b"missing", "version", "!=", 0), False),
    (Compare(b"missing", "version", "<", 1), True),
    (Compare(b"missing", "version", ">", 0), False),
    # missing key: every value compare is false, even != and against b""
    (Compare(b"missing", "value", "==", b""), False),
    (Compare(b"missing", "value", "!=", b"x"), False),
    (Compare(b"missing", "value", "<", b"\xff"), False),
    (Compare(b"missing", "value", ">", b""), False),
]


@pytest.mark.parametrize(("compare", "holds"), COMPARE_CASES, ids=str)
def test_compare(compare: Compare, holds: bool) -> None:
    async def body(store: SqliteMetadataStore) -> tuple[TxnResult, KeyValue | None]:
        await _seed(store)
        result = await store.txn([compare], [Put(b"out", b"success")], [Put(b"out", b"failure")])
        return result, await store.get(b"out")

    result, out = run(body)
    assert result == TxnResult(succeeded=holds, revision=4)
    assert out is not None and out.value == (b"success" if holds else b"failure")


def test_all_compares_must_hold() -> None:
    async def body(store: SqliteMetadataStore) -> list[bool]:
        await _seed(store)
        both = [Compare(b"k", "version", "==", 2), Compare(b"other", "value", "==", b"x")]
        one_wrong = [Compare(b"k", "version", "==", 2), Compare(b"other", "value", "==", b"y")]
        return [
            (await store.txn(both, [])).succeeded,
            (await store.txn(one_wrong, [])).succeeded,
            (await store.txn([], [])).succeeded,  # no compares: vacuously true
        ]

    assert run(body) == [True, False, True]


def test_txn_branches_apply_atomically() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await _seed(store)
        result = await store.txn(
            [Compare(b"k", "mod_revision", "==", 2)],
            [Put(b"k", b"new"), Put(b"a", b"1"), Delete(b"other")],
            [Put(b"failed", b"1")],
        )
        # One revision for the whole branch; every change carries it.
        assert result == TxnResult(True, 4)
        assert await store.get(b"k") == KeyValue(b"k", b"new", 4, 3)
        assert await store.get(b"a") == KeyValue(b"a", b"1", 4, 1)
        assert await store.get(b"other") is None
        assert await store.get(b"failed") is None
        # The same compare is now stale: the failure branch runs instead.
        result = await store.txn(
            [Compare(b"k", "mod_revision", "==", 2)],
            [Put(b"k", b"lost update")],
            [Put(b"failed", b"1")],
        )
        assert result == TxnResult(False, 5)
        assert (await store.get(b"k")) == KeyValue(b"k", b"new", 4, 3)
        assert await store.get(b"failed") == KeyValue(b"failed", b"1", 5, 1)

    run(body)


def test_txn_that_changes_nothing_keeps_the_revision() -> None:
    async def body(store: SqliteMetadataStore) -> list[TxnResult]:
        await _seed(store)
        return [
            await store.txn([Compare(b"k", "version", "==", 9)], [Put(b"x", b"1")]),
            await store.txn([], [Delete(b"missing")]),
            await store.txn([], [Delete(b"nothing/", prefix=True)]),
            await store.txn([], []),
        ]

    assert run(body) == [TxnResult(False, 3)] + [TxnResult(True, 3)] * 3


def test_delete_prefix_in_txn() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        for key in (b"/p/1", b"/p/2", b"/p2", b"/q"):
            await store.put(key, b"v")
        assert (await store.txn([], [Delete(b"/p/", prefix=True)])).revision == 5
        assert [kv.key for kv in await store.range(b"")] == [b"/p2", b"/q"]
        assert (await store.txn([], [Delete(b"", prefix=True)])).revision == 6
        assert await store.range(b"") == []

    run(body)


def test_txn_rejects_etcd_invalid_branches() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await _seed(store)
        bad_branches: list[list[Put | Delete]] = [
            [Put(b"x", b"1"), Put(b"x", b"2")],
            [Put(b"x", b"1"), Delete(b"x")],
            [Delete(b"x"), Put(b"x", b"1")],
            [Put(b"p/x", b"1"), Delete(b"p/", prefix=True)],
        ]
        for branch in bad_branches:
            with pytest.raises(ValueError):
                await store.txn([], branch)
            # Validated up front, so a bad failure branch fails even when it would not run.
            with pytest.raises(ValueError):
                await store.txn([], [], branch)
        with pytest.raises(TypeError):
            await store.txn([Compare(b"k", "version", "==", b"2")], [])
        with pytest.raises(TypeError):
            await store.txn([Compare(b"k", "value", "==", 2)], [])
        with pytest.raises(ValueError):
            await store.txn([Compare(b"k", "value", ">=", b"")], [])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.txn([Compare(b"k", "lease", "==", 0)], [])  # type: ignore[arg-type]
        # Overlapping deletes are fine (etcd allows them) and delete once.
        assert (await store.txn([], [Delete(b"k"), Delete(b"", prefix=True)])).revision == 4
        assert await store.range(b"") == []

    run(body)


def test_failed_txn_rolls_back_earlier_ops() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await _seed(store)
        with pytest.raises(LeaseNotFound):
            await store.txn([], [Put(b"k", b"changed"), Put(b"l", b"v", lease=12345)])
        assert await store.get(b"k") == KeyValue(b"k", b"m", 2, 2)
        assert await store.get(b"l") is None
        assert await store.revision() == 3

    run(body)


def test_concurrent_compare_and_swap_loses_no_update() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await store.put(b"counter", b"0")

        async def increment() -> int:
            attempts = 0
            while True:
                attempts += 1
                kv = await store.get(b"counter")
                assert kv is not None
                new = str(int(kv.value) + 1).encode()
                guard = Compare(b"counter", "mod_revision", "==", kv.mod_revision)
                if (await store.txn([guard], [Put(b"counter", new)])).succeeded:
                    return attempts

        attempts = await asyncio.gather(*(increment() for _ in range(25)))
        kv = await store.get(b"counter")
        assert kv is not None and kv.value == b"25" and kv.version == 26
        assert sum(attempts) > 25  # the guards did collide, and the losers retried
        assert await store.revision() == 26

    run(body)


def test_revisions_are_monotonic_under_concurrency() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        revisions = await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(50)))
        assert sorted(revisions) == list(range(1, 51))
        assert await store.revision() == 50

    run(body)


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


def test_operations_after_close_raise() -> None:
    async def body() -> None:
        store = SqliteMetadataStore(":memory:")
        await store.put(b"k", b"v")
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreClosed):
            await store.get(b"k")
        with pytest.raises(StoreClosed):
            await store.put(b"k", b"v")
        with pytest.raises(StoreClosed):
            store.watch(b"")

    asyncio.run(body())


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


# -- leases --------------------------------------------------------------------------------


def test_lease_ids_are_positive_and_unique(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"

    async def grant(store: SqliteMetadataStore) -> list[int]:
        leases = [await store.lease_grant(10) for _ in range(3)]
        await store.lease_revoke(leases[-1])  # even the newest id is never handed out again
        return leases

    first = run(grant, path)
    second = run(grant, path)
    assert all(lease > 0 for lease in first + second)
    assert len(set(first + second)) == 6


def test_lease_grant_rejects_bad_ttls() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        for ttl in (0, -1, float("inf"), float("nan")):
            with pytest.raises(ValueError):
                await store.lease_grant(ttl)

    run(body)


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


def test_keepalive_of_unknown_lease_is_false() -> None:
    async def body(store: SqliteMetadataStore) -> bool:
        return await store.lease_keepalive(424242)

    assert run(body) is False


def test_lease_revoke_deletes_only_its_keys() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        first, second = await store.lease_grant(60), await store.lease_grant(60)
        await store.put(b"a", b"1", lease=first)
        await store.put(b"b", b"2", lease=second)
        await store.put(b"c", b"3", lease=first)
        await store.lease_revoke(first)
        assert [kv.key for kv in await store.range(b"")] == [b"b"]
        assert await store.revision() == 4  # one revision for both deletes
        assert await store.lease_keepalive(first) is False
        assert await store.lease_keepalive(second) is True
        # A lease without keys ends without a revision.
        await store.lease_revoke(await store.lease_grant(60))
        assert await store.revision() == 4

    run(body)


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


def test_watch_from_now_sees_later_writes_only() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        await store.put(b"/a/before", b"0")
        watch = store.watch(b"/a/")
        # Written before the first anext, but after watch(): included.
        await store.put(b"/a/1", b"1")
        await store.txn([], [Put(b"/a/2", b"2"), Put(b"/b/x", b"x")])
        await store.txn([], [Delete(b"/a/", prefix=True)])
        events = await take(watch, 5)
        assert summary(events) == [
            ("put", b"/a/1", b"1", 2),
            ("put", b"/a/2", b"2", 3),
            ("delete", b"/a/1", b"", 4),
            ("delete", b"/a/2", b"", 4),
            ("delete", b"/a/before", b"", 4),
        ]
        assert events[1].kv == KeyValue(b"/a/2", b"2", 3, 1)
        assert events[2].kv.version == 0
        assert await nothing_more(watch)

    run(body)


def test_watch_on_prefix_only_sees_its_keys() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        watch_a = store.watch(b"/a/")
        watch_all = store.watch(b"")
        await store.put(b"/a", b"not under /a/")
        await store.put(b"/ab", b"nor this")
        await store.put(b"/a/x", b"yes")
        await store.put(b"/b/x", b"no")
        assert summary(await take(watch_a, 1)) == [("put", b"/a/x", b"yes", 3)]
        assert await nothing_more(watch_a)
        assert [e.kv.key for e in await take(watch_all, 4)] == [b"/a", b"/ab", b"/a/x", b"/b/x"]

    run(body)


def test_watch_from_a_past_revision_then_live() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        for i in range(1, 6):
            await store.put(b"/w/k", str(i).encode())  # revisions 1..5
            await store.put(b"/x/k", b"noise")  # revisions 6..10 interleave... see below
        # Revisions: /w/k at 1,3,5,7,9 ; /x/k at 2,4,6,8,10.
        watch = store.watch(b"/w/", start_revision=3)  # after 3: 5, 7, 9
        await store.put(b"/w/k", b"live")  # 11
        events = await take(watch, 4)
        assert summary(events) == [
            ("put", b"/w/k", b"3", 5),
            ("put", b"/w/k", b"4", 7),
            ("put", b"/w/k", b"5", 9),
            ("put", b"/w/k", b"live", 11),
        ]
        assert [e.kv.version for e in events] == [3, 4, 5, 6]
        assert await nothing_more(watch)

    run(body)


def test_watch_start_revision_is_exclusive_and_may_be_in_the_future() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        for i in range(1, 4):
            await store.put(b"k", str(i).encode())
        from_one = store.watch(b"k", start_revision=1)
        assert [e.kv.mod_revision for e in await take(from_one, 2)] == [2, 3]
        future = store.watch(b"k", start_revision=5)
        for i in range(4, 8):
            await store.put(b"k", str(i).encode())
        assert [e.kv.mod_revision for e in await take(future, 2)] == [6, 7]
        current = store.watch(b"k", start_revision=7)
        assert await nothing_more(current)

    run(body)


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


def test_many_watchers_each_see_every_event_in_order() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        watches = [store.watch(b"") for _ in range(5)]
        await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(40)))
        for watch in watches:
            events = await take(watch, 40)
            assert [e.kv.mod_revision for e in events] == list(range(1, 41))

    run(body)


def test_closed_watch_stops_receiving() -> None:
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


def test_closing_the_store_ends_watches() -> None:
    async def body() -> None:
        store = SqliteMetadataStore(":memory:")
        watch = store.watch(b"")
        await store.put(b"k", b"1")
        pending = asyncio.ensure_future(take(watch, 2))
        await asyncio.sleep(0.05)
        await store.close()
        with pytest.raises(StopAsyncIteration):
            await pending

    asyncio.run(body())


def test_watch_rejects_negative_start() -> None:
    async def body(store: SqliteMetadataStore) -> None:
        with pytest.raises(ValueError):
            store.watch(b"", start_revision=-1)

    run(body)
