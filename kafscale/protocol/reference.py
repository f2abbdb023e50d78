"""A schema-driven (interpreted) codec: slow, simple, and precise about errors.

The generated codecs are straight-line and fast; this one walks the ``_fields`` tables. It has
two jobs: locate a failure of the fast path (which field, which offset) so that every error the
protocol layer raises is a :class:`ProtocolError` that says where, and serve the tests as an
independent second implementation to compare the generated code against.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.message import FieldSpec, Message, Struct, as_buffer, in_range
from kafscale.protocol.wire import (
    Buffer,
    UnknownTags,
    Writer,
    as_chunk,
    read_uuid,
    read_uvarint,
    uvarint,
    write_tags,
)

_FIXED: dict[str, struct.Struct] = {
    "bool": struct.Struct(">?"),
    "int8": struct.Struct(">b"),
    "int16": struct.Struct(">h"),
    "uint16": struct.Struct(">H"),
    "int32": struct.Struct(">i"),
    "uint32": struct.Struct(">I"),
    "int64": struct.Struct(">q"),
    "float64": struct.Struct(">d"),
}
_INT16 = _FIXED["int16"]
_INT32 = _FIXED["int32"]
_INT8 = _FIXED["int8"]


class _Fail(Exception):
    def __init__(self, reason: str, path: str, offset: int | None) -> None:
        super().__init__(reason)
        self.reason, self.path, self.offset = reason, path, offset


class _Reader:
    def __init__(self, buf: bytes, version: int, flexible: bool) -> None:
        self.buf = buf
        self.version = version
        self.flexible = flexible

    def need(self, pos: int, size: int, what: str, path: str) -> None:
        left = len(self.buf) - pos
        if size > left:
            raise _Fail(f"{what} needs {size} bytes, {left} left", path, pos)

    def uvarint(self, pos: int, path: str) -> tuple[int, int]:
        try:
            return read_uvarint(self.buf, pos)
        except IndexError:
            raise _Fail("truncated varint", path, pos) from None
        except ProtocolError as e:
            raise _Fail(e.reason, path, pos) from None

    def fixed(self, kind: str, pos: int, path: str) -> tuple[Any, int]:
        s = _FIXED[kind]
        self.need(pos, s.size, kind, path)
        return s.unpack_from(self.buf, pos)[0], pos + s.size

    def length(
        self, f: FieldSpec, compact: bool, wide: bool, pos: int, path: str
    ) -> tuple[int, int]:
        """A length prefix; -1 is null. ``wide``: int32 (bytes, arrays), else int16 (strings)."""
        if compact:
            n, pos = self.uvarint(pos, path)
            n -= 1
        else:
            n, pos = self.fixed("int32" if wide else "int16", pos, path)
            if n < -1:
                raise _Fail(f"negative length {n}", path, pos)
        if n == -1 and not in_range(self.version, f.nullable):
            raise _Fail("null where the field is not nullable", path, pos)
        if n > len(self.buf) - pos:
            raise _Fail(f"length {n} exceeds the {len(self.buf) - pos} bytes left", path, pos)
        return n, pos

    def struct(self, cls: type[Struct], pos: int, path: str) -> tuple[Struct, int]:
        obj = cls.__new__(cls)
        obj._unknown_tags = None
        v = self.version
        for f in cls._fields:
            where = f"{path}.{f.kafka_name}" if path else f.kafka_name
            if not in_range(v, f.versions) or (self.flexible and in_range(v, f.tagged)):
                setattr(obj, f.name, f.fresh_default())
                continue
            value, pos = self.value(f, pos, where)
            setattr(obj, f.name, value)
        if self.flexible:
            pos = self.tags(obj, cls, pos, path)
        return obj, pos

    def tags(self, obj: Struct, cls: type[Struct], pos: int, path: str) -> int:
        where = f"{path}.<tags>" if path else "<tags>"
        count, pos = self.uvarint(pos, where)
        if count > len(self.buf) - pos:
            raise _Fail(f"tag count {count} exceeds the bytes left", where, pos)
        by_tag = {f.tag: f for f in cls._fields if f.tag is not None}
        unknown: UnknownTags = []
        last = -1
        for _ in range(count):
            tag, pos = self.uvarint(pos, where)
            if tag <= last:
                raise _Fail(f"tag {tag} follows tag {last}: tags must ascend", where, pos)
            last = tag
            size, pos = self.uvarint(pos, where)
            self.need(pos, size, f"tagged field {tag}", where)
            end = pos + size
            f = by_tag.get(tag)
            if f is None:
                unknown.append((tag, bytes(self.buf[pos:end])))
            elif not (in_range(self.version, f.tagged) and in_range(self.version, f.versions)):
                raise _Fail(f"tag {tag} is not valid in version {self.version}", where, pos)
            else:
                fpath = f"{path}.{f.kafka_name}" if path else f.kafka_name
                value, after = self.value(f, pos, fpath)
                if after != end:
                    raise _Fail(f"tagged field {tag} has {end - after} extra bytes", fpath, after)
                setattr(obj, f.name, value)
            pos = end
        obj._unknown_tags = unknown or None
        return pos

    def value(self, f: FieldSpec, pos: int, path: str) -> tuple[Any, int]:
        compact = self.flexible and not (
            f.flexible is not None and not in_range(self.version, f.flexible)
        )
        if f.is_array:
            n, pos = self.length(f, compact, True, pos, path)
            if n < 0:
                return None, pos
            items = []
            for i in range(n):
                item, pos = self.element(f, pos, f"{path}[{i}]", compact)
                items.append(item)
            return items, pos
        if f.struct is not None and in_range(self.version, f.nullable):
            marker, pos = self.fixed("int8", pos, path)
            if marker < 0:
                return None, pos
        return self.element(f, pos, path, compact)

    def element(self, f: FieldSpec, pos: int, path: str, compact: bool) -> tuple[Any, int]:
        kind = f.element
        if f.struct is not None:
            return self.struct(f.struct, pos, path)
        if kind in _FIXED:
            return self.fixed(kind, pos, path)
        if kind == "uuid":
            self.need(pos, 16, "uuid", path)
            return read_uuid(self.buf, pos), pos + 16
        n, pos = self.length(f, compact, kind != "string", pos, path)
        if n < 0:
            return None, pos
        raw = self.buf[pos : pos + n]
        if kind == "string":
            try:
                return str(raw, "utf-8"), pos + n
            except UnicodeDecodeError as e:
                raise _Fail(f"invalid UTF-8 ({e.reason})", path, pos + e.start) from None
        return (memoryview(self.buf)[pos : pos + n] if kind == "records" else bytes(raw)), pos + n


def reference_read(cls: type[Message], data: Buffer, version: int, pos: int = 0) -> tuple[Any, int]:
    """Decode with the interpreter; raises :class:`ProtocolError` naming field and offset."""
    buf = as_buffer(data)
    label = f"{cls.NAME} v{version}"
    if not in_range(version, cls.VALID_VERSIONS):
        raise ProtocolError(f"version {version} is not valid", message=cls.NAME)
    reader = _Reader(buf, version, in_range(version, cls.FLEXIBLE_VERSIONS))
    try:
        return reader.struct(cls, pos, "")
    except _Fail as e:
        raise ProtocolError(
            e.reason, message=label, field=e.path or None, offset=e.offset
        ) from None


def diagnose_read(
    cls: type[Message], buf: bytes, pos: int, version: int, error: Exception
) -> ProtocolError:
    """Explain why the generated reader failed on ``buf``."""
    if isinstance(error, ProtocolError) and error.field:
        return error
    try:
        reference_read(cls, buf, version, pos)
    except ProtocolError as located:
        return located
    # The interpreter accepts what the fast path refused: report the fast path's reason.
    return ProtocolError(
        f"{type(error).__name__}: {error}", message=f"{cls.NAME} v{version}", offset=pos
    )


class _Writer:
    def __init__(self, version: int, flexible: bool, w: Writer) -> None:
        self.version = version
        self.flexible = flexible
        self.w = w

    def struct(self, obj: Any, cls: type[Struct], path: str) -> None:
        if not isinstance(obj, cls):
            raise _Fail(f"expected {cls.__name__}, got {type(obj).__name__}", path, None)
        v = self.version
        tagged: UnknownTags = []
        for f in cls._fields:
            where = f"{path}.{f.kafka_name}" if path else f.kafka_name
            value = getattr(obj, f.name)
            if not in_range(v, f.versions):
                if not f.ignorable and value != f.fresh_default():
                    raise _Fail(
                        f"a non-default value cannot be written in version {v}", where, None
                    )
                continue
            if self.flexible and in_range(v, f.tagged):
                if value != f.fresh_default():
                    parts: list[Buffer] = []
                    _Writer(v, True, parts.append).value(f, value, where)
                    assert f.tag is not None
                    tagged.append((f.tag, b"".join(parts)))
                continue
            self.value(f, value, where)
        if self.flexible:
            known = frozenset(f.tag for f in cls._fields if f.tag is not None)
            try:
                write_tags(self.w, tagged, obj._unknown_tags, known)
            except ProtocolError as e:
                raise _Fail(e.reason, f"{path}.<tags>" if path else "<tags>", None) from None
        elif obj._unknown_tags:
            raise _Fail("tagged fields cannot be written in a non-flexible version", path, None)

    def length(self, n: int, compact: bool, wide: bool, path: str) -> None:
        if compact:
            self.w(uvarint(n + 1))
        elif wide:
            self.w(_INT32.pack(n))
        else:
            if n > 0x7FFF:
                raise _Fail(f"string of {n} bytes is too long", path, None)
            self.w(_INT16.pack(n))

    def value(self, f: FieldSpec, value: Any, path: str) -> None:
        v = self.version
        compact = self.flexible and not (f.flexible is not None and not in_range(v, f.flexible))
        if value is None:
            if not in_range(v, f.nullable):
                raise _Fail(f"null is not allowed in version {v}", path, None)
            if f.struct is not None and not f.is_array:
                self.w(_INT8.pack(-1))
            else:
                self.length(-1, compact, f.is_array or f.element != "string", path)
            return
        if f.is_array:
            if not isinstance(value, list | tuple):
                raise _Fail(f"expected a list, got {type(value).__name__}", path, None)
            self.length(len(value), compact, True, path)
            for i, item in enumerate(value):
                self.element(f, item, f"{path}[{i}]", compact)
            return
        if f.struct is not None and in_range(v, f.nullable):
            self.w(_INT8.pack(1))
        self.element(f, value, path, compact)

    def element(self, f: FieldSpec, value: Any, path: str, compact: bool) -> None:
        kind = f.element
        if f.struct is not None:
            self.struct(value, f.struct, path)
        elif kind in _FIXED:
            if kind == "bool" and not isinstance(value, bool):
                raise _Fail(f"expected a bool, got {value!r}", path, None)
            if kind == "float64":
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise _Fail(f"expected a float, got {value!r}", path, None)
            elif kind != "bool" and not isinstance(value, int):  # bool is an int, as in Python
                raise _Fail(f"expected an integer, got {value!r}", path, None)
            try:
                self.w(_FIXED[kind].pack(value))
            except (struct.error, OverflowError):
                raise _Fail(f"{value!r} does not fit {kind}", path, None) from None
        elif kind == "uuid":
            if not isinstance(value, uuid.UUID):
                raise _Fail(f"expected a UUID, got {type(value).__name__}", path, None)
            self.w(value.bytes)
        elif kind == "string":
            if not isinstance(value, str):
                raise _Fail(f"expected a str, got {type(value).__name__}", path, None)
            try:
                raw = value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Fail("string is not encodable as UTF-8", path, None) from None
            self.length(len(raw), compact, False, path)
            self.w(raw)
        else:
            try:
                chunk = as_chunk(value)
            except ProtocolError as e:
                raise _Fail(e.reason, path, None) from None
            self.length(len(chunk), compact, True, path)
            self.w(chunk)


def reference_write(obj: Message, version: int) -> bytes:
    """Encode with the interpreter; raises :class:`ProtocolError` naming the field."""
    cls = type(obj)
    if not in_range(version, cls.VALID_VERSIONS):
        raise ProtocolError(f"version {version} is not valid", message=cls.NAME)
    parts: list[Buffer] = []
    try:
        _Writer(version, in_range(version, cls.FLEXIBLE_VERSIONS), parts.append).struct(
            obj, cls, ""
        )
    except _Fail as e:
        raise ProtocolError(
            e.reason, message=f"{cls.NAME} v{version}", field=e.path or None
        ) from None
    return b"".join(parts)


def diagnose_write(obj: Message, version: int, error: Exception) -> ProtocolError:
    """Explain why the generated writer failed on ``obj``."""
    if isinstance(error, ProtocolError) and error.field:
        return error
    try:
        reference_write(obj, version)
    except ProtocolError as located:
        return located
    return ProtocolError(f"{type(error).__name__}: {error}", message=f"{type(obj).NAME} v{version}")
