"""Kafka v2 record batches (magic 2): validate, assign offsets, iterate records, build (sans-io).

A Produce request carries each partition's records as one opaque buffer of record batches; the
broker validates them here, gives them offsets and stores them byte for byte. The layout
(Kafka's ``DefaultRecordBatch``; all integers big-endian)::

    offset  size  field
         0     8  baseOffset            rewritten by the broker (not covered by the CRC)
         8     4  batchLength           bytes after this field: size = batchLength + 12
        12     4  partitionLeaderEpoch  not covered by the CRC either
        16     1  magic                 2
        17     4  crc                   CRC-32C of bytes 21 .. end
        21     2  attributes            codec (bits 0-2), timestamp type (3), transactional (4),
                                        control (5)
        23     4  lastOffsetDelta
        27     8  baseTimestamp         (Kafka calls it firstTimestamp)
        35     8  maxTimestamp
        43     8  producerId
        51     2  producerEpoch
        53     4  baseSequence
        57     4  recordsCount
        61     .  records (compressed as one block when the codec is not 0)

A record (inside the records block, after decompression) is: length varint, attributes int8,
timestampDelta varlong, offsetDelta varint, key (varint length, -1 null), value (same), header
count varint, then per header a key (varint length + UTF-8) and a value (varint length, -1
null). Every varint here is zigzag-encoded.

Nothing in this module copies record data: CRCs run over ``memoryview`` slices, offsets are
assigned by emitting a new 8-byte prefix next to a view of the rest of the batch
(:func:`assign_offsets`), and decoded keys and values are views of the input.

Error codes follow Kafka's broker where it is precise. One deliberate difference: Kafka reports
some structural problems (a batch length below the header size, a magic above 2) as
CORRUPT_MESSAGE, which its clients treat as retriable, so a malformed batch would be resent
until the delivery timeout. Here CORRUPT_MESSAGE means only "the CRC does not match" (a transfer
error that a retry may fix) and every structural problem is INVALID_RECORD (not retriable).
"""

from __future__ import annotations

import enum
import gzip
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, cast

import crc32c

from generated.errors import ErrorCode
from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.wire import Buffer, read_uvarint, read_varint, read_varlong, varint, varlong

DEFAULT_MAX_BATCH_BYTES = 1048588
"""Kafka's default ``message.max.bytes`` (1 MiB + the 12-byte log overhead). It limits a batch's
whole size, the 12 bytes of base offset and length included (Kafka: ``sizeInBytes``)."""

LOG_OVERHEAD = 12
"""baseOffset + batchLength: the bytes of a batch that its ``batchLength`` does not count."""
RECORD_BATCH_OVERHEAD = 61
"""Size of a batch with no records (the header up to and including recordsCount)."""
MIN_RECORD_SIZE = 7
"""Smallest possible record: a one-byte length and six one-byte fields (attributes, timestamp
delta, offset delta, key length, value length, header count)."""
MAGIC = 2

_MAGIC_AT = 16
_CRC_AT = 17
_ATTRIBUTES_AT = 21  # the CRC covers everything from here to the end of the batch
_MAX_TIMESTAMP_AT = 35
_HEADER = struct.Struct(">qiibIhiqqqhii")  # the whole 61-byte batch header
_OFFSET = struct.Struct(">q")
_OFFSET_LENGTH_EPOCH = struct.Struct(">qii")
_LENGTH = struct.Struct(">i")
_INT8_MAX = 0x7F

_CODEC_MASK = 0x07
_TIMESTAMP_TYPE_MASK = 0x08
_TRANSACTIONAL_MASK = 0x10
_CONTROL_MASK = 0x20

NO_TIMESTAMP = -1
NO_PRODUCER_ID = -1


class Compression(enum.IntEnum):
    """Codec ids of the attributes' low three bits (5-7 are undefined)."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


class TimestampType(enum.IntEnum):
    """Attribute bit 3: who set the batch's timestamps."""

    CREATE_TIME = 0
    LOG_APPEND_TIME = 1


