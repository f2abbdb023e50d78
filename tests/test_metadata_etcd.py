"""EtcdMetadataStore beyond the shared contract (test_metadata_contract.py): the retry policy
(a write of unknown outcome is never re-sent), endpoint failover, compaction, several clients
racing compare-and-swaps, and a real 3-member cluster losing its leader, then its quorum.

Every test runs real etcd processes (tests/etcdserver.py); without etcd they fail in CI and
skip locally. The cluster tests print what they measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from kafscale.broker import config as broker_config
from kafscale.metadata import (
    Compare,
    Delete,
    MetadataUnavailable,
    Put,
    StoreClosed,
    TxnOutcomeUnknown,
    WatchCompacted,
    WatchEvent,
)
from kafscale.metadata import etcd as etcd_module
from kafscale.metadata.etcd import EtcdMetadataStore, parse_endpoints
from tests.etcdserver import EtcdCluster, free_ports, require_etcd


@pytest.fixture(scope="module")
def etcd1() -> Iterator[EtcdCluster]:
    with require_etcd(1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd3() -> Iterator[EtcdCluster]:
    with require_etcd(3) as cluster:
        yield cluster


async def fresh(endpoints: str, **kwargs: Any) -> EtcdMetadataStore:
    kwargs.setdefault("request_timeout", 2)
    kwargs.setdefault("retry_timeout", 3)
    store = EtcdMetadataStore(endpoints, **kwargs)
    await store.txn((), (Delete(b"", prefix=True),))
    return store


async def take(it: AsyncIterator[WatchEvent], n: int, timeout: float = 5.0) -> list[WatchEvent]:
    async def collect() -> list[WatchEvent]:
        return [await anext(it) for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout)


async def nothing_more(it: AsyncIterator[WatchEvent], wait: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(anext(it), wait)
    except TimeoutError:
        return True
    return False


def rpc_error(code: Any, details: str) -> Any:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class Flaky:
    """A stub wrapper: the first calls of ``method`` raise the given errors, without reaching
    the server; later calls go through."""

    def __init__(self, real: Any, method: str, errors: list[Any]) -> None:
        self.real = real
        self.method = method
        self.errors = errors
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.real, name)
        if name != self.method:
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            return await real(*args, **kwargs)

        return call


# -- configuration -------------------------------------------------------------------------


def test_parse_endpoints() -> None:
    assert parse_endpoints("127.0.0.1:2379") == [("127.0.0.1", 2379)]
    assert parse_endpoints(" a:1, http://b:2/ ,") == [("a", 1), ("b", 2)]
    assert parse_endpoints(["[::1]:2379"]) == [("[::1]", 2379)]
    for bad in ("", "a", "a:", ":1", "a:x", "a:0", "a:70000", "https://a:1"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_etcd_option() -> None:
    parser = argparse.ArgumentParser()
    broker_config.add_arguments(parser)
    assert broker_config.load(parser.parse_args([]), {}).etcd_endpoints == ""
    args = parser.parse_args(["--etcd", "a:1,b:2"])
    assert broker_config.load(args, {"KAFSCALE_ETCD": "c:3"}).etcd_endpoints == "a:1,b:2"
    assert broker_config.load(None, {"KAFSCALE_ETCD": "c:3"}).etcd_endpoints == "c:3"


# -- retry policy --------------------------------------------------------------------------

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NOT_APPLIED = [
    (UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused"),
    (UNAVAILABLE, "etcdserver: no leader"),
    (grpc.StatusCode.UNKNOWN, "raft proposal dropped"),
    (UNAVAILABLE, "etcdserver: too many requests"),
]
MAYBE_APPLIED = [
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    (UNAVAILABLE, "etcdserver: request timed out"),
    (UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure"),
    (UNAVAILABLE, "Socket closed"),
    (UNAVAILABLE, "recvmsg:Connection reset by peer"),
    (grpc.StatusCode.UNKNOWN, "etcdserver: leader changed"),
]


@pytest.mark.parametrize(("code", "details"), NOT_APPLIED)
def test_write_that_certainly_did_not_apply_is_retried(
    etcd1: EtcdCluster, code: Any, details: str
) -> None:
    async def body() -> None:
        store = await fresh(etcd1.endpoints)
        _, endpoint = store._endpoint()
        endpoint.kv = flaky = Flaky(endpoint.kv, "Txn", [rpc_error(code, details)] * 2)
        result = await store.txn([Compare(b"k", "version", "==", 0)], [Put(b"k", b"v")])
        assert result.succeeded and flaky.calls == 3
        kv = await store.get(b"k")
        assert kv is not None and kv.version == 1
        await store.close()

    asyncio.run(body())


@pytest.mark.parametrize(("code", "details"), MAYBE_APPLIED)
def test_write_of_unknown_outcome_is_not_resent(
    etcd1: EtcdCluster, code: Any, details: str
) -> None:
    async def body() -> None:
        store = await fresh(etcd1.endpoints)
        _, endpoint = store._endpoint()
        endpoint.kv = flaky = Flaky(endpoint.kv, "Put", [rpc_error(code, details)])
        with pytest.raises(TxnOutcomeUnknown) as info:
            await store.put(b"k", b"v")
        assert info.value.outcome_unknown and isinstance(info.value, MetadataUnavailable)
        assert flaky.calls == 1  # sent once, never again
        assert await store.get(b"k") is None  # (this fake never reached the server)
        # Reads with the same errors are retried: they change nothing.
        endpoint.kv = flaky = Flaky(endpoint.kv.real, "Range", [rpc_error(code, details)] * 2)
        assert await store.get(b"k") is None and flaky.calls == 3
        await store.close()

    asyncio.run(body())


def test_rejected_requests_raise_at_once(etcd1: EtcdCluster) -> None:
    async def body() -> None:
        store = await fresh(etcd1.endpoints)
        with pytest.raises(ValueError, match="too many operations"):  # etcd's 128 by default
            await store.txn([], [Put(f"k{i}".encode(), b"") for i in range(129)])
        with pytest.raises(ValueError, match="future revision"):
            await store.compact(await store.revision() + 100)
        assert await store.range(b"") == []
        await store.close()

    asyncio.run(body())


def test_range_reads_pages_at_one_revision(
    etcd1: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcd_module, "RANGE_PAGE", 5)
    keys = [f"/r/{i:02}".encode() for i in range(23)]

    async def body() -> None:
        store = await fresh(etcd1.endpoints)
        other = await fresh(etcd1.endpoints)
        await store.txn([], [Put(key, b"v") for key in keys])
        _, endpoint = store._endpoint()
        real = endpoint.kv
        pages = 0

        class Meddling:
            """Another client writes between the first and second page."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def Range(self, *args: Any, **kwargs: Any) -> Any:
                nonlocal pages
                pages += 1
                response = await real.Range(*args, **kwargs)
                if pages == 1:
                    await other.txn([], [Put(b"/r/99", b"new"), Delete(b"/r/20")])
                return response

        endpoint.kv = Meddling()
        # Five pages, all at the first page's revision: the later write is not seen.
        assert [kv.key for kv in await store.range(b"/r/")] == keys
        assert pages == 5
        endpoint.kv = real
        assert [kv.key for kv in await store.range(b"/r/", limit=12)] == keys[:12]
        assert [kv.key for kv in await store.range(b"/r/")] == [*keys[:20], *keys[21:], b"/r/99"]
        await store.close()
        await other.close()

    asyncio.run(body())


