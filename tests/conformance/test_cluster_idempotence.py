"""Idempotent producers (confluent-kafka ``enable.idempotence=true``, aiokafka and kafka-python
``enable_idempotence=True``) on a cluster of three brokers while a broker that owns two of
the topic's six partitions is killed with SIGKILL, restarted, crashes again right after a
commit, and is restarted again.

The three producers write one topic at once (one scenario, not one per client: the lease
waits of the moves are most of its time), each its own unique values round robin over the
partitions, with acks=all, while:

1. the owner of partition 0 is SIGKILLed (batches in flight to it get no answer; some may
   have been committed: the client resends them); after the lease TTL the other two brokers
   take its partitions over, loading the producer state committed with the data, and answer
   the resends;
2. it is started again with the ``after_metadata_commit`` failpoint armed and takes its
   partitions back (hand-over: the survivors flush and let go; it loads the producer state
   in turn); at its 5th commit it exits before answering, so batches are certainly committed
   and unacknowledged: the survivors, taking over again, must answer their resends with the
   original offsets rather than write them twice;
3. it is started once more and takes the same partitions back again (the placement is
   rendezvous hashing: a returning broker gets back what it had).

The producer keeps writing through every move.

Then a fresh consumer reads every partition from 0 to its high watermark and the history
checker (tests/checker.py) must find, for every client: every send acknowledged, 0
duplicates, 0 lost (and 0 acknowledged but unseen), 0 offsets holding two values, acks in
real-time order; and the committed segments tile each partition (the audit of
tests/faults/cluster.py).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import aiokafka
import confluent_kafka
import kafka
import pytest

from kafscale.broker.failpoints import EXIT_STATUS
from tests.checker import History, Send, check
from tests.conformance import three_brokers
from tests.conformance.clients import KafkaPython
from tests.conformance.three_brokers import (
    LEASE_TTL_MS,
    OWNERS_TIMEOUT,
    bootstrap_of,
    owners,
    stored_batches,
    wait_owned,
)
from tests.faults.cluster import Cluster
from tests.faults.workload import Workload

PARTITIONS = 6
RATE = 100.0
"""Records per second each producer writes (round robin over the partitions)."""
MAX_RECORDS = 4000
"""A bound on one run's records, whatever happens."""
TAIL_SECONDS = 0.5
"""How long the producer keeps writing once the killed broker owns its partitions again."""
DELIVERY_TIMEOUT = 60.0


cluster = three_brokers.cluster
checked = three_brokers.checked


# --- the producers: unique values, each send recorded in the history -----------------------


def confluent(
    bootstrap: str, topic: str, history: History, stop: threading.Event, name: str
) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            # One request in flight per broker connection. With several, a batch refused
            # with NOT_LEADER_OR_FOLLOWER (the partition not yet, or no longer, owned there)
            # is followed by one the broker answers OUT_OF_ORDER_SEQUENCE_NUMBER once it owns
            # the partition (its predecessor was never written) -- as Kafka does; librdkafka
            # (2.16) then bumps the producer epoch and re-sequences *every* partition's queued
            # messages, including one an earlier attempt may have written (its broker died
            # after the commit): a duplicate under the new epoch, which no broker can tell
            # from a new record. librdkafka issue 4953 (PR 4972 retries without the bump, as
            # the Java client does). Seen here: c:579 stored at 96 (epoch 0, seq 96, by the
            # broker exiting at the failpoint) and at 97 (epoch 1, seq 0).
            "max.in.flight.requests.per.connection": 1,
            "linger.ms": 5,
            "message.timeout.ms": int(DELIVERY_TIMEOUT * 1000),
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 200,
            "log_level": 3,  # the kill makes librdkafka complain: expected
        }
    )
    for i, at in paced(stop):
        p = i % PARTITIONS
        send = history.invoke(name, f"{name}:{i}", p, at)

        def delivered(err: Any, msg: Any, send: Any = send) -> None:
            if err is None:
                history.ok(send, msg.offset(), msg.partition())
            else:
                history.unknown(send, str(err))

        producer.produce(topic, send.value.encode(), partition=p, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(DELIVERY_TIMEOUT) == 0


def kafka_python(
    bootstrap: str, topic: str, history: History, stop: threading.Event, name: str
) -> None:
    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=5_000,
        delivery_timeout_ms=int(DELIVERY_TIMEOUT * 1000),
        retry_backoff_ms=100,
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=200,
    )
    try:
        for i, at in paced(stop):
            p = i % PARTITIONS
            send = history.invoke(name, f"{name}:{i}", p, at)
            future = producer.send(topic, value=send.value.encode(), partition=p)
            future.add_callback(
                lambda md, send=send: history.ok(send, md.offset, md.partition)
            ).add_errback(lambda e, send=send: history.unknown(send, repr(e)))
        producer.flush(timeout=DELIVERY_TIMEOUT)
    finally:
        producer.close(timeout=10)