class RecordError(ProtocolError):
    """A record batch the broker must refuse; ``error_code`` is the Kafka error to answer with
    (``ErrorCode.CORRUPT_MESSAGE``: the CRC-32C does not match the bytes;
    ``MESSAGE_TOO_LARGE``: larger than ``message.max.bytes``; ``INVALID_RECORD``: the batch or a
    record in it is malformed) and ``offset`` the byte position in the buffer where the problem
    is."""

    def __init__(
        self, reason: str, error_code: int = ErrorCode.INVALID_RECORD, offset: int | None = None
    ):
        super().__init__(reason, message="RecordBatch", offset=offset)
        self.error_code = error_code


class CompressedBatchError(ValueError):
    """:func:`iter_records` was given a compressed batch: this module does not decompress
    (a reader that needs records from one answers at batch granularity instead)."""


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """The header fields of one validated batch, and where it is in its buffer."""

    position: int
    """Byte offset of the batch in the buffer (where its baseOffset starts)."""
    size: int
    """Total bytes of the batch, the 12-byte baseOffset + batchLength prefix included."""
    base_offset: int
    last_offset_delta: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    attributes: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    partition_leader_epoch: int

    @property
    def compression(self) -> Compression:
        return Compression(self.attributes & _CODEC_MASK)

    @property
    def timestamp_type(self) -> TimestampType:
        return TimestampType((self.attributes & _TIMESTAMP_TYPE_MASK) >> 3)

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & _TRANSACTIONAL_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & _CONTROL_MASK)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        """The offset that follows this batch: offsets are consumed up to lastOffsetDelta."""
        return self.base_offset + self.last_offset_delta + 1

    @property
    def end(self) -> int:
        """Byte offset just past the batch."""
        return self.position + self.size