# -- endpoints -----------------------------------------------------------------------------


def test_fails_over_past_a_dead_endpoint(etcd1: EtcdCluster) -> None:
    (dead,) = free_ports(1)

    async def body() -> None:
        store = await fresh(f"127.0.0.1:{dead},{etcd1.endpoints}")
        assert store.current_endpoint == etcd1.endpoints
        assert await store.put(b"k", b"v") > 0
        watch = store.watch(b"k")
        await store.put(b"k", b"w")
        assert [e.kv.value for e in await take(watch, 1)] == [b"w"]
        await store.close()

    asyncio.run(body())


def test_no_reachable_endpoint_is_unavailable_within_the_bound() -> None:
    endpoints = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))

    async def body() -> None:
        store = EtcdMetadataStore(endpoints, request_timeout=0.5, retry_timeout=1)
        loop = asyncio.get_running_loop()
        for operation in (
            store.get(b"k"),
            store.put(b"k", b"v"),
            store.txn([], [Put(b"k", b"v")]),
            store.lease_grant(5),
        ):
            start = loop.time()
            with pytest.raises(MetadataUnavailable) as info:
                await operation
            assert loop.time() - start < 2.0
            # Nothing could be sent, so even the writes certainly did not apply.
            assert not info.value.outcome_unknown
        with pytest.raises(MetadataUnavailable):
            await anext(store.watch(b""))
        await store.close()

    asyncio.run(body())


