"""Scale benchmark (issue 19): Kafka-sized topics on the 3-broker etcd cluster.

``scripts/bench --mode scale`` starts etcd, a moto S3 server and three ``kafscale serve``
processes (default settings, as a user would) and measures, on one timeline:

1. a topic of 10,000 partitions (``--partitions``) created through confluent-kafka's
   AdminClient: seconds until CreateTopics answers, and until every partition has an owner
   (owner keys in etcd);
2. 1,000 topics of 10 partitions (``--topics``) in one CreateTopics: the same two times;
3. Metadata (v12, raw, our codecs) for every topic and for the big topic alone, asked of each
   broker 5 times: median and worst milliseconds;
4. idle broker RSS, per 1,000 owned partitions (RSS after the topics minus RSS before, over
   the partitions each broker owns); etcd keys and database bytes per partition;
5. ``kill -9`` of broker 2: seconds until its owner keys are gone (its lease expired,
   ``lease.ttl.ms``), then until every partition has an owner again (the takeover);
6. broker 2 started again: seconds until it listens, and until every partition is where the
   placement over three brokers puts it (the hand-back).

Targets: the big topic created and fully owned in at most 10 s; the takeover done at most 5 s
after the lease expired; Metadata for 10,000 partitions at most 100 ms; at most 10 MiB of RSS
per 1,000 idle partitions. One JSON line (``--out`` appends it), a table of what was met.
"""

from __future__ import annotations

import json
import socket
import statistics
import struct
import time
import uuid
from pathlib import Path
from typing import Any

from bench_broker import (
    CLUSTER_BROKERS,
    NAMESPACE,
    Etcd,
    KafscaleCluster,
    S3Server,
    machine,
    say,
    stop_all,
)

from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.metadata_response import MetadataResponse
from generated.registry import api
from kafscale.broker.cluster import placement
from kafscale.protocol.framing import encode_request

TARGETS = {
    "create_and_own_s": 10.0,
    "takeover_after_expiry_s": 5.0,
    "metadata_big_topic_ms": 100.0,
    "rss_mib_per_1000_partitions": 10.0,
}
POLL_S = 0.1


def owner_counts(etcd: Etcd, prefix: str) -> tuple[int, dict[int, int]]:
    """Owner keys under ``prefix``: how many, and how many each broker holds."""
    per: dict[int, int] = {}
    items = etcd.items(prefix)
    for _, value in items:
        broker = int(json.loads(value)["broker"])
        per[broker] = per.get(broker, 0) + 1
    return len(items), per


