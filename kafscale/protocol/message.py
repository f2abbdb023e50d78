"""Base classes of the generated message classes, and their uniform codec entry points.

Every generated struct class is a slotted subclass of :class:`Struct` that carries a
``_fields`` table (a :class:`FieldSpec` per field) and per-version reader/writer functions.
Top-level messages subclass :class:`Message`, which adds ``decode``/``read``/``encode``/
``encode_chunks``. The fast generated code does no bookkeeping; when it fails, the error is
located precisely (field path and offset) by re-walking the bytes with
:mod:`kafscale.protocol.reference`, so the happy path pays nothing for good errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeVar

from mypy_extensions import mypyc_attr

from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.wire import Buffer, UnknownTags, Writer

VersionRange = tuple[int, int]
"""Inclusive (low, high); ``low > high`` is the empty range."""

NO_VERSIONS: VersionRange = (1, 0)

Reader = Callable[[bytes, int], tuple[Any, int]]
WriterFn = Callable[[Any, Writer], None]

M = TypeVar("M", bound="Message")


class Unset:
    """Type of :data:`UNSET` (constructor annotations admit it: compiled code checks them)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = Unset()
"""Default of constructor arguments whose default is a fresh list or struct (None may be a
legitimate value of those fields: a null array)."""


class FieldSpec(NamedTuple):
    """One field of a generated struct, as the spec defines it (effective version ranges)."""

    name: str  # Python attribute name
    kafka_name: str  # name in Kafka's JSON definition
    kafka_type: str  # Kafka's spelling: "int32", "[]string", "[]FetchTopic", "ReplicaState"
    struct: type[Struct] | None  # class of a struct field or of a struct array's elements
    versions: VersionRange
    nullable: VersionRange
    tagged: VersionRange
    tag: int | None
    ignorable: bool
    default: Any  # None for null; () for a fresh empty list / default struct
    flexible: VersionRange | None  # field-level flexibleVersions override (header ClientId)

    @property
    def element(self) -> str:
        return self.kafka_type.removeprefix("[]")

    @property
    def is_array(self) -> bool:
        return self.kafka_type.startswith("[]")

    def fresh_default(self) -> Any:
        """The default value; ``()`` in ``default`` stands for a fresh empty list or struct."""
        if self.default == () and (self.is_array or self.struct is not None):
            return [] if self.is_array else self.struct()  # type: ignore[misc]
        return self.default

    @property
    def nullable_anywhere(self) -> bool:
        return self.nullable[0] <= self.nullable[1]


def in_range(version: int, r: VersionRange | None) -> bool:
    return r is not None and r[0] <= version <= r[1]


