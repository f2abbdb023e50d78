"""Typed model of Kafka's JSON message definitions.

The loader (:mod:`codegen.specs`) hands us validated JSON; this module turns it into
:class:`Message` objects whose fields carry *effective* version ranges: a field exists in version
``v`` only if ``v`` is in its own ``versions``, in every enclosing struct's versions and in the
message's ``validVersions`` (Kafka's generator intersects the same way).
"""

from __future__ import annotations

import base64
import keyword
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_VERSION = 0x7FFF

FRESH = ()
"""Default of an array or struct field that is not null: a fresh empty list / default struct."""

FIXED_SIZES: dict[str, int] = {
    "bool": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "float64": 8,
}
"""Primitive types of a fixed wire size (uuid is fixed too, but decodes to an object)."""

STRUCT_CODES: dict[str, str] = {
    "bool": "?",
    "int8": "b",
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "float64": "d",
}
"""``struct`` format characters (big-endian) of the fixed-size primitives."""

PRIMITIVES = frozenset([*FIXED_SIZES, "uuid", "string", "bytes", "records"])
INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


class SpecError(Exception):
    """A message definition we cannot generate code for; the text names file and field."""


@dataclass(frozen=True, order=True)
class Versions:
    """An inclusive version range; ``lo > hi`` is the empty range ("none")."""

    lo: int
    hi: int

    @staticmethod
    def parse(text: str | None, what: str = "versions") -> Versions:
        if text is None or text == "none":
            return NONE
        m = re.fullmatch(r"(\d+)(\+|-(\d+))?", text.strip())
        if not m:
            raise SpecError(f"bad {what} {text!r}")
        lo = int(m.group(1))
        if m.group(2) == "+":
            return Versions(lo, MAX_VERSION)
        hi = int(m.group(3)) if m.group(3) else lo
        if hi < lo:
            raise SpecError(f"bad {what} {text!r}: upper bound below lower bound")
        return Versions(lo, hi)

    @property
    def empty(self) -> bool:
        return self.lo > self.hi

    def __contains__(self, version: object) -> bool:
        return isinstance(version, int) and self.lo <= version <= self.hi

    def __and__(self, other: Versions) -> Versions:
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        return Versions(lo, hi) if lo <= hi else NONE

    def __str__(self) -> str:
        if self.empty:
            return "none"
        if self.hi == MAX_VERSION:
            return f"{self.lo}+"
        return f"{self.lo}" if self.lo == self.hi else f"{self.lo}-{self.hi}"

    def as_tuple(self) -> tuple[int, int]:
        return (self.lo, self.hi)


NONE = Versions(1, 0)


def snake_case(name: str) -> str:
    """PascalCase Kafka name -> Python identifier, deterministically.

    ``KRaft`` is one word (``IsKRaftController`` -> ``is_kraft_controller``); runs of capitals
    are an acronym (``ApiKeys`` is not one, ``SASLAuth`` would be ``sasl_auth``).
    """
    name = name.replace("KRaft", "Kraft")
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()
    return s + "_" if keyword.iskeyword(s) or s in _RESERVED else s


# Names the runtime base class uses; a field with one of these names would shadow it.
_RESERVED = frozenset(["decode", "encode", "encode_chunks", "read", "to_dict", "from_dict"])


@dataclass
class FieldType:
    """A field's type: a primitive, a struct, or an array of either."""

    name: str  # as spelled in the spec: "int32", "[]int32", "[]Topic", "Topic"
    element: str  # primitive name or struct name (array element or the type itself)
    is_array: bool

    @property
    def is_struct(self) -> bool:
        return self.element not in PRIMITIVES

    @property
    def is_fixed(self) -> bool:
        return not self.is_array and self.element in FIXED_SIZES

    @staticmethod
    def parse(text: str) -> FieldType:
        is_array = text.startswith("[]")
        element = text[2:] if is_array else text
        if not element or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", element):
            raise SpecError(f"bad type {text!r}")
        if element[0].islower() and element not in PRIMITIVES:
            raise SpecError(f"unknown primitive type {element!r}")
        return FieldType(text, element, is_array)


@dataclass
class Field:
    name: str
    py_name: str
    type: FieldType
    versions: Versions
    nullable: Versions
    tagged: Versions
    tag: int | None
    ignorable: bool
    default: Any  # Python value of the default (None = null); lists/structs handled by kind
    default_text: str | None  # as written in the spec, for docs
    about: str
    flexible: Versions | None  # field-level override (RequestHeader.ClientId: "none")
    zero_copy: bool
    map_key: bool
    entity_type: str | None
    struct: Struct | None = None  # element struct of a struct or struct-array field
    declared: dict[str, Any] = field(default_factory=dict)  # the spec's wire-relevant keys

    def present(self, version: int) -> bool:
        return version in self.versions

    def is_tagged(self, version: int) -> bool:
        return version in self.tagged

    def is_nullable(self, version: int) -> bool:
        return version in self.nullable