def _view(data: Buffer) -> memoryview:
    """A flat byte view of ``data`` (no copy), whatever format a memoryview came in."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def parse_batches(
    data: Buffer,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    *,
    produce: bool = False,
    verify_records: bool = True,
) -> list[BatchInfo]:
    """Validate every record batch in ``data`` and describe each; raise :class:`RecordError`
    at the first problem.

    ``data`` must be one or more complete v2 batches and nothing else (a trailing partial batch
    is an error: a produce request that does not fit its own length prefix was cut short).
    Each batch is checked in Kafka's order: layout and magic, size against ``max_batch_bytes``
    (MESSAGE_TOO_LARGE), CRC-32C (CORRUPT_MESSAGE), then the header fields: codec id, record
    count, ``lastOffsetDelta == recordsCount - 1``. With ``verify_records`` the records of an
    uncompressed batch are walked too (lengths only: each fits, there are exactly
    ``recordsCount`` of them and they end where the batch ends), as Kafka's LogValidator does
    when it iterates them. Compressed payloads are not decompressed.

    ``produce`` adds the rules Kafka applies to batches from a client (Produce v3+,
    ``ProduceRequest.validateRecords`` and ``LogValidator.validateBatch`` with origin CLIENT):
    exactly one batch, base offset 0, at least one record, no control batch, and a base
    sequence >= 0 when a producer id is set. Batches read back from storage are checked
    without them (their base offsets are assigned ones).
    """
    view = _view(data)
    total = len(view)
    if total == 0:
        raise RecordError("no record batch: the records are empty", offset=0)
    batches: list[BatchInfo] = []
    pos = 0
    while pos < total:
        batch = _parse_one(view, pos, len(batches), max_batch_bytes, produce, verify_records)
        batches.append(batch)
        pos = batch.end
    return batches


def _parse_one(
    view: memoryview,
    pos: int,
    index: int,
    max_batch_bytes: int,
    produce: bool,
    verify_records: bool,
) -> BatchInfo:
    left = len(view) - pos
    what = f"batch {index}"
    if left <= _MAGIC_AT:
        raise RecordError(
            f"{what}: {left} trailing bytes are not a whole record batch (a batch header is "
            f"{RECORD_BATCH_OVERHEAD} bytes)",
            offset=pos,
        )
    (length,) = _LENGTH.unpack_from(view, pos + 8)
    magic = view[pos + _MAGIC_AT]
    if magic > _INT8_MAX:
        magic -= 0x100  # magic is a signed int8
    if magic in (0, 1):
        raise RecordError(
            f"{what}: message format v0/v1 (magic {magic}) is not supported; use a client that "
            "sends record batch v2 (Produce v3+)",
            offset=pos + _MAGIC_AT,
        )
    if magic != MAGIC:
        raise RecordError(f"{what}: unknown magic {magic} (expected 2)", offset=pos + _MAGIC_AT)
    size = length + LOG_OVERHEAD
    if size < RECORD_BATCH_OVERHEAD:
        raise RecordError(
            f"{what}: batchLength {length} is less than the "
            f"{RECORD_BATCH_OVERHEAD - LOG_OVERHEAD}-byte batch header",
            offset=pos + 8,
        )
    if size > left:
        raise RecordError(
            f"{what}: batchLength {length} runs past the end of the records ({left} bytes left, "
            f"the batch needs {size})",
            offset=pos + 8,
        )
    if produce and size != left:
        # Produce v3+ carries exactly one batch per partition, filling its records: a second
        # batch, trailing bytes or a wrong batchLength. Checked before the CRC, which over the
        # wrong extent would fail and report a retriable error for a malformed request.
        raise RecordError(
            f"{what}: batchLength {length} makes a {size}-byte batch, but the records are "
            f"{left} bytes: Produce v3+ carries exactly one record batch per partition",
            offset=pos + 8,
        )
    if size > max_batch_bytes:
        raise RecordError(
            f"{what}: the batch is {size} bytes, more than the {max_batch_bytes} allowed "
            "(message.max.bytes)",
            ErrorCode.MESSAGE_TOO_LARGE,
            offset=pos,
        )
    end = pos + size
    (
        base_offset,
        _length,
        leader_epoch,
        _magic,
        stored_crc,
        attributes,
        last_offset_delta,
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    ) = _HEADER.unpack_from(view, pos)
    computed = crc32c.crc32c(view[pos + _ATTRIBUTES_AT : end])
    if computed != stored_crc:
        raise RecordError(
            f"{what}: CRC-32C mismatch (stored {stored_crc:#010x}, computed {computed:#010x})",
            ErrorCode.CORRUPT_MESSAGE,
            offset=pos + _CRC_AT,
        )
    # From here on the bytes are what the client meant to send: what is wrong is malformed.
    if produce and base_offset != 0:
        raise RecordError(
            f"{what}: base offset {base_offset} of a produced batch must be 0", offset=pos
        )
    codec = attributes & _CODEC_MASK
    if codec > Compression.ZSTD:
        raise RecordError(f"{what}: unknown compression codec {codec}", offset=pos + _ATTRIBUTES_AT)
    payload = size - RECORD_BATCH_OVERHEAD
    if count < 0 or (codec == Compression.NONE and count * MIN_RECORD_SIZE > payload):
        raise RecordError(
            f"{what}: impossible recordsCount {count} for {payload} bytes of records",
            offset=pos + RECORD_BATCH_OVERHEAD - 4,
        )
    if last_offset_delta < 0 or (count and last_offset_delta != count - 1):
        raise RecordError(
            f"{what}: lastOffsetDelta {last_offset_delta} does not match recordsCount {count}",
            offset=pos + _ATTRIBUTES_AT + 2,
        )
    if produce:
        if count == 0:
            raise RecordError(f"{what}: a produced batch must hold at least one record", offset=pos)
        if attributes & _CONTROL_MASK:
            raise RecordError(f"{what}: clients may not write control batches", offset=pos)
        if producer_id >= 0 and base_sequence < 0:
            raise RecordError(
                f"{what}: base sequence {base_sequence} with producer id {producer_id}",
                offset=pos + 53,
            )
    if verify_records and codec == Compression.NONE:
        _walk_records(view[pos + RECORD_BATCH_OVERHEAD : end], count, what, pos)
    return BatchInfo(
        position=pos,
        size=size,
        base_offset=base_offset,
        last_offset_delta=last_offset_delta,
        record_count=count,
        first_timestamp=first_timestamp,
        max_timestamp=max_timestamp,
        attributes=attributes,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        partition_leader_epoch=leader_epoch,
    )


def _walk_records(records: memoryview, count: int, what: str, batch_pos: int) -> None:
    """Check that ``count`` records, skipped by their length prefixes, fill ``records`` exactly.

    The hot loop of produce validation for uncompressed batches: one varint per record, read
    inline when it is one byte (a record of up to 63 bytes) or two (up to 8191 bytes: the
    common 64 B - 8 KiB records); longer ones go through the wire reader, which bounds them.
    """
    base = batch_pos + RECORD_BATCH_OVERHEAD
    end = len(records)
    buf = cast(bytes, records)  # the varint reader only indexes: a memoryview works as well
    pos = 0
    seen = 0
    try:
        while pos < end:
            start = pos
            b = records[pos]
            if b < 0x80:
                raw = b
                pos += 1
            else:
                b2 = records[pos + 1]  # IndexError past the end: malformed, as below
                if b2 < 0x80:
                    raw = (b & 0x7F) | (b2 << 7)
                    pos += 2
                else:
                    raw, pos = read_uvarint(buf, pos)  # still zigzag-encoded
            length = (raw >> 1) ^ -(raw & 1)
            if length < MIN_RECORD_SIZE - 1 or length > end - pos:
                raise RecordError(
                    f"{what}: record {seen} has length {length} ({end - pos} bytes left)",
                    offset=base + start,
                )
            pos += length
            seen += 1
    except (IndexError, ProtocolError) as e:
        if isinstance(e, RecordError):
            raise
        raise RecordError(
            f"{what}: record {seen} has a malformed length", offset=base + pos
        ) from None
    if seen != count:
        raise RecordError(
            f"{what}: recordsCount is {count} but the batch holds {seen} records",
            offset=batch_pos + RECORD_BATCH_OVERHEAD - 4,
        )


class AssignedOffsets(NamedTuple):
    """What :func:`assign_offsets` returns (unpacks as ``chunks, batches, next_offset``)."""

    chunks: list[Buffer]
    """Per batch: its new header prefix (bytes), then a view of the rest of the batch."""
    batches: list[BatchInfo]
    """The batches with their new base offsets, positions relative to the joined chunks."""
    next_offset: int
    """The offset after the last assigned one (the new log end offset)."""


def assign_offsets(
    data: Buffer,
    batches: Sequence[BatchInfo],
    first_offset: int,
    *,
    partition_leader_epoch: int | None = None,
) -> AssignedOffsets:
    """Give ``batches`` (from :func:`parse_batches` of ``data``) consecutive offsets from
    ``first_offset``, without copying them.

    Batch ``i`` gets ``first_offset`` plus the offsets the earlier batches take
    (``lastOffsetDelta + 1`` each). The CRC starts at the attributes, so neither the base
    offset nor the partition leader epoch is covered: each batch becomes a fresh 8-byte base
    offset (16 bytes with its length and the new epoch, when ``partition_leader_epoch`` is
    given, as Kafka's leader stamps it) followed by a memoryview of the untouched rest, and the
    stored CRC stays valid. Joined, the chunks are the batches in order, back to back.
    """
    if first_offset < 0:
        raise ValueError(f"first offset {first_offset} is negative")
    view = _view(data)
    chunks: list[Buffer] = []
    out: list[BatchInfo] = []
    offset = first_offset
    position = 0
    for b in batches:
        if b.end > len(view):
            raise ValueError(f"batch at {b.position} ({b.size} bytes) is outside the data")
        epoch = b.partition_leader_epoch
        if partition_leader_epoch is None:
            head = _OFFSET.pack(offset)
        else:
            epoch = partition_leader_epoch
            head = _OFFSET_LENGTH_EPOCH.pack(offset, b.size - LOG_OVERHEAD, epoch)
        chunks.append(head)
        chunks.append(view[b.position + len(head) : b.end])
        out.append(replace(b, position=position, base_offset=offset, partition_leader_epoch=epoch))
        position += b.size
        offset += b.last_offset_delta + 1
    return AssignedOffsets(chunks, out, offset)


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded record; ``key``, ``value`` and header values are views of the batch bytes
    (they compare equal to ``bytes``; ``bytes(record.value)`` copies)."""

    offset: int
    timestamp: int
    key: memoryview | None
    value: memoryview | None
    headers: tuple[tuple[str, memoryview | None], ...] = ()


def iter_records(batch: Buffer) -> Iterator[Record]:
    """The records of one batch (exactly the bytes of one batch, as validated by
    :func:`parse_batches`), decompressed if need be: absolute offsets (base offset + delta) and
    timestamps (for a LOG_APPEND_TIME batch, its max timestamp, as Kafka's reader gives).

    Raises :class:`CompressedBatchError` when the records cannot be decompressed and
    :class:`RecordError` (INVALID_RECORD) for a malformed record. The CRC is not checked again.
    """
    view = _view(batch)
    if len(view) < RECORD_BATCH_OVERHEAD:
        raise RecordError(f"{len(view)} bytes are not a record batch", offset=0)
    (
        base_offset,
        length,
        _epoch,
        magic,
        _crc,
        attributes,
        _delta,
        first_timestamp,
        max_timestamp,
        _pid,
        _epoch2,
        _seq,
        count,
    ) = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise RecordError(f"magic {magic} is not 2", offset=_MAGIC_AT)
    if length + LOG_OVERHEAD != len(view):
        raise RecordError(f"batchLength {length} does not match the {len(view)} bytes", offset=8)
    codec = attributes & _CODEC_MASK
    if codec:
        view = memoryview(bytes(view[:RECORD_BATCH_OVERHEAD]) + decompress(codec, view))
    log_append = bool(attributes & _TIMESTAMP_TYPE_MASK)
    return _records(
        view, base_offset, first_timestamp, max_timestamp if log_append else None, count
    )


_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_BLOCK_SIZE = struct.Struct(">i")


def decompress(codec: int, batch: memoryview) -> bytes:
    """The records section of a compressed batch, decompressed (gzip from the standard library,
    snappy/lz4/zstd with cramjam). Kafka's snappy is xerial-framed: a magic header, then
    length-prefixed raw snappy blocks. :class:`CompressedBatchError` if it cannot be read."""
    payload = bytes(batch[RECORD_BATCH_OVERHEAD:])
    try:
        if codec == Compression.GZIP:
            return gzip.decompress(payload)
        import cramjam

        if codec == Compression.SNAPPY:
            if not payload.startswith(_XERIAL_MAGIC):
                return bytes(cramjam.snappy.decompress_raw(payload))
            out = bytearray()
            pos = len(_XERIAL_MAGIC) + 8  # magic, then version and compatible version
            while pos < len(payload):
                (size,) = _BLOCK_SIZE.unpack_from(payload, pos)
                out += bytes(cramjam.snappy.decompress_raw(payload[pos + 4 : pos + 4 + size]))
                pos += 4 + size
            return bytes(out)
        if codec == Compression.LZ4:
            return bytes(cramjam.lz4.decompress(payload))
        if codec == Compression.ZSTD:
            return bytes(cramjam.zstd.decompress(payload))
    except Exception as e:  # corrupt data, or a codec library missing
        raise CompressedBatchError(f"cannot decompress the batch: {e}") from None
    raise CompressedBatchError(f"unknown compression codec {codec}")


def _records(
    view: memoryview, base_offset: int, first_timestamp: int, append_time: int | None, count: int
) -> Iterator[Record]:
    buf = cast(bytes, view)  # the wire readers only index and slice: a memoryview works
    end = len(view)
    pos = RECORD_BATCH_OVERHEAD
    for i in range(count):
        start = pos
        try:
            length, pos = read_varint(buf, pos)
            record_end = pos + length
            if length < MIN_RECORD_SIZE - 1 or record_end > end:
                raise RecordError(f"record {i} has length {length}", offset=start)
            pos += 1  # attributes: unused in v2
            ts_delta, pos = read_varlong(buf, pos)
            offset_delta, pos = read_varint(buf, pos)
            key, pos = _bytes_field(view, pos, record_end, f"record {i} key")
            value, pos = _bytes_field(view, pos, record_end, f"record {i} value")
            n_headers, pos = read_varint(buf, pos)
            if n_headers < 0 or n_headers > record_end - pos:
                raise RecordError(f"record {i} has {n_headers} headers", offset=pos)
            headers = []
            for h in range(n_headers):
                hkey, pos = _bytes_field(view, pos, record_end, f"record {i} header {h} key")
                if hkey is None:
                    raise RecordError(f"record {i} header {h} has a null key", offset=pos)
                hvalue, pos = _bytes_field(view, pos, record_end, f"record {i} header {h} value")
                headers.append((str(hkey, "utf-8"), hvalue))
        except (IndexError, UnicodeDecodeError) as e:
            raise RecordError(f"record {i} is malformed ({e})", offset=start) from None
        except RecordError:
            raise
        except ProtocolError as e:  # an over-long varint
            raise RecordError(f"record {i}: {e.reason}", offset=e.offset) from None
        if pos != record_end:
            raise RecordError(
                f"record {i}: its fields take {pos - (record_end - length)} bytes, its length "
                f"says {length}",
                offset=start,
            )
        yield Record(
            offset=base_offset + offset_delta,
            timestamp=first_timestamp + ts_delta if append_time is None else append_time,
            key=key,
            value=value,
            headers=tuple(headers),
        )
    if pos != end:
        raise RecordError(f"{end - pos} bytes follow the last of {count} records", offset=pos)


def _bytes_field(
    view: memoryview, pos: int, limit: int, what: str
) -> tuple[memoryview | None, int]:
    n, pos = read_varint(cast(bytes, view), pos)
    if n < 0:
        if n != -1:
            raise RecordError(f"{what} has length {n}", offset=pos)
        return None, pos
    if n > limit - pos:
        raise RecordError(f"{what} length {n} runs past the record", offset=pos)
    return view[pos : pos + n], pos + n


_XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)  # version 1, compatible with 1
_XERIAL_BLOCK = 32 * 1024  # uncompressed bytes per block, as Kafka's Java client writes them