def aio(bootstrap: str, topic: str, history: History, stop: threading.Event, name: str) -> None:
    async def main() -> None:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=int(DELIVERY_TIMEOUT * 1000),
            retry_backoff_ms=100,
        )

        def outcome(send: Send, future: asyncio.Future[Any]) -> None:
            if future.exception() is None:
                md = future.result()
                history.ok(send, md.offset, md.partition)
            else:
                history.unknown(send, repr(future.exception()))

        await producer.start()
        try:
            futures = []
            for i, at in schedule(stop):
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                p = i % PARTITIONS
                send = history.invoke(name, f"{name}:{i}", p)
                future = await producer.send(topic, value=send.value.encode(), partition=p)
                future.add_done_callback(functools.partial(outcome, send))
                futures.append(future)
            await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), DELIVERY_TIMEOUT
            )
        finally:
            await producer.stop()

    asyncio.run(main())


def schedule(stop: threading.Event) -> Iterator[tuple[int, float]]:
    """(i, when to send it: RATE per second) until ``stop`` (or MAX_RECORDS)."""
    start = time.monotonic()
    for i in range(MAX_RECORDS):
        if stop.is_set():
            return
        yield i, start + i / RATE


def paced(stop: threading.Event) -> Iterator[tuple[int, float]]:
    """:func:`schedule`, sleeping until each send's time: (i, now)."""
    for i, at in schedule(stop):
        time.sleep(max(0.0, at - time.monotonic()))
        yield i, time.monotonic()


PRODUCERS: dict[str, Callable[[str, str, History, threading.Event, str], None]] = {
    "confluent-kafka": confluent,
    "kafka-python": kafka_python,
    "aiokafka": aio,
}