@dataclass
class Struct:
    name: str
    fields: list[Field]
    about: str
    versions: Versions  # versions in which this struct can appear at all
    common: bool = False
    used_versions: set[int] = field(default_factory=set)

    def tagged_fields(self, version: int) -> list[Field]:
        return sorted(
            (f for f in self.fields if f.present(version) and f.is_tagged(version)),
            key=lambda f: f.tag if f.tag is not None else -1,
        )

    @property
    def known_tags(self) -> list[int]:
        return sorted({f.tag for f in self.fields if f.tag is not None})


@dataclass
class Message:
    name: str
    kind: str  # request | response | header | data
    api_key: int | None
    listeners: list[str]
    valid: Versions
    flexible: Versions
    deprecated: Versions
    latest_version_unstable: bool
    root: Struct
    structs: list[Struct]  # every struct, root first, then in definition order
    source: str  # file name the definition came from
    history: list[str]  # the // comment lines inside the definition (version history)

    @property
    def module(self) -> str:
        return snake_case(self.name)

    def versions(self) -> range:
        return range(self.valid.lo, self.valid.hi + 1)


def _default_value(ftype: FieldType, raw: Any, nullable: Versions, where: str) -> Any:
    """Python value of a field's default, following Kafka's FieldSpec rules."""
    if raw is None:
        if ftype.is_array or ftype.is_struct:
            return FRESH
        return {
            "bool": False,
            "float64": 0.0,
            "uuid": uuid.UUID(int=0),
            "string": "",
            "bytes": b"",
            "records": None,
        }.get(ftype.element, 0 if ftype.element in INT_RANGES else None)
    if ftype.is_array or ftype.is_struct or ftype.element in ("bytes", "records"):
        if raw != "null":
            raise SpecError(f"{where}: only 'null' may be the default of a {ftype.name} field")
        if nullable.empty:
            raise SpecError(f"{where}: default null on a field that is never nullable")
        return None
    kind = ftype.element
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if raw in ("true", "false"):
            return raw == "true"
        raise SpecError(f"{where}: bad bool default {raw!r}")
    if kind in INT_RANGES:
        try:
            value = raw if isinstance(raw, int) else int(str(raw), 0)
        except ValueError as e:
            raise SpecError(f"{where}: bad integer default {raw!r}") from e
        lo, hi = INT_RANGES[kind]
        if not lo <= value <= hi:
            raise SpecError(f"{where}: default {raw!r} does not fit {kind}")
        return value
    if kind == "float64":
        return float(raw)
    if kind == "uuid":
        if raw in ("", 0):
            return uuid.UUID(int=0)
        try:
            return uuid.UUID(bytes=base64.urlsafe_b64decode(str(raw) + "=="))
        except ValueError as e:
            raise SpecError(f"{where}: bad uuid default {raw!r}") from e
    if kind == "string":
        if raw == "null":
            if nullable.empty:
                raise SpecError(f"{where}: default null on a string that is never nullable")
            return None
        return str(raw)
    raise SpecError(f"{where}: unsupported default for {ftype.name}")


_WIRE_KEYS = ("type", "versions", "nullableVersions", "taggedVersions", "tag", "flexibleVersions")
"""Field keys that change the wire format (``python -m codegen diff`` compares these)."""


