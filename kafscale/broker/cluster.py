"""Brokers of one cluster, and who owns what: membership through a metadata-store lease,
partition ownership (read here, claimed by the log manager), group coordination.

Keys (values JSON; every one attached to its broker's lease, so it vanishes when the broker
dies or drains):

- ``/{ns}/brokers/{id}``: ``{"host", "port"}`` (and ``"http"``, its HTTP port's ``host:port``,
  when it has one) — a live broker.
- ``/{ns}/owners/{topic}/{p:05d}``: ``{"broker", "epoch"}`` — the partition's owner and the
  leader epoch it took the partition at. Only the owner appends to a partition, and every
  commit of new data compares this key's revision, so a deposed owner's commit fails.
- ``/{ns}/group-owners/{group}``: ``{"broker"}`` — the group's one coordinator.

Where things should live is a pure function of the live brokers, so every broker agrees on it
once it sees the same brokers: rendezvous (highest-random-weight) hashing, so that a broker
leaving moves only its own partitions and groups and a broker coming back takes back the same
ones. Partitions additionally have bounded loads (no broker gets more than ceil(partitions /
brokers) of a topic): each takes its highest-scoring broker that still has room. Placement
that reshuffles on every membership change (``hash % n``) moves most partitions twice when one
broker restarts, and clients that see a leader change twice within moments can stay stuck on
the wrong broker (librdkafka issue 4976). The lease-held keys make it safe while brokers
disagree: nobody acts as owner without holding the key, and a key is only created when absent.

With the embedded default (one broker, sqlite) this is the same code with one live broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from generated.errors import ErrorCode
from kafscale.broker.config import BrokerConfig
from kafscale.broker.periodic import stop_task
from kafscale.metadata import (
    Compare,
    HeldLease,
    KeyValue,
    LeaseNotFound,
    MetadataStore,
    Put,
    StoreClosed,
    WatchCompacted,
)

log = logging.getLogger("kafscale.cluster")
CLAIM_SETTLE_S = 1.0
"""After (re)registering, a broker claims no partition for this long (at most half the lease
TTL): long enough to see the brokers that register with it (see ``Cluster.settling``)."""


class NotCoordinator(Exception):
    """This broker does not coordinate the group (NOT_COORDINATOR)."""

    code = ErrorCode.NOT_COORDINATOR


@dataclass(frozen=True)
class BrokerInfo:
    id: int
    host: str
    port: int
    http: str = ""
    """The broker's HTTP port as ``host:port`` ("" when it has none): the console asks each
    broker's ``/readyz`` there."""
    listeners: tuple[tuple[str, str, int], ...] = ()
    """(listener name, advertised host, port) of each listener (empty: one, host:port)."""

    def endpoint(self, listener: str) -> tuple[str, int]:
        """The (host, port) this broker advertises on ``listener`` (a client is told the
        addresses of the listener it connected through, as Kafka does); a broker without
        that listener answers its plain host and port."""
        for name, host, port in self.listeners:
            if name == listener:
                return host, port
        return self.host, self.port


