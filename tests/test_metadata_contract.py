"""The MetadataStore contract, run against every backend: sqlite (in memory) and etcd (a real
single-member server, shared by the module and emptied before each test).

Revisions are checked relative to the store's revision when the test starts (a new sqlite
store is at 0, etcd at 1 and further along after earlier tests), which is all the contract
promises: one new revision per write, store-wide, increasing. Backend-specific behaviour lives
in test_metadata_sqlite.py (fake clock, bounded history, reopening) and test_metadata_etcd.py
(compaction, failover, quorum loss).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

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
    WatchEvent,
)
from kafscale.metadata.store import prefix_end
from tests.etcdserver import EtcdCluster, require_etcd

T = TypeVar("T")


class Backend:
    name = ""
    ttl = 0.0
    """A lease TTL short enough for real-time expiry tests, long enough to be reliable."""
    expiry_slack = 0.0
    """How late after its TTL the backend may delete an expired lease's keys."""

    async def open(self) -> MetadataStore:
        """A store with no keys."""
        raise NotImplementedError

    def run(self, fn: Callable[[MetadataStore], Awaitable[T]]) -> T:
        """Run ``fn`` with a fresh store in a fresh event loop, closing the store after."""

        async def main() -> T:
            store = await self.open()
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(main())


class SqliteBackend(Backend):
    name = "sqlite"
    ttl = 0.3
    expiry_slack = 0.5

    async def open(self) -> MetadataStore:
        return SqliteMetadataStore(":memory:", sweep_interval=0.02)


class EtcdBackend(Backend):
    name = "etcd"
    ttl = 1.0  # etcd's unit (and about its minimum with a 500 ms election timeout)
    expiry_slack = 2.0  # etcd checks for expired leases every 500 ms, then commits the revoke

    def __init__(self, cluster: EtcdCluster) -> None:
        self.cluster = cluster

    async def open(self) -> MetadataStore:
        from kafscale.metadata.etcd import EtcdMetadataStore

        store = EtcdMetadataStore(self.cluster.endpoints, request_timeout=2, retry_timeout=3)
        await store.txn((), (Delete(b"", prefix=True),))
        for lease in await store.lease_ids():
            await store.lease_revoke(lease)
        return store


@pytest.fixture(scope="module")
def etcd_cluster() -> Iterator[EtcdCluster]:
    with require_etcd(1) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend()
    return EtcdBackend(request.getfixturevalue("etcd_cluster"))


async def take(it: AsyncIterator[WatchEvent], n: int, timeout: float = 5.0) -> list[WatchEvent]:
    """The next ``n`` events, failing rather than hanging if they do not come."""

    async def collect() -> list[WatchEvent]:
        return [await anext(it) for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout)


async def nothing_more(it: AsyncIterator[WatchEvent], wait: float = 0.1) -> bool:
    """True if no event arrives within ``wait`` seconds."""
    try:
        await asyncio.wait_for(anext(it), wait)
    except TimeoutError:
        return True
    return False


def summary(events: list[WatchEvent], base: int = 0) -> list[tuple[str, bytes, bytes, int]]:
    """(kind, key, value, revision - base) of each event."""
    return [(e.kind, e.kv.key, e.kv.value, e.kv.mod_revision - base) for e in events]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Poll ``check`` until it is true; the seconds it took (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.02)
    return loop.time() - start


# -- basics --------------------------------------------------------------------------------


def test_is_a_metadata_store(backend: Backend) -> None:
    async def body(store: MetadataStore) -> bool:
        return isinstance(store, MetadataStore)

    assert backend.run(body)


def test_empty_store(backend: Backend) -> None:
    async def body(store: MetadataStore) -> tuple[KeyValue | None, list[KeyValue], int]:
        return await store.get(b"k"), await store.range(b""), await store.revision()

    kv, kvs, revision = backend.run(body)
    assert (kv, kvs) == (None, [])
    assert revision >= 0


