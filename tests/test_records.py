"""Kafka v2 record batches: validation with Kafka's error codes, zero-copy offset assignment,
record iteration, and kafka-python's batch builder and reader as an independent oracle."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace

import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from generated.errors import ErrorCode
from kafscale.protocol import ProtocolError
from kafscale.protocol.records import (
    DEFAULT_MAX_BATCH_BYTES,
    RECORD_BATCH_OVERHEAD,
    BatchInfo,
    CompressedBatchError,
    Compression,
    NewRecord,
    RecordError,
    TimestampType,
    _walk_records,
    assign_offsets,
    build_batch,
    iter_records,
    parse_batches,
    rewrite_batch,
)
from kafscale.protocol.wire import read_varint, varint

# kafka-python's package import loads its protocol schemas with a deprecated importlib API.
pytestmark = pytest.mark.filterwarnings("ignore:.*Use files\\(\\) instead:DeprecationWarning")

T0 = 1_700_000_000_000


def records(n: int, start: int = 0) -> list[NewRecord]:
    return [
        NewRecord(f"value-{i}".encode(), key=f"k{i}".encode(), timestamp=T0 + i)
        for i in range(start, start + n)
    ]


def patch(data: bytes, fmt: str, at: int, value: int, *, fix_crc: bool = True) -> bytes:
    """``data`` with one big-endian field replaced; with ``fix_crc`` the CRC-32C is made right
    again, so that the check under test, not the CRC, is what fails."""
    out = bytearray(data)
    struct.pack_into(">" + fmt, out, at, value)
    if fix_crc:
        struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def error_of(data: bytes, **kwargs: object) -> RecordError:
    with pytest.raises(RecordError) as info:
        parse_batches(data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ProtocolError)  # one error family for the protocol layer
    return info.value


# --- round trips ---------------------------------------------------------------------------


def test_build_parse_iterate_round_trip() -> None:
    batch = build_batch(
        [
            NewRecord(b"v0", key=b"k0", timestamp=T0 + 5),
            NewRecord(None, key=None, timestamp=T0, headers=[("h1", b"x"), ("h2", None)]),
            b"plain",
        ],
        timestamp=T0 + 1,
        producer_id=42,
        producer_epoch=3,
        base_sequence=7,
        partition_leader_epoch=9,
    )
    [info] = parse_batches(batch, produce=True)
    assert info == BatchInfo(
        position=0,
        size=len(batch),
        base_offset=0,
        last_offset_delta=2,
        record_count=3,
        first_timestamp=T0 + 5,
        max_timestamp=T0 + 5,
        attributes=0,
        producer_id=42,
        producer_epoch=3,
        base_sequence=7,
        partition_leader_epoch=9,
    )
    assert info.compression is Compression.NONE
    assert info.timestamp_type is TimestampType.CREATE_TIME
    assert not info.is_transactional and not info.is_control
    assert (info.last_offset, info.next_offset, info.end) == (2, 3, len(batch))
    got = list(iter_records(batch))
    assert [(r.offset, r.timestamp, r.key, r.value) for r in got] == [
        (0, T0 + 5, b"k0", b"v0"),
        (1, T0, None, None),
        (2, T0 + 1, None, b"plain"),
    ]
    assert got[1].headers == (("h1", b"x"), ("h2", None))
    assert isinstance(got[0].value, memoryview)  # a view of the batch, not a copy


def test_attribute_bits() -> None:
    batch = build_batch(
        records(2),
        compression=Compression.GZIP,
        timestamp_type=TimestampType.LOG_APPEND_TIME,
        transactional=True,
        producer_id=1,
        producer_epoch=0,
        base_sequence=0,
    )
    [info] = parse_batches(batch)
    assert info.attributes == 1 | 8 | 16
    assert info.compression is Compression.GZIP
    assert info.timestamp_type is TimestampType.LOG_APPEND_TIME
    assert info.is_transactional and not info.is_control
    control = build_batch(records(1), control=True)
    assert parse_batches(control)[0].is_control


def test_log_append_time_records_take_the_batch_max_timestamp() -> None:
    batch = build_batch(records(3), timestamp_type=TimestampType.LOG_APPEND_TIME)
    assert [r.timestamp for r in iter_records(batch)] == [T0 + 2] * 3


def test_several_batches_in_one_buffer() -> None:
    data = build_batch(records(2)) + build_batch(records(1), base_offset=2) + build_batch([])
    infos = parse_batches(data)
    assert [(b.position, b.record_count) for b in infos] == [
        (0, 2),
        (infos[0].size, 1),
        (infos[0].size + infos[1].size, 0),
    ]
    assert infos[-1].end == len(data)
    assert parse_batches(memoryview(data)) == infos
    assert parse_batches(bytearray(data)) == infos


def test_empty_batch() -> None:
    [info] = parse_batches(build_batch([]))
    assert (info.record_count, info.first_timestamp, info.max_timestamp) == (0, -1, -1)
    assert info.size == RECORD_BATCH_OVERHEAD
    assert list(iter_records(build_batch([]))) == []


# --- validation: every error with its code -------------------------------------------------


def test_empty_buffer() -> None:
    e = error_of(b"")
    assert e.error_code == ErrorCode.INVALID_RECORD and "empty" in str(e)


@pytest.mark.parametrize("at", [21, 30, 61, -1])
def test_flipped_byte_is_corrupt_message(at: int) -> None:
    data = bytearray(build_batch(records(3)))
    data[at] ^= 0x01
    e = error_of(bytes(data))
    assert e.error_code == ErrorCode.CORRUPT_MESSAGE and "CRC" in str(e)
    assert e.offset == 17


def test_flipped_crc_is_corrupt_message() -> None:
    data = bytearray(build_batch(records(3)))
    data[18] ^= 0x80
    assert error_of(bytes(data)).error_code == ErrorCode.CORRUPT_MESSAGE


@pytest.mark.parametrize("magic", [0, 1])
def test_old_message_formats(magic: int) -> None:
    e = error_of(patch(build_batch(records(1)), "b", 16, magic, fix_crc=False))
    assert e.error_code == ErrorCode.INVALID_RECORD
    assert f"message format v0/v1 (magic {magic}) is not supported; use a client that sends " in (
        str(e)
    )
    assert "record batch v2 (Produce v3+)" in str(e)


@pytest.mark.parametrize("magic", [3, -1, 127])
def test_unknown_magic(magic: int) -> None:
    e = error_of(patch(build_batch(records(1)), "b", 16, magic, fix_crc=False))
    assert e.error_code == ErrorCode.INVALID_RECORD and f"magic {magic}" in str(e)


@pytest.mark.parametrize("cut", [1, 10, 50])
def test_truncated_batch(cut: int) -> None:
    data = build_batch(records(3))
    for produce in (False, True):
        e = error_of(data[:-cut], produce=produce)
        assert e.error_code == ErrorCode.INVALID_RECORD


@pytest.mark.parametrize("keep", [1, 11, 16, 17, 40, 61])
def test_trailing_partial_batch(keep: int) -> None:
    first = build_batch(records(2))
    data = first + build_batch(records(2), base_offset=2)[:keep]
    e = error_of(data)
    assert (
        e.error_code == ErrorCode.INVALID_RECORD and e.offset is not None and e.offset >= len(first)
    )


def test_batch_length_too_big() -> None:
    data = build_batch(records(3))
    e = error_of(patch(data, "i", 8, len(data) - 12 + 1, fix_crc=False))
    assert e.error_code == ErrorCode.INVALID_RECORD and "runs past" in str(e)


def test_batch_length_too_small() -> None:
    data = build_batch(records(3))
    short = patch(data, "i", 8, len(data) - 12 - 1, fix_crc=False)
    # A produce's one batch must fill its records: malformed, whatever the CRC says.
    e = error_of(short, produce=True)
    assert e.error_code == ErrorCode.INVALID_RECORD and "exactly one record batch" in str(e)
    # In a buffer of several batches the shorter extent fails its CRC first.
    assert error_of(short).error_code == ErrorCode.CORRUPT_MESSAGE


@pytest.mark.parametrize("length", [-1, 0, 13, 48])
def test_batch_length_below_the_header(length: int) -> None:
    e = error_of(patch(build_batch(records(1)), "i", 8, length, fix_crc=False))
    assert e.error_code == ErrorCode.INVALID_RECORD and "batch header" in str(e)


@pytest.mark.parametrize("count", [-1, -(2**31), 2**31 - 1, 100])
def test_impossible_record_count(count: int) -> None:
    data = patch(build_batch(records(3)), "i", 57, count)
    e = error_of(data)
    assert e.error_code == ErrorCode.INVALID_RECORD and "recordsCount" in str(e)


def test_record_count_disagrees_with_the_records() -> None:
    data = build_batch(records(3))
    fewer = patch(patch(data, "i", 57, 2), "i", 23, 1)  # count and lastOffsetDelta agree
    e = error_of(fewer)
    assert e.error_code == ErrorCode.INVALID_RECORD and "holds 3 records" in str(e)
    more = patch(patch(data, "i", 57, 4), "i", 23, 3)
    assert error_of(more).error_code == ErrorCode.INVALID_RECORD


@pytest.mark.parametrize("delta", [0, 1, 3, -1])
def test_last_offset_delta_must_be_count_minus_one(delta: int) -> None:
    e = error_of(patch(build_batch(records(3)), "i", 23, delta))
    assert e.error_code == ErrorCode.INVALID_RECORD and "lastOffsetDelta" in str(e)


def test_malformed_record_length() -> None:
    data = bytearray(build_batch(records(2)))
    data[61] = 0x02  # first record's length varint: zigzag 1, shorter than any record
    data[17:21] = struct.pack(">I", crc32c.crc32c(bytes(data[21:])))
    e = error_of(bytes(data))
    assert e.error_code == ErrorCode.INVALID_RECORD and "record 0" in str(e) and e.offset == 61
    data[61] = 0xFF  # a varint that runs on
    data[17:21] = struct.pack(">I", crc32c.crc32c(bytes(data[21:])))
    assert error_of(bytes(data)).error_code == ErrorCode.INVALID_RECORD
    # Kafka walks the records of an uncompressed batch; verify_records=False skips that.
    assert parse_batches(bytes(data), verify_records=False)


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_unknown_compression_codec(codec: int) -> None:
    e = error_of(patch(build_batch(records(1)), "h", 21, codec))
    assert e.error_code == ErrorCode.INVALID_RECORD and f"codec {codec}" in str(e)


def test_oversize_batch_is_message_too_large() -> None:
    data = build_batch([b"x" * 1000])
    assert parse_batches(data, len(data))  # the limit counts the 12-byte prefix too
    e = error_of(data, max_batch_bytes=len(data) - 1)
    assert e.error_code == ErrorCode.MESSAGE_TOO_LARGE and str(len(data)) in str(e)
    big = build_batch([b"x" * DEFAULT_MAX_BATCH_BYTES])
    assert error_of(big, produce=True).error_code == ErrorCode.MESSAGE_TOO_LARGE


def test_checks_run_in_kafkas_order() -> None:
    """Size before CRC (MESSAGE_TOO_LARGE wins), CRC before the header fields."""
    data = bytearray(build_batch([b"x" * 100]))
    data[-1] ^= 1
    assert error_of(bytes(data), max_batch_bytes=100).error_code == ErrorCode.MESSAGE_TOO_LARGE
    bad_codec_and_crc = patch(bytes(data), "h", 21, 7, fix_crc=False)
    assert error_of(bad_codec_and_crc).error_code == ErrorCode.CORRUPT_MESSAGE


# --- Produce (client origin) rules -----------------------------------------------------------


def test_produce_requires_base_offset_zero() -> None:
    data = build_batch(records(1), base_offset=5)
    assert parse_batches(data)[0].base_offset == 5  # stored batches keep their offsets
    e = error_of(data, produce=True)
    assert e.error_code == ErrorCode.INVALID_RECORD and "base offset 5" in str(e)


def test_produce_carries_exactly_one_batch() -> None:
    data = build_batch(records(1)) + build_batch(records(1), base_offset=1)
    assert len(parse_batches(data)) == 2
    assert error_of(data, produce=True).error_code == ErrorCode.INVALID_RECORD


def test_produce_refuses_empty_and_control_batches() -> None:
    assert error_of(build_batch([]), produce=True).error_code == ErrorCode.INVALID_RECORD
    e = error_of(build_batch(records(1), control=True), produce=True)
    assert e.error_code == ErrorCode.INVALID_RECORD and "control" in str(e)


def test_produce_refuses_a_producer_id_without_sequence() -> None:
    data = build_batch(records(1), producer_id=7, producer_epoch=0, base_sequence=-1)
    assert error_of(data, produce=True).error_code == ErrorCode.INVALID_RECORD
    ok = build_batch(records(1), producer_id=7, producer_epoch=0, base_sequence=0)
    assert parse_batches(ok, produce=True)[0].producer_id == 7


# --- offsets -------------------------------------------------------------------------------


def test_assign_offsets_is_zero_copy_and_keeps_the_crc_valid() -> None:
    data = build_batch(records(3)) + build_batch(records(1)) + build_batch(records(5))
    batches = parse_batches(data)
    chunks, assigned, next_offset = assign_offsets(data, batches, 1000)
    assert next_offset == 1009
    assert [bytes(c) for c in chunks[0::2]] == [struct.pack(">q", o) for o in (1000, 1003, 1004)]
    for view in chunks[1::2]:
        assert isinstance(view, memoryview) and view.obj is data  # not copied
    joined = b"".join(chunks)
    assert len(joined) == len(data)
    again = parse_batches(joined)  # every CRC still matches
    assert [b.base_offset for b in again] == [1000, 1003, 1004]
    assert [b.position for b in again] == [b.position for b in batches]
    assert [replace(b, base_offset=0) for b in again] == batches  # only the offsets changed
    assert assigned == again  # what assign_offsets says it made
    offsets = [r.offset for b in again for r in iter_records(joined[b.position : b.end])]
    assert offsets == list(range(1000, 1009))


def test_assign_offsets_can_stamp_the_leader_epoch() -> None:
    data = build_batch(records(2), partition_leader_epoch=-1)
    chunks, assigned, next_offset = assign_offsets(
        data, parse_batches(data), 7, partition_leader_epoch=4
    )
    assert len(chunks[0]) == 16 and isinstance(chunks[1], memoryview)
    [info] = parse_batches(b"".join(chunks))
    assert (info.base_offset, info.partition_leader_epoch, info.size) == (7, 4, len(data))
    assert assigned == [info] and next_offset == 9


def test_assign_offsets_of_a_memoryview_slice() -> None:
    frame = b"junk" + build_batch(records(2)) + b"more"
    view = memoryview(frame)[4:-4]
    chunks, _, next_offset = assign_offsets(view, parse_batches(view), 0)
    assert next_offset == 2 and parse_batches(b"".join(chunks))[0].record_count == 2


def test_assign_offsets_refuses_a_negative_offset() -> None:
    data = build_batch(records(1))
    with pytest.raises(ValueError):
        assign_offsets(data, parse_batches(data), -1)


# --- records -------------------------------------------------------------------------------


def test_iter_records_decompresses_and_refuses_what_it_cannot() -> None:
    plain = build_batch(records(2))
    gzipped = build_batch(records(2), compression=Compression.GZIP)
    assert [r.value for r in iter_records(gzipped)] == [r.value for r in iter_records(plain)]
    broken = bytearray(gzipped)
    broken[70:74] = b"\xff\xff\xff\xff"  # inside the gzip stream (the CRC is not re-checked)
    with pytest.raises(CompressedBatchError, match="cannot decompress"):
        list(iter_records(bytes(broken)))


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("record longer than the batch", lambda d: d[:61] + b"\x7e" + d[62:]),
        ("header count", lambda d: d[:-1] + b"\x7f"),
        ("trailing bytes", lambda d: patch(d, "i", 8, len(d) - 12 + 1, fix_crc=False) + b"\x00"),
    ],
)
def test_iter_records_refuses_malformed_records(
    name: str, mutate: Callable[[bytes], bytes]
) -> None:
    data = mutate(build_batch([NewRecord(b"v", key=b"k")]))
    with pytest.raises(RecordError) as info:
        list(iter_records(data))
    assert info.value.error_code == ErrorCode.INVALID_RECORD, name


def test_iter_records_checks_the_batch_length() -> None:
    data = build_batch(records(1))
    with pytest.raises(RecordError):
        iter_records(data + b"\x00")
    with pytest.raises(RecordError):
        iter_records(data[:40])


def test_build_batch_refuses_unknown_codecs() -> None:
    with pytest.raises(ValueError):
        build_batch(records(1), compression=5)


# --- kafka-python as an independent oracle ---------------------------------------------------


def kafka_python_batch(codec: int, n: int = 20) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(n):
        key = None if i % 3 == 0 else f"key-{i}".encode()
        headers = [("trace", f"{i}".encode()), ("empty", None)] if i % 2 else []
        builder.append(i, timestamp=T0 + 10 * i, key=key, value=b"value " * 20, headers=headers)
    return bytes(builder.build())


def codec_available(codec: int) -> bool:
    from kafka import codec as kc

    return {
        0: True,
        1: kc.has_gzip(),
        2: kc.has_snappy(),
        3: kc.has_lz4(),
        4: kc.has_zstd(),
    }[codec]


@pytest.mark.parametrize("codec", list(Compression), ids=lambda c: c.name)
def test_kafka_python_batches_validate(codec: Compression) -> None:
    if not codec_available(codec):
        pytest.skip(f"kafka-python has no {codec.name} codec installed")
    data = kafka_python_batch(codec)
    [info] = parse_batches(data, produce=True)
    assert (info.record_count, info.last_offset_delta) == (20, 19)
    assert (info.first_timestamp, info.max_timestamp) == (T0, T0 + 190)
    # kafka-python sends uncompressed when compressing does not pay; ours is what it wrote.
    assert info.compression in (codec, Compression.NONE)
    # Compressed or not, our records are kafka-python's (decompressed by iter_records).
    from kafka.record.default_records import DefaultRecordBatch

    expected = [
        (r.offset, r.timestamp, r.key, r.value, tuple(r.headers))
        for r in DefaultRecordBatch(bytearray(data))
    ]
    got = [
        (
            r.offset,
            r.timestamp,
            None if r.key is None else bytes(r.key),
            None if r.value is None else bytes(r.value),
            tuple((k, None if v is None else bytes(v)) for k, v in r.headers),
        )
        for r in iter_records(data)
    ]
    assert got == expected


@pytest.mark.parametrize("codec", list(Compression), ids=lambda c: c.name)
def test_kafka_python_reads_our_batches(codec: Compression) -> None:
    """Every codec as we write it (build_batch, the broker's re-compression) is readable."""
    from kafka.record.default_records import DefaultRecordBatch

    if not codec_available(codec):
        pytest.skip(f"kafka-python has no {codec.name} codec installed")

    batch = build_batch(
        [
            NewRecord(b"v0", key=b"k0", headers=[("h", b"1")]),
            NewRecord(None, timestamp=T0 + 9),
            b"plain",
        ],
        base_offset=100,
        compression=codec,
        timestamp=T0,
    )
    theirs = DefaultRecordBatch(bytearray(batch))
    assert theirs.validate_crc()
    assert theirs.compression_type == codec
    assert (theirs.base_offset, theirs.last_offset_delta, theirs.max_timestamp) == (100, 2, T0 + 9)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in theirs] == [
        (100, T0, b"k0", b"v0", [("h", b"1")]),
        (101, T0 + 9, None, None, []),
        (102, T0, None, b"plain", []),
    ]


