"""A :class:`MetadataStore` in one sqlite file, with etcd's semantics, for single-node use.

Model (as etcd's):

* A store-wide revision, incremented once by every transaction that changes something (a
  ``put``, a ``txn`` whose applied branch writes or deletes at least one key, a lease expiry
  or revocation that deletes keys). A key remembers ``create_revision``, ``mod_revision`` and
  ``version`` (writes since creation; a delete resets it, so a re-created key starts at 1).
* Transactions evaluate their compares and apply one branch inside a single sqlite
  ``BEGIN IMMEDIATE`` transaction, durable on return (``synchronous=FULL``, WAL journal).
  As in etcd, a branch may not put one key twice or put a key it also deletes
  (:class:`ValueError`), and a put naming an unknown or expired lease fails the whole
  transaction with :class:`LeaseNotFound`.
* Leases: their ids and TTLs are persistent; their deadlines are not (the clock is monotonic
  and means nothing after a restart), so on open every lease gets a full TTL again -- what
  etcd does when a new leader takes over. A lease whose deadline has passed is expired, with
  its keys deleted, before any operation runs (so expiry is exact and deterministic under an
  injected clock) and also by a background task, so keys disappear and watchers hear about it
  even when the store is otherwise idle. The task starts on the first operation (or
  :meth:`SqliteMetadataStore.start`) in the event loop that uses the store.
* Watch: every change is also appended to a history table, so a watch can start at a past
  revision. History is bounded: beyond ``history_limit`` events the oldest whole revisions are
  dropped (compacted), and a watch that needs them fails with :class:`WatchCompacted`.
  Live events come from writes made through this object: one process owns the file (it is
  opened with an exclusive lock), so there are no other writers to observe.

Threading: sqlite calls (and their fsyncs) run in one dedicated worker thread, so the event
loop never blocks on disk and every operation is serialized without locks in sqlite. The
worker runs jobs in submission order, which is what makes "watch from now" precise: a watch
sees exactly the writes submitted after it. Group commit: transactions queued one after
another run in one sqlite transaction (one fsync), each with its own revision and a savepoint
of its own (one failing fails alone), never past another kind of job. Few statements per
transaction (its keys read in one, written in one): each is a round trip through the GIL,
which a busy event loop makes slow for the worker.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from kafscale.metadata.store import (
    Compare,
    Delete,
    KeyValue,
    LeaseNotFound,
    MetadataStore,
    Put,
    StoreClosed,
    TxnResult,
    WatchCompacted,
    WatchEvent,
    prefix_end,
)
from kafscale.metadata.store import check_compare as _check_compare
from kafscale.metadata.store import check_ops as _check_ops

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_HISTORY_LIMIT: Final = 100_000
"""Events kept for watches that start in the past."""
DEFAULT_WATCH_QUEUE_LIMIT: Final = 10_000
"""Undelivered live events a watcher may hold before it falls back to reading history."""
DEFAULT_SWEEP_INTERVAL: Final = 0.5
"""Longest sleep of the lease-expiry task (it wakes earlier for a nearer deadline)."""
_HISTORY_PAGE: Final = 1000
_PARAMETERS: Final = 999
"""Parameters per statement: sqlite's oldest limit (``SQLITE_MAX_VARIABLE_NUMBER``)."""
_END: Final = 1 << 62
"""A sub-revision index past any real one: the cursor ``(r, _END)`` means "all of r seen"."""

_KIND_PUT: Final = 0
_KIND_DELETE: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compact_revision', 0);
CREATE TABLE IF NOT EXISTS kv (
    key             BLOB PRIMARY KEY,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS history (
    revision INTEGER NOT NULL,
    sub      INTEGER NOT NULL,
    kind     INTEGER NOT NULL,
    key      BLOB NOT NULL,
    value    BLOB NOT NULL,
    version  INTEGER NOT NULL,
    lease    INTEGER NOT NULL,
    PRIMARY KEY (revision, sub)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id  INTEGER PRIMARY KEY AUTOINCREMENT,
    ttl REAL NOT NULL
);
"""
# AUTOINCREMENT: a lease id is never reused, even after the newest lease is revoked, so a
# stale id held by a restarted client cannot alias a new lease.


def _range_sql(prefix: bytes) -> tuple[str, tuple[bytes, ...]]:
    """A WHERE clause (and its parameters) for ``key`` starting with ``prefix``; sqlite
    compares BLOBs with memcmp, which is etcd's byte order."""
    end = prefix_end(prefix)
    if end is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, end)


