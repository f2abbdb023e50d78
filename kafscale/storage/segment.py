"""KafScale segment objects and their sparse indexes (sans-io: buffers in, buffers out).

A segment is one immutable object holding a run of a partition's record batches with
consecutive offsets; its ``.index`` object beside it lets a reader find an offset's or a
timestamp's batch with a ranged GET instead of reading the whole segment. The byte layouts are
declared in ``protocol_specs/storage/`` (documented in its README) and encoded by the codecs
generated from them (``generated.storage``); this module builds and checks the objects.

    segment = build_segment(base, assigned.chunks, assigned.batches, created_ms=now_ms)
    await store.create(segment_key(ns, topic, p, base), segment.chunks)   # zero copy
    await store.create(index_key(ns, topic, p, base), segment.index)
"""

from __future__ import annotations

import bisect
import itertools
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from generated.storage.segment_footer import SegmentFooter
from generated.storage.segment_header import SegmentHeader
from generated.storage.segment_index import IndexEntry, SegmentIndex
from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.message import as_buffer
from kafscale.protocol.records import (
    NO_TIMESTAMP,
    BatchInfo,
    Compression,
    iter_records,
    parse_batches,
)
from kafscale.protocol.wire import Buffer

try:
    # The footer's checksum is zlib's CRC-32 (IEEE); zlib-ng computes the same one with the
    # CPU's carry-less multiply, ~13x faster than the system zlib here (0.02 vs 0.26-0.36 ms
    # per MB): every byte produced is checksummed by build_segment, and again by each
    # parse_segment (compaction, reads), ~8 % of the broker's CPU per produced MB otherwise.
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - a platform zlib-ng has no wheel for
    from zlib import crc32

HEADER_SIZE = 32
FOOTER_SIZE = 16
SEGMENT_MAGIC = SegmentHeader().magic  # "KAFS"
SEGMENT_VERSION = SegmentHeader().version  # 1
FOOTER_MAGIC = SegmentFooter().magic  # "END!"
INDEX_MAGIC = SegmentIndex().magic  # "IDX" + version 1
DEFAULT_INDEX_INTERVAL = 4096
MAX_SEGMENT_SIZE = 2**31 - 1
"""Index positions are int32: a segment object cannot be larger."""

_PREFIX = struct.Struct(">qi")  # a batch's baseOffset and batchLength
_V = 0  # every storage definition has the one version 0 ("validVersions": "0")
_SEGMENT_SUFFIX = ".kfs"
_INDEX_SUFFIX = ".index"
_KEY_RE = re.compile(r"segment-(\d{20})(?:-e(\d+)-[0-9a-f]+)?\.(?:kfs|index)")


class SegmentCorrupt(ValueError):
    """A segment or index object whose bytes are not what KafScale writes (bad magic, CRC,
    sizes, offsets): damaged in storage, or cut short on the way (a truncated download)."""


def segment_key(
    namespace: str, topic: str, partition: int, base_offset: int, writer: str | None = None
) -> str:
    """``{namespace}/{topic}/{partition}/segment-{base_offset:020d}-{writer}.kfs``: zero-padded
    so that keys sort (and list) in offset order. ``writer`` (see :func:`writer_tag`: the
    writer's leader epoch and a nonce unique to the upload) makes every upload's key new, so
    no upload ever replaces an object: not a deposed owner's late one (another epoch), and not
    a retry after a commit whose outcome was unknown (another nonce). ``writer`` None gives the
    plain name (segments written before ownership existed, still readable: readers follow the
    key each committed entry records)."""
    return _key(namespace, topic, partition, base_offset, writer) + _SEGMENT_SUFFIX


def index_key(
    namespace: str, topic: str, partition: int, base_offset: int, writer: str | None = None
) -> str:
    """The key of the segment's index: the segment key with ``.index`` for ``.kfs``."""
    return _key(namespace, topic, partition, base_offset, writer) + _INDEX_SUFFIX


def writer_tag(epoch: int, nonce: str) -> str:
    """``e{epoch}-{nonce}`` (nonce: lowercase hex)."""
    if epoch < 0 or not re.fullmatch(r"[0-9a-f]{1,32}", nonce):
        raise ValueError(f"bad writer tag parts: epoch {epoch}, nonce {nonce!r}")
    return f"e{epoch}-{nonce}"


