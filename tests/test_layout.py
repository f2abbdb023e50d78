"""Properties of the pure planning in ``kafscale/broker/layout.py`` over generated entry lists
(contiguous offsets, segments first, pieces only at the tail).

- :func:`compaction_run`: a contiguous run that holds every piece it touches from the first
  piece on, no sealed segment, at most ``segment.bytes`` unless the pieces alone are more, never
  a lone segment, at most ``max_run`` entries, and it stops walking back only for a reason.
- Repeated compaction (a simulation that merges what :func:`compaction_run` picks, as
  ``Compactor._build`` groups whole batches into segments of at most ``segment.bytes``): the
  bounds that follow from the rule, proved in :func:`test_repeated_compaction_keeps_the_bounds`.
- :func:`retention_start`: Kafka's rules (``UnifiedLog.deleteOldSegments``: entries wholly
  below the log start, then ``retention.bytes``, then ``retention.ms``) as a reference, and
  monotone, idempotent, a prefix, never past the last entry's end.
- :func:`unreachable`: exactly the prefix wholly below the log start.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hypothesis import given, note, settings
from hypothesis import strategies as st

from kafscale.broker.layout import (
    Entry,
    Policy,
    compaction_run,
    retention_start,
    sealed,
    unreachable,
)

NOW = 1_000_000_000
"""The planning's clock in these tests (ms)."""
FOREVER = 1 << 50


@dataclass(frozen=True)
class E:
    """An entry as the planning sees it (``SegmentMeta`` has these fields)."""

    base: int
    last: int
    size: int
    max_timestamp: int
    piece: bool
    created: int


# --- generated entry lists ------------------------------------------------------------------


_ENTRY = st.tuples(
    st.integers(1, 20),  # records
    st.integers(1, 5000),  # bytes
    st.one_of(st.just(-1), st.integers(0, NOW)),  # max timestamp (-1: none)
    # 0: an entry written before entries had a creation time.
    st.one_of(st.just(0), st.integers(NOW - 100_000, NOW)),
)


@st.composite
def entry_lists(draw: st.DrawFn, max_segments: int = 8, max_pieces: int = 8) -> list[E]:
    """Segments then pieces, offsets contiguous from a random start."""
    base = draw(st.integers(0, 10_000))
    segments = draw(st.lists(_ENTRY, max_size=max_segments))
    pieces = draw(st.lists(_ENTRY, max_size=max_pieces))
    out = []
    for i, (count, size, stamp, created) in enumerate(segments + pieces):
        out.append(E(base, base + count - 1, size, stamp, i >= len(segments), created))
        base += count
    return out


policies = st.builds(
    Policy,
    segment_bytes=st.integers(1, 20_000),
    segment_ms=st.one_of(st.just(FOREVER), st.integers(0, 200_000)),
    max_pieces=st.integers(1, 10),
    piece_age_ms=st.integers(0, 200_000),
    idle_ms=st.integers(0, 200_000),
    max_run=st.integers(1, 20),
)


def first_piece(entries: list[E]) -> int:
    """Index of the first piece (``len(entries)`` when there is none)."""
    return next((i for i, e in enumerate(entries) if e.piece), len(entries))


def is_idle(entries: list[E], now: int, policy: Policy) -> bool:
    pieces = [e for e in entries if e.piece]
    return not pieces or now - max(e.created for e in pieces) >= policy.idle_ms


def is_due(entries: list[E], now: int, policy: Policy) -> bool:
    pieces = [e for e in entries if e.piece]
    return bool(pieces) and (
        len(pieces) >= policy.max_pieces
        or now - min(e.created for e in pieces) >= policy.piece_age_ms
        or is_idle(entries, now, policy)
    )


# --- compaction_run ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(entry_lists(), policies, st.integers(NOW - 300_000, NOW + 300_000))
def test_compaction_run_shape(entries: list[E], policy: Policy, now: int) -> None:
    run = compaction_run(entries, now, policy)
    n, k = len(entries), first_piece(entries)
    assert all(e.piece for e in entries[k:])  # (the generator's promise)
    pieces = n > k
    if pieces and not is_due(entries, now, policy):
        assert run is None  # pieces wait until they are due
        return
    if run is None:
        return
    i, j = run
    assert 0 <= i < j <= n
    assert j - i <= policy.max_run
    chosen = entries[i:j]
    if pieces:
        # Due pieces are always taken, from the first one on, as many as a run holds.
        assert i <= k and j == min(n, k + policy.max_run)
    else:
        assert j == n and j - i >= 2  # segments only: never a lone segment
    assert not any(sealed(e, now, policy) for e in chosen)
    total = sum(e.size for e in chosen)
    if i < k:
        assert total <= policy.segment_bytes  # segments join only within segment.bytes
    # Every joined segment is at most twice what it joins, unless the partition is idle.
    if not is_idle(entries, now, policy):
        for x in range(i, min(j, k)):
            assert entries[x].size <= 2 * sum(e.size for e in entries[x + 1 : j])


