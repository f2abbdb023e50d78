"""A Jepsen-style checker for a log: record what clients did, then check the invariants of
``shared/notes/correctness-and-faults.md`` on that history.

Recording (thread-safe; a workload's producer and consumer threads share one history):

- every send: :meth:`History.invoke` before handing the value to the client (producer name,
  a value unique in the history such as ``p3:17``, partition, invoke time), then exactly one
  outcome: :meth:`History.ok` (the acked offset), :meth:`History.fail` (a *definite* failure:
  the value was certainly not written) or :meth:`History.unknown` (a timeout, a lost
  answer: it may or may not have been written). :meth:`History.close` turns what has no
  outcome yet into unknown.
- every record a consumer polled: :meth:`History.read` (consumer, session, partition, offset,
  value). A *session* is one consumer instance with one assignment; :meth:`History.assign`
  records where it starts reading a partition, so its first record can be checked.
- after the faults: a fresh consumer reads every partition from the beginning to its high
  watermark (:meth:`History.final`, with ``consumer=FINAL`` reads).

Times are ``time.monotonic()`` (one clock for every thread and process of the machine).

:func:`check` answers a :class:`Result`: the counts (:attr:`Result.summary`), examples of every
violation (:attr:`Result.problems`) and whether the history is valid. The invariants:

1. **No lost write**: every acked value is read at exactly its acked offset. Otherwise it is
   *lost* when it was read elsewhere, or its offset held another value, or a later offset of
   its partition was read; else *unseen* (nothing at or after its offset was read). Lost
   fails; unseen fails once the final read is recorded (an acked offset at or above the final
   high watermark: the log's end went below an ack).
2. **Consistent offsets**: no (partition, offset) holds two values, whether claimed by reads
   or by acks.
3. **Duplicates**: a value stored at more than one offset is counted (retries without
   idempotence make them), and fails only for the producers named in ``exactly_once``
   (idempotent ones: *duplicates_exactly_once*).
4. **Nothing from nowhere**: no value is read that was never sent (*never_sent*), or whose
   send definitely failed (*read_after_fail*).
5. **Assign-mode consumers**: within a session each partition is read at consecutive offsets
   (offsets here have no gaps: no transactions, no compaction), from where the session was
   assigned: a skip or a step back is a *non-monotonic read*.
6. **Real-time order**: if send A was acked before send B was invoked (same partition), then
   offset(A) < offset(B).
7. **Sane acks**: no ack with an offset below 0 or for another partition than the one sent to
   (an ack for a value stored elsewhere is a lost write, 1).

Plus, for the final read: it covers every offset from 0 to the high watermark of each
partition (*final_gaps* otherwise).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

FINAL = "final"
"""The consumer name of the final full read."""

Outcome = Literal["pending", "ok", "fail", "unknown"]

EXAMPLES = 5
"""Examples kept per kind of violation."""


@dataclass
class Send:
    process: str
    value: str
    partition: int
    invoke: float
    complete: float | None = None
    outcome: Outcome = "pending"
    offset: int | None = None
    """The acked offset (``ok``); for ``ok`` only."""
    acked_partition: int | None = None
    """The partition named by the ack (None: the one sent to)."""
    error: str = ""


@dataclass(frozen=True)
class Read:
    consumer: str
    session: int
    partition: int
    offset: int
    value: str
    time: float


@dataclass(frozen=True)
class Assign:
    consumer: str
    session: int
    partition: int
    start: int


class History:
    """Sends and reads of one run (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sends: list[Send] = []
        self.reads: list[Read] = []
        self.assigns: list[Assign] = []
        self.final_watermarks: dict[int, int] | None = None
        """Partition -> high watermark the final read went to (None: no final read yet)."""

    # --- sends ----------------------------------------------------------------------------

    def invoke(self, process: str, value: str, partition: int, at: float | None = None) -> Send:
        send = Send(process, value, partition, time.monotonic() if at is None else at)
        with self._lock:
            self.sends.append(send)
        return send

    def _complete(self, send: Send, outcome: Outcome, at: float | None) -> None:
        with self._lock:
            if send.outcome != "pending":
                raise ValueError(f"{send.value}: second outcome {outcome} after {send.outcome}")
            send.outcome = outcome
            send.complete = time.monotonic() if at is None else at

    def ok(
        self, send: Send, offset: int, partition: int | None = None, at: float | None = None
    ) -> None:
        send.offset = offset
        send.acked_partition = partition
        self._complete(send, "ok", at)

    def fail(self, send: Send, error: str = "", at: float | None = None) -> None:
        """A definite failure: the value was certainly not written."""
        send.error = error
        self._complete(send, "fail", at)

    def unknown(self, send: Send, error: str = "", at: float | None = None) -> None:
        """An indefinite outcome: it may have been written."""
        send.error = error
        self._complete(send, "unknown", at)

    def close(self) -> None:
        """Every send without an outcome becomes unknown (the run is over)."""
        with self._lock:
            pending = [s for s in self.sends if s.outcome == "pending"]
        for send in pending:
            self.unknown(send, "no outcome by the end of the run")

    # --- reads ----------------------------------------------------------------------------

    def assign(self, consumer: str, session: int, partition: int, start: int) -> None:
        with self._lock:
            self.assigns.append(Assign(consumer, session, partition, start))

    def read(
        self,
        consumer: str,
        session: int,
        partition: int,
        offset: int,
        value: str,
        at: float | None = None,
    ) -> None:
        record = Read(
            consumer, session, partition, offset, value, time.monotonic() if at is None else at
        )
        with self._lock:
            self.reads.append(record)

    def final(self, watermarks: dict[int, int]) -> None:
        """The final read (``consumer=FINAL`` reads) went to these high watermarks."""
        with self._lock:
            self.final_watermarks = dict(watermarks)


@dataclass
class Result:
    summary: dict[str, Any]
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return bool(self.summary["valid"])

    def line(self) -> str:
        """The counts on one line (for the test report)."""
        keys = [
            "operations",
            "acked",
            "failed",
            "unknown",
            "unknown_written",
            "reads",
            "final_records",
            "lost",
            "unseen",
            "duplicates",
            "inconsistent_offsets",
            "non_monotonic_reads",
            "never_sent",
            "read_after_fail",
            "order_violations",
            "invalid_acks",
            "final_gaps",
        ]
        if self.summary["duplicates_exactly_once"]:
            keys.insert(keys.index("duplicates") + 1, "duplicates_exactly_once")
        counts = " ".join(f"{k}={self.summary[k]}" for k in keys)
        return f"{'PASS' if self.valid else 'FAIL'} {counts}"

    def explain(self) -> str:
        """Every kind of violation found, with examples."""
        lines = [self.line()]
        for kind, examples in self.problems.items():
            lines.append(f"  {kind}:")
            lines += [f"    {e}" for e in examples]
        return "\n".join(lines)


class _Problems:
    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, example: str, count: int = 1) -> None:
        self.counts[kind] += count
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)