def _key(namespace: str, topic: str, partition: int, base_offset: int, writer: str | None) -> str:
    if base_offset < 0 or partition < 0:
        raise ValueError(f"negative partition {partition} or base offset {base_offset}")
    tail = "" if writer is None else f"-{writer}"
    return f"{namespace}/{topic}/{partition}/segment-{base_offset:020d}{tail}"


_INGEST_RE = re.compile(r"(\d{13})-b(\d+)-l([0-9a-f]+)-([0-9a-f]+)\.kfi")


def ingest_key(
    namespace: str, broker_id: int, lease: int, nonce: str, now_ms: int | None = None
) -> str:
    """``{namespace}/ingest/{written_ms:013d}-b{broker_id}-l{lease:x}-{nonce}.kfi``: one flush
    cycle's data of many partitions, each partition's piece a complete KAFS segment at a byte
    range its committed entry records. The write time leads the name, so a listing says how
    old an object is without reading it; the writer's lease (0 without one) says whether its
    commit can still happen (only while that lease lives)."""
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    if broker_id < 0 or lease < 0 or not re.fullmatch(r"[0-9a-f]{1,32}", nonce):
        raise ValueError(f"bad ingest key parts: broker {broker_id}, lease {lease}, {nonce!r}")
    return f"{namespace}/ingest/{now_ms:013d}-b{broker_id}-l{lease:x}-{nonce}.kfi"


class IngestName(NamedTuple):
    written_ms: int
    broker_id: int
    lease: int


def parse_ingest_key(key: str) -> IngestName | None:
    """What an ingest object's key says; None when ``key`` is not one."""
    m = _INGEST_RE.fullmatch(key.rsplit("/", 1)[-1])
    if m is None:
        return None
    return IngestName(int(m.group(1)), int(m.group(2)), int(m.group(3), 16))


def ingest_written_ms(key: str) -> int | None:
    """When an ingest object was written (from its key); None when ``key`` is not one."""
    name = parse_ingest_key(key)
    return None if name is None else name.written_ms


def compacted_key(
    namespace: str, topic_id: str, partition: int, base_offset: int, writer: str
) -> str:
    """``{namespace}/topics/{topic_id}/{partition}/segment-{base_offset:020d}-{writer}.kfs``:
    a segment compaction wrote. Under the topic's id, not its name, so a deleted topic's
    segments are told apart from those of a topic created again under the same name."""
    if base_offset < 0 or partition < 0:
        raise ValueError(f"negative partition {partition} or base offset {base_offset}")
    return f"{namespace}/topics/{topic_id}/{partition}/segment-{base_offset:020d}-{writer}.kfs"


def epoch_of(key: str) -> int | None:
    """The writer's leader epoch in a segment or index key (None for the plain name)."""
    m = _KEY_RE.fullmatch(key.rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"{key!r} is not a segment or index key")
    return None if m.group(2) is None else int(m.group(2))


def base_offset_of(key: str) -> int:
    """The base offset in a segment or index key (what a listing of a prefix gives)."""
    m = _KEY_RE.fullmatch(key.rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"{key!r} is not a segment or index key")
    return int(m.group(1))


@dataclass(frozen=True, slots=True)
class Segment:
    """A built segment object, ready to upload: write ``chunks`` in order (``writelines``)."""

    base_offset: int
    last_offset: int
    chunks: list[Buffer]
    """The 32-byte header, the batch chunks as given (not copied), the 16-byte footer."""
    index: bytes
    """The ``.index`` object."""
    size: int
    """Bytes of the segment object (sum of the chunks' lengths)."""
    max_timestamp: int
    """Largest batch max timestamp (-1 when no batch has one)."""
    message_count: int
    """Records in the segment."""
    created_ms: int

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