@settings(max_examples=200)
@given(entry_lists(), policies, st.integers(NOW - 300_000, NOW + 300_000))
def test_compaction_run_walks_back_as_far_as_the_rule_allows(
    entries: list[E], policy: Policy, now: int
) -> None:
    """The run stops walking back only at the start, at ``max_run``, at a sealed segment, at
    one that would pass ``segment.bytes``, or (busy) at one more than twice what it joins."""
    run = compaction_run(entries, now, policy)
    if run is None:
        return
    i, j = run
    if i == 0 or j - i >= policy.max_run:
        return
    prev = entries[i - 1]
    acc = sum(e.size for e in entries[i:j])
    assert (
        sealed(prev, now, policy)
        or acc + prev.size > policy.segment_bytes
        or (not is_idle(entries, now, policy) and prev.size > 2 * acc)
    )


@given(entry_lists(max_pieces=0), policies, st.integers(NOW - 300_000, NOW + 300_000))
def test_without_pieces_only_open_segments_merge(
    entries: list[E], policy: Policy, now: int
) -> None:
    run = compaction_run(entries, now, policy)
    open_tail = 0
    acc = 0
    for e in reversed(entries):
        if sealed(e, now, policy) or acc + e.size > policy.segment_bytes:
            break
        acc += e.size
        open_tail += 1
    expected = min(open_tail, policy.max_run)
    if expected < 2:
        assert run is None
    else:
        assert run == (len(entries) - expected, len(entries))


# --- repeated compaction ----------------------------------------------------------------------


@dataclass(frozen=True)
class Seg:
    """A simulated entry: the ids and sizes of the flushed pieces (units) it holds."""

    units: tuple[tuple[int, int], ...]
    piece: bool
    created: int
    tag: int
    """Identity: a new tag for every entry written."""

    @property
    def base(self) -> int:
        return self.units[0][0]

    @property
    def last(self) -> int:
        return self.units[-1][0]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.units)

    @property
    def max_timestamp(self) -> int:
        return -1


class Simulation:
    """A partition's entry list under flushes and compactions; a compaction writes what the
    run holds into segments of at most ``segment.bytes`` (whole units, greedily, as
    ``Compactor._build`` groups whole batches)."""

    def __init__(self, segment_bytes: int) -> None:
        self.entries: list[Seg] = []
        self.segment_bytes = segment_bytes
        self.next_unit = 0
        self.next_tag = 0
        self.writes: dict[int, int] = {}
        """How many times each unit was written into a segment."""
        self.runs: list[list[Seg]] = []

    def tag(self) -> int:
        self.next_tag += 1
        return self.next_tag

    def flush(self, sizes: list[int], now: int) -> None:
        for size in sizes:
            unit = (self.next_unit, size)
            self.next_unit += 1
            self.entries.append(Seg((unit,), True, now, self.tag()))

    def compact(self, now: int, policy: Policy) -> bool:
        run = compaction_run(self.entries, now, policy)
        if run is None:
            return False
        i, j = run
        inputs = self.entries[i:j]
        self.runs.append(inputs)
        groups: list[list[tuple[int, int]]] = [[]]
        size = 0
        for unit in (u for s in inputs for u in s.units):
            if groups[-1] and size + unit[1] > self.segment_bytes:
                groups.append([])
                size = 0
            groups[-1].append(unit)
            size += unit[1]
        created = min(s.created for s in inputs)
        out = [Seg(tuple(g), False, created, self.tag()) for g in groups]
        for u, _ in (u for s in inputs for u in s.units):
            self.writes[u] = self.writes.get(u, 0) + 1
        self.entries[i:j] = out
        return True


Rounds = tuple[int, list[tuple[list[int], bool]]]


