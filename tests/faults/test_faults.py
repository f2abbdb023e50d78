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
- every broker stops cleanly (SIGTERM: exit 0) and logged no unexpected traceback.

Each scenario prints its counts under "kafscale faults" in the test summary. Durations come
from the environment so that ``scripts/soak`` runs the same scenarios longer:
``KAFSCALE_FAULTS_SECONDS`` (fault window per scenario, default 12),
``KAFSCALE_FAULTS_SEED`` (default 0: which brokers are hit, and when).
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
from tests.faults.cluster import Audit, Cluster, running_cluster
from tests.faults.workload import RawProducer, Workload, create_topic, owners_of
from tests.s3faults import FaultProxy, slow_down
from tests.s3server import shared_or_skip

TOPIC = "faults"
PARTITIONS = 6
LEASE_TTL_MS = 2000
FAULT_SECONDS = float(os.environ.get("KAFSCALE_FAULTS_SECONDS", "12"))
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
def scenario(tmp_path: Path, *, etcd_members: int = 1, proxy: bool = False) -> Iterator[Scenario]:
    with require_etcd(etcd_members) as etcd:
        s3 = shared_or_skip()
        bucket = s3.create_bucket()
        fault_proxy = FaultProxy(s3.endpoint_url) if proxy else None
        if fault_proxy is not None:
            fault_proxy.start_in_thread()
        try:
            endpoint = fault_proxy.url if fault_proxy is not None else s3.endpoint_url
            with running_cluster(
                tmp_path, etcd, endpoint, s3.endpoint_url, bucket, lease_ttl_ms=LEASE_TTL_MS
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
) -> Run:
    """The workload with ``faults(deadline)`` injected, then healed, checked and reported."""
    began = time.monotonic()
    cluster = s.cluster
    create_topic(cluster.bootstrap, TOPIC, PARTITIONS)
    workload = Workload(cluster.bootstrap, TOPIC, PARTITIONS, s.history, seed=SEED)
    ready = workload.round_trip("warmup", RECOVERY_BOUND)
    assert ready is not None, "the cluster never served a round trip\n" + cluster.logs_text()
    workload.start()
    try:
        time.sleep(1)
        faults(time.monotonic() + FAULT_SECONDS)
        stopped = time.monotonic()
        heal(s)
        done = workload.round_trip("rt", RECOVERY_BOUND)
        recovery = None if done is None else time.monotonic() - stopped
        time.sleep(1)
        workload.stop_producers()
        watermarks = workload.watermarks()
        catch_up = workload.caught_up(watermarks, CATCH_UP_BOUND)
    finally:
        workload.stop()  # no client thread outlives the scenario, whatever happened
    workload.final_read(watermarks)
    s.history.close()
    result = check(s.history)
    audit = cluster.audit(TOPIC, PARTITIONS)
    statuses = cluster.stop()
    tracebacks = cluster.tracebacks()
    elapsed = time.monotonic() - began
    report(
        f"{result.line()} recovery_s={_secs(recovery)} catch_up_s={_secs(catch_up)} "
        f"consumer_restarts={len(workload.restarts)} segments={audit.segments} "
        f"orphans={audit.orphans} tracebacks={len(tracebacks)} {' '.join(s.notes)} "
        f"elapsed_s={elapsed:.1f}"
    )
    assert not workload.failures, workload.failures
    assert result.valid, result.explain()
    assert not audit.problems, "\n".join(audit.problems)
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
    return Run(result, recovery, catch_up, audit, elapsed)


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


@pytest.mark.parametrize("point", ["after_object_put", "after_metadata_commit", "mid_response"])
def test_failpoints(tmp_path: Path, report: Callable[[str], None], point: str) -> None:
    with scenario(tmp_path) as s:
        fired = 0

        def faults(deadline: float) -> None:
            nonlocal fired
            victim = s.cluster.brokers[1]
            assert victim.terminate() == 0
            while time.monotonic() < deadline - 1:
                # Let it take a few steps first: exit at a random hit of the point.
                hit = s.rng.randint(2, 12)
                victim.start(env={"KAFSCALE_FAILPOINTS": f"{point}:exit@{hit}"})
                status = victim.exit_within(max(0.5, deadline - time.monotonic()))
                if status is None:
                    break  # not reached before the deadline: killed, restarted clean by heal
                assert status == EXIT_STATUS, victim.tail()
                assert f"failpoint {point}: exiting" in victim.logs[-1].read_text()
                fired += 1
            s.notes.append(f"failpoint_exits={fired}")

        run(s, faults, report)
        assert fired >= 1, f"the failpoint {point} never fired"


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

        run(s, faults, report)
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
        # later, e.g. a hand-over whose delete's outcome is unknown).
        unavailable = r"kafscale\.metadata\.store\.(MetadataUnavailable|TxnOutcomeUnknown)"
        expected = [
            r"watch of .* failed; resubscribing",
            rf"WARNING kafscale\.log: ownership round failed\n{unavailable}",
        ]
        run(s, faults, report, expected_tracebacks=expected)
        assert kills >= 1
