"""Wire primitives shared by the generated codecs (sans-io: buffers in, values out).

The generated modules inline the hot paths (one-byte varints, empty tag sections, fused
``struct.Struct`` formats); what is here is the slow path of each, kept in one place. Buffers
are ``memoryview`` objects of format ``B``: indexing gives an ``int``, slicing copies nothing.
"""

from __future__ import annotations

import itertools
import struct
import uuid
from collections.abc import Callable

from kafscale.protocol.errors import ProtocolError

Buffer = bytes | bytearray | memoryview
Writer = Callable[[Buffer], None]
"""Where encoders put their output: ``list.append`` of a chunk list (zero-copy scatter)."""

UnknownTags = list[tuple[int, bytes]]

INT8 = struct.Struct(">b")
INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")
INT64 = struct.Struct(">q")
UINT32 = struct.Struct(">I")

ZERO_UUID = uuid.UUID(int=0)

BOOL: dict[object, bool] = {False: False, True: True}
"""Encoders look bool fields up here: True/False (and 1/0) pass, anything else fails."""

UVARINT_1: tuple[bytes, ...] = tuple(bytes([i]) for i in range(128))
"""Encoded one-byte unsigned varints, indexed by value (the common case for lengths)."""

_uuid_new = object.__new__
_setattr = object.__setattr__
_from_bytes = int.from_bytes
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def _read_unsigned(buf: Buffer, pos: int, max_bytes: int, bits: int) -> tuple[int, int]:
    start = pos
    b = buf[pos]
    value = b & 0x7F
    shift = 7
    pos += 1
    limit = 7 * (max_bytes - 1)
    while b & 0x80:
        if shift > limit:
            raise ProtocolError(f"varint longer than {max_bytes} bytes", offset=start)
        b = buf[pos]
        value |= (b & 0x7F) << shift
        shift += 7
        pos += 1
    if value >> bits:
        raise ProtocolError(f"varint value {value} does not fit {bits} bits", offset=start)
    return value, pos


def read_uvarint(buf: Buffer, pos: int) -> tuple[int, int]:
    """Unsigned 32-bit varint at ``pos``: (value, next position). At most 5 bytes.

    The varint readers take any buffer (records are read from memoryviews): compiled, the
    annotation is checked at run time."""
    return _read_unsigned(buf, pos, 5, 32)


def read_uvarlong(buf: Buffer, pos: int) -> tuple[int, int]:
    """Unsigned 64-bit varint at ``pos``: (value, next position). At most 10 bytes."""
    return _read_unsigned(buf, pos, 10, 64)


def read_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """Zigzag-encoded signed 32-bit varint (record fields)."""
    raw, pos = read_uvarint(buf, pos)
    return (raw >> 1) ^ -(raw & 1), pos


def read_varlong(buf: Buffer, pos: int) -> tuple[int, int]:
    """Zigzag-encoded signed 64-bit varint (record fields)."""
    raw, pos = read_uvarlong(buf, pos)
    return (raw >> 1) ^ -(raw & 1), pos


def uvarint(value: int) -> bytes:
    """Encode an unsigned 32-bit varint (lengths, tags, counts)."""
    if 0 <= value < 0x80:
        return UVARINT_1[value]
    return _write_unsigned(value, 0xFFFFFFFF)


def uvarlong(value: int) -> bytes:
    """Encode an unsigned 64-bit varint."""
    return _write_unsigned(value, 0xFFFFFFFFFFFFFFFF)


