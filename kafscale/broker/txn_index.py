"""The read side of transactions in a partition (sans-io): the last stable offset, the
aborted-transaction index, and the transaction markers (control batches) themselves.

- **Last stable offset (LSO)**: the first offset of the earliest transaction still ongoing
  in the partition, else the high watermark. A read_committed consumer reads only below it,
  so it never sees a transaction that is not decided yet (Kafka's ``ProducerStateManager``
  ``firstUndecidedOffset``). The ongoing transactions are part of the committed
  idempotent-producer state (``producers.py``: ``txn_first``), so the LSO needs no extra read.
- **Aborted-transaction index**: each committed log entry (piece or segment) carries the
  aborted transactions whose *abort marker* it holds, as (producer id, first offset, marker
  offset) — Kafka's per-segment ``.txnindex``. Compaction hands each one to the output holding
  its marker, and retention drops it with its entry (every offset of it is below the marker),
  so the index lives exactly as long as the data it describes. A read_committed Fetch
  answers the aborted transactions overlapping what it returns; the client drops their
  batches until it meets the marker.
- **Markers**: one control batch per partition of a transaction, written by the partition's
  owner when the coordinator has decided (``txn_markers.py``): key (version 0, type: 0 abort,
  1 commit), value (version 0, coordinator epoch), producer id and epoch, base sequence -1.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from kafscale.broker.producers import ProducerEntry
from kafscale.protocol.records import NewRecord, build_batch

AbortedTxn = tuple[int, int, int]
"""(producer id, first offset, offset of its abort marker)."""


class _Entry(Protocol):
    base: int
    last: int
    aborted: list[AbortedTxn]


def last_stable_offset(producers: Mapping[int, ProducerEntry], hw: int) -> int:
    """The partition's LSO: the first offset of its earliest ongoing transaction, else ``hw``."""
    firsts = [e.txn_first for e in producers.values() if e.txn_first is not None]
    return min([hw, *firsts])


def aborted_between(
    entries: Sequence[_Entry], start: int, fetch_offset: int, upper: int
) -> list[tuple[int, int]]:
    """(producer id, first offset) of the aborted transactions overlapping
    ``[fetch_offset, upper)``: those whose marker is at or after ``fetch_offset`` (so they live
    in ``entries[start:]``, the entry holding ``fetch_offset`` and later ones) and that start
    below ``upper`` (Kafka's ``collectAbortedTransactions``)."""
    # Every entry from ``start`` on: a marker past ``upper`` may end a transaction starting
    # below it. Entries are few (sealed segments and recent pieces) and held in memory.
    return [
        (pid, first)
        for entry in entries[max(start, 0) :]
        for pid, first, last in entry.aborted
        if last >= fetch_offset and first < upper
    ]


def assign(aborted: Iterable[AbortedTxn], entries: Sequence[_Entry]) -> None:
    """Give each aborted transaction to the entry holding its marker."""
    for txn in aborted:
        for entry in entries:
            if entry.base <= txn[2] <= entry.last:
                entry.aborted.append(txn)
                break


_KEY = struct.Struct(">hh")
_VALUE = struct.Struct(">hi")


def marker_batch(producer_id: int, epoch: int, commit: bool, coordinator_epoch: int) -> bytes:
    """A transaction marker: a control batch of one control record (base offset 0; the log
    assigns it), as Kafka's ``MemoryRecords.withEndTransactionMarker`` writes it."""
    record = NewRecord(_VALUE.pack(0, coordinator_epoch), _KEY.pack(0, 1 if commit else 0))
    return build_batch(
        [record],
        timestamp=int(time.time() * 1000),
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=-1,
        transactional=True,
        control=True,
    )


def marker_type(key: bytes | None) -> int | None:
    """The control record type of a control record's key (0 abort, 1 commit), or None."""
    if key is None or len(key) < _KEY.size:
        return None
    return int(_KEY.unpack_from(key)[1])
