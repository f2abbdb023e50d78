"""Partition logs: pending produce data, the group-commit flusher, and committed reads.

Acked means durable. A produce request's batches wait in their partition's pending list; the
flusher (one task for the broker, woken by a timer or by enough pending bytes) runs flush
cycles. A cycle takes every partition's pending data, assigns offsets (from the committed high
watermark, or right after the partition's previous flush still in flight), packs every
partition's data (a *piece*: a complete KAFS segment) into one shared ingest object and uploads
it (objects per cycle do not grow with the partitions), then commits all its partitions
together: one compare-and-swap metadata transaction per group of partitions that fits etcd's
limits (:data:`MAX_TXN_OPS`), comparing every partition's guard (its state's revision and our
owner key's) and putting every partition's new state (high watermark, idempotent-producer
state), its piece entries (object key and byte range) and the ingest registry entry that names
them (the janitor deletes the object once compaction has moved every partition past its piece:
``compaction.py``, ``janitor.py``). Only then are the waiting requests answered. When a group's
compares fail (one partition's owner or state moved), each partition of it is committed on its
own, so only the deposed one fails (NOT_LEADER_OR_FOLLOWER). A failed upload or commit fails
exactly the requests of that partition's flush with a retriable error and commits nothing; a
commit whose outcome is unknown also makes the log reload before its next flush. So there is
never an offset gap, and nothing is acknowledged before it is durable. Readers only see
committed offsets.

Cycles overlap when ``flush.bytes`` are pending: the next one starts (takes what is pending
and uploads it) as soon as the previous one's uploads are done, while that one still commits
and answers, so the object-store link does not idle during commits (with less pending, a cycle
commits first: see :meth:`LogManager._run_flusher`). Cycles commit in the order they
started, each partition's flushes therefore in offset order, and a partition's flush commits
only right at its high watermark: when one fails, its partition's later flushes in flight fail
with it (their offsets follow its own), and the partition goes on from its high watermark.

Leader epochs: the committed partition state also holds the partition's current leader epoch
and its epoch history (Kafka's leader-epoch checkpoint: the first offset written under each
epoch). Every flushed batch is stamped with the current epoch; :meth:`LogManager.bump_leader_epoch`
starts a new epoch at the high watermark (a takeover), and OffsetForLeaderEpoch, Fetch and
ListOffsets answer from the history kept in memory (no extra metadata read).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from generated.errors import ErrorCode
from generated.storage.segment_index import SegmentIndex
from kafscale.broker import failpoints
from kafscale.broker.cluster import Cluster
from kafscale.broker.config import BrokerConfig
from kafscale.broker.janitor import Janitor
from kafscale.broker.periodic import stop_task
from kafscale.broker.producers import (
    ABORT,
    COMMIT,
    Duplicate,
    ProducerBatch,
    ProducerEntry,
    SequenceError,
    last_sequence,
)
from kafscale.broker.producers import check as check_producer
from kafscale.broker.producers import commit as commit_producers
from kafscale.broker.segment_cache import SegmentCache
from kafscale.broker.topics import Topics
from kafscale.broker.txn_index import assign as assign_aborted
from kafscale.broker.txn_index import last_stable_offset
from kafscale.metadata import Compare, Delete, KeyValue, LeaseNotFound, MetadataStore, Put
from kafscale.protocol.records import (
    BatchInfo,
    CompressedBatchError,
    Record,
    assign_offsets,
    iter_records,
    parse_batches,
)
from kafscale.protocol.wire import Buffer
from kafscale.storage import NotFound, ObjectStore
from kafscale.storage.segment import (
    FOOTER_SIZE,
    HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    build_segment,
    find_position,
    ingest_key,
    parse_index,
    span_for_timestamp,
)

log = logging.getLogger("kafscale.log")

UNDEFINED_EPOCH = -1
"""Kafka's UNDEFINED_EPOCH and UNDEFINED_EPOCH_OFFSET: OffsetForLeaderEpoch's "not known"."""

_BATCH_PREFIX = 12  # base offset int64 + batch length int32
_BATCH_HEAD = 27  # ... + partition leader epoch, magic, crc, attributes, last offset delta
MAX_TXN_OPS = 128
"""Compares and puts of one metadata transaction, counted together (the safe side of etcd's
default ``--max-txn-ops``, which bounds each list): a flush cycle commits its partitions in
transactions of at most this many (about 30 partitions each)."""
INGEST_OBJECT_BYTES = 16 * 1024 * 1024
"""A flush cycle's data goes into ingest objects of at most this many bytes (a partition's
piece is never split; a bigger one gets an object of its own): one object per cycle in the
common case, several uploaded concurrently for a big cycle."""
DROP_PER_TXN = 100
"""Entries one transaction drops at most (below etcd's 128 operations)."""
MAX_TXN_BYTES = 1 << 20
"""Keys and values of one transaction, below etcd's default ``--max-request-bytes`` (1.5 MiB)."""
TXN_FLUSH_DELAY_S = 0.001
"""How long transactional data waits for a flush cycle (instead of ``flush.interval.ms``)."""
MAX_ATOMIC_MARKERS = 16
"""Partitions :meth:`LogManager.append_markers` takes at once: with a transaction's state and
its offsets, well within one metadata transaction (a bigger transaction ends in steps)."""
RELEASES_PER_TXN = MAX_TXN_OPS // 2
"""Partitions handed over in one transaction: a compare and a delete each."""
RELEASES_AT_ONCE = 16
"""Partitions with a loaded log handed over concurrently (each flushes, then commits)."""
READ_CHUNK = 2 * 1024 * 1024
"""Segments not in the cache are read in aligned chunks of this many bytes (one ranged GET
each), and the next chunk is fetched ahead: a consumer catching up reads large objects with a
few large GETs instead of one small GET per Fetch."""
READ_BUDGET_S = 0.5
"""A read stops taking further segments after this long (having taken at least one batch):
many small segments that are not cached cost an object-store read or two each, and one Fetch
reading them all up to its byte limit could outlast the client's request timeout and never
be answered in time. Fewer bytes than asked for is a normal Fetch answer."""


class FlushError(Exception):
    """The data of a produce request could not be made durable (retriable)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def not_owner(topic: str, partition: int, why: str = "") -> FlushError:
    """NOT_LEADER_OR_FOLLOWER (retriable): the client refreshes metadata and goes to the
    owner."""
    return FlushError(
        ErrorCode.NOT_LEADER_OR_FOLLOWER, f"{topic}-{partition}: not owned by this broker{why}"
    )


@dataclass
class Claim:
    """This broker owns a partition: it holds the owner key (``owner_revision`` is that key's
    mod_revision, compared by every commit) since it took the partition at ``epoch``."""

    epoch: int
    owner_key: bytes
    owner_revision: int
    releasing: bool = False
    """Handing the partition over: new appends are refused, pending ones are flushed."""
    empty: bool = False
    """Nothing was ever committed to it (high watermark 0 when claimed): until it is loaded
    (which any request does) there is nothing to compact or retain."""


@dataclass
class SegmentMeta:
    """One committed entry of a partition's log: a KAFS segment (``pos`` 0, an ``.index``
    object beside it) or a *piece*: one flush's data of the partition inside a shared ingest
    object, at ``pos`` (no index: pieces are small, and compaction soon merges them into
    segments)."""

    base: int
    last: int
    size: int
    max_timestamp: int
    key: str
    pos: int = 0
    """Where the segment starts in its object (pieces of an ingest object)."""
    piece: bool = False
    created: int = 0
    """When its first record was written (ms): a segment closes at ``segment.ms`` after it."""
    aborted: list[tuple[int, int, int]] = field(default_factory=list)
    """The aborted transactions whose abort marker it holds: (producer id, first offset,
    marker offset), its part of the aborted-transaction index (``txn_index.py``)."""

    def to_json(self) -> bytes:
        d: dict[str, Any] = {
            "last": self.last,
            "size": self.size,
            "max_ts": self.max_timestamp,
            "key": self.key,
        }
        if self.piece:
            d["pos"] = self.pos
            d["piece"] = 1
        if self.created:
            d["created"] = self.created
        if self.aborted:
            d["aborted"] = self.aborted
        return json.dumps(d).encode()

    @staticmethod
    def from_json(base: int, data: bytes) -> SegmentMeta:
        d = json.loads(data)
        return SegmentMeta(
            base,
            int(d["last"]),
            int(d["size"]),
            int(d["max_ts"]),
            str(d["key"]),
            int(d.get("pos", 0)),
            bool(d.get("piece", 0)),
            int(d.get("created", 0)),
            [(int(p), int(f), int(m)) for p, f, m in d.get("aborted", ())],
        )

    @property
    def cache_key(self) -> str:
        return f"{self.key}#{self.pos}" if self.piece else self.key

    @property
    def index_key(self) -> str | None:
        """Its ``.index`` object (None for a piece)."""
        return None if self.piece else self.key.removesuffix(".kfs") + ".index"

    @property
    def objects(self) -> list[str]:
        """The objects it alone owns (a piece owns none: its ingest object is shared)."""
        return [] if self.piece else [self.key, self.key.removesuffix(".kfs") + ".index"]


@dataclass
class _Pending:
    data: Buffer
    """The request's records as decoded: a view of the request frame, not a copy."""
    batches: list[BatchInfo]
    records: int
    future: asyncio.Future[int]
    producers: list[ProducerBatch] = field(default_factory=list)
    """Its idempotent batches (sequence ranges), in flight until the flush commits them."""
    compares: list[Compare] = field(default_factory=list)
    puts: list[Put | Delete] = field(default_factory=list)
    """Compared and written in the transaction that commits it (a transaction marker: its
    marker request done, in the same transaction as the marker itself)."""
    revision: int = 0
    """The metadata revision that committed it (0 until then)."""


@dataclass(eq=False)
class _Bundle:
    """One coordinator's markers (a partition log and its marker entry each) that commit
    together or not at all."""

    entries: list[tuple[PartitionLog, _Pending]]


