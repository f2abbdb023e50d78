"""KafScale segment objects and sparse indexes: byte layout, build/parse round trips,
corruption detection, and offset and timestamp lookups checked against brute force."""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest

from generated.storage.segment_index import SegmentIndex
from kafscale.protocol.records import (
    BatchInfo,
    Compression,
    NewRecord,
    assign_offsets,
    build_batch,
    iter_records,
    parse_batches,
)
from kafscale.protocol.wire import Buffer
from kafscale.storage.segment import (
    FOOTER_SIZE,
    HEADER_SIZE,
    Segment,
    SegmentCorrupt,
    base_offset_of,
    build_segment,
    find_by_timestamp,
    find_position,
    index_key,
    parse_index,
    parse_segment,
    scan_for_timestamp,
    segment_key,
    span_for_offset,
    span_for_timestamp,
)

T0 = 1_700_000_000_000
CREATED = 1_750_000_000_123


def produce(counts: list[int], stamps: list[list[int]] | None = None, gzip_every: int = 0) -> bytes:
    """One produce payload per count (each a client batch with base offset 0), concatenated."""
    out = b""
    for i, n in enumerate(counts):
        ts = stamps[i] if stamps else [T0 + 1000 * i + j for j in range(n)]
        recs = [NewRecord(b"v%d-%d" % (i, j) * 20, timestamp=ts[j]) for j in range(n)]
        codec = Compression.GZIP if gzip_every and i % gzip_every == 0 else Compression.NONE
        out += build_batch(recs, compression=codec)
    return out


def segment_of(
    counts: list[int],
    base: int = 1000,
    interval: int = 4096,
    stamps: list[list[int]] | None = None,
    gzip_every: int = 0,
) -> tuple[Segment, bytes, list[BatchInfo]]:
    """A built segment, its joined bytes and its batches (positions in the segment)."""
    data = produce(counts, stamps, gzip_every)
    chunks, batches, next_offset = assign_offsets(data, parse_batches(data), base)
    seg = build_segment(base, chunks, batches, CREATED, index_interval=interval)
    assert seg.next_offset == next_offset
    blob = b"".join(bytes(c) for c in seg.chunks)
    return seg, blob, parse_segment(blob).batches


# --- layout --------------------------------------------------------------------------------


def test_byte_layout_matches_the_readme() -> None:
    seg, blob, _ = segment_of([3, 2])
    magic, version, flags, base, count, created, reserved = struct.unpack(">IhhqiqI", blob[:32])
    assert blob[:4] == b"KAFS" and magic == 0x4B414653
    assert (version, flags, base, count, created, reserved) == (1, 0, 1000, 5, CREATED, 0)
    crc, last, end_magic = struct.unpack(">IqI", blob[-16:])
    assert blob[-4:] == b"END!" and end_magic == 0x454E4421
    assert crc == zlib.crc32(blob[32:-16]) and last == 1004
    assert len(blob) == seg.size == HEADER_SIZE + len(blob[32:-16]) + FOOTER_SIZE
    assert (seg.base_offset, seg.last_offset, seg.message_count) == (1000, 1004, 5)

    index = seg.index
    assert index[:4] == b"IDX\x01"
    interval, ibase, ilast, max_ts, batches_end, n = struct.unpack(">iqqqii", index[4:40])
    assert (interval, ibase, ilast, batches_end) == (4096, 1000, 1004, len(blob) - 16)
    assert max_ts == seg.max_timestamp == T0 + 1001
    assert n == 1 and len(index) == 40 + 20 * n
    assert struct.unpack(">qiq", index[40:60]) == (1000, 32, T0 + 1001)


def test_batch_chunks_are_not_copied() -> None:
    data = produce([2, 2])
    chunks, batches, _ = assign_offsets(data, parse_batches(data), 0)
    seg = build_segment(0, chunks, batches, CREATED)
    assert seg.chunks[1:-1] == chunks
    assert all(a is b for a, b in zip(seg.chunks[1:-1], chunks, strict=True))
    assert len(seg.chunks[0]) == HEADER_SIZE and len(seg.chunks[-1]) == FOOTER_SIZE


def test_keys() -> None:
    assert segment_key("ns", "orders", 3, 42) == "ns/orders/3/segment-00000000000000000042.kfs"
    assert index_key("ns", "orders", 3, 42) == "ns/orders/3/segment-00000000000000000042.index"
    assert base_offset_of(segment_key("ns", "t", 0, 2**63 - 1)) == 2**63 - 1
    assert base_offset_of(index_key("ns", "t", 0, 7)) == 7
    keys = [segment_key("n", "t", 0, b) for b in (10, 9, 100, 0)]
    assert sorted(keys) == [segment_key("n", "t", 0, b) for b in (0, 9, 10, 100)]
    with pytest.raises(ValueError):
        base_offset_of("ns/t/0/other.kfs")
    with pytest.raises(ValueError):
        segment_key("ns", "t", 0, -1)