def test_stalled_member_write_is_reported_unknown_not_resent() -> None:
    # SIGSTOP: the connection stays open and the request is sent, but no answer comes. The
    # write fails after one request timeout (not after the whole retry budget: it is not
    # retried), as of unknown outcome; reads are retried until the budget runs out.
    with require_etcd(1) as cluster:
        (member,) = cluster.members

        async def body() -> None:
            store = await fresh(cluster.endpoints, request_timeout=0.5, retry_timeout=1.5)
            loop = asyncio.get_running_loop()
            # The channel must be up before the pause, or the put could not even be sent
            # (a refused connection is "certainly not applied", not unknown).
            await store.get(b"warm-up")
            member.pause()
            try:
                start = loop.time()
                with pytest.raises(TxnOutcomeUnknown):
                    await store.put(b"k", b"v")
                # One request timeout, not the retry budget (0.5 + 1.5 s): not re-sent.
                assert 0.4 < loop.time() - start < 1.9
                start = loop.time()
                with pytest.raises(MetadataUnavailable) as info:
                    await store.get(b"k")
                assert not isinstance(info.value, TxnOutcomeUnknown)
                assert 1.2 < loop.time() - start < 3.0
                # Closing the store ends a request in flight at once.
                other = EtcdMetadataStore(cluster.endpoints, request_timeout=10)
                pending = asyncio.create_task(other.get(b"k"))
                await asyncio.sleep(0.2)
                start = loop.time()
                await other.close()
                with pytest.raises(StoreClosed):
                    await pending
                assert loop.time() - start < 1
            finally:
                member.resume()
            kv = await store.get(b"k")  # and it serves again
            assert kv is None or kv.value == b"v"  # either outcome was possible
            await store.close()

        asyncio.run(body())


# -- compaction ----------------------------------------------------------------------------


def test_watch_before_compaction_raises_watch_compacted(etcd1: EtcdCluster) -> None:
    async def body() -> None:
        store = await fresh(etcd1.endpoints)
        r = await store.put(b"/c/k", b"1")
        for value in (b"2", b"3", b"4"):  # r+1, r+2, r+3
            await store.put(b"/c/k", value)
        await store.compact(r + 2)  # keeps revision r+2 and later
        await store.compact(r + 2)  # again: nothing to do
        with pytest.raises(WatchCompacted) as info:
            await anext(store.watch(b"/c/", start_revision=r))  # needs r+1: gone
        assert info.value.compact_revision == r + 1
        assert info.value.start_revision == r
        events = await take(store.watch(b"/c/", start_revision=r + 1), 2)
        assert [(e.kv.value, e.kv.mod_revision - r) for e in events] == [(b"3", 2), (b"4", 3)]
        # A live watch ("from now") never needs history.
        watch = store.watch(b"/c/")
        await store.put(b"/c/k", b"5")
        assert [e.kv.value for e in await take(watch, 1)] == [b"5"]
        await store.close()

    asyncio.run(body())


# -- contention ----------------------------------------------------------------------------


def test_compare_and_swap_across_clients_loses_no_update(etcd1: EtcdCluster) -> None:
    clients, per_client = 3, 20

    async def body() -> None:
        stores = [await fresh(etcd1.endpoints) for _ in range(clients)]
        await stores[0].put(b"counter", b"0")

        async def increment(store: EtcdMetadataStore) -> int:
            attempts = 0
            while True:
                attempts += 1
                kv = await store.get(b"counter")
                assert kv is not None
                guard = Compare(b"counter", "mod_revision", "==", kv.mod_revision)
                new = str(int(kv.value) + 1).encode()
                if (await store.txn([guard], [Put(b"counter", new)])).succeeded:
                    return attempts

        attempts = await asyncio.gather(
            *(increment(store) for store in stores for _ in range(per_client))
        )
        kv = await stores[1].get(b"counter")
        assert kv is not None and int(kv.value) == clients * per_client
        assert kv.version == clients * per_client + 1
        assert sum(attempts) > clients * per_client  # they did collide
        for store in stores:
            await store.close()

    asyncio.run(body())