@dataclass(eq=False)
class _Flush:
    """One partition's share of a flush cycle: the entries it took, the offsets they get
    (assigned when it was taken: after the partition's previous flush still in flight, else at
    the high watermark), the objects built from them, and how it ended."""

    plog: PartitionLog
    entries: list[_Pending]
    first: int
    end: int
    """The offset after its last record: the high watermark once it commits."""
    epoch: int
    """The leader epoch stamped into its batches (it commits only while still current)."""
    bases: list[int]
    """Each entry's base offset."""
    built: list[tuple[SegmentMeta, Sequence[Buffer], bytes | None]] = field(default_factory=list)
    """(meta, its bytes as the chunks it was uploaded as, its index object or None for a
    piece), once uploaded."""
    failed: bool = False
    """Answered with an error (or aborted because an earlier flush of its partition failed):
    it never commits."""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once committed or failed, its requests answered."""


@dataclass(frozen=True)
class FlushCycle:
    """What one flush cycle did, for ``LogManager.cycle_listeners`` (metrics)."""

    seconds: float
    """From taking the pending data to the end of its commit (or failure)."""
    partitions: int
    objects: int
    """Ingest objects uploaded."""
    bytes: int
    """Record bytes taken (committed or not)."""
    failed: int
    """Partitions whose flush failed (their requests were answered with an error)."""
    committed: dict[str, tuple[int, int]]
    """Topic -> (record bytes, records) committed."""


@dataclass(eq=False)
class _Commit:
    """What committing one uploaded flush takes: its partition's guard, the new state and
    segment entries, and the idempotent-producer state that becomes current with it."""

    flush: _Flush
    compares: list[Compare]
    puts: list[Put | Delete]
    producers: dict[int, ProducerEntry]


@dataclass
class PartitionLog:
    topic: str
    partition: int
    state_key: bytes
    log_start: int = 0
    hw: int = 0
    """High watermark: the next offset; every offset below it is committed."""
    revision: int = 0
    """mod_revision of the state key we last read or wrote (the compare-and-swap guard)."""
    segments: list[SegmentMeta] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    pending_bytes: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by whatever moves the partition state (a flush, DeleteRecords, an epoch bump): one
    CAS at a time on this broker, so they never make each other fail."""
    epoch: int = 0
    """The partition's current leader epoch, stamped into every batch flushed under it."""
    epochs: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    """Epoch history, ascending: (epoch, first offset written under it), as Kafka's
    leader-epoch checkpoint; the last entry is the current epoch."""
    claim: Claim | None = None
    """Our ownership, under which this log was loaded."""
    producers: dict[int, ProducerEntry] = field(default_factory=dict)
    """Committed idempotent-producer state (committed with the data it describes)."""
    pieces_from: int = 0
    """Every piece of this partition's with a base offset below this is no longer part of its
    log (compacted into a segment, or deleted): what lets the janitor delete an ingest object
    once no partition in it needs it."""
    inflight: list[_Flush] = field(default_factory=list)
    """Its flushes taken and not yet committed or failed, in offset order (a flush cycle may
    start while the previous one still commits). Each starts where the previous one ends."""
    txn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by a transactional append from its verification to its place in ``pending``, so
    a producer's pipelined transactional requests keep their order."""
    markers: dict[int, int] = field(default_factory=dict)
    """Transaction markers appended so far, per producer id: a verification that saw its
    producer's count change starts over (the transaction it verified may have ended)."""

    @property
    def lso(self) -> int:
        """The last stable offset: read_committed consumers read below it."""
        return last_stable_offset(self.producers, self.hw)

    @property
    def flushing(self) -> list[_Pending]:
        """Entries of the flushes in progress: still in flight for sequence checks."""
        return [e for f in self.inflight for e in f.entries]

    def epoch_error(self, current_leader_epoch: int) -> int:
        """Kafka's check of a request's CurrentLeaderEpoch against ours: 0 when equal,
        FENCED_LEADER_EPOCH when the client's is older, UNKNOWN_LEADER_EPOCH when newer."""
        if current_leader_epoch < self.epoch:
            return ErrorCode.FENCED_LEADER_EPOCH
        if current_leader_epoch > self.epoch:
            return ErrorCode.UNKNOWN_LEADER_EPOCH
        return 0

    def end_offset_for_epoch(self, requested: int) -> tuple[int, int]:
        """(epoch, end offset) for OffsetForLeaderEpoch, as Kafka's
        ``LeaderEpochFileCache.endOffsetFor``: the current epoch ends at the log end offset
        (our high watermark: nothing above it is visible); an older epoch ends where the first
        later epoch starts, answered with the largest known epoch <= the requested one (or the
        requested one itself when it is below every known epoch, whose data is deleted); -1 or
        an epoch above every known one is (-1, -1)."""
        if requested == UNDEFINED_EPOCH:
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH
        if self.epochs and self.epochs[-1][0] == requested:
            return requested, self.hw
        i = bisect.bisect_right([e for e, _ in self.epochs], requested)
        if i == len(self.epochs):  # no higher epoch
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH
        higher_start = self.epochs[i][1]
        return (self.epochs[i - 1][0] if i > 0 else requested), higher_start

    def epoch_for_offset(self, offset: int) -> int:
        """The epoch the batch holding ``offset`` was written under (Kafka's
        ``epochForOffset``); -1 when before every known epoch."""
        epoch = UNDEFINED_EPOCH
        for e, start in self.epochs:
            if start > offset:
                break
            epoch = e
        return epoch

    def earliest_epoch(self) -> int:
        """The epoch ListOffsets answers with the log start offset (Kafka: the first cached
        epoch, when it starts at or before the log start)."""
        if self.epochs and self.epochs[0][1] <= self.log_start:
            return self.epochs[0][0]
        return UNDEFINED_EPOCH

    def segment_for(self, offset: int) -> SegmentMeta | None:
        """The committed segment holding ``offset`` (or the first one after it)."""
        i = bisect.bisect_right([s.base for s in self.segments], offset) - 1
        if i >= 0 and self.segments[i].last >= offset:
            return self.segments[i]
        i = max(i + 1, 0)
        return self.segments[i] if i < len(self.segments) else None


