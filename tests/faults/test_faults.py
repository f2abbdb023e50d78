"""Fault scenarios on a cluster of 3 broker processes (etcd + S3 through moto), checked with
the history checker (tests/checker.py): while producers and assign-mode consumers run
(tests/faults/workload.py), brokers are killed, crash at failpoints, stall past their lease,
lose S3 for a while, or lose their etcd leader. Then every fault is healed and the run must
show:

- 0 lost acknowledged records, 0 offsets holding two values, 0 non-monotonic reads, nothing
  read that was never sent or definitely failed, acks in real-time order (the checker);
- the committed state sound: segments tile every partition, each written under the epoch in
  force at its offsets (no deposed owner's commit), each in the bucket (the audit);
- service back: a produce + consume round trip on every partition within
  ``RECOVERY_BOUND`` seconds of the faults stopping, and both consumers caught up;
- nothing in the bucket unaccounted for once the janitor has processed what was due
  (:meth:`Cluster.garbage_audit`): every object referenced by a committed entry, named in the
  ingest registry or by a pending garbage record (young uploads a crash left uncommitted
  excepted: counted), no due garbage record left, no committed object doomed or missing;
- every broker stops cleanly (SIGTERM: exit 0) and logged no unexpected traceback.

The storage lifecycle scenarios (f) run the brokers with a short grace period and a frequent
retention check (:data:`LIFECYCLE`) and the topic with a small ``segment.bytes``, so that
compaction swaps pieces into segments (and small segments into bigger ones) every few
seconds per partition while the faults go on; :class:`~tests.faults.workload.Churn` adds
unchecked traffic that makes garbage beside it (a topic that retention keeps trimming,
short-lived topics deleted after a compaction), and an idempotent producer joins the
workload, whose values must each be stored once. A broker then crashes at
``after_compaction_put``, ``after_compaction_commit`` or (the janitor) ``mid_delete``.

Each scenario prints its counts under "kafscale faults" in the test summary. Durations come
from the environment so that ``scripts/soak`` runs the same scenarios longer:
``KAFSCALE_FAULTS_SECONDS`` (fault window per scenario, default 8; 12 for the lifecycle
scenarios, whose janitor crash needs a garbage record to fall due first),
``KAFSCALE_FAULTS_SEED`` (default 0: which brokers are hit, and when).

Two of the failpoint crash loops (``after_object_put``, ``after_metadata_commit``) carry the
``soak`` mark: only ``scripts/soak`` (``KAFSCALE_SOAK=1``) runs them, the suite deselects them
(tests/conftest.py). The same crashes are checked in CI on one broker
(tests/conformance/test_failpoints.py) and, ``after_metadata_commit``, on a cluster under
idempotent producers (tests/conformance/test_cluster_idempotence.py); ``mid_response`` runs here.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka
import pytest

from kafscale.broker.failpoints import EXIT_STATUS
from tests.checker import History, Result, check
from tests.etcdserver import EtcdCluster, require_etcd
from tests.faults.cluster import Audit, Broker, Cluster, Garbage, running_cluster
from tests.faults.workload import Churn, RawProducer, Workload, create_topic, owners_of
from tests.s3faults import FaultProxy, slow_down
from tests.s3server import shared_or_skip

TOPIC = "faults"
PARTITIONS = 6
LEASE_TTL_MS = 2000
FAULT_SECONDS = float(os.environ.get("KAFSCALE_FAULTS_SECONDS", "8"))
"""The fault window: every scenario's assertion holds from the first fault on (a kill, a
stall, an outage, an etcd election, a failpoint firing); a longer window only adds rounds."""
LIFECYCLE_FAULT_SECONDS = float(os.environ.get("KAFSCALE_FAULTS_SECONDS", "12"))
"""The lifecycle scenarios' window: a compaction, or the janitor's first garbage, is due a few
seconds into the workload, and the victim must crash at it at least once."""
SEED = int(os.environ.get("KAFSCALE_FAULTS_SEED", "0"))
RECOVERY_BOUND = 30.0
"""Seconds after the faults stop within which a round trip on every partition must succeed:
a lease TTL for a dead owner's partitions to move, the clients' metadata refresh, slack for
a 2-core machine running 3 brokers, etcd, moto and the clients."""
CATCH_UP_BOUND = 30.0

OUTAGE_SECONDS = 8.0
"""Longer than two flushes' worth of the S3 store's retries (6 attempts, backoff up to 3.1 s
in all), so that a produce sent as it starts is answered inside it."""
KAFKA_STORAGE_ERROR = 56

GRACE_MS = 2000
LIFECYCLE = {
    "log.segment.delete.delay.ms": str(GRACE_MS),
    "log.retention.check.interval.ms": "1000",
    "log.initial.task.delay.ms": "0",
}
"""Broker settings of the storage lifecycle scenarios: what becomes unreachable is deleted
after 2 s (not 30), retention is applied every second (not 15) from the start (not 30 s
after it)."""
TOPIC_CONFIG = {"segment.bytes": "16384"}
"""The workload topic in the lifecycle scenarios: about 3 KB a second reach each partition,
so with compaction's 64-piece trigger (kafscale/broker/layout.py) every partition is compacted
every few seconds, its open segment rewritten with the new pieces until it is 16 KiB."""
RETAINED = "faults-retained"
RETAINED_PARTITIONS = 2
RETAINED_CONFIG = {"segment.bytes": "4096", "retention.bytes": "32768"}
"""About 5 KB a second reach each partition: compacted into 4 KiB segments every few seconds,
and retention drops about a segment a second once the partition holds 32 KiB."""
LIFECYCLE_FLUSH_MS = 50
"""The brokers' default flush interval (the other scenarios use 10 ms): an ingest object per
flush cycle and broker, each deleted by the janitor once compacted; at 10 ms the janitor (one
S3 DELETE and one metadata transaction per object, in turn) falls seconds behind here."""
DOOMED = "faults-doomed"
DOOMED_CONFIG = {"segment.bytes": "4096"}


@dataclass
class Scenario:
    cluster: Cluster
    etcd: EtcdCluster
    proxy: FaultProxy | None
    rng: random.Random
    history: History = field(default_factory=History)
    notes: list[str] = field(default_factory=list)
    """Scenario-specific counts for the report line."""


@contextlib.contextmanager
def scenario(
    tmp_path: Path,
    *,
    etcd_members: int = 1,
    proxy: bool = False,
    options: dict[str, str] | None = None,
    first_env: dict[int, dict[str, str]] | None = None,
    flush_interval_ms: int = 10,
) -> Iterator[Scenario]:
    with require_etcd(etcd_members) as etcd:
        s3 = shared_or_skip()
        bucket = s3.create_bucket()
        fault_proxy = FaultProxy(s3.endpoint_url) if proxy else None
        if fault_proxy is not None:
            fault_proxy.start_in_thread()
        try:
            endpoint = fault_proxy.url if fault_proxy is not None else s3.endpoint_url
            with running_cluster(
                tmp_path,
                etcd,
                endpoint,
                s3.endpoint_url,
                bucket,
                lease_ttl_ms=LEASE_TTL_MS,
                options=options,
                first_env=first_env,
                flush_interval_ms=flush_interval_ms,
            ) as cluster:
                yield Scenario(cluster, etcd, fault_proxy, random.Random(SEED))
        finally:
            if fault_proxy is not None:
                fault_proxy.clear()
                fault_proxy.stop_thread()


@dataclass
class Run:
    result: Result
    recovery: float | None
    """Seconds from the end of the faults to a round trip on every partition."""
    catch_up: float | None
    audit: Audit
    garbage: Garbage
    elapsed: float


def heal(s: Scenario) -> None:
    """Every broker and etcd member up again (paused ones resumed, dead ones restarted)."""
    for member in s.etcd.members:
        if member.paused:
            member.resume()
        elif not member.running:
            member.start()
    s.etcd.wait_healthy(30)
    if s.proxy is not None:
        s.proxy.clear()
    s.cluster.heal()


def run(
    s: Scenario,
    faults: Callable[[float], None],
    report: Callable[[str], None],
    *,
    expected_tracebacks: Sequence[str] = (),
    lifecycle: bool = False,
) -> Run:
    """The workload with ``faults(deadline)`` injected, then healed, checked and reported
    (``lifecycle``: with the topic configuration, churn and idempotent producer of the
    lifecycle scenarios; the cluster must run with :data:`LIFECYCLE`)."""
    began = time.monotonic()
    cluster = s.cluster
    create_topic(cluster.bootstrap, TOPIC, PARTITIONS, config=TOPIC_CONFIG if lifecycle else None)
    churn: Churn | None = None
    if lifecycle:
        create_topic(cluster.bootstrap, RETAINED, RETAINED_PARTITIONS, config=RETAINED_CONFIG)
        churn = Churn(
            cluster.bootstrap,
            RETAINED,
            RETAINED_PARTITIONS,
            doomed=DOOMED,
            doomed_config=DOOMED_CONFIG,
            seed=SEED,
        )
    workload = Workload(
        cluster.bootstrap, TOPIC, PARTITIONS, s.history, idempotent=int(lifecycle), seed=SEED
    )
    ready = workload.round_trip("warmup", RECOVERY_BOUND)
    assert ready is not None, "the cluster never served a round trip\n" + cluster.logs_text()
    workload.start()
    if churn is not None:
        churn.start()
    try:
        time.sleep(1)
        faults(time.monotonic() + (LIFECYCLE_FAULT_SECONDS if lifecycle else FAULT_SECONDS))
        stopped = time.monotonic()
        heal(s)
        done = workload.round_trip("rt", RECOVERY_BOUND)
        recovery = None if done is None else time.monotonic() - stopped
        time.sleep(1)
        if churn is not None:
            churn.stop()
        workload.stop_producers()
        watermarks = workload.watermarks()
        catch_up = workload.caught_up(watermarks, CATCH_UP_BOUND)
    finally:
        if churn is not None:
            churn.stop()
        workload.stop()  # no client thread outlives the scenario, whatever happened
    workload.final_read(watermarks)
    s.history.close()
    result = check(s.history, exactly_once=workload.idempotent)
    audit = cluster.audit(TOPIC, PARTITIONS)
    if lifecycle:
        retained = cluster.audit(RETAINED, RETAINED_PARTITIONS)
        audit.problems += [f"{RETAINED}: {p}" for p in retained.problems]
    # What the faults made unreachable is due a grace period after they stopped (lifecycle:
    # 2 s, usually over by now); the janitor must have deleted it all (and what else is due).
    settle = GRACE_MS / 1000 - (time.monotonic() - stopped) if lifecycle else 0.0
    garbage = cluster.garbage_audit(settle_ms=max(0, int(settle * 1000)))
    statuses = cluster.stop()
    tracebacks = cluster.tracebacks()
    elapsed = time.monotonic() - began
    idempotent_acked = sum(
        x.outcome == "ok" for x in s.history.sends if x.process in workload.idempotent
    )
    logs = "".join(b.text() for b in cluster.brokers)
    retention_moves = len(re.findall(rf"{RETAINED}-\d+: retention moved the log start", logs))
    topics_purged = len(re.findall(r"kafscale\.janitor: deleted topic ", logs))
    report(
        f"{result.line()} recovery_s={_secs(recovery)} catch_up_s={_secs(catch_up)} "
        f"consumer_restarts={len(workload.restarts)} segments={audit.segments} "
        f"compacted={audit.compacted} "
        f"orphans={audit.orphans} {garbage.line()} tracebacks={len(tracebacks)} "
        + (
            f"idempotent_acked={idempotent_acked} retention_moves={retention_moves} "
            f"topics_purged={topics_purged} {churn.line()} "
            if churn is not None
            else ""
        )
        + f"{' '.join(s.notes)} elapsed_s={elapsed:.1f}"
    )
    assert not workload.failures, workload.failures
    assert churn is None or not churn.failures, churn.failures
    assert result.valid, result.explain()
    assert not audit.problems, "\n".join(audit.problems)
    assert not garbage.problems, "\n".join(garbage.problems[:20])
    assert recovery is not None, (
        f"no produce+consume round trip on every partition within {RECOVERY_BOUND}s after the "
        "faults stopped\n" + cluster.logs_text()
    )
    assert catch_up is not None, (
        f"consumers did not reach the high watermarks {watermarks} within {CATCH_UP_BOUND}s: "
        f"{dict(workload.positions)}"
    )
    assert statuses == dict.fromkeys(statuses, 0), f"SIGTERM exit statuses {statuses}\n" + (
        cluster.logs_text()
    )
    unexpected = cluster.unexpected_tracebacks(expected_tracebacks)
    assert not unexpected, "unexpected tracebacks:\n" + "\n\n".join(
        f"broker {t.broker} ({t.log}):\n{t.text}" for t in unexpected[:3]
    )
    assert result.summary["acked"] > 100, "the workload hardly ran"
    if churn is not None:
        # The lifecycle ran: pieces compacted into segments, retention applied, deleted
        # topics' objects purged (every tombstone due was processed: the garbage audit).
        assert idempotent_acked > 20, "the idempotent producer hardly ran"
        assert audit.compacted > 0, "no compacted segment in the topic"
        assert retention_moves > 0, f"retention never moved the log start of {RETAINED}"
        assert churn.deleted > 0 and topics_purged > 0, "no deleted topic purged"
    return Run(result, recovery, catch_up, audit, garbage, elapsed)


def _secs(value: float | None) -> str:
    return "none" if value is None else f"{value:.1f}"


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


# --- (a) kill -9 a random broker every few seconds --------------------------------------------


def test_kill_random_brokers(tmp_path: Path, report: Callable[[str], None]) -> None:
    with scenario(tmp_path) as s:
        kills = 0

        def faults(deadline: float) -> None:
            nonlocal kills
            while True:
                victim = s.rng.choice([b for b in s.cluster.brokers if b.running])
                victim.kill()
                kills += 1
                if time.monotonic() > deadline - 4:
                    break  # the faults end on a crash: recovery includes a takeover
                time.sleep(s.rng.uniform(0.5, 1.5))  # dead for a moment
                victim.start(wait=False)  # waits out its old lease, then registers
                time.sleep(s.rng.uniform(1.5, 3))
            s.notes.append(f"kills={kills}")

        run(s, faults, report)
        assert kills >= 2


# --- (b) each failpoint on one broker ----------------------------------------------------------


def armed(point: str, hit: int) -> dict[str, str]:
    """The environment of a broker run that exits at the ``hit``-th hit of ``point``."""
    return {"KAFSCALE_FAILPOINTS": f"{point}:exit@{hit}"}


@dataclass
class CrashLoop:
    """The faults of a failpoint scenario: ``victim`` restarted again and again with ``point``
    armed, each run to exit at a random hit in ``hits``, until the deadline (``started_armed``:
    its first run was started armed, see :func:`scenario`'s ``first_env``; else it is stopped
    and started armed first)."""

    s: Scenario
    victim: Broker
    point: str
    hits: tuple[int, int] = (2, 12)
    started_armed: bool = False
    fired: int = 0

    def __call__(self, deadline: float) -> None:
        victim, point = self.victim, self.point
        first = self.started_armed
        if not first:
            assert victim.terminate() == 0
        while time.monotonic() < deadline - 1:
            if not first:
                # Let it take a few steps first: exit at a random hit of the point.
                victim.start(env=armed(point, self.s.rng.randint(*self.hits)))
            first = False
            status = victim.exit_within(max(0.5, deadline - time.monotonic()))
            if status is None:
                break  # not reached before the deadline: killed, restarted clean by heal
            assert status == EXIT_STATUS, victim.tail()
            assert f"failpoint {point}: exiting" in victim.logs[-1].read_text()
            self.fired += 1
        self.s.notes.append(f"failpoint_exits={self.fired}")


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("after_object_put", marks=pytest.mark.soak),
        pytest.param("after_metadata_commit", marks=pytest.mark.soak),
        "mid_response",
    ],
)
def test_failpoints(tmp_path: Path, report: Callable[[str], None], point: str) -> None:
    with scenario(tmp_path) as s:
        faults = CrashLoop(s, s.cluster.brokers[1], point)
        run(s, faults, report)
        assert faults.fired >= 1, f"the failpoint {point} never fired"


# --- (c) a broker stalled past its lease (a zombie) --------------------------------------------


def test_zombie_broker_cannot_commit(tmp_path: Path, report: Callable[[str], None]) -> None:
    with scenario(tmp_path) as s:
        pauses = 0
        victim = s.cluster.brokers[0]

        def faults(deadline: float) -> None:
            nonlocal pauses
            stall = LEASE_TTL_MS / 1000 * 2 + 0.5  # its partitions are taken over meanwhile
            while True:
                victim.pause()
                pauses += 1
                time.sleep(stall)
                victim.resume()
                if time.monotonic() + 2 + stall > deadline:
                    break  # the faults end as the zombie wakes up
                time.sleep(2)
            s.notes.append(f"pauses={pauses}")

        outcome = run(s, faults, report)
        log = victim.text()
        # It noticed, every time, that its lease was gone, and gave everything up.
        assert log.count("giving up every partition") >= pauses, victim.tail()
        # Flushes it attempted after it woke up were refused (its claims were gone). The
        # zombie's own commits never landed: the audit found every segment written under the
        # epoch in force at its offsets, and the checker found nothing served twice or lost.
        refused = len(re.findall(r"flush of faults-\d+ failed: .*not owned", log))
        report(f"zombie: pauses={pauses} refused_flushes={refused} orphans={outcome.audit.orphans}")
        assert pauses >= 1


# --- (d) S3 unavailable for a while --------------------------------------------------------------


def test_s3_outage(tmp_path: Path, report: Callable[[str], None]) -> None:
    with scenario(tmp_path, proxy=True) as s:
        proxy = s.proxy
        assert proxy is not None
        windows: list[tuple[float, float]] = []
        probes: list[str] = []
        failed_requests = 0

        def outage() -> None:
            nonlocal failed_requests
            proxy.reset_stats()
            # Every S3 request fails (503 SlowDown) from now until rule.until.
            rule = proxy.inject(slow_down(), seconds=OUTAGE_SECONDS)
            start = time.monotonic()
            assert rule.until is not None
            # A produce during the outage is answered with a retriable error, never acked.
            admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": s.cluster.bootstrap})
            address = owners_of(admin, TOPIC)[0]
            value = f"probe:{len(probes)}"
            send = s.history.invoke("probe", value, 0)
            raw = RawProducer(timeout=OUTAGE_SECONDS + 4)
            outcome, offset, detail = raw.produce(address, TOPIC, 0, value)
            raw.close()
            probes.append(f"{outcome} {detail}".strip())
            if outcome == "ok":
                s.history.ok(send, offset)
            else:
                s.history.unknown(send, detail)
            _sleep_until(rule.until)
            proxy.clear()
            windows.append((start, rule.until))
            failed = sum(1 for seen in proxy.seen if seen.fault is not None)
            assert failed > 0, "the outage hit no S3 request"
            failed_requests += failed

        def faults(deadline: float) -> None:
            while deadline - time.monotonic() > 2 * OUTAGE_SECONDS + 4:
                time.sleep(s.rng.uniform(2, 4))
                outage()
            _sleep_until(deadline - OUTAGE_SECONDS)
            outage()  # the faults end as S3 comes back
            s.notes.append(f"outages={len(windows)} s3_requests_failed={failed_requests}")

        # Handled paths that log a warning with the traceback of the S3 unavailability this
        # scenario injects: a compaction's reads or uploads (the next pass tries again; the
        # intent deletes what it uploaded), a janitor pass's deletes (the records stay).
        unavailable = r"kafscale\.storage\.objectstore\.ObjectStoreUnavailable"
        expected = [
            rf"WARNING kafscale\.compaction: .*maintenance failed\n{unavailable}",
            rf"WARNING kafscale\.janitor: janitor pass failed\n{unavailable}",
            # The same tracebacks' second part ("The above exception was the direct cause of
            # the following exception:" and a blank line before it).
            rf"^\n{unavailable}",
        ]
        run(s, faults, report, expected_tracebacks=expected)
        assert probes == [f"unknown error {KAFKA_STORAGE_ERROR}"] * len(windows), probes
        # Nothing sent while S3 was down was acked before it came back: its data could not
        # have been uploaded (client-side times: invoked after the outage began, acked before
        # it ended; a slow client only makes the ack time later, never earlier).
        during = [
            x.value
            for x in s.history.sends
            if x.outcome == "ok"
            and x.complete is not None
            and any(start < x.invoke and x.complete < end for start, end in windows)
        ]
        assert not during, f"acked while every S3 request failed: {during[:5]}"


# --- (e) the etcd leader killed ------------------------------------------------------------------


def test_etcd_leader_killed(tmp_path: Path, report: Callable[[str], None]) -> None:
    with scenario(tmp_path, etcd_members=3) as s:
        kills = 0

        def faults(deadline: float) -> None:
            nonlocal kills
            while True:
                leader = s.etcd.leader()
                leader.kill()
                kills += 1
                if time.monotonic() > deadline - 6:
                    break  # the faults end on a kill: recovery includes an election
                time.sleep(2)
                leader.start()
                s.etcd.wait_healthy(20)
                time.sleep(2)
            s.notes.append(f"etcd_leader_kills={kills}")

        # Handled paths that log a warning with the traceback of the etcd unavailability
        # this scenario injects: a watch resubscribing, an ownership round (retried a second
        # later, e.g. a hand-over whose delete's outcome is unknown), a broker whose lease
        # lapsed during an election registering again (retried a third of a TTL later).
        unavailable = r"kafscale\.metadata\.store\.(MetadataUnavailable|TxnOutcomeUnknown)"
        expected = [
            r"watch of .* failed; resubscribing",
            rf"WARNING kafscale\.log: ownership round failed\n{unavailable}",
            rf"WARNING kafscale\.cluster: registering again failed; retrying\n{unavailable}",
        ]
        run(s, faults, report, expected_tracebacks=expected)
        assert kills >= 1


# --- (f) the storage lifecycle: crashes inside compaction and the janitor ----------------------

LIFECYCLE_POINTS = {
    # point: (victim, hits)
    "after_compaction_put": (1, (1, 2)),
    "after_compaction_commit": (1, (1, 2)),
    # The janitor is the live broker with the lowest id.
    "mid_delete": (0, (1, 2)),
}


@pytest.mark.parametrize("point", list(LIFECYCLE_POINTS))
def test_lifecycle_failpoints(tmp_path: Path, report: Callable[[str], None], point: str) -> None:
    """A compaction that dies after uploading its merged segments (its intent deletes them
    later), after its swap committed (before anything else), or the janitor that dies after
    the first object of a garbage record or of a deleted topic: nothing lost, duplicated or
    inconsistent, and, once the janitor has had its time, nothing left unaccounted for."""
    victim, hits = LIFECYCLE_POINTS[point]
    # Armed from the start, to exit at the first hit: a compaction is due a few seconds into
    # the workload (the first garbage a few seconds later), and a restart (a Python process
    # loading on a busy machine, then its old lease to wait out) costs several.
    first = armed(point, 1)
    with scenario(
        tmp_path,
        options=LIFECYCLE,
        first_env={victim: first},
        flush_interval_ms=LIFECYCLE_FLUSH_MS,
    ) as s:
        faults = CrashLoop(s, s.cluster.brokers[victim], point, hits, started_armed=True)
        run(s, faults, report, lifecycle=True)
        assert faults.fired >= 1, f"the failpoint {point} never fired"