# -- a 3-member cluster --------------------------------------------------------------------


def _restore(cluster: EtcdCluster) -> None:
    cluster.start_all()
    cluster.wait_healthy(30, members=cluster.members)


class Counter:
    """Compare-and-swap increments in a loop, recording each outcome: after any amount of
    failure, ``ok <= counter <= ok + unknown`` (no lost update, nothing invented)."""

    def __init__(self, store: EtcdMetadataStore) -> None:
        self.store = store
        self.ok = self.unknown = self.failed = 0
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            try:
                kv = await self.store.get(b"counter")
                assert kv is not None
                guard = Compare(b"counter", "mod_revision", "==", kv.mod_revision)
                put = Put(b"counter", str(int(kv.value) + 1).encode())
                if (await self.store.txn([guard], [put])).succeeded:
                    self.ok += 1
            except TxnOutcomeUnknown:
                self.unknown += 1
            except MetadataUnavailable:
                self.failed += 1
            await asyncio.sleep(0.005)


def test_killing_the_leader(etcd3: EtcdCluster) -> None:
    leader = etcd3.leader()
    ordered = [leader, *(m for m in etcd3.members if m is not leader)]
    endpoints = ",".join(m.endpoint for m in ordered)  # start on the leader

    async def body() -> float:
        store = await fresh(endpoints, request_timeout=1, retry_timeout=10)
        loop = asyncio.get_running_loop()
        held = await store.lease_hold(5)
        await store.put(b"/owner", b"me", lease=held.id)
        await store.put(b"counter", b"0")
        watch = store.watch(b"/w/")
        for i in range(5):
            await store.put(f"/w/{i:03}".encode(), b"before")
        counter = Counter(store)
        counting = asyncio.create_task(counter.run())
        await asyncio.sleep(0.2)
        assert counter.ok > 0

        leader.kill()
        killed = loop.time()
        i, errors = 5, []
        while True:
            try:
                await store.put(f"/w/{i:03}".encode(), b"after")
                break
            except MetadataUnavailable as e:
                errors.append(type(e).__name__)
            i += 1
            assert loop.time() - killed < 15, "writes did not resume"
        resumed = loop.time() - killed
        for j in range(i + 1, i + 6):
            await store.put(f"/w/{j:03}".encode(), b"later")
        counter.stop = True
        await counting

        assert store.current_endpoint != leader.endpoint
        # The counter: no lost or invented update through the failover.
        kv = await store.get(b"counter")
        assert kv is not None
        assert counter.ok <= int(kv.value) <= counter.ok + counter.unknown
        # The watch moved to another member and resumed: every write exactly once, in order.
        final = sorted(await store.range(b"/w/"), key=lambda kv: kv.mod_revision)
        events = await take(watch, len(final), timeout=10)
        assert [(e.kv.key, e.kv.mod_revision) for e in events] == [
            (kv.key, kv.mod_revision) for kv in final
        ]
        assert await nothing_more(watch)
        # The held lease was renewed through the election (TTL 5 s > the election).
        assert held.alive and await store.get(b"/owner") is not None
        print(
            f"\nleader killed: writes resumed after {resumed:.2f}s ({len(errors)} failed "
            f"writes: {errors}); counter ok={counter.ok} unknown={counter.unknown} "
            f"failed={counter.failed} value={int(kv.value)}"
        )
        await held.revoke()
        await store.close()
        return resumed

    try:
        assert asyncio.run(body()) < 10
    finally:
        _restore(etcd3)


