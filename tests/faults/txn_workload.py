"""A transactional workload for the fault scenarios (tests/faults/test_txn_faults.py).

Producer threads, each a confluent-kafka transactional producer with its own transactional id
(so the ids' coordinators spread over the brokers), write transactions of a few records
spread over every partition of the topic, then commit (most) or abort (some); every
transaction's values and outcome go into a list of :class:`~tests.checker.Txn`. A *doomed*
producer (a separate process) opens a transaction, writes to it and is killed with SIGKILL
before committing: its transaction must be aborted by its timeout. After the faults, the
final read takes the whole log with a read_committed and a read_uncommitted consumer, once
every partition's last stable offset has reached its high watermark (or the bound passed:
counted as stuck), and :func:`~tests.checker.check_transactions` judges it.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

import confluent_kafka

from tests.checker import Txn

TXN_TIMEOUT_MS = 6000
"""The producers' transaction.timeout.ms: a doomed producer's transaction is aborted this
long after it began (plus the coordinator's scan interval)."""
ABORT_EVERY = 5
"""About one transaction in this many is aborted by its producer."""


class TxnWorkload:
    def __init__(self, bootstrap: str, topic: str, partitions: int, producers: int, seed: int):
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.producers = producers
        self.rng = random.Random(seed)
        self.txns: list[Txn] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.doomed: list[subprocess.Popen[bytes]] = []
        self.failures: list[str] = []
        self.fenced = 0
        """Producers that had to be recreated (a fatal error: fenced by their own
        re-initialisation, or the transaction timed out)."""

    def _producer(self, tid: str) -> confluent_kafka.Producer:
        p = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "transactional.id": tid,
                "transaction.timeout.ms": TXN_TIMEOUT_MS,
                "linger.ms": 5,
                "message.timeout.ms": TXN_TIMEOUT_MS - 500,
                "reconnect.backoff.max.ms": 200,
                "socket.timeout.ms": 5000,
            }
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                p.init_transactions(15)
                return p
            except confluent_kafka.KafkaException as e:
                if time.monotonic() > deadline or e.args[0].fatal():
                    raise

    def start(self) -> None:
        for i in range(self.producers):
            rng = random.Random(self.rng.random())
            thread = threading.Thread(target=self._run, args=(f"tw{i}", rng), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, tid: str, rng: random.Random) -> None:
        try:
            self._loop(tid, rng)
        except Exception as e:  # recorded: the test fails on it
            self.failures.append(f"{tid}: {e!r}")

    def _loop(self, tid: str, rng: random.Random) -> None:
        p = self._producer(tid)
        n = 0
        while not self.stop_event.is_set():
            n += 1
            txn = Txn(f"{tid}:{n}")
            with self.lock:
                self.txns.append(txn)
            try:
                p.begin_transaction()
                for i in range(rng.randint(3, 12)):
                    value = f"{tid}:{n}:{i}"
                    txn.values.append(value)
                    p.produce(self.topic, value=value.encode(), partition=i % self.partitions)
                if rng.randrange(ABORT_EVERY) == 0:
                    p.flush(30)  # stored, then aborted: read_committed must not see them
                    p.abort_transaction(30)
                    txn.outcome = "aborted"
                else:
                    self._commit(p, txn)
            except confluent_kafka.KafkaException as e:
                err = e.args[0]
                if err.txn_requires_abort():
                    try:
                        p.abort_transaction(30)
                        txn.outcome = "aborted"
                        continue
                    except confluent_kafka.KafkaException:
                        pass
                # Fatal (fenced: the transaction timed out meanwhile) or stuck: a new producer
                # of the same id fences this one; what it did is unknown (all or nothing).
                self.fenced += 1
                p = self._producer(tid)
            time.sleep(rng.uniform(0.01, 0.1))

    @staticmethod
    def _commit(p: confluent_kafka.Producer, txn: Txn) -> None:
        for _ in range(10):
            try:
                p.commit_transaction(30)
                txn.outcome = "committed"
                return
            except confluent_kafka.KafkaException as e:
                if not e.args[0].retriable():
                    raise
                time.sleep(0.2)

    def doom(self) -> Txn:
        """A producer process that opens a transaction, writes to it and is SIGKILLed before
        committing (its transaction must be aborted by the coordinator's timeout)."""
        n = len(self.doomed)
        txn = Txn(f"doomed-{n}", [f"doomed:{n}:{i}" for i in range(6)], "aborted")
        code = (
            "import confluent_kafka, sys, time\n"
            "bootstrap, topic, partitions, tid = sys.argv[1], sys.argv[2], int(sys.argv[3]),"
            " sys.argv[4]\n"
            "p = confluent_kafka.Producer({'bootstrap.servers': bootstrap,"
            " 'transactional.id': tid,"
            f" 'transaction.timeout.ms': {TXN_TIMEOUT_MS}}})\n"
            "p.init_transactions(30)\n"
            "p.begin_transaction()\n"
            "for i, v in enumerate(sys.argv[5:]):\n"
            "    p.produce(topic, value=v.encode(), partition=i % partitions)\n"
            "p.flush(30)\n"
            "print('written', flush=True)\n"
            "time.sleep(600)\n"
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                self.bootstrap,
                self.topic,
                str(self.partitions),
                f"doomed-{n}",
                *txn.values,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.doomed.append(proc)
        with self.lock:
            self.txns.append(txn)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # its records are written (or it failed: nothing was)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if line.strip() != b"written":
            txn.outcome = "unknown"
        return txn

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(90)
        for proc in self.doomed:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # --- after the faults --------------------------------------------------------------------

    def wait_stable(self, bound: float) -> int:
        """Wait until every partition's last stable offset is its high watermark; the
        number of partitions where it still is not after ``bound`` seconds."""
        deadline = time.monotonic() + bound
        stuck = self.partitions
        while time.monotonic() < deadline:
            try:
                committed = self._ends("read_committed")
                uncommitted = self._ends("read_uncommitted")
            except confluent_kafka.KafkaException:
                time.sleep(0.5)
                continue
            stuck = sum(a != b for a, b in zip(committed, uncommitted, strict=True))
            if not stuck:
                return 0
            time.sleep(0.5)
        return stuck

    def _ends(self, isolation: str) -> list[int]:
        c = confluent_kafka.Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "ends", "isolation.level": isolation}
        )
        try:
            return [
                c.get_watermark_offsets(
                    confluent_kafka.TopicPartition(self.topic, p), 10, cached=False
                )[1]
                for p in range(self.partitions)
            ]
        finally:
            c.close()

    def read_all(self, isolation: str, bound: float = 60) -> list[tuple[int, int, str]]:
        """Every record of the topic up to the high watermarks, read with ``isolation``."""
        ends = self._ends("read_uncommitted")
        c = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"final-{isolation}",
                "isolation.level": isolation,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        c.assign([confluent_kafka.TopicPartition(self.topic, p, 0) for p in range(self.partitions)])
        out: list[tuple[int, int, str]] = []
        eof: set[int] = set()
        deadline = time.monotonic() + bound
        try:
            while len(eof) < self.partitions and time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        position = c.position(
                            [confluent_kafka.TopicPartition(self.topic, msg.partition())]
                        )
                        if position[0].offset >= ends[msg.partition()]:
                            eof.add(msg.partition())
                    continue
                out.append((msg.partition(), msg.offset(), msg.value().decode()))
        finally:
            c.close()
        if len(eof) < self.partitions:
            self.failures.append(f"the final {isolation} read did not reach the end: {ends}")
        return out