def wait_until(what: str, check: Any, timeout: float) -> float:
    """Poll ``check()`` until true; the seconds it took (RuntimeError after ``timeout``)."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(POLL_S)
    return time.perf_counter() - start


def metadata_ms(port: int, topics: list[str] | None, reps: int = 5) -> tuple[float, float, int]:
    """Median and worst milliseconds of a Metadata v12 request for ``topics`` (None: all)
    on one connection, and how many partitions the answer listed."""
    request = MetadataRequest(
        topics=None if topics is None else [MetadataRequestTopic(name=t) for t in topics],
        allow_auto_topic_creation=False,
    )
    took: list[float] = []
    partitions = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for i in range(reps):
            frame = b"".join(encode_request(api("Metadata"), 12, i, "bench-scale", request))
            start = time.perf_counter()
            sock.sendall(frame)
            size = struct.unpack(">i", _recv(sock, 4))[0]
            body = _recv(sock, size)
            took.append((time.perf_counter() - start) * 1000)
            answer = MetadataResponse.decode(memoryview(body)[5:], 12)  # flexible header
            partitions = sum(len(t.partitions) for t in answer.topics)
    return statistics.median(took), max(took), partitions


def _recv(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def create_topics(bootstrap: str, topics: dict[str, int]) -> float:
    """One CreateTopics (confluent-kafka's AdminClient) for ``topics``: seconds to answer."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()]
    start = time.perf_counter()
    futures = admin.create_topics(new, request_timeout=120, operation_timeout=120)
    for future in futures.values():
        future.result(timeout=180)
    return time.perf_counter() - start


def rss_mib(cluster: KafscaleCluster) -> list[float]:
    return [p.status_kib("VmRSS") / 1024 for p in cluster.procs]


def run(workdir: Path, partitions: int, topics: int, out: str | None) -> dict[str, Any]:
    run_id = f"scale-{uuid.uuid4().hex[:6]}"
    result: dict[str, Any] = {"kind": "scale", "machine": machine(False)}
    big = f"wide-{uuid.uuid4().hex[:6]}"
    small = {f"t{i:04d}-{uuid.uuid4().hex[:4]}": 10 for i in range(topics)}
    total = partitions + 10 * topics
    s3 = S3Server(workdir)
    etcd = Etcd(workdir, run_id)
    cluster: KafscaleCluster | None = None
    try:
        bucket = s3.create_bucket("kafscale")
        cluster = KafscaleCluster(workdir, run_id, etcd, bucket)
        result["start_listen_s"] = cluster.start(s3.endpoint)
        time.sleep(5)  # registered, settled, idle
        rss_before = rss_mib(cluster)
        owners = f"/{NAMESPACE}/owners/"

        say(f"== a topic of {partitions:,} partitions")
        result["big_create_s"] = create_topics(cluster.bootstrap, {big: partitions})
        result["big_owned_s"] = result["big_create_s"] + wait_until(
            "every partition of the big topic owned",
            lambda: owner_counts(etcd, f"{owners}{big}/")[0] == partitions,
            120,
        )
        say(f"== {topics:,} topics of 10 partitions")
        result["small_create_s"] = create_topics(cluster.bootstrap, small)
        result["small_owned_s"] = result["small_create_s"] + wait_until(
            "every partition of the small topics owned",
            lambda: owner_counts(etcd, owners)[0] == total,
            180,
        )

        say("== Metadata")
        port = cluster.ports[0]
        med, worst, listed = metadata_ms(port, [big])
        result |= {"metadata_big_topic_ms": med, "metadata_big_topic_worst_ms": worst}
        assert listed == partitions, (listed, partitions)
        per_broker = [metadata_ms(p, None) for p in cluster.ports]
        result["metadata_all_ms"] = statistics.median(m for m, _, _ in per_broker)
        result["metadata_all_worst_ms"] = max(w for _, w, _ in per_broker)
        result["metadata_all_partitions"] = per_broker[0][2]

        time.sleep(5)  # idle
        rss_after = rss_mib(cluster)
        _, held = owner_counts(etcd, owners)
        per_1000 = [
            (after - before) / (held.get(i, 0) / 1000)
            for i, (before, after) in enumerate(zip(rss_before, rss_after, strict=True))
            if held.get(i)
        ]
        result["rss_mib_before"], result["rss_mib_after"] = rss_before, rss_after
        result["rss_mib_per_1000_partitions"] = max(per_1000)
        status = etcd.status()
        keys = len(etcd.keys(f"/{NAMESPACE}/"))
        result |= {
            "etcd_keys": keys,
            "etcd_keys_per_partition": keys / total,
            "etcd_db_bytes": status["db_bytes"],
            "etcd_db_bytes_per_partition": status["db_bytes"] / total,
        }

        say("== kill -9 broker 2")
        victim = cluster.procs[2]
        victim.popen.kill()
        victim.popen.wait(10)
        killed = time.perf_counter()
        result["lease_expired_s"] = wait_until(
            "the killed broker's owner keys gone",
            lambda: 2 not in owner_counts(etcd, owners)[1],
            60,
        )
        result["takeover_after_expiry_s"] = wait_until(
            "every partition owned again", lambda: owner_counts(etcd, owners)[0] == total, 120
        )
        result["takeover_from_kill_s"] = time.perf_counter() - killed
        result["partitions_taken_over"] = held.get(2, 0)

        say("== broker 2 again")
        restarted = time.perf_counter()
        cluster.procs[2] = cluster.restart_broker(2, s3.endpoint)
        result["restart_listen_s"] = time.perf_counter() - restarted
        wanted = {big: placement(big, partitions, list(range(CLUSTER_BROKERS)))}
        wanted |= {t: placement(t, 10, list(range(CLUSTER_BROKERS))) for t in small}

        def placed() -> bool:
            now: dict[str, dict[int, int]] = {}
            for key, value in etcd.items(owners):
                topic, p = key[len(owners) :].rsplit("/", 1)
                now.setdefault(topic, {})[int(p)] = int(json.loads(value)["broker"])
            return all(
                now.get(t, {}).get(p) == b for t, bs in wanted.items() for p, b in enumerate(bs)
            )

        result["restart_placed_s"] = result["restart_listen_s"] + wait_until(
            "every partition where the placement puts it", placed, 180
        )
        result["stop_s"], codes = stop_all(cluster.procs)
        result["stop_statuses"] = codes
        cluster.procs = []
    finally:
        if cluster is not None:
            stop_all(cluster.procs)
        stop_all([etcd.proc, s3.proc])
    result["create_and_own_s"] = result.get("big_owned_s")
    result["targets"] = {
        name: {"want_at_most": want, "got": result.get(name), "met": _met(result.get(name), want)}
        for name, want in TARGETS.items()
    }
    line = json.dumps(result, sort_keys=True)
    print(line)
    if out:
        with Path(out).open("a") as f:
            f.write(line + "\n")
    say(table(result))
    return result


def _met(value: Any, want: float) -> bool:
    return isinstance(value, int | float) and value <= want


def table(r: dict[str, Any]) -> str:
    """The figures, as a markdown table (docs/benchmarks.md)."""
    rows = [
        ("10,000-partition topic: CreateTopics answered", r.get("big_create_s"), "s"),
        ("... every partition owned (target <= 10 s)", r.get("big_owned_s"), "s"),
        ("1,000 topics x 10: CreateTopics answered", r.get("small_create_s"), "s"),
        ("... every partition owned", r.get("small_owned_s"), "s"),
        ("Metadata, the big topic (target <= 100 ms)", r.get("metadata_big_topic_ms"), "ms"),
        ("Metadata, every topic (median of brokers)", r.get("metadata_all_ms"), "ms"),
        ("RSS per 1,000 idle partitions (<= 10 MiB)", r.get("rss_mib_per_1000_partitions"), "MiB"),
        ("etcd keys per partition", r.get("etcd_keys_per_partition"), ""),
        ("etcd database bytes per partition", r.get("etcd_db_bytes_per_partition"), "B"),
        ("kill -9: its lease expired after", r.get("lease_expired_s"), "s"),
        ("... taken over after the expiry (<= 5 s)", r.get("takeover_after_expiry_s"), "s"),
        ("restart: listening after", r.get("restart_listen_s"), "s"),
        ("... every partition back where placed", r.get("restart_placed_s"), "s"),
    ]
    out = ["| measure | value |", "| --- | --- |"]
    for name, value, unit in rows:
        text = f"{value:,.2f} {unit}".strip() if isinstance(value, int | float) else "—"
        out.append(f"| {name} | {text} |")
    return "\n".join(out)