def build_segment(
    base_offset: int,
    batch_chunks: Sequence[Buffer],
    batches: Sequence[BatchInfo],
    created_ms: int,
    index_interval: int = DEFAULT_INDEX_INTERVAL,
) -> Segment:
    """Frame batches whose offsets are assigned (``batch_chunks``, e.g. from
    ``assign_offsets``) as a segment object and build its index.

    ``batch_chunks`` joined are exactly ``batches`` in order, so batches assigned in several
    rounds can be concatenated. Of ``batches`` only sizes, offset deltas, record counts and
    timestamps are used: positions follow from the sizes, and offsets are read from the
    chunks themselves (the BatchInfos may still carry the client's base offset 0). Those must
    run without a gap from ``base_offset``, and every batch's length prefix must be where its
    size says: anything else is a broker bug that would lose or duplicate records, and raises
    ``ValueError`` before an object exists.

    Index entries: the first batch, then the first batch that starts ``index_interval`` or more
    bytes after the previous entry (0: every batch). Each entry's max timestamp is the largest
    batch max timestamp from the segment's start up to the next entry (see the README).
    """
    if not batches:
        raise ValueError("a segment needs at least one batch")
    if index_interval < 0:
        raise ValueError(f"index interval {index_interval} is negative")
    chunk_bytes = sum(_nbytes(c) for c in batch_chunks)
    batch_bytes = sum(b.size for b in batches)
    if chunk_bytes != batch_bytes:
        raise ValueError(f"the chunks hold {chunk_bytes} bytes, the batches {batch_bytes}")
    size = HEADER_SIZE + batch_bytes + FOOTER_SIZE
    if size > MAX_SEGMENT_SIZE:
        raise ValueError(f"a segment of {size} bytes does not fit int32 index positions")

    starts = list(itertools.accumulate((b.size for b in batches[:-1]), initial=0))
    heads = [_PREFIX.unpack(h) for h in _peek(batch_chunks, starts, _PREFIX.size)]
    entries: list[IndexEntry] = []
    expected = base_offset
    position = HEADER_SIZE
    max_ts = NO_TIMESTAMP
    count = 0
    for i, (b, (actual, length)) in enumerate(zip(batches, heads, strict=True)):
        if length != b.size - _PREFIX.size:
            raise ValueError(f"batch {i}: the chunks hold batchLength {length} where it is")
        if actual != expected:
            raise ValueError(
                f"batch {i} has base offset {actual} in its bytes, the segment needs {expected} "
                "(were its offsets assigned?)"
            )
        if not entries or position - entries[-1].position >= index_interval:
            if entries:
                entries[-1].max_timestamp = max_ts  # running max up to this entry
            entries.append(IndexEntry(offset=expected, position=position))
        max_ts = max(max_ts, b.max_timestamp)
        count += b.record_count
        expected += b.last_offset_delta + 1
        position += b.size
    entries[-1].max_timestamp = max_ts
    last_offset = expected - 1

    crc = 0
    for c in batch_chunks:
        crc = crc32(c, crc)
    header = SegmentHeader(
        base_offset=base_offset, message_count=count, created_ms=created_ms
    ).encode(_V)
    footer = SegmentFooter(crc=crc, last_offset=last_offset).encode(_V)
    index = SegmentIndex(
        interval=index_interval,
        base_offset=base_offset,
        last_offset=last_offset,
        max_timestamp=max_ts,
        batches_end=position,
        entries=entries,
    ).encode(_V)
    return Segment(
        base_offset=base_offset,
        last_offset=last_offset,
        chunks=[header, *batch_chunks, footer],
        index=index,
        size=size,
        max_timestamp=max_ts,
        message_count=count,
        created_ms=created_ms,
    )


def _peek(chunks: Sequence[Buffer], positions: Sequence[int], width: int) -> list[bytes]:
    """``width`` bytes at each of the ascending ``positions`` of the joined chunks, without
    joining them (a field may straddle chunks)."""
    out: list[bytes] = []
    i = 0
    pending = bytearray()
    start = 0  # position of the current chunk's first byte
    for chunk in chunks:
        view = _view(chunk)
        stop = start + len(view)
        while i < len(positions):
            at = positions[i] + len(pending)  # the next byte wanted
            if at >= stop:
                break
            take = min(width - len(pending), stop - at)
            pending += view[at - start : at - start + take]
            if len(pending) == width:
                out.append(bytes(pending))
                pending.clear()
                i += 1
        start = stop
    if i < len(positions):
        raise ValueError(f"the chunks end before byte {positions[i] + width}")
    return out


def _view(data: Buffer) -> memoryview:
    """A flat byte view of ``data``, without copying."""
    return memoryview(data).cast("B")


def _nbytes(chunk: Buffer) -> int:
    return chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)