@pytest.mark.parametrize("codec", list(Compression), ids=lambda c: c.name)
def test_rewritten_batches_are_valid_for_kafka_python(codec: Compression) -> None:
    """rewrite_batch (the broker's compression.type and LogAppendTime): kafka-python checks the
    new CRC, reads the codec and takes the max timestamp as every record's timestamp."""
    from kafka.record.default_records import DefaultRecordBatch

    if not codec_available(codec):
        pytest.skip(f"kafka-python has no {codec.name} codec installed")
    sent = build_batch([b"a" * 100, b"b"], compression=Compression.GZIP, timestamp=T0)
    rewritten = rewrite_batch(
        sent, compression=codec, timestamp_type=TimestampType.LOG_APPEND_TIME, max_timestamp=T0 + 5
    )
    theirs = DefaultRecordBatch(bytearray(rewritten))
    assert theirs.validate_crc()
    assert (theirs.compression_type, theirs.timestamp_type) == (codec, 1)
    assert [(r.offset, r.timestamp, r.value) for r in theirs] == [
        (0, T0 + 5, b"a" * 100),
        (1, T0 + 5, b"b"),
    ]
    [info] = parse_batches(rewritten, produce=True)
    assert (info.compression, info.max_timestamp, info.first_timestamp) == (codec, T0 + 5, T0)


