"""TLS benchmark (issue 14): what SASL_SSL costs against PLAINTEXT on the same broker.

``scripts/bench --mode tls`` starts one ``kafscale serve`` (the embedded default: local object
store and sqlite) with two listeners, PLAINTEXT and SASL_SSL (SCRAM-SHA-512, a certificate
from a CA made here), its user added with ``kafscale user add`` first, and measures in the
same run, alternating the two listeners round by round so that both see the same machine:

1. produce throughput (confluent-kafka, acks=all, ``--records`` of ``--size`` bytes, linger
   5 ms) and consume throughput (assign from the start to the end), in MB/s;
2. connection set-up: from TCP connect to the first Metadata answer (PLAINTEXT: ApiVersions
   and Metadata; SASL_SSL: the TLS handshake, ApiVersions, SaslHandshake, the two SCRAM
   rounds, Metadata), median and p90 of 100 connections (20 with ``--quick``), by raw sockets;
3. the broker's CPU seconds per GB produced and consumed on each listener (from /proc: what
   TLS costs the broker itself, whatever else the machine runs).

Target: SASL_SSL at least 70 % of PLAINTEXT's produce and consume MB/s. One JSON line
(``--out`` appends it) and a table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_broker import Proc, free_port, say, wait_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generated.api_versions_request import ApiVersionsRequest  # noqa: E402
from generated.metadata_request import MetadataRequest  # noqa: E402
from generated.registry import api  # noqa: E402
from generated.sasl_authenticate_request import SaslAuthenticateRequest  # noqa: E402
from generated.sasl_handshake_request import SaslHandshakeRequest  # noqa: E402
from kafscale.protocol.framing import encode_request  # noqa: E402

MB = 1024 * 1024
USER, PASSWORD = "bench", "bench-secret"
TARGET = 0.70


def _start(workdir: Path) -> tuple[Proc, dict[str, Any]]:
    from tests.security_ca import TestCA

    ca = TestCA(workdir / "ca")
    server = ca.issue("server", "localhost", server=True)
    data = workdir / "data"
    subprocess.run(
        [
            *(sys.executable, "-m", "kafscale", "user", "add", USER, "--password", PASSWORD),
            *("--mechanism", "SCRAM-SHA-512", "--data-dir", str(data)),
        ],
        check=True,
        capture_output=True,
    )
    plain, secure = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "kafscale",
        "serve",
        f"--data-dir={data}",
        f"--listeners=PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}",
        f"--ssl.keystore.location={server.both}",
        "--sasl.enabled.mechanisms=SCRAM-SHA-512",
        "--http-listen=",
    ]
    proc = Proc("kafscale", cmd, dict(os.environ), workdir / "broker.log")
    wait_port(plain, proc)
    wait_port(secure, proc)
    confs = {
        "PLAINTEXT": {"bootstrap.servers": f"127.0.0.1:{plain}"},
        "SASL_SSL": {
            "bootstrap.servers": f"127.0.0.1:{secure}",
            "security.protocol": "sasl_ssl",
            "ssl.ca.location": str(ca.ca_file),
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": USER,
            "sasl.password": PASSWORD,
        },
    }
    return proc, {"confs": confs, "ports": {"PLAINTEXT": plain, "SASL_SSL": secure}, "ca": ca}


def _produce(conf: dict[str, Any], topic: str, records: int, size: int) -> float:
    from confluent_kafka import Producer

    producer = Producer(
        {
            **conf,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "none",
            "queue.buffering.max.messages": records + 1,
            "queue.buffering.max.kbytes": 2_097_151,
        }
    )
    producer.produce(topic, b"warm-up")
    producer.flush(30)
    value = os.urandom(size)
    failed = []
    start = time.perf_counter()
    for _ in range(records):
        producer.produce(topic, value, on_delivery=lambda e, _m: e and failed.append(e))
        producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{len(failed)} records failed: {failed[0]}")
    return records * size / elapsed / MB


def _consume(conf: dict[str, Any], topic: str, records: int, size: int) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({**conf, "group.id": "bench-tls", "enable.auto.commit": False})
    consumer.list_topics(topic, timeout=30)
    start = time.perf_counter()
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = 0
    deadline = start + 120
    while got < records + 1 and time.perf_counter() < deadline:
        got += sum(m.error() is None for m in consumer.consume(10_000, timeout=0.2))
    elapsed = time.perf_counter() - start
    consumer.close()
    if got < records + 1:
        raise RuntimeError(f"consumed {got} of {records + 1}")
    return records * size / elapsed / MB


def _exchange(sock: Any, name: str, version: int, body: Any, correlation: int) -> bytes:
    sock.sendall(b"".join(encode_request(api(name), version, correlation, "bench", body)))
    size = struct.unpack(">i", _read(sock, 4))[0]
    return _read(sock, size)


def _read(sock: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def _auth_bytes(frame: bytes) -> bytes:
    """The auth_bytes of a SaslAuthenticate v2 answer (flexible: header tag byte first)."""
    response = api("SaslAuthenticate").response_type().decode(frame[5:], 2)
    assert response.error_code == 0, response
    return bytes(response.auth_bytes)


def _connect(port: int, context: ssl.SSLContext | None) -> float:
    """Seconds from connect to the first Metadata answer (with TLS and SCRAM: everything a
    client does first)."""
    start = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock: Any = context.wrap_socket(raw, server_hostname="localhost") if context else raw
    try:
        _exchange(sock, "ApiVersions", 3, ApiVersionsRequest(), 1)
        if context is not None:
            _exchange(sock, "SaslHandshake", 1, SaslHandshakeRequest(mechanism="SCRAM-SHA-512"), 2)
            nonce = base64.b64encode(os.urandom(18)).decode()
            bare = f"n={USER},r={nonce}"
            first = _auth_bytes(
                _exchange(
                    sock,
                    "SaslAuthenticate",
                    2,
                    SaslAuthenticateRequest(auth_bytes=f"n,,{bare}".encode()),
                    3,
                )
            ).decode()
            attrs = dict(p.split("=", 1) for p in first.split(","))
            salted = hashlib.pbkdf2_hmac(
                "sha512", PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
            )
            without = f"c=biws,r={attrs['r']}"
            auth = f"{bare},{first},{without}".encode()
            key = hmac.new(salted, b"Client Key", "sha512").digest()
            sig = hmac.new(hashlib.sha512(key).digest(), auth, "sha512").digest()
            proof = base64.b64encode(bytes(a ^ b for a, b in zip(key, sig, strict=True))).decode()
            final = SaslAuthenticateRequest(auth_bytes=f"{without},p={proof}".encode())
            _auth_bytes(_exchange(sock, "SaslAuthenticate", 2, final, 4))
        _exchange(sock, "Metadata", 12, MetadataRequest(topics=None), 5)
        return time.perf_counter() - start
    finally:
        sock.close()


def run(
    workdir: Path, records: int, size: int, rounds: int, connections: int, out: str | None
) -> dict[str, Any]:
    proc, env = _start(workdir)
    results: dict[str, dict[str, list[float]]] = {
        name: {
            "produce_mb_s": [],
            "consume_mb_s": [],
            "connect_ms": [],
            "produce_cpu_s_per_gb": [],
            "consume_cpu_s_per_gb": [],
        }
        for name in ("PLAINTEXT", "SASL_SSL")
    }
    context = ssl.create_default_context(cafile=str(env["ca"].ca_file))
    try:
        for r in range(rounds):
            for name in ("PLAINTEXT", "SASL_SSL"):
                topic = f"bench-tls-{name.lower()}-{r}"
                conf = env["confs"][name]
                gb = records * size / 1024**3
                cpu = proc.cpu_seconds()
                produced = _produce(conf, topic, records, size)
                mid = proc.cpu_seconds()
                consumed = _consume(conf, topic, records, size)
                results[name]["produce_cpu_s_per_gb"].append((mid - cpu) / gb)
                results[name]["consume_cpu_s_per_gb"].append((proc.cpu_seconds() - mid) / gb)
                results[name]["produce_mb_s"].append(produced)
                results[name]["consume_mb_s"].append(consumed)
                say(f"round {r + 1} {name}: produce {produced:.1f}, consume {consumed:.1f} MB/s")
        for name in ("PLAINTEXT", "SASL_SSL"):
            port = env["ports"][name]
            tls = context if name == "SASL_SSL" else None
            _connect(port, tls)  # warm
            results[name]["connect_ms"] = [_connect(port, tls) * 1000 for _ in range(connections)]
    finally:
        proc.stop()
    summary: dict[str, Any] = {"records": records, "size": size, "rounds": rounds}
    for name, values in results.items():
        connect = sorted(values["connect_ms"])
        summary[name] = {
            "produce_mb_s": statistics.median(values["produce_mb_s"]),
            "consume_mb_s": statistics.median(values["consume_mb_s"]),
            "broker_produce_cpu_s_per_gb": statistics.median(values["produce_cpu_s_per_gb"]),
            "broker_consume_cpu_s_per_gb": statistics.median(values["consume_cpu_s_per_gb"]),
            "connect_ms_median": statistics.median(connect),
            "connect_ms_p90": connect[int(len(connect) * 0.9) - 1],
        }
    plain, secure = summary["PLAINTEXT"], summary["SASL_SSL"]
    summary["produce_ratio"] = secure["produce_mb_s"] / plain["produce_mb_s"]
    summary["consume_ratio"] = secure["consume_mb_s"] / plain["consume_mb_s"]
    summary["connect_added_ms"] = secure["connect_ms_median"] - plain["connect_ms_median"]
    summary["met"] = summary["produce_ratio"] >= TARGET and summary["consume_ratio"] >= TARGET
    line = json.dumps(summary)
    print(line)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    say(
        f"{'':<10} {'produce MB/s':>13} {'consume MB/s':>13} {'connect ms (p50/p90)':>22}\n"
        + "\n".join(
            f"{n:<10} {summary[n]['produce_mb_s']:>13.1f} {summary[n]['consume_mb_s']:>13.1f} "
            f"{summary[n]['connect_ms_median']:>10.2f} / {summary[n]['connect_ms_p90']:.2f}"
            for n in ("PLAINTEXT", "SASL_SSL")
        )
        + "\nbroker CPU s per GB (produce / consume): "
        + ", ".join(
            f"{n} {summary[n]['broker_produce_cpu_s_per_gb']:.1f} / "
            f"{summary[n]['broker_consume_cpu_s_per_gb']:.1f}"
            for n in ("PLAINTEXT", "SASL_SSL")
        )
        + f"\nSASL_SSL / PLAINTEXT: produce {summary['produce_ratio']:.0%}, consume "
        f"{summary['consume_ratio']:.0%} "
        f"(target {TARGET:.0%}: {'met' if summary['met'] else 'NOT met'}); "
        f"connection set-up +{summary['connect_added_ms']:.2f} ms"
    )
    return summary