@dataclass(frozen=True, slots=True)
class ParsedSegment:
    """A verified segment object; ``batches`` positions count from the object's start."""

    header: SegmentHeader
    footer: SegmentFooter
    batches: list[BatchInfo]
    data: memoryview

    @property
    def base_offset(self) -> int:
        return self.header.base_offset

    @property
    def last_offset(self) -> int:
        return self.footer.last_offset

    @property
    def message_count(self) -> int:
        return self.header.message_count

    @property
    def created_ms(self) -> int:
        return self.header.created_ms

    @property
    def max_timestamp(self) -> int:
        return max((b.max_timestamp for b in self.batches), default=NO_TIMESTAMP)

    def batch_bytes(self, batch: BatchInfo) -> memoryview:
        """The bytes of one of this segment's batches (a view, not a copy)."""
        return self.data[batch.position : batch.end]

    def records_from(self, offset: int) -> memoryview:
        """The batches from the one containing ``offset`` to the end (a view; empty past the
        last offset): what a fetch at ``offset`` sends, before its byte limits."""
        for b in self.batches:
            if b.last_offset >= offset:
                return self.data[b.position : len(self.data) - FOOTER_SIZE]
        return self.data[0:0]


def parse_segment(data: Buffer) -> ParsedSegment:
    """Check a whole segment object and describe its batches; :class:`SegmentCorrupt` names
    the first problem (magics, version, CRC-32 of the batches, each batch's own CRC-32C and
    layout, and that header, footer and batches agree on offsets and counts)."""
    view = _view(data)
    if len(view) < HEADER_SIZE + FOOTER_SIZE:
        raise SegmentCorrupt(f"{len(view)} bytes are too short for a segment")
    try:
        header = SegmentHeader.decode(view[:HEADER_SIZE], _V)
        footer = SegmentFooter.decode(view[len(view) - FOOTER_SIZE :], _V)
    except ProtocolError as e:  # cannot happen for fixed sizes, but never let it escape raw
        raise SegmentCorrupt(f"unreadable header or footer: {e}") from None
    if header.magic != SEGMENT_MAGIC:
        raise SegmentCorrupt(f"header magic {header.magic:#010x} is not KAFS")
    if header.version != SEGMENT_VERSION:
        raise SegmentCorrupt(f"segment format version {header.version} is not supported")
    if footer.magic != FOOTER_MAGIC:
        raise SegmentCorrupt(f"footer magic {footer.magic:#010x} is not END! (truncated?)")
    body = view[HEADER_SIZE : len(view) - FOOTER_SIZE]
    crc = crc32(body)
    if crc != footer.crc:
        raise SegmentCorrupt(
            f"CRC-32 of the batches is {crc:#010x}, the footer says {footer.crc:#010x}"
        )
    try:
        # The stored batches were validated on produce; their CRC-32Cs are checked again, but
        # not the record lengths, and no size limit applies to what is already stored.
        batches = parse_batches(body, MAX_SEGMENT_SIZE, verify_records=False)
    except ProtocolError as e:
        raise SegmentCorrupt(f"batches: {e}") from None
    expected = header.base_offset
    count = 0
    for i, b in enumerate(batches):
        if b.base_offset != expected:
            raise SegmentCorrupt(f"batch {i} has base offset {b.base_offset}, expected {expected}")
        expected = b.next_offset
        count += b.record_count
    if expected - 1 != footer.last_offset:
        raise SegmentCorrupt(
            f"footer last offset {footer.last_offset}, batches end at {expected - 1}"
        )
    if count != header.message_count:
        raise SegmentCorrupt(f"header message count {header.message_count}, batches hold {count}")
    batches = [replace(b, position=b.position + HEADER_SIZE) for b in batches]
    return ParsedSegment(header, footer, batches, view)