def test_put_get_revisions_and_versions(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        assert await store.put(b"a", b"1") == r + 1
        assert await store.put(b"b", b"2") == r + 2
        assert await store.put(b"a", b"3") == r + 3
        assert await store.get(b"a") == KeyValue(b"a", b"3", mod_revision=r + 3, version=2)
        assert await store.get(b"b") == KeyValue(b"b", b"2", mod_revision=r + 2, version=1)
        assert await store.revision() == r + 3
        # Deleting resets the version: a re-created key starts again at 1.
        assert (await store.txn((), (Delete(b"a"),))).revision == r + 4
        assert await store.get(b"a") is None
        assert await store.put(b"a", b"4") == r + 5
        assert await store.get(b"a") == KeyValue(b"a", b"4", mod_revision=r + 5, version=1)

    backend.run(body)


def test_put_same_value_is_still_a_write(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        await store.put(b"k", b"v")
        await store.put(b"k", b"v")
        assert await store.get(b"k") == KeyValue(b"k", b"v", mod_revision=r + 2, version=2)

    backend.run(body)


def test_binary_keys_and_values(backend: Backend) -> None:
    key, value = bytes(range(256)), b"\x00\xff" * 1000

    async def body(store: MetadataStore) -> None:
        r = await store.put(key, value)
        assert await store.get(key) == KeyValue(key, value, r, 1)
        assert [kv.key for kv in await store.range(b"\x00\x01")] == [key]

    backend.run(body)


def test_empty_value_is_allowed_but_empty_key_is_not(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.put(b"k", b"")
        assert await store.get(b"k") == KeyValue(b"k", b"", r, 1)
        with pytest.raises(ValueError):
            await store.put(b"", b"v")
        assert await store.revision() == r
        assert await store.get(b"") is None

    backend.run(body)


def test_keys_and_values_must_be_bytes(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        with pytest.raises(TypeError):
            await store.put("k", b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.put(b"k", "v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.txn((), (object(),))  # type: ignore[arg-type]
        assert await store.revision() == r

    backend.run(body)


# -- range ---------------------------------------------------------------------------------


def test_prefix_end() -> None:
    assert prefix_end(b"abc") == b"abd"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None
    assert prefix_end(b"\x00") == b"\x01"


def test_range_by_prefix(backend: Backend) -> None:
    keys = [b"/t/a", b"/t/a/0", b"/t/a/1", b"/t/b", b"/t/ab", b"/u", b"/t", b"/s/z"]

    async def body(store: MetadataStore) -> None:
        r = await store.revision()
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
        assert (await store.range(b"/t/b"))[0] == KeyValue(b"/t/b", b"/t/b", r + 4, 1)
        with pytest.raises(ValueError):
            await store.range(b"", limit=-1)

    backend.run(body)


def test_range_prefix_edge_bytes(backend: Backend) -> None:
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

    async def body(store: MetadataStore) -> None:
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
        await store.txn([], [Delete(b"a\xff", prefix=True)])
        assert await keys_under(b"a") == [b"a"]
        await store.txn([], [Delete(b"\xff", prefix=True)])
        assert await keys_under(b"") == [b"\x00", b"a", b"b", b"b\x00"]

    backend.run(body)


def test_range_of_many_keys(backend: Backend) -> None:
    keys = [f"/many/{i:05}".encode() for i in range(1200)]

    async def body(store: MetadataStore) -> None:
        for start in range(0, len(keys), 100):  # etcd: at most 128 operations per txn
            await store.txn([], [Put(key, b"v") for key in keys[start : start + 100]])
        assert [kv.key for kv in await store.range(b"/many/")] == keys
        assert [kv.key for kv in await store.range(b"/many/", limit=1001)] == keys[:1001]

    backend.run(body)


# -- transactions --------------------------------------------------------------------------


async def _seed(store: MetadataStore) -> int:
    """k: mod_revision base+2, version 2, value b"m"; "missing" never exists. Returns base."""
    base = await store.revision()
    await store.put(b"k", b"a")  # base + 1
    await store.put(b"k", b"m")  # base + 2
    await store.put(b"other", b"x")  # base + 3
    return base


# Revisions in these compares are relative to the base revision (added in the test).
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
    # missing key: mod_revision 0, version 0 (absolute: never relative to the base)
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
def test_compare(backend: Backend, compare: Compare, holds: bool) -> None:
    async def body(store: MetadataStore) -> None:
        base = await _seed(store)
        if compare.target == "mod_revision" and compare.key == b"k":
            assert isinstance(compare.value, int)
            actual = Compare(compare.key, compare.target, compare.op, base + compare.value)
        else:
            actual = compare
        result = await store.txn([actual], [Put(b"out", b"success")], [Put(b"out", b"failure")])
        assert result == TxnResult(succeeded=holds, revision=base + 4)
        out = await store.get(b"out")
        assert out is not None and out.value == (b"success" if holds else b"failure")

    backend.run(body)


def test_all_compares_must_hold(backend: Backend) -> None:
    async def body(store: MetadataStore) -> list[bool]:
        await _seed(store)
        both = [Compare(b"k", "version", "==", 2), Compare(b"other", "value", "==", b"x")]
        one_wrong = [Compare(b"k", "version", "==", 2), Compare(b"other", "value", "==", b"y")]
        return [
            (await store.txn(both, [])).succeeded,
            (await store.txn(one_wrong, [])).succeeded,
            (await store.txn([], [])).succeeded,  # no compares: vacuously true
        ]

    assert backend.run(body) == [True, False, True]


def test_txn_branches_apply_atomically(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await _seed(store)
        result = await store.txn(
            [Compare(b"k", "mod_revision", "==", r + 2)],
            [Put(b"k", b"new"), Put(b"a", b"1"), Delete(b"other")],
            [Put(b"failed", b"1")],
        )
        # One revision for the whole branch; every change carries it.
        assert result == TxnResult(True, r + 4)
        assert await store.get(b"k") == KeyValue(b"k", b"new", r + 4, 3)
        assert await store.get(b"a") == KeyValue(b"a", b"1", r + 4, 1)
        assert await store.get(b"other") is None
        assert await store.get(b"failed") is None
        # The same compare is now stale: the failure branch runs instead.
        result = await store.txn(
            [Compare(b"k", "mod_revision", "==", r + 2)],
            [Put(b"k", b"lost update")],
            [Put(b"failed", b"1")],
        )
        assert result == TxnResult(False, r + 5)
        assert (await store.get(b"k")) == KeyValue(b"k", b"new", r + 4, 3)
        assert await store.get(b"failed") == KeyValue(b"failed", b"1", r + 5, 1)

    backend.run(body)


def test_txn_that_changes_nothing_keeps_the_revision(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await _seed(store)
        assert await store.txn([Compare(b"k", "version", "==", 9)], [Put(b"x", b"1")]) == (
            TxnResult(False, r + 3)
        )
        assert await store.txn([], [Delete(b"missing")]) == TxnResult(True, r + 3)
        assert await store.txn([], [Delete(b"nothing/", prefix=True)]) == TxnResult(True, r + 3)
        assert await store.txn([], []) == TxnResult(True, r + 3)

    backend.run(body)


def test_delete_prefix_in_txn(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        for key in (b"/p/1", b"/p/2", b"/p2", b"/q"):
            await store.put(key, b"v")
        assert (await store.txn([], [Delete(b"/p/", prefix=True)])).revision == r + 5
        assert [kv.key for kv in await store.range(b"")] == [b"/p2", b"/q"]
        assert (await store.txn([], [Delete(b"", prefix=True)])).revision == r + 6
        assert await store.range(b"") == []

    backend.run(body)


def test_txn_rejects_etcd_invalid_branches(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await _seed(store)
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
        assert await store.revision() == r + 3
        # Overlapping deletes are fine (etcd allows them) and delete once.
        assert (await store.txn([], [Delete(b"k"), Delete(b"", prefix=True)])).revision == r + 4
        assert await store.range(b"") == []

    backend.run(body)


def test_failed_txn_rolls_back_earlier_ops(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await _seed(store)
        with pytest.raises(LeaseNotFound):
            await store.txn([], [Put(b"k", b"changed"), Put(b"l", b"v", lease=12345)])
        with pytest.raises(LeaseNotFound):
            await store.put(b"l", b"v", lease=12345)
        assert await store.get(b"k") == KeyValue(b"k", b"m", r + 2, 2)
        assert await store.get(b"l") is None
        assert await store.revision() == r + 3

    backend.run(body)


def test_concurrent_compare_and_swap_loses_no_update(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.put(b"counter", b"0")

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
        assert await store.revision() == r + 25

    backend.run(body)


def test_revisions_are_monotonic_under_concurrency(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        revisions = await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(50)))
        assert sorted(revisions) == list(range(r + 1, r + 51))
        assert await store.revision() == r + 50

    backend.run(body)


def test_operations_after_close_raise(backend: Backend) -> None:
    async def body() -> None:
        store = await backend.open()
        await store.put(b"k", b"v")
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreClosed):
            await store.get(b"k")
        with pytest.raises(StoreClosed):
            await store.put(b"k", b"v")
        with pytest.raises(StoreClosed):
            await store.txn([], [Put(b"k", b"v")])
        with pytest.raises(StoreClosed):
            await store.lease_grant(10)
        with pytest.raises(StoreClosed):
            store.watch(b"")

    asyncio.run(body())


# -- leases --------------------------------------------------------------------------------


def test_lease_ids_are_positive_and_unique(backend: Backend) -> None:
    async def body(store: MetadataStore) -> list[int]:
        leases = [await store.lease_grant(10) for _ in range(3)]
        await store.lease_revoke(leases[-1])
        leases += [await store.lease_grant(10) for _ in range(3)]
        return leases

    leases = backend.run(body)
    assert all(lease > 0 for lease in leases)
    assert len(set(leases)) == 6


def test_lease_grant_rejects_bad_ttls(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        for ttl in (0, -1, float("inf"), float("nan")):
            with pytest.raises(ValueError):
                await store.lease_grant(ttl)
            with pytest.raises(ValueError):
                await store.lease_hold(ttl)

    backend.run(body)


def test_keepalive_and_revoke_of_unknown_lease(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        assert await store.lease_keepalive(424242) is False
        await store.lease_revoke(424242)  # a no-op
        assert await store.revision() == r

    backend.run(body)


def test_lease_revoke_deletes_only_its_keys(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        first, second = await store.lease_grant(60), await store.lease_grant(60)
        r = await store.put(b"a", b"1", lease=first)
        await store.put(b"b", b"2", lease=second)
        await store.put(b"c", b"3", lease=first)
        assert await store.get(b"a") == KeyValue(b"a", b"1", r, 1, first)
        watch = store.watch(b"")
        await store.lease_revoke(first)
        assert [kv.key for kv in await store.range(b"")] == [b"b"]
        assert await store.revision() == r + 3  # one revision for both deletes
        assert summary(await take(watch, 2), r) == [
            ("delete", b"a", b"", 3),
            ("delete", b"c", b"", 3),
        ]
        assert await store.lease_keepalive(first) is False
        assert await store.lease_keepalive(second) is True
        with pytest.raises(LeaseNotFound):
            await store.put(b"a", b"again", lease=first)
        # A lease without keys ends without a revision.
        await store.lease_revoke(await store.lease_grant(60))
        assert await store.revision() == r + 3

    backend.run(body)


def test_put_without_lease_detaches_key(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        lease = await store.lease_grant(60)
        await store.put(b"k", b"leased", lease=lease)
        r = await store.put(b"k", b"mine now")  # etcd: a put without a lease detaches the key
        await store.lease_revoke(lease)
        assert await store.get(b"k") == KeyValue(b"k", b"mine now", r, 2, 0)
        assert await store.revision() == r  # the revoke deleted nothing: no revision

    backend.run(body)


def test_lease_expires_without_keepalive(backend: Backend) -> None:
    ttl = backend.ttl

    async def body(store: MetadataStore) -> None:
        loop = asyncio.get_running_loop()
        lease = await store.lease_grant(ttl)
        granted = loop.time()
        r = await store.put(b"/brokers/1", b"alive", lease=lease)
        await store.put(b"/static", b"stays")
        watch = store.watch(b"/brokers/")
        (event,) = await take(watch, 1, timeout=ttl + backend.expiry_slack + 2)
        assert loop.time() - granted >= ttl * 0.9  # not before its TTL
        assert (event.kind, event.kv.key, event.kv.mod_revision) == ("delete", b"/brokers/1", r + 2)
        assert await store.get(b"/brokers/1") is None
        assert await store.get(b"/static") == KeyValue(b"/static", b"stays", r + 1, 1)
        assert await store.lease_keepalive(lease) is False
        with pytest.raises(LeaseNotFound):
            await store.put(b"/brokers/1", b"again", lease=lease)

    backend.run(body)


def test_held_lease_stays_alive_for_several_ttls(backend: Backend) -> None:
    ttl = backend.ttl

    async def body(store: MetadataStore) -> None:
        held = await store.lease_hold(ttl)
        await store.put(b"/owner", b"me", lease=held.id)
        for _ in range(7):  # 3.5 TTLs, checking every half TTL
            await asyncio.sleep(ttl / 2)
            assert held.alive and not held.lost.is_set()
            assert (await store.get(b"/owner")) is not None
        assert await store.lease_keepalive(held.id) is True
        # The holder's deadline trails the last renewal by at most one TTL.
        assert 0 < held.deadline - asyncio.get_running_loop().time() <= ttl
        await held.revoke()
        assert held.lost.is_set() and not held.alive and held.reason == "revoked by its holder"
        assert await store.get(b"/owner") is None

    backend.run(body)


def test_held_lease_lost_when_keepalives_stop(backend: Backend) -> None:
    # The renewing task dies (as if the process stalled): the holder learns that the lease
    # is lost no later than the store expires it, and the store deletes its keys.
    ttl = backend.ttl

    async def body(store: MetadataStore) -> None:
        loop = asyncio.get_running_loop()
        held = await store.lease_hold(ttl)
        await store.put(b"/owner", b"me", lease=held.id)
        await asyncio.sleep(ttl / 2)  # renewed at least once
        assert held.alive
        assert held._task is not None
        held._task.cancel()
        stopped = loop.time()
        await asyncio.wait_for(held.lost.wait(), ttl + 1)
        lost_after = loop.time() - stopped
        assert not held.alive and held.reason is not None and "TTL" in held.reason
        assert lost_after <= ttl + 0.1
        # The key was still there when the holder gave up (it is the safe side) ...
        gone_after = lost_after + await eventually(
            lambda: _absent(store, b"/owner"), ttl + backend.expiry_slack
        )
        # ... and the store deleted it no earlier than the holder's deadline.
        assert gone_after >= lost_after
        assert await store.lease_keepalive(held.id) is False

    backend.run(body)


def test_held_lease_lost_when_revoked_elsewhere(backend: Backend) -> None:
    ttl = backend.ttl

    async def body(store: MetadataStore) -> None:
        held = await store.lease_hold(ttl)
        await store.lease_revoke(held.id)  # e.g. an operator, or another broker taking over
        await asyncio.wait_for(held.lost.wait(), ttl)  # the next renewal finds out
        assert held.reason is not None and "expired" in held.reason
        assert not held.alive

    backend.run(body)


def test_closing_the_store_loses_held_leases(backend: Backend) -> None:
    async def body() -> None:
        store = await backend.open()
        held = await store.lease_hold(60)
        await store.close()
        assert held.lost.is_set() and held.reason == "the metadata store was closed"
        assert held._task is None

    asyncio.run(body())


async def _absent(store: MetadataStore, key: bytes) -> bool:
    return await store.get(key) is None


# -- watch ---------------------------------------------------------------------------------


def test_watch_from_now_sees_later_writes_only(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.put(b"/a/before", b"0")
        watch = store.watch(b"/a/")
        # Written before the first anext, but after watch(): included.
        await store.put(b"/a/1", b"1")
        await store.txn([], [Put(b"/a/2", b"2"), Put(b"/b/x", b"x")])
        await store.txn([], [Delete(b"/a/", prefix=True)])
        events = await take(watch, 5)
        assert summary(events, r) == [
            ("put", b"/a/1", b"1", 1),
            ("put", b"/a/2", b"2", 2),
            ("delete", b"/a/1", b"", 3),
            ("delete", b"/a/2", b"", 3),
            ("delete", b"/a/before", b"", 3),
        ]
        assert events[1].kv == KeyValue(b"/a/2", b"2", r + 2, 1)
        assert events[2].kv.version == 0
        assert await nothing_more(watch)

    backend.run(body)


def test_watch_on_prefix_only_sees_its_keys(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        watch_a = store.watch(b"/a/")
        watch_all = store.watch(b"")
        await store.put(b"/a", b"not under /a/")
        await store.put(b"/ab", b"nor this")
        await store.put(b"/a/x", b"yes")
        await store.put(b"/b/x", b"no")
        assert summary(await take(watch_a, 1), r) == [("put", b"/a/x", b"yes", 3)]
        assert await nothing_more(watch_a)
        assert [e.kv.key for e in await take(watch_all, 4)] == [b"/a", b"/ab", b"/a/x", b"/b/x"]

    backend.run(body)


def test_watch_from_a_past_revision_then_live(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        for i in range(1, 6):
            await store.put(b"/w/k", str(i).encode())
            await store.put(b"/x/k", b"noise")
        # Relative revisions: /w/k at 1,3,5,7,9 ; /x/k at 2,4,6,8,10.
        watch = store.watch(b"/w/", start_revision=r + 3)  # after 3: 5, 7, 9
        await store.put(b"/w/k", b"live")  # 11
        events = await take(watch, 4)
        assert summary(events, r) == [
            ("put", b"/w/k", b"3", 5),
            ("put", b"/w/k", b"4", 7),
            ("put", b"/w/k", b"5", 9),
            ("put", b"/w/k", b"live", 11),
        ]
        assert [e.kv.version for e in events] == [3, 4, 5, 6]
        assert await nothing_more(watch)

    backend.run(body)


def test_watch_start_revision_is_exclusive_and_may_be_in_the_future(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        for i in range(1, 4):
            await store.put(b"k", str(i).encode())
        from_one = store.watch(b"k", start_revision=r + 1)
        assert [e.kv.mod_revision - r for e in await take(from_one, 2)] == [2, 3]
        future = store.watch(b"k", start_revision=r + 5)
        for i in range(4, 8):
            await store.put(b"k", str(i).encode())
        assert [e.kv.mod_revision - r for e in await take(future, 2)] == [6, 7]
        current = store.watch(b"k", start_revision=r + 7)
        assert await nothing_more(current)

    backend.run(body)


def test_watch_big_revisions_from_history(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.put(b"/seed", b"")  # (start_revision 0 would mean "from now")
        keys = [f"/p/{i:03}".encode() for i in range(100)]
        await store.txn([], [Put(key, b"v") for key in keys])  # r + 1: 100 puts
        await store.txn([], [Delete(b"/p/", prefix=True)])  # r + 2: 100 deletes
        events = await take(store.watch(b"/p/", start_revision=r), 200)
        assert [(e.kind, e.kv.key, e.kv.mod_revision - r) for e in events] == [
            ("put", key, 1) for key in keys
        ] + [("delete", key, 2) for key in keys]

    backend.run(body)


def test_many_watchers_each_see_every_event_in_order(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        r = await store.revision()
        watches = [store.watch(b"") for _ in range(5)]
        await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(40)))
        for watch in watches:
            events = await take(watch, 40)
            assert [e.kv.mod_revision - r for e in events] == list(range(1, 41))

    backend.run(body)


def test_closed_watch_stops_receiving(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        watch = store.watch(b"")
        await store.put(b"k", b"1")
        assert len(await take(watch, 1)) == 1
        await watch.aclose()  # type: ignore[attr-defined]
        await store.put(b"k", b"2")
        with pytest.raises(StopAsyncIteration):
            await anext(watch)

    backend.run(body)


def test_closing_the_store_ends_watches(backend: Backend) -> None:
    async def body() -> None:
        store = await backend.open()
        watch = store.watch(b"")
        await store.put(b"k", b"1")
        pending = asyncio.ensure_future(take(watch, 2))
        await asyncio.sleep(0.05)
        await store.close()
        with pytest.raises(StopAsyncIteration):
            await pending

    asyncio.run(body())


def test_watch_rejects_negative_start(backend: Backend) -> None:
    async def body(store: MetadataStore) -> None:
        with pytest.raises(ValueError):
            store.watch(b"", start_revision=-1)

    backend.run(body)
