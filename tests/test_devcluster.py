"""scripts/serve --cluster (scripts/devcluster.py): SIGTERM stops etcd, the S3 server and the
brokers it started (it used to leave them running), and the brokers' Kafka ports leave every
other port free for their HTTP port."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conformance.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def free_ports_from(count: int) -> int:
    """A port from which ``count`` consecutive ports are free (devcluster gives broker i the
    Kafka port base + 2i and the HTTP port after it)."""
    while True:
        base = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def test_sigterm_stops_everything_it_started(tmp_path: Path) -> None:
    if shutil.which("etcd") is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed (scripts/_env.sh installs etcd-server)")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    base = free_ports_from(4)  # each broker's Kafka port and its HTTP port right after it
    directory = str(tmp_path / "cluster")
    proc = subprocess.Popen(
        [
            sys.executable,
            "scripts/devcluster.py",
            "--brokers",
            "2",
            "--base-port",
            str(base),
            "--dir",
            directory,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while not any("broker-1" in line for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        assert f"bootstrap 127.0.0.1:{base},127.0.0.1:{base + 2}" in text
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(pids) == 4  # etcd, moto, 2 brokers
        assert all(alive(pid) for pid in pids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