def compress(codec: int, data: bytes, level: int | None = None) -> bytes:
    """``data`` (a batch's records section) compressed as Kafka clients write it: gzip (level -1
    or None: zlib's default), snappy in xerial framing (the Java client's), lz4 frames, zstd
    frames. NONE returns ``data``. ``level`` as Kafka's compression.<codec>.level."""
    if codec == Compression.NONE:
        return data
    if codec == Compression.GZIP:
        gzip_level = 6 if level is None or level < 0 else level
        return gzip.compress(data, compresslevel=gzip_level, mtime=0)  # mtime 0: reproducible
    import cramjam

    if codec == Compression.SNAPPY:
        out = bytearray(_XERIAL_HEADER)
        for start in range(0, len(data), _XERIAL_BLOCK) or [0]:
            block = bytes(cramjam.snappy.compress_raw(data[start : start + _XERIAL_BLOCK]))
            out += _BLOCK_SIZE.pack(len(block)) + block
        return bytes(out)
    if codec == Compression.LZ4:
        return bytes(cramjam.lz4.compress(data, level=9 if level is None else level))
    if codec == Compression.ZSTD:
        return bytes(cramjam.zstd.compress(data, level=3 if level is None else level))
    raise ValueError(f"unknown compression codec {codec}")


def rewrite_batch(
    batch: Buffer,
    *,
    compression: int | None = None,
    level: int | None = None,
    timestamp_type: int | None = None,
    max_timestamp: int | None = None,
) -> bytes:
    """A copy of one validated batch (its exact bytes) with its records re-compressed into
    ``compression`` (with ``level``) and/or its timestamp type and max timestamp replaced, its
    length and CRC-32C recomputed: what Kafka's broker does for a topic's compression.type and
    message.timestamp.type=LogAppendTime (``DefaultRecordBatch.setMaxTimestamp``). Records,
    producer fields and base timestamp are kept. Raises :class:`CompressedBatchError` when the
    records cannot be decompressed."""
    view = _view(batch)
    header = bytearray(view[:RECORD_BATCH_OVERHEAD])
    (attributes,) = struct.unpack_from(">h", header, _ATTRIBUTES_AT)
    codec = attributes & _CODEC_MASK
    payload: Buffer = view[RECORD_BATCH_OVERHEAD:]
    if compression is not None and compression != codec:
        records = decompress(codec, view) if codec else bytes(payload)
        payload = compress(compression, records, level)
        attributes = (attributes & ~_CODEC_MASK) | compression
    if timestamp_type is not None:
        attributes = (attributes & ~_TIMESTAMP_TYPE_MASK) | (timestamp_type << 3)
    struct.pack_into(">h", header, _ATTRIBUTES_AT, attributes)
    if max_timestamp is not None:
        struct.pack_into(">q", header, _MAX_TIMESTAMP_AT, max_timestamp)
    _LENGTH.pack_into(header, 8, RECORD_BATCH_OVERHEAD - LOG_OVERHEAD + len(payload))
    crc = crc32c.crc32c(payload, value=crc32c.crc32c(memoryview(header)[_ATTRIBUTES_AT:]))
    struct.pack_into(">I", header, _CRC_AT, crc)
    return bytes(header) + bytes(payload)


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record for :func:`build_batch`; ``timestamp`` None takes the batch's ``timestamp``."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] = ()
    timestamp: int | None = None


