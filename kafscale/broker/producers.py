"""Idempotent producers: per partition and producer id, the epoch and the last 5 batches'
sequence ranges and offsets (Kafka's ProducerStateManager), sans-io.

A batch from an idempotent producer (producer id >= 0) is checked against what is committed
*and* what is in flight (appended, not yet committed) before it joins the pending data:

- an epoch older than the producer's: INVALID_PRODUCER_EPOCH;
- the same epoch and the same sequence range as one of the last 5 batches: a retry — answered
  with the original's offset (waiting for the original when it is still in flight), never
  written twice;
- a new epoch (the client bumped it, KIP-360) must start at sequence 0 (else
  OUT_OF_ORDER_SEQUENCE_NUMBER); a producer id we know nothing about (new, or its state
  expired) must start at 0 too, else UNKNOWN_PRODUCER_ID, so the client resets;
- otherwise the first sequence must follow the last one (wrapping from 2^31-1 to 0), else
  OUT_OF_ORDER_SEQUENCE_NUMBER — also for a duplicate older than the last 5 batches.

A rejected batch changes nothing, so the next batch's sequence is judged against the last
accepted one (tansu advanced it and answered DUPLICATE_SEQUENCE_NUMBER, which clients take
for success: data lost). The committed state is written in the same metadata transaction as
the data it describes, so a new owner after a failover deduplicates exactly as the old one
would have. Producers idle longer than ``producer.id.expiration.ms`` are forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from generated.errors import ErrorCode

MAX_CACHED_BATCHES = 5
MAX_SEQUENCE = 2**31 - 1


class SequenceError(Exception):
    """A batch refused with a Kafka error code; nothing about the producer changed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ProducerBatch:
    """One idempotent batch: who sent it and its sequence range; ``delta`` is its offset
    within its produce request's data (for answering a retry of it)."""

    producer_id: int
    epoch: int
    first_seq: int
    last_seq: int
    records: int
    delta: int = 0
    transactional: bool = False
    """Part of a transaction: the first one of the producer's in a partition starts it there
    (the last stable offset stays at or below it until its marker is written)."""
    marker: int | None = None
    """A transaction marker (a control batch the broker writes; ``first_seq`` -1): 1 commit,
    0 abort (Kafka's ControlRecordType). Never sequence-checked."""


COMMIT, ABORT = 1, 0
"""Kafka's ControlRecordType of a transaction marker."""


@dataclass(slots=True)
class CommittedBatch:
    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    batches: list[CommittedBatch] = field(default_factory=list)
    last_ms: int = 0
    txn_first: int | None = None
    """The first offset of its ongoing transaction in this partition (None: none ongoing)."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "epoch": self.epoch,
            "ms": self.last_ms,
            "batches": [
                [b.first_seq, b.last_seq, b.first_offset, b.last_offset] for b in self.batches
            ],
        }
        if self.txn_first is not None:
            d["txn"] = self.txn_first
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> ProducerEntry:
        txn = d.get("txn")
        return ProducerEntry(
            int(d["epoch"]),
            [CommittedBatch(*(int(x) for x in b)) for b in d.get("batches", [])],
            int(d.get("ms", 0)),
            None if txn is None else int(txn),
        )


def last_sequence(first_seq: int, records: int) -> int:
    return (first_seq + records - 1) % (MAX_SEQUENCE + 1)


def _follows(last: int, first: int) -> bool:
    return first == last + 1 or (last == MAX_SEQUENCE and first == 0)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A retry of a batch already accepted: its offset (committed), or the in-flight batch
    whose outcome answers it."""

    offset: int | None
    original: object | None = None
    """The in-flight entry (opaque to this module) whose result answers the retry."""
    delta: int = 0


