"""A real S3-API server over HTTP for tests: moto's server in a subprocess.

``start()`` runs ``python -m tests.s3server`` (moto's WSGI app on a werkzeug server bound to
port 0 on 127.0.0.1, state in memory, gone when the process exits), waits until it answers
and returns an :class:`S3Server` (``endpoint_url``, ``create_bucket``, ``stop``).
``shared_or_skip()`` is the fixture helper: one server per test process; it skips the caller
when moto cannot start, or fails it when ``CI`` is set.

One deliberate difference from stock moto: its conditional PUT (``If-None-Match: *``) checks
for the key and writes it in two steps, and werkzeug serves requests in threads, so two
concurrent creates could both succeed where S3 lets exactly one. The server here runs writes
(PUT, POST, DELETE) one at a time, which gives S3's atomicity; reads stay concurrent. The
client under test is ours, not the server.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

TEST_ENV = {
    # Dummy credentials for the standard chain (moto checks none), and no reading of the
    # developer's own AWS configuration or instance metadata.
    "AWS_ACCESS_KEY_ID": "kafscale-test",
    "AWS_SECRET_ACCESS_KEY": "kafscale-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Environment for S3 clients in tests (set it with monkeypatch)."""


SEED_PATH = "/_kafscale-test-seed/"
"""Not S3: ``POST {SEED_PATH}{bucket}`` with one key a line creates empty objects in bulk."""


class S3Server:
    """A running moto server (a child process)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.host = "127.0.0.1"
        self.port = port
        self.log = log

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _request(self, method: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:20]}"
        status, body = self._request("PUT", f"/{name}")
        if status != 200:
            raise RuntimeError(f"creating bucket {name}: HTTP {status} {body[:200]!r}")
        return name

    def seed(self, bucket: str, keys: Iterable[str]) -> None:
        """Create empty objects under ``keys`` in one request, inside the server (not an S3
        call: a test's setup in milliseconds instead of one PUT per key)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("POST", f"{SEED_PATH}{bucket}", body="\n".join(keys).encode())
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"seeding {bucket}: HTTP {response.status}")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.unlink(missing_ok=True)


def start(timeout: float = 30.0) -> S3Server:
    """Start a moto server and wait until it answers; RuntimeError (with its log) if not."""
    fd, name = tempfile.mkstemp(prefix="kafscale-moto-", suffix=".log")
    os.close(fd)
    log = Path(name)
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.s3server", "--port", "0"],
            cwd=REPO,  # so that ``-m tests.s3server`` imports this file
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or process.poll() is not None:
                raise RuntimeError("moto server did not start")
            ready, _, _ = select.select([process.stdout], [], [], left)
            if ready:
                byte = os.read(process.stdout.fileno(), 1)
                if not byte:
                    raise RuntimeError("moto server exited before listening")
                line += byte
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"moto server said {line!r}")
        server = S3Server(process, int(line.split()[1]), log)
        while True:  # bound before the line was printed; check it also serves
            try:
                status, _ = server._request("GET", "/")
                if status == 200:
                    return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("moto server does not answer")
            time.sleep(0.05)
    except BaseException as e:
        process.kill()
        process.wait()
        text = log.read_text(errors="replace")[-2000:]
        log.unlink(missing_ok=True)
        if isinstance(e, RuntimeError):
            raise RuntimeError(f"{e}; its log:\n{text}") from None
        raise


_shared: S3Server | None = None
_shared_lock = threading.Lock()


def shared_or_skip() -> S3Server:
    """One server for the whole test process (started on first use, stopped at exit), for
    fixtures: skips the caller when moto cannot start, fails it instead when ``CI`` is set.
    Tests isolate themselves with fresh buckets."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.process.poll() is not None:
            try:
                _shared = start()
            except (ImportError, RuntimeError, OSError) as e:
                reason = f"cannot start the moto S3 server: {e}"
                if os.environ.get("CI"):
                    pytest.fail(f"CI: {reason}")
                pytest.skip(reason)
            atexit.register(_shared.stop)
        return _shared


# -- the server process ------------------------------------------------------------------------


class _SerialWrites:
    """WSGI middleware: one write request at a time (see the module docstring)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(SEED_PATH) and environ.get("REQUEST_METHOD") == "POST":
            return self.seed(path.removeprefix(SEED_PATH), environ, start_response)
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with self.lock:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)

    def seed(self, bucket: str, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        length = int(environ.get("CONTENT_LENGTH") or 0)
        keys = environ["wsgi.input"].read(length).decode().split("\n")
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        with self.lock:
            for key in keys:
                if key:
                    backend.put_object(bucket, key, b"")
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]


def _serve(host: str, port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app = _SerialWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="moto S3 server for the tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    _serve(args.host, args.port)
