"""Real etcd servers for tests: one member or a cluster on loopback, started from the etcd
binary (``scripts/_env.sh`` installs Debian's etcd-server) with data directories in a
temporary directory (on /dev/shm when there is one, since fsyncs dominate etcd's latency).

``EtcdCluster.start(n)`` starts ``n`` members (``n`` = 3 for leader-kill and quorum tests)
with fast elections (heartbeat 50 ms, election timeout 500 ms) and waits until every member
reports healthy. Members can be stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP) and
resumed, and restarted with their data. :meth:`EtcdCluster.leader` finds the current leader.
Only processes started here are ever signalled, each by its own pid.

:func:`require_etcd` is how tests get a cluster: without the etcd binary, or when it cannot
start, the test fails when ``CI`` is set and is skipped (with the reason) otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HEARTBEAT_MS = 50
ELECTION_MS = 500


def etcd_binary() -> str | None:
    found = shutil.which("etcd")
    if found:
        return found
    return "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None


def unavailable(reason: str) -> None:
    """Fail (CI) or skip (locally) a test that needs etcd."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: etcd is required: {reason}")
    pytest.skip(f"etcd unavailable: {reason}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EtcdError(RuntimeError):
    pass


class EtcdMember:
    def __init__(
        self, name: str, client_port: int, peer_port: int, data_dir: Path, cluster: str
    ) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_path = data_dir.with_suffix(".log")
        self.initial_cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        binary = etcd_binary()
        if binary is None:
            raise EtcdError("no etcd binary")
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=kafscale-test",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-level=warn",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            log.close()
        self.paused = False

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash): no goodbye to peers or clients."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(10)
        self.paused = False

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait (SIGKILL if it does not exit in time)."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its sockets open (a stalled member)."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def request(self, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        """A JSON call to the member's HTTP gateway (``/health``, ``/v3/...``)."""
        url = f"http://{self.endpoint}{path}"
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(url, data=data, timeout=1) as response:
            result: dict[str, object] = json.loads(response.read())
            return result

    def healthy(self) -> bool:
        """The member answers and has a leader (etcd's /health)."""
        if not self.running or self.paused:
            return False
        try:
            return self.request("/health").get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self) -> tuple[str, str]:
        """(this member's id, the leader's id as this member sees it; "0" if none)."""
        status = self.request("/v3/maintenance/status", {})
        header = status["header"]
        assert isinstance(header, dict)
        return str(header["member_id"]), str(status.get("leader", "0"))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class EtcdCluster:
    """``size`` etcd members on loopback, each with its own data directory under ``root``."""

    def __init__(self, size: int, root: Path) -> None:
        names = [f"m{i}" for i in range(size)]
        ports = free_ports(2 * size)
        cluster = ",".join(
            f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
        )
        self.root = root
        self.members = [
            EtcdMember(name, ports[2 * i], ports[2 * i + 1], root / name, cluster)
            for i, name in enumerate(names)
        ]

    @classmethod
    @contextlib.contextmanager
    def start(cls, size: int = 1, timeout: float = 20) -> Iterator[EtcdCluster]:
        """A running, healthy cluster, torn down (and its data deleted) on exit. Raises
        :class:`EtcdError` if it does not come up in ``timeout`` seconds (two tries with
        fresh ports, in case another process took one of ours)."""
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        root = Path(tempfile.mkdtemp(prefix="kafscale-etcd-", dir=base))
        try:
            cluster: EtcdCluster | None = None
            for attempt in range(2):
                cluster = cls(size, root / f"try{attempt}")
                cluster.root.mkdir()
                try:
                    cluster.start_all()
                    cluster.wait_healthy(timeout)
                    break
                except EtcdError:
                    cluster.stop_all()
                    if attempt == 1:
                        raise
            assert cluster is not None
            try:
                yield cluster
            finally:
                cluster.stop_all()
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @property
    def endpoints(self) -> str:
        """``host:port,...`` of every member (what ``--etcd`` takes)."""
        return ",".join(m.endpoint for m in self.members)

    def start_all(self) -> None:
        for member in self.members:
            member.start()

    def stop_all(self) -> None:
        for member in self.members:
            member.resume()
        for member in self.members:
            with contextlib.suppress(Exception):
                member.kill()

    def wait_healthy(self, timeout: float = 20, members: list[EtcdMember] | None = None) -> None:
        """Until every given (default: every running) member is healthy."""
        waiting = [m for m in (members or self.members) if members or m.running]
        deadline = time.monotonic() + timeout
        while True:
            exited = [m for m in waiting if not m.running]
            if exited:
                raise EtcdError(f"etcd {exited[0].name} exited:\n{exited[0].log_tail()}")
            if all(m.healthy() for m in waiting):
                return
            if time.monotonic() > deadline:
                sick = [m for m in waiting if not m.healthy()]
                raise EtcdError(
                    f"etcd {', '.join(m.name for m in sick)} not healthy after {timeout}s:\n"
                    + sick[0].log_tail()
                )
            time.sleep(0.05)

    def leader(self, timeout: float = 10) -> EtcdMember:
        """The member that every running member agrees is the leader."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ids = {}
                seen = set()
                for member in self.members:
                    if member.running and not member.paused:
                        mine, leader = member.status()
                        ids[mine] = member
                        seen.add(leader)
                if len(seen) == 1 and (leader_id := seen.pop()) in ids:
                    return ids[leader_id]
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise EtcdError(f"no agreed etcd leader after {timeout}s")
            time.sleep(0.05)


@contextlib.contextmanager
def require_etcd(size: int = 1) -> Iterator[EtcdCluster]:
    """A running cluster for a test or fixture; fails (CI) or skips without etcd."""
    if etcd_binary() is None:
        unavailable("the etcd binary is not installed (scripts/_env.sh installs etcd-server)")
    try:
        manager = EtcdCluster.start(size)
        cluster = manager.__enter__()
    except EtcdError as e:
        unavailable(f"etcd did not start: {e}")
        raise  # unreachable: unavailable() raises
    try:
        yield cluster
    finally:
        manager.__exit__(None, None, None)