def build_batch(
    records: Iterable[NewRecord | bytes],
    base_offset: int = 0,
    compression: int = Compression.NONE,
    *,
    timestamp: int = 1_700_000_000_000,
    timestamp_type: int = TimestampType.CREATE_TIME,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    partition_leader_epoch: int = -1,
    transactional: bool = False,
    control: bool = False,
) -> bytes:
    """A valid v2 batch of ``records`` (a plain ``bytes`` is a value without key), as a client
    would send it: offset deltas 0..n-1, timestamp deltas from the first record, the CRC.

    For tests and tools; any codec (:func:`compress`). No records gives an empty batch (count 0,
    timestamps -1), as Kafka writes them.
    """
    items = [r if isinstance(r, NewRecord) else NewRecord(r) for r in records]
    stamps = [timestamp if r.timestamp is None else r.timestamp for r in items]
    first_ts = stamps[0] if items else NO_TIMESTAMP
    body = bytearray()
    for delta, (r, ts) in enumerate(zip(items, stamps, strict=True)):
        rec = bytearray(b"\x00")  # attributes
        rec += varlong(ts - first_ts)
        rec += varint(delta)
        for field in (r.key, r.value):
            if field is None:
                rec += varint(-1)
            else:
                rec += varint(len(field)) + field
        rec += varint(len(r.headers))
        for hkey, hvalue in r.headers:
            raw = hkey.encode()
            rec += varint(len(raw)) + raw
            rec += varint(-1) if hvalue is None else varint(len(hvalue)) + hvalue
        body += varint(len(rec)) + rec
    payload = compress(compression, bytes(body))
    attributes = compression | (timestamp_type << 3)
    if transactional:
        attributes |= _TRANSACTIONAL_MASK
    if control:
        attributes |= _CONTROL_MASK
    header = bytearray(
        _HEADER.pack(
            base_offset,
            RECORD_BATCH_OVERHEAD - LOG_OVERHEAD + len(payload),
            partition_leader_epoch,
            MAGIC,
            0,  # the CRC, filled in below
            attributes,
            max(len(items) - 1, 0),
            first_ts,
            max(stamps) if items else NO_TIMESTAMP,
            producer_id,
            producer_epoch,
            base_sequence,
            len(items),
        )
    )
    crc = crc32c.crc32c(payload, value=crc32c.crc32c(memoryview(header)[_ATTRIBUTES_AT:]))
    struct.pack_into(">I", header, _CRC_AT, crc)
    return bytes(header) + payload
