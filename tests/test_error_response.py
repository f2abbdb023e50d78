"""A handler that fails answers with the API's error response and keeps the connection
(kafscale/broker/error_response.py; issue 19 item 2): every served API and version, over a real
socket, under a failing metadata store, and fuzzed with generated requests against a working
broker (which must never reach the unexpected-failure path)."""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.create_topics_response import CreateTopicsResponse
from generated.registry import APIS, BROKER_APIS
from kafscale.broker import handlers
from kafscale.broker.config import BrokerConfig
from kafscale.broker.error_response import error_response
from kafscale.broker.server import Broker
from kafscale.metadata import MetadataUnavailable
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.framing import encode_request
from kafscale.protocol.message import Struct, in_range
from kafscale.storage.local import LocalObjectStore
from tests.strategies import filled_message, messages
from tests.test_broker_malformed import api_versions_works, read_response

SERVED = [(key, v) for key, (lo, hi) in sorted(BROKER_APIS.items()) for v in range(lo, hi + 1)]


def error_codes(obj: Any, version: int) -> list[int]:
    """Every error code in a decoded response (top level and nested)."""
    found: list[int] = []
    if isinstance(obj, list):
        for item in obj:
            found += error_codes(item, version)
    elif isinstance(obj, Struct):
        for f in obj._fields:
            if not in_range(version, f.versions):
                continue
            value = getattr(obj, f.name)
            if f.name in ("error_code", "partition_error_code"):
                found.append(value)
            elif f.struct is not None:
                found += error_codes(value, version)
    return found


def named_entities(obj: Any, version: int) -> int:
    """How many things a request names (elements of its arrays, at any depth)."""
    n = 0
    if isinstance(obj, Struct):
        for f in obj._fields:
            if in_range(version, f.versions) and f.is_array:
                items = getattr(obj, f.name) or []
                n += len(items)
                n += sum(named_entities(item, version) for item in items)
    return n


@pytest.mark.parametrize(("key", "version"), SERVED, ids=lambda x: str(x))
def test_error_response_of_every_served_api_and_version(key: int, version: int) -> None:
    api = APIS[key]
    request = filled_message(api.request_type(), version)
    response = error_response(request, api.response_type(), version, -1, "boom")
    decoded = api.response_type().decode(response.encode(version), version)
    codes = error_codes(decoded, version)
    assert set(codes) <= {-1, 0}
    if named_entities(request, version) or any(
        f.name == "error_code" and in_range(version, f.versions) for f in decoded._fields
    ):
        assert -1 in codes, f"{api.name} v{version}: no error in {decoded!r}"


def test_entities_mirror_the_request() -> None:
    """Each topic and partition of a ListOffsets request gets its own answer."""
    api = APIS[2]
    request = filled_message(api.request_type(), 7, struct_array_len=3, top_struct_array_len=2)
    response = error_response(request, api.response_type(), 7, -1, "boom")
    assert [t.name for t in response.topics] == [t.name for t in request.topics]
    for asked, answered in zip(request.topics, response.topics, strict=True):
        assert [p.partition_index for p in answered.partitions] == [
            p.partition_index for p in asked.partitions
        ]
        assert {p.error_code for p in answered.partitions} == {-1}


def frame(key: int, version: int, body: Any, correlation: int) -> bytes:
    return b"".join(encode_request(APIS[key], version, correlation, "t", body))


def run(tmp_path: Path, scenario: Any, meta: Any = None) -> None:
    async def main() -> None:
        cfg = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
        broker = Broker(
            cfg,
            LocalObjectStore(tmp_path / "o"),
            meta or SqliteMetadataStore(tmp_path / "m.sqlite3"),
        )
        await broker.start()
        try:
            await scenario(broker)
            await api_versions_works(broker.port)
        finally:
            await broker.stop()

    asyncio.run(main())