def check(history: History, exactly_once: Iterable[str] = ()) -> Result:
    """Check ``history`` (see the module docstring); ``exactly_once``: the producers
    (processes) whose values must be stored once (idempotent producers)."""
    exactly = set(exactly_once)
    with history._lock:
        sends = list(history.sends)
        reads = list(history.reads)
        assigns = list(history.assigns)
        final = None if history.final_watermarks is None else dict(history.final_watermarks)
    problems = _Problems()

    by_value: dict[str, Send] = {}
    for s in sends:
        if s.value in by_value:
            raise ValueError(f"value {s.value!r} sent twice: values must be unique")
        by_value[s.value] = s
    acked = [s for s in sends if s.outcome == "ok"]

    # Where each value was seen, what each position held.
    positions: dict[str, set[tuple[int, int]]] = defaultdict(set)
    held: dict[tuple[int, int], set[str]] = defaultdict(set)
    max_read: dict[int, int] = {}
    for r in reads:
        positions[r.value].add((r.partition, r.offset))
        held[(r.partition, r.offset)].add(r.value)
        max_read[r.partition] = max(max_read.get(r.partition, -1), r.offset)

    # 7. Sane acks.
    valid_acks: list[Send] = []
    for s in acked:
        if s.offset is None or s.offset < 0:
            problems.add("invalid_acks", f"{s.value}: acked at offset {s.offset}")
        elif s.acked_partition is not None and s.acked_partition != s.partition:
            problems.add(
                "invalid_acks",
                f"{s.value}: sent to partition {s.partition}, acked for {s.acked_partition}",
            )
        else:
            valid_acks.append(s)

    # 2. Consistent offsets: acks claim positions too.
    claimed: dict[tuple[int, int], set[str]] = defaultdict(set)
    for position, values in held.items():
        claimed[position] |= values
    for s in valid_acks:
        assert s.offset is not None
        claimed[(s.partition, s.offset)].add(s.value)
    for (p, o), values in sorted(claimed.items()):
        if len(values) > 1:
            problems.add("inconsistent_offsets", f"partition {p} offset {o}: {sorted(values)}")

    # 1. No lost write.
    unseen = 0
    for s in valid_acks:
        assert s.offset is not None
        at = (s.partition, s.offset)
        if s.value in held.get(at, ()):
            continue
        elsewhere = sorted(positions.get(s.value, ()))
        if elsewhere:
            problems.add("lost", f"{s.value}: acked at {at}, read only at {elsewhere}")
        elif held.get(at):
            problems.add("lost", f"{s.value}: acked at {at}, which held {sorted(held[at])}")
        elif max_read.get(s.partition, -1) > s.offset:
            problems.add(
                "lost",
                f"{s.value}: acked at {at}, never read though offset {max_read[s.partition]} was",
            )
        else:
            unseen += 1
            if final is not None:
                problems.add(
                    "unseen",
                    f"{s.value}: acked at {at}, at or above the final high watermark "
                    f"{final.get(s.partition)}",
                )

    # 3. Duplicates (reported only, but for idempotent producers).
    duplicates = 0
    for value, ps in positions.items():
        if len(ps) > 1:
            duplicates += len(ps) - 1
            sender = by_value.get(value)
            if sender is not None and sender.process in exactly:
                problems.add(
                    "duplicates_exactly_once",
                    f"{value} of idempotent producer {sender.process} stored at {sorted(ps)}",
                    len(ps) - 1,
                )

    # 4. Nothing from nowhere.
    unknown_written = 0
    for value, ps in positions.items():
        s = by_value.get(value)
        if s is None:
            problems.add("never_sent", f"{value!r} read at {sorted(ps)} was never sent")
        elif s.outcome == "fail":
            problems.add(
                "read_after_fail",
                f"{value} failed definitely ({s.error}) but was read at {sorted(ps)}",
            )
        elif s.outcome == "unknown":
            unknown_written += 1

    # 5. Assign-mode consumers: consecutive offsets per session and partition.
    starts = {(a.consumer, a.session, a.partition): a.start for a in assigns}
    last: dict[tuple[str, int, int], int] = {}
    for r in reads:
        key = (r.consumer, r.session, r.partition)
        expected = last[key] + 1 if key in last else starts.get(key)
        if expected is not None and r.offset != expected:
            kind = "skipped to" if r.offset > expected else "went back to"
            problems.add(
                "non_monotonic_reads",
                f"{r.consumer} session {r.session} partition {r.partition}: expected offset "
                f"{expected}, {kind} {r.offset}",
            )
        last[key] = r.offset

    # 6. Real-time order, per partition: a sweep over invoke times with the sends completed
    # before each (sorted by completion), keeping the largest acked offset among them.
    per_partition: dict[int, list[Send]] = defaultdict(list)
    for s in valid_acks:
        per_partition[s.partition].append(s)
    for p, group in per_partition.items():
        by_complete = sorted(group, key=lambda s: s.complete or 0.0)
        completes = [s.complete or 0.0 for s in by_complete]
        prefix_max: list[tuple[int, str]] = []
        best: tuple[int, str] = (-1, "")
        for s in by_complete:
            assert s.offset is not None
            best = max(best, (s.offset, s.value))
            prefix_max.append(best)
        for b in group:
            assert b.offset is not None
            n = bisect.bisect_left(completes, b.invoke)  # sends completed strictly before
            if n and prefix_max[n - 1][0] >= b.offset:
                offset, value = prefix_max[n - 1]
                problems.add(
                    "order_violations",
                    f"partition {p}: {value} acked at {offset} before {b.value} was sent, "
                    f"which was acked at {b.offset}",
                )

    # The final read covers every partition from 0 to its high watermark.
    final_records = 0
    if final is not None:
        final_offsets: dict[int, set[int]] = defaultdict(set)
        for r in reads:
            if r.consumer == FINAL:
                final_offsets[r.partition].add(r.offset)
                final_records += 1
        for p, hw in sorted(final.items()):
            missing = set(range(hw)) - final_offsets[p]
            if missing:
                problems.add(
                    "final_gaps",
                    f"partition {p}: the final read missed {len(missing)} offsets below the "
                    f"high watermark {hw}, e.g. {sorted(missing)[:5]}",
                    len(missing),
                )

    failing = [
        "duplicates_exactly_once",
        "lost",
        "unseen",
        "inconsistent_offsets",
        "non_monotonic_reads",
        "never_sent",
        "read_after_fail",
        "order_violations",
        "invalid_acks",
        "final_gaps",
    ]
    summary: dict[str, Any] = {
        "operations": len(sends),
        "acked": len(acked),
        "failed": sum(s.outcome == "fail" for s in sends),
        "unknown": sum(s.outcome in ("unknown", "pending") for s in sends),
        "unknown_written": unknown_written,
        "reads": len(reads),
        "final_records": final_records,
        "lost": problems.counts["lost"],
        "unseen": unseen,
        "duplicates": duplicates,
        "duplicates_exactly_once": problems.counts["duplicates_exactly_once"],
        "inconsistent_offsets": problems.counts["inconsistent_offsets"],
        "non_monotonic_reads": problems.counts["non_monotonic_reads"],
        "never_sent": problems.counts["never_sent"],
        "read_after_fail": problems.counts["read_after_fail"],
        "order_violations": problems.counts["order_violations"],
        "invalid_acks": problems.counts["invalid_acks"],
        "final_gaps": problems.counts["final_gaps"],
    }
    summary["valid"] = not any(problems.counts[k] for k in failing)
    return Result(summary, {k: v for k, v in problems.examples.items() if v})


