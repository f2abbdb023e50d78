"""S3ObjectStore mechanics over HTTP to moto's S3 server: checksums and metadata, large
objects, pagination, conditional creates, and the retry and verification policy under faults
injected by a proxy (tests/s3faults.py). The ObjectStore contract itself runs against this
backend in tests/test_objectstore_contract.py."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import crc32c
import pytest

from kafscale.broker import config as broker_config
from kafscale.broker.main import object_store
from kafscale.storage import LocalObjectStore, ObjectStoreError, ObjectStoreUnavailable
from kafscale.storage import s3 as s3_module
from kafscale.storage.s3 import S3ObjectStore
from tests import s3faults, s3server
from tests.s3faults import FaultProxy

T = TypeVar("T")

FAST: dict[str, Any] = {
    "max_attempts": 4,
    "backoff_base": 0.01,
    "backoff_max": 0.04,
    "connect_timeout": 1.0,
    "read_timeout": 1.0,
}
"""Store settings for fault tests: few attempts, short sleeps and timeouts."""


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> s3server.S3Server:
    server = s3server.shared_or_skip()
    for name, value in s3server.TEST_ENV.items():
        monkeypatch.setenv(name, value)
    return server


@pytest.fixture
def bucket(server: s3server.S3Server) -> str:
    return server.create_bucket()


def run_direct(
    server: s3server.S3Server, bucket: str, fn: Callable[[S3ObjectStore], Awaitable[T]]
) -> T:
    async def main() -> T:
        store = S3ObjectStore(bucket, endpoint_url=server.endpoint_url, path_style=True)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


def run_proxied(
    server: s3server.S3Server,
    bucket: str,
    fn: Callable[[S3ObjectStore, FaultProxy], Awaitable[T]],
    **settings: Any,
) -> T:
    """Run ``fn(store, proxy)``: the store talks to moto through a fault proxy."""

    async def main() -> T:
        async with FaultProxy(server.endpoint_url) as proxy:
            store = S3ObjectStore(
                bucket, endpoint_url=proxy.url, path_style=True, **(FAST | settings)
            )
            try:
                return await fn(store, proxy)
            finally:
                await store.close()

    return asyncio.run(main())


def raw_client(server: s3server.S3Server) -> Any:
    """A plain boto3 client straight to moto: to look at, or write, objects behind the store."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=server.endpoint_url, config=Config(s3={"addressing_style": "path"})
    )


def faults(proxy: FaultProxy) -> list[str | None]:
    return [seen.fault for seen in proxy.seen]


# -- configuration -------------------------------------------------------------------------------


def test_config_options_from_command_line_and_environment(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    broker_config.add_arguments(parser)
    args = parser.parse_args(
        ["--s3-bucket", "logs", "--s3-endpoint", "http://127.0.0.1:9000", "--s3-path-style", "true"]
    )
    config = broker_config.load(args, environ={"KAFSCALE_S3_REGION": "eu-west-1"})
    assert (config.s3_bucket, config.s3_endpoint, config.s3_region, config.s3_path_style) == (
        "logs",
        "http://127.0.0.1:9000",
        "eu-west-1",
        True,
    )
    env = {
        "KAFSCALE_S3_BUCKET": "b2",
        "KAFSCALE_S3_PATH_STYLE": "false",
        "KAFSCALE_DATA_DIR": str(tmp_path),
    }
    config = broker_config.load(None, environ=env)
    assert (config.s3_bucket, config.s3_endpoint, config.s3_path_style) == ("b2", "", False)
    store = object_store(config)
    assert isinstance(store, S3ObjectStore) and store.bucket == "b2"
    # No bucket: the local store under the data directory.
    local = object_store(broker_config.load(None, environ={"KAFSCALE_DATA_DIR": str(tmp_path)}))
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "objects").resolve()
    with pytest.raises(ValueError, match="s3_path_style"):
        broker_config.load(None, environ={"KAFSCALE_S3_PATH_STYLE": "maybe"})


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        S3ObjectStore("")
    with pytest.raises(ValueError):
        S3ObjectStore("b", max_concurrency=0)
    with pytest.raises(ValueError):
        S3ObjectStore("b", max_attempts=0)


