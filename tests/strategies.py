"""Hypothesis strategies that build valid generated-message objects from their ``_fields``.

A strategy is made per (class, version): only the fields that exist in that version get a
random value (the others keep their defaults, which is what decoding gives back), ``None``
only where the field is nullable in that version, integers within their type, no NaN, and
sometimes unknown tagged fields in flexible versions.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import strategies as st

from generated import registry
from kafscale.protocol.message import FieldSpec, Message, Struct, in_range

INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}

MAX_LIST = 3
# Any unicode scalar value but surrogates (which UTF-8 cannot encode).
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
BLOB = st.binary(max_size=24)


def all_message_versions() -> list[tuple[str, int]]:
    """Every (message name, valid version) pair of the registry."""
    out: list[tuple[str, int]] = []
    for name in registry.MESSAGES:
        lo, hi = registry.message_class(name).VALID_VERSIONS
        out.extend((name, v) for v in range(lo, hi + 1))
    return out


def is_flexible(cls: type[Message], version: int) -> bool:
    return in_range(version, cls.FLEXIBLE_VERSIONS)


def _scalar(kind: str) -> st.SearchStrategy[Any]:
    if kind == "bool":
        return st.booleans()
    if kind in INT_RANGES:
        lo, hi = INT_RANGES[kind]
        # Edges matter more than the middle: make them likely.
        return st.one_of(st.sampled_from([lo, hi, 0, -1 if lo < 0 else 1]), st.integers(lo, hi))
    if kind == "float64":
        return st.floats(allow_nan=False)
    if kind == "uuid":
        return st.one_of(st.just(uuid.UUID(int=0)), st.uuids())
    if kind == "string":
        return TEXT
    if kind in ("bytes", "records"):
        return BLOB
    raise AssertionError(f"unknown primitive {kind}")


def field_values(
    f: FieldSpec, version: int, flexible: bool, extra_tags: bool
) -> st.SearchStrategy[Any]:
    """Strategy for the value of ``f`` in ``version`` (the field must exist in it)."""
    if f.struct is not None:
        element: st.SearchStrategy[Any] = struct_values(f.struct, version, flexible, extra_tags)
    else:
        element = _scalar(f.element)
    value: st.SearchStrategy[Any] = st.lists(element, max_size=MAX_LIST) if f.is_array else element
    if in_range(version, f.nullable):
        value = st.one_of(st.none(), value)
    return value


def unknown_tags(cls: type[Struct]) -> st.SearchStrategy[list[tuple[int, bytes]] | None]:
    """Tags the struct never defines (in any version), unique and ascending."""
    known = {f.tag for f in cls._fields if f.tag is not None}
    tag = st.one_of(st.integers(0, 40), st.integers(0, 2**31 - 1)).filter(lambda t: t not in known)
    entries = st.lists(
        st.tuples(tag, st.binary(max_size=8)), min_size=1, max_size=3, unique_by=lambda e: e[0]
    )
    return st.one_of(st.none(), entries.map(sorted))


_STRATEGIES: dict[tuple[type[Struct], int, bool, bool], st.SearchStrategy[Any]] = {}


def struct_values(
    cls: type[Struct], version: int, flexible: bool, extra_tags: bool = True
) -> st.SearchStrategy[Any]:
    """Objects of ``cls`` valid in ``version``: fields absent from it keep their defaults."""
    key = (cls, version, flexible, extra_tags)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _struct_values(cls, version, flexible, extra_tags)
    return _STRATEGIES[key]


def _struct_values(
    cls: type[Struct], version: int, flexible: bool, extra_tags: bool
) -> st.SearchStrategy[Any]:
    present = {
        f.name: field_values(f, version, flexible, extra_tags)
        for f in cls._fields
        if in_range(version, f.versions)
    }
    tags: st.SearchStrategy[Any] = unknown_tags(cls) if flexible and extra_tags else st.just(None)

    def build(values: dict[str, Any], unknown: list[tuple[int, bytes]] | None) -> Any:
        obj = cls()
        for name, value in values.items():
            setattr(obj, name, value)
        obj._unknown_tags = unknown
        return obj

    return st.builds(build, st.fixed_dictionaries(present), tags)


def messages(
    cls: type[Message], version: int, extra_tags: bool = True
) -> st.SearchStrategy[Message]:
    strategy: st.SearchStrategy[Message] = struct_values(
        cls, version, is_flexible(cls, version), extra_tags
    )
    return strategy


def json_round_trip(obj: Message, version: int | None = None) -> Message:
    """``from_dict(to_dict())`` through real JSON text."""
    text = json.dumps(obj.to_dict(version))
    back: Message = type(obj).from_dict(json.loads(text))
    return back


# --- deterministic objects ----------------------------------------------------------------------

SAMPLE_UUID = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")


def _sample(kind: str, default: Any, seed: int) -> Any:
    """A value of ``kind`` that differs from ``default`` (so tagged fields are written)."""
    if kind == "bool":
        return not default
    if kind in INT_RANGES:
        lo, hi = INT_RANGES[kind]
        value = lo + (seed * 7919 + 3) % (hi - lo)
        return value if value != default else value + 1
    if kind == "float64":
        return -1.5 - seed
    if kind == "uuid":
        return uuid.UUID(int=SAMPLE_UUID.int ^ seed)
    if kind == "string":
        return f"é✓{seed}-𝄞"
    if kind in ("bytes", "records"):
        return bytes([seed % 256, 0, 255]) + b"payload"
    raise AssertionError(f"unknown primitive {kind}")


def filled(
    cls: type[Struct],
    version: int,
    *,
    flexible: bool,
    array_len: int = 2,
    struct_array_len: int = 2,
    top_struct_array_len: int | None = None,
    text_len: int = 1,
    unknown: bool = False,
    _depth: int = 0,
) -> Any:
    """An object of ``cls`` with every field that exists in ``version`` set to a non-default,
    non-null value; arrays of primitives get ``array_len`` elements (at most 40 below the top
    level), arrays of structs
    ``top_struct_array_len`` at the top level and ``struct_array_len`` below it; strings
    are repeated ``text_len`` times. ``unknown`` adds an unknown tag to every struct
    (flexible versions only)."""
    obj = cls()
    for i, f in enumerate(cls._fields):
        if not in_range(version, f.versions):
            continue
        seed = _depth * 31 + i
        if f.struct is not None:

            def make(_f: FieldSpec = f) -> Any:
                assert _f.struct is not None
                return filled(
                    _f.struct,
                    version,
                    flexible=flexible,
                    array_len=array_len,
                    struct_array_len=struct_array_len,
                    text_len=text_len,
                    unknown=unknown,
                    _depth=_depth + 1,
                )

            if f.is_array:
                n = struct_array_len
                if _depth == 0 and top_struct_array_len is not None:
                    n = top_struct_array_len
                value: Any = [make() for _ in range(n)]
            else:
                value = make()
        elif f.is_array:
            n = array_len if _depth == 0 else min(array_len, 40)
            value = [_sample(f.element, None, seed + j) for j in range(n)]
        else:
            value = _sample(f.element, f.default, seed)
            if f.element == "string":
                value = value * text_len
        setattr(obj, f.name, value)
    if unknown and flexible:
        known = {f.tag for f in cls._fields if f.tag is not None}
        obj._unknown_tags = [(max(known, default=-1) + 1 + _depth, b"\x01unknown")]
    return obj


def filled_message(cls: type[Message], version: int, **kwargs: Any) -> Message:
    obj: Message = filled(cls, version, flexible=is_flexible(cls, version), **kwargs)
    return obj