@dataclass(eq=False)
class _TxnJob:
    """A transaction waiting for the worker, and once run its result or error."""

    compare: tuple[Compare, ...]
    success: tuple[Put | Delete, ...]
    failure: tuple[Put | Delete, ...]
    seq: int
    """Its place among every job submitted (a batch never passes another kind of job)."""
    outcome: TxnResult | BaseException | None = None


@dataclass(frozen=True)
class _Event:
    """A change, as written to history; ``sub`` orders changes within one revision."""

    revision: int
    sub: int
    event: WatchEvent


_OVERFLOW: Final = "overflow"
_CLOSED: Final = "closed"


@dataclass(eq=False)
class _Watcher:
    """One live watch: events arrive, filtered, through ``queue`` on the watcher's loop."""

    prefix: bytes
    loop: asyncio.AbstractEventLoop
    limit: int
    after: int = 0
    """Deliver only events with a revision above this (set when registered)."""
    queue: asyncio.Queue[list[WatchEvent] | Literal["overflow", "closed"]] = field(
        default_factory=asyncio.Queue
    )
    pending: int = 0
    stopped: bool = False

    def deliver(self, events: list[WatchEvent]) -> None:
        """Called on the watcher's loop. Batches are whole revisions, so a watcher that
        overflows has consumed whole revisions only and can resume from history exactly."""
        if self.stopped:
            return
        if self.pending + len(events) > self.limit:
            self.stopped = True
            self.queue.put_nowait(_OVERFLOW)
            return
        self.pending += len(events)
        self.queue.put_nowait(events)

    def close(self) -> None:
        """Called on the watcher's loop: end the iteration once queued events are read."""
        if not self.stopped:
            self.stopped = True
            self.queue.put_nowait(_CLOSED)