def test_backoff_is_exponential_jittered_and_capped() -> None:
    store = S3ObjectStore("b", backoff_base=0.1, backoff_max=1.0)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)]:
        samples = [store.backoff(retry) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples), (retry, min(samples))
        assert len(set(samples)) > 100  # jittered, not a fixed schedule


# -- what is stored ------------------------------------------------------------------------------


def test_put_stores_crc32c_metadata_and_sends_the_checksum(
    server: s3server.S3Server, bucket: str
) -> None:
    data = b"some segment bytes" * 100
    crc = crc32c.crc32c(data)

    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("ns/t/0/a", [data[:7], memoryview(data)[7:]])
        [put] = proxy.seen
        assert put.method == "PUT"
        assert put.headers["x-amz-meta-crc32c"] == f"{crc:08x}"
        assert base64.b64decode(put.headers["x-amz-checksum-crc32c"]) == crc.to_bytes(4, "big")
        assert put.headers["content-length"] == str(len(data))
        # The body is not hashed for the signature (S3 checks it against the signed CRC32C
        # header), and goes out at once: no Expect: 100-continue round trip first.
        assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert "x-amz-content-sha256" in put.headers["authorization"]  # a signed header
        assert "x-amz-checksum-crc32c" in put.headers["authorization"]
        assert "expect" not in put.headers

    run_proxied(server, bucket, body)
    stored = raw_client(server).get_object(Bucket=bucket, Key="ns/t/0/a")
    assert stored["Body"].read() == data
    assert stored["Metadata"] == {"crc32c": f"{crc:08x}"}

    async def no_checksum(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("b", b"x")
        assert "x-amz-checksum-crc32c" not in proxy.seen[0].headers
        assert proxy.seen[0].headers["x-amz-meta-crc32c"] == f"{crc32c.crc32c(b'x'):08x}"
        # Then nothing else lets the server check the body: it is hashed for the signature.
        assert proxy.seen[0].headers["x-amz-content-sha256"] == hashlib.sha256(b"x").hexdigest()

    run_proxied(server, bucket, no_checksum, upload_checksum=False)


def test_payload_signing_set_in_the_aws_configuration_is_left_to_it(
    server: s3server.S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    payload_signing_enabled = true\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    data = b"y" * 5000

    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("k", data)
        assert proxy.seen[0].headers["x-amz-content-sha256"] == hashlib.sha256(data).hexdigest()

    s3_module._sessions.session = None  # this thread's session read the previous file
    try:
        run_proxied(server, bucket, body)
    finally:
        s3_module._sessions.session = None


def test_objects_without_crc_metadata_are_read_with_the_length_check(
    server: s3server.S3Server, bucket: str
) -> None:
    # Written by another tool: no x-amz-meta-crc32c.
    raw_client(server).put_object(Bucket=bucket, Key="foreign", Body=b"0123456789")

    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        assert await store.get("foreign") == b"0123456789"
        proxy.inject(s3faults.truncate(), count=1)
        assert await store.get("foreign") == b"0123456789"
        assert faults(proxy)[-2:] == ["truncate", None]

    run_proxied(server, bucket, body)


def test_large_object(server: s3server.S3Server, bucket: str) -> None:
    data = random.Random(7).randbytes(20 * 1024 * 1024)
    view = memoryview(data)
    mib = 1024 * 1024

    async def body(store: S3ObjectStore) -> None:
        await store.put("big", [view[i : i + 5 * mib] for i in range(0, len(data), 5 * mib)])
        assert await store.get("big") == data
        assert (
            await store.get_range("big", 10 * mib - 3, 10 * mib + 5)
            == data[10 * mib - 3 : 10 * mib + 5]
        )
        assert await store.get_range("big", 19 * mib, 21 * mib) == data[19 * mib :]
        assert await store.create("big", b"no") is False

    run_direct(server, bucket, body)


def test_list_paginates_past_1000_keys(server: s3server.S3Server, bucket: str) -> None:
    keys = [f"ns/t/{i % 3}/segment-{i:020d}.kfs" for i in range(1100)]
    server.seed(bucket, [*keys, "other/x"])

    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        # A throttled second page is retried on its own.
        proxy.inject(s3faults.slow_down(), count=1, path_contains="continuation-token")
        assert await store.list("ns/") == sorted(keys)
        lists = [seen for seen in proxy.seen if "list-type=2" in seen.path]
        assert [seen.fault for seen in lists] == [None, "error(SlowDown)", None]
        assert "continuation-token" not in lists[0].path
        assert await store.list("ns/t/1/") == sorted(k for k in keys if k.startswith("ns/t/1/"))
        assert len(await store.list("")) == 1101

    run_proxied(server, bucket, body)


# -- conditional create --------------------------------------------------------------------------


def test_many_writers_racing_to_create_one_key(server: s3server.S3Server, bucket: str) -> None:
    async def body(store: S3ObjectStore) -> None:
        others = [
            S3ObjectStore(bucket, endpoint_url=server.endpoint_url, path_style=True)
            for _ in range(2)
        ]
        try:
            for round_ in range(3):
                key = f"race/{round_}"
                attempts = [
                    (s, f"{n}:{i}".encode())
                    for n, s in enumerate([store, *others])
                    for i in range(10)
                ]
                results = await asyncio.gather(*(s.create(key, p) for s, p in attempts))
                assert results.count(True) == 1, results
                assert await store.get(key) == attempts[results.index(True)][1]
        finally:
            for other in others:
                await other.close()

    run_direct(server, bucket, body)


def test_conditional_writes_are_probed_once(server: s3server.S3Server, bucket: str) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        assert await store.create("ns/t/a", b"1") is True
        calls = [(s.method, "if-none-match" in s.headers, s.status) for s in proxy.seen]
        # The probe creates a fresh key twice (the second refused: 412, and a HEAD finds the
        # object is not this create's) and deletes it.
        assert calls == [
            ("PUT", True, 200),
            ("PUT", True, 412),
            ("HEAD", False, 200),
            ("DELETE", False, 204),
            ("PUT", True, 200),
        ]
        # Beside the key (where the store may write), in a name no listing shows.
        assert f"/{bucket}/ns/t/.tmp-kafscale-probe-" in proxy.seen[0].path
        proxy.reset_stats()
        assert await store.create("b", b"2") is True
        assert await store.create("b", b"3") is False
        assert [(s.method, s.status) for s in proxy.seen] == [
            ("PUT", 200),
            ("PUT", 412),
            ("HEAD", 200),
        ]

    run_proxied(server, bucket, body)
    listing = raw_client(server).list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listing["Contents"]] == ["b", "ns/t/a"]  # the probe key is gone


def test_server_ignoring_if_none_match_fails_create_loudly(
    server: s3server.S3Server, bucket: str
) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        proxy.inject(s3faults.strip_header("If-None-Match"))
        for _ in range(2):
            with pytest.raises(ObjectStoreError, match="If-None-Match") as error:
                await store.create("k", b"x")
            assert not isinstance(error.value, ObjectStoreUnavailable)
        # Probed once (two PUTs and a DELETE); "k" was never written; the rest still works.
        assert [s.method for s in proxy.seen] == ["PUT", "PUT", "DELETE"]
        assert await store.list("") == []
        await store.put("k", b"plain put")
        assert await store.get("k") == b"plain put"

    run_proxied(server, bucket, body)


def test_create_whose_answer_was_lost_reports_its_own_win(
    server: s3server.S3Server, bucket: str
) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        assert await store.create("warm-up", b"") is True  # the probe, out of the way
        proxy.reset_stats()
        # The PUT happens but its answer is lost: the retry's 412 is our own object.
        proxy.inject(s3faults.drop_response(), count=1, method="PUT")
        assert await store.create("seg", b"mine") is True
        assert [(s.method, s.fault) for s in proxy.seen] == [
            ("PUT", "drop_response"),
            ("PUT", None),
            ("HEAD", None),
        ]
        assert await store.get("seg") == b"mine"
        assert await store.create("seg", b"again") is False

    run_proxied(server, bucket, body)


def test_retried_create_that_lost_to_another_writer_reports_false(
    server: s3server.S3Server, bucket: str
) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        assert await store.create("warm-up", b"") is True
        await store.put("seg", b"theirs")  # another writer got there first
        proxy.reset_stats()
        proxy.inject(s3faults.reset(), count=1, method="PUT")  # our first attempt: no answer
        assert await store.create("seg", b"mine") is False
        assert [s.method for s in proxy.seen] == ["PUT", "PUT", "HEAD"]
        assert await store.get("seg") == b"theirs"

    run_proxied(server, bucket, body)


def test_conditional_request_conflict_is_retried(server: s3server.S3Server, bucket: str) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        assert await store.create("warm-up", b"") is True
        proxy.inject(s3faults.error(409, "ConditionalRequestConflict"), count=1)
        assert await store.create("seg", b"x") is True
        assert await store.get("seg") == b"x"

    run_proxied(server, bucket, body)


# -- faults --------------------------------------------------------------------------------------

DATA = bytes(range(256)) * 64  # 16 KiB

OPS: dict[str, Callable[[S3ObjectStore], Awaitable[object]]] = {
    "put": lambda s: s.put("obj", DATA),
    "get": lambda s: s.get("obj"),
    "get_range": lambda s: s.get_range("obj", 1000, 9000),
    "list": lambda s: s.list("ob"),
    "create": lambda s: s.create("new", DATA),
    "delete": lambda s: s.delete("new"),
}
EXPECTED: dict[str, object] = {
    "put": None,
    "get": DATA,
    "get_range": DATA[1000:9000],
    "list": ["obj"],
    "create": True,
    "delete": None,
}


ALL = list(OPS)
READS = ["get", "get_range", "list"]


@pytest.mark.parametrize(
    ("fault", "ops", "count"),
    [
        pytest.param(s3faults.slow_down(), ALL, 3, id="503-SlowDown"),
        pytest.param(s3faults.internal_error(), ALL, 3, id="500-InternalError"),
        pytest.param(s3faults.error(429, "TooManyRequests"), ["put", "get"], 2, id="429"),
        pytest.param(s3faults.error(502, "BadGateway"), ["get", "list"], 2, id="502"),
        pytest.param(s3faults.reset(), ALL, 3, id="reset"),
        pytest.param(s3faults.drop_response(), ALL, 2, id="drop-response"),
        pytest.param(s3faults.stall(), ALL, 1, id="stall"),
        pytest.param(s3faults.truncate(), READS, 3, id="truncate"),
        pytest.param(
            s3faults.truncate(0.99, fix_length=True), READS, 3, id="truncate-fixed-length"
        ),
        pytest.param(s3faults.corrupt(), ["get"], 3, id="corrupt"),
    ],
)
def test_transient_faults_are_retried(
    server: s3server.S3Server, bucket: str, fault: s3faults.Fault, ops: list[str], count: int
) -> None:
    settings = {"read_timeout": 0.2} if fault.kind == "stall" else {}

    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        await store.create("warm-up", b"")
        await store.delete("warm-up")
        for op in ops:
            proxy.reset_stats()
            proxy.inject(fault, count=count)
            assert await OPS[op](store) == EXPECTED[op], op
            # Every injected fault was met, then one clean attempt answered (a create retried
            # after a lost answer also reads its token back: one HEAD).
            extra = ["HEAD"] if op == "create" and fault.kind == "drop_response" else []
            assert faults(proxy) == [str(fault)] * count + [None] * (1 + len(extra)), op
            assert [s.method for s in proxy.seen][count + 1 :] == extra, op

    run_proxied(server, bucket, body, **settings)


@pytest.mark.parametrize(
    "fault",
    [s3faults.slow_down(), s3faults.internal_error(), s3faults.reset(), s3faults.stall()],
    ids=["503-SlowDown", "500-InternalError", "reset", "stall"],
)
def test_persistent_outage_raises_unavailable_after_bounded_attempts(
    server: s3server.S3Server, bucket: str, fault: s3faults.Fault
) -> None:
    settings = {"max_attempts": 3, "backoff_base": 0.05, "backoff_max": 0.05, "read_timeout": 0.2}

    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        await store.create("warm-up", b"")
        proxy.inject(fault)  # until cleared
        for op in ["put", "get"] if fault.kind == "stall" else ["put", "get", "list", "create"]:
            proxy.reset_stats()
            started = time.monotonic()
            with pytest.raises(ObjectStoreUnavailable) as error:
                await OPS[op](store)
            elapsed = time.monotonic() - started
            assert error.value.attempts == 3
            assert isinstance(error.value, ObjectStoreError)
            assert error.value.__cause__ is not None
            # Ours only: botocore's retries are off. (aiohttp resends once by itself when a
            # connection closes without an answer; see the module docstring of s3.py.)
            sends = 2 if fault.kind == "reset" else 1
            assert len(proxy.seen) == 3 * sends, (op, proxy.seen)
            assert all(s.status in (None, fault.status) for s in proxy.seen)
            assert elapsed >= 2 * 0.025  # two backoff sleeps of at least half the ceiling
            assert elapsed < 3 * 0.2 + 2 * 0.05 + 1.5  # bounded
        proxy.clear()  # the outage ends: the same store works again
        assert await store.get("obj") == DATA

    run_proxied(server, bucket, body, **settings)


def test_unreachable_endpoint_raises_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3server.TEST_ENV.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed

    async def main() -> None:
        store = S3ObjectStore("b", endpoint_url=f"http://127.0.0.1:{port}", path_style=True, **FAST)
        try:
            with pytest.raises(ObjectStoreUnavailable) as error:
                await store.get("k")
            assert error.value.attempts == FAST["max_attempts"]
        finally:
            await store.close()

    asyncio.run(main())


def test_outage_for_a_time_window_is_ridden_out(server: s3server.S3Server, bucket: str) -> None:
    settings = {"max_attempts": 10, "backoff_base": 0.05, "backoff_max": 0.2}

    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        # The window opens at the GET's first request: a test process stalled under load
        # before it sends the GET still meets the outage.
        rule = proxy.inject(s3faults.slow_down(), seconds=0.4, from_first=True)
        assert await store.get("obj") == DATA
        assert rule.until is not None and time.monotonic() >= rule.until
        assert faults(proxy)[-1] is None and "error(SlowDown)" in faults(proxy)

    run_proxied(server, bucket, body, **settings)


@pytest.mark.parametrize(
    ("op", "fault"),
    [
        pytest.param("get", s3faults.corrupt(), id="get-corrupt"),
        pytest.param("get", s3faults.truncate(0.9, fix_length=True), id="get-truncate-fixed"),
        pytest.param(
            "get_range", s3faults.truncate(0.9, fix_length=True), id="range-truncate-fixed"
        ),
        pytest.param("get_range", s3faults.truncate(), id="range-truncate"),
    ],
)
def test_bad_bodies_are_never_returned(
    server: s3server.S3Server, bucket: str, op: str, fault: s3faults.Fault
) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        proxy.reset_stats()
        proxy.inject(fault, method="GET")  # every read damaged
        with pytest.raises(ObjectStoreUnavailable) as error:
            await OPS[op](store)
        assert faults(proxy) == [str(fault)] * FAST["max_attempts"]
        assert error.value.attempts == FAST["max_attempts"]

    run_proxied(server, bucket, body)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        pytest.param(s3faults.error(403, "AccessDenied"), "AccessDenied", id="403"),
        pytest.param(s3faults.error(400, "InvalidArgument"), "InvalidArgument", id="400"),
        pytest.param(s3faults.error(501, "NotImplemented"), "NotImplemented", id="501"),
    ],
)
def test_permanent_errors_are_not_retried(
    server: s3server.S3Server, bucket: str, fault: s3faults.Fault, message: str
) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        proxy.reset_stats()
        proxy.inject(fault)
        for op in ["put", "get", "list"]:
            with pytest.raises(ObjectStoreError, match=message) as error:
                await OPS[op](store)
            assert not isinstance(error.value, ObjectStoreUnavailable)
        assert len(proxy.seen) == 3  # one attempt each

    run_proxied(server, bucket, body)


