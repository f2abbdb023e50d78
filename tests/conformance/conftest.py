"""A real broker process for the conformance tests, and helpers shared by them.

``broker`` starts ``python -m kafscale serve`` on a free loopback port with a fresh data
directory (one broker per test module), waits until the port accepts connections and, on
teardown, stops it with SIGTERM and requires a clean exit: status 0 within 15 s and no
traceback in its log. Every failure shows the broker's stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hung import kill_and_describe

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
FLUSH_INTERVAL_MS = 5
STDERR_TAIL = 60
"""Lines of the broker's stderr shown with a failure (the whole log stays on disk)."""


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python loads its protocol schemas with importlib.resources' deprecated functions.
    config.addinivalue_line(
        "filterwarnings", "ignore:(read|open)_text is deprecated:DeprecationWarning"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BrokerProcess:
    """One ``kafscale serve`` process; ``restart()`` starts a new one on the same data dir."""

    host: str
    port: int
    data_dir: Path
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)
    """stderr of each run, in order; the last is the running broker's."""
    checked: int = 0
    """How much of the last log was already checked for tracebacks (by ``checked_broker``)."""
    args: list[str] = field(default_factory=list)
    """Extra ``kafscale serve`` options (after the defaults below, so they win)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the next start (e.g. ``KAFSCALE_FAILPOINTS``)."""
    http_port: int = field(default_factory=free_port)
    """The HTTP port, the same in every run: with port 0 a restarted broker's HTTP listener
    could be given the Kafka port its killed predecessor just freed (it happened in CI)."""

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def stderr(self, tail: int = STDERR_TAIL) -> str:
        """The last ``tail`` lines of the broker's stderr, every run so far (each headed by its
        log file), with the number of tracebacks in each."""
        parts = []
        for path in self.logs:
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            tracebacks = sum(line.startswith("Traceback") for line in lines)
            head = f"----- {path} ({len(lines)} lines, {tracebacks} tracebacks)"
            if len(lines) > tail:
                head += f", the last {tail}:"
            parts.append("\n".join([head, *lines[-tail:]]))
        return "\n".join(parts)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        log = self.log_dir / f"broker-stderr-{self.starts}.log"
        self.logs.append(log)
        self.checked = 0
        cmd = [
            sys.executable,
            "-m",
            "kafscale",
            "serve",
            "--listen",
            self.bootstrap,
            "--data-dir",
            str(self.data_dir),
            "--flush.interval.ms",
            str(FLUSH_INTERVAL_MS),
            # Group tests kill members: a short minimum session timeout lets them use 1-2 s
            # sessions, and a short initial delay keeps the first rebalance quick (Kafka's
            # own test setups use 0; we keep some delay so members arriving together meet).
            "--group.min.session.timeout.ms",
            "1000",
            "--group.initial.rebalance.delay.ms",
            "200",
            # Many brokers run at once (and pytest processes in parallel): not KafScale's
            # fixed HTTP port 9093, a free one each.
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            *self.args,
        ]
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"broker exited with status {self.proc.returncode} while starting\n"
                    + self.stderr()
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        pytest.fail(
            f"broker did not listen on {self.bootstrap} within {START_TIMEOUT}s\n" + self.stderr()
        )

    def exited_by_itself(self) -> str:
        """Describe an exit the test did not ask for."""
        assert self.proc is not None
        text = f"the broker exited by itself with status {self.proc.returncode}"
        if "shutting down" in (self.logs[-1].read_text(errors="replace") if self.logs else ""):
            text += " after logging 'shutting down': a SIGTERM/SIGINT from outside this test"
        return text + "\n" + self.stderr()

    def stop(self) -> int:
        """SIGTERM; the broker must exit by itself within STOP_TIMEOUT. Returns its status."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(self.exited_by_itself())
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            dump = kill_and_describe(self.proc, self.logs[-1])
            pytest.fail(
                f"broker did not exit within {STOP_TIMEOUT}s of SIGTERM\n"
                + self.stderr()
                + "\n----- what it was doing\n"
                + dump
            )

    def stop_cleanly(self) -> None:
        """Stop with SIGTERM and require status 0 and no traceback in the log."""
        status = self.stop()
        assert status == 0, f"broker exited with status {status} after SIGTERM\n" + self.stderr()
        earlier = b"".join(path.read_bytes() for path in self.logs[:-1])
        unchecked = earlier + self.logs[-1].read_bytes()[self.checked :]
        assert b"Traceback" not in unchecked, "the broker logged a traceback\n" + self.stderr()

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        assert self.proc is not None and self.proc.poll() is None, "broker is not running"
        self.proc.kill()
        self.proc.wait()

    def restart(self, *, kill: bool = False) -> None:
        """Stop (cleanly, or with SIGKILL) and start again on the same port and data dir."""
        if kill:
            self.kill()
        else:
            self.stop_cleanly()
        self.start()


@contextlib.contextmanager
def running_broker(tmp: Path, *args: str) -> Iterator[BrokerProcess]:
    """A started broker using ``tmp/data`` (``args``: extra ``kafscale serve`` options);
    stopped cleanly (and checked) on exit."""
    data_dir = tmp / "data"
    data_dir.mkdir()
    broker = BrokerProcess("127.0.0.1", free_port(), data_dir, tmp, args=list(args))
    broker.start()
    try:
        yield broker
    except BaseException:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
        raise
    broker.stop_cleanly()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def checked_broker(broker: BrokerProcess) -> Iterator[BrokerProcess]:
    """The module's broker, checked after the test: it is still running and logged no
    traceback while the test ran (so a broker error is pinned on the test that caused it)."""
    log = broker.logs[-1]
    start = log.stat().st_size
    yield broker
    data = log.read_bytes()
    during = data[start:].decode(errors="replace")
    broker.checked = len(data)
    assert broker.proc is not None
    assert broker.proc.poll() is None, broker.exited_by_itself()
    assert "Traceback" not in during, (
        "the broker logged a traceback during the test:\n"
        + "\n".join(during.splitlines()[-STDERR_TAIL:])
    )


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of the test's own (for tests that kill or restart it)."""
    with running_broker(tmp_path) as b:
        yield b


def require_kcat() -> str:
    """Path of kcat; skip when absent, fail when ``CI`` is set (CI must install it)."""
    path = shutil.which("kcat")
    if path is None:
        reason = "kcat is not installed (scripts/_env.sh installs it: apt-get install kcat)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    return path
