"""Real clients against a real broker: what each one produces, it (and only it) reads back.

The same scenarios run with kafka-python, confluent-kafka (librdkafka), aiokafka and kcat:
every compression codec, headers, null keys and values, a 1 MiB record, keyed messages over
3 partitions. Producers use acks=all. Each scenario checks the exact records (key, value,
headers), offsets consecutive from 0 in every partition, the offsets the producer was told,
and the partition's end offset (ListOffsets), so nothing extra can hide.

Consumers use assign() with no committed offsets here (groups: test_groups.py).
"""

from __future__ import annotations

import pytest

from tests.conformance.clients import (
    CLIENTS,
    CODEC_IDS,
    LARGE,
    LARGE_TOPIC_CONFIG,
    Client,
    Headers,
    Msg,
    as_seen,
    batch_codecs,
    new_topic,
    produce_and_check,
    seen,
)
from tests.conformance.conftest import BrokerProcess

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


@pytest.fixture(params=CLIENTS, ids=lambda c: c.name)
def client(request: pytest.FixtureRequest, checked_broker: BrokerProcess) -> Client:
    cls: type[Client] = request.param
    return cls(checked_broker)


# --- the scenarios ---------------------------------------------------------------------------


def sample_messages(client: Client, n: int) -> list[Msg]:
    """Keyed records, compressible text, some headers; binary bytes where the client can."""
    msgs = []
    for i in range(n):
        # Long enough that even a one-record batch shrinks: librdkafka sends a batch that
        # compression would grow uncompressed.
        value = f"value {i} ".encode() + b"compressible text " * (i % 7 + 12)
        if client.binary_safe and i % 4 == 0:
            value += bytes(range(256))
        headers: Headers = (("seq", str(i).encode()),) if i % 5 == 0 else ()
        msgs.append(Msg(f"key-{i % 3}".encode(), value, headers))
    return msgs


@pytest.mark.parametrize("codec", CODECS)
def test_codec_round_trip(client: Client, codec: str) -> None:
    """25 records in (mostly) one batch with the codec: exact round trip from offset 0 and from
    inside the batch, and the stored batches really carry the codec."""
    topic = new_topic(client.name, codec)
    client.create_topic(topic, 1, {})
    msgs = sample_messages(client, 25)
    produce_and_check(client, topic, msgs, codec)
    # Starting inside a (compressed) batch: the client skips the batch's earlier records.
    got = client.consume(topic, 0, len(msgs) - 7, start=7)
    assert [seen(r) for r in got] == [as_seen(0, i, m) for i, m in enumerate(msgs)][7:]
    # The round trip proves little if the client quietly sent the batches uncompressed.
    # librdkafka does that, logging "Broker does not support compression type X", when the
    # broker's ApiVersions lacks what it gates a codec on: lz4 needs FindCoordinator v0, zstd
    # Produce v7 and Fetch v10, gzip and snappy (older librdkafka, e.g. kcat's 2.0.2) Produce
    # v0 -- which is why Kafka 4 still advertises Produce v0-2 (KAFKA-18659).
    codecs = batch_codecs(client.broker, topic, 0)
    assert codecs and set(codecs) == {CODEC_IDS[codec]}, (
        f"{client.name} asked for {codec}; the codec of each stored batch: {codecs} "
        f"(ids: {CODEC_IDS})"
    )


def test_headers_and_nulls(client: Client) -> None:
    """Null keys, null values, repeated header keys (order kept), empty vs null where the
    client can tell them apart, over two partitions."""
    topic = new_topic(client.name, "nulls")
    client.create_topic(topic, 2, {})
    headers: Headers = (("h1", b"one"), ("h1", b"again"), ("h2", b"two"))
    if client.binary_safe:
        headers += (("empty", b""), ("bin\u00e9", bytes([0, 255, 10, 13])))
    msgs = [
        Msg(None, b"null key", partition=0),
        Msg(b"null value", None, partition=0),
        Msg(b"k", b"with headers", headers, partition=0),
        Msg(b"k2", b"after headers", partition=0),
        Msg(None, b"other partition, null key", headers, partition=1),
    ]
    if client.null_key_and_value:
        msgs.append(Msg(None, None, partition=0))
    if client.empty_is_not_null:
        msgs += [Msg(b"", b"empty key", partition=0), Msg(b"empty value", b"", partition=0)]
    produce_and_check(client, topic, msgs)


def test_one_mib_record(client: Client) -> None:
    """A 1 MiB value between two small ones (topic max.message.bytes raised to 2 MiB, as Kafka
    needs too); consumers keep their default 1 MiB fetch sizes (KIP-74: it comes whole)."""
    topic = new_topic(client.name, "large")
    client.create_topic(topic, 1, LARGE_TOPIC_CONFIG)
    big = bytes(i * 7 % 251 for i in range(LARGE)) if client.binary_safe else b"x" * LARGE
    msgs = [
        Msg(None, b"small before", partition=0),
        Msg(None, big, partition=0),
        Msg(None, b"small after", partition=0),
    ]
    produce_and_check(client, topic, msgs, "none")


def test_keyed_order_across_three_partitions(client: Client) -> None:
    """12 keys x 8 records through the client's own partitioner: each key stays in one
    partition in order, offsets are dense from 0, the producer's acked offsets match."""
    topic = new_topic(client.name, "keyed")
    client.create_topic(topic, 3, {})
    keys = [f"k{k:02d}".encode() for k in range(12)]
    msgs = [
        Msg(key, key + b"#" + str(seq).encode(), partition=None) for seq in range(8) for key in keys
    ]
    acked = client.produce(topic, msgs, "zstd")
    per_partition = {}
    for p in range(3):
        end = client.end_offset(topic, p)
        got = client.consume(topic, p, end)
        assert [r.offset for r in got] == list(range(end)), f"partition {p}: offsets 0..{end - 1}"
        per_partition[p] = got
    records = [r for p in range(3) for r in per_partition[p]]
    assert sorted((r.key, r.value) for r in records) == sorted((m.key, m.value) for m in msgs)
    used = [p for p, got in per_partition.items() if got]
    assert len(used) >= 2, f"12 keys all went to partition(s) {used}"
    for key in keys:
        mine = [r for r in records if r.key == key]
        assert len({r.partition for r in mine}) == 1, f"{key!r} went to several partitions"
        values = [r.value for r in sorted(mine, key=lambda r: r.offset)]
        assert values == [key + b"#" + str(seq).encode() for seq in range(8)], f"order of {key!r}"
    if acked is not None:
        where = {(r.key, r.value): (r.partition, r.offset) for r in records}
        assert acked == [where[(m.key, m.value)] for m in msgs], "acked offsets = where read"


def test_create_topics(client: Client) -> None:
    """CreateTopics with a partition count and a config: both partitions exist and are empty;
    creating the topic again is refused (TOPIC_ALREADY_EXISTS)."""
    topic = new_topic(client.name, "admin")
    client.create_topic(topic, 2, {"retention.ms": "3600000"})
    assert client.end_offset(topic, 0) == 0
    assert client.end_offset(topic, 1) == 0
    produce_and_check(client, topic, [Msg(b"a", b"0", partition=0), Msg(b"b", b"1", partition=1)])
    with pytest.raises(Exception, match=r"(?i)already.?exists"):
        client.create_topic(topic, 2, {})
