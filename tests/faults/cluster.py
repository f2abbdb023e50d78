"""A cluster of ``kafscale serve`` processes for the fault tests, and what is checked about it.

:func:`running_cluster` starts N brokers (``--etcd`` against a real etcd from
``tests/etcdserver.py``, ``--s3-*`` against the moto server of ``tests/s3server.py`` or a
:class:`~tests.s3faults.FaultProxy` in front of it) with a short lease TTL, so a dead broker's
partitions move within seconds. A test kills (SIGKILL), stops (SIGTERM), pauses (SIGSTOP),
resumes (SIGCONT) and restarts brokers, each by the pid of the child it started, never by
name. At the end every broker is stopped with SIGTERM and must exit 0, and no broker may have
logged a traceback the test did not declare expected (:meth:`Cluster.unexpected_tracebacks`).

:meth:`Cluster.audit` reads the committed state straight from etcd and the bucket: each
partition's committed segments tile its offsets from the log start to the high watermark, each
was written under the leader epoch in force at its base offset (so a deposed owner's late
upload is never what a committed entry points at), and each exists in the bucket. Objects no
entry references (uploads whose commit never happened) are counted: never served.

:meth:`Cluster.garbage_audit` checks the whole bucket against the whole metadata store once the
janitor has had its time (the storage lifecycle: ``kafscale/broker/compaction.py`` and
``kafscale/broker/janitor.py``): no garbage record or deleted topic's tombstone left past its
deadline, every committed entry's object in the bucket and named by no garbage record, and
every object accounted for (referenced by a committed entry, named in the ingest registry or
by a pending garbage record or tombstone). The only exception is an ingest object that nothing
names (an upload whose commit a crash prevented, or that failed) and that the janitor may not
delete yet: younger than :data:`~kafscale.broker.janitor.ORPHAN_AGE_MS`, and written under a
lease that is still alive or died less than two lease TTLs after the upload (the janitor's
orphan scan deletes the others: the audit waits for it). Those are counted, not failed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kafscale.broker import janitor
from kafscale.broker.failpoints import EXIT_STATUS
from kafscale.storage.segment import parse_ingest_key
from tests.etcdserver import EtcdCluster
from tests.hung import kill_and_describe
from tests.s3server import TEST_ENV

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
"""A restarted broker waits for its previous lease to expire before it registers again."""
STOP_TIMEOUT = 20.0
LOG_TAIL = 40
GARBAGE_STALL = 30.0
"""Seconds :meth:`Cluster.garbage_audit` waits for the janitor to make progress (a pass every
:data:`~kafscale.broker.janitor.INTERVAL_S` on the live broker with the lowest id, deleting
one object and one record at a time; after a crash of that broker, its successor takes the
duty once the crashed one's lease expired)..."""
GARBAGE_CAP = 300.0
"""... and in all (a long soak leaves a long backlog: the janitor deletes objects one by one)."""
DEFAULT_GRACE_MS = 30_000
"""The brokers' ``log.segment.delete.delay.ms`` unless the cluster's options set it."""
INTENT_MIN_MS = 60_000
"""A garbage record due this long after the grace period is a compaction's intent
(:data:`~kafscale.broker.janitor.INTENT_MS`, 10 minutes)."""


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Broker:
    """One broker id of the cluster: successive processes (runs) on one port."""

    id: int
    port: int
    args: list[str]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    paused: bool = False
    exits: list[int] = field(default_factory=list)
    """Exit status of each finished run (negative: killed by that signal)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start a new run (``env``: extra environment for it, e.g. KAFSCALE_FAILPOINTS)."""
        assert not self.running, f"broker {self.id} is already running"
        self._reap()
        log = self.log_dir / f"broker-{self.id}-run-{len(self.logs) + 1}.log"
        self.logs.append(log)
        cmd = [sys.executable, "-m", "kafscale", "serve", *self.args]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **TEST_ENV, **self.env, **(env or {})},
                start_new_session=True,
            )
        self.paused = False
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Until the broker accepts connections (it listens once registered in etcd)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.logs[-1].read_text(errors="replace")
                if self.proc.returncode == EXIT_STATUS and "listening on" in log:
                    return  # it started and already crashed at its failpoint (a low hit count)
                pytest.fail(
                    f"broker {self.id} exited with {self.proc.returncode} while starting\n"
                    + self.tail()
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        pytest.fail(f"broker {self.id} did not listen within {timeout}s\n" + self.tail())

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            self.proc = None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"broker {self.id} is not up"
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed, the lease is left to expire)."""
        if self.paused:
            self.resume()
        self.signal(signal.SIGKILL)
        self.wait_exit(10)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (a drain: partitions handed over at once); the exit status."""
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its sockets open (a GC pause, a stalled VM)."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            dump = kill_and_describe(self.proc, self.logs[-1])
            pytest.fail(
                f"broker {self.id} did not exit within {timeout}s\n"
                + self.tail()
                + "\n----- what it was doing\n"
                + dump
            )
        self._reap()
        return status

    def exit_within(self, timeout: float) -> int | None:
        """The exit status if the broker exits by itself within ``timeout`` seconds; else it
        is killed (SIGKILL) and None is answered."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        status = self.proc.returncode
        self._reap()
        return status

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def tail(self, lines: int = LOG_TAIL) -> str:
        parts = []
        for path in self.logs[-2:]:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"----- {path.name} (last {lines} lines)")
            parts += text[-lines:]
        return "\n".join(parts)


@dataclass
class Traceback:
    broker: int
    log: str
    header: str
    """The log line the traceback belongs to (the one before it)."""
    text: str

    @property
    def last(self) -> str:
        """The traceback's last line: the exception."""
        lines = self.text.rstrip().splitlines()
        return lines[-1] if lines else ""