class Mirror:
    """An in-memory copy of every key under a prefix, kept current by a watch (and by our own
    writes, which :meth:`note` applies at once). Keys are relative to the prefix."""

    def __init__(
        self, meta: MetadataStore, prefix: bytes, on_change: Callable[[], None] | None = None
    ) -> None:
        self.meta = meta
        self.prefix = prefix
        self.on_change = on_change
        self.items: dict[bytes, KeyValue] = {}
        self.revision = 0
        self.version = 0
        """Counts the changes applied (a cheap "has anything changed since" for caches)."""
        self.touched: dict[bytes, int] = {}
        """The :attr:`version` at which a key under each group (the key up to its last "/":
        an owner key's topic) last changed; :attr:`reset` covers every group."""
        self.reset = 0
        """The :attr:`version` of the last snapshot (when any key may have changed)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._snapshot()
        self._task = asyncio.create_task(self._follow(), name=f"mirror {self.prefix!r}")

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    def get(self, key: bytes) -> KeyValue | None:
        return self.items.get(key)

    def note(self, key: bytes, kv: KeyValue | None) -> None:
        """Apply a write of ours now (the watch brings it again later, harmlessly). A put
        older than what the mirror holds (the watch was quicker, and brought a later write
        too) changes nothing."""
        if kv is None:
            self.items.pop(key, None)
        else:
            current = self.items.get(key)
            if current is not None and current.mod_revision > kv.mod_revision:
                return
            self.items[key] = kv
        self._touch(key)
        self._changed()

    def group_version(self, group: bytes) -> int:
        """The :attr:`version` at which a key of ``group`` may last have changed."""
        return max(self.touched.get(group, 0), self.reset)

    def _touch(self, key: bytes) -> None:
        self.version += 1
        self.touched[key.rpartition(b"/")[0]] = self.version

    async def _snapshot(self) -> None:
        # Events after this revision are replayed by the watch: applied in order over the
        # snapshot they converge on the current state.
        revision = await self.meta.revision()
        kvs = await self.meta.range(self.prefix)
        self.items = {kv.key[len(self.prefix) :]: kv for kv in kvs}
        self.revision = revision
        self.version += 1
        self.reset = self.version
        self.touched.clear()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _follow(self) -> None:
        while True:
            try:
                async for event in self.meta.watch(self.prefix, self.revision):
                    key = event.kv.key[len(self.prefix) :]
                    if event.kind == "put":
                        current = self.items.get(key)
                        if current is None or current.mod_revision <= event.kv.mod_revision:
                            self.items[key] = event.kv
                    else:
                        current = self.items.get(key)
                        if current is not None and current.mod_revision <= event.kv.mod_revision:
                            del self.items[key]
                    self.revision = max(self.revision, event.kv.mod_revision)
                    self._touch(key)
                    self._changed()
                return  # the store closed the watch
            except StoreClosed:
                return
            except WatchCompacted:
                await self._resnapshot()
            except Exception:  # a store hiccup: start over from a fresh snapshot
                log.warning("watch of %r failed; resubscribing", self.prefix, exc_info=True)
                await asyncio.sleep(0.5)
                await self._resnapshot()

    async def _resnapshot(self) -> None:
        while True:
            try:
                await self._snapshot()
                self._changed()
                return
            except StoreClosed:
                raise
            except Exception:
                log.warning("snapshot of %r failed; retrying", self.prefix, exc_info=True)
                await asyncio.sleep(0.5)


def _score(key: str, broker: int) -> int:
    """The broker's weight for ``key`` (rendezvous hashing): a keyed 64-bit hash, the same on
    every broker and every Python process (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{key}\0{broker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _ranked(key: str, ids: list[int]) -> list[int]:
    return sorted(ids, key=lambda b: (_score(key, b), b), reverse=True)


@functools.lru_cache(maxsize=4096)
def _owner_value(value: bytes) -> tuple[int, int]:
    """(broker id, leader epoch) of an owner key's value. Cached: thousands of partitions
    share a handful of distinct values (one per broker and epoch)."""
    d = json.loads(value)
    return int(d["broker"]), int(d["epoch"])


def placement(topic: str, partitions: int, ids: list[int]) -> list[int]:
    """Each partition's desired owner among ``ids``: in partition order, the highest-ranked
    broker for ``topic/partition`` that has fewer than ceil(partitions / brokers) already."""
    if not ids:
        return []
    cap = math.ceil(partitions / len(ids))
    load = dict.fromkeys(ids, 0)
    out = []
    for p in range(partitions):
        chosen = next(b for b in _ranked(f"{topic}/{p}", ids) if load[b] < cap)
        load[chosen] += 1
        out.append(chosen)
    return out


class Cluster:
    """This broker's membership and view of the cluster."""

    def __init__(self, config: BrokerConfig, meta: MetadataStore) -> None:
        self.config = config
        self.meta = meta
        self.me = config.broker_id
        ns = config.namespace
        self.broker_key = f"/{ns}/brokers/{self.me}".encode()
        self.brokers = Mirror(meta, f"/{ns}/brokers/".encode(), self._changed)
        self.owners = Mirror(meta, f"/{ns}/owners/".encode(), self._changed)
        self.group_owners = Mirror(meta, f"/{ns}/group-owners/".encode())
        self.ns = ns
        self.lease = 0
        self.held: HeldLease | None = None
        self.held_groups: dict[str, int] = {}
        """Groups we coordinate: group -> mod_revision of our owner key (commits compare it)."""
        self.listeners: list[Callable[[], None]] = []
        """Called (synchronously) when brokers or owners change."""
        self.lost_listeners: list[Callable[[], None]] = []
        """Called when our lease is lost: every claim and group we held is gone."""
        self.http_address = ""
        """``host:port`` of this broker's HTTP port, set by the HTTP server once bound (it
        starts before registering): advertised in the registration."""
        self.endpoints: dict[str, tuple[str, int]] = {}
        """Advertised (host, port) per listener name, set by the broker once bound:
        registered as ``"listeners"``."""
        self._keepalive: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._claiming: dict[str, asyncio.Lock] = {}
        self._claims_from = 0.0
        """Loop time before which we claim no partition (see :meth:`settling`)."""
        self._placements: dict[str, tuple[tuple[int, tuple[int, ...]], list[int]]] = {}
        """topic -> ((partitions, live ids), desired owners): recomputed when either changes."""
        self._live: tuple[tuple[tuple[bytes, int], ...], dict[int, BrokerInfo]] | None = None
        """((key, mod revision) of each registration, the live brokers parsed from them)."""

    def settling(self) -> bool:
        """Whether this broker (re)registered moments ago and does not claim partitions yet.

        Brokers that start together, or register again together after an etcd outage cost
        them all their leases, come up moments apart: the first would claim every partition
        and hand most over again a second later. Each partition would change leader twice in
        a moment, and librdkafka can stay stuck on the former leader then (librdkafka issue
        4976). So a broker claims nothing for a short while after registering, by which time
        it sees the others. (A single broker on an exclusive store has nobody to wait for.)"""
        return asyncio.get_running_loop().time() < self._claims_from

    @property
    def lease_ttl(self) -> float:
        return self.config.lease_ttl_ms / 1000

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.brokers.start()
        await self.owners.start()
        await self.group_owners.start()
        await self._register()
        self._keepalive = asyncio.create_task(self._follow_lease(), name="kafscale-lease")

    async def close(self, *, release: bool = True) -> None:
        """Stop; with ``release`` revoke the lease so every key of ours (registration,
        partitions, groups) goes at once and other brokers take over without waiting."""
        if self._keepalive is not None:
            await stop_task(self._keepalive)
            self._keepalive = None
        if self.held is not None:
            if release:
                with contextlib.suppress(Exception):
                    await self.held.revoke()
            self.held = None
            # ``lease`` keeps the ended lease's id: a claim still in flight (a request read
            # before the drain) then fails with LeaseNotFound. Lease 0 would mean no lease:
            # its owner key would outlive this broker and keep the partition or group from
            # everyone, this broker included once restarted.
        for mirror in (self.brokers, self.owners, self.group_owners):
            await mirror.close()

    async def _register(self) -> None:
        host, port = self.config.advertised
        fields: dict[str, object] = {"host": host, "port": port}
        if self.http_address:
            fields["http"] = self.http_address
        if self.endpoints:
            fields["listeners"] = {n: [h, p] for n, (h, p) in self.endpoints.items()}
        info = json.dumps(fields).encode()
        await self._hold_lease()
        waited = 0.0
        while True:
            result = await self.meta.txn(
                [Compare(self.broker_key, "version", "==", 0)],
                [Put(self.broker_key, info, self.lease)],
            )
            if result.succeeded:
                self.brokers.note(
                    self.broker_key[len(self.brokers.prefix) :],
                    KeyValue(self.broker_key, info, result.revision, 1, self.lease),
                )
                self._registered.set()
                log.info("registered as broker %d (lease %x)", self.me, self.lease)
                if not self.meta.exclusive:
                    loop = asyncio.get_running_loop()
                    settle = min(CLAIM_SETTLE_S, self.lease_ttl / 2)
                    self._claims_from = loop.time() + settle
                    loop.call_later(settle, self._changed)  # the ownership round claims then
                return
            existing = await self.meta.get(self.broker_key)
            if existing is None:
                continue
            if self.meta.exclusive:
                # Only one process can open this store, so that registration is a previous
                # run of ours (killed): take its place at once.
                with contextlib.suppress(Exception):
                    await self.meta.lease_revoke(existing.lease)
                continue
            if waited == 0:
                log.warning(
                    "broker id %d is registered by another process (or a previous run whose "
                    "lease has not expired yet): waiting",
                    self.me,
                )
            await asyncio.sleep(0.2)
            waited += 0.2
            if self.held is None or not self.held.alive:
                await self._hold_lease()

    async def _hold_lease(self) -> None:
        """A new lease, kept alive in the background by the store (HeldLease)."""
        self.held = await self.meta.lease_hold(self.lease_ttl)
        self.lease = self.held.id

    async def _follow_lease(self) -> None:
        """When our lease is lost (the store expired it, or no renewal was acknowledged for a
        whole TTL, so it may have), everything we held is gone: tell the listeners at once —
        no partition or group is acted on past that point — then register again with a new
        lease."""
        while True:
            held = self.held
            assert held is not None
            await held.lost.wait()
            if held.reason is not None and "closed" in held.reason:
                return
            log.error(
                "lease %x lost (%s): giving up every partition and group", held.id, held.reason
            )
            self._lose_everything()
            while True:
                try:
                    await self._register()
                    break
                except StoreClosed:
                    return
                except Exception:
                    log.warning("registering again failed; retrying", exc_info=True)
                    await asyncio.sleep(self.lease_ttl / 3)
            self._changed()

    def _lose_everything(self) -> None:
        self.held_groups.clear()
        for listener in self.lost_listeners:
            listener()

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # --- views -----------------------------------------------------------------------------

    def live(self) -> dict[int, BrokerInfo]:
        """Live brokers by id (just this one before :meth:`start`: a broker used without
        the cluster machinery, as unit tests do, stands alone)."""
        if not self._registered.is_set():
            host, port = self.config.advertised
            return {
                self.me: BrokerInfo(
                    self.me,
                    host,
                    port,
                    self.http_address,
                    tuple((n, h, p) for n, (h, p) in self.endpoints.items()),
                )
            }
        # Asked per partition (Metadata, ownership rounds): parsed once per registration.
        registrations = tuple((key, kv.mod_revision) for key, kv in self.brokers.items.items())
        if self._live is not None and self._live[0] == registrations:
            return self._live[1]
        out: dict[int, BrokerInfo] = {}
        for key, kv in self.brokers.items.items():
            try:
                d = json.loads(kv.value)
                http = str(d.get("http", ""))  # absent: a broker without HTTP, or older
                endpoints = tuple(
                    (str(n), str(hp[0]), int(hp[1])) for n, hp in d.get("listeners", {}).items()
                )
                out[int(key)] = BrokerInfo(
                    int(key), str(d["host"]), int(d["port"]), http, endpoints
                )
            except (ValueError, KeyError):
                log.warning("ignoring malformed broker registration %r", kv.key)
        live = dict(sorted(out.items()))
        self._live = (registrations, live)
        return live

    def owner_key(self, topic: str, partition: int) -> bytes:
        return f"/{self.ns}/owners/{topic}/{partition:05d}".encode()

    def owner(self, topic: str, partition: int) -> tuple[int, int] | None:
        """(broker id, leader epoch) of the partition's current owner, if any."""
        kv = self.owners.get(f"{topic}/{partition:05d}".encode())
        return None if kv is None else _owner_value(kv.value)

    async def stored_owners(self, topic: str) -> dict[int, tuple[int, int]]:
        """(broker id, leader epoch) of each owned partition of ``topic``, read from the store
        (the mirror may not have seen a claim that just committed)."""
        prefix = f"/{self.ns}/owners/{topic}/".encode()
        out: dict[int, tuple[int, int]] = {}
        for kv in await self.meta.range(prefix):
            d = json.loads(kv.value)
            out[int(kv.key[len(prefix) :])] = int(d["broker"]), int(d["epoch"])
        return out

    def desired_owner(self, topic: str, partition: int, partitions: int) -> int | None:
        """Where ``partition`` of ``topic`` (of ``partitions``) should live now."""
        owners = self.desired_owners(topic, partitions)
        return owners[partition] if partition < len(owners) else None

    def desired_owners(self, topic: str, partitions: int) -> list[int]:
        """Where each partition of ``topic`` (of ``partitions``) should live now (empty with
        no live broker)."""
        ids = tuple(self.live())
        cache_key = (partitions, ids)
        cached = self._placements.get(topic)
        if cached is None or cached[0] != cache_key:
            cached = (cache_key, placement(topic, partitions, list(ids)))
            self._placements[topic] = cached
        return cached[1]

    def group_key(self, group: str) -> bytes:
        return f"/{self.ns}/group-owners/{quote(group, safe='')}".encode()

    def coordinator(self, group: str) -> BrokerInfo | None:
        """The group's coordinator: its current owner, else the broker that should take it."""
        live = self.live()
        kv = self.group_owners.get(self.group_key(group)[len(self.group_owners.prefix) :])
        if kv is not None:
            owner = live.get(int(json.loads(kv.value)["broker"]))
            if owner is not None:
                return owner
        return live[_ranked(group, list(live))[0]] if live else None

    # --- groups ----------------------------------------------------------------------------

    async def hold_group(self, group: str, *, claim: bool = True) -> int:
        """Make sure this broker coordinates ``group``: the mod_revision of our coordinator
        key. Raises :class:`NotCoordinator`. With ``claim`` (the requests that create group
        state: JoinGroup, OffsetCommit, deletions) the key is created when this broker should
        coordinate the group and nobody does; without (heartbeats, reads), nothing is written
        — a storm of requests for made-up groups must not fill the store — and 0 is returned
        for such an unclaimed group."""
        held = self.held_groups.get(group)
        if held is not None:
            return held
        if not self._registered.is_set():
            return 0  # standing alone (not started): every group is ours, nothing to fence
        lock = self._claiming.setdefault(group, asyncio.Lock())
        try:
            async with lock:
                return await self._hold_group(group, claim)
        finally:
            if not lock.locked() and self._claiming.get(group) is lock:
                del self._claiming[group]

    async def _hold_group(self, group: str, claim: bool) -> int:
        held = self.held_groups.get(group)
        if held is not None:
            return held
        key = self.group_key(group)
        relative = key[len(self.group_owners.prefix) :]
        kv = self.group_owners.get(relative)
        if kv is not None:
            if int(json.loads(kv.value)["broker"]) == self.me and kv.lease == self.lease:
                self.held_groups[group] = kv.mod_revision
                return kv.mod_revision
            raise NotCoordinator(f"group {group!r} is coordinated by another broker")
        coordinator = self.coordinator(group)
        if coordinator is None or coordinator.id != self.me:
            raise NotCoordinator(f"group {group!r} belongs to another broker")
        if not claim:
            return 0
        value = json.dumps({"broker": self.me}).encode()
        try:
            result = await self.meta.txn(
                [Compare(key, "version", "==", 0)], [Put(key, value, self.lease)]
            )
        except LeaseNotFound:  # our lease ended (a drain, or lost): nothing is ours
            raise NotCoordinator(f"group {group!r}: this broker's lease has ended") from None
        if not result.succeeded:
            raise NotCoordinator(f"group {group!r} was just claimed by another broker")
        self.group_owners.note(relative, KeyValue(key, value, result.revision, 1, self.lease))
        self.held_groups[group] = result.revision
        return result.revision

    def group_guard(self, group: str) -> list[Compare]:
        """The compare that fences a write for ``group`` to its current coordinator (us)."""
        held = self.held_groups.get(group)
        if held is None:
            return []
        return [Compare(self.group_key(group), "mod_revision", "==", held)]