# --- round trips ---------------------------------------------------------------------------


def test_build_parse_round_trip() -> None:
    seg, blob, _ = segment_of([3, 1, 5, 2], gzip_every=2)
    parsed = parse_segment(blob)
    assert (parsed.base_offset, parsed.last_offset, parsed.message_count) == (1000, 1010, 11)
    assert parsed.created_ms == CREATED and parsed.max_timestamp == seg.max_timestamp
    assert [b.base_offset for b in parsed.batches] == [1000, 1003, 1004, 1009]
    assert [b.compression for b in parsed.batches] == [Compression.GZIP, Compression.NONE] * 2
    assert parsed.batches[0].position == HEADER_SIZE
    assert parsed.batches[-1].end == len(blob) - FOOTER_SIZE
    uncompressed = parsed.batches[1]
    [record] = iter_records(parsed.batch_bytes(uncompressed))
    assert (record.offset, record.value) == (1003, b"v1-0" * 20)
    assert parse_segment(memoryview(blob)).batches == parsed.batches


def test_batches_from_several_produces_concatenate() -> None:
    """Flushing several produce requests into one segment: assign each, join the chunks."""
    payloads = [produce([2]), produce([3, 1]), produce([4])]
    chunks: list[Buffer] = []
    batches: list[BatchInfo] = []
    offset = 50
    for p in payloads:
        assigned = assign_offsets(p, parse_batches(p), offset)
        chunks += assigned.chunks
        batches += assigned.batches  # positions restart per payload: build_segment ignores them
        offset = assigned.next_offset
    seg = build_segment(50, chunks, batches, CREATED)
    parsed = parse_segment(b"".join(bytes(c) for c in seg.chunks))
    assert [b.base_offset for b in parsed.batches] == [50, 52, 55, 56]
    assert parsed.last_offset == 59 == seg.last_offset


@pytest.mark.parametrize("piece", [1, 3, 7, 100])
def test_chunks_may_be_split_anywhere(piece: int) -> None:
    data = produce([2, 3, 1])
    batches = parse_batches(data)
    joined = b"".join(assign_offsets(data, batches, 7).chunks)
    pieces = [joined[i : i + piece] for i in range(0, len(joined), piece)]
    seg = build_segment(7, pieces, batches, CREATED, index_interval=0)
    parsed = parse_segment(b"".join(seg.chunks))
    assert [b.base_offset for b in parsed.batches] == [7, 9, 12]
    assert [e.offset for e in parse_index(seg.index).entries] == [7, 9, 12]


def test_records_from() -> None:
    _, blob, batches = segment_of([3, 2])
    parsed = parse_segment(blob)
    assert bytes(parsed.records_from(1001)) == blob[HEADER_SIZE:-FOOTER_SIZE]
    assert bytes(parsed.records_from(1003)) == blob[batches[1].position : -FOOTER_SIZE]
    assert bytes(parsed.records_from(1005)) == b""


def test_build_refuses_what_would_corrupt_the_log() -> None:
    data = produce([2, 5])
    batches = parse_batches(data)  # the client's base offsets (0): they do not matter
    chunks = assign_offsets(data, batches, 10).chunks
    with pytest.raises(ValueError, match="base offset 10"):
        build_segment(11, chunks, batches, CREATED)  # the first batch is 10
    gap = chunks[:2] + assign_offsets(data, batches[1:], 13).chunks
    with pytest.raises(ValueError, match="base offset 13 in its bytes, the segment needs 12"):
        build_segment(10, gap, batches, CREATED)
    with pytest.raises(ValueError, match="assigned"):
        build_segment(10, [data], batches, CREATED)  # offsets never assigned: both are 0
    with pytest.raises(ValueError, match="chunks hold"):
        build_segment(10, chunks[:-1], batches, CREATED)
    with pytest.raises(ValueError, match="batchLength"):
        build_segment(10, chunks, [batches[1], batches[0]], CREATED)
    with pytest.raises(ValueError):
        build_segment(10, [], [], CREATED)
    with pytest.raises(ValueError):
        build_segment(10, chunks, batches, CREATED, index_interval=-1)


# --- corruption ----------------------------------------------------------------------------