class _Builder:
    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source
        self.structs: dict[str, Struct] = {}
        self.order: list[Struct] = []
        self.common_raw = {c["name"]: c for c in raw.get("commonStructs", [])}
        self.valid = Versions.parse(raw["validVersions"], "validVersions")

    def where(self, path: str) -> str:
        return f"{self.source}: {path}"

    def common(self, name: str) -> Struct:
        if name in self.structs:
            return self.structs[name]
        spec = self.common_raw[name]
        versions = Versions.parse(spec["versions"]) & self.valid
        struct = Struct(name, [], "", versions, common=True)
        self.structs[name] = struct  # registered before its fields: commonStructs may recurse
        self.order.append(struct)
        struct.fields = [self.field(f, versions, name) for f in spec["fields"]]
        return struct

    def struct(
        self, name: str, fields: list[dict[str, Any]], versions: Versions, about: str
    ) -> Struct:
        if name in self.structs:
            raise SpecError(self.where(f"struct {name} is defined twice"))
        struct = Struct(name, [], about, versions)
        self.structs[name] = struct
        self.order.append(struct)
        struct.fields = [self.field(f, versions, name) for f in fields]
        return struct

    def field(self, spec: dict[str, Any], parent: Versions, path: str) -> Field:
        name = spec["name"]
        where = self.where(f"{path}.{name}")
        ftype = FieldType.parse(spec["type"])
        versions = Versions.parse(spec["versions"]) & parent
        nullable = Versions.parse(spec.get("nullableVersions")) & versions
        tagged = Versions.parse(spec.get("taggedVersions")) & versions
        tag = spec.get("tag")
        if tag is not None:
            try:
                tag = int(tag)
            except ValueError as e:
                raise SpecError(f"{where}: bad tag {tag!r}") from e
        if (tag is None) != ("taggedVersions" not in spec):
            raise SpecError(f"{where}: tag and taggedVersions must be given together")
        if not nullable.empty and ftype.element not in ("string", "bytes", "records"):
            if not (ftype.is_array or ftype.is_struct):
                raise SpecError(f"{where}: type {ftype.name} cannot be nullable")
        if ftype.element == "records" and not tagged.empty:
            raise SpecError(f"{where}: records fields cannot be tagged")
        flexible = spec.get("flexibleVersions")
        if flexible is not None and ftype.element not in ("string", "bytes"):
            raise SpecError(f"{where}: flexibleVersions only applies to string and bytes fields")
        raw_default = spec.get("default")
        f = Field(
            name=name,
            py_name=snake_case(name),
            type=ftype,
            versions=versions,
            nullable=nullable,
            tagged=tagged,
            tag=tag,
            ignorable=bool(spec.get("ignorable", False)),
            default=_default_value(ftype, raw_default, nullable, where),
            default_text=None if raw_default is None else str(raw_default),
            about=spec.get("about", ""),
            flexible=None if flexible is None else Versions.parse(flexible),
            zero_copy=bool(spec.get("zeroCopy", False)),
            map_key=bool(spec.get("mapKey", False)),
            entity_type=spec.get("entityType"),
            declared={k: spec[k] for k in _WIRE_KEYS if k in spec},
        )
        if ftype.is_struct:
            if "fields" in spec:
                f.struct = self.struct(ftype.element, spec["fields"], versions, f.about)
            elif ftype.element in self.common_raw:
                f.struct = self.common(ftype.element)
            else:
                raise SpecError(f"{where}: unknown struct type {ftype.element!r}")
        elif "fields" in spec:
            raise SpecError(f"{where}: only struct types may have fields")
        return f


def build_message(raw: dict[str, Any], source: str, history: list[str] | None = None) -> Message:
    """Build the typed model of one validated definition."""
    b = _Builder(raw, source)
    root = b.struct(raw["name"], raw["fields"], b.valid, "")
    for name in b.common_raw:  # unused common structs are still part of the message
        b.common(name)
    msg = Message(
        name=raw["name"],
        kind=raw["type"],
        api_key=raw.get("apiKey"),
        listeners=list(raw.get("listeners", [])),
        valid=b.valid,
        flexible=Versions.parse(raw["flexibleVersions"], "flexibleVersions"),
        deprecated=Versions.parse(raw.get("deprecatedVersions"), "deprecatedVersions"),
        latest_version_unstable=bool(raw.get("latestVersionUnstable", False)),
        root=root,
        structs=b.order,
        source=source,
        history=history or [],
    )
    _mark_used_versions(msg)
    _check_tags(msg)
    return msg


def _mark_used_versions(msg: Message) -> None:
    """Record, per struct, the message versions in which it can occur on the wire."""

    def visit(struct: Struct, version: int) -> None:
        if version in struct.used_versions:
            return
        struct.used_versions.add(version)
        for f in struct.fields:
            if f.struct is not None and f.present(version):
                visit(f.struct, version)

    for v in msg.versions():
        visit(msg.root, v)


def _check_tags(msg: Message) -> None:
    for struct in msg.structs:
        for v in struct.used_versions:
            seen: dict[int, str] = {}
            for f in struct.tagged_fields(v):
                assert f.tag is not None
                if f.tag in seen:
                    raise SpecError(
                        f"{msg.source}: {struct.name}: tag {f.tag} used by {seen[f.tag]} and "
                        f"{f.name} in version {v}"
                    )
                seen[f.tag] = f.name
                if v not in msg.flexible:
                    raise SpecError(
                        f"{msg.source}: {struct.name}.{f.name} is tagged in non-flexible "
                        f"version {v}"
                    )