# --- transactions ---------------------------------------------------------------------------


@dataclass
class Txn:
    """One transaction of a transactional producer: its values and how it ended:
    ``committed`` (commit_transaction returned), ``aborted`` (abort_transaction returned, or
    the producer was killed before it committed: its timeout aborts it), ``unknown`` (the
    commit's answer was lost: either outcome is fine, but all or nothing)."""

    name: str
    values: list[str] = field(default_factory=list)
    outcome: str = "unknown"


@dataclass
class TxnResult:
    summary: dict[str, int]
    problems: list[str]

    @property
    def valid(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.summary.items())


def check_transactions(
    txns: Iterable[Txn],
    committed_reads: Iterable[tuple[int, int, str]],
    uncommitted_reads: Iterable[tuple[int, int, str]],
    lso_stuck: int,
) -> TxnResult:
    """The transactional invariants on a final read of the whole log with a read_committed
    consumer (``committed_reads``: partition, offset, value) and a read_uncommitted one:

    - 0 committed records lost: every value of a committed transaction is read_committed;
    - 0 aborted records visible: no value of an aborted transaction is read_committed;
    - no partial transaction visible: of an unknown transaction, all values or none;
    - no duplicate: each value read_committed once (transactional producers are idempotent);
    - nothing read that was never sent;
    - the last stable offset reached the high watermark on every partition after recovery
      (``lso_stuck``: partitions where it did not: a hanging transaction).
    The read_uncommitted read counts the aborted values stored (they are, until retention)."""
    txns = list(txns)
    owner = {v: t for t in txns for v in t.values}
    seen: dict[str, int] = {}
    for _, _, value in committed_reads:
        seen[value] = seen.get(value, 0) + 1
    raw = {value for _, _, value in uncommitted_reads}
    problems: list[str] = []
    counts = {
        "txns": len(txns),
        "committed": 0,
        "aborted": 0,
        "unknown": 0,
        "unknown_visible": 0,
        "lost": 0,
        "aborted_visible": 0,
        "partial": 0,
        "duplicates": 0,
        "never_sent": 0,
        "aborted_stored": 0,
        "lso_stuck": lso_stuck,
    }
    for t in txns:
        counts[t.outcome] += 1
        visible = [v for v in t.values if v in seen]
        if t.outcome == "committed":
            missing = [v for v in t.values if v not in seen]
            counts["lost"] += len(missing)
            if missing:
                problems.append(
                    f"committed {t.name}: {len(missing)} values lost, e.g. {missing[0]}"
                )
        elif t.outcome == "aborted":
            counts["aborted_visible"] += len(visible)
            counts["aborted_stored"] += sum(v in raw for v in t.values)
            if visible:
                problems.append(f"aborted {t.name}: {len(visible)} visible, e.g. {visible[0]}")
        else:
            if visible and len(visible) != len(t.values):
                counts["partial"] += 1
                problems.append(f"{t.name}: {len(visible)} of {len(t.values)} values visible")
            counts["unknown_visible"] += bool(visible)
    for value, n in seen.items():
        if n > 1:
            counts["duplicates"] += 1
            problems.append(f"{value} read_committed {n} times")
        if value not in owner:
            counts["never_sent"] += 1
            problems.append(f"{value} read but never sent")
    if lso_stuck:
        problems.append(f"{lso_stuck} partitions' last stable offset never reached the end")
    return TxnResult(counts, problems)