def flip(blob: bytes, at: int) -> bytes:
    data = bytearray(blob)
    data[at] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("batch byte", lambda b: flip(b, 100), "CRC-32"),
        ("footer crc", lambda b: flip(b, len(b) - 16), "CRC-32"),
        ("footer magic", lambda b: flip(b, len(b) - 1), "END!"),
        ("truncated", lambda b: b[:-1], "END!"),
        ("truncated batch", lambda b: b[:-40] + b[-16:], "CRC-32"),
        ("header magic", lambda b: flip(b, 0), "KAFS"),
        ("version", lambda b: b[:4] + struct.pack(">h", 2) + b[6:], "version 2"),
        ("header count", lambda b: b[:16] + struct.pack(">i", 4) + b[20:], "message count"),
        ("header base", lambda b: b[:8] + struct.pack(">q", 999) + b[16:], "base offset"),
        ("footer last offset", lambda b: b[:-12] + struct.pack(">q", 7) + b[-4:], "last offset"),
        ("tiny", lambda b: b[:40], "too short"),
    ],
)
def test_corruption_is_detected(name: str, mutate: object, message: str) -> None:
    _, blob, _ = segment_of([3, 2])
    assert callable(mutate)
    with pytest.raises(SegmentCorrupt, match=message):
        parse_segment(mutate(blob))


def test_a_corrupt_batch_with_a_matching_segment_crc_is_still_caught() -> None:
    """The footer CRC-32 is recomputed over a damaged batch: its own CRC-32C catches it."""
    _, blob, _ = segment_of([3, 2])
    body = bytearray(blob[32:-16])
    body[80] ^= 0x01
    footer = struct.pack(">I", zlib.crc32(bytes(body))) + blob[-12:]
    with pytest.raises(SegmentCorrupt, match="CRC-32C"):
        parse_segment(blob[:32] + bytes(body) + footer)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"IDX\x02" + b[4:], "version 2 is not supported"),
        (lambda b: b"XXXX" + b[4:], "not IDX"),
        (lambda b: b[:-1], "unreadable"),
        (lambda b: b + b"\x00", "unreadable"),
        (lambda b: b[:36] + struct.pack(">i", 0), "no entries"),
        (lambda b: b[:44] + struct.pack(">i", 33) + b[48:], "first batch"),
        (lambda b: b[:60] + struct.pack(">q", 0) + b[68:], "out of order"),
        (lambda b: b[:32] + struct.pack(">i", 40) + b[36:], "past the segment"),
        (lambda b: b[:24] + struct.pack(">q", 1) + b[32:], "max timestamp"),
    ],
)
def test_index_corruption_is_detected(mutate: object, message: str) -> None:
    seg, _, _ = segment_of([5] * 6, interval=0)
    assert parse_index(seg.index).entries
    assert callable(mutate)
    with pytest.raises(SegmentCorrupt, match=message):
        parse_index(mutate(seg.index))


# --- index: offsets ------------------------------------------------------------------------


def containing(batches: list[BatchInfo], offset: int) -> BatchInfo:
    return next(b for b in batches if b.base_offset <= offset <= b.last_offset)


@pytest.mark.parametrize("interval", [0, 1, 300, 1000, 4096, 1 << 20])
def test_find_position_at_every_offset(interval: int) -> None:
    counts = [1, 4, 2, 7, 1, 1, 3, 5, 2, 6]
    seg, blob, batches = segment_of(counts, base=200, interval=interval)
    index = parse_index(seg.index)
    positions = [b.position for b in batches]
    assert index.entries[0].position == HEADER_SIZE and index.entries[0].offset == 200
    if interval == 0:
        assert [e.position for e in index.entries] == positions  # an entry per batch
    for a, b in zip(index.entries, index.entries[1:], strict=False):
        # the next entry is the first batch boundary `interval` or more bytes further
        assert b.position - a.position >= interval
        skipped = [p for p in positions if a.position < p < b.position]
        assert all(p - a.position < interval for p in skipped)
    for offset in range(200, seg.next_offset):
        target = containing(batches, offset)
        span = span_for_offset(index, offset)
        assert span is not None
        pos = find_position(index, offset)
        assert pos == span.position <= target.position < span.end
        if interval == 0:
            assert pos == target.position
        # Reading the span alone is enough to serve the offset.
        in_span = parse_batches(blob[span.position : span.end])
        assert any(b.base_offset <= offset <= b.last_offset for b in in_span)
    assert find_position(index, 10) == HEADER_SIZE  # below the segment: its start
    assert find_position(index, seg.next_offset) == index.batches_end
    assert span_for_offset(index, seg.next_offset) is None


# --- index: timestamps ---------------------------------------------------------------------


def brute_force(batches: list[BatchInfo], blob: bytes, ts: int) -> int | None:
    """Kafka's answer: the offset of the first record with a timestamp >= ts."""
    for b in batches:
        for r in iter_records(blob[b.position : b.end]):
            if r.timestamp >= ts:
                return r.offset
    return None