def test_offsets_assigned_to_a_kafka_python_batch() -> None:
    from kafka.record.default_records import DefaultRecordBatch

    data = kafka_python_batch(Compression.NONE, n=4)
    chunks = assign_offsets(data, parse_batches(data, produce=True), 500).chunks
    theirs = DefaultRecordBatch(bytearray(b"".join(chunks)))
    assert theirs.validate_crc()
    assert [r.offset for r in theirs] == [500, 501, 502, 503]


# --- robustness ----------------------------------------------------------------------------


@given(
    values=st.lists(st.binary(max_size=40) | st.none(), min_size=1, max_size=8),
    gzip=st.booleans(),
)
def test_round_trip_property(values: list[bytes | None], gzip: bool) -> None:
    codec = Compression.GZIP if gzip else Compression.NONE
    batch = build_batch([NewRecord(v, key=v) for v in values], compression=codec)
    [info] = parse_batches(batch, produce=True)
    assert info.record_count == len(values)
    if not gzip:
        got = [(r.key, r.value) for r in iter_records(batch)]
        assert got == [(v, v) for v in values]


@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 40),
)
def test_mutations_raise_only_record_errors(flips: list[tuple[int, int]], cut: int) -> None:
    """Whatever the bytes, parsing ends in a result or a RecordError, never anything else."""
    data = bytearray(build_batch(records(4)) + build_batch(records(2), base_offset=4))
    for at, mask in flips:
        data[at % len(data)] ^= mask
    mutated = bytes(data[: len(data) - cut])
    for mode in (False, True):
        try:
            infos = parse_batches(mutated, produce=mode)
        except RecordError as e:
            assert e.error_code in (
                ErrorCode.INVALID_RECORD,
                ErrorCode.CORRUPT_MESSAGE,
                ErrorCode.MESSAGE_TOO_LARGE,
            )
            continue
        for b in infos:
            if b.compression is Compression.NONE:
                list(iter_records(mutated[b.position : b.end]))