def _write_unsigned(value: int, limit: int) -> bytes:
    if not 0 <= value <= limit:
        raise ProtocolError(f"unsigned varint cannot hold {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint(value: int) -> bytes:
    """Zigzag-encode a signed 32-bit varint."""
    if not -(2**31) <= value < 2**31:
        raise ProtocolError(f"varint cannot hold {value}")
    return uvarint(((value << 1) ^ (value >> 31)) & 0xFFFFFFFF)


def varlong(value: int) -> bytes:
    """Zigzag-encode a signed 64-bit varint."""
    if not -(2**63) <= value < 2**63:
        raise ProtocolError(f"varlong cannot hold {value}")
    return uvarlong(((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF)


def read_uuid(buf: bytes, pos: int) -> uuid.UUID:
    """16 bytes at ``pos`` as a UUID, built without ``UUID.__init__``'s argument parsing."""
    if pos + 16 > len(buf):
        raise ProtocolError("uuid runs past the end of the buffer", offset=pos)
    value = _from_bytes(buf[pos : pos + 16], "big")
    if not value:
        return ZERO_UUID
    u: uuid.UUID = _uuid_new(uuid.UUID)
    _setattr(u, "int", value)
    _setattr(u, "is_safe", _SAFE_UNKNOWN)
    return u


def too_long(what: str, length: int, left: int, pos: int) -> ProtocolError:
    """The error for a declared length that the remaining bytes cannot hold.

    Raised *before* anything is allocated, so a hostile length costs nothing.
    """
    return ProtocolError(f"{what} length {length} exceeds the {left} bytes left", offset=pos)


def null_error(what: str, pos: int) -> ProtocolError:
    return ProtocolError(f"null {what} where the field is not nullable", offset=pos)


def read_tag_section(buf: bytes, pos: int, known: frozenset[int]) -> tuple[UnknownTags | None, int]:
    """Read a tag section none of whose tags this version knows.

    Unknown tags are returned to be kept and re-emitted; a tag this struct defines for other
    versions is an error, as in Kafka ("Tag N is not valid for version V").
    """
    count, pos = read_uvarint(buf, pos)
    if count > len(buf) - pos:
        raise too_long("tag section", count, len(buf) - pos, pos)
    unknown: UnknownTags = []
    last = -1
    for _ in range(count):
        tag, pos = read_uvarint(buf, pos)
        last = check_tag_order(tag, last, pos)
        end, pos = tag_payload_end(buf, pos)
        if tag in known:
            raise ProtocolError(f"tag {tag} is not valid in this version", offset=pos)
        unknown.append((tag, bytes(buf[pos:end])))
        pos = end
    return (unknown or None), pos


def check_tag_order(tag: int, last: int, pos: int) -> int:
    """Tags are written in strictly ascending order (KIP-482); anything else would not
    re-encode to the same bytes, so it is refused. Returns ``tag`` as the new ``last``."""
    if tag <= last:
        raise ProtocolError(f"tag {tag} follows tag {last}: tags must ascend", offset=pos)
    return tag


def tag_payload_end(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a tagged field's size: (end of payload, start of payload)."""
    size, pos = read_uvarint(buf, pos)
    end = pos + size
    if end > len(buf):
        raise too_long("tagged field", size, len(buf) - pos, pos)
    return end, pos


def check_tag_end(pos: int, end: int, tag: int) -> None:
    if pos != end:
        raise ProtocolError(f"tagged field {tag} is {end - pos} bytes longer than its value")


def write_tags(
    w: Writer, tags: UnknownTags, unknown: UnknownTags | None, known: frozenset[int]
) -> None:
    """Write a tag section: known tags (already encoded) merged with the unknown ones we kept,
    in ascending tag order as Kafka writes them.

    An "unknown" tag that the struct defines, or a tag given twice, would not decode back to
    the same object: refused.
    """
    if unknown:
        for tag, _ in unknown:
            if tag in known:
                raise ProtocolError(f"unknown tagged field {tag} is a tag this struct defines")
        tags = sorted([*tags, *unknown], key=_tag_number)
        for (a, _), (b, _) in itertools.pairwise(tags):
            if a == b:
                raise ProtocolError(f"tagged field {a} is given twice")
    w(uvarint(len(tags)))
    for tag, payload in tags:
        w(uvarint(tag))
        w(uvarint(len(payload)))
        w(payload)


def _tag_number(item: tuple[int, bytes]) -> int:
    return item[0]


def as_chunk(value: object) -> Buffer:
    """A ``bytes``/``records`` field value as an output chunk whose ``len`` is its size in
    bytes: bytes and bytearray as they are, memoryviews cast to bytes (copied only when not
    contiguous). Anything else is refused."""
    if isinstance(value, bytes | bytearray):
        return value
    if isinstance(value, memoryview):
        if not value.contiguous:
            return value.tobytes()
        return value if value.format in ("B", "b", "c") and value.ndim == 1 else value.cast("B")
    raise ProtocolError(f"expected bytes, bytearray or memoryview, got {type(value).__name__}")


_array_structs: dict[tuple[str, int], struct.Struct] = {}
_small_arrays: dict[tuple[str, int], tuple[struct.Struct, ...]] = {}


def small_arrays(code: str, size: int) -> tuple[struct.Struct, ...]:
    """Precompiled ``Struct`` objects for 0..size-1 values of one fixed type, by count."""
    table = _small_arrays.get((code, size))
    if table is None:
        table = tuple(struct.Struct(f">{i}{code}") for i in range(size))
        _small_arrays[code, size] = table
    return table


def array_struct(code: str, count: int) -> struct.Struct:
    """A ``Struct`` for ``count`` big-endian values of one fixed type (bulk array codec).

    Cached for the small counts that recur; a large count gets a fresh one.
    """
    key = (code, count)
    s = _array_structs.get(key)
    if s is None:
        s = struct.Struct(f">{count}{code}")
        if count <= 64:
            _array_structs[key] = s
    return s
