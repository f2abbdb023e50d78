"""A local KafScale cluster to try by hand: etcd, an S3 server (moto) and N brokers.

    scripts/serve --cluster [--brokers 3] [--base-port 9092] [--dir ./kafscale-cluster]

Brokers listen on 127.0.0.1:9092, 9094, 9096, ... (every other port: the one after each is
its HTTP port for health and metrics) and keep their log in the bucket ``kafscale`` of
the S3 server, their metadata in etcd. Kill one (``kill -9 PID``, printed at start) and watch
its partitions move to the others within the lease TTL; ``kill -TERM`` drains it at once.
Ctrl-C or SIGTERM stops everything (the data stays in --dir until you delete it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BUCKET = "kafscale"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, what: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on port {port} within {timeout:.0f}s")


def broker_port(base: int, i: int) -> int:
    """Broker ``i``'s Kafka port: every other port from ``base`` (9092, 9094, 9096, ...), so
    the one after each (9093, ...: KafScale's HTTP port for health and metrics) stays free."""
    return base + 2 * i


def main() -> int:
    # SIGTERM (a service manager, `kill`) stops everything as Ctrl-C does: no orphans.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=9092)
    parser.add_argument("--dir", type=Path, default=Path("kafscale-cluster"))
    parser.add_argument("--lease-ttl-ms", type=int, default=6000)
    args = parser.parse_args()
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(etcd, os.X_OK):
        sys.exit("etcd is not installed (Debian: apt-get install etcd-server)")
    args.dir.mkdir(parents=True, exist_ok=True)
    logs = args.dir / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        procs.append((name, proc))
        return proc

    try:
        client, peer = free_port(), free_port()
        proc = spawn(
            "etcd",
            [
                etcd,
                "--name=kafscale",
                f"--data-dir={args.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=kafscale=http://127.0.0.1:{peer}",
            ],
        )
        wait_port(client, "etcd", proc)
        s3 = free_port()
        proc = spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3)])
        wait_port(s3, "the S3 server (moto)", proc)
        request = urllib.request.Request(f"http://127.0.0.1:{s3}/{BUCKET}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()
        aws = {
            "AWS_ACCESS_KEY_ID": "kafscale",
            "AWS_SECRET_ACCESS_KEY": "kafscale",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for i in range(args.brokers):
            port = broker_port(args.base_port, i)
            proc = spawn(
                f"broker-{i}",
                [
                    sys.executable,
                    "-m",
                    "kafscale",
                    "serve",
                    f"--listen=127.0.0.1:{port}",
                    f"--http-listen=127.0.0.1:{port + 1}",
                    f"--broker-id={i}",
                    f"--data-dir={args.dir / f'broker-{i}'}",
                    f"--etcd=127.0.0.1:{client}",
                    f"--s3-bucket={BUCKET}",
                    f"--s3-endpoint=http://127.0.0.1:{s3}",
                    "--s3-path-style=true",
                    f"--lease.ttl.ms={args.lease_ttl_ms}",
                ],
                aws,
            )
            wait_port(port, f"broker {i}", proc)
        bootstrap = ",".join(
            f"127.0.0.1:{broker_port(args.base_port, i)}" for i in range(args.brokers)
        )
        print(f"KafScale cluster up: bootstrap {bootstrap}")
        print(f"  etcd 127.0.0.1:{client}, S3 http://127.0.0.1:{s3} (bucket {BUCKET})")
        http = ", ".join(
            f"http://127.0.0.1:{broker_port(args.base_port, i) + 1}" for i in range(args.brokers)
        )
        print(f"  the web console, health, metrics and the cluster API: {http}")
        print("    (/ in a browser; /readyz /metrics /api/cluster)")
        for name, proc in procs:
            print(f"  {name:10} pid {proc.pid}")
        print(f"logs in {logs}; kill -9 a broker's pid to watch its partitions move")
        print(f"  kcat -b {bootstrap} -L        (Ctrl-C here stops everything)")
        while True:
            time.sleep(1)
            for name, proc in procs:
                if proc.poll() is not None and not name.startswith("broker"):
                    sys.exit(f"{name} exited with status {proc.returncode}; see {logs}")
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this short
        # The brokers first (together), then what they need: a broker stopping hands its
        # partitions over through etcd, and would wait out its timeouts if etcd went first.
        brokers = [proc for name, proc in procs if name.startswith("broker")]
        services = [proc for name, proc in reversed(procs) if not name.startswith("broker")]
        for group in (brokers, services):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())