# --- the record-length walk: inline 1- and 2-byte varints, the wire reader beyond ----------


def reference_walk(records: bytes, count: int) -> tuple[int, int | None] | None:
    """What the walk of a batch's records must report, written the plain way (every length
    through the wire reader): None when ``count`` records fill ``records`` exactly, else the
    error's (code, offset) as parse_batches reports it for a batch at position 0."""
    pos = 0
    seen = 0
    while pos < len(records):
        try:
            length, after = read_varint(records, pos)
        except (IndexError, ProtocolError):
            return ErrorCode.INVALID_RECORD, RECORD_BATCH_OVERHEAD + pos
        if length < 6 or length > len(records) - after:
            return ErrorCode.INVALID_RECORD, RECORD_BATCH_OVERHEAD + pos
        pos = after + length
        seen += 1
    if seen != count:
        return ErrorCode.INVALID_RECORD, RECORD_BATCH_OVERHEAD - 4
    return None


def walk(records: bytes, count: int) -> tuple[int, int | None] | None:
    try:
        _walk_records(memoryview(records), count, "batch 0", 0)
    except RecordError as e:
        return e.error_code, e.offset
    return None


def record_bytes(length: int) -> bytes:
    """A record of ``length`` bytes after its length varint (the walk reads only lengths)."""
    return varint(length) + b"r" * length