class LogManager:
    """All partition logs of this broker, and the flusher that makes produce data durable."""

    def __init__(
        self, config: BrokerConfig, objects: ObjectStore, meta: MetadataStore, topics: Topics
    ) -> None:
        self.config = config
        self.objects = objects
        self.meta = meta
        self.topics = topics
        self.logs: dict[tuple[str, int], PartitionLog] = {}
        self.cache = SegmentCache(config.segment_cache_bytes)
        self.indexes: OrderedDict[str, bytes] = OrderedDict()
        self._reading: dict[str, asyncio.Future[bytes]] = {}
        """Object reads in progress by cache key (a read-ahead and a read share one GET)."""
        self.pending_bytes = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        """``flush.bytes`` are pending: the next cycle may start before the last one commits."""
        self._committed = asyncio.Condition()
        self._flusher: asyncio.Task[None] | None = None
        self._last_commit: asyncio.Task[bool] | None = None
        """The commit task of the latest flush cycle (each waits for the one before)."""
        self._soon: asyncio.TimerHandle | None = None
        """A wake-up of the flusher already due for transactional data."""
        self._bundles: list[_Bundle] = []
        """Markers waiting for a cycle of markers (:meth:`append_markers`)."""
        self._marker_cycle: asyncio.Task[bool] | None = None
        """The commit of the last cycle of markers."""
        self._closing = False
        self._load_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._getting: dict[tuple[str, int], int] = {}
        """Callers of :meth:`get` queued on (or holding) a partition's load lock."""
        self.cluster: Cluster | None = None
        """Set by :meth:`attach`; without it this broker owns every partition (unit tests)."""
        self.janitor = Janitor(
            config.namespace,
            objects,
            meta,
            topics,
            None,
            config.log_segment_delete_delay_ms,
            config.lease_ttl_ms,
        )
        """Deletes what is no longer needed (its records are written by our transactions)."""
        self.claims: dict[tuple[str, int], Claim] = {}
        self._ownership_wake = asyncio.Event()
        self._ownership: asyncio.Task[None] | None = None
        self.cycle_listeners: list[Callable[[FlushCycle], None]] = []
        """Called with what each flush cycle did, once it ended (metrics)."""
        self.epochs_started = 0
        """Leader epochs this broker started: partitions claimed, epochs bumped (metrics)."""
        self.verify_txn: Callable[[str, int, int, str, int], Awaitable[None]] | None = None
        """Checks that a transactional producer's first batch in a partition belongs to an
        ongoing transaction that holds the partition (transactional id, producer id, epoch,
        topic, partition); raises :class:`FlushError`. Set by the transaction coordinator."""

    def attach(self, cluster: Cluster) -> None:
        """Own partitions through ``cluster`` (started): claim what should be ours, hand over
        what should move, drop everything if our lease is lost."""
        self.cluster = cluster
        self.janitor.cluster = cluster
        cluster.listeners.append(self._ownership_wake.set)
        cluster.lost_listeners.append(self.lose_all)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._run_flusher(), name="kafscale-flusher")
        if self.cluster is not None:
            self._ownership = asyncio.create_task(self._run_ownership(), name="kafscale-owner")

    async def close(self) -> None:
        """Flush what is pending (its requests are answered), then stop the flusher."""
        self._closing = True
        self._wake.set()
        async with self._committed:  # long polls answer now instead of at their deadline
            self._committed.notify_all()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
        if self._last_commit is not None:  # cycles that release() or flush() started
            await asyncio.wait([self._last_commit])
        if self._ownership is not None:
            await stop_task(self._ownership)
            self._ownership = None

    # --- partition state -------------------------------------------------------------------

    def owned(self, topic: str, partition: int) -> PartitionLog | None:
        """The partition's log if it is loaded, ours and not being handed over (and nobody
        waits to load it), else None."""
        key = (topic, partition)
        plog = self.logs.get(key)
        if (
            plog is not None
            and not self._getting.get(key)
            and (
                plog.claim is None
                or (not plog.claim.releasing and self.claims.get(key) is plog.claim)
            )
        ):
            return plog
        return None

    async def get(self, topic: str, partition: int) -> PartitionLog:
        """The partition's log, loaded from the metadata store on first use. In a cluster
        only the owner has it: raises :class:`FlushError` NOT_LEADER_OR_FOLLOWER elsewhere
        (claiming the partition first when it should be ours and nobody holds it)."""
        plog = self.owned(topic, partition)
        if plog is not None:
            return plog
        key = (topic, partition)
        # Callers queue on the lock in arrival order, and while any is queued a later caller
        # queues too instead of taking the loaded log at once: one connection's produce
        # requests are appended in the order they were sent (Kafka's guarantee), also the first
        # ones for a partition, which wait while it is loaded or claimed.
        self._getting[key] = self._getting.get(key, 0) + 1
        try:
            return await self._get_locked(topic, partition)
        finally:
            self._getting[key] -= 1
            if not self._getting[key]:
                del self._getting[key]

    async def _get_locked(self, topic: str, partition: int) -> PartitionLog:
        key = (topic, partition)
        async with self._load_locks.setdefault(key, asyncio.Lock()):
            claim: Claim | None = None
            if self.cluster is not None:
                claim = self.claims.get(key) or await self._claim(topic, partition)
                if claim.releasing:
                    raise not_owner(topic, partition, " (handing it over)")
            plog = self.logs.get(key)
            if plog is not None and plog.claim is not claim:
                # Loaded under an earlier claim of ours (a hand-over ended while it loaded):
                # its state (high watermark, epochs) is stale. Load it again under this one.
                self.drop(plog, not_owner(topic, partition, " (owned again)"))
                plog = None
            if plog is None:
                plog = await self._load(topic, partition)
                if claim is not None and (
                    claim.epoch != plog.epoch or self.claims.get(key) is not claim
                ):
                    # The state moved after our claim: somebody else owns it now.
                    self.claims.pop(key, None)
                    raise not_owner(topic, partition, " (taken over)")
                plog.claim = claim
                self.logs[key] = plog
        return plog

    # --- ownership -------------------------------------------------------------------------

    async def _claim(self, topic: str, partition: int) -> Claim:
        """Take the partition if it should be ours and nobody owns it (:meth:`_claim_batch`);
        NOT_LEADER_OR_FOLLOWER otherwise."""
        cluster = self.cluster
        assert cluster is not None
        meta_topic = self.topics.get(topic)
        if meta_topic is None or not 0 <= partition < meta_topic.partitions:
            raise FlushError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{partition} does not exist"
            )
        owner = cluster.owner(topic, partition)
        desired = cluster.desired_owner(topic, partition, meta_topic.partitions)
        if owner is not None or desired != cluster.me:
            raise not_owner(topic, partition)
        if cluster.settling():
            raise not_owner(topic, partition, " (just registered: claiming shortly)")
        key = (topic, partition)
        kv = await self.meta.get(self.topics.partition_key(topic, partition))
        claim = (await self._claim_batch({key: kv})).get(key)
        if claim is None:
            raise not_owner(topic, partition, " (claimed by another broker)")
        return claim

    async def _claim_batch(
        self, states: dict[tuple[str, int], KeyValue | None]
    ) -> dict[tuple[str, int], Claim]:
        """Take the partitions of ``states`` (each with its state as read: None for a partition
        never claimed, whose log is empty from offset 0) in one transaction: our owner key (on
        our lease) and the next leader epoch starting at the high watermark, for each, guarded
        by each state's revision (and, for a state never written, by its topic's existence),
        so two claimants can never both win. All or none: the claims won, or {} when another
        broker got there first (or a topic went)."""
        cluster = self.cluster
        assert cluster is not None
        compares: list[Compare] = []
        ops: list[Put | Delete] = []
        taken: list[tuple[tuple[str, int], int, int, bytes, bytes]] = []
        for (topic, partition), kv in states.items():
            state_key = self.topics.partition_key(topic, partition)
            state: dict[str, Any] = (
                json.loads(kv.value) if kv is not None else {"log_start": 0, "hw": 0}
            )
            log_start, hw = int(state["log_start"]), int(state["hw"])
            epoch = int(state.get("epoch", 0)) + 1
            history = [(int(e), int(s)) for e, s in state.get("epochs") or [(epoch - 1, log_start)]]
            epochs = _assign_epoch(history, epoch, hw)
            owner_key = cluster.owner_key(topic, partition)
            value = json.dumps({"broker": cluster.me, "epoch": epoch}).encode()
            compares += [
                Compare(owner_key, "version", "==", 0),
                Compare(state_key, "mod_revision", "==", kv.mod_revision if kv else 0),
            ]
            ops += [
                Put(owner_key, value, cluster.lease),
                Put(state_key, json.dumps({**state, "epoch": epoch, "epochs": epochs}).encode()),
            ]
            taken.append(((topic, partition), hw, epoch, owner_key, value))
        # A state is written by the partition's first claim (a topic of any size is one key):
        # never for a topic that is gone.
        for topic in sorted({t for (t, _), kv in states.items() if kv is None}):
            compares.append(Compare(self.topics.topic_key(topic), "version", ">", 0))
        try:
            result = await self.meta.txn(compares, ops)
        except LeaseNotFound:  # our lease ended while we claimed (a drain, or lost)
            topic, partition = next(iter(states))
            raise not_owner(topic, partition, " (this broker's lease has ended)") from None
        if not result.succeeded:
            return {}
        self.epochs_started += len(taken)
        won: dict[tuple[str, int], Claim] = {}
        for key, hw, epoch, owner_key, value in taken:
            cluster.owners.note(
                owner_key[len(cluster.owners.prefix) :],
                KeyValue(owner_key, value, result.revision, 1, cluster.lease),
            )
            claim = won[key] = Claim(epoch, owner_key, result.revision, empty=hw == 0)
            self.claims[key] = claim
            if len(taken) == 1:
                log.info("%s-%d: owned from offset %d at leader epoch %d", *key, hw, epoch)
        if len(taken) > 1:
            topics = len({topic for (topic, _), *_ in taken})
            log.info("owned %d partitions of %d topics", len(taken), topics)
        return won

    def guard(self, plog: PartitionLog) -> list[Compare]:
        """What every commit to the partition compares: its state is the one we read, and
        (in a cluster) we still own it."""
        guard = [Compare(plog.state_key, "mod_revision", "==", plog.revision)]
        claim = plog.claim
        if claim is not None:
            if self.claims.get((plog.topic, plog.partition)) is not claim:
                raise not_owner(plog.topic, plog.partition, " (no longer)")
            guard.append(Compare(claim.owner_key, "mod_revision", "==", claim.owner_revision))
        return guard

    async def release(self, topic: str, partition: int) -> None:
        """Hand the partition over: refuse new appends, flush what is pending (its requests
        are answered), then delete our owner key so that the broker it should move to can
        claim it at once."""
        key = (topic, partition)
        claim = self.claims.get(key)
        if claim is None or claim.releasing:
            return
        claim.releasing = True
        plog = self.logs.get(key)
        if plog is not None:
            if plog.pending:
                self._start_cycle([plog])
            await self._settle(plog)
        if await self._delete_owner_keys([(key, claim)]):
            log.info("%s-%d: handed over", topic, partition)

    async def release_many(self, keys: list[tuple[str, int]]) -> None:
        """Hand over many partitions (a broker joined, or we drain): those with a log loaded
        one by one (:meth:`release` flushes what is pending first), the idle ones, which have
        nothing to flush, by deleting their owner keys in transactions of many, so handing
        back thousands of partitions is a few dozen round trips."""
        idle: list[tuple[tuple[str, int], Claim]] = []
        loaded: list[tuple[str, int]] = []
        for key in keys:
            claim = self.claims.get(key)
            if claim is None or claim.releasing:
                continue
            lock = self._load_locks.get(key)
            if key in self.logs or self._getting.get(key) or (lock is not None and lock.locked()):
                loaded.append(key)
            else:
                claim.releasing = True  # from here no request loads it (_get_locked)
                idle.append((key, claim))
        room = asyncio.Semaphore(RELEASES_AT_ONCE)

        async def release(key: tuple[str, int]) -> None:
            async with room:
                try:
                    await self.release(*key)
                except Exception:
                    log.warning("handing over %s-%d failed", *key, exc_info=True)

        await asyncio.gather(*map(release, loaded))
        for start in range(0, len(idle), RELEASES_PER_TXN):
            chunk = idle[start : start + RELEASES_PER_TXN]
            try:
                if await self._delete_owner_keys(chunk) and len(chunk) > 1:
                    log.info("handed over %d partitions", len(chunk))
            except Exception:
                log.warning("handing over %d partitions failed", len(chunk), exc_info=True)

    async def _delete_owner_keys(self, claims: list[tuple[tuple[str, int], Claim]]) -> bool:
        """Delete the owner keys of ``claims`` (each marked releasing) in one transaction and
        forget them; a key that moved meanwhile (expired) makes that partition's key absent
        anyway: the others are then deleted one by one. Whether the transaction succeeded."""
        try:
            result = await self.meta.txn(
                [Compare(c.owner_key, "mod_revision", "==", c.owner_revision) for _, c in claims],
                [Delete(c.owner_key) for _, c in claims],
            )
        except Exception:
            # The delete may not have happened (the store unreachable, or the outcome
            # unknown): the owner keys may still be ours, on our live lease, and then nobody
            # else can claim those partitions. Stay their owner; the next ownership round hands
            # them over again (if this delete did apply, that one's compare fails and the key's
            # absence ends the claim).
            for _, claim in claims:
                claim.releasing = False
            raise
        if not result.succeeded and len(claims) > 1:
            for one in claims:
                await self._delete_owner_keys([one])
            return False
        for key, claim in claims:
            if result.succeeded and self.cluster is not None:
                self.cluster.owners.note(claim.owner_key[len(self.cluster.owners.prefix) :], None)
            if self.claims.get(key) is claim:
                del self.claims[key]
            current = self.logs.get(key)
            if current is not None and current.claim is claim:
                # Also a log a request loaded while we were handing over.
                self.drop(current, not_owner(*key, " (handed over)"))
        return result.succeeded

    def lose_all(self) -> None:
        """Our lease is gone, and with it every owner key: stop acting as owner now (pending
        appends fail, retriable; nothing more can commit since the keys' revisions moved)."""
        self.claims.clear()
        for plog in list(self.logs.values()):
            self.drop(plog, not_owner(plog.topic, plog.partition, " (lease lost)"))

    async def _run_ownership(self) -> None:
        """Claim what should be ours and is free, hand over what should move: on every
        change of brokers, owners or topics, and once a second."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ownership_wake.wait(), 1.0)
            self._ownership_wake.clear()
            try:
                await self.rebalance()
            except Exception:
                log.warning("ownership round failed", exc_info=True)

    async def rebalance(self) -> None:
        cluster = self.cluster
        if cluster is None or self._closing:
            return
        me = cluster.me
        for key in [k for k in self.claims if self.topics.get(k[0]) is None]:
            self.claims.pop(key, None)  # the topic was deleted
        free: list[tuple[str, int]] = []
        moving: list[tuple[str, int]] = []
        for topic in list(self.topics.by_name.values()):
            wanted = cluster.desired_owners(topic.name, topic.partitions)
            for partition in range(topic.partitions):
                key = (topic.name, partition)
                want = wanted[partition] if partition < len(wanted) else None
                claim = self.claims.get(key)
                if claim is not None:
                    owner = cluster.owner(topic.name, partition)
                    if owner is None or owner[0] != me:
                        # Our key is gone (expired, or deleted with the topic): not ours.
                        self.claims.pop(key, None)
                        plog = self.logs.get(key)
                        if plog is not None:
                            self.drop(plog, not_owner(topic.name, partition, " (lost)"))
                    elif want != me:
                        moving.append(key)
                elif want == me and cluster.owner(topic.name, partition) is None:
                    free.append(key)
        if moving:
            await self.release_many(moving)
        if free and not cluster.settling():
            await self._claim_free(free)

    async def _claim_free(self, free: list[tuple[str, int]]) -> None:
        """Claim the free partitions that should be ours: their states in one range read (of
        their topic, or of every topic when they span several), then as many per transaction
        as :data:`MAX_TXN_OPS` allows (two compares and two puts each, and a compare of each
        topic a partition is claimed of for the first time), so a takeover of thousands of
        partitions is a few dozen round trips. A transaction that loses a race is retried one
        by one."""
        topics = {topic for topic, _ in free}
        prefix = (
            self.topics.partitions_prefix(next(iter(topics)))
            if len(topics) == 1
            else self.topics.partitions_root
        )
        stored = {kv.key: kv for kv in await self.meta.range(prefix)}
        batch: dict[tuple[str, int], KeyValue | None] = {}
        guarded: set[str] = set()  # topics whose existence the batch compares
        size = ops = 0
        for key in free:
            kv = stored.get(self.topics.partition_key(*key))
            n = 256 + (len(kv.value) if kv is not None else 0)
            more = 4 + (kv is None and key[0] not in guarded)
            if batch and (ops + more > MAX_TXN_OPS or size + n > MAX_TXN_BYTES):
                await self._claim_locked(batch)
                batch, guarded, size, ops = {}, set(), 0, 0
                more = 4 + (kv is None)
            batch[key] = kv
            if kv is None:
                guarded.add(key[0])
            size, ops = size + n, ops + more
        if batch:
            await self._claim_locked(batch)

    async def _claim_locked(self, batch: dict[tuple[str, int], KeyValue | None]) -> None:
        """:meth:`_claim_batch` under the partitions' load locks (a request may be claiming
        one of them right now: those are left to it)."""
        locks = [self._load_locks.setdefault(key, asyncio.Lock()) for key in batch]
        held = [lock for lock in locks if not lock.locked()]
        for lock in held:
            await lock.acquire()
        try:
            mine = {
                key: kv
                for (key, kv), lock in zip(batch.items(), locks, strict=True)
                if lock in held and key not in self.claims
            }
            if mine and not await self._claim_batch(mine) and len(mine) > 1:
                for key in mine:  # someone took some: claim the rest one by one
                    with contextlib.suppress(FlushError):
                        await self._claim(*key)
        except FlushError:
            pass
        finally:
            for lock in held:
                lock.release()

    async def _load(self, topic: str, partition: int) -> PartitionLog:
        state_key = self.topics.partition_key(topic, partition)
        plog = PartitionLog(topic, partition, state_key)
        kv = await self.meta.get(state_key)
        if kv is not None:
            state = json.loads(kv.value)
            plog.log_start, plog.hw, plog.revision = (
                state["log_start"],
                state["hw"],
                kv.mod_revision,
            )
            # States written before leader epochs: epoch 0 from the log start on.
            plog.epoch = int(state.get("epoch", 0))
            history = state.get("epochs")
            plog.epochs = (
                [(int(e), int(s)) for e, s in history]
                if history
                else [(plog.epoch, plog.log_start)]
            )
            plog.producers = {
                int(pid): ProducerEntry.from_json(entry)
                for pid, entry in state.get("producers", {}).items()
            }
            plog.pieces_from = int(state.get("pieces_from", 0))
        prefix = self.topics.segments_prefix(topic, partition)
        for seg in await self.meta.range(prefix):
            plog.segments.append(SegmentMeta.from_json(int(seg.key[len(prefix) :]), seg.value))
        plog.segments.sort(key=lambda s: s.base)
        return plog

    def forget_topic(self, topic: str) -> None:
        for key in [k for k in self.logs if k[0] == topic]:
            self.drop(
                self.logs[key],
                FlushError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic} was deleted"),
            )

    def drop(self, plog: PartitionLog, error: FlushError, *also: _Pending) -> None:
        """Forget a log whose state is stale (reloaded on next use) or gone. Its pending data
        will never be flushed: stop counting it (close() waits for the count to reach 0) and
        fail its requests (and ``also``'s) with ``error``, or they would wait forever."""
        if self.logs.get((plog.topic, plog.partition)) is plog:
            del self.logs[(plog.topic, plog.partition)]
        self.pending_bytes -= plog.pending_bytes
        plog.pending_bytes = 0
        pending, plog.pending = plog.pending, []
        for p in (*also, *pending):
            if not p.future.done():
                p.future.set_exception(error)

    # --- produce ---------------------------------------------------------------------------

    async def append(
        self,
        plog: PartitionLog,
        data: Buffer,
        max_batch_bytes: int,
        transactional_id: str | None = None,
    ) -> int:
        """Validate ``data`` (record batches), wait until it is durable, return its base offset.

        Raises :class:`kafscale.protocol.records.RecordError` (with its Kafka error code) for
        bad batches and :class:`FlushError` when the flush failed.
        """
        batches = parse_batches(data, max_batch_bytes, produce=True)
        if any(b.is_transactional for b in batches):
            # The lock keeps a producer's pipelined requests in order while the first one
            # is verified (uncontended, acquiring it does not yield).
            async with plog.txn_lock:
                offset = await self._append_transactional(plog, data, batches, transactional_id)
            return await offset
        idempotent: list[ProducerBatch] = []
        if any(b.producer_id >= 0 for b in batches):
            duplicate = self._check_producers(plog, batches, idempotent)
            if duplicate is not None:
                return await duplicate
        return await self._enqueue(plog, data, batches, idempotent)

    async def _append_transactional(
        self,
        plog: PartitionLog,
        data: Buffer,
        batches: list[BatchInfo],
        transactional_id: str | None,
    ) -> Awaitable[int]:
        """Append a transactional request (the caller holds ``plog.txn_lock``); an awaitable
        of its base offset. The first batch of a producer's transaction in the partition is
        verified with the coordinator's committed state first (KIP-890's check, here a read
        of the metadata store): a zombie, or a batch arriving after its transaction ended,
        can never open a transaction nobody will end (a "hanging" one would hold the last
        stable offset back for ever)."""
        pid, epoch = batches[0].producer_id, batches[0].producer_epoch
        for _ in range(3):
            entry = plog.producers.get(pid)
            flying = any(
                b.producer_id == pid and b.transactional and b.marker is None
                for e in (*plog.flushing, *plog.pending)
                for b in e.producers
            )
            if (entry is not None and entry.txn_first is not None) or flying:
                break  # its transaction is already open here
            verify = self.verify_txn
            if verify is None:
                raise FlushError(ErrorCode.INVALID_TXN_STATE, "no transaction coordinator")
            if transactional_id is None:
                raise FlushError(
                    ErrorCode.INVALID_TXN_STATE, "a transactional batch without transactional id"
                )
            markers = plog.markers.get(pid, 0)
            await verify(transactional_id, pid, epoch, plog.topic, plog.partition)
            if plog.markers.get(pid, 0) == markers:
                break
        else:
            raise FlushError(ErrorCode.CONCURRENT_TRANSACTIONS, "its transaction is ending")
        if self.logs.get((plog.topic, plog.partition)) is not plog:
            raise not_owner(plog.topic, plog.partition, " (its log was dropped)")
        accepted: list[ProducerBatch] = []
        duplicate = self._check_producers(plog, batches, accepted)
        if duplicate is not None:
            return duplicate
        return self._enqueue(plog, data, batches, accepted)

    def _enqueue(
        self,
        plog: PartitionLog,
        data: Buffer,
        batches: list[BatchInfo],
        producers: list[ProducerBatch],
        compares: list[Compare] | None = None,
        puts: list[Put | Delete] | None = None,
    ) -> asyncio.Future[int]:
        """Add checked batches to the partition's pending data; the future of its base
        offset, set once committed."""
        records = sum(b.last_offset_delta + 1 for b in batches)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        plog.pending.append(
            _Pending(data, batches, records, future, producers, compares or [], puts or [])
        )
        plog.pending_bytes += len(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= self.config.flush_bytes:
            self._full.set()
            self._wake.set()
        elif producers and producers[0].transactional and self._soon is None:
            # A transactional producer waits for these records' acknowledgement before
            # every commit: its throughput is one transaction per round trip, so its data
            # does not wait for flush.interval.ms, only for the rest of its burst (its
            # requests to the other partitions, sent together) to join the same cycle.
            self._soon = asyncio.get_running_loop().call_later(TXN_FLUSH_DELAY_S, self._wake_soon)
        return future

    def _wake_soon(self) -> None:
        self._soon = None
        self._wake.set()

    async def append_marker(
        self,
        plog: PartitionLog,
        data: bytes,
        producer_id: int,
        epoch: int,
        commit: bool,
        compares: list[Compare],
        puts: list[Put | Delete],
    ) -> int:
        """Append a transaction marker (a control batch: ``txn_index.marker_batch``), committed
        together with ``compares`` and ``puts`` (the marker request it answers); its offset.
        The producer's transaction in the partition ends with it (an abort joins the
        aborted-transaction index). Raises :class:`FlushError`."""
        marker = self._marker(plog, producer_id, epoch, commit)
        future = self._enqueue(plog, data, parse_batches(data), [marker], compares, puts)
        self._wake.set()  # a commit waits on it: no need to wait for the flush interval
        return await future

    async def append_markers(
        self,
        plogs: list[PartitionLog],
        data: bytes,
        producer_id: int,
        epoch: int,
        commit: bool,
        compares: list[Compare],
        puts: list[Put | Delete],
    ) -> int:
        """Append one producer's transaction marker (``data``) to each of ``plogs`` (at most
        :data:`MAX_ATOMIC_MARKERS`) in a cycle of markers (:meth:`_start_marker_cycle`: after
        those partitions' pending data, maybe with other such endings), committed in **one**
        metadata transaction together with ``compares`` and ``puts``: all of them or none (a
        coordinator that owns every partition of a transaction decides and completes it in
        that one commit). The commit's revision. Raises :class:`FlushError` (then nothing of
        it was committed, or, for a commit whose outcome is unknown, its partitions
        reload)."""
        if not 0 < len(plogs) <= MAX_ATOMIC_MARKERS:
            raise ValueError(f"{len(plogs)} markers: 1 to {MAX_ATOMIC_MARKERS} at once")
        for plog in plogs:  # all checked before any is counted
            self._check_bundled(plog)
        loop = asyncio.get_running_loop()
        batches = parse_batches(data)
        bundle = _Bundle(
            [
                (
                    plog,
                    _Pending(
                        data,
                        batches,
                        1,
                        loop.create_future(),
                        [self._marker(plog, producer_id, epoch, commit)],
                        compares if i == 0 else [],
                        puts if i == 0 else [],
                    ),
                )
                for i, plog in enumerate(plogs)
            ]
        )
        self._bundles.append(bundle)
        self._start_marker_cycle()
        outcomes = await asyncio.gather(
            *(e.future for _, e in bundle.entries), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return bundle.entries[0][1].revision

    def _check_bundled(self, plog: PartitionLog) -> None:
        if self.logs.get((plog.topic, plog.partition)) is not plog:
            raise not_owner(plog.topic, plog.partition, " (its log was dropped)")
        if plog.claim is not None and plog.claim.releasing:
            raise not_owner(plog.topic, plog.partition, " (handing it over)")

    def _start_marker_cycle(self) -> None:
        """Start a cycle of the waiting bundles (:meth:`append_markers`) unless one is
        in flight (this runs again when it has committed: bundles arriving meanwhile share
        the next one, one upload and one commit for all. Started when the last one had only
        uploaded, cycles of one ending each kept coming, each with its object and commit:
        8 transactional producers made ~0.6 cycles of markers per transaction). A
        cycle takes, for each of its partitions, the pending data first (a batch accepted
        before the marker stays before it) and the markers after, as many bundles as one
        metadata transaction holds with room to spare, and commits them all or none."""
        if self._marker_cycle is not None and not self._marker_cycle.done():
            return
        taken: dict[tuple[str, int], tuple[PartitionLog, list[_Pending]]] = {}
        budget = MAX_TXN_OPS // 2
        while self._bundles:
            bundle = self._bundles[0]
            new = {(p.topic, p.partition) for p, _ in bundle.entries} - taken.keys()
            cost = 4 * len(new) + sum(len(e.compares) + len(e.puts) for _, e in bundle.entries)
            if taken and cost > budget:
                break
            self._bundles.pop(0)
            try:
                for plog, _ in bundle.entries:
                    self._check_bundled(plog)
            except FlushError as error:
                for _, e in bundle.entries:
                    if not e.future.done():
                        e.future.set_exception(error)
                continue
            budget -= cost
            for plog, entry in bundle.entries:
                taken.setdefault((plog.topic, plog.partition), (plog, []))[1].append(entry)
        if not taken:
            return
        flushes = [self._take(plog, markers) for plog, markers in taken.values()]
        self._marker_cycle = self._launch(flushes, atomic=True)[1]
        self._marker_cycle.add_done_callback(lambda _: self._start_marker_cycle())

    @staticmethod
    def _marker(plog: PartitionLog, producer_id: int, epoch: int, commit: bool) -> ProducerBatch:
        """The producer-state entry of a marker about to be appended (it ends the producer's
        transaction in the partition when committed). Counted at once: a first transactional
        batch verified meanwhile is verified again (see :meth:`_append_transactional`)."""
        if plog.claim is not None and plog.claim.releasing:
            raise not_owner(plog.topic, plog.partition, " (handing it over)")
        plog.markers[producer_id] = plog.markers.get(producer_id, 0) + 1
        return ProducerBatch(producer_id, epoch, -1, -1, 1, 0, True, COMMIT if commit else ABORT)

    def _check_producers(
        self, plog: PartitionLog, batches: list[BatchInfo], accepted: list[ProducerBatch]
    ) -> Awaitable[int] | None:
        """Check the idempotent batches of one request (see ``producers.py``), filling
        ``accepted``; for a retry of a batch already accepted, an awaitable of this request's
        base offset as the original was (or will be) written. Raises :class:`FlushError`."""
        delta = 0
        for batch in batches:
            count = batch.last_offset_delta + 1
            if batch.producer_id >= 0:
                candidate = ProducerBatch(
                    batch.producer_id,
                    batch.producer_epoch,
                    batch.base_sequence,
                    last_sequence(batch.base_sequence, count),
                    count,
                    delta,
                    batch.is_transactional,
                )
                in_flight = [
                    (b, e) for e in (*plog.flushing, *plog.pending) for b in e.producers
                ] + [(b, None) for b in accepted]
                try:
                    duplicate = check_producer(plog.producers, in_flight, candidate)
                except SequenceError as e:
                    raise FlushError(e.code, str(e)) from None
                if duplicate is not None:
                    return _answer_duplicate(duplicate, delta)
                accepted.append(candidate)
            delta += count
        return None

    async def _run_flusher(self) -> None:
        """Flush cycles, overlapped when that pays: once a cycle's uploads are done and
        ``flush.bytes`` are already pending again, the next cycle starts (takes what is pending
        and uploads it) while that one still commits and answers, and commits after it; at
        most one cycle commits while another uploads. With less pending, the cycle commits
        and answers first, so that its producers' next requests join the next cycle: a cycle
        costs two objects per partition whatever their size, and with many partitions and
        little data each, splitting what the clients have in flight across two cycles would
        double the objects per byte."""
        interval = self.config.flush_interval_ms / 1000
        committing: asyncio.Task[bool] | None = None
        started = -math.inf
        while True:
            # Cycles start flush.interval.ms apart (or as soon as the last one is done, if it
            # took longer), not flush.interval.ms after the last one ended: data pending waits
            # at most the interval for its cycle.
            wait = interval
            if self.pending_bytes:
                wait = max(0.0, started + interval - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except TimeoutError:
                pass
            self._wake.clear()
            self._full.clear()
            try:
                cycle = self._start_cycle([p for p in self.logs.values() if p.pending])
                if cycle is not None:
                    started = time.monotonic()
                    uploads, commit = cycle
                    await asyncio.wait([uploads])
                    if committing is not None:  # the cycle before this one
                        await asyncio.wait([committing])
                    if not self._full.is_set():
                        # The next cycle starts once this one has committed, or as soon as
                        # flush.bytes are pending. Transactional data does not start it
                        # sooner: what arrives meanwhile shares the next cycle (one upload and
                        # one commit for several producers' transactions, instead of cycles
                        # that each carry one, all paying for their object and commit).
                        woken = asyncio.ensure_future(self._full.wait())
                        await asyncio.wait([commit, woken], return_when=asyncio.FIRST_COMPLETED)
                        woken.cancel()
                    committing = commit
            except Exception:  # the flusher must outlive any one failure
                log.exception("flush failed")
            if self._closing and not self.pending_bytes:
                if committing is not None:
                    await asyncio.wait([committing])
                return

    async def flush(self) -> None:
        """Make every partition's pending data durable (one flush cycle, committed after the
        cycles started before it); wake fetchers."""
        cycle = self._start_cycle([p for p in self.logs.values() if p.pending])
        if cycle is not None:
            await cycle[1]

    def _start_cycle(
        self, plogs: list[PartitionLog]
    ) -> tuple[asyncio.Future[None], asyncio.Task[bool]] | None:
        """Take the pending data of ``plogs`` as one flush cycle: their uploads start now, and
        one task commits them all (in as few metadata transactions as the store takes) once
        they are uploaded and every earlier cycle has committed. (The uploads, that task), or
        None when nothing was pending."""
        flushes = [self._take(p) for p in plogs if p.pending]
        if not flushes:
            return None
        return self._launch(flushes)

    def _launch(
        self, flushes: list[_Flush], *, atomic: bool = False
    ) -> tuple[asyncio.Future[None], asyncio.Task[bool]]:
        """Start a cycle of ``flushes``: their uploads now, their commit after the cycles
        started before (``atomic``: all in one metadata transaction, or none)."""
        started = time.monotonic()
        uploads = asyncio.ensure_future(self._upload(flushes))
        commit = asyncio.create_task(
            self._commit_cycle(flushes, uploads, self._last_commit, atomic),
            name="kafscale-commit",
        )
        self._last_commit = commit
        if self.cycle_listeners:
            commit.add_done_callback(functools.partial(self._cycle_done, flushes, started))
        return uploads, commit

    def _cycle_done(self, flushes: list[_Flush], started: float, _: object) -> None:
        """Tell the cycle listeners what the cycle of ``flushes`` did (it has ended)."""
        committed: dict[str, tuple[int, int]] = {}
        total = failed = 0
        for f in flushes:
            size = sum(len(e.data) for e in f.entries)
            total += size
            if f.failed:
                failed += 1
                continue
            before = committed.get(f.plog.topic, (0, 0))
            records = sum(e.records for e in f.entries)
            committed[f.plog.topic] = (before[0] + size, before[1] + records)
        objects = len({meta.key for f in flushes for meta, _, _ in f.built})
        cycle = FlushCycle(
            time.monotonic() - started, len(flushes), objects, total, failed, committed
        )
        for listener in self.cycle_listeners:
            listener(cycle)

    def _take(self, plog: PartitionLog, markers: list[_Pending] | None = None) -> _Flush:
        """A flush of the partition's pending data (and ``markers`` after it), its offsets
        assigned: right after its previous flush still in flight, else from the high
        watermark."""
        entries, plog.pending = plog.pending, []
        size = sum(len(e.data) for e in entries)
        plog.pending_bytes -= size
        self.pending_bytes -= size
        entries += markers or []
        first = plog.inflight[-1].end if plog.inflight else plog.hw
        bases: list[int] = []
        offset = first
        for e in entries:
            bases.append(offset)
            offset += e.records
        flush = _Flush(plog, entries, first, offset, plog.epoch, bases)
        plog.inflight.append(flush)
        return flush

    def _pieces(self, flush: _Flush) -> list[tuple[SegmentMeta, list[Buffer]]]:
        """The flush's data as KAFS pieces (one per ``segment.bytes`` of data; a lone bigger
        request gets its own), offsets assigned and stamped with its epoch, each as chunks
        (its header and footer around views of the requests' batches: not copied here); their
        keys and positions are set once they are packed into ingest objects."""
        built: list[tuple[SegmentMeta, list[Buffer]]] = []
        offset = flush.first
        now = int(time.time() * 1000)
        for group in _split(flush.entries, self.config.segment_bytes):
            first = offset
            chunks: list[Buffer] = []
            batches: list[BatchInfo] = []
            for e in group:
                assigned = assign_offsets(
                    e.data, e.batches, offset, partition_leader_epoch=flush.epoch
                )
                chunks += assigned.chunks
                batches += assigned.batches
                offset = assigned.next_offset
            # Pieces are read whole (no index): a single index entry is all they need.
            segment = build_segment(first, chunks, batches, now, MAX_SEGMENT_SIZE)
            meta = SegmentMeta(
                first, segment.last_offset, segment.size, segment.max_timestamp, "", 0, True, now
            )
            built.append((meta, segment.chunks))
        if offset != flush.end:
            raise RuntimeError(f"offsets assigned up to {offset}, expected {flush.end}")
        return built

    async def _upload(self, flushes: list[_Flush]) -> None:
        """Upload a cycle's data: every partition's pieces packed into as few ingest objects
        as :data:`INGEST_OBJECT_BYTES` allows (the objects per cycle do not grow with the
        partitions), uploaded concurrently. A failure answers the requests of the flushes in
        that object (and of their partitions' later flushes) with a retriable error."""
        packs: list[list[tuple[_Flush, list[tuple[SegmentMeta, list[Buffer]]]]]] = [[]]
        size = 0
        for flush in flushes:
            if flush.failed:
                continue
            try:
                pieces = self._pieces(flush)
            except Exception as error:
                self._fail(flush, error, committing=False)
                continue
            bytes_ = sum(meta.size for meta, _ in pieces)
            if packs[-1] and size + bytes_ > INGEST_OBJECT_BYTES:
                packs.append([])
                size = 0
            packs[-1].append((flush, pieces))
            size += bytes_
        await asyncio.gather(*(self._upload_pack(pack) for pack in packs if pack))

    async def _upload_pack(
        self, pack: list[tuple[_Flush, list[tuple[SegmentMeta, list[Buffer]]]]]
    ) -> None:
        lease = self.cluster.lease if self.cluster is not None else 0
        key = ingest_key(self.config.namespace, self.config.broker_id, lease, secrets.token_hex(6))
        chunks: list[Buffer] = []
        pos = 0
        for _, pieces in pack:
            for meta, body in pieces:
                meta.key, meta.pos = key, pos
                chunks += body
                pos += meta.size
        try:
            # Every object before the commit: a crash in between leaves an orphan that is
            # never served (nothing points at it; the janitor collects it), not a gap.
            await self.objects.put(key, chunks)
            failpoints.hit("after_object_put")
        except Exception as error:
            for flush, _ in pack:
                self._fail(flush, error, committing=False)
            return
        for flush, pieces in pack:
            flush.built = [(meta, body, None) for meta, body in pieces]

    async def _commit_cycle(
        self,
        flushes: list[_Flush],
        uploads: asyncio.Future[None],
        previous: asyncio.Task[bool] | None,
        atomic: bool = False,
    ) -> bool:
        """Commit a cycle's flushes once their uploads are done and ``previous`` (the cycle
        before) has committed, so that each partition commits in offset order; answer their
        requests and wake fetchers. Whether anything was committed."""
        with contextlib.suppress(Exception):
            await uploads
        if previous is not None:
            await asyncio.wait([previous])
        committed = False
        try:
            committed = await self._commit(flushes, atomic)
        finally:
            for f in flushes:  # nothing may wait forever, whatever went wrong
                if not f.settled.is_set():
                    self._fail(
                        f, FlushError(ErrorCode.KAFKA_STORAGE_ERROR, "flush abandoned"), True
                    )
        if committed:
            async with self._committed:
                self._committed.notify_all()
        return committed

    async def _commit(self, flushes: list[_Flush], atomic: bool = False) -> bool:
        """Commit the uploaded ``flushes`` (each of a different partition), holding their
        partitions' locks: their states and segment entries go in one metadata transaction per
        group of partitions that fits the store's limits (``atomic``: all in one, or none
        commits). Whether any committed."""
        ready = [f for f in flushes if not f.failed]
        if atomic and len(ready) < len(flushes):
            self._fail_all(flushes, "another partition's markers failed")
            return False
        if not ready:
            return False
        async with contextlib.AsyncExitStack() as locks:
            for f in ready:
                await locks.enter_async_context(f.plog.lock)
            prepared: list[_Commit] = []
            for f in ready:
                if f.failed:
                    continue
                try:
                    prepared.append(self._prepare(f))
                except Exception as error:
                    self._fail(f, error, committing=False)
            groups = _txn_groups(prepared)
            if atomic and (len(prepared) < len(ready) or len(groups) > 1):
                self._fail_all(flushes, "the markers do not fit one metadata transaction")
                return False
            if atomic:
                failpoints.hit("before_txn_markers_commit")
            committed = False
            for group in groups:
                if await self._commit_group(group, atomic):
                    committed = True
            return committed

    def _fail_all(self, flushes: list[_Flush], why: str) -> None:
        """Fail every flush of an atomic cycle still standing (one of them cannot commit)."""
        for f in flushes:
            self._fail(f, FlushError(ErrorCode.KAFKA_STORAGE_ERROR, why), committing=False)

    def _prepare(self, flush: _Flush) -> _Commit:
        """What committing ``flush`` compares and puts: its partition's guard; the new state
        (high watermark, idempotent-producer state) and its segment entries."""
        plog = flush.plog
        if self.logs.get((plog.topic, plog.partition)) is not plog:
            raise not_owner(plog.topic, plog.partition, " (its log was dropped)")
        if plog.hw != flush.first or plog.epoch != flush.epoch:
            raise not_owner(plog.topic, plog.partition, " (its state changed under us)")
        guard = self.guard(plog)
        producers = plog.producers
        written = [
            (b, base + b.delta)
            for e, base in zip(flush.entries, flush.bases, strict=True)
            for b in e.producers
        ]
        aborted: list[tuple[int, int, int]] = []
        if written or producers:
            producers = commit_producers(
                plog.producers,
                written,
                int(time.time() * 1000),
                self.config.producer_id_expiration_ms,
                aborted,
            )
        if aborted:  # the aborted-transaction index travels with the entry of each marker
            assign_aborted(aborted, [meta for meta, _, _ in flush.built])
        state = _state(plog, hw=flush.end, producers=producers)
        prefix = self.topics.segments_prefix(plog.topic, plog.partition)
        puts: list[Put | Delete] = [Put(plog.state_key, state)]
        puts += [
            Put(prefix + f"{meta.base:020d}".encode(), meta.to_json()) for meta, _, _ in flush.built
        ]
        for e in flush.entries:
            guard += e.compares
            puts += e.puts
        return _Commit(flush, guard, puts, producers)

    async def _commit_group(self, group: list[_Commit], atomic: bool = False) -> bool:
        """One transaction for ``group``; if its compares fail (some partition's owner or
        state moved), each partition again on its own (unless ``atomic``), so that only that
        one fails. Whether any committed."""
        try:
            result = await self.meta.txn(
                [c for x in group for c in x.compares],
                [*(p for x in group for p in x.puts), *self._registry(group)],
            )
        except Exception as error:
            # The outcome may be unknown (it may have applied): every partition of the group
            # reloads its state before its next flush. Their requests fail (retriable); a
            # client resending data that did commit makes a duplicate, never a gap or a lost
            # record.
            for x in group:
                self._fail(x.flush, error, committing=True)
            return False
        if not result.succeeded:
            if len(group) > 1 and not atomic:
                committed = False
                for x in group:
                    if await self._commit_group([x]):
                        committed = True
                return committed
            for x in group:  # one partition alone, or an atomic group: all fail
                plog = x.flush.plog
                stale = not_owner(plog.topic, plog.partition, " (its state changed under us)")
                self._fail(x.flush, stale, committing=True)
            return False
        for _ in group:  # every flush of the group is committed, none answered yet
            failpoints.hit("after_metadata_commit")
        for x in group:
            self._applied(x, result.revision)
        return True

    def _registry(self, group: list[_Commit]) -> list[Put]:
        """The ingest registry entries of a commit: per ingest object, the pieces this
        transaction commits in it (by topic: its id, and each piece's partition and base
        offset). Written in the same transaction as the pieces, so an entry exists only for
        committed pieces; the janitor deletes an object once none of its pieces is still part
        of a log."""
        objects: dict[str, dict[str, dict[str, Any]]] = {}
        for x in group:
            plog = x.flush.plog
            for meta, _, _ in x.flush.built:
                if not meta.piece:
                    continue
                topics = objects.setdefault(meta.key, {})
                entry = topics.get(plog.topic)
                if entry is None:
                    topic = self.topics.get(plog.topic)
                    entry = topics[plog.topic] = {
                        "id": str(topic.id) if topic is not None else "",
                        "pieces": [],
                    }
                entry["pieces"].append([plog.partition, meta.base])
        now = int(time.time() * 1000)
        return [
            Put(
                self.topics.ingest_entry_key(key, secrets.token_hex(4)),
                json.dumps({"created": now, "topics": topics}, separators=(",", ":")).encode(),
            )
            for key, topics in objects.items()
        ]

    def _applied(self, commit: _Commit, revision: int) -> None:
        """``commit`` succeeded at ``revision``: move the partition on, answer the requests."""
        flush = commit.flush
        plog = flush.plog
        plog.revision = revision
        plog.hw = flush.end
        plog.producers = commit.producers
        for meta, body, index in flush.built:
            plog.segments.append(meta)
            self.cache.put(meta.cache_key, body)
            if index is not None:
                self.remember_index(meta.key, index)
        if flush in plog.inflight:
            plog.inflight.remove(flush)
        for e, base in zip(flush.entries, flush.bases, strict=True):
            e.revision = revision
            if not e.future.done():
                e.future.set_result(base)
        flush.settled.set()

    def _fail(self, flush: _Flush, error: Exception, committing: bool) -> None:
        """``flush`` failed: answer its requests with a retriable error, and those of its
        partition's later flushes in flight too (their offsets follow its own: they could only
        leave a gap). Stale (NOT_LEADER_OR_FOLLOWER), or ``committing`` (the commit's outcome
        is unknown: it may have applied): also drop the log, reloaded before the next flush;
        what was appended meanwhile fails too."""
        if flush.failed:
            return
        plog = flush.plog
        code = error.code if isinstance(error, FlushError) else ErrorCode.KAFKA_STORAGE_ERROR
        log.warning("flush of %s-%d failed: %s", plog.topic, plog.partition, error)
        failure = FlushError(code, str(error))
        doomed = [flush]
        if flush in plog.inflight:
            i = plog.inflight.index(flush)
            doomed = plog.inflight[i:]
            del plog.inflight[i:]
        entries = [e for f in doomed for e in f.entries]
        for f in doomed:
            f.failed = True
        if code == ErrorCode.NOT_LEADER_OR_FOLLOWER or committing:
            self.drop(plog, failure, *entries)
        for e in entries:
            if not e.future.done():
                e.future.set_exception(failure)
        for f in doomed:
            f.settled.set()

    async def _settle(self, plog: PartitionLog) -> None:
        """Wait until the partition's flushes in flight have committed or failed."""
        for f in list(plog.inflight):
            await f.settled.wait()

    # --- fetch -----------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_for_commit(self, timeout: float) -> None:
        """Sleep until the next commit (or ``timeout`` seconds, or shutdown): long polls."""
        if self._closing:
            return
        async with self._committed:
            try:
                await asyncio.wait_for(self._committed.wait(), timeout)
            except TimeoutError:
                pass

    async def read(
        self, plog: PartitionLog, offset: int, max_bytes: int, end: int | None = None
    ) -> bytes:
        """Whole committed batches from ``offset`` on, across segments: at most ``max_bytes``,
        except that the first batch is returned whole however large (KIP-74), so a consumer
        always progresses; only batches starting below ``end`` (default the high watermark:
        read_committed reads below the last stable offset, a batch boundary). The caller has
        checked ``log_start <= offset <= hw``."""
        parts: list[bytes] = []
        total = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_BUDGET_S
        stop = plog.hw if end is None else min(end, plog.hw)
        while offset < stop and (not parts or (total < max_bytes and loop.time() < deadline)):
            seg = plog.segment_for(offset)
            if seg is None:
                break
            data, offset = await self._read_segment(seg, offset, max_bytes - total, not parts, stop)
            if not data:
                break
            parts.append(data)
            total += len(data)
        if parts and offset < plog.hw:
            self.read_ahead_next(plog, offset)
        return b"".join(parts)

    async def _read_segment(
        self, seg: SegmentMeta, offset: int, max_bytes: int, first: bool, stop: int | None = None
    ) -> tuple[bytes, int]:
        """(whole batches of ``seg`` from ``offset`` starting below ``stop``, the offset after
        them)."""
        data_end = seg.size - FOOTER_SIZE
        start = await self._position(seg, offset)
        want = min(data_end, start + max(max_bytes, _BATCH_PREFIX))
        chunk = await self.read_entry(seg, start, want)
        out = _whole_batches(chunk, 0, len(chunk), max_bytes, offset, first, stop)
        if first and not out[0]:
            # The batch holding ``offset`` is larger than max_bytes (KIP-74: it goes whole), and
            # smaller batches before it may share its index span: walk their headers to it.
            pos = start
            while pos + _BATCH_HEAD <= data_end:
                head = await self.read_entry(seg, pos, pos + _BATCH_HEAD)
                size = int.from_bytes(head[8:12], "big", signed=True) + _BATCH_PREFIX
                base = int.from_bytes(head[0:8], "big", signed=True)
                if base + int.from_bytes(head[23:27], "big", signed=True) >= offset:
                    chunk = await self.read_entry(seg, pos, min(data_end, pos + size))
                    return _whole_batches(chunk, 0, len(chunk), size, offset, first, stop)
                pos += size
        return out

    async def read_entry(self, seg: SegmentMeta, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``seg``: from the cache (segments written or read
        recently), else a piece whole with one ranged GET, a segment in aligned chunks of
        :data:`READ_CHUNK` (ranged GETs), the chunk after the last one read fetched ahead in
        the background, so a consumer reading on finds it ready."""
        cached = self.cache.get_range(seg.cache_key, start, end)
        if cached is not None:
            self.cache.hits += 1
            return cached
        if seg.piece:
            whole = await self._cached(
                seg.cache_key, lambda: self.objects.get_range(seg.key, seg.pos, seg.pos + seg.size)
            )
            return whole[start:end]
        if end <= start:
            return b""
        first, last = start // READ_CHUNK, (end - 1) // READ_CHUNK
        chunks = [await self._chunk(seg, i) for i in range(first, last + 1)]
        if (last + 1) * READ_CHUNK < seg.size:
            self._read_ahead(seg, last + 1)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        base = first * READ_CHUNK
        return data[start - base : end - base]

    def _chunk(self, seg: SegmentMeta, i: int) -> Awaitable[bytes]:
        lo = i * READ_CHUNK
        hi = min(seg.size, lo + READ_CHUNK)
        return self._cached(f"{seg.key}@{i}", lambda: self.objects.get_range(seg.key, lo, hi))

    def _read_ahead(self, seg: SegmentMeta, i: int) -> None:
        key = f"{seg.key}@{i}"
        if key not in self.cache and key not in self._reading:
            task = asyncio.ensure_future(self._chunk(seg, i))
            task.add_done_callback(_quiet)

    async def _cached(self, key: str, get: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached bytes under ``key``, else ``get()``'s, cached; concurrent callers (a
        read-ahead and the read that wants it) share one GET."""
        data = self.cache.get(key)
        if data is not None:
            self.cache.hits += 1
            return data
        reading = self._reading.get(key)
        if reading is None:
            self.cache.misses += 1
            reading = asyncio.ensure_future(get())
            self._reading[key] = reading
            try:
                data = await asyncio.shield(reading)
            finally:
                self._reading.pop(key, None)
            self.cache.put(key, data)
            return data
        self.cache.hits += 1  # a read-ahead got there first
        return await asyncio.shield(reading)

    async def warm(self, plog: PartitionLog, offset: int, max_bytes: int) -> None:
        """Bring what a read of ``max_bytes`` at ``offset`` takes into the cache (a Fetch
        does this for all its partitions at once); failures are left to the read itself."""
        seg = plog.segment_for(offset)
        if seg is None or seg.cache_key in self.cache:
            return
        with contextlib.suppress(Exception):
            start = await self._position(seg, offset)
            await self.read_entry(seg, start, min(seg.size - FOOTER_SIZE, start + max_bytes))

    def read_ahead_next(self, plog: PartitionLog, offset: int) -> None:
        """A read stopped at ``offset``: when that is the start of another segment, fetch
        its index and first chunk ahead (a consumer catching up reads on from there)."""
        seg = plog.segment_for(offset)
        if seg is None or seg.piece or seg.base != offset or seg.key in self.cache:
            return
        self._read_ahead(seg, 0)
        if seg.key not in self.indexes:
            task = asyncio.ensure_future(self._index(seg))
            task.add_done_callback(_quiet)

    async def _position(self, seg: SegmentMeta, offset: int) -> int:
        index = await self._index(seg) if not seg.piece else None
        if index is None:
            return HEADER_SIZE
        return find_position(index, offset)

    async def _index(self, seg: SegmentMeta) -> SegmentIndex | None:
        raw = self.indexes.get(seg.key)
        if raw is None:
            try:
                raw = await self.objects.get(seg.key.removesuffix(".kfs") + ".index")
            except NotFound:
                return None
            self.remember_index(seg.key, raw)
        return parse_index(raw)

    def remember_index(self, key: str, raw: bytes) -> None:
        self.indexes[key] = raw
        self.indexes.move_to_end(key)
        while len(self.indexes) > 10000:
            self.indexes.popitem(last=False)

    async def offset_for_timestamp(
        self, plog: PartitionLog, timestamp: int
    ) -> tuple[int, int] | None:
        """(offset, timestamp) of the first committed record whose timestamp is >=
        ``timestamp`` (ListOffsets), exact to the record, compressed batches included."""
        for seg in plog.segments:
            if seg.last < plog.log_start or seg.max_timestamp < timestamp:
                continue
            for record in await self._records(seg, plog.log_start, timestamp):
                if record.timestamp >= timestamp:
                    return record.offset, record.timestamp
        return None

    async def max_timestamp_offset(self, plog: PartitionLog) -> tuple[int, int]:
        """(timestamp, offset) of the first record with the largest timestamp (ListOffsets -3,
        KIP-734; the record's own offset, as Kafka answers since KAFKA-16310)."""
        live = [s for s in plog.segments if s.last >= plog.log_start]
        if not live:
            return (-1, -1)
        best = max(s.max_timestamp for s in live)
        seg = next(s for s in live if s.max_timestamp == best)
        for record in await self._records(seg, plog.log_start, best):
            if record.timestamp == best:
                return best, record.offset
        return best, seg.last  # a batch claimed a max timestamp no record has

    async def _records(self, seg: SegmentMeta, log_start: int, timestamp: int) -> list[Record]:
        """The committed records of ``seg`` from the first batch that reaches ``timestamp``
        (found through the index), decompressed."""
        index = await self._index(seg) if not seg.piece else None
        span = span_for_timestamp(index, timestamp) if index is not None else None
        start = span.position if span is not None else HEADER_SIZE
        data = await self.read_entry(seg, start, seg.size - FOOTER_SIZE)
        out: list[Record] = []
        for batch in parse_batches(data, len(data), verify_records=False):
            if batch.base_offset + batch.last_offset_delta < log_start:
                continue
            if batch.max_timestamp < timestamp:
                continue
            try:
                records = list(iter_records(memoryview(data)[batch.position : batch.end]))
            except CompressedBatchError:  # unreadable: answer at batch granularity
                records = [Record(batch.base_offset, batch.max_timestamp, None, None)]
            out += [r for r in records if r.offset >= log_start]
        return out

    async def delete_records(self, plog: PartitionLog, before: int) -> int:
        """Advance the log start offset (DeleteRecords); returns the new low watermark."""
        async with plog.lock:
            return await self._delete_records_locked(plog, before)

    async def _delete_records_locked(self, plog: PartitionLog, before: int) -> int:
        new_start = plog.hw if before == -1 else before
        if new_start > plog.hw or new_start < 0:
            raise FlushError(
                ErrorCode.OFFSET_OUT_OF_RANGE, f"offset {before} is beyond the high watermark"
            )
        if new_start <= plog.log_start:
            return plog.log_start
        await self.advance_log_start(plog, new_start)
        return new_start

    async def advance_log_start(self, plog: PartitionLog, new_start: int) -> None:
        """Move the log start offset to ``new_start`` (DeleteRecords, retention; the caller
        holds the partition's lock), and drop the entries wholly below it: their keys go in
        the same fenced transaction, their objects are recorded as garbage (deleted after the
        grace period), and ``pieces_from`` passes the pieces among them. Many entries take
        several transactions of at most :data:`DROP_PER_TXN`; the first moves the log start,
        so readers never see what the later ones drop."""
        epochs = _truncate_epochs_from_start(plog.epochs, new_start)
        doomed = [s for s in plog.segments if s.last < new_start]
        prefix = self.topics.segments_prefix(plog.topic, plog.partition)
        while True:
            chunk, doomed = doomed[:DROP_PER_TXN], doomed[DROP_PER_TXN:]
            pieces_from = max([plog.pieces_from] + [s.last + 1 for s in chunk if s.piece])
            ops: list[Put | Delete] = [
                Put(
                    plog.state_key,
                    _state(plog, log_start=new_start, epochs=epochs, pieces_from=pieces_from),
                )
            ]
            ops += [Delete(prefix + f"{s.base:020d}".encode()) for s in chunk]
            garbage = [name for s in chunk for name in s.objects]
            if garbage:
                ops.append(self.janitor.record(garbage))
            plog.revision = await self._guarded(plog, ops)
            plog.log_start, plog.epochs, plog.pieces_from = new_start, epochs, pieces_from
            gone = {id(s) for s in chunk}
            plog.segments = [s for s in plog.segments if id(s) not in gone]
            if not doomed:
                return

    async def _guarded(self, plog: PartitionLog, ops: list[Put | Delete]) -> int:
        """Apply ``ops`` guarded by the partition's guard (the caller holds its lock); the new
        revision. Raises :class:`FlushError` NOT_LEADER_OR_FOLLOWER (and drops the log) when
        the state or our ownership moved."""
        result = await self.meta.txn(self.guard(plog), ops)
        if not result.succeeded:
            error = FlushError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "partition state changed under us")
            self.drop(plog, error)
            raise error
        return result.revision

    def state(self, plog: PartitionLog, **changes: Any) -> bytes:
        """The partition's committed state value, with ``changes`` (see :func:`_state`)."""
        return _state(plog, **changes)

    # --- leader epochs ---------------------------------------------------------------------

    async def end_offset_for_epoch(self, topic: str, partition: int, epoch: int) -> tuple[int, int]:
        """(epoch, end offset) of ``epoch`` in the partition (see
        :meth:`PartitionLog.end_offset_for_epoch`)."""
        return (await self.get(topic, partition)).end_offset_for_epoch(epoch)

    async def bump_leader_epoch(self, topic: str, partition: int) -> int:
        """Start the next leader epoch at the high watermark (what a broker taking the
        partition over does), committed with one compare-and-swap on the partition state;
        returns the new epoch. Data flushed from now on is stamped with it. Raises
        :class:`FlushError` (NOT_LEADER_OR_FOLLOWER) when the state changed under us."""
        plog = await self.get(topic, partition)
        await self._settle(plog)  # what is in flight was stamped with the current epoch
        async with plog.lock:
            epoch = plog.epoch + 1
            epochs = _assign_epoch(plog.epochs, epoch, plog.hw)
            ops: list[Put | Delete] = [
                Put(
                    plog.state_key,
                    _state(plog, epoch=epoch, epochs=epochs),
                )
            ]
            claim, cluster = plog.claim, self.cluster
            if claim is not None and cluster is not None:  # the owner key carries the epoch
                value = json.dumps({"broker": cluster.me, "epoch": epoch}).encode()
                ops.append(Put(claim.owner_key, value, cluster.lease))
            plog.revision = await self._guarded(plog, ops)
            plog.epoch, plog.epochs = epoch, epochs
            if claim is not None:
                claim.epoch, claim.owner_revision = epoch, plog.revision
            self.epochs_started += 1
            log.info("%s-%d: leader epoch %d from offset %d", topic, partition, epoch, plog.hw)
            return epoch

    async def leader_epochs(self, topic: str, partitions: int) -> list[int]:
        """The current leader epoch of each of the topic's partitions (Metadata): from the
        loaded logs, else from one range read of the topic's partition states (nothing is
        loaded or cached by it)."""
        loaded = [self.logs.get((topic, p)) for p in range(partitions)]
        if all(plog is not None for plog in loaded):
            return [plog.epoch for plog in loaded if plog is not None]
        prefix = self.topics.partitions_prefix(topic)
        stored = {kv.key: kv.value for kv in await self.meta.range(prefix)}
        out = []
        for p, plog in enumerate(loaded):
            if plog is not None:
                out.append(plog.epoch)
                continue
            value = stored.get(self.topics.partition_key(topic, p))
            out.append(int(json.loads(value).get("epoch", 0)) if value is not None else 0)
        return out


def _state(
    plog: PartitionLog,
    *,
    log_start: int | None = None,
    hw: int | None = None,
    epoch: int | None = None,
    epochs: list[tuple[int, int]] | None = None,
    producers: dict[int, ProducerEntry] | None = None,
    pieces_from: int | None = None,
) -> bytes:
    """The committed partition state (the value of its ``state_key``): ``plog``'s, with the
    fields given changed."""
    state: dict[str, Any] = {
        "log_start": plog.log_start if log_start is None else log_start,
        "hw": plog.hw if hw is None else hw,
        "epoch": plog.epoch if epoch is None else epoch,
        "epochs": plog.epochs if epochs is None else epochs,
    }
    entries = _json(plog.producers if producers is None else producers)
    if entries:
        state["producers"] = entries
    floor = plog.pieces_from if pieces_from is None else pieces_from
    if floor:
        state["pieces_from"] = floor
    return json.dumps(state).encode()


def _json(producers: dict[int, ProducerEntry]) -> dict[str, Any]:
    return {str(pid): entry.to_json() for pid, entry in producers.items()}


async def _answer_duplicate(duplicate: Duplicate, delta: int) -> int:
    """This request's base offset, given that its batch at ``delta`` repeats ``duplicate``."""
    if duplicate.offset is not None:
        return duplicate.offset - delta
    original = duplicate.original
    assert isinstance(original, _Pending)
    return await asyncio.shield(original.future) + duplicate.delta - delta


def _quiet(task: asyncio.Future[Any]) -> None:
    """Done callback of a read-ahead: its failure is the later read's to see, not a log."""
    if not task.cancelled():
        task.exception()


def _assign_epoch(epochs: list[tuple[int, int]], epoch: int, start: int) -> list[tuple[int, int]]:
    """The history with ``epoch`` starting at ``start`` appended, as Kafka's
    ``LeaderEpochFileCache.assign``: later entries that would break monotonicity (an epoch not
    below the new one, or a start offset not below ``start``: epochs that wrote nothing) go."""
    kept = list(epochs)
    while kept and (kept[-1][0] >= epoch or kept[-1][1] >= start):
        kept.pop()
    return [*kept, (epoch, start)]


def _truncate_epochs_from_start(
    epochs: list[tuple[int, int]], log_start: int
) -> list[tuple[int, int]]:
    """The history after the log start moved to ``log_start`` (Kafka's ``truncateFromStart``):
    the epochs starting at or before it collapse into the last of them, starting there."""
    before = [e for e in epochs if e[1] <= log_start]
    if not before:
        return list(epochs)
    return [(before[-1][0], log_start), *epochs[len(before) :]]


def _txn_groups(commits: list[_Commit]) -> list[list[_Commit]]:
    """Consecutive groups of commits that fit one transaction (:data:`MAX_TXN_OPS`,
    :data:`MAX_TXN_BYTES`, counting the ingest registry entries the group adds: one put per
    object, about a hundred bytes per piece; one that does not fit alone gets its own)."""
    groups: list[list[_Commit]] = []
    objects: set[str] = set()
    ops = size = 0
    for c in commits:
        keys = {meta.key for meta, _, _ in c.flush.built if meta.piece}
        n = len(c.compares) + len(c.puts)
        b = (
            sum(len(p.key) + (len(p.value) if isinstance(p, Put) else 0) for p in c.puts)
            + sum(len(x.key) + 16 for x in c.compares)
            + 100 * len(c.flush.built)
        )
        new = len(keys - objects) if groups else len(keys)
        if groups and ops + n + new <= MAX_TXN_OPS and size + b <= MAX_TXN_BYTES:
            groups[-1].append(c)
            ops, size = ops + n + new, size + b
            objects |= keys
        else:
            groups.append([c])
            ops, size, objects = n + len(keys), b, keys
    return groups


def _split(entries: list[_Pending], limit: int) -> list[list[_Pending]]:
    """Consecutive groups of at most ``limit`` bytes (at least one entry each)."""
    groups: list[list[_Pending]] = [[]]
    size = 0
    for e in entries:
        if groups[-1] and size + len(e.data) > limit:
            groups.append([])
            size = 0
        groups[-1].append(e)
        size += len(e.data)
    return groups


def _whole_batches(
    data: bytes,
    start: int,
    end: int,
    max_bytes: int,
    offset: int,
    first: bool,
    stop: int | None = None,
) -> tuple[bytes, int]:
    """The complete batches of ``data[start:end]`` that fit ``max_bytes`` (with ``first``,
    the first one whatever its size), skipping batches that end before ``offset`` and
    stopping at the first that starts at or after ``stop``; and the offset after the last one
    returned."""
    pos = start
    out_start = -1
    next_offset = offset
    while pos + _BATCH_PREFIX <= end:
        base = int.from_bytes(data[pos : pos + 8], "big", signed=True)
        size = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True) + _BATCH_PREFIX
        if pos + size > end:
            break
        last = base + int.from_bytes(data[pos + 23 : pos + 27], "big", signed=True)
        if last < offset:
            pos += size
            continue
        if stop is not None and base >= stop:
            break
        if out_start < 0:
            if size > max_bytes and not first:
                break
            out_start = pos
        elif pos + size - out_start > max_bytes:
            break
        pos += size
        next_offset = last + 1
    return (bytes(data[out_start:pos]) if out_start >= 0 else b""), next_offset
