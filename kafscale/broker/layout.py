"""What to do with a partition's list of committed entries, decided without I/O.

A partition's log is a list of entries in offset order: compacted *segments* (KAFS objects of
up to ``segment.bytes`` with an index beside them) followed by the recent *pieces* (each one
flush's data of the partition, a byte range of a shared ingest object). The flusher appends
pieces; the owner's background maintenance (``kafscale/broker/compaction.py``) asks this module

- which run of entries to merge (:func:`compaction_run`): every piece once there are enough of
  them (or they are old, or the partition went idle), together with the open segments before
  them that are small enough to join, each at most twice as large as what it joins, so that a
  record is rewritten O(log(segment.bytes / piece size)) times in all. The segments a merge can
  still take are the last 1 + log2(segment.bytes / piece size) at most; those before them are
  never rewritten again and, two by two, hold more than ``segment.bytes`` or halve in size, so
  a partition keeps about two segments per ``segment.bytes`` of data (the properties are
  proved and tested in ``tests/test_layout.py``); once idle, every open segment that fits joins;
- where retention moves the log start (:func:`retention_start`): past the oldest entries that
  are whole older than ``retention.ms`` (their largest timestamp) or that leave the log at
  least ``retention.bytes`` without them, as Kafka deletes whole segments;
- which entries a new log start leaves unreachable (:func:`unreachable`).

A segment is *sealed* (never rewritten again) once it reaches ``segment.bytes`` or was started
``segment.ms`` ago, so fresh records never keep expired ones alive in one segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Entry(Protocol):
    """What the planning reads of a committed entry (``SegmentMeta`` has it)."""

    @property
    def base(self) -> int: ...
    @property
    def last(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def max_timestamp(self) -> int: ...
    @property
    def piece(self) -> bool: ...
    @property
    def created(self) -> int: ...


@dataclass(frozen=True)
class Policy:
    segment_bytes: int
    segment_ms: int
    max_pieces: int = 64
    """Compact once a partition has this many pieces..."""
    piece_age_ms: int = 30_000
    """... or its oldest piece is this old ..."""
    idle_ms: int = 5_000
    """... or nothing was written to it for this long (then every open segment joins)."""
    max_run: int = 64
    """Entries merged at most at once (one metadata transaction deletes them, and puts the new
    segments: compaction.MAX_OUTPUTS)."""


def sealed(entry: Entry, now: int, policy: Policy) -> bool:
    """A segment never rewritten again: full, or started ``segment.ms`` ago."""
    return not entry.piece and (
        entry.size >= policy.segment_bytes or now - entry.created >= policy.segment_ms
    )


def compaction_run(entries: Sequence[Entry], now: int, policy: Policy) -> tuple[int, int] | None:
    """``(i, j)``: merge ``entries[i:j]`` into new segments now; None when nothing is due."""
    n = len(entries)
    k = n
    while k > 0 and entries[k - 1].piece:
        k -= 1
    pieces = entries[k:]
    newest = max((e.created for e in pieces), default=0)
    idle = not pieces or now - newest >= policy.idle_ms
    due = bool(pieces) and (
        len(pieces) >= policy.max_pieces
        or now - min(e.created for e in pieces) >= policy.piece_age_ms
        or idle
    )
    if pieces and not due:
        return None
    j = min(n, k + policy.max_run)
    acc = sum(e.size for e in entries[k:j])
    i = k
    while i > 0 and j - i < policy.max_run:
        prev = entries[i - 1]
        if sealed(prev, now, policy) or acc + prev.size > policy.segment_bytes:
            break
        if not idle and prev.size > 2 * acc:
            break  # much larger than what would join it: not yet
        acc += prev.size
        i -= 1
    if j - i < 1 or (k >= j and j - i < 2):
        return None  # no piece, and fewer than two segments: nothing to gain
    return i, j


def retention_start(
    entries: Sequence[Entry],
    log_start: int,
    now: int,
    retention_ms: int,
    retention_bytes: int,
) -> int:
    """The log start offset after retention (>= ``log_start``; ``-1`` limits nothing)."""
    live = [e for e in entries if e.last >= log_start]
    total = sum(e.size for e in live)
    start = log_start
    for e in live:
        stamp = e.max_timestamp if e.max_timestamp >= 0 else e.created
        too_old = retention_ms >= 0 and stamp < now - retention_ms
        too_big = retention_bytes >= 0 and total - e.size >= retention_bytes
        if not (too_old or too_big):
            break
        total -= e.size
        start = e.last + 1
    return max(start, log_start)


def unreachable(entries: Sequence[Entry], log_start: int) -> list[int]:
    """Indexes of the entries wholly below ``log_start`` (a prefix of the list)."""
    return [i for i, e in enumerate(entries) if e.last < log_start]
