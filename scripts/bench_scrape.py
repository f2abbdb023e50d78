"""Scrape benchmark (issue 13): what /metrics costs a broker.

``scripts/bench --mode scrape`` runs ``kafscale serve`` on the embedded default (as a user
would, with its HTTP port) and measures:

1. **scrape cost with 1,000 partitions and 100 groups**: 10 topics of 100 partitions, one
   record written to each; 100 groups committing offsets on 10 partitions each (simple
   consumers), 20 of them with a member joined. Then 50 scrapes of /metrics one after
   another: milliseconds per scrape as the scraper sees it (median, p90, worst), the broker's
   CPU milliseconds per scrape (/proc) and the time its handler took (its own
   kafscale_scrape_duration_seconds), the size and the number of series of the answer; then
   15 scrapes one second apart (consumer lag is rendered every 5 s: what a 1 s scrape costs);
   the same for OpenMetrics, and the console's /api/topics and /api/groups;
2. **produce throughput with a 1 s scrape running vs without**: fresh brokers, runs
   alternating without and with a scraper that GETs /metrics every second, confluent-kafka
   producing ``--records`` (default 1,000,000; quick 50,000) records of ``--size`` bytes to 3
   partitions (acks=all, linger 5 ms), 5 runs each (quick 1): the median
   MB/s of each and their ratio (target: with a scrape, at least 95 % of without), and the
   broker's CPU per MB produced (less sensitive than MB/s to other work on the machine, whose
   share is reported too).

One JSON line (``--out`` appends it) and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_broker import (
    Payloads,
    Workload,
    create_topic,
    free_port,
    machine,
    machine_busy_seconds,
    percentile,
    produce,
    say,
    start_broker,
)

from generated.join_group_request import JoinGroupRequest, JoinGroupRequestProtocol
from generated.offset_commit_request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from kafscale.broker.metrics import LAG_RENDER_S
from kafscale.broker.ops_api import kafka_request

TOPICS, PARTITIONS, GROUPS, PER_GROUP, MEMBERS = 10, 100, 100, 10, 20
SCRAPES = 50
SPACED = 15
TARGET_RATIO = 0.95
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def http_get(port: int, path: str, accept: str = "") -> tuple[float, bytes]:
    """(seconds, body) of one GET."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        request.add_header("Accept", accept)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = answer.read()
    return time.perf_counter() - started, body


