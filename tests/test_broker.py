"""The broker core driven with in-memory frames (no sockets): produce, fetch, offsets, the
ApiVersions fallback, bad batches, and acked-means-durable across a restart and a failed flush."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from generated.api_versions_request import ApiVersionsRequest
from generated.api_versions_response import ApiVersionsResponse
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.metadata_response import MetadataResponse
from generated.registry import ADVERTISED_APIS, BROKER_APIS
from kafscale.protocol import ProtocolError
from kafscale.protocol.records import NewRecord, build_batch
from kafscale.protocol.wire import Buffer
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client, run, values


def test_api_versions_advertises_the_served_table_and_falls_back(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        resp: ApiVersionsResponse = await c.call(18, 3, ApiVersionsRequest())
        assert resp.error_code == 0
        listed = {a.api_key: (a.min_version, a.max_version) for a in resp.api_keys}
        assert listed == ADVERTISED_APIS
        assert listed[0] == (0, 11) and BROKER_APIS[0] == (3, 11)  # KAFKA-18659
        # A future ApiVersions v99: answered as v0 with UNSUPPORTED_VERSION (KIP-511).
        frame = struct.pack(">hhih", 18, 99, 7, 1) + b"x" + b"\x00" + b"future"
        data = b"".join(await c.broker.respond(frame) or [])
        assert struct.unpack_from(">i", data, 4)[0] == 7
        fallback = ApiVersionsResponse.decode(data[8:], 0)
        assert fallback.error_code == 35
        assert {a.api_key for a in fallback.api_keys} == set(BROKER_APIS)

    run(tmp_path, scenario)


def test_unserved_api_closes_the_connection(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        leader_and_isr = struct.pack(">hhih", 4, 5, 1, 1) + b"x"  # a controller's API
        with pytest.raises(ProtocolError, match="not served"):
            await c.broker.respond(leader_and_isr + b"\x00" * 20)
        old_produce = struct.pack(">hhih", 0, 2, 1, 1) + b"x"  # Produce v2: magic 0/1 era
        with pytest.raises(ProtocolError, match="not served"):
            await c.broker.respond(old_produce + b"\x00" * 20)

    run(tmp_path, scenario)


def test_produce_fetch_round_trip_with_consecutive_offsets(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("orders", partitions=2)
        first = await c.produce("orders", build_batch([b"a", b"b", b"c"]))
        second = await c.produce("orders", build_batch([NewRecord(b"d", key=b"k")]))
        other = await c.produce("orders", build_batch([b"x"]), partition=1)
        assert (first.error_code, first.base_offset) == (0, 0)
        assert (second.error_code, second.base_offset) == (0, 3)
        assert (other.error_code, other.base_offset) == (0, 0)
        got = await c.fetch("orders", 0)
        assert got.error_code == 0 and got.high_watermark == 4
        assert values(got.records) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]
        middle = await c.fetch("orders", 3)
        assert values(middle.records) == [(3, b"d")]
        end = await c.fetch("orders", 4)
        assert (end.error_code, bytes(end.records)) == (0, b"")
        beyond = await c.fetch("orders", 5)
        assert beyond.error_code == 1  # OFFSET_OUT_OF_RANGE

    run(tmp_path, scenario)


def test_long_poll_wakes_on_commit(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        waiting = asyncio.create_task(c.fetch("t", 0, wait_ms=5000))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await c.produce("t", build_batch([b"late"]))
        got = await asyncio.wait_for(waiting, 2)
        assert values(got.records) == [(0, b"late")]
        empty = await c.fetch("t", 1, wait_ms=50)  # nothing comes: answered at the deadline
        assert bytes(empty.records) == b""

    run(tmp_path, scenario)


def test_bad_batches_get_kafka_error_codes(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        good = build_batch([b"v"])
        corrupt = bytearray(good)
        corrupt[-1] ^= 0xFF
        assert (await c.produce("t", bytes(corrupt))).error_code == 2  # CORRUPT_MESSAGE
        magic1 = bytearray(good)
        magic1[16] = 1
        assert (await c.produce("t", bytes(magic1))).error_code == 87  # INVALID_RECORD
        big = build_batch([b"x" * 2000])
        assert (await c.produce("t", big)).error_code == 10  # MESSAGE_TOO_LARGE (1000 bytes)
        assert (await c.produce("t", good, acks=2)).error_code == 21  # INVALID_REQUIRED_ACKS
        assert (await c.produce("nope", good)).error_code == 3  # UNKNOWN_TOPIC_OR_PARTITION
        # Nothing above was stored: the next good batch gets offset 0.
        assert (await c.produce("t", good)).base_offset == 0

    run(tmp_path, scenario, message_max_bytes=1000)


def test_acks_zero_gets_no_response_but_is_stored(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        assert await c.produce("t", build_batch([b"quiet"]), acks=0) is None
        got = await c.fetch("t", 0)
        assert values(got.records) == [(0, b"quiet")]

    run(tmp_path, scenario)


def test_list_offsets(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await c.produce("t", build_batch([b"a", b"b"], timestamp=1000))
        await c.produce("t", build_batch([b"c"], timestamp=5000))
        assert (await c.list_offset("t", -2)).offset == 0
        assert (await c.list_offset("t", -1)).offset == 3
        by_time = await c.list_offset("t", 3000)  # the record's own timestamp comes back
        assert (by_time.offset, by_time.timestamp) == (2, 5000)
        exact = await c.list_offset("t", 1000)
        assert (exact.offset, exact.timestamp) == (0, 1000)
        assert (await c.list_offset("t", 9000)).offset == -1
        newest = await c.list_offset("t", -3)
        assert (newest.timestamp, newest.offset) == (5000, 2)
        old = await c.list_offset("t", -1, version=1)  # no LeaderEpoch before v4
        assert old.offset == 3

    run(tmp_path, scenario)


def test_metadata_auto_create_follows_the_request(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        no = MetadataRequest(
            topics=[MetadataRequestTopic(name="a")], allow_auto_topic_creation=False
        )
        resp: MetadataResponse = await c.call(3, 12, no)
        assert resp.topics[0].error_code == 3
        yes = MetadataRequest(
            topics=[MetadataRequestTopic(name="a")], allow_auto_topic_creation=True
        )
        resp = await c.call(3, 12, yes)
        topic = resp.topics[0]
        assert topic.error_code == 0 and topic.topic_id.int != 0
        assert [p.leader_id for p in topic.partitions] == [0]
        everything: MetadataResponse = await c.call(3, 1, MetadataRequest(topics=None))
        assert [t.name for t in everything.topics] == ["a"]
        assert everything.brokers[0].port == c.broker.config.advertised[1]

    run(tmp_path, scenario)


def test_acked_data_survives_a_restart(tmp_path: Path) -> None:
    async def write(c: Client) -> None:
        await c.create("t")
        for i in range(5):
            assert (await c.produce("t", build_batch([b"%d" % i]))).base_offset == i

    async def read(c: Client) -> None:
        got = await c.fetch("t", 0)
        assert values(got.records) == [(i, b"%d" % i) for i in range(5)]
        assert (await c.produce("t", build_batch([b"next"]))).base_offset == 5

    run(tmp_path, write)
    run(tmp_path, read)  # a new broker on the same data dir, with a cold segment cache


class FailingStore(LocalObjectStore):
    """Fails the first ``failures`` puts (a flaky S3), then works."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("injected upload failure")
        await super().put(key, data)


