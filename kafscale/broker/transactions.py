"""The transaction coordinator (KIP-98, KIP-447): one per transactional id, its state in the
metadata store, so a coordinator's death loses nothing.

Keys (values JSON):

- ``/{ns}/txn-owners/{tid}``: ``{"broker"}`` on the coordinator's lease — the transactional
  id's one coordinator, as ``group-owners`` for groups (created only when absent; the broker
  that should coordinate it is the highest rendezvous hash of the id and the live brokers).
- ``/{ns}/transactions/{tid}``: :class:`TxnMeta` — producer id and epoch, timeout, state
  (Kafka's: Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit, CompleteAbort), the
  partitions and groups of the ongoing transaction, when it started. Written only by the
  coordinator, each write a compare-and-swap on its revision *and* on our owner key, so a
  deposed coordinator never writes.
- ``/{ns}/txn-markers/{tid}/{topic}/{p:05d}``: a *marker request* — the decision (commit or
  abort, producer id and epoch) for one partition of a deciding transaction, ``"done"`` once
  the partition's owner wrote the marker (``txn_markers.py``: the marker and the done flag are
  committed in the same metadata transaction).
- ``/{ns}/txn-offsets/{group}/{pid}/{topic}/{p:05d}``: offsets a transaction committed
  (TxnOffsetCommit), invisible to OffsetFetch until the transaction commits.

**Ending a transaction** (EndTxn, or a timeout, or a new InitProducerId fencing the old one):

1. the decision: one metadata transaction puts the state PrepareCommit / PrepareAbort and
   every partition's marker request (a transaction of more than ~120 partitions writes them in
   further transactions, each only where absent, then notes ``markers_written``); the
   client's EndTxn is answered once the transaction completes (or, past a bound, once the
   decision is durable, as Kafka answers);
2. the partitions' owners, who follow the marker requests, append the marker (a control
   batch) and mark the request done in the same commit as the marker;
3. once every request is done (or its topic is gone), one metadata transaction moves the
   transaction's offsets to the group's committed offsets (commit) or drops them (abort),
   deletes the marker requests and puts the state CompleteCommit / CompleteAbort.

A crash anywhere leaves the decision in the store: whichever broker coordinates the id next
(on its next request, or the periodic scan that also aborts timed-out transactions) resumes at
the step it finds. Every step is idempotent: a marker request is written only where absent
and done only once (compared on its revision), offsets are moved only while pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from generated.errors import ErrorCode
from kafscale.broker import failpoints
from kafscale.broker.cluster import BrokerInfo, Cluster, Mirror, _ranked
from kafscale.broker.config import BrokerConfig
from kafscale.broker.log import (
    MAX_ATOMIC_MARKERS,
    MAX_TXN_OPS,
    FlushError,
    LogManager,
    PartitionLog,
)
from kafscale.broker.offsets import CommittedOffset, Offsets
from kafscale.broker.periodic import stop_tasks
from kafscale.broker.producer_ids import ProducerIds
from kafscale.broker.topics import Topics
from kafscale.broker.txn_index import marker_batch
from kafscale.metadata import Compare, Delete, KeyValue, LeaseNotFound, MetadataStore, Put

log = logging.getLogger("kafscale.transactions")

EMPTY, ONGOING = "Empty", "Ongoing"
PREPARE_COMMIT, PREPARE_ABORT = "PrepareCommit", "PrepareAbort"
COMPLETE_COMMIT, COMPLETE_ABORT = "CompleteCommit", "CompleteAbort"
STATES = (EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT, COMPLETE_COMMIT, COMPLETE_ABORT)
"""Kafka's TransactionState names (DescribeTransactions, ListTransactions); Kafka also has
Dead and PrepareEpochFence, which never show here (ids do not expire; a fence is an abort)."""
MAX_EPOCH = 32767
END_WAIT_S = 10.0
"""EndTxn waits this long for the markers before answering (the decision is durable already;
a later AddPartitionsToTxn gets CONCURRENT_TRANSACTIONS until the transaction completes)."""


class TxnError(Exception):
    """A refused transaction request: ``code`` is the Kafka error to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class TxnMeta:
    """One transactional id's committed state."""

    producer_id: int
    epoch: int
    timeout_ms: int
    state: str = EMPTY
    partitions: list[tuple[str, int]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    start_ms: int = -1
    update_ms: int = 0
    markers_written: bool = False
    """Every marker request of the decision is in the store (those missing are done)."""
    prev_producer_id: int = -1
    """The producer id before the epoch ran out (KIP-360: a retried init is recognised)."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "pid": self.producer_id,
                "epoch": self.epoch,
                "timeout_ms": self.timeout_ms,
                "state": self.state,
                "partitions": self.partitions,
                "groups": self.groups,
                "start_ms": self.start_ms,
                "update_ms": self.update_ms,
                "markers_written": self.markers_written,
                "prev_pid": self.prev_producer_id,
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def from_json(data: bytes) -> TxnMeta:
        d = json.loads(data)
        return TxnMeta(
            int(d["pid"]),
            int(d["epoch"]),
            int(d["timeout_ms"]),
            str(d["state"]),
            [(str(t), int(p)) for t, p in d.get("partitions", [])],
            [str(g) for g in d.get("groups", [])],
            int(d.get("start_ms", -1)),
            int(d.get("update_ms", 0)),
            bool(d.get("markers_written", False)),
            int(d.get("prev_pid", -1)),
        )

    @property
    def deciding(self) -> bool:
        return self.state in (PREPARE_COMMIT, PREPARE_ABORT)


class TransactionCoordinator:
    """Coordinates the transactional ids that hash to this broker (see the module doc)."""

    def __init__(
        self,
        config: BrokerConfig,
        meta: MetadataStore,
        cluster: Cluster,
        topics: Topics,
        offsets: Offsets,
        producer_ids: ProducerIds,
        markers: Mirror,
        logs: LogManager | None = None,
    ) -> None:
        self.config = config
        self.meta = meta
        self.cluster = cluster
        self.topics = topics
        self.offsets = offsets
        self.producer_ids = producer_ids
        ns = config.namespace
        self.state_prefix = f"/{ns}/transactions/".encode()
        self.marker_prefix = f"/{ns}/txn-markers/".encode()
        self.pending_prefix = f"/{ns}/txn-offsets/".encode()
        self.owners = Mirror(meta, f"/{ns}/txn-owners/".encode())
        self.logs = logs
        """This broker's partition logs: a transaction all of whose partitions are ours ends
        in one step (:meth:`_end_here`)."""
        self.write_marker: Callable[[bytes, KeyValue], None] = lambda key, kv: None
        """Hands a marker request just written to this broker's marker writer
        (``txn_markers.MarkerWriter.write_now``)."""
        self.markers = markers
        """The marker requests (followed by ``txn_markers.MarkerWriter``): tells us when they
        are done."""
        self.held: dict[str, int] = {}
        """Transactional ids we coordinate: id -> mod_revision of our owner key."""
        self._states: dict[str, tuple[int, bytes, int]] = {}
        """The last state we read or wrote of each id we coordinate: id -> (our owner key's
        revision then, the state, its mod_revision). While we hold the id nobody else writes
        its state, so this saves a store read per request; should it ever be stale, the next
        write's compare of the state's revision fails (NOT_COORDINATOR) as it would anyway."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._completing: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._markers_changed = asyncio.Event()
        self._scanner: asyncio.Task[None] | None = None
        self._closing = False
        self.completed = 0
        """Transactions completed by this broker (metrics, tests)."""
        self.ended_here = 0
        """Of those, the ones ended in one step (:meth:`_end_here`)."""
        self._stepwise: set[str] = set()
        """Ids whose one-step ending failed: their next EndTxn ends in steps."""
        self.timed_out = 0
        """Transactions this broker aborted because they outlived their timeout."""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.owners.start()
        self.cluster.lost_listeners.append(self.held.clear)
        self._scanner = asyncio.create_task(self._run_scan(), name="kafscale-txn-scan")

    async def close(self) -> None:
        self._closing = True
        await stop_tasks([self._scanner, *self._completing.values()])
        await self.owners.close()

    def markers_changed(self) -> None:
        """Called when a marker request changed (the writer's mirror)."""
        self._markers_changed.set()

    # --- keys ------------------------------------------------------------------------------

    def state_key(self, tid: str) -> bytes:
        return self.state_prefix + quote(tid, safe="").encode()

    def marker_key(self, tid: str, topic: str, partition: int) -> bytes:
        return self.marker_prefix + f"{quote(tid, safe='')}/{topic}/{partition:05d}".encode()

    def pending_offsets_prefix(self, group: str, producer_id: int) -> bytes:
        return self.pending_prefix + f"{quote(group, safe='')}/{producer_id}/".encode()

    def _owner_key(self, tid: str) -> bytes:
        return self.owners.prefix + quote(tid, safe="").encode()

    # --- who coordinates -------------------------------------------------------------------

    def coordinator(self, tid: str) -> BrokerInfo | None:
        """The id's coordinator: its current owner, else the broker that should take it."""
        live = self.cluster.live()
        kv = self.owners.get(self._owner_key(tid)[len(self.owners.prefix) :])
        if kv is not None:
            owner = live.get(int(json.loads(kv.value)["broker"]))
            if owner is not None:
                return owner
        # Rendezvous hashing as for groups, keyed apart from them ("txn\0" before the id).
        return live[_ranked(f"txn\0{tid}", list(live))[0]] if live else None

    async def _hold(self, tid: str) -> int:
        """Make sure we coordinate ``tid`` (claiming it when we should and nobody does): our
        owner key's revision (0 standing alone). Raises :class:`TxnError` NOT_COORDINATOR."""
        held = self.held.get(tid)
        if held is not None:
            return held
        if self.cluster.lease == 0:
            return 0  # not started: a broker standing alone coordinates everything
        key = self._owner_key(tid)
        relative = key[len(self.owners.prefix) :]
        kv = self.owners.get(relative)
        if kv is not None:
            if int(json.loads(kv.value)["broker"]) == self.cluster.me and (
                kv.lease == self.cluster.lease
            ):
                self.held[tid] = kv.mod_revision
                return kv.mod_revision
            raise TxnError(ErrorCode.NOT_COORDINATOR, f"{tid!r} is coordinated elsewhere")
        coordinator = self.coordinator(tid)
        if coordinator is None or coordinator.id != self.cluster.me:
            raise TxnError(ErrorCode.NOT_COORDINATOR, f"{tid!r} belongs to another broker")
        value = json.dumps({"broker": self.cluster.me}).encode()
        try:
            result = await self.meta.txn(
                [Compare(key, "version", "==", 0)], [Put(key, value, self.cluster.lease)]
            )
        except LeaseNotFound:
            raise TxnError(ErrorCode.NOT_COORDINATOR, "this broker's lease has ended") from None
        if not result.succeeded:
            raise TxnError(ErrorCode.NOT_COORDINATOR, f"{tid!r} was just claimed elsewhere")
        self.owners.note(relative, KeyValue(key, value, result.revision, 1, self.cluster.lease))
        self.held[tid] = result.revision
        return result.revision

    def _guard(self, tid: str) -> list[Compare]:
        held = self.held.get(tid)
        return [Compare(self._owner_key(tid), "mod_revision", "==", held)] if held else []

    def _lock(self, tid: str) -> asyncio.Lock:
        return self._locks.setdefault(tid, asyncio.Lock())

    # --- state -----------------------------------------------------------------------------

    async def load(self, tid: str, *, fresh: bool = False) -> tuple[TxnMeta | None, int]:
        """The id's committed state and its revision (None, 0 when it has none): the one we
        last wrote while we hold the id, unless ``fresh``."""
        held = self.held.get(tid)
        cached = self._states.get(tid)
        if not fresh and held is not None and cached is not None and cached[0] == held:
            return TxnMeta.from_json(cached[1]), cached[2]
        kv = await self.meta.get(self.state_key(tid))
        if kv is None:
            return None, 0
        self._remember(tid, held, kv.value, kv.mod_revision)
        return TxnMeta.from_json(kv.value), kv.mod_revision

    def _remember(self, tid: str, held: int | None, state: bytes, revision: int) -> None:
        """Cache ``state`` (read or written while our owner key was at ``held``) unless a
        newer one is cached: a read answered after one of our writes must not undo it."""
        if held is None or self.held.get(tid) != held:
            return
        cached = self._states.get(tid)
        if cached is None or cached[0] != held or cached[2] < revision:
            self._states[tid] = (held, state, revision)

    async def _write(
        self,
        tid: str,
        meta: TxnMeta,
        revision: int,
        compares: list[Compare] | None = None,
        ops: list[Put | Delete] | None = None,
    ) -> int:
        """Put ``meta`` (and ``ops``) if the state is still at ``revision`` and we still
        coordinate the id; the new revision. Raises :class:`TxnError` NOT_COORDINATOR."""
        guard, put = self._state_write(tid, meta, revision)
        held = self.held.get(tid)
        result = await self.meta.txn([*guard, *(compares or [])], [put, *(ops or [])])
        state = put.value
        if not result.succeeded:
            self.held.pop(tid, None)
            raise TxnError(ErrorCode.NOT_COORDINATOR, f"{tid!r}: its state moved under us")
        self._remember(tid, held, state, result.revision)
        return result.revision

    def _state_write(self, tid: str, meta: TxnMeta, revision: int) -> tuple[list[Compare], Put]:
        """What writing ``meta`` compares (the state still at ``revision``, our owner key) and
        puts."""
        key = self.state_key(tid)
        meta.update_ms = _now()
        guard = [
            Compare(key, "mod_revision", "==", revision)
            if revision
            else Compare(key, "version", "==", 0),
            *self._guard(tid),
        ]
        return guard, Put(key, meta.to_json())

    # --- requests --------------------------------------------------------------------------

    async def init_producer_id(
        self, tid: str, timeout_ms: int, producer_id: int, epoch: int
    ) -> tuple[int, int]:
        """InitProducerId with a transactional id: (producer id, epoch). A new id gets a
        producer id at epoch 0; a known one the next epoch (fencing every older producer of
        the id), its ongoing transaction aborted first (CONCURRENT_TRANSACTIONS meanwhile: the
        client retries). ``producer_id``/``epoch`` other than -1 (KIP-360) must be the
        current ones. Raises :class:`TxnError`."""
        if not 0 < timeout_ms <= self.config.transaction_max_timeout_ms:
            raise TxnError(
                ErrorCode.INVALID_TRANSACTION_TIMEOUT,
                f"transaction timeout {timeout_ms} ms is not in (0, "
                f"{self.config.transaction_max_timeout_ms}] (transaction.max.timeout.ms)",
            )
        await self._hold(tid)
        async with self._lock(tid):
            meta, revision = await self.load(tid)
            if meta is None:
                meta = TxnMeta(await self.producer_ids.next(), 0, timeout_ms)
                await self._write(tid, meta, 0)
                return meta.producer_id, meta.epoch
            self._refuse_while_deciding(tid, meta)
            if producer_id != -1:
                if producer_id == meta.prev_producer_id and meta.epoch == 0:
                    return meta.producer_id, meta.epoch  # a retry of the init that rolled it
                if producer_id != meta.producer_id or epoch != meta.epoch:
                    raise TxnError(
                        ErrorCode.PRODUCER_FENCED,
                        f"producer {producer_id} epoch {epoch} is not the current one",
                    )
            if meta.state == ONGOING:
                await self._decide(tid, meta, revision, commit=False, fence=True)
                raise TxnError(ErrorCode.CONCURRENT_TRANSACTIONS, "aborting its transaction")
            if meta.epoch + 1 >= MAX_EPOCH:  # the epoch ran out: a new producer id
                meta.prev_producer_id, meta.producer_id = (
                    meta.producer_id,
                    await self.producer_ids.next(),
                )
                meta.epoch = 0
            else:
                meta.epoch += 1
            meta.state, meta.partitions, meta.groups = EMPTY, [], []
            meta.timeout_ms, meta.start_ms = timeout_ms, -1
            await self._write(tid, meta, revision)
            return meta.producer_id, meta.epoch

    def _check(self, tid: str, meta: TxnMeta | None, producer_id: int, epoch: int) -> TxnMeta:
        if meta is None or meta.producer_id != producer_id:
            raise TxnError(
                ErrorCode.INVALID_PRODUCER_ID_MAPPING,
                f"producer {producer_id} is not {tid!r}'s current producer",
            )
        if epoch != meta.epoch:
            raise TxnError(
                ErrorCode.PRODUCER_FENCED,
                f"producer {producer_id} epoch {epoch}: the current epoch is {meta.epoch}",
            )
        return meta

    def _refuse_while_deciding(self, tid: str, meta: TxnMeta) -> None:
        """CONCURRENT_TRANSACTIONS while the last transaction is ending (the client retries);
        its completion is driven on meanwhile."""
        if meta.deciding:
            self._complete_later(tid)
            raise TxnError(ErrorCode.CONCURRENT_TRANSACTIONS, "its last transaction is ending")

    async def add_partitions(
        self, tid: str, producer_id: int, epoch: int, partitions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """AddPartitionsToTxn: the error of each partition (0: added). Raises
        :class:`TxnError` for errors of the whole request."""
        await self._hold(tid)
        unknown = {tp for tp in partitions if not self._exists(*tp)}
        if unknown:
            return {
                tp: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                if tp in unknown
                else ErrorCode.OPERATION_NOT_ATTEMPTED
                for tp in partitions
            }
        async with self._lock(tid):
            loaded, revision = await self.load(tid)
            meta = self._check(tid, loaded, producer_id, epoch)
            self._refuse_while_deciding(tid, meta)
            changed = meta.state != ONGOING
            self._begin(meta)
            new = [tp for tp in dict.fromkeys(partitions) if tp not in meta.partitions]
            if new or changed:
                meta.partitions += new
                if meta.start_ms == -1:
                    meta.start_ms = _now()
                await self._write(tid, meta, revision)
        return dict.fromkeys(partitions, 0)

    async def verify_partitions(
        self, tid: str, producer_id: int, epoch: int, partitions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """AddPartitionsToTxn VerifyOnly (KIP-890): 0 for each partition in the ongoing
        transaction, INVALID_TXN_STATE for the others; nothing is written."""
        await self._hold(tid)
        meta = self._check(tid, (await self.load(tid))[0], producer_id, epoch)
        return {
            tp: 0
            if meta.state == ONGOING and tp in meta.partitions
            else ErrorCode.INVALID_TXN_STATE
            for tp in partitions
        }

    async def add_offsets(self, tid: str, producer_id: int, epoch: int, group: str) -> None:
        """AddOffsetsToTxn: the group's offsets will be committed with the transaction."""
        await self._hold(tid)
        async with self._lock(tid):
            loaded, revision = await self.load(tid)
            meta = self._check(tid, loaded, producer_id, epoch)
            self._refuse_while_deciding(tid, meta)
            started = meta.state == ONGOING
            self._begin(meta)
            if group not in meta.groups or not started:
                if group not in meta.groups:
                    meta.groups.append(group)
                if meta.start_ms == -1:
                    meta.start_ms = _now()
                await self._write(tid, meta, revision)

    @staticmethod
    def _begin(meta: TxnMeta) -> None:
        """A transaction starts with the first partition or group added after the last one
        ended."""
        if meta.state != ONGOING:
            meta.state, meta.partitions, meta.groups, meta.start_ms = ONGOING, [], [], -1

    async def end_txn(self, tid: str, producer_id: int, epoch: int, commit: bool) -> None:
        """EndTxn: decide, then wait (at most :data:`END_WAIT_S`) for the transaction to
        complete. Raises :class:`TxnError`."""
        await self._hold(tid)
        async with self._lock(tid):
            loaded, revision = await self.load(tid)
            meta = self._check(tid, loaded, producer_id, epoch)
            wanted = PREPARE_COMMIT if commit else PREPARE_ABORT
            if meta.state == ONGOING:
                if tid not in self._stepwise and await self._end_here(tid, meta, revision, commit):
                    return
                self._stepwise.discard(tid)
                done = await self._decide(tid, meta, revision, commit=commit, fence=False)
            elif meta.deciding:
                self._complete_later(tid)
                code = (
                    ErrorCode.CONCURRENT_TRANSACTIONS
                    if meta.state == wanted
                    else ErrorCode.INVALID_TXN_STATE
                )
                raise TxnError(code, f"{tid!r} is in state {meta.state}")
            elif meta.state == (COMPLETE_COMMIT if commit else COMPLETE_ABORT):
                return  # a retry of the EndTxn that completed it
            else:
                raise TxnError(
                    ErrorCode.INVALID_TXN_STATE,
                    f"{tid!r} is in state {meta.state}: nothing to "
                    f"{'commit' if commit else 'abort'}",
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), END_WAIT_S)

    def _exists(self, topic: str, partition: int) -> bool:
        known = self.topics.get(topic)
        return known is not None and 0 <= partition < known.partitions

    # --- deciding and completing -------------------------------------------------------------

    async def _decide(
        self, tid: str, meta: TxnMeta, revision: int, *, commit: bool, fence: bool
    ) -> asyncio.Event:
        """Write the decision (the caller holds the id's lock): the state PrepareCommit or
        PrepareAbort and the marker requests; then complete in the background. ``fence``
        (a timeout, or a new producer taking the id over) bumps the epoch first, so the old
        producer's requests are refused from now on (Kafka's PrepareEpochFence). The event
        set once the transaction completed."""
        if fence and meta.epoch + 1 < MAX_EPOCH:
            meta.epoch += 1
        meta.state = PREPARE_COMMIT if commit else PREPARE_ABORT
        meta.partitions = [tp for tp in meta.partitions if self._exists(*tp)]
        requests = self._marker_requests(tid, meta, commit)
        ops: list[Put | Delete] = []
        compares: list[Compare] = []
        meta.markers_written = len(requests) * 2 + 3 <= MAX_TXN_OPS
        if meta.markers_written:
            for key, value in requests:
                compares.append(Compare(key, "version", "==", 0))
                ops.append(Put(key, value))
        done = self._done.setdefault(tid, asyncio.Event())
        done.clear()
        decided = await self._write(tid, meta, revision, compares, ops)
        if meta.markers_written:
            # This broker's marker writer starts at once, not when the watch brings the
            # requests back (the mirror itself is left to the watch: noting a write of ours
            # there could undo a later one the watch already brought).
            for key, value in requests:
                self.write_marker(key, KeyValue(key, value, decided, 1, 0))
        failpoints.hit("after_txn_decision")  # decided, no marker written, nobody answered
        log.info(
            "transaction %r (producer %d epoch %d): %s of %d partitions, %d groups",
            tid,
            meta.producer_id,
            meta.epoch,
            "commit" if commit else "abort",
            len(meta.partitions),
            len(meta.groups),
        )
        self._complete_later(tid)
        return done

    async def _end_here(self, tid: str, meta: TxnMeta, revision: int, commit: bool) -> bool:
        """End the transaction in one step when this broker owns every one of its partitions
        (at most :data:`MAX_ATOMIC_MARKERS`): the markers, the state Complete and the offsets
        go in one flush cycle of markers, committed in one metadata transaction
        (``LogManager.append_markers``), so there is no decision to recover: a crash before
        that commit leaves the transaction ongoing (the client retries EndTxn, or the timeout
        aborts it). Whether it was ended here (False: end it in steps). The caller holds the
        id's lock. Raises :class:`TxnError`."""
        logs = self.logs
        if logs is None or not 0 < len(meta.partitions) <= MAX_ATOMIC_MARKERS:
            return False
        plogs: list[PartitionLog] = []
        for topic, partition in meta.partitions:
            plog = logs.owned(topic, partition)
            if plog is None:
                return False
            plogs.append(plog)
        ops = await self._offset_ops(meta, commit)
        if 4 * len(plogs) + len(ops) + 4 > MAX_TXN_OPS // 2:
            return False  # more than a cycle of markers takes (LogManager)
        groups = list(meta.groups)
        partitions = len(meta.partitions)
        meta.state = COMPLETE_COMMIT if commit else COMPLETE_ABORT
        meta.partitions, meta.groups, meta.markers_written = [], [], False
        guard, put = self._state_write(tid, meta, revision)
        held = self.held.get(tid)
        data = marker_batch(meta.producer_id, meta.epoch, commit, (held or 0) % 2**31)
        try:
            written = await logs.append_markers(
                plogs,
                data,
                meta.producer_id,
                meta.epoch,
                commit,
                guard,
                [put, *ops],
            )
        except FlushError as e:
            # Not ended (or, if the commit's outcome is unknown, perhaps ended): read the
            # state again before anything else, and let the client retry, in steps (should
            # the one step never fit, retrying it would never end).
            self._states.pop(tid, None)
            self._stepwise.add(tid)
            raise TxnError(ErrorCode.NOT_COORDINATOR, f"ending {tid!r} failed: {e}") from None
        self._remember(tid, held, put.value, written)
        self.completed += 1
        self.ended_here += 1
        log.info(
            "transaction %r (producer %d epoch %d): %s of %d partitions, %d groups (one step)",
            tid,
            meta.producer_id,
            meta.epoch,
            "commit" if commit else "abort",
            partitions,
            len(groups),
        )
        if commit:
            self._offsets_visible(groups)
        return True

    def _offsets_visible(self, groups: list[str]) -> None:
        """A commit made the transaction's offsets of ``groups`` visible."""
        for group in groups:
            for listener in self.offsets.listeners:
                listener(group, None)

    def _marker_requests(self, tid: str, meta: TxnMeta, commit: bool) -> list[tuple[bytes, bytes]]:
        value = json.dumps(
            {
                "pid": meta.producer_id,
                "epoch": meta.epoch,
                "commit": commit,
                "coordinator_epoch": self.held.get(tid, 0) % 2**31,
                "done": False,
            }
        ).encode()
        return [(self.marker_key(tid, t, p), value) for t, p in meta.partitions]

    def _complete_later(self, tid: str) -> None:
        task = self._completing.get(tid)
        if task is None or task.done():
            self._completing[tid] = asyncio.create_task(
                self._complete(tid), name=f"kafscale-txn-complete {tid}"
            )

    async def _complete(self, tid: str) -> None:
        """Drive a decided transaction to its end (steps 2 and 3 of the module doc); retried
        while we coordinate the id."""
        while not self._closing:
            try:
                if await self._complete_once(tid):
                    return
            except TxnError as e:
                if e.code == ErrorCode.NOT_COORDINATOR:
                    log.info("transaction %r: no longer its coordinator", tid)
                    return
                log.warning("completing transaction %r: %s", tid, e)
            except Exception:
                log.warning("completing transaction %r failed; retrying", tid, exc_info=True)
            await asyncio.sleep(0.2)

    async def _complete_once(self, tid: str) -> bool:
        """One attempt: whether the transaction is complete (or no longer ours to finish)."""
        await self._hold(tid)
        async with self._lock(tid):
            meta, revision = await self.load(tid)
            if meta is None or not meta.deciding:
                self._finished(tid)
                return True
            commit = meta.state == PREPARE_COMMIT
            if not meta.markers_written:
                await self._write_missing_markers(tid, meta, commit)
                meta.markers_written = True
                revision = await self._write(tid, meta, revision)
        # Wait until every marker is written (each partition's owner does it).
        prefix = self.marker_prefix + f"{quote(tid, safe='')}/".encode()
        while True:
            self._markers_changed.clear()
            waiting = [
                kv
                for kv in self.markers.items.values()
                if kv.key.startswith(prefix) and not self._marker_done(kv, prefix)
            ]
            if not waiting:
                break  # checked against the store below
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._markers_changed.wait(), 1.0)
            if self._closing:
                return True
        async with self._lock(tid):
            meta, revision = await self.load(tid)
            if meta is None or not meta.deciding:
                self._finished(tid)
                return True
            stored = await self.meta.range(prefix)
            if not all(self._marker_done(kv, prefix) for kv in stored):
                return False  # a request written meanwhile: wait again
            ops: list[Put | Delete] = await self._offset_ops(meta, commit)
            ops += [Delete(kv.key) for kv in stored]
            # Every step but the last is idempotent, so big ones go in chunks first.
            while len(ops) + 3 > MAX_TXN_OPS:
                chunk, ops = ops[: MAX_TXN_OPS - 2], ops[MAX_TXN_OPS - 2 :]
                result = await self.meta.txn(self._guard(tid), chunk)
                if not result.succeeded:
                    self.held.pop(tid, None)
                    raise TxnError(ErrorCode.NOT_COORDINATOR, f"{tid!r}: no longer ours")
            failpoints.hit("before_txn_complete")  # every marker written, not yet complete
            groups = list(meta.groups)
            meta.state = COMPLETE_COMMIT if commit else COMPLETE_ABORT
            meta.partitions, meta.groups, meta.markers_written = [], [], False
            await self._write(tid, meta, revision, ops=ops)
            self.completed += 1
            if commit:
                self._offsets_visible(groups)
            self._finished(tid)
            return True

    def _finished(self, tid: str) -> None:
        event = self._done.get(tid)
        if event is not None:
            event.set()

    def _marker_done(self, kv: KeyValue, prefix: bytes) -> bool:
        """A marker request is done once its marker is written, or when its partition no
        longer exists (the topic was deleted: there is nothing left to mark)."""
        try:
            if json.loads(kv.value).get("done"):
                return True
        except ValueError:
            return True
        topic, _, partition = kv.key[len(prefix) :].decode().rpartition("/")
        return not self._exists(topic, int(partition))

    async def _write_missing_markers(self, tid: str, meta: TxnMeta, commit: bool) -> None:
        """The marker requests of a decision too big for one transaction, each written only
        where absent (a request already done is never written again)."""
        for key, value in self._marker_requests(tid, meta, commit):
            await self.meta.txn(
                [Compare(key, "version", "==", 0), *self._guard(tid)], [Put(key, value)]
            )

    async def _offset_ops(self, meta: TxnMeta, commit: bool) -> list[Put | Delete]:
        """The transaction's pending offsets: moved to the groups' committed offsets
        (commit), or dropped (abort)."""
        ops: list[Put | Delete] = []
        for group in meta.groups:
            prefix = self.pending_offsets_prefix(group, meta.producer_id)
            for kv in await self.meta.range(prefix):
                ops.append(Delete(kv.key))
                if commit:
                    topic, _, partition = kv.key[len(prefix) :].decode().rpartition("/")
                    ops.append(Put(self.offsets.key(group, topic, int(partition)), kv.value))
        return ops

    # --- offsets (called by the group's coordinator) -----------------------------------------

    async def stage_offsets(
        self,
        tid: str,
        group: str,
        producer_id: int,
        epoch: int,
        offsets: dict[tuple[str, int], CommittedOffset],
        guard: list[Compare],
    ) -> None:
        """TxnOffsetCommit: keep ``offsets`` pending until the transaction ends, checked
        against the transaction's committed state (the producer's, ongoing, holding the
        group) in the same metadata transaction that writes them, so they can never outlive
        it. Raises :class:`TxnError`."""
        for _ in range(5):
            meta, revision = await self.load(tid)
            meta = self._check(tid, meta, producer_id, epoch)
            if meta.state != ONGOING or group not in meta.groups:
                raise TxnError(
                    ErrorCode.INVALID_TXN_STATE,
                    f"group {group!r} was not added to {tid!r}'s transaction (AddOffsetsToTxn)",
                )
            prefix = self.pending_offsets_prefix(group, producer_id)
            items = list(offsets.items())
            ok = True
            per_txn = MAX_TXN_OPS - 2 - len(guard)
            for start in range(0, len(items), per_txn):
                result = await self.meta.txn(
                    [Compare(self.state_key(tid), "mod_revision", "==", revision), *guard],
                    [
                        Put(prefix + f"{t}/{p:05d}".encode(), c.to_json())
                        for (t, p), c in items[start : start + per_txn]
                    ],
                )
                if not result.succeeded:
                    ok = False
                    break
            if ok:
                return
            if (await self.load(tid, fresh=True))[1] == revision:  # the group key moved
                raise TxnError(ErrorCode.NOT_COORDINATOR, f"group {group!r} moved")
        raise TxnError(ErrorCode.CONCURRENT_TRANSACTIONS, f"{tid!r} kept changing; retry")

    async def pending_groups(self, group: str) -> set[tuple[str, int]]:
        """The partitions with offsets of ``group`` pending in a transaction (OffsetFetch's
        RequireStable answers UNSTABLE_OFFSET_COMMIT for them)."""
        prefix = self.pending_prefix + f"{quote(group, safe='')}/".encode()
        out: set[tuple[str, int]] = set()
        for kv in await self.meta.range(prefix):
            rest = kv.key[len(prefix) :].decode().split("/", 1)[-1]
            topic, _, partition = rest.rpartition("/")
            out.add((topic, int(partition)))
        return out

    # --- produce verification ------------------------------------------------------------------

    async def verify(
        self, tid: str, producer_id: int, epoch: int, topic: str, partition: int
    ) -> None:
        """A transactional producer's first batch in a partition: its transaction must be
        ongoing with the partition added (else the batch could open a transaction nobody
        ends). Raises :class:`FlushError`."""
        meta, _ = await self.load(tid)
        if meta is None or meta.producer_id != producer_id:
            raise FlushError(
                ErrorCode.INVALID_PRODUCER_ID_MAPPING, f"producer {producer_id} is not {tid!r}'s"
            )
        if epoch < meta.epoch:
            raise FlushError(ErrorCode.INVALID_PRODUCER_EPOCH, f"epoch {epoch} < {meta.epoch}")
        if (
            meta.state != ONGOING
            or (topic, partition) not in meta.partitions
            or epoch != meta.epoch
        ):
            raise FlushError(
                ErrorCode.INVALID_TXN_STATE,
                f"{topic}-{partition} is not in an ongoing transaction of {tid!r}",
            )

    # --- listing ----------------------------------------------------------------------------

    async def describe(self, tid: str) -> TxnMeta:
        """DescribeTransactions of one id. Raises :class:`TxnError` (NOT_COORDINATOR,
        TRANSACTIONAL_ID_NOT_FOUND)."""
        coordinator = self.coordinator(tid)
        if coordinator is None or coordinator.id != self.cluster.me:
            raise TxnError(ErrorCode.NOT_COORDINATOR, f"{tid!r} belongs to another broker")
        meta, _ = await self.load(tid)
        if meta is None:
            raise TxnError(ErrorCode.TRANSACTIONAL_ID_NOT_FOUND, f"{tid!r} is unknown")
        return meta

    async def list_mine(self) -> list[tuple[str, TxnMeta]]:
        """Every transactional id this broker coordinates (or should), with its state."""
        out = []
        for kv in await self.meta.range(self.state_prefix):
            tid = unquote(kv.key[len(self.state_prefix) :].decode())
            coordinator = self.coordinator(tid)
            if coordinator is not None and coordinator.id == self.cluster.me:
                with contextlib.suppress(ValueError, KeyError):
                    out.append((tid, TxnMeta.from_json(kv.value)))
        return out

    # --- timeouts and takeovers ---------------------------------------------------------------

    async def _run_scan(self) -> None:
        interval = self.config.transaction_cleanup_interval_ms / 1000
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                await self.scan()
            except Exception:
                log.warning("transaction scan failed", exc_info=True)

    async def scan(self) -> None:
        """Abort the transactions we coordinate that outlived their timeout (fencing their
        producer's epoch), and finish the decided ones (a takeover after a crash)."""
        now = _now()
        for tid, meta in await self.list_mine():
            if meta.deciding:
                task = self._completing.get(tid)
                if task is None or task.done():
                    with contextlib.suppress(TxnError):
                        await self._hold(tid)
                        self._complete_later(tid)
            elif meta.state == ONGOING and meta.start_ms >= 0:
                if now - meta.start_ms > meta.timeout_ms:
                    with contextlib.suppress(TxnError):
                        await self._abort_timed_out(tid)

    async def _abort_timed_out(self, tid: str) -> None:
        await self._hold(tid)
        async with self._lock(tid):
            meta, revision = await self.load(tid)
            if meta is None or meta.state != ONGOING:
                return
            if _now() - meta.start_ms <= meta.timeout_ms:
                return
            log.info("transaction %r timed out after %d ms: aborting", tid, meta.timeout_ms)
            self.timed_out += 1
            await self._decide(tid, meta, revision, commit=False, fence=True)


def _now() -> int:
    return int(time.time() * 1000)


def answer_code(code: int, version: int, fenced_since: int) -> int:
    """The error to answer at ``version``: PRODUCER_FENCED (KIP-588) only from
    ``fenced_since``, INVALID_PRODUCER_EPOCH before, as Kafka's KafkaApis maps it."""
    if code == ErrorCode.PRODUCER_FENCED and version < fenced_since:
        return ErrorCode.INVALID_PRODUCER_EPOCH
    return code
