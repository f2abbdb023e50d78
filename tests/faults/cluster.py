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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kafscale.broker.failpoints import EXIT_STATUS
from tests.etcdserver import EtcdCluster
from tests.s3server import TEST_ENV

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
"""A restarted broker waits for its previous lease to expire before it registers again."""
STOP_TIMEOUT = 20.0
LOG_TAIL = 40


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
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"broker {self.id} did not exit within {timeout}s\n" + self.tail())
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
    objects: int = 0
    orphans: int = 0
    """Objects in the bucket that no committed segment entry references (never served)."""
    problems: list[str] = field(default_factory=list)


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
    ) -> None:
        self.root = root
        self.etcd = etcd
        self.bucket = bucket
        self.s3_direct = s3_direct
        """The S3 server itself (not through a fault proxy): for the audit's listing."""
        self.namespace = namespace
        self.brokers: list[Broker] = []
        for i, port in enumerate(free_ports(size)):
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
            ]
            self.brokers.append(Broker(i, port, args, root))

    @property
    def bootstrap(self) -> str:
        return ",".join(b.address for b in self.brokers)

    def start(self) -> None:
        for b in self.brokers:
            b.start(wait=False)
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
                for i, line in enumerate(lines):
                    if line.startswith("Traceback"):
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
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        body = {
            "key": base64.b64encode(key).decode(),
            "range_end": base64.b64encode(end).decode(),
        }
        last: Exception | None = None
        for member in self.etcd.members:
            if not member.running or member.paused:
                continue
            try:
                answer = member.request("/v3/kv/range", body)
            except (OSError, ValueError) as e:
                last = e
                continue
            kvs: list[dict[str, Any]] = answer.get("kvs", [])  # type: ignore[assignment]
            return {
                base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in kvs
            }
        raise RuntimeError(f"no etcd member answered: {last}")

    def bucket_keys(self, prefix: str) -> set[str]:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_direct,
            region_name=TEST_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        keys: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.update(obj["Key"] for obj in page.get("Contents", []))
        return keys

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
            if raw is None:
                audit.problems.append(f"partition {p}: no committed state")
                continue
            state = json.loads(raw)
            log_start, hw = int(state["log_start"]), int(state["hw"])
            epochs = [(int(e), int(s)) for e, s in state.get("epochs") or [(0, 0)]]
            prefix = f"/{ns}/segments/{topic}/{p:05d}/"
            segments = sorted(
                (int(k[len(prefix) :]), json.loads(v)) for k, v in self.etcd_range(prefix).items()
            )
            legacy = f"{ns}/{topic}/{p}/"
            objects = self.bucket_keys(legacy) | self.bucket_keys(f"{ns}/topics/{topic_id}/{p}/")
            audit.segments += len(segments)
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


@contextlib.contextmanager
def running_cluster(
    root: Path,
    etcd: EtcdCluster,
    s3_endpoint: str,
    s3_direct: str,
    bucket: str,
    **options: Any,
) -> Iterator[Cluster]:
    """A started cluster; every broker SIGKILLed on the way out if the test did not stop it."""
    cluster = Cluster(root, etcd, s3_endpoint, s3_direct, bucket, **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill_all()