def series(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


async def groups(port: int) -> None:
    """GROUPS simple consumers' commits (PER_GROUP partitions each) and MEMBERS joined members."""
    topics = [f"scrape-{i}" for i in range(TOPICS)]
    for g in range(GROUPS):
        topic, first = topics[g % TOPICS], (g // TOPICS) * PER_GROUP
        body = OffsetCommitRequest(
            group_id=f"group-{g:03d}",
            generation_id_or_member_epoch=-1,
            member_id="",
            topics=[
                OffsetCommitRequestTopic(
                    name=topic,
                    partitions=[
                        OffsetCommitRequestPartition(partition_index=p, committed_offset=0)
                        for p in range(first, first + PER_GROUP)
                    ],
                )
            ],
        )
        await kafka_request("127.0.0.1", port, 8, 8, body, 30)
    for g in range(MEMBERS):
        join = JoinGroupRequest(
            group_id=f"group-{g:03d}",
            session_timeout_ms=600_000,
            rebalance_timeout_ms=5_000,
            member_id="",
            protocol_type="consumer",
            protocols=[JoinGroupRequestProtocol(name="range", metadata=b"\x00\x00")],
        )
        await kafka_request("127.0.0.1", port, 11, 3, join, 30)


def scrape_histogram(port: int) -> tuple[float, float]:
    """(sum of seconds, count) of the broker's kafscale_scrape_duration_seconds."""
    text = http_get(port, "/metrics")[1].decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("kafscale_scrape_duration_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("kafscale_scrape_duration_seconds_count"):
            count = float(line.split()[-1])
    return total, count


def handler_ms(port: int) -> float:
    """Mean milliseconds the broker spent answering a scrape, over the scrapes so far."""
    total, count = scrape_histogram(port)
    return total * 1000 / max(count, 1)


def timed(port: int, path: str, accept: str = "", n: int = SCRAPES) -> dict[str, Any]:
    seconds, size = [], 0
    body = b""
    for _ in range(n):
        s, body = http_get(port, path, accept)
        seconds.append(s * 1000)
        size = len(body)
    seconds.sort()
    return {
        "median_ms": round(statistics.median(seconds), 2),
        "p90_ms": round(percentile(seconds, 90), 2),
        "max_ms": round(seconds[-1], 2),
        "bytes": size,
        "series": series(body) if path == "/metrics" else None,
    }


def scrape_cost(path: Path) -> dict[str, Any]:
    http = free_port()
    broker = start_broker(
        "kafscale-embedded",
        path,
        None,
        "scrape-cost",
        extra=[f"--http-listen=127.0.0.1:{http}", "--group.initial.rebalance.delay.ms=0"],
    )
    try:
        from confluent_kafka import Producer

        for i in range(TOPICS):
            create_topic(broker.bootstrap, f"scrape-{i}", PARTITIONS)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for i in range(TOPICS):
            for p in range(PARTITIONS):
                producer.produce(f"scrape-{i}", b"r", partition=p)
        if producer.flush(60):
            raise RuntimeError("records not acknowledged")
        asyncio.run(groups(broker.port))
        http_get(http, "/metrics")  # the first scrape reads each group's offsets once
        cpu = broker.proc.cpu_seconds()
        text = timed(http, "/metrics")
        cpu_ms = (broker.proc.cpu_seconds() - cpu) * 1000 / SCRAPES
        handler = handler_ms(http)
        # At one scrape a second, as in part 2 (consumer lag rendered every LAG_RENDER_S): the
        # time the broker's loop spent answering, from its own scrape histogram (the broker's
        # CPU is no measure here: an idle broker with 1,000 partitions has timers of its own).
        before = scrape_histogram(http)
        spaced = []
        for _ in range(SPACED):
            time.sleep(1.0)
            spaced.append(http_get(http, "/metrics")[0] * 1000)
        after = scrape_histogram(http)
        spaced_handler_ms = (after[0] - before[0]) * 1000 / max(after[1] - before[1], 1)
        result = {
            "partitions": TOPICS * PARTITIONS,
            "groups": GROUPS,
            "members": MEMBERS,
            "metrics_text": text
            | {"broker_cpu_ms": round(cpu_ms, 2), "handler_ms": round(handler, 2)},
            "metrics_every_second": {
                "scrapes": SPACED,
                "median_ms": round(statistics.median(spaced), 2),
                "max_ms": round(max(spaced), 2),
                "handler_ms": round(spaced_handler_ms, 2),
            },
            "metrics_openmetrics": timed(http, "/metrics", OPENMETRICS),
            "api_topics": timed(http, "/api/topics", n=10),
            "api_groups": timed(http, "/api/groups", n=10),
        }
        say(
            f"== scrape: {text['series']} series, {text['bytes']} bytes, "
            f"median {text['median_ms']} ms, broker CPU {cpu_ms:.1f} ms per scrape"
        )
        return result
    finally:
        broker.proc.stop()


class Scraper:
    """GET /metrics every ``interval`` seconds in a thread, until stopped."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.port, self.interval = port, interval
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            http_get(self.port, "/metrics")
            self.count += 1


def throughput(path: Path, w: Workload, runs: int) -> dict[str, Any]:
    payloads = Payloads(w.records, w.size, seed=13, lazy=True)
    out: dict[str, list[float]] = {"without": [], "with": []}
    cpu_per_mb: dict[str, list[float]] = {"without": [], "with": []}
    others: list[float] = []
    scrapes = 0
    for run in range(runs):
        for mode in ("without", "with"):
            http = free_port()
            broker = start_broker(
                "kafscale-embedded",
                path,
                None,
                f"tp-{mode}-{run}",
                extra=[f"--http-listen=127.0.0.1:{http}"],
            )
            scraper = Scraper(http) if mode == "with" else None
            try:
                create_topic(broker.bootstrap, "scrape-tp", w.partitions)
                if scraper is not None:
                    scraper.start()
                cpu, busy = broker.proc.cpu_seconds(), machine_busy_seconds()
                result = produce(broker.bootstrap, "scrape-tp", payloads, w)
                cpu = broker.proc.cpu_seconds() - cpu
                busy = machine_busy_seconds() - busy
                if result["produce_errors"]:
                    raise RuntimeError(f"produce errors: {result['produce_errors']}")
                mb = w.records * w.size / 1e6
                out[mode].append(result["produce_mb_s"])
                cpu_per_mb[mode].append(cpu / mb)
                # The machine's busy CPU seconds per second beyond this broker's: other work.
                others.append(max(0.0, busy - cpu) / result["produce_s"])
                say(
                    f"== {mode} a 1 s scrape, run {run + 1}: {result['produce_mb_s']:.1f} MB/s, "
                    f"broker {cpu / mb * 1000:.2f} CPU ms/MB"
                )
            finally:
                if scraper is not None:
                    scraper.stop()
                    scrapes += scraper.count
                broker.proc.stop()
                shutil.rmtree(path / f"kafscale-embedded-tp-{mode}-{run}", ignore_errors=True)
    without = statistics.median(out["without"])
    with_scrape = statistics.median(out["with"])
    return {
        "records": w.records,
        "size": w.size,
        "partitions": w.partitions,
        "runs": runs,
        "without_mb_s": [round(v, 2) for v in out["without"]],
        "with_mb_s": [round(v, 2) for v in out["with"]],
        "median_without_mb_s": round(without, 2),
        "median_with_mb_s": round(with_scrape, 2),
        "ratio": round(with_scrape / without, 3),
        "cpu_ms_per_mb_without": [round(v * 1000, 3) for v in cpu_per_mb["without"]],
        "cpu_ms_per_mb_with": [round(v * 1000, 3) for v in cpu_per_mb["with"]],
        "cpu_ratio": round(
            statistics.median(cpu_per_mb["with"]) / statistics.median(cpu_per_mb["without"]), 3
        ),
        "other_load_cores": round(statistics.median(others), 2),
        "scrapes_during_runs": scrapes,
        "met": with_scrape >= TARGET_RATIO * without,
    }


def run(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    records = args.records or (50_000 if args.quick else 1_000_000)
    runs = 1 if args.quick else 5
    w = Workload(records=records, size=args.size, partitions=args.partitions or 3)
    result: dict[str, Any] = {
        "kind": "scrape",
        "machine": machine(False),
        "scrape_cost": scrape_cost(path),
        "throughput": throughput(path, w, runs),
    }
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.out:
        with open(args.out, "a") as out:
            out.write(line + "\n")
    say(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    cost, tp = result["scrape_cost"], result["throughput"]
    text, every = cost["metrics_text"], cost["metrics_every_second"]
    rows = [
        "| what | figure |",
        "| --- | --- |",
        f"| /metrics, {cost['partitions']:,} partitions and {cost['groups']} groups: series, "
        f"bytes | {text['series']:,}, {text['bytes']:,} |",
        f"| /metrics (text) per scrape: median, p90, worst | {text['median_ms']} ms, "
        f"{text['p90_ms']} ms, {text['max_ms']} ms |",
        f"| back to back (lag reused within {LAG_RENDER_S:g} s): broker CPU, time in the "
        f"handler per scrape | {text['broker_cpu_ms']} ms, {text['handler_ms']} ms |",
        f"| one scrape a second: median, worst, time in the handler per scrape | "
        f"{every['median_ms']} ms, {every['max_ms']} ms, {every['handler_ms']} ms |",
        f"| /metrics (OpenMetrics) median | {cost['metrics_openmetrics']['median_ms']} ms |",
        f"| /api/topics, /api/groups median | {cost['api_topics']['median_ms']} ms, "
        f"{cost['api_groups']['median_ms']} ms |",
        f"| produce MB/s without / with a 1 s scrape (median of {tp['runs']}) | "
        f"{tp['median_without_mb_s']} / {tp['median_with_mb_s']} "
        f"({tp['ratio']:.1%}; target >= {TARGET_RATIO:.0%}: "
        f"{'met' if tp['met'] else 'NOT met'}) |",
        f"| broker CPU per MB produced, with / without a 1 s scrape (median) | "
        f"{tp['cpu_ratio']:.1%} |",
        f"| other load on the machine during the runs (cores, median) | {tp['other_load_cores']} |",
    ]
    return "\n".join(rows)