def check(
    committed: dict[int, ProducerEntry],
    in_flight: Iterable[tuple[ProducerBatch, object]],
    batch: ProducerBatch,
) -> Duplicate | None:
    """Judge ``batch`` against the committed state and the batches in flight (in append
    order, each with its owner): None when it is new and in sequence, a :class:`Duplicate`
    for a retry; raises :class:`SequenceError` otherwise."""
    pid = batch.producer_id
    entry = committed.get(pid)
    epoch = entry.epoch if entry is not None else None
    recent: list[tuple[int, int, int | None, object | None, int]] = [
        (b.first_seq, b.last_seq, b.first_offset, None, 0) for b in (entry.batches if entry else [])
    ]
    for flying, owner in in_flight:
        if flying.producer_id != pid or flying.marker is not None:
            continue
        if epoch is None or flying.epoch > epoch:
            epoch, recent = flying.epoch, []
        recent.append((flying.first_seq, flying.last_seq, None, owner, flying.delta))
    recent = recent[-MAX_CACHED_BATCHES:]
    if epoch is not None and batch.epoch < epoch:
        raise SequenceError(
            ErrorCode.INVALID_PRODUCER_EPOCH,
            f"producer {pid}: epoch {batch.epoch} is older than the current {epoch}",
        )
    if epoch is not None and batch.epoch == epoch:
        for first, last, offset, owner, delta in recent:
            if (first, last) == (batch.first_seq, batch.last_seq):
                return Duplicate(offset, owner, delta)
        last_seq = recent[-1][1] if recent else None
        if last_seq is not None and not _follows(last_seq, batch.first_seq):
            raise SequenceError(
                ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                f"producer {pid}: sequence {batch.first_seq} does not follow {last_seq}",
            )
        if last_seq is None and batch.first_seq != 0:
            raise SequenceError(
                ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                f"producer {pid}: sequence {batch.first_seq}, expected 0",
            )
        return None
    if batch.first_seq != 0:  # a new epoch, or a producer we do not know
        if epoch is None:
            raise SequenceError(
                ErrorCode.UNKNOWN_PRODUCER_ID,
                f"producer {pid} is unknown here (new, or its state expired): its first "
                f"sequence must be 0, not {batch.first_seq}",
            )
        raise SequenceError(
            ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
            f"producer {pid}: new epoch {batch.epoch} must start at sequence 0, "
            f"not {batch.first_seq}",
        )
    return None


def commit(
    committed: dict[int, ProducerEntry],
    batches: Sequence[tuple[ProducerBatch, int]],
    now_ms: int,
    expiration_ms: int,
    aborted: list[tuple[int, int, int]] | None = None,
) -> dict[int, ProducerEntry]:
    """The committed state after ``batches`` (each with its assigned first offset) were
    written, producers idle for ``expiration_ms`` dropped (never one with a transaction
    ongoing, as Kafka keeps them). ``committed`` is not changed: the caller keeps the new state
    only once the metadata transaction succeeded. A transactional batch starts its producer's
    transaction here unless one is ongoing; a marker ends it (an abort marker appends
    (producer id, first offset, marker offset) to ``aborted``: the aborted-transaction index)."""
    out = {
        pid: ProducerEntry(e.epoch, list(e.batches), e.last_ms, e.txn_first)
        for pid, e in committed.items()
        if now_ms - e.last_ms < expiration_ms or e.txn_first is not None
    }
    for batch, offset in batches:
        entry = out.get(batch.producer_id)
        if batch.marker is not None:
            if entry is None:  # a marker for a producer that wrote nothing here
                continue
            if entry.txn_first is not None and batch.marker == ABORT and aborted is not None:
                aborted.append((batch.producer_id, entry.txn_first, offset))
            entry.txn_first = None
            if batch.epoch > entry.epoch:  # the coordinator bumped it (a timeout abort):
                entry.epoch, entry.batches = batch.epoch, []  # older epochs are fenced
            entry.last_ms = now_ms
            continue
        if entry is None or batch.epoch > entry.epoch:
            txn_first = entry.txn_first if entry is not None else None
            entry = out[batch.producer_id] = ProducerEntry(batch.epoch, txn_first=txn_first)
        if batch.transactional and entry.txn_first is None:
            entry.txn_first = offset
        entry.batches.append(
            CommittedBatch(batch.first_seq, batch.last_seq, offset, offset + batch.records - 1)
        )
        del entry.batches[:-MAX_CACHED_BATCHES]
        entry.last_ms = now_ms
    return out