@st.composite
def rounds(draw: st.DrawFn) -> Rounds:
    """``segment.bytes`` and compaction rounds: each flushes pieces (together at most
    ``segment.bytes``; an idle round may flush none) and is busy or idle."""
    segment_bytes = draw(st.integers(4, 100_000))
    idle_rounds = draw(st.booleans())
    out = []
    for _ in range(draw(st.integers(1, 60))):
        idle = idle_rounds and draw(st.booleans())
        sizes = draw(
            st.lists(
                st.integers(1, max(1, segment_bytes // 4)), min_size=0 if idle else 1, max_size=4
            )
        )
        out.append((sizes, idle))
    return segment_bytes, out


@settings(max_examples=150)
@given(rounds())
def test_repeated_compaction_keeps_the_bounds(
    case: tuple[int, list[tuple[list[int], bool]]],
) -> None:
    """Rounds of compaction as the broker runs them (every flush's pieces compacted before the
    next flush; ``segment.ms`` never; ``max_run`` not reached), each round's pieces between
    ``p`` bytes and ``segment.bytes`` (B) in all. Then:

    (I) Any two adjacent segments below B, X before Y, have X > 2Y or X + Y > B. Proof: a
    compaction that writes one segment N stopped walking back at its predecessor P because P is
    sealed, or P + N > B, or (busy) P > 2N; a run never exceeds B when it joins a segment, and
    the pieces are at most B, so a compaction writes exactly one segment (a split needs more
    than B); pairs it does not touch keep their sizes.

    (R) A segment is rewritten later only if it is below B and, with every entry after it, at
    most B (a run that reaches it holds them all, and their total never decreases): the
    segments that can still be rewritten are a suffix of at most 1 + log2(B/p) segments, since
    by (I) each is more than twice the next (X + Y <= B rules out the other case), the first
    is below B and the last at least p. Every other segment is never rewritten again: we check
    that no later run touches it, whatever the rounds.

    (W) With only busy rounds a unit is written at most 1 + log_1.5(B/p) times: a rewrite of a
    segment Y either joins it to its predecessor X (then X > 2Y by (I), the result > 3Y) or
    starts at Y (then what follows is at least Y/2: the result >= 1.5Y), and no result is over
    B; the first write makes a segment of at least p.

    The bound the layout's docstring suggests, "only a few segments below segment.bytes", does
    not follow: see :func:`test_few_segments_below_segment_bytes`.
    """
    segment_bytes, plan = case
    sim = Simulation(segment_bytes)
    sizes = [sum(s) for s, _ in plan if s]
    p = min(sizes) if sizes else 1
    busy = Policy(
        segment_bytes, FOREVER, max_pieces=1, piece_age_ms=FOREVER, idle_ms=FOREVER, max_run=10**6
    )
    idle = replace(busy, idle_ms=0)
    frozen: set[int] = set()
    for pieces, idle_round in plan:
        sim.flush(pieces, NOW)
        ran = sim.compact(NOW, idle if idle_round else busy)
        if pieces:
            assert ran  # due pieces are always compacted
        assert not any(e.piece for e in sim.entries)
        # A frozen segment is never part of a later run.
        assert not any(s.tag in frozen for s in sim.runs[-1]) if ran else True
        segs = sim.entries
        assert all(s.size >= p for s in segs)
        for x, y in itertools.pairwise(segs):  # (I)
            if x.size < segment_bytes and y.size < segment_bytes:
                assert x.size > 2 * y.size or x.size + y.size > segment_bytes, [
                    s.size for s in segs
                ]
        rewritable: list[Seg] = []  # (R)
        suffix = 0
        for s in reversed(segs):
            suffix += s.size
            if s.size >= segment_bytes or suffix > segment_bytes:
                break
            rewritable.insert(0, s)
        note(f"sizes {[s.size for s in segs]}, rewritable {len(rewritable)}, p {p}")
        assert not rewritable or 2 ** (len(rewritable) - 1) * p < segment_bytes
        frozen |= {s.tag for s in segs[: len(segs) - len(rewritable)]}
    if not any(idle_round for _, idle_round in plan):  # (W)
        most = max(sim.writes.values(), default=0)
        # 1.5 ** (most - 1) * p <= B, in integers
        assert 3 ** (most - 1) * p <= 2 ** (most - 1) * segment_bytes, (most, p, segment_bytes)


@given(rounds())
def test_idle_compaction_reaches_a_fixpoint(case: Rounds) -> None:
    """Once idle, compaction stops after a bounded number of rounds (each round without pieces
    merges at least two segments into one), and then no two adjacent open segments at the
    end fit together in segment.bytes."""
    segment_bytes, plan = case
    sim = Simulation(segment_bytes)
    for pieces, _ in plan:
        sim.flush(pieces, NOW)
    idle = Policy(segment_bytes, FOREVER, idle_ms=0, max_run=7)
    for _ in range(2 * len(sim.entries) + 2):  # each round takes a piece or merges segments
        if not sim.compact(NOW, idle):
            break
    else:
        raise AssertionError("idle compaction did not stop")
    assert not any(e.piece for e in sim.entries)
    assert sum(s.size for s in sim.entries) == sum(sum(s) for s, _ in plan)
    segs = sim.entries
    if len(segs) >= 2:
        assert segs[-1].size >= segment_bytes or segs[-2].size + segs[-1].size > segment_bytes


# --- retention_start --------------------------------------------------------------------------


def kafka_retention_start(
    entries: Sequence[Entry], log_start: int, now: int, retention_ms: int, retention_bytes: int
) -> int:
    """Kafka's ``UnifiedLog.deleteOldSegments`` over whole entries, step by step:
    ``deleteLogStartOffsetBreachedSegments`` (entries wholly below the log start), then
    ``deleteRetentionSizeBreachedSegments`` (``diff = size - retention.bytes``; delete the
    oldest while ``diff - segment.size >= 0``), then ``deleteRetentionMsBreachedSegments``
    (the oldest while ``now - largestTimestamp > retention.ms``; no timestamp: its creation
    time, as Kafka falls back to the file's mtime). ``-1`` limits nothing. The new log start:
    the first kept entry's base, or past the last deleted one, never below the old one."""
    log = [e for e in entries if e.last >= log_start]
    start = log_start
    if retention_bytes >= 0:
        diff = sum(e.size for e in log) - retention_bytes
        while log and diff >= 0 and diff - log[0].size >= 0:
            diff -= log[0].size
            start = max(start, log.pop(0).last + 1)
    if retention_ms >= 0:
        while log:
            stamp = log[0].max_timestamp if log[0].max_timestamp >= 0 else log[0].created
            if not now - stamp > retention_ms:
                break
            start = max(start, log.pop(0).last + 1)
    return start


retention_ms_values = st.one_of(st.just(-1), st.integers(0, NOW))
retention_bytes_values = st.one_of(st.just(-1), st.integers(0, 40_000))


@st.composite
def logs_with_start(draw: st.DrawFn) -> tuple[list[E], int]:
    entries = draw(entry_lists())
    if not entries:
        return entries, draw(st.integers(0, 100))
    return entries, draw(st.integers(entries[0].base, entries[-1].last + 1))


@settings(max_examples=200)
@given(logs_with_start(), st.integers(0, 2 * NOW), retention_ms_values, retention_bytes_values)
def test_retention_start_is_kafkas_rule(
    case: tuple[list[E], int], now: int, retention_ms: int, retention_bytes: int
) -> None:
    entries, log_start = case
    start = retention_start(entries, log_start, now, retention_ms, retention_bytes)
    assert start == kafka_retention_start(entries, log_start, now, retention_ms, retention_bytes)
    # Never below the log start, never past the last entry's end; only whole entries go.
    end = entries[-1].last + 1 if entries else log_start
    assert log_start <= start <= max(log_start, end)
    assert start == log_start or start in {e.last + 1 for e in entries}
    # What goes is a prefix of what was live, and what stays is a suffix.
    kept = [e for e in entries if e.last >= start]
    assert kept == entries[len(entries) - len(kept) :]
    # Applying it again changes nothing.
    assert retention_start(entries, start, now, retention_ms, retention_bytes) == start
    # -1 and -1: nothing moves.
    assert retention_start(entries, log_start, now, -1, -1) == log_start


@settings(max_examples=200)
@given(
    logs_with_start(),
    st.integers(0, 2 * NOW),
    st.integers(0, NOW),
    retention_ms_values,
    retention_ms_values,
    retention_bytes_values,
    retention_bytes_values,
    st.integers(0, 100),
)
def test_retention_start_is_monotone(
    case: tuple[list[E], int],
    now: int,
    later: int,
    ms_a: int,
    ms_b: int,
    bytes_a: int,
    bytes_b: int,
    further: int,
) -> None:
    """A later clock, a later log start, a shorter retention.ms or a smaller
    retention.bytes (-1 being the largest) never gives an earlier log start."""
    entries, log_start = case

    def unlimited_last(v: int) -> int:
        return 1 << 62 if v < 0 else v

    ms_lo, ms_hi = sorted((ms_a, ms_b), key=unlimited_last)
    by_lo, by_hi = sorted((bytes_a, bytes_b), key=unlimited_last)
    base = retention_start(entries, log_start, now, ms_hi, by_hi)
    assert retention_start(entries, log_start, now + later, ms_hi, by_hi) >= base
    assert retention_start(entries, log_start, now, ms_lo, by_hi) >= base
    assert retention_start(entries, log_start, now, ms_hi, by_lo) >= base
    assert retention_start(entries, log_start + further, now, ms_hi, by_hi) >= base


# --- unreachable ------------------------------------------------------------------------------


@given(logs_with_start())
def test_unreachable_is_the_prefix_wholly_below_the_log_start(case: tuple[list[E], int]) -> None:
    entries, log_start = case
    gone = unreachable(entries, log_start)
    assert gone == list(range(len(gone)))  # a prefix
    assert all(entries[i].last < log_start for i in gone)
    assert all(e.last >= log_start for e in entries[len(gone) :])