# Compiled (scripts/accelerate), these are native classes: the compiled codecs' classes are
# native subclasses (direct field stores), the other generated modules' interpreted ones.
@mypyc_attr(allow_interpreted_subclasses=True)
class Struct:
    """Base of every generated struct class: equality, repr and JSON-friendly dicts."""

    __slots__ = ("_unknown_tags",)
    _fields: ClassVar[tuple[FieldSpec, ...]] = ()
    _readers: ClassVar[dict[int, Reader]] = {}
    _writers: ClassVar[dict[int, WriterFn]] = {}
    _unknown_tags: UnknownTags | None

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        if self._unknown_tags != other._unknown_tags:
            return False
        return all(getattr(self, f.name) == getattr(other, f.name) for f in self._fields)

    # No "__hash__ = None": __eq__ alone makes the class unhashable (mutable), and compiled
    # (native), such an assignment is taken for a field that copy.copy then cannot restore.

    # copy and pickle: the fields by name. Compiled, the state mypyc would give an interpreted
    # subclass holds only the base's own attribute (_unknown_tags).
    def __getstate__(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in self._fields}
        state["_unknown_tags"] = self._unknown_tags
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def to_dict(self, version: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict; with ``version``, only the fields that exist in that version."""
        out: dict[str, Any] = {}
        for f in self._fields:
            if version is not None and not in_range(version, f.versions):
                continue
            out[f.name] = _to_json(getattr(self, f.name), f, version)
        if self._unknown_tags:
            out["_unknown_tags"] = [[tag, payload.hex()] for tag, payload in self._unknown_tags]
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Any:
        """Inverse of :meth:`to_dict`; missing keys take their defaults. ``data`` is any JSON
        value (not ``dict``: compiled, an annotation is checked before the body says why)."""
        if not isinstance(data, dict):
            raise ProtocolError(f"expected a JSON object, got {type(data).__name__}", field=path)
        obj = cls()
        names = {f.name: f for f in cls._fields}
        for key, value in data.items():
            where = f"{path}.{key}" if path else key
            if key == "_unknown_tags":
                obj._unknown_tags = _unknown_tags_from_json(value, where)
            elif key not in names:
                raise ProtocolError(f"{cls.__name__} has no field {key!r}", field=where)
            else:
                setattr(obj, key, _from_json(value, names[key], where))
        return obj


@mypyc_attr(allow_interpreted_subclasses=True)
class Message(Struct):
    """Base of the top-level generated classes (requests, responses, headers, data)."""

    __slots__ = ()
    # Upper case: a snake_case field name can never collide with these.
    NAME: ClassVar[str]
    """Kafka's name of the message, e.g. ``MetadataResponse``."""
    API_KEY: ClassVar[int | None]
    TYPE: ClassVar[str]
    """``request``, ``response``, ``header`` or ``data``."""
    VALID_VERSIONS: ClassVar[VersionRange]
    FLEXIBLE_VERSIONS: ClassVar[VersionRange]

    @classmethod
    def decode(cls: type[M], data: Buffer, version: int) -> M:
        """Decode a whole body: every byte of ``data`` must belong to the message."""
        buf = as_buffer(data)
        obj, pos = cls.read(buf, 0, version)
        if pos != len(buf):
            raise ProtocolError(
                f"{len(buf) - pos} trailing bytes after the message",
                message=f"{cls.NAME} v{version}",
                offset=pos,
            )
        return obj

    @classmethod
    def read(cls: type[M], buf: bytes, pos: int, version: int) -> tuple[M, int]:
        """Decode the message starting at ``pos``; returns it and the position after it."""
        reader = cls._readers.get(version)
        if reader is None:
            raise cls._bad_version(version)
        try:
            obj, end = reader(buf, pos)
        except Exception as error:  # any failure of the fast path is located and re-raised
            from kafscale.protocol.reference import diagnose_read

            raise diagnose_read(cls, buf, pos, version, error) from None
        return obj, end

    def encode(self, version: int) -> bytes:
        """Encode the body as one ``bytes`` object."""
        return b"".join(self.encode_chunks(version))

    def encode_chunks(self, version: int) -> list[Buffer]:
        """Encode the body as a list of chunks; ``records`` and ``bytes`` values are chunks of
        their own, never copied (write them with ``writelines``)."""
        writer = self._writers.get(version)
        if writer is None:
            raise self._bad_version(version)
        parts: list[Buffer] = []
        try:
            writer(self, parts.append)
        except Exception as error:
            from kafscale.protocol.reference import diagnose_write

            raise diagnose_write(self, version, error) from None
        return parts

    @classmethod
    def _bad_version(cls, version: int) -> ProtocolError:
        lo, hi = cls.VALID_VERSIONS
        return ProtocolError(f"version {version} is not valid (valid: {lo}-{hi})", message=cls.NAME)


def as_buffer(data: Buffer) -> bytes:
    """The bytes object the generated readers work on.

    ``bytes`` is used as it is (decoded ``records`` are memoryview slices of it: zero copy), and
    so is the ``bytes`` object under a memoryview that covers all of it; anything else is copied
    once, since slicing ``bytes`` then decoding is what makes string fields fast.
    """
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray):
        return bytes(data)
    if isinstance(data, memoryview):
        base = data.obj
        if isinstance(base, bytes) and data.contiguous and data.nbytes == len(base):
            return base
        return data.tobytes()
    raise TypeError(f"expected bytes, bytearray or memoryview, got {type(data).__name__}")


def _unknown_tags_from_json(value: Any, where: str) -> UnknownTags | None:
    """``[[tag, "hex payload"], ...]`` as written by :meth:`Struct.to_dict`."""
    try:
        tags = [(int(tag), bytes.fromhex(payload)) for tag, payload in value]
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"expected [[tag, hex payload], ...] ({e})", field=where) from None
    if any(tag < 0 for tag, _ in tags):
        raise ProtocolError("tags are unsigned", field=where)
    return tags or None


def _to_json(value: Any, f: FieldSpec, version: int | None) -> Any:
    if value is None:
        return None
    if f.is_array:
        return [_element_to_json(v, f, version) for v in value]
    return _element_to_json(value, f, version)


def _element_to_json(value: Any, f: FieldSpec, version: int | None) -> Any:
    if isinstance(value, Struct):
        return value.to_dict(version)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _from_json(value: Any, f: FieldSpec, where: str) -> Any:
    if value is None:
        return None
    if f.is_array:
        if not isinstance(value, list):
            raise ProtocolError("expected a JSON array", field=where)
        return [_element_from_json(v, f, f"{where}[{i}]") for i, v in enumerate(value)]
    return _element_from_json(value, f, where)


def _element_from_json(value: Any, f: FieldSpec, where: str) -> Any:
    kind = f.element
    try:
        if f.struct is not None:
            return f.struct.from_dict(value, where)
        if kind == "uuid":
            return uuid.UUID(value)
        if kind in ("bytes", "records"):
            return bytes.fromhex(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if kind == "string":
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
        if kind == "float64":
            return float(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("expected an integer")
        return value
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"bad {kind} value {value!r}: {e}", field=where) from None