def test_failed_upload_fails_the_request_and_leaves_no_gap(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        failed = await c.produce("t", build_batch([b"lost"]))
        assert failed.error_code == 56  # KAFKA_STORAGE_ERROR: retriable, nothing committed
        ok = await c.produce("t", build_batch([b"kept"]))
        assert (ok.error_code, ok.base_offset) == (0, 0)
        got = await c.fetch("t", 0)
        assert values(got.records) == [(0, b"kept")]

    run(tmp_path, scenario, objects=FailingStore(tmp_path / "objects", failures=1))


def test_one_flush_splits_into_pieces_of_segment_bytes_in_one_object(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        batches = [build_batch([b"%03d" % i + b"." * 100]) for i in range(6)]
        results = await asyncio.gather(*(c.produce("t", b) for b in batches))
        assert sorted(r.base_offset for r in results) == list(range(6))
        plog = await c.broker.logs.get("t", 0)
        assert len(plog.segments) >= 3  # ~180-byte batches, 400-byte segments
        assert all(s.size <= 400 + 48 for s in plog.segments)
        assert all(s.piece for s in plog.segments)
        keys = await c.broker.objects.list("kafscale/")
        assert {s.key for s in plog.segments} == set(keys)  # one ingest object per flush
        assert len(keys) <= 2
        got = await c.fetch("t", 0)
        assert [o for o, _ in values(got.records)] == list(range(6))

    run(tmp_path, scenario, segment_bytes=400, flush_interval_ms=200)


def test_more_malformed_batches_are_invalid_record(tmp_path: Path) -> None:
    import crc32c

    async def scenario(c: Client) -> None:
        await c.create("t")
        good = build_batch([b"a", b"b"])

        def patched(offset: int, fmt: str, value: int, fix_crc: bool = True) -> bytes:
            data = bytearray(good)
            struct.pack_into(fmt, data, offset, value)
            if fix_crc:  # the CRC-32C covers attributes onward: make it right again
                struct.pack_into(">I", data, 17, crc32c.crc32c(bytes(data[21:])))
            return bytes(data)

        cases = {
            "batch length too long": (patched(8, ">i", len(good), False), 87),
            "batch length too short": (patched(8, ">i", 20, False), 87),
            "impossible record count": (patched(57, ">i", 1_000_000), 87),
            "unknown codec 7": (patched(21, ">h", 7), 87),
            "codec bits with a bad CRC": (patched(21, ">h", 7, fix_crc=False), 2),
            "client base offset not 0": (patched(0, ">q", 5, False), 87),
            "truncated": (good[:-3], 87),
            "two batches in one partition": (good + good, 87),
        }
        for name, (data, code) in cases.items():
            resp = await c.produce("t", data)
            assert (resp.error_code, resp.base_offset) == (code, -1), (name, resp.error_message)
        assert (await c.produce("t", good)).base_offset == 0  # nothing above was stored

    run(tmp_path, scenario)


def test_requests_with_unknown_tagged_fields_are_served(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        body = ApiVersionsRequest(client_software_name="x", client_software_version="1")
        body._unknown_tags = [(7, b"future field")]
        resp: ApiVersionsResponse = await c.call(18, 3, body)
        assert resp.error_code == 0

    run(tmp_path, scenario)


def test_non_utf8_client_software_name_closes_the_connection(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        header = struct.pack(">hhih", 18, 3, 1, 1) + b"c" + b"\x00"
        body = b"\x03\xff\xfe" + b"\x02x" + b"\x00"  # compact string of 2 bytes, not UTF-8
        with pytest.raises(ProtocolError, match="UTF-8") as error:
            await c.broker.respond(header + body)
        assert error.value.field == "ClientSoftwareName"

    run(tmp_path, scenario)


def test_delete_records_and_flushes_do_not_fence_each_other(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        assert (await c.produce("t", build_batch([b"0"]))).base_offset == 0
        plog = await c.broker.logs.get("t", 0)
        for round_ in range(5):
            produced = [
                asyncio.create_task(c.produce("t", build_batch([b"%d" % i]))) for i in range(10)
            ]
            await asyncio.sleep(0.004)  # land the deletes while flushes are in flight
            deleted = await asyncio.gather(
                *(c.broker.logs.delete_records(plog, round_ + 1) for _ in range(3))
            )
            results = await asyncio.gather(*produced)
            assert [r.error_code for r in results] == [0] * 10
            assert deleted == [round_ + 1] * 3
        assert plog.log_start == 5 and plog.hw == 51

    run(tmp_path, scenario)


def test_a_foreign_write_to_the_partition_state_fences_this_broker(tmp_path: Path) -> None:
    """Another writer moved the high watermark (as a second broker would): our compare-and-swap
    fails, the requests get a retriable error, and after reloading we continue after its data."""

    async def scenario(c: Client) -> None:
        await c.create("t")
        assert (await c.produce("t", build_batch([b"a"]))).base_offset == 0
        plog = await c.broker.logs.get("t", 0)
        await c.broker.meta.put(plog.state_key, b'{"log_start": 0, "hw": 7}')
        fenced = await asyncio.gather(*(c.produce("t", build_batch([b"x"])) for _ in range(3)))
        assert [r.error_code for r in fenced] == [6, 6, 6]  # NOT_LEADER_OR_FOLLOWER
        assert c.broker.logs.pending_bytes == 0
        again = await c.produce("t", build_batch([b"b"]))
        assert (again.error_code, again.base_offset) == (0, 7)

    run(tmp_path, scenario)


def test_every_served_api_reaches_kafkas_highest_version() -> None:
    """The highest version of every API we serve is Kafka's (of the pinned release: a client
    such as kafka-python infers the broker's version from them); where we refuse Kafka's
    lowest versions, broker-apis.yaml says why."""
    import yaml

    from codegen.specs import SPECS_DIR
    from generated.registry import APIS_BY_NAME

    declared = yaml.safe_load((SPECS_DIR / "broker-apis.yaml").read_text())["apis"]
    for entry in declared:
        api = APIS_BY_NAME[entry["name"]]
        lo, hi = BROKER_APIS[api.api_key]
        assert hi == api.valid_versions[1], f"{api.name}: we serve up to v{hi}"
        if lo > api.valid_versions[0]:
            assert entry.get("note"), f"{api.name}: v{api.valid_versions[0]}-{lo - 1} refused"


@pytest.mark.parametrize(("timestamp", "expected"), [(-4, 2), (-5, -1)])
def test_list_offsets_v9_local_and_tiered_offsets(
    tmp_path: Path, timestamp: int, expected: int
) -> None:
    """-4 (earliest local, KIP-405) is the log start; -5 (latest tiered, KIP-1005) is -1, as
    Kafka answers for a topic without remote storage."""

    async def scenario(c: Client) -> None:
        from generated.delete_records_request import (
            DeleteRecordsPartition,
            DeleteRecordsRequest,
            DeleteRecordsTopic,
        )

        await c.create("t")
        await c.produce("t", build_batch([b"a", b"b", b"c"]))
        parts = [DeleteRecordsPartition(partition_index=0, offset=2)]
        body = DeleteRecordsRequest(topics=[DeleteRecordsTopic(name="t", partitions=parts)])
        await c.call(21, 2, body)
        answer = await c.list_offset("t", timestamp, version=9)
        assert (answer.error_code, answer.offset) == (0, expected)
        assert answer.leader_epoch == (0 if expected >= 0 else -1)

    run(tmp_path, scenario)