@dataclass
class Audit:
    """What :meth:`Cluster.audit` found."""

    segments: int = 0
    compacted: int = 0
    """Of the segments, KAFS segments (compaction's output), not pieces."""
    objects: int = 0
    orphans: int = 0
    """Objects in the bucket that no committed segment entry references (never served)."""
    problems: list[str] = field(default_factory=list)


@dataclass
class Garbage:
    """What :meth:`Cluster.garbage_audit` found (object counts of the final snapshot)."""

    objects: int = 0
    referenced: int = 0
    """Objects a committed entry points at (a piece's ingest object, a segment and its index)."""
    registered: int = 0
    """Ingest objects no committed entry points at any more, still named in the registry (the
    janitor's sweep waits until its entries are :data:`~kafscale.broker.janitor.SWEEP_MIN_AGE_MS`
    old)."""
    pending: int = 0
    """Objects named by a garbage record not due yet (grace period, or a compaction's intent)."""
    intents: int = 0
    """Of those, named by an intent: a compaction that uploaded and never swapped (it died, as
    at ``after_compaction_put``, or was deposed); deleted when the intent is due (10
    minutes)."""
    intent_records: int = 0
    """Intents left (a compaction between intent and swap, or one that never swapped)."""
    doomed: int = 0
    """Objects of deleted topics whose tombstone is not due yet."""
    uncommitted: int = 0
    """Ingest objects nothing names, younger than
    :data:`~kafscale.broker.janitor.ORPHAN_AGE_MS`: uploads whose commit a crash (or a failed
    commit) prevented. Those of a dead lease the janitor deletes two lease TTLs after their
    upload (:meth:`Cluster.garbage_audit` waits for that); the others at 10 minutes."""
    records: int = 0
    """Garbage records left (pending, intents included)."""
    due: int = 0
    """Garbage records and tombstones due when the wait began (the janitor's backlog)."""
    waited: float = 0.0
    """Seconds waited for the janitor to process what was due."""
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"bucket_objects={self.objects} referenced={self.referenced} "
            f"registered={self.registered} gc_pending={self.pending} "
            f"intents={self.intent_records}/{self.intents} "
            f"doomed={self.doomed} uncommitted_uploads={self.uncommitted} "
            f"gc_records={self.records} gc_due={self.due} gc_wait_s={self.waited:.1f} "
            f"unaccounted={sum('unaccounted' in p for p in self.problems)}"
        )