def test_missing_bucket_is_an_error_not_a_missing_key(server: s3server.S3Server) -> None:
    async def body(store: S3ObjectStore) -> None:
        for op in ["get", "get_range", "put", "list"]:
            with pytest.raises(ObjectStoreError, match="NoSuchBucket") as error:
                await OPS[op](store)
            assert not isinstance(error.value, ObjectStoreUnavailable)

    run_direct(server, "no-such-bucket-here", body)


def test_server_ignoring_range_is_sliced(server: s3server.S3Server, bucket: str) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        proxy.inject(s3faults.strip_header("Range"))
        assert await store.get_range("obj", 1000, 9000) == DATA[1000:9000]
        assert await store.get_range("obj", 16000, 20000) == DATA[16000:]
        assert await store.get_range("obj", 5, 10) == DATA[5:10]
        # The server answered each with the whole object, not a 206.
        assert [(s.fault, s.status) for s in proxy.seen[-3:]] == [("strip_header(Range)", 200)] * 3

    run_proxied(server, bucket, body)


def test_concurrency_is_bounded(server: s3server.S3Server, bucket: str) -> None:
    async def body(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        proxy.inject(s3faults.delay(0.1))  # a slow server: requests pile up
        proxy.reset_stats()
        results = await asyncio.gather(*(store.get("obj") for _ in range(16)))
        assert results == [DATA] * 16
        assert proxy.max_in_flight == 4

    run_proxied(server, bucket, body, max_concurrency=4)

    async def unbounded(store: S3ObjectStore, proxy: FaultProxy) -> None:
        await store.put("obj", DATA)
        proxy.inject(s3faults.delay(0.1))
        proxy.reset_stats()
        await asyncio.gather(*(store.get("obj") for _ in range(16)))
        assert proxy.max_in_flight > 4  # so the bound above is what held it to 4

    run_proxied(server, bucket, unbounded, max_concurrency=16)


def test_close_releases_the_client_and_a_later_call_reopens(
    server: s3server.S3Server, bucket: str
) -> None:
    async def body(store: S3ObjectStore) -> None:
        await store.close()  # before any use: nothing to release
        await store.put("k", b"v")
        client = store._s3
        assert client is not None
        await store.close()
        assert store._s3 is None
        await store.close()
        assert await store.get("k") == b"v"
        assert store._s3 is not None and store._s3 is not client

    run_direct(server, bucket, body)


def test_open_makes_the_client_before_the_first_request(
    server: s3server.S3Server, bucket: str
) -> None:
    async def body(store: S3ObjectStore) -> None:
        assert store._s3 is None
        await store.open()
        client = store._s3
        assert client is not None
        await store.open()  # once is enough
        await store.put("k", b"v")
        assert store._s3 is client
        assert await store.get("k") == b"v"

    run_direct(server, bucket, body)


def test_fault_proxy_runs_in_a_thread_for_synchronous_callers(
    server: s3server.S3Server, bucket: str
) -> None:
    proxy = FaultProxy(server.endpoint_url)
    proxy.start_in_thread()
    port = proxy.port
    try:
        proxy.inject(s3faults.slow_down(), count=1)

        async def main() -> bytes:
            store = S3ObjectStore(bucket, endpoint_url=proxy.url, path_style=True, **FAST)
            try:
                await store.put("k", b"through the thread")
                return await store.get("k")
            finally:
                await store.close()

        assert asyncio.run(main()) == b"through the thread"
        assert faults(proxy) == ["error(SlowDown)", None, None]
    finally:
        proxy.stop_thread()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_put_body_is_not_copied_on_uvloop(
    server: s3server.S3Server, bucket: str, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp joins the headers and the body of a request into one new ``bytes`` (a copy of
    the body) unless told its transport's writelines is safe, which uvloop's is: a PUT on
    uvloop allocates far less than its body (before Python 3.12: see _write_bodies_in_place),
    and on asyncio's loop aiohttp's guard stays."""
    import tracemalloc

    import aiohttp.http_writer
    import uvloop

    monkeypatch.setattr(aiohttp.http_writer, "SKIP_WRITELINES", True)
    body = random.randbytes(8 * 1024 * 1024)

    async def main() -> tuple[int, bytes]:
        store = S3ObjectStore(bucket, endpoint_url=server.endpoint_url, path_style=True)
        try:
            await store.put("warm", b"x")  # the client, its pool and a connection made
            tracemalloc.start()
            try:
                await store.put("big", body)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            return peak, await store.get("big")
        finally:
            await store.close()

    peak, back = uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())
    assert back == body
    if loop == "uvloop" and sys.version_info < (3, 12):
        assert aiohttp.http_writer.SKIP_WRITELINES is False
        assert peak < len(body) // 2, f"a PUT of {len(body)} bytes allocated {peak}"
    elif loop == "asyncio":
        assert aiohttp.http_writer.SKIP_WRITELINES is True
        assert peak >= len(body), "the copy this test detects was not seen: the test is blind"