def parse_index(data: Buffer) -> SegmentIndex:
    """Decode and check an index object: :class:`SegmentCorrupt` unless the magic is right,
    there is at least one entry, the first is the segment's first batch, and offsets,
    positions and max timestamps never decrease."""
    try:
        index = SegmentIndex.decode(as_buffer(data), _V)
    except ProtocolError as e:
        raise SegmentCorrupt(f"unreadable index: {e}") from None
    if index.magic != INDEX_MAGIC:
        if index.magic >> 8 == INDEX_MAGIC >> 8:
            raise SegmentCorrupt(f"index format version {index.magic & 0xFF} is not supported")
        raise SegmentCorrupt(f"index magic {index.magic:#010x} is not IDX")
    entries = index.entries
    if not entries:
        raise SegmentCorrupt("the index has no entries")
    first = entries[0]
    if first.offset != index.base_offset or first.position != HEADER_SIZE:
        raise SegmentCorrupt(
            f"first entry ({first.offset} at {first.position}) is not the segment's first batch"
        )
    for a, b in itertools.pairwise(entries):
        if b.offset <= a.offset or b.position <= a.position or b.max_timestamp < a.max_timestamp:
            raise SegmentCorrupt(f"index entries out of order at offset {b.offset}")
    last = entries[-1]
    if last.offset > index.last_offset or last.position >= index.batches_end:
        raise SegmentCorrupt("the last entry lies past the segment's end")
    if last.max_timestamp != index.max_timestamp:
        raise SegmentCorrupt("the last entry's max timestamp is not the segment's")
    return index


class IndexSpan(NamedTuple):
    """A run of batches between two index entries: read bytes ``[position, end)`` of the
    segment (a ranged GET) and scan its batches."""

    offset: int
    """Base offset of the span's first batch."""
    position: int
    end: int
    """Where the next entry's batch starts, or the footer for the last span."""
    max_timestamp: int
    """Running max batch timestamp through the end of the span."""


def _span(index: SegmentIndex, i: int) -> IndexSpan:
    entries = index.entries
    e = entries[i]
    end = entries[i + 1].position if i + 1 < len(entries) else index.batches_end
    return IndexSpan(e.offset, e.position, end, e.max_timestamp)


def span_for_offset(index: SegmentIndex, offset: int) -> IndexSpan | None:
    """The span holding ``offset``'s batch (the entry with the largest offset <= ``offset``);
    the first span for an offset below the segment; None past the segment's last offset."""
    if offset > index.last_offset:
        return None
    i = bisect.bisect_right(index.entries, offset, key=_entry_offset) - 1
    return _span(index, max(i, 0))


def span_for_timestamp(index: SegmentIndex, timestamp: int) -> IndexSpan | None:
    """The span holding the first batch whose max timestamp is >= ``timestamp``, i.e. where the
    first record with a timestamp >= ``timestamp`` is (Kafka's ListOffsets by timestamp);
    None when every record of the segment is older (look in the next segment)."""
    if index.max_timestamp < timestamp:
        return None
    i = bisect.bisect_left(index.entries, timestamp, key=_entry_max_timestamp)
    return _span(index, i)


def find_position(index: SegmentIndex, offset: int) -> int:
    """Byte position (from the segment's start) where reading for ``offset`` starts: the
    batch of the largest index entry offset <= ``offset``; the batch holding ``offset`` is
    that one or one after it within the span. Past the last offset: ``index.batches_end``."""
    span = span_for_offset(index, offset)
    return index.batches_end if span is None else span.position


def find_by_timestamp(index: SegmentIndex, timestamp: int) -> int | None:
    """Offset of the index entry whose span holds the first record with a timestamp >=
    ``timestamp`` (None: none in this segment). Exact to the batch when the index has an
    entry per batch (interval 0); otherwise a lower bound, refined by
    :func:`scan_for_timestamp` over that span's bytes."""
    span = span_for_timestamp(index, timestamp)
    return None if span is None else span.offset


def scan_for_timestamp(data: Buffer, timestamp: int) -> int | None:
    """The offset of the first record with a timestamp >= ``timestamp`` in ``data``, whole
    batches as stored (e.g. a span's bytes): the exact record in an uncompressed batch, the
    batch's base offset in a compressed one (its records are not decompressed here). None when
    no batch reaches ``timestamp``."""
    view = _view(data)
    for b in parse_batches(view, MAX_SEGMENT_SIZE, verify_records=False):
        if b.max_timestamp < timestamp:
            continue
        if b.compression != Compression.NONE:
            return b.base_offset
        for record in iter_records(view[b.position : b.end]):
            if record.timestamp >= timestamp:
                return record.offset
        # A max timestamp no record reaches (a client's mistake): go on, as Kafka's
        # FileRecords.searchForTimestamp does.
    return None


def _entry_offset(e: IndexEntry) -> int:
    return e.offset


def _entry_max_timestamp(e: IndexEntry) -> int:
    return e.max_timestamp
