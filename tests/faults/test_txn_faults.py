"""Transactions under faults (issue 17): the 3-broker cluster of tests/faults/test_faults.py
(etcd + S3 through moto) under transactional producers (tests/faults/txn_workload.py: three
confluent-kafka producers, their transactional ids coordinated by different brokers, each
transaction spanning the topic's partitions, owned by every broker; one in five aborted),
while

- a random broker is killed with SIGKILL every few seconds: coordinators die between the
  decision and the markers, partition owners while writing them (test_txn_kill_brokers);
- one broker crashes again and again at ``after_txn_decision`` (the decision committed, no
  marker written, EndTxn unanswered) or ``before_txn_complete`` (every marker written, the
  transaction not completed), both armed in each run (test_txn_failpoints);
- in each, a producer process opens a transaction, writes to it and is killed with SIGKILL:
  the coordinator's timeout must abort it.

After healing, the checker (tests/checker.py ``check_transactions``) takes the whole log with a
read_committed and a read_uncommitted consumer and requires: 0 committed records lost, 0
aborted records visible to read_committed, no transaction partly visible, no duplicate,
nothing never sent, and every partition's last stable offset at its high watermark within
``RECOVERY_BOUND`` (no hanging transaction). Counts go to the "kafscale report" section.
``KAFSCALE_TXN_FAULTS_SECONDS`` (default 6) sets the fault window; ``scripts/soak`` runs
them longer with ``KAFSCALE_FAULTS_SECONDS``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from kafscale.broker.failpoints import EXIT_STATUS
from tests.checker import check_transactions
from tests.faults.test_faults import SEED, Scenario, heal, scenario
from tests.faults.txn_workload import TxnWorkload
from tests.faults.workload import create_topic

TOPIC = "txn-faults"
PARTITIONS = 6
PRODUCERS = 3
FAULT_SECONDS = float(
    os.environ.get("KAFSCALE_TXN_FAULTS_SECONDS", os.environ.get("KAFSCALE_FAULTS_SECONDS", "6"))
)
RECOVERY_BOUND = 40.0
"""Seconds after the faults stop within which every partition's last stable offset must reach
its high watermark: a lease TTL for a dead coordinator's ids and partitions to move, the
doomed producer's transaction timeout, the coordinators' scan."""
OPTIONS = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "500"}


def run(s: Scenario, faults: Callable[[float], None], report: Callable[[str], None]) -> None:
    began = time.monotonic()
    cluster = s.cluster
    create_topic(cluster.bootstrap, TOPIC, PARTITIONS)
    workload = TxnWorkload(cluster.bootstrap, TOPIC, PARTITIONS, PRODUCERS, SEED)
    try:
        workload.start()
        time.sleep(1)
        doomed = workload.doom()  # killed mid-transaction: its timeout must abort it
        faults(time.monotonic() + FAULT_SECONDS)
        heal(s)
        time.sleep(3)  # the producers go on against the healed cluster
    finally:
        workload.stop()
    stuck = workload.wait_stable(RECOVERY_BOUND)
    committed = workload.read_all("read_committed")
    uncommitted = workload.read_all("read_uncommitted")
    result = check_transactions(workload.txns, committed, uncommitted, stuck)
    statuses = cluster.stop()
    logs = "".join(b.text() for b in cluster.brokers)
    timed_out = logs.count("timed out after")
    report(
        f"{result.line()} doomed={doomed.outcome} timeouts_aborted={timed_out} "
        f"fenced_producers={workload.fenced} read_committed={len(committed)} "
        f"read_uncommitted={len(uncommitted)} {' '.join(s.notes)} "
        f"elapsed_s={time.monotonic() - began:.1f}"
    )
    assert not workload.failures, workload.failures
    assert result.valid, "\n".join(result.problems[:20])
    assert result.summary["committed"] >= 5, "the workload hardly committed"
    assert statuses == dict.fromkeys(statuses, 0), f"SIGTERM exit statuses {statuses}"
    unexpected = cluster.unexpected_tracebacks(())
    assert not unexpected, "unexpected tracebacks:\n" + "\n\n".join(
        f"broker {t.broker} ({t.log}):\n{t.text}" for t in unexpected[:3]
    )


def test_txn_kill_brokers(tmp_path: Path, report: Callable[[str], None]) -> None:
    with scenario(tmp_path, options=OPTIONS) as s:
        kills = 0

        def faults(deadline: float) -> None:
            nonlocal kills
            while True:
                victim = s.rng.choice([b for b in s.cluster.brokers if b.running])
                victim.kill()
                kills += 1
                if time.monotonic() > deadline - 3:
                    break
                time.sleep(s.rng.uniform(0.5, 1.5))
                victim.start(wait=False)
                time.sleep(s.rng.uniform(1.5, 3))
            s.notes.append(f"kills={kills}")

        run(s, faults, report)
        assert kills >= 2


POINTS = ("after_txn_decision", "before_txn_complete")


def _armed_both(rng: random.Random) -> dict[str, str]:
    """Both transaction failpoints armed, each to fire at a random hit: the broker dies at
    whichever comes first."""
    return {"KAFSCALE_FAILPOINTS": ",".join(f"{p}:exit@{rng.randint(1, 4)}" for p in POINTS)}


def test_txn_failpoints(tmp_path: Path, report: Callable[[str], None]) -> None:
    """One broker crashes again and again between a decision and its markers, or between
    the markers and the completion (each run armed at both points, at random hits)."""
    victim_id = 1
    first = {"KAFSCALE_FAILPOINTS": ",".join(f"{p}:exit@2" for p in POINTS)}
    with scenario(tmp_path, options=OPTIONS, first_env={victim_id: first}) as s:
        victim = s.cluster.brokers[victim_id]
        fired: dict[str, int] = dict.fromkeys(POINTS, 0)

        def faults(deadline: float) -> None:
            while time.monotonic() < deadline - 1:
                status = victim.exit_within(max(0.5, deadline - time.monotonic()))
                if status is None:
                    break
                assert status == EXIT_STATUS, victim.tail()
                log = victim.logs[-1].read_text()
                for point in POINTS:
                    fired[point] += f"failpoint {point}: exiting" in log
                victim.start(env=_armed_both(s.rng), wait=False)
            # A run still armed must not fire during the recovery or the final SIGTERM's drain
            # (which completes transactions): the faults end with the victim crashed and
            # started again unarmed.
            if victim.running:
                victim.kill()
            victim.start(env={"KAFSCALE_FAILPOINTS": ""}, wait=False)
            s.notes.append(" ".join(f"{p}_exits={n}" for p, n in fired.items()))

        run(s, faults, report)
        assert sum(fired.values()) >= 1, "no transaction failpoint fired"