STAMPS = [
    [T0 + 10, T0 + 30, T0 + 20],  # not sorted within a batch
    [T0 + 5],  # older than the batch before
    [T0 + 50, T0 + 40],
    [T0 + 45, T0 + 45, T0 + 45, T0 + 46],
    [T0 + 100],
    [T0 + 60, T0 + 200],
]


@pytest.mark.parametrize("interval", [0, 150, 300, 500, 1 << 20])
def test_find_by_timestamp_against_brute_force(interval: int) -> None:
    seg, blob, batches = segment_of(
        [len(s) for s in STAMPS], base=0, interval=interval, stamps=STAMPS
    )
    index = parse_index(seg.index)
    assert index.max_timestamp == seg.max_timestamp == T0 + 200
    assert [e.max_timestamp for e in index.entries] == sorted(
        e.max_timestamp for e in index.entries
    )
    for ts in range(T0, T0 + 202):
        exact = brute_force(batches, blob, ts)
        found = find_by_timestamp(index, ts)
        span = span_for_timestamp(index, ts)
        if exact is None:
            assert found is None and span is None
            continue
        assert span is not None and found == span.offset
        first_batch = next(b for b in batches if b.max_timestamp >= ts)
        assert found <= first_batch.base_offset <= exact  # a lower bound, never past it
        assert span.position <= first_batch.position < span.end
        if interval == 0:
            assert found == first_batch.base_offset  # exact to the batch
        assert scan_for_timestamp(blob[span.position : span.end], ts) == exact
    assert find_by_timestamp(index, T0 + 201) is None
    assert find_by_timestamp(index, -1) == 0


def test_scan_for_timestamp_answers_compressed_batches_at_batch_granularity() -> None:
    stamps = [[T0 + 1, T0 + 2], [T0 + 3, T0 + 9, T0 + 4]]
    _, blob, batches = segment_of([2, 3], base=10, stamps=stamps, gzip_every=2)
    body = blob[HEADER_SIZE:-FOOTER_SIZE]
    assert batches[0].compression is Compression.GZIP
    assert scan_for_timestamp(body, T0 + 2) == 10  # inside the gzip batch: its base offset
    assert scan_for_timestamp(body, T0 + 4) == 13  # uncompressed: the exact record
    assert scan_for_timestamp(body, T0 + 10) is None


def test_timestamps_absent() -> None:
    seg, _, _ = segment_of([2], stamps=[[-1, -1]])
    index = parse_index(seg.index)
    assert seg.max_timestamp == index.max_timestamp == -1
    assert find_by_timestamp(index, 0) is None


def test_generated_index_codec_round_trips() -> None:
    seg, _, _ = segment_of([1, 2, 3], interval=0)
    index = parse_index(seg.index)
    assert isinstance(index, SegmentIndex)
    assert SegmentIndex.decode(index.encode(0), 0) == index
    assert index.encode(0) == seg.index


def test_keys_with_the_writers_tag() -> None:
    from kafscale.storage.segment import epoch_of, writer_tag

    key = segment_key("ns", "orders", 3, 42, writer_tag(7, "00ff"))
    assert key == "ns/orders/3/segment-00000000000000000042-e7-00ff.kfs"
    assert index_key("ns", "orders", 3, 42, "e7-00ff") == key.removesuffix(".kfs") + ".index"
    assert (base_offset_of(key), epoch_of(key)) == (42, 7)
    assert epoch_of(segment_key("ns", "orders", 3, 42)) is None
    with pytest.raises(ValueError):
        writer_tag(1, "not hex")
    keys = [segment_key("n", "t", 0, b, writer_tag(e, "a")) for b, e in ((10, 2), (9, 1), (100, 3))]
    assert [base_offset_of(k) for k in sorted(keys)] == [9, 10, 100]


def test_the_footer_checksum_is_zlibs_crc32_computed_by_zlib_ng() -> None:
    """The footer CRC is zlib's CRC-32 (IEEE), computed by zlib-ng (a dependency: the system
    zlib's is ~13x slower), chained across a segment's chunks exactly as zlib chains it."""
    import random

    import zlib_ng.zlib_ng

    from kafscale.storage import segment

    assert segment.crc32 is zlib_ng.zlib_ng.crc32
    rng = random.Random(7)
    data = rng.randbytes(300_000)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    crc = 0
    for start, end in itertools.pairwise([0, *cuts, len(data)]):
        crc = segment.crc32(data[start:end], crc)
    assert crc == zlib.crc32(data)
    assert segment.crc32(b"") == zlib.crc32(b"") == 0