class SqliteMetadataStore(MetadataStore):
    """:class:`MetadataStore` in the sqlite file ``path`` (``":memory:"`` for tests).

    Construction does no I/O on the caller's thread: opening is the worker thread's first job,
    and an error opening (e.g. the file is locked by another process) is raised by the first
    operation, or by :meth:`start`. Use the store from one event loop.

    ``clock`` (seconds, monotonic) decides lease deadlines; inject one to test expiry.
    ``sweep_interval`` None disables the background expiry task (expiry still happens before
    every operation). ``history_limit`` bounds the watch history (events);
    ``watch_queue_limit`` bounds each watcher's undelivered live events, beyond which it
    catches up from history instead. ``lock_timeout`` is how long opening waits for another
    process to release the file.
    """

    exclusive = True  # the file is locked by its one process

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval: float | None = DEFAULT_SWEEP_INTERVAL,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        watch_queue_limit: int = DEFAULT_WATCH_QUEUE_LIMIT,
        lock_timeout: float = 5.0,
    ) -> None:
        if history_limit < 1 or watch_queue_limit < 1:
            raise ValueError("history_limit and watch_queue_limit must be positive")
        self._path = str(path)
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._history_limit = history_limit
        self._watch_queue_limit = watch_queue_limit
        self._lock_timeout = lock_timeout
        # State below is owned by the worker thread (only its jobs touch it) ...
        self._conn: sqlite3.Connection | None = None
        self._revision = 0
        self._compact_revision = 0
        self._history_count = 0
        self._leases: dict[int, tuple[float, float]] = {}  # id -> (ttl, deadline)
        self._deadlines: list[tuple[float, int]] = []  # heap; stale entries skipped on pop
        # ... except the watcher set, which iterators also leave from the loop thread.
        self._watchers: set[_Watcher] = set()
        self._watchers_lock = threading.Lock()
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None
        self._seq = 0
        """Jobs submitted so far (numbers them)."""
        self._txns: deque[_TxnJob] = deque()
        """Transactions submitted and not yet run."""
        self._barriers: deque[int] = deque()
        """The numbers of the other jobs submitted and not yet run."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafscale-sqlite")
        self._opened: Future[None] = self._executor.submit(self._open)

    # -- plumbing ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait until the store is open (raising its error if opening failed) and start the
        lease-expiry task now rather than on the first operation."""
        await self._run(lambda: None)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn(*args)`` as the next job of the worker thread."""
        if self._closed:
            raise StoreClosed("the metadata store is closed")
        self._ensure_sweeper(asyncio.get_running_loop())
        return await asyncio.wrap_future(self._submit(self._job, fn, *args))

    def _submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        """Queue a job for the worker that no batch of transactions may overtake (see
        :meth:`_txn_job`)."""
        self._seq += 1
        self._barriers.append(self._seq)
        return self._executor.submit(self._barrier_job, fn, *args)

    def _barrier_job(self, fn: Callable[..., _T], *args: object) -> _T:
        self._barriers.popleft()  # jobs run in submission order: it is this one's
        return fn(*args)

    def _job(self, fn: Callable[..., _T], *args: object) -> _T:
        self._opened.result()  # already done (jobs run in order); re-raises an open error
        self._expire_due()
        return fn(*args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:  # pragma: no cover - jobs run only after a successful open
            raise StoreClosed("the metadata store is not open")
        return self._conn

    def _open(self) -> None:
        conn = sqlite3.connect(
            self._path, timeout=self._lock_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            # Exclusive locking before WAL: one process owns the file (our in-memory revision,
            # lease deadlines and watchers assume no other writer), and WAL then needs no
            # shared-memory index.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # The savepoints of a group commit (one per transaction) journal the pages they
            # change; in memory, not in a temp file written page by page.
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, not on first write
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            self._revision = meta["revision"]
            self._compact_revision = meta["compact_revision"]
            (self._history_count,) = conn.execute("SELECT COUNT(*) FROM history").fetchone()
            now = self._clock()
            for lease, ttl in conn.execute("SELECT id, ttl FROM leases"):
                self._set_deadline(lease, ttl, now + ttl)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _ensure_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweep_interval is None:
            return
        task = self._sweeper
        if task is None or task.done() or task.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep(self._sweep_interval))

    async def _sweep(self, interval: float) -> None:
        """Expire leases when nobody else calls in: wake at the nearest deadline (at most
        ``interval`` later, since a new lease may have a nearer one) and run an empty job,
        which expires whatever is due first."""
        while not self._closed:
            delay = interval
            try:
                delay = await asyncio.wrap_future(self._submit(self._job, self._next_expiry))
            except Exception:
                if self._closed or self._opened.exception() is not None:
                    return  # closed under us, or never opened (operations raise that error)
                _log.exception("lease expiry failed; retrying")
            await asyncio.sleep(min(max(delay, 0.001), interval))

    def _next_expiry(self) -> float:
        return self._deadlines[0][0] - self._clock() if self._deadlines else math.inf

    async def close(self) -> None:
        """Stop the expiry task, end every watch iteration, and close the file. Operations
        already submitted finish first; later ones raise :class:`StoreClosed`."""
        if self._closed:
            return
        self._closed = True
        self._lose_held_leases()
        if self._sweeper is not None:
            self._sweeper.cancel()
        with self._watchers_lock:  # _register checks _closed under this lock
            watchers = list(self._watchers)
            self._watchers.clear()
        for watcher in watchers:
            _call_on(watcher.loop, watcher.close)
        try:
            await asyncio.wrap_future(self._submit(self._close_db))
        finally:
            self._executor.shutdown(wait=False)

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        """The key's current value and revisions, or None."""
        return await self._run(self._get, key)

    def _get(self, key: bytes) -> KeyValue | None:
        row = self._db.execute(
            "SELECT key, value, mod_revision, version, lease FROM kv WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else KeyValue(*row)

    async def range(self, prefix: bytes, limit: int = 0) -> list[KeyValue]:
        """Keys starting with ``prefix`` (``b""``: every key), sorted bytewise; at most
        ``limit`` of them unless it is 0."""
        if limit < 0:
            raise ValueError(f"negative limit {limit}")
        return await self._run(self._range, prefix, limit)

    def _range(self, prefix: bytes, limit: int) -> list[KeyValue]:
        where, params = _range_sql(prefix)
        sql = f"SELECT key, value, mod_revision, version, lease FROM kv WHERE {where} ORDER BY key"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [KeyValue(*row) for row in self._db.execute(sql, params)]

    async def revision(self) -> int:
        """The current store revision (0 for a new store)."""
        return await self._run(lambda: self._revision)

    # -- writes ------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Unconditional write (a transaction without compares); the new store revision."""
        return (await self.txn((), (Put(key, value, lease),))).revision

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        """If every compare holds apply ``success``, else ``failure``; atomic and durable.

        Compares read the state before the transaction. A missing key has ``mod_revision``
        and ``version`` 0 and fails every ``value`` compare. Both branches are validated
        before anything runs (:class:`ValueError`, :class:`TypeError`). A transaction that
        changes nothing (an empty branch, deletes of absent keys) leaves the revision alone.
        """
        compare, success, failure = tuple(compare), tuple(success), tuple(failure)
        for c in compare:
            _check_compare(c)
        _check_ops(success)
        _check_ops(failure)
        if self._closed:
            raise StoreClosed("the metadata store is closed")
        self._ensure_sweeper(asyncio.get_running_loop())
        self._seq += 1
        job = _TxnJob(compare, success, failure, self._seq)
        self._txns.append(job)
        return await asyncio.wrap_future(self._executor.submit(self._job, self._txn_job, job))

    def _txn_job(self, job: _TxnJob) -> TxnResult:
        """Run ``job`` (group commit): with it, every transaction queued after it up to the
        next other job, in order, in one sqlite transaction (one fsync, one BEGIN/COMMIT),
        each with its own revision, one failing alone (a savepoint each). A job already run
        by an earlier batch just returns its outcome."""
        if job.outcome is None:
            barrier = self._barriers[0] if self._barriers else None
            batch: list[_TxnJob] = []
            while self._txns and (barrier is None or self._txns[0].seq < barrier):
                batch.append(self._txns.popleft())
            assert batch and batch[0] is job, "transactions run in submission order"
            self._txn_batch(batch)
        if isinstance(job.outcome, BaseException):
            raise job.outcome
        assert job.outcome is not None
        return job.outcome

    def _txn_batch(self, batch: list[_TxnJob]) -> None:
        """Run ``batch`` in one sqlite transaction, setting each job's outcome (a savepoint
        each when there are several, so that one failing fails alone)."""
        db = self._db
        several = len(batch) > 1
        db.execute("BEGIN IMMEDIATE")
        try:
            revision = self._revision
            events: list[_Event] = []
            for job in batch:
                if several:
                    db.execute("SAVEPOINT job")
                try:
                    succeeded = self._all_hold(job.compare)
                    mine = self._apply(job.success if succeeded else job.failure, revision + 1)
                except Exception as error:  # this one alone fails (LeaseNotFound, ...)
                    if not several:
                        raise
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    job.outcome = error
                    continue
                if several:
                    db.execute("RELEASE job")
                if mine:
                    revision += 1
                    events += mine
                job.outcome = TxnResult(succeeded, revision)
            self._commit(events)
        except BaseException as error:
            _rollback(db)
            for job in batch:
                job.outcome = error

    def _all_hold(self, compares: Sequence[Compare]) -> bool:
        """Whether every compare holds: the keys read in one statement (every statement is a
        round trip through the GIL, which a busy event loop makes slow)."""
        if not compares:
            return True
        rows = self._rows(
            "SELECT key, mod_revision, version, value FROM kv WHERE key IN ({})",
            list({c.key for c in compares}),
        )
        for c in compares:
            row = rows.get(c.key)
            if c.target == "value":
                if row is None:
                    return False  # etcd: a value compare against a missing key never holds
                if not _compare(row[2], c.op, c.value):
                    return False
                continue
            actual = 0 if row is None else row[0 if c.target == "mod_revision" else 1]
            if not _compare(actual, c.op, c.value):
                return False
        return True

    def _rows(self, sql: str, keys: list[bytes]) -> dict[bytes, tuple[Any, ...]]:
        """``sql`` (a SELECT of ``key, ...`` with ``IN ({})``) for ``keys``, in as few
        statements as sqlite's parameter limit allows: key -> the rest of its row."""
        out: dict[bytes, tuple[Any, ...]] = {}
        for start in range(0, len(keys), _PARAMETERS):
            chunk = keys[start : start + _PARAMETERS]
            for key, *rest in self._db.execute(sql.format(",".join("?" * len(chunk))), chunk):
                out[key] = tuple(rest)
        return out

    def _apply(self, ops: Sequence[Put | Delete], revision: int) -> list[_Event]:
        """Write ``ops`` at ``revision`` inside the open transaction; the resulting events.
        The puts' current versions are read in one statement and written in one (a branch
        never touches a key twice, so their order among themselves does not matter)."""
        db = self._db
        puts = [op for op in ops if isinstance(op, Put)]
        for put in puts:
            if put.lease and put.lease not in self._leases:
                raise LeaseNotFound(put.lease)
        existing = self._rows(
            "SELECT key, create_revision, version FROM kv WHERE key IN ({})", [p.key for p in puts]
        )
        rows: list[tuple[bytes, bytes, int, int, int, int]] = []
        events: list[_Event] = []
        for op in ops:
            if isinstance(op, Put):
                row = existing.get(op.key)
                create_revision, version = (revision, 1) if row is None else (row[0], row[1] + 1)
                rows.append((op.key, op.value, create_revision, revision, version, op.lease))
                kv = KeyValue(op.key, op.value, revision, version, op.lease)
                events.append(_Event(revision, len(events), WatchEvent("put", kv)))
            else:
                if op.prefix:
                    where, params = _range_sql(op.key)
                else:
                    where, params = "key = ?", (op.key,)
                keys = [
                    k
                    for (k,) in db.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key", params)
                ]
                if keys:
                    db.execute(f"DELETE FROM kv WHERE {where}", params)
                events.extend(_deletions(keys, revision, len(events)))
        _insert_many(
            db,
            "INSERT OR REPLACE INTO kv "
            "(key, value, create_revision, mod_revision, version, lease) VALUES ",
            rows,
        )
        return events

    def _commit(self, events: list[_Event]) -> None:
        """Finish the open transaction: record ``events`` (of one or more revisions) in
        history, commit (fsync), then publish them to watchers. Without events, roll back:
        nothing changed, so the revision stays."""
        db = self._db
        if not events:
            db.execute("ROLLBACK")
            return
        _insert_many(
            db,
            "INSERT INTO history (revision, sub, kind, key, value, version, lease) VALUES ",
            [
                (
                    e.revision,
                    e.sub,
                    _KIND_PUT if e.event.kind == "put" else _KIND_DELETE,
                    e.event.kv.key,
                    e.event.kv.value,
                    e.event.kv.version,
                    e.event.kv.lease,
                )
                for e in events
            ],
        )
        revision = events[-1].revision
        history_count = self._history_count + len(events)
        compact_revision = self._compact_revision
        if history_count > self._history_limit:
            # Drop whole revisions, oldest first, until at most history_limit events remain:
            # find the revision of the last event that must go and drop through it.
            (last_dropped,) = db.execute(
                "SELECT revision FROM history ORDER BY revision, sub LIMIT 1 OFFSET ?",
                (history_count - self._history_limit - 1,),
            ).fetchone()
            dropped = db.execute("DELETE FROM history WHERE revision <= ?", (last_dropped,))
            history_count -= dropped.rowcount
            compact_revision = last_dropped
        db.execute(
            "UPDATE meta SET value = CASE name WHEN 'revision' THEN ? ELSE ? END "
            "WHERE name IN ('revision', 'compact_revision')",
            (revision, compact_revision),
        )
        db.execute("COMMIT")
        # Only now, when it is durable, does the change become visible in memory and to
        # watchers.
        self._revision = revision
        self._history_count = history_count
        self._compact_revision = compact_revision
        self._publish(events)

    def _publish(self, events: list[_Event]) -> None:
        """Hand each watcher its share of ``events`` on its own loop. call_soon_threadsafe
        keeps callbacks in order, so watchers see revisions in commit order."""
        with self._watchers_lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            mine = [
                e.event
                for e in events
                if e.revision > watcher.after and e.event.kv.key.startswith(watcher.prefix)
            ]
            if mine and not _call_on(watcher.loop, watcher.deliver, mine):
                self._unwatch(watcher)  # its loop is closed: nobody will read it

    # -- leases ------------------------------------------------------------------------------

    async def lease_grant(self, ttl_seconds: float) -> int:
        """A new lease id (> 0, never reused) expiring ``ttl_seconds`` after its last
        keep-alive."""
        if not (ttl_seconds > 0 and math.isfinite(ttl_seconds)):
            raise ValueError(f"lease TTL must be positive and finite, not {ttl_seconds}")
        return await self._run(self._lease_grant, float(ttl_seconds))

    def _lease_grant(self, ttl: float) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            lease = db.execute("INSERT INTO leases (ttl) VALUES (?)", (ttl,)).lastrowid
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        assert lease is not None
        self._set_deadline(lease, ttl, self._clock() + ttl)
        return lease

    async def lease_keepalive(self, lease: int) -> bool:
        """Restart the lease's TTL; False if it has expired or never existed. Not written to
        disk: deadlines restart on open anyway."""
        return await self._run(self._lease_keepalive, lease)

    def _lease_keepalive(self, lease: int) -> bool:
        entry = self._leases.get(lease)
        if entry is None:
            return False
        ttl = entry[0]
        self._set_deadline(lease, ttl, self._clock() + ttl)
        return True

    async def lease_revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys (one revision, if it had any). Revoking an
        unknown or already expired lease does nothing."""
        await self._run(self._lease_revoke, lease)

    def _lease_revoke(self, lease: int) -> None:
        entry = self._leases.pop(lease, None)
        if entry is None:
            return
        try:
            self._end_leases([lease])
        except BaseException:
            self._leases[lease] = entry  # not ended: keep it (its heap entry still matches)
            raise

    def _set_deadline(self, lease: int, ttl: float, deadline: float) -> None:
        self._leases[lease] = (ttl, deadline)
        heapq.heappush(self._deadlines, (deadline, lease))

    def _expire_due(self) -> None:
        """End every lease whose deadline has passed; runs before every job."""
        if not self._deadlines or self._conn is None:
            return
        now = self._clock()
        due: list[tuple[int, tuple[float, float]]] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, lease = heapq.heappop(self._deadlines)
            entry = self._leases.get(lease)
            if entry is not None and entry[1] == deadline:  # else renewed or ended since
                due.append((lease, self._leases.pop(lease)))
        if not due:
            return
        try:
            self._end_leases([lease for lease, _ in due])
        except BaseException:
            # Keep them due, so the next job retries instead of leaking their keys.
            for lease, entry in due:
                self._set_deadline(lease, entry[0], entry[1])
            raise

    def _end_leases(self, leases: Iterable[int]) -> None:
        """Delete the leases and their keys in one sqlite transaction; each lease that had
        keys takes its own revision, as a separate etcd revoke would."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            events: list[_Event] = []
            revision = self._revision
            for lease in leases:
                keys = [
                    k
                    for (k,) in db.execute(
                        "SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,)
                    )
                ]
                if keys:
                    revision += 1
                    db.execute("DELETE FROM kv WHERE lease = ?", (lease,))
                    events.extend(_deletions(keys, revision, 0))
                db.execute("DELETE FROM leases WHERE id = ?", (lease,))
            if events:
                self._commit(events)
            else:
                db.execute("COMMIT")  # only lease rows went: no revision
        except BaseException:
            _rollback(db)
            raise

    # -- watch -------------------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Events for keys starting with ``prefix`` with a revision above ``start_revision``
        (0: every write submitted after this call), in revision order, until the iterator is
        closed (``aclose()``) or the store is.

        Must be called in the event loop that iterates, and the result iterated or closed:
        the watch is registered at once (not on the first ``anext``), so that no write made
        between this call and the first ``anext`` is missed. A start below the history limit
        raises :class:`WatchCompacted` from the iteration. A consumer that falls more than
        ``watch_queue_limit`` events behind is caught up from history, so it still sees every
        event (or gets :class:`WatchCompacted`, if it fell behind past the history limit).
        """
        if start_revision < 0:
            raise ValueError(f"negative start revision {start_revision}")
        after = start_revision or None
        watcher = _Watcher(prefix, asyncio.get_running_loop(), self._watch_queue_limit)
        registered = self._subscribe(watcher, after)
        if registered is None:
            raise StoreClosed("the metadata store is closed")
        return self._iterate(watcher, registered, after)

    def _subscribe(self, watcher: _Watcher, after: int | None) -> Future[int] | None:
        """Register ``watcher`` as a worker job, so that registration is ordered with writes:
        exactly the writes submitted after this call are live events for it. None if the
        store is closed."""
        if self._closed:
            return None
        try:
            return self._submit(self._register, watcher, after)
        except RuntimeError:  # the executor shut down since the check
            return None

    def _register(self, watcher: _Watcher, after: int | None) -> int:
        """Let ``watcher`` receive events above ``after`` (None: the current revision) as
        they commit; returns the current revision, through which the iterator reads history.
        """
        self._opened.result()
        current = self._revision
        watcher.after = current if after is None else max(after, current)
        with self._watchers_lock:
            if self._closed:
                # close() has already ended the registered watchers; end this one too.
                _call_on(watcher.loop, watcher.close)
            else:
                self._watchers.add(watcher)
        # Unlike other jobs, this one does not expire leases first: an expiry due when it runs
        # happens after the watch() call, so the watcher must see its deletes (the next job
        # expires them, with this watcher registered).
        return current

    def _unwatch(self, watcher: _Watcher) -> None:
        with self._watchers_lock:
            self._watchers.discard(watcher)

    async def _iterate(
        self, watcher: _Watcher, registered: Future[int], after: int | None
    ) -> AsyncIterator[WatchEvent]:
        # An async generator: aclose() (or garbage collection) runs the finally.
        prefix = watcher.prefix
        try:
            live_from = await asyncio.wrap_future(registered)
            # The last event yielded, as (revision, sub); (r, _END) means "all of r seen".
            cursor = (live_from if after is None else min(after, live_from), _END)
            while True:
                # 1. History: events after the cursor through the revision we went live at.
                while cursor < (live_from, _END):
                    try:
                        page = await self._run(self._history, prefix, cursor, live_from)
                    except StoreClosed:
                        return
                    for revision, sub, event in page:
                        yield event
                        cursor = (revision, sub)
                    if len(page) < _HISTORY_PAGE:
                        break
                cursor = (watcher.after, _END)
                # 2. Live events, until the store closes or this watcher overflows.
                while True:
                    item = await watcher.queue.get()
                    if item == _CLOSED:
                        return
                    if item == _OVERFLOW:
                        break
                    assert isinstance(item, list)
                    watcher.pending -= len(item)
                    for event in item:
                        yield event
                        cursor = (event.kv.mod_revision, _END)
                # 3. Overflowed. The queue held whole revisions, all now yielded, so the
                # cursor is on a revision boundary: register afresh and read the gap from
                # history.
                self._unwatch(watcher)
                watcher = _Watcher(prefix, watcher.loop, watcher.limit)
                registered_again = self._subscribe(watcher, cursor[0])
                if registered_again is None:
                    return
                live_from = await asyncio.wrap_future(registered_again)
        finally:
            self._unwatch(watcher)

    def _history(
        self, prefix: bytes, cursor: tuple[int, int], upto: int
    ) -> list[tuple[int, int, WatchEvent]]:
        """One page of history events under ``prefix`` after ``cursor``, through ``upto``."""
        revision, sub = cursor
        # Compaction drops whole revisions through compact_revision. Everything after the
        # cursor is still there only if the cursor is at or past that point (strictly past,
        # when it is inside a revision whose later events are needed).
        compact = self._compact_revision
        if compact > revision or (compact == revision and sub != _END):
            raise WatchCompacted(revision, compact)
        where, params = _range_sql(prefix)
        rows = self._db.execute(
            "SELECT revision, sub, kind, key, value, version, lease FROM history "
            f"WHERE (revision, sub) > (?, ?) AND revision <= ? AND {where} "
            "ORDER BY revision, sub LIMIT ?",
            (revision, sub, upto, *params, _HISTORY_PAGE),
        ).fetchall()
        return [
            (
                rev,
                s,
                WatchEvent(
                    "put" if kind == _KIND_PUT else "delete",
                    KeyValue(key, value, rev, version, lease),
                ),
            )
            for rev, s, kind, key, value, version, lease in rows
        ]


def _insert_many(db: sqlite3.Connection, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
    """``sql`` (an INSERT ending in ``VALUES ``) for every row, many rows a statement."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, _PARAMETERS // width)
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        db.execute(sql + ",".join([one] * len(chunk)), [v for row in chunk for v in row])


def _deletions(keys: Iterable[bytes], revision: int, first_sub: int) -> list[_Event]:
    return [
        _Event(revision, sub, WatchEvent("delete", KeyValue(key, b"", revision, 0)))
        for sub, key in enumerate(keys, first_sub)
    ]


def _compare(actual: int | bytes, op: str, expected: int | bytes) -> bool:
    if op == "==":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == "<":
        return actual < expected  # type: ignore[operator]  # types checked in _check_compare
    return actual > expected  # type: ignore[operator]


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:  # a failed COMMIT may already have rolled back
        db.execute("ROLLBACK")


def _call_on(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> bool:
    """Schedule ``fn(*args)`` on ``loop`` from any thread; False if the loop is closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True