def test_a_failing_handler_is_answered_and_the_connection_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(ctx: Any, request: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setitem(handlers.HANDLERS, 19, broken)  # CreateTopics

    async def scenario(broker: Broker) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        body = CreateTopicsRequest(
            topics=[CreatableTopic(name="a", num_partitions=1, replication_factor=1)],
            timeout_ms=1000,
        )
        for correlation in (1, 2):  # the connection answers again after a failure
            writer.write(frame(19, 7, body, correlation))
            data = await asyncio.wait_for(read_response(reader), 5)
            assert struct.unpack_from(">i", data)[0] == correlation
            answer = CreateTopicsResponse.decode(data[5:], 7)  # v5+: flexible header
            assert [(t.name, t.error_code) for t in answer.topics] == [("a", -1)]
            assert answer.topics[0].error_message == "unexpected server error: RuntimeError"
        writer.close()

    with caplog.at_level(logging.ERROR, "kafscale.broker"):
        run(tmp_path, scenario)
    failures = [r for r in caplog.records if "failed; answering -1" in r.getMessage()]
    assert all(r.exc_info for r in failures)  # with the trace
    assert len(failures) == 2  # logged once per failed request, with the request
    assert "CreateTopics v7 (correlation id 1, client 't'" in failures[0].getMessage()


class _DownStore(SqliteMetadataStore):
    """A metadata store whose transactions stop answering once ``down`` is set."""

    down = False

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise MetadataUnavailable("etcd did not answer (test)")
        return await super().txn(*args, **kwargs)


def test_metadata_store_outage_answers_retriable_error(tmp_path: Path) -> None:
    store = _DownStore(tmp_path / "m.sqlite3")

    async def scenario(broker: Broker) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        store.down = True
        body = CreateTopicsRequest(
            topics=[CreatableTopic(name="b", num_partitions=3, replication_factor=1)],
            timeout_ms=1000,
        )
        writer.write(frame(19, 7, body, 5))
        data = await asyncio.wait_for(read_response(reader), 5)
        answer = CreateTopicsResponse.decode(data[5:], 7)
        assert [(t.name, t.error_code) for t in answer.topics] == [("b", 7)]  # retriable
        store.down = False
        writer.write(frame(19, 7, body, 6))
        data = await asyncio.wait_for(read_response(reader), 5)
        answer = CreateTopicsResponse.decode(data[5:], 7)
        assert [(t.name, t.error_code) for t in answer.topics] == [("b", 0)]
        writer.close()

    run(tmp_path, scenario, meta=store)


# Generated requests of every served API against a working broker: each is answered (or, for
# acks=0 produces, not), and none reaches the unexpected-failure path, which would mean a
# handler bug that a client would see as UNKNOWN_SERVER_ERROR. One broker serves every example
# (on its own loop in a thread) so that hypothesis can run and shrink many of them.
@st.composite
def served_requests(draw: st.DrawFn) -> tuple[int, int, Any]:
    key, version = draw(st.sampled_from(SERVED))
    return key, version, draw(messages(APIS[key].request_type(), version))


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "failed; answering" in record.getMessage():
            self.seen.append(f"{record.getMessage()}\n{record.exc_text or ''}")


@pytest.fixture(scope="module")
def threaded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Any]]:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cfg = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
    broker = Broker(
        cfg, LocalObjectStore(tmp_path / "o"), SqliteMetadataStore(tmp_path / "m.sqlite3")
    )
    asyncio.run_coroutine_threadsafe(broker.start(), loop).result(30)
    try:
        yield broker, loop
    finally:
        asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@settings(
    max_examples=300,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # the failure names its request
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(st.lists(served_requests(), min_size=1, max_size=4))
def test_fuzzed_requests_never_hit_an_unexpected_failure(
    threaded_broker: tuple[Broker, Any], batch: list[tuple[int, int, Any]]
) -> None:
    broker, loop = threaded_broker
    failures = _Failures()
    logging.getLogger("kafscale.broker").addHandler(failures)
    try:
        for i, (key, version, body) in enumerate(batch):
            if key == 0:  # Produce: do not wait long for acks
                body.timeout_ms = min(max(body.timeout_ms, 0), 100)
            call = broker.respond(frame(key, version, body, i)[4:])
            chunks = asyncio.run_coroutine_threadsafe(call, loop).result(30)
            if chunks is not None:
                data = b"".join(chunks)
                assert struct.unpack_from(">i", data, 4)[0] == i
    finally:
        logging.getLogger("kafscale.broker").removeHandler(failures)
    assert not failures.seen, f"{failures.seen[0]}\nrequests: {batch!r}"