def test_losing_quorum(etcd3: EtcdCluster) -> None:
    leader = etcd3.leader()
    victims = [leader, next(m for m in etcd3.members if m is not leader)]
    request_timeout, retry_timeout, ttl = 1.0, 2.0, 2.0
    bound = request_timeout + retry_timeout + 1.5

    async def body() -> None:
        store = await fresh(
            etcd3.endpoints, request_timeout=request_timeout, retry_timeout=retry_timeout
        )
        loop = asyncio.get_running_loop()
        await store.put(b"/q/before", b"1")
        held = await store.lease_hold(ttl)
        await asyncio.sleep(0.1)

        async def when_lost() -> float:
            await held.lost.wait()
            return loop.time()

        lost_at = asyncio.create_task(when_lost())
        for member in victims:
            member.kill()
        killed = loop.time()
        start = loop.time()
        with pytest.raises(MetadataUnavailable) as put_error:
            await store.put(b"/q/during", b"x")
        put_failed = loop.time() - start
        start = loop.time()
        with pytest.raises(MetadataUnavailable):
            await store.txn([], [Put(b"/q/during2", b"x")])
        txn_failed = loop.time() - start
        start = loop.time()
        with pytest.raises(MetadataUnavailable):
            await store.get(b"/q/before")
        get_failed = loop.time() - start
        assert max(put_failed, txn_failed, get_failed) < bound
        lost_after = await asyncio.wait_for(lost_at, ttl + 1) - killed
        assert held.reason is not None and "TTL" in held.reason and not held.alive
        assert lost_after <= ttl + 0.2

        for member in victims:
            member.start()
        healing = loop.time()
        failures = 0
        while True:
            try:
                await store.put(b"/q/after", b"1")
                break
            except MetadataUnavailable:
                failures += 1
                assert loop.time() - healing < 30, "writes did not come back"
        healed = loop.time() - healing
        before = await store.get(b"/q/before")
        assert before is not None and before.value == b"1"
        if not put_error.value.outcome_unknown:  # "unavailable" promises it did not apply
            assert await store.get(b"/q/during") is None
        print(
            f"\nquorum lost: put failed after {put_failed:.2f}s "
            f"({type(put_error.value).__name__}), txn after {txn_failed:.2f}s, get after "
            f"{get_failed:.2f}s; held lease lost {lost_after:.2f}s after the kill; writes "
            f"back {healed:.2f}s after restarting ({failures} failed attempts)"
        )
        await store.close()

    try:
        asyncio.run(body())
    finally:
        _restore(etcd3)


def test_cluster_fixture_finds_the_leader(etcd3: EtcdCluster) -> None:
    leader = etcd3.leader()
    assert leader.running and leader in etcd3.members
    assert all(member.healthy() for member in etcd3.members)
    started = time.monotonic()
    leader.stop()
    try:
        new_leader = etcd3.leader(timeout=10)
        assert new_leader is not leader and new_leader.running
        assert time.monotonic() - started < 10
    finally:
        _restore(etcd3)


def test_the_janitor_keeps_the_revision_history_short(etcd1: EtcdCluster) -> None:
    """etcd keeps every revision until compacted: the janitor compacts to the revision it saw
    HISTORY_KEEP_S earlier, so a watch from before that is told it was compacted."""
    from kafscale.broker.janitor import HISTORY_KEEP_S, Janitor
    from kafscale.broker.topics import Topics

    async def body() -> None:
        store = await fresh(etcd1.endpoints)
        janitor = Janitor("ns", None, store, Topics(store, "ns"), None, 1000)  # type: ignore[arg-type]
        first = await store.put(b"/ns/k", b"1")
        for value in (b"2", b"3"):
            await store.put(b"/ns/k", value)
        await janitor.compact_history()  # remembers the revision: nothing old enough yet
        await store.put(b"/ns/k", b"4")
        await anext(store.watch(b"/ns/", start_revision=first))  # all history still there
        seen, revision = janitor._revisions[0]
        janitor._revisions[0] = (seen - HISTORY_KEEP_S, revision)  # a minute went by
        await janitor.compact_history()  # compacts to the revision seen a minute ago
        with pytest.raises(WatchCompacted):
            await anext(store.watch(b"/ns/", start_revision=first))
        events = await take(store.watch(b"/ns/", start_revision=revision), 1)
        assert [e.kv.value for e in events] == [b"4"]  # the last minute is kept
        await store.close()

    asyncio.run(body())