class Cluster:
    """N brokers sharing an etcd cluster and a bucket (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        etcd: EtcdCluster,
        s3_endpoint: str,
        s3_direct: str,
        bucket: str,
        size: int = 3,
        lease_ttl_ms: int = 2000,
        flush_interval_ms: int = 10,
        namespace: str = "kafscale",
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.etcd = etcd
        self.bucket = bucket
        self.s3_direct = s3_direct
        """The S3 server itself (not through a fault proxy): for the audit's listing."""
        self.namespace = namespace
        self.lease_ttl_ms = lease_ttl_ms
        self.options = dict(options or {})
        """Further broker settings (``--{name}={value}`` on every broker's command line)."""
        self.brokers: list[Broker] = []
        ports = free_ports(2 * size)
        for i in range(size):
            # A fixed HTTP port per broker, not port 0: a restarted broker's HTTP listener
            # could otherwise be given the Kafka port a killed broker just freed.
            port, http_port = ports[2 * i], ports[2 * i + 1]
            args = [
                f"--broker-id={i}",
                f"--listen=127.0.0.1:{port}",
                f"--data-dir={root / f'broker-{i}'}",
                f"--etcd={etcd.endpoints}",
                f"--s3-bucket={bucket}",
                f"--s3-endpoint={s3_endpoint}",
                "--s3-path-style=true",
                f"--lease.ttl.ms={lease_ttl_ms}",
                f"--flush.interval.ms={flush_interval_ms}",
                f"--namespace={namespace}",
                f"--http-listen=127.0.0.1:{http_port}",  # not the fixed 9093: several at once
                *(f"--{name}={value}" for name, value in self.options.items()),
            ]
            self.brokers.append(Broker(i, port, args, root))

    @property
    def bootstrap(self) -> str:
        return ",".join(b.address for b in self.brokers)

    def start(self, env: Mapping[int, dict[str, str]] | None = None) -> None:
        """Start every broker (``env``: broker id -> extra environment of its first run, e.g.
        a failpoint armed from the start)."""
        for b in self.brokers:
            b.start(env=(env or {}).get(b.id), wait=False)
        for b in self.brokers:
            b.wait_listening()

    def heal(self) -> None:
        """Every broker up again: paused ones resumed, dead ones restarted (no failpoints)."""
        for b in self.brokers:
            if b.paused:
                b.resume()
        for b in self.brokers:
            if not b.running:
                b.start(wait=False)
        for b in self.brokers:
            b.wait_listening()

    def stop(self) -> dict[int, int]:
        """SIGTERM every running broker; their exit statuses."""
        for b in self.brokers:
            if b.paused:
                b.resume()
        statuses: dict[int, int] = {}
        for b in self.brokers:
            if b.running:
                b.signal(signal.SIGTERM)
        for b in self.brokers:
            if b.proc is not None:
                statuses[b.id] = b.wait_exit(STOP_TIMEOUT)
        return statuses

    def kill_all(self) -> None:
        """Teardown after a failure: SIGKILL whatever still runs (our children only)."""
        for b in self.brokers:
            if b.proc is not None and b.proc.poll() is None:
                with contextlib.suppress(OSError):
                    b.proc.send_signal(signal.SIGCONT)
                    b.proc.kill()
                b.proc.wait(10)

    # --- logs ------------------------------------------------------------------------------

    def tracebacks(self) -> list[Traceback]:
        found = []
        for b in self.brokers:
            for path in b.logs:
                if not path.exists():
                    continue
                lines = path.read_text(errors="replace").splitlines()
                end = 0
                for i, line in enumerate(lines):
                    # A chained exception's inner "Traceback" lines belong to the block that
                    # began at its log line (whose last line is the final exception).
                    if line.startswith("Traceback") and i >= end:
                        end = i + 1
                        while end < len(lines) and (
                            lines[end].startswith((" ", "\t", "Traceback"))
                            or not re.match(r"\d{4}-\d\d-\d\d ", lines[end])
                        ):
                            end += 1
                        header = lines[i - 1] if i else ""
                        text = "\n".join(lines[max(0, i - 1) : end])
                        found.append(Traceback(b.id, path.name, header, text))
        return found

    def unexpected_tracebacks(self, expected: Sequence[str] = ()) -> list[Traceback]:
        """Tracebacks matching none of the ``expected`` regexes, each searched in the log line
        the traceback belongs to, a newline, and the traceback's last line (the exception)."""
        return [
            t
            for t in self.tracebacks()
            if not any(re.search(p, f"{t.header}\n{t.last}") for p in expected)
        ]

    def logs_text(self) -> str:
        return "\n".join(b.tail() for b in self.brokers)

    # --- the committed state ---------------------------------------------------------------

    def etcd_range(self, prefix: str) -> dict[str, bytes]:
        """Every key under ``prefix`` (etcd's JSON gateway, through any healthy member)."""
        return _values(self._range(prefix)[1])

    def etcd_snapshot(self, *prefixes: str) -> list[dict[str, bytes]]:
        """Every key under each of ``prefixes``, all as of one revision (the first read's)."""
        revision, first = self._range(prefixes[0])
        return [_values(first)] + [_values(self._range(p, revision)[1]) for p in prefixes[1:]]

    def live_leases(self) -> set[int]:
        """The leases the live brokers' registrations are kept on."""
        return {int(kv.get("lease", 0)) for kv in self._range(f"/{self.namespace}/brokers/")[1]}

    def _range(self, prefix: str, revision: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """(the store's revision, the key-values under ``prefix`` as of ``revision``, 0: now,
        as the gateway answers them); a member that does not answer within the gateway
        call's second is retried, then another."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        body: dict[str, object] = {
            "key": base64.b64encode(key).decode(),
            "range_end": base64.b64encode(end).decode(),
        }
        if revision:
            body["revision"] = str(revision)
        last: Exception | None = None
        for _ in range(3):
            for member in self.etcd.members:
                if not member.running or member.paused:
                    continue
                try:
                    answer = member.request("/v3/kv/range", body)
                except (OSError, ValueError) as e:
                    last = e
                    continue
                kvs: list[dict[str, Any]] = answer.get("kvs", [])  # type: ignore[assignment]
                header: dict[str, Any] = answer.get("header", {})  # type: ignore[assignment]
                return int(header.get("revision", 0)), kvs
            time.sleep(0.5)
        raise RuntimeError(f"no etcd member answered: {last}")

    def _s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_direct,
            region_name=TEST_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket_keys(self, prefix: str) -> set[str]:
        s3 = self._s3()
        keys: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.update(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def in_bucket(self, key: str) -> bool:
        import botocore.exceptions

        try:
            self._s3().head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def audit(self, topic: str, partitions: int) -> Audit:
        """Every partition's committed entries: contiguous from the log start to the high
        watermark, each object in the bucket, flush segments written under the epoch in
        force at their base offset; orphans: the partition's own objects (compacted or
        flush segments) no entry references (shared ingest objects are the janitor's)."""
        ns = self.namespace
        audit = Audit()
        raw_topic = self.etcd_range(f"/{ns}/topics/{topic}").get(f"/{ns}/topics/{topic}")
        topic_id = json.loads(raw_topic)["id"] if raw_topic is not None else "-"
        ingest = self.bucket_keys(f"{ns}/ingest/")
        for p in range(partitions):
            raw = self.etcd_range(f"/{ns}/partitions/{topic}/{p:05d}").get(
                f"/{ns}/partitions/{topic}/{p:05d}"
            )
            # No state: never claimed, so empty from offset 0 (and it must have no entries).
            state = json.loads(raw) if raw is not None else {"log_start": 0, "hw": 0}
            log_start, hw = int(state["log_start"]), int(state["hw"])
            epochs = [(int(e), int(s)) for e, s in state.get("epochs") or [(0, 0)]]
            prefix = f"/{ns}/segments/{topic}/{p:05d}/"
            segments = sorted(
                (int(k[len(prefix) :]), json.loads(v)) for k, v in self.etcd_range(prefix).items()
            )
            legacy = f"{ns}/{topic}/{p}/"
            objects = self.bucket_keys(legacy) | self.bucket_keys(f"{ns}/topics/{topic_id}/{p}/")
            audit.segments += len(segments)
            audit.compacted += sum(not seg.get("piece") for _, seg in segments)
            audit.objects += len(objects)
            referenced: set[str] = set()
            expected_base = log_start
            for base, seg in segments:
                key = str(seg["key"])
                piece = bool(seg.get("piece"))
                names = [key] if piece else [key, key.removesuffix(".kfs") + ".index"]
                referenced.update(names)
                if int(seg["last"]) < log_start:
                    continue  # deleted by DeleteRecords or retention, dropped soon
                if base > expected_base or (base < expected_base and expected_base != log_start):
                    audit.problems.append(
                        f"partition {p}: segment at {base} but the previous one ended at "
                        f"{expected_base - 1}"
                    )
                expected_base = int(seg["last"]) + 1
                m = re.search(r"-e(\d+)-[0-9a-f]+\.kfs$", key)
                if key.startswith(legacy) and m is not None:
                    in_force = max((e for e, s in epochs if s <= base), default=None)
                    if in_force is not None and int(m.group(1)) != in_force:
                        audit.problems.append(
                            f"partition {p}: segment {key} at {base} was written under epoch "
                            f"{m.group(1)} but epoch {in_force} was in force there "
                            f"(history {epochs}): a deposed owner's commit"
                        )
                elif not piece and m is None:
                    audit.problems.append(f"partition {p}: segment key {key} has no writer epoch")
                for k in names:
                    if k not in (ingest if piece else objects):
                        audit.problems.append(f"partition {p}: committed {k} is not in the bucket")
            if expected_base != hw and not (hw == log_start and not segments):
                audit.problems.append(
                    f"partition {p}: segments end at {expected_base - 1}, high watermark {hw}"
                )
            audit.orphans += len(objects - referenced)
        return audit

    # --- the storage lifecycle: nothing left unaccounted for -------------------------------

    def garbage_audit(self, settle_ms: int = 0) -> Garbage:
        """The whole bucket against the whole metadata store (see the module docstring).

        First waits, as long as the janitor makes progress (:data:`GARBAGE_STALL`,
        :data:`GARBAGE_CAP`), until it has processed every garbage record and deleted topic's
        tombstone due ``settle_ms`` from now (pass the grace period: then what the run made
        unreachable until now is due), including a record whose deletion a crash
        interrupted, and has deleted every upload a crash left uncommitted once it could
        (its writer's lease dead for two TTLs: the janitor's orphan scan). Then one
        snapshot: the bucket is listed, then the store is read (at one revision); an object
        that looks unaccounted for (or missing) is looked at again, so that what the live
        brokers did in between is not taken for a fault."""
        began = time.monotonic()
        target = _now_ms() + settle_ms
        due_at_start: int | None = None
        problems: list[str] = []
        progress = _Progress(began)
        while True:
            due = self._due(target)
            if due_at_start is None:
                due_at_start = len(due)
            if not due:
                break
            if progress.stalled(len(due)):
                problems += [
                    f"due by {target} but not processed by the janitor ({progress}): {d}"
                    for d in due[:5]
                ]
                break
            time.sleep(0.5)
        progress = _Progress(time.monotonic())
        while True:
            out, collectable = self._snapshot()
            if not collectable or progress.stalled(len(collectable)):
                break
            time.sleep(1)
        out.problems = problems + out.problems
        out.problems += [
            f"{obj}: an upload of a dead lease that nothing names, not deleted by the janitor "
            f"({progress})"
            for obj in collectable[:5]
        ]
        out.due = due_at_start or 0
        out.waited = time.monotonic() - began
        return out

    def _snapshot(self) -> tuple[Garbage, list[str]]:
        """What :meth:`garbage_audit` checks, as of now; and the uploads nothing names that
        the janitor's orphan scan is due to delete (written under a lease no live broker
        holds, two lease TTLs ago)."""
        ns = self.namespace
        out = Garbage()
        listed = self.bucket_keys(f"{ns}/")
        # One revision: a swap between two reads would show an object both referenced and
        # named by a garbage record.
        segments, registry, records, tombstones, topics = self.etcd_snapshot(
            f"/{ns}/segments/",
            f"/{ns}/ingest/",
            f"/{ns}/gc/",
            f"/{ns}/deleted-topics/",
            f"/{ns}/topics/",
        )
        live = self.live_leases()
        now = _now_ms()
        grace = int(self.options.get("log.segment.delete.delay.ms", DEFAULT_GRACE_MS))

        referenced: dict[str, str] = {}  # object -> the segment entry pointing at it
        for entry, value in segments.items():
            seg = json.loads(value)
            key = str(seg["key"])
            referenced[key] = entry
            if not seg.get("piece"):
                referenced[key.removesuffix(".kfs") + ".index"] = entry
        registry_prefix = f"/{ns}/ingest/"
        registered = {k[len(registry_prefix) :].rsplit("/", 1)[0] for k in registry}
        named: dict[str, str] = {}  # object -> the garbage record naming it
        intents: set[str] = set()
        gc_prefix = f"/{ns}/gc/"
        for record, value in records.items():
            deadline = int(record[len(gc_prefix) :].split("-", 1)[0])
            intent = deadline > now + grace + INTENT_MIN_MS
            out.intent_records += intent
            for obj in json.loads(value)["objects"]:
                named[obj] = record
                if intent:
                    intents.add(obj)
        live_names = {k.rsplit("/", 1)[1] for k in topics}
        doomed_prefixes: list[str] = []
        for tomb, value in tombstones.items():
            topic_id, name = tomb.rsplit("/", 1)[1], str(json.loads(value)["name"])
            doomed_prefixes.append(f"{ns}/topics/{topic_id}/")
            if name not in live_names:
                doomed_prefixes.append(f"{ns}/{name}/")
        out.records = len(records)

        # A committed entry's object: in the bucket, and doomed by no garbage record.
        for obj, entry in sorted(referenced.items()):
            if obj in named:
                out.problems.append(
                    f"{obj}: the committed entry {entry} points at it and the garbage record "
                    f"{named[obj]} deletes it"
                )
            if obj not in listed and not self.in_bucket(obj):
                again = self.etcd_range(entry).get(entry)
                if again is not None and obj in again.decode():
                    out.problems.append(f"{obj}: the committed entry {entry} points at it: missing")
        for obj in sorted(registered - listed):
            if not self.in_bucket(obj) and self._registered(obj):
                out.problems.append(f"{obj}: named in the ingest registry, missing from the bucket")

        # Every object in the bucket accounted for.
        collectable: list[str] = []
        out.objects = len(listed)
        for obj in sorted(listed):
            if obj in referenced:
                out.referenced += 1
            elif obj in registered:
                out.registered += 1
            elif obj in named:
                out.pending += 1
                out.intents += obj in intents
            elif any(obj.startswith(p) for p in doomed_prefixes):
                out.doomed += 1
            elif not self.in_bucket(obj):
                out.objects -= 1  # deleted since the listing (its record was due)
            else:
                name = parse_ingest_key(obj)
                age = now - name.written_ms if name is not None else 0
                if name is None or age >= janitor.ORPHAN_AGE_MS:
                    out.problems.append(f"{obj}: unaccounted for (no entry, registry or record)")
                    continue
                out.uncommitted += 1
                if name.lease not in live and age >= 2 * self.lease_ttl_ms:
                    collectable.append(obj)
        return out, collectable

    def _due(self, target: int) -> list[str]:
        """Garbage records and tombstones due by ``target`` (ms) still in the store."""
        ns = self.namespace
        due = []
        gc_prefix = f"/{ns}/gc/"
        for record in self.etcd_range(gc_prefix):
            if int(record[len(gc_prefix) :].split("-", 1)[0]) <= target:
                due.append(f"garbage record {record}")
        for tomb, value in self.etcd_range(f"/{ns}/deleted-topics/").items():
            if int(json.loads(value)["deadline"]) <= target:
                due.append(f"tombstone {tomb} ({json.loads(value)['name']})")
        return due

    def _registered(self, obj: str) -> bool:
        return bool(self.etcd_range(f"/{self.namespace}/ingest/{obj}/"))


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Progress:
    """Whether a count the janitor brings down stopped going down (for :data:`GARBAGE_STALL`
    seconds) or took too long (:data:`GARBAGE_CAP`)."""

    def __init__(self, began: float) -> None:
        self.began = self.moved = began
        self.best: int | None = None

    def stalled(self, count: int) -> bool:
        now = time.monotonic()
        if self.best is None or count < self.best:
            self.best, self.moved = count, now
        return now - self.moved > GARBAGE_STALL or now - self.began > GARBAGE_CAP

    def __str__(self) -> str:
        now = time.monotonic()
        return f"{now - self.began:.0f}s waited, {now - self.moved:.0f}s without progress"


def _values(kvs: list[dict[str, Any]]) -> dict[str, bytes]:
    """Key -> value of the gateway's key-values (base64 in its JSON)."""
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")) for kv in kvs
    }


@contextlib.contextmanager
def running_cluster(
    root: Path,
    etcd: EtcdCluster,
    s3_endpoint: str,
    s3_direct: str,
    bucket: str,
    first_env: Mapping[int, dict[str, str]] | None = None,
    **options: Any,
) -> Iterator[Cluster]:
    """A started cluster (``first_env``: see :meth:`Cluster.start`); every broker SIGKILLed on
    the way out if the test did not stop it."""
    cluster = Cluster(root, etcd, s3_endpoint, s3_direct, bucket, **options)
    try:
        cluster.start(first_env)
        yield cluster
    finally:
        cluster.kill_all()