def wait_for(what: str, cond: Callable[[], bool], timeout: float = OWNERS_TIMEOUT) -> float:
    """Seconds until ``cond()`` held."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


FAILPOINT = "after_metadata_commit"
COMMITS_BEFORE_CRASH = 5
"""The restarted victim exits at its 5th commit (well under a second of the producer's
traffic to its partitions)."""


def test_idempotent_producers_through_broker_crashes(
    checked: Cluster, report: Callable[[str], None]
) -> None:
    """The three clients' idempotent producers write one topic at once (each its own values,
    all in one history where each client is a process of its own). The owner of partition 0
    (and of one more) is SIGKILLed while they write; the survivors take its partitions over.
    It is restarted with the after_metadata_commit failpoint armed: it takes its partitions
    back and, at its 5th commit, exits before answering (batches certainly committed and
    unacknowledged: the survivors must answer their resends with the original offsets).
    Restarted once more, it takes the same partitions back again. (One scenario for the
    three clients, not one each: the lease waits of the moves are most of its time.)"""
    cluster = checked
    began = time.monotonic()
    topic = "idempotent-cluster"
    KafkaPython(bootstrap_of(cluster)).create_topic(topic, PARTITIONS, {})
    owned = wait_owned(cluster, topic, PARTITIONS)
    victim = cluster.brokers[owned[0][0]]
    moved = sorted(p for p, (b, _) in owned.items() if b == victim.id)

    history = History()
    stop = threading.Event()
    errors: list[BaseException] = []
    phases: list[str] = []

    def produce(client: str) -> None:
        try:
            PRODUCERS[client](cluster.bootstrap, topic, history, stop, client)
        except BaseException as e:  # reported by the test
            errors.append(e)

    def acked_by(client: str, since: int = 0) -> list[Send]:
        """The client's acknowledged sends among the sends from the ``since``-th on."""
        sends = list(history.sends)[since:]
        return [s for s in sends if s.process == client and s.outcome == "ok"]

    def survivors_take_over(crashed: float, crashed_at: int) -> None:
        """The victim's partitions move to the survivors (after the lease TTL: every partition
        where the placement over the two puts it), and every partition acknowledges each
        client's sends made since the crash (the resends among them)."""
        wait_owned(cluster, topic, PARTITIONS)
        taken = time.monotonic() - crashed
        wait_for(
            "acks on every partition after the crash, for every client",
            lambda: all(
                {s.partition for s in acked_by(client, crashed_at)} == set(range(PARTITIONS))
                for client in PRODUCERS
            ),
        )
        phases.append(f"taken over {taken:.1f}s later")

    def restart() -> None:
        """The victim takes its partitions back (every partition where the placement over
        the three puts it: the very ones it had)."""
        started = time.monotonic()
        victim.start()
        wait_owned(cluster, topic, PARTITIONS)
        phases.append(f"restarted, back on it {time.monotonic() - started:.1f}s later")

    workers = [
        threading.Thread(target=produce, args=(client,), name=f"producer-{client}", daemon=True)
        for client in PRODUCERS
    ]
    for worker in workers:
        worker.start()
    try:
        # Writing to every partition, acknowledged: then the kill, with batches in flight.
        wait_for(
            "100 acks from every client",
            lambda: (
                all(len(acked_by(client)) >= 100 for client in PRODUCERS)
                or not all(w.is_alive() for w in workers)
            ),
        )
        assert all(w.is_alive() for w in workers), errors
        crashed_at = len(history.sends)
        crashed = time.monotonic()
        victim.kill()
        phases.append(f"SIGKILL after {crashed_at} sends")
        survivors_take_over(crashed, crashed_at)

        # Back with the failpoint armed: it takes its partitions back, commits, and exits at
        # its 5th commit before answering (however far it got meanwhile).
        started = time.monotonic()
        victim.start(env={"KAFSCALE_FAILPOINTS": f"{FAILPOINT}:exit@{COMMITS_BEFORE_CRASH}"})
        status = victim.exit_within(OWNERS_TIMEOUT)
        crashed_at = len(history.sends)
        crashed = time.monotonic()
        assert status == EXIT_STATUS, f"the failpoint did not fire: {status}\n{victim.tail()}"
        assert f"failpoint {FAILPOINT}: exiting" in victim.logs[-1].read_text()
        phases.append(
            f"restarted, {FAILPOINT} exit {crashed - started:.1f}s later after {crashed_at} sends"
        )
        survivors_take_over(crashed, crashed_at)
        restart()
        time.sleep(TAIL_SECONDS)
    finally:
        stop.set()
        for worker in workers:
            worker.join(DELIVERY_TIMEOUT + 20)
    assert not [w.name for w in workers if w.is_alive()], "a producer did not finish"
    assert not errors, errors

    history.close()

    workload = Workload(cluster.bootstrap, topic, PARTITIONS, history)
    workload.final_read(workload.watermarks())
    result = check(history, exactly_once=set(PRODUCERS))
    audit = cluster.audit(topic, PARTITIONS)
    summary = result.summary
    # The broker's own guarantee, whatever the client does: no (producer id, epoch, sequence)
    # is stored twice in a partition, and every stored record carries one.
    stored: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)
    unsequenced = 0
    for p in range(PARTITIONS):
        for batch in stored_batches(cluster, topic, p):
            if batch.producer_id < 0:
                unsequenced += batch.record_count
                continue
            for i in range(batch.record_count):
                key = (p, batch.producer_id, batch.producer_epoch, batch.base_sequence + i)
                stored[key].append(batch.base_offset + i)
    repeated = {k: v for k, v in stored.items() if len(v) > 1}
    final = owners(cluster, topic)
    epochs = {p: f"{owned[p][1]}->{final[p][1]}" for p in moved}
    per_client = {c: len(acked_by(c)) for c in PRODUCERS}
    report(
        f"{result.line()} acked_per_client={per_client} repeated_sequences={len(repeated)}; "
        f"broker {victim.id} (partitions {moved}, leader epochs {epochs}): {', '.join(phases)}; "
        f"lease TTL {LEASE_TTL_MS} ms; segments={audit.segments} orphans={audit.orphans}; "
        f"{time.monotonic() - began:.1f}s"
    )
    assert not repeated, (
        f"(producer id, epoch, sequence) stored twice: {list(repeated.items())[:5]}"
    )
    assert unsequenced == 0, f"{unsequenced} records stored without a producer id"
    assert len(stored) == summary["final_records"], (len(stored), summary["final_records"])
    assert (summary["duplicates"], summary["lost"], summary["inconsistent_offsets"]) == (0, 0, 0), (
        result.explain()
    )
    assert summary["unseen"] == 0, result.explain()
    assert result.valid, result.explain()
    assert summary["acked"] == summary["operations"], (
        f"{summary['operations'] - summary['acked']} sends not acknowledged: "
        + str([(s.process, s.value, s.error) for s in history.sends if s.outcome != "ok"][:5])
    )
    assert not audit.problems, "\n".join(audit.problems)