@pytest.mark.parametrize(
    "lengths",
    [
        [6, 63],  # one-byte varints (zigzag < 0x80)
        [64, 1000, 1043, 8191],  # two bytes: the 64 B - 8 KiB records
        [8192, 20000, 6, 100],  # three bytes, mixed with the others
    ],
)
def test_record_lengths_of_one_two_and_three_varint_bytes(lengths: list[int]) -> None:
    block = b"".join(record_bytes(n) for n in lengths)
    assert [len(varint(n)) for n in (63, 64, 8191, 8192)] == [1, 2, 2, 3]
    assert walk(block, len(lengths)) is None
    assert walk(block, len(lengths) + 1) == reference_walk(block, len(lengths) + 1)
    # And through parse_batches and iter_records, with values of those sizes.
    values = [b"v" * n for n in lengths]
    batch = build_batch(values)
    [info] = parse_batches(batch, produce=True)
    assert info.record_count == len(values)
    assert [r.value for r in iter_records(batch)] == values


@pytest.mark.parametrize(
    ("block", "count"),
    [
        (b"\x80", 1),  # a two-byte varint cut after its first byte
        (b"\xff", 1),
        (record_bytes(100) + b"\x80", 2),
        (b"\x80\x80", 1),  # a three-byte varint cut after two bytes
        (b"\x80\x80\x80\x80\x80\x01", 1),  # six bytes: longer than a varint may be
        (b"\xff\xff\xff\xff\x7f", 1),  # five bytes whose value needs more than 32 bits
        (b"\x90\x01" + b"r" * 71, 1),  # length 72 with 71 bytes left
        (b"\x81\x01" + b"r" * 200, 1),  # zigzag: length -65
        (b"\x8c\x00" + b"r" * 6, 1),  # a non-minimal two-byte varint (6): allowed, as Kafka
        (b"\x8c\x80\x00" + b"r" * 6, 1),  # the same in three bytes
        (record_bytes(64), 2),  # fewer records than counted
        (record_bytes(64) * 3, 2),  # more
    ],
)
def test_malformed_and_unusual_record_lengths(block: bytes, count: int) -> None:
    assert walk(block, count) == reference_walk(block, count)


@given(
    parts=st.lists(
        st.one_of(
            st.integers(0, 20_000).map(record_bytes),  # well-formed records of any length
            st.binary(min_size=1, max_size=6),  # arbitrary bytes: broken varints and records
        ),
        max_size=6,
    ),
    extra=st.integers(-1, 1),
)
def test_the_walk_agrees_with_the_plain_reader(parts: list[bytes], extra: int) -> None:
    block = b"".join(parts)
    count = max(len(parts) + extra, 0)
    assert walk(block, count) == reference_walk(block, count)
