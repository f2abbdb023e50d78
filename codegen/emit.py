"""Straight-line Python for one struct at one version: the bodies of read and write functions.

What makes pure-Python codecs fast (see ../shared/notes/kafka-protocol-corners.md) is applied
here: consecutive fixed-size fields are read and written by one precompiled ``struct.Struct``,
one-byte varints and empty tag sections take an inline fast path, arrays of fixed-size values
are unpacked in bulk, version checks are resolved at generation time, and objects are built with
``__new__`` plus slot stores (no ``__init__`` call per struct).

:class:`NativeReadEmitter` reads for the compiled build instead (``scripts/accelerate``, mypyc):
what is fast there is the opposite (a call to a C primitive per integer, a loop per array, the
constructor of a native class), so its modules are generated from the same definitions in that
flavor, never committed, and compiled.

Every function body is rendered against a version; identical bodies of different versions are
merged by the caller, so a message whose layout changed twice has three functions, not eighteen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from codegen.model import FIXED_SIZES, STRUCT_CODES, Field, Message, Struct

SMALL_ARRAY = 32
"""Arrays of fixed-size values shorter than this use a precompiled ``Struct`` per length."""

Names = Callable[[Struct, int], str]
"""Maps (struct, version) to the name of the function that reads (or writes) it."""


@dataclass
class ModuleState:
    """Module-level constants the bodies refer to (collected while emitting)."""

    formats: dict[str, str] = field(default_factory=dict)  # identifier -> struct format
    arrays: dict[str, str] = field(default_factory=dict)  # identifier -> small_arrays() args

    def struct_for(self, codes: str) -> str:
        ident = "_S_" + codes.replace("?", "z")
        self.formats[ident] = ">" + codes
        return ident

    def array_packer(self, code: str, count: str) -> str:
        """An expression for the ``Struct`` of ``count`` values of one fixed type: precompiled
        for small counts (replica lists), built and cached by the runtime otherwise."""
        ident = "_A_" + code.replace("?", "z")
        self.arrays[ident] = f'"{code}", {SMALL_ARRAY}'
        fallback = f'_array_struct("{code}", {count})'
        return f"({ident}[{count}] if {count} < {SMALL_ARRAY} else {fallback})"


class Body:
    """Lines of Python with indentation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1
        self.counter = 0

    def tmp(self, prefix: str) -> str:
        """A fresh local name (mypy wants one type per local)."""
        self.counter += 1
        return f"{prefix}{self.counter}"

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def indent(self) -> _Indent:
        return _Indent(self)

    def text(self) -> str:
        return "\n".join(self.lines)


class _Indent:
    def __init__(self, body: Body) -> None:
        self.body = body

    def __enter__(self) -> None:
        self.body.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.body.depth -= 1


def _packable(f: Field, value: str) -> str:
    """``struct`` packs any object as '?': pass bools through a table that only has bools."""
    return f"_BOOL[{value}]" if f.type.element == "bool" else value


def is_leaf(s: Struct, version: int) -> bool:
    """A struct with no struct inside it in ``version``: its arrays are decoded inline."""
    return not any(f.struct is not None and f.present(version) for f in s.fields)


def _groups(fields: list[Field]) -> Iterator[list[Field]]:
    """Split wire fields into runs: consecutive fixed-size scalars form one run."""
    run: list[Field] = []
    for f in fields:
        if f.type.is_fixed:
            run.append(f)
            continue
        if run:
            yield run
            run = []
        yield [f]
    if run:
        yield run


def _wire_fields(s: Struct, v: int, flexible: bool) -> list[Field]:
    """The fields of ``s`` that ``v`` writes in order (present, not in the tag section)."""
    return [f for f in s.fields if f.present(v) and not (flexible and f.is_tagged(v))]


def _compact(f: Field, msg: Message, version: int) -> bool:
    if version not in msg.flexible:
        return False
    return f.flexible is None or version in f.flexible


def annotation_is_optional(f: Field) -> bool:
    """The Python type of ``f`` admits None (nullable in some version, or null by default)."""
    return not f.nullable.empty or f.default is None or f.type.element == "records"


_PY_TYPES = {
    "bool": "bool",
    "int8": "int",
    "int16": "int",
    "uint16": "int",
    "int32": "int",
    "uint32": "int",
    "int64": "int",
    "float64": "float",
    "string": "str",
    "bytes": "_Buffer",
    "records": "_Buffer",
    "uuid": "_UUID",
}


def annotation(f: Field) -> str:
    base = f.type.element if f.type.is_struct else _PY_TYPES[f.type.element]
    ann = f"list[{base}]" if f.type.is_array else base
    if annotation_is_optional(f):
        ann += " | None"
    return ann


def default_expr(f: Field) -> str:
    """A Python expression for a fresh default value of ``f``."""
    if f.type.is_array:
        return "None" if f.default is None else "[]"
    if f.type.is_struct:
        return "None" if f.default is None else f"{f.type.element}()"
    if f.type.element == "uuid":
        return "_ZERO_UUID" if f.default.int == 0 else f"_UUID(int={f.default.int})"
    return repr(f.default)


def is_default_check(f: Field, value: str) -> str:
    """A Python condition that is true when ``value`` differs from the default of ``f``."""
    if f.type.is_array:
        return f"{value} is not None" if f.default is None else f"{value} != []"
    if f.type.is_struct:
        if f.default is None:
            return f"{value} is not None"
        assert f.struct is not None
        scalars = [g for g in f.struct.fields if not (g.type.is_array or g.type.is_struct)]
        if len(scalars) < len(f.struct.fields):
            return f"{value} != {f.type.element}()"
        # All-scalar struct (e.g. LeaderIdAndEpoch): compare field by field, build nothing.
        checks = [is_default_check(g, f"{value}.{g.py_name}") for g in scalars]
        return " or ".join([*checks, f"{value}._unknown_tags is not None"])
    if f.type.element == "records" or f.default is None:
        return f"{value} is not None"
    if f.type.element == "bool":
        return f"not {value}" if f.default else value
    return f"{value} != {default_expr(f)}"


class ReadEmitter:
    def __init__(self, msg: Message, state: ModuleState, names: Names, tag_names: Names) -> None:
        self.msg = msg
        self.state = state
        self.names = names
        self.tag_names = tag_names

    def struct_body(self, s: Struct, v: int) -> str:
        b = Body()
        self.struct_into(b, s, v, "o")
        b("return o, pos")
        return b.text()

    def struct_into(self, b: Body, s: Struct, v: int, o: str) -> None:
        """Read struct ``s`` into a new object bound to the local ``o``."""
        flexible = v in self.msg.flexible
        b(f"{o} = {'_new_message' if s is self.msg.root else '_new'}({s.name})")
        for f in s.fields:
            if not f.present(v) or (flexible and f.is_tagged(v)):
                b(f"{o}.{f.py_name} = {default_expr(f)}")
        self.read_wire(b, _wire_fields(s, v, flexible), v, o)
        if not flexible:
            b(f"{o}._unknown_tags = None")
            return
        self.tag_section(b, s, v, o)

    def target(self, o: str, f: Field) -> str:
        """Where a field of the struct being read into ``o`` goes."""
        return f"{o}.{f.py_name}"

    def read_wire(self, b: Body, wire: list[Field], v: int, o: str) -> None:
        """The fields on the wire (not tagged), in order, into their targets."""
        for run in _groups(wire):
            if run[0].type.is_fixed:
                self.fixed_run(b, run, o)
            else:
                self.value(b, run[0], v, self.target(o, run[0]))

    def tag_section(self, b: Body, s: Struct, v: int, o: str, clear: bool = True) -> None:
        """The tag section of the object ``o`` (flexible versions); ``clear``: an empty one
        sets ``_unknown_tags`` to None (the constructor did, otherwise)."""
        b("if buf[pos]:")
        with b.indent():
            if s.tagged_fields(v):
                b(f"pos = {self.tag_names(s, v)}({o}, buf, pos)")
            else:
                b(f"{o}._unknown_tags, pos = _read_tag_section(buf, pos, _TAGS_{s.name})")
        b("else:")
        with b.indent():
            if clear:
                b(f"{o}._unknown_tags = None")
            b("pos += 1")

    def tags_body(self, s: Struct, v: int) -> str:
        """The tag-section reader of a struct that has known tagged fields in ``v``."""
        b = Body()
        b("count, pos = _uvarint(buf, pos)")
        b("if count > len(buf) - pos:")
        with b.indent():
            b('raise _too_long("tag section", count, len(buf) - pos, pos)')
        b("unknown: _UnknownTags | None = None")
        b("last = -1")
        b("for _ in range(count):")
        with b.indent():
            b("tag, pos = _uvarint(buf, pos)")
            b("last = _check_tag_order(tag, last, pos)")
            b("tend, pos = _tag_end(buf, pos)")
            keyword = "if"
            for f in s.tagged_fields(v):
                b(f"{keyword} tag == {f.tag}:")
                keyword = "elif"
                with b.indent():
                    self.value(b, f, v, f"o.{f.py_name}")
                    b(f"_check_tag_end(pos, tend, {f.tag})")
            b(f"{keyword} tag in _TAGS_{s.name}:")
            with b.indent():
                b('raise _ProtocolError(f"tag {tag} is not valid in this version", offset=pos)')
            b("else:")
            with b.indent():
                b("if unknown is None:")
                with b.indent():
                    b("unknown = []")
                b("unknown.append((tag, bytes(buf[pos:tend])))")
            b("pos = tend")
        b("o._unknown_tags = unknown")
        b("return pos")
        return b.text()

    def fixed(self, element: str, at: str) -> str:
        """An expression reading one fixed-size value of type ``element`` at ``at``."""
        return f"{self.state.struct_for(STRUCT_CODES[element])}.unpack_from(buf, {at})[0]"

    def fixed_array(self, b: Body, element: str, target: str) -> None:
        """``n`` fixed-size values at ``pos`` into the list ``target``; ``pos`` after them."""
        packer = self.state.array_packer(STRUCT_CODES[element], "n")
        b(f"{target} = [*{packer}.unpack_from(buf, pos)] if n else []")
        b(f"pos += {FIXED_SIZES[element]} * n")

    def fixed_run(self, b: Body, run: list[Field], o: str) -> None:
        codes = "".join(STRUCT_CODES[f.type.element] for f in run)
        size = sum(FIXED_SIZES[f.type.element] for f in run)
        ident = self.state.struct_for(codes)
        if len(run) == 1:
            b(f"{self.target(o, run[0])} = {ident}.unpack_from(buf, pos)[0]")
        else:
            targets = ", ".join(self.target(o, f) for f in run)
            b(f"{targets} = {ident}.unpack_from(buf, pos)")
        b(f"pos += {size}")

    def length(self, b: Body, f: Field, v: int, wide: bool) -> None:
        """Read a length prefix into ``n`` (-1 = null)."""
        if _compact(f, self.msg, v):
            b("n = buf[pos] - 1")  # length + 1 as an unsigned varint; one byte is the rule
            b("if n < 127:")
            with b.indent():
                b("pos += 1")
            b("else:")
            with b.indent():
                b("n, pos = _uvarint(buf, pos)")
                b("n -= 1")
        else:
            b(f"n = {self.fixed('int32' if wide else 'int16', 'pos')}")
            b(f"pos += {4 if wide else 2}")

    def null_branch(self, b: Body, f: Field, v: int, target: str, what: str) -> None:
        """After ``length``: handle n < 0, then leave an open ``else`` for the value."""
        b("if n < 0:")
        with b.indent():
            if f.is_nullable(v):
                if not _compact(f, self.msg, v):  # a compact length is never below -1
                    b("if n != -1:")
                    with b.indent():
                        b(f'raise _ProtocolError(f"bad {what} length {{n}}", offset=pos)')
                b(f"{target} = None")
            else:
                b(f'raise _null_error("{what}", pos)')

    def value(self, b: Body, f: Field, v: int, target: str) -> None:
        t = f.type
        if t.is_array:
            self.array(b, f, v, target)
        elif t.is_struct:
            assert f.struct is not None
            reader = self.names(f.struct, v)
            if f.is_nullable(v):
                b("if buf[pos] >= 128:")  # int8 marker: negative means null
                with b.indent():
                    b(f"{target} = None")
                    b("pos += 1")
                b("else:")
                with b.indent():
                    b(f"{target}, pos = {reader}(buf, pos + 1)")
            else:
                b(f"{target}, pos = {reader}(buf, pos)")
        elif t.is_fixed:
            b(f"{target} = {self.fixed(t.element, 'pos')}")
            b(f"pos += {FIXED_SIZES[t.element]}")
        elif t.element == "uuid":
            b(f"{target} = _read_uuid(buf, pos)")
            b("pos += 16")
        else:
            self.sized(b, f, v, target, t.element)

    def sized(self, b: Body, f: Field, v: int, target: str, kind: str) -> None:
        """string / bytes / records: a length then that many bytes."""
        self.length(b, f, v, wide=kind != "string")
        self.null_branch(b, f, v, target, kind)
        b("else:")
        with b.indent():
            b("end = pos + n")
            b("if end > len(buf):")
            with b.indent():
                b(f'raise _too_long("{kind}", n, len(buf) - pos, pos)')
            if kind == "string":
                b(f"{target} = buf[pos:end].decode()")
            elif kind == "records":
                b(f"{target} = memoryview(buf)[pos:end]")
            else:
                b(f"{target} = bytes(buf[pos:end])")
            b("pos = end")

    def array(self, b: Body, f: Field, v: int, target: str) -> None:
        elem = f.type.element
        self.length(b, f, v, wide=True)
        self.null_branch(b, f, v, target, "array")
        b("elif n > len(buf) - pos:")
        with b.indent():
            b('raise _too_long("array", n, len(buf) - pos, pos)')
        b("else:")
        with b.indent():
            if elem in FIXED_SIZES:
                self.fixed_array(b, elem, target)
                return
            items, item, count = b.tmp("items"), b.tmp("item"), b.tmp("count")
            b(f"{items}: list[_Any] = []")
            # The body reuses n: range() gets a copy (mypyc re-reads a local loop bound).
            b(f"{count} = n")
            b(f"for _ in range({count}):")
            with b.indent():
                if f.struct is not None and is_leaf(f.struct, v):
                    self.struct_into(b, f.struct, v, item)
                elif f.struct is not None:
                    b(f"{item}, pos = {self.names(f.struct, v)}(buf, pos)")
                elif elem == "uuid":
                    b(f"{item} = _read_uuid(buf, pos)")
                    b("pos += 16")
                else:
                    self.sized(b, _element_field(f), v, item, elem)
                b(f"{items}.append({item})")
            b(f"{target} = {items}")


_NATIVE_READS: dict[str, str] = {
    "bool": "buf[{at}] != 0",  # what struct's "?" and Kafka's readers do
    "int8": "(buf[{at}] ^ 128) - 128",
    "int16": "int(_read_i16_be(buf, {at}))",
    "uint16": "int(_read_i16_be(buf, {at})) & 0xFFFF",
    "int32": "int(_read_i32_be(buf, {at}))",
    "uint32": "int(_read_i32_be(buf, {at})) & 0xFFFFFFFF",
    "int64": "int(_read_i64_be(buf, {at}))",
    "float64": "_read_f64_be(buf, {at})",
}
"""How the compiled readers read each fixed-size type: mypyc's primitives (``librt.strings``
C functions it calls directly) and byte arithmetic it compiles to C; ``int()`` so that a local
reused for several widths (``n``) keeps one type."""


_ZEROS = {"bool": "False", "int": "0", "float": "0.0"}
"""What a compiled reader fills a list of each Python type with before reading it."""


class NativeReadEmitter(ReadEmitter):
    """Readers for the compiled build: what mypyc makes fast, not what the interpreter does.

    Each integer is read by a ``librt.strings`` primitive (a C call instead of a ``struct``
    tuple), an array of them by a loop, and a struct's fields into typed locals, then passed to
    its class's constructor (a native class: one C call, direct field stores). The bytes read,
    the values and the errors raised (through ``Message.read``'s diagnosis) are the pure
    readers'.
    """

    def fixed(self, element: str, at: str) -> str:
        return _NATIVE_READS[element].format(at=at)

    def fixed_array(self, b: Body, element: str, target: str) -> None:
        # Filled in place: a comprehension grows its list by appends.
        size = FIXED_SIZES[element]
        values = b.tmp("values")
        kind = _PY_TYPES[element]
        b(f"{values}: list[{kind}] = [{_ZEROS[kind]}] * n")
        b("for i in range(n):")
        with b.indent():
            b(f"{values}[i] = {self.fixed(element, f'pos + {size} * i')}")
        b(f"{target} = {values}")
        b(f"pos += {size} * n")

    def target(self, o: str, f: Field) -> str:
        return f"{o}_{f.py_name}"  # a local, passed to the constructor

    def fixed_run(self, b: Body, run: list[Field], o: str) -> None:
        at = 0
        for f in run:
            value = self.fixed(f.type.element, f"pos + {at}" if at else "pos")
            b(f"{self.target(o, f)} = {value}")
            at += FIXED_SIZES[f.type.element]
        b(f"pos += {at}")

    def struct_into(self, b: Body, s: Struct, v: int, o: str) -> None:
        flexible = v in self.msg.flexible
        wire = _wire_fields(s, v, flexible)
        for f in wire:  # one type per local, whichever branch assigns it
            b(f"{self.target(o, f)}: {annotation(f)}")
        self.read_wire(b, wire, v, o)
        # Absent and tagged fields take the constructor's defaults (the pure readers' values).
        args = ", ".join(f"{f.py_name}={self.target(o, f)}" for f in wire)
        b(f"{o} = {s.name}({args})")
        if flexible:
            self.tag_section(b, s, v, o, clear=False)


def _element_field(f: Field) -> Field:
    """Array elements are never nullable (Kafka has no nullable array elements)."""
    from dataclasses import replace

    from codegen.model import NONE, FieldType

    return replace(f, type=FieldType(f.type.element, f.type.element, False), nullable=NONE)


class WriteEmitter:
    def __init__(self, msg: Message, state: ModuleState, names: Names) -> None:
        self.msg = msg
        self.state = state
        self.names = names

    def struct_body(self, s: Struct, v: int) -> str:
        b = Body()
        self.struct_into(b, s, v, "o", "w")
        return b.text()

    def struct_into(self, b: Body, s: Struct, v: int, o: str, w: str) -> None:
        """Write the struct bound to the local ``o``."""
        flexible = v in self.msg.flexible
        for f in s.fields:
            if not f.present(v) and not f.ignorable:
                b(f"if {is_default_check(f, f'{o}.{f.py_name}')}:")
                with b.indent():
                    b(f'raise _ProtocolError("{f.name} cannot be written in version {v}")')
        wire = _wire_fields(s, v, flexible)
        for run in _groups(wire):
            if run[0].type.is_fixed:
                codes = "".join(STRUCT_CODES[f.type.element] for f in run)
                values = ", ".join(_packable(f, f"{o}.{f.py_name}") for f in run)
                b(f"{w}({self.state.struct_for(codes)}.pack({values}))")
            else:
                self.value(b, run[0], v, f"{o}.{run[0].py_name}", w)
        if not flexible:
            b(f"if {o}._unknown_tags:")
            with b.indent():
                b('raise _ProtocolError("tagged fields need a flexible version")')
            return
        tags, condition = "[]", f"{o}._unknown_tags"
        if s.tagged_fields(v):
            tags = b.tmp("tags")
            condition = f"{tags} or {condition}"
            b(f"{tags}: _UnknownTags = []")
        for f in s.tagged_fields(v):
            b(f"if {is_default_check(f, f'{o}.{f.py_name}')}:")
            with b.indent():
                parts = b.tmp("tag_parts")
                b(f"{parts}: list[_Buffer] = []")
                self.value(b, f, v, f"{o}.{f.py_name}", f"{parts}.append")
                b(f'{tags}.append(({f.tag}, b"".join({parts})))')
        b(f"if {condition}:")
        with b.indent():
            b(f"_write_tags({w}, {tags}, {o}._unknown_tags, _TAGS_{s.name})")
        b("else:")
        with b.indent():
            b(f'{w}(b"\\x00")')

    def length(self, b: Body, f: Field, v: int, n: str, wide: bool, w: str) -> None:
        if _compact(f, self.msg, v):
            b(f"{w}(_UVARINT_1[{n} + 1] if {n} < 127 else _uvarint_bytes({n} + 1))")
        else:
            b(f"{w}({self.state.struct_for('i' if wide else 'h')}.pack({n}))")

    def null(self, b: Body, f: Field, v: int, w: str, wide: bool) -> None:
        if f.type.is_struct and not f.type.is_array:
            b(f'{w}(b"\\xff")')
        elif _compact(f, self.msg, v):
            b(f'{w}(b"\\x00")')
        else:
            b(f'{w}(b"\\xff\\xff\\xff\\xff")' if wide else f'{w}(b"\\xff\\xff")')

    def value(self, b: Body, f: Field, v: int, value: str, w: str) -> None:
        t = f.type
        wide = t.is_array or t.element != "string"
        if not f.is_nullable(v) and annotation_is_optional(f):
            x = b.tmp("x")
            b(f"{x} = {value}")
            b(f"if {x} is None:")
            with b.indent():
                b(f'raise _ProtocolError("{f.name} is not nullable in version {v}")')
            self._non_null(b, f, v, x, w)
        elif f.is_nullable(v):
            x = b.tmp("x")
            b(f"{x} = {value}")
            b(f"if {x} is None:")
            with b.indent():
                self.null(b, f, v, w, wide)
            b("else:")
            with b.indent():
                if t.is_struct and not t.is_array:
                    b(f'{w}(b"\\x01")')
                self._non_null(b, f, v, x, w)
        else:
            self._non_null(b, f, v, value, w)

    def _non_null(self, b: Body, f: Field, v: int, value: str, w: str) -> None:
        t = f.type
        if t.is_array:
            items, item = b.tmp("items"), b.tmp("item")
            b(f"{items} = {value}")
            b(f"n = len({items})")
            self.length(b, f, v, "n", True, w)
            if t.element in FIXED_SIZES:
                packer = self.state.array_packer(STRUCT_CODES[t.element], "n")
                b(f"{w}({packer}.pack(*{items}))")
                return
            if t.element == "string":  # a str would otherwise be written char by char
                b(f"if not isinstance({items}, list | tuple):")
                with b.indent():
                    b(f'raise _ProtocolError("{f.name} must be a list")')
            b(f"for {item} in {items}:")
            with b.indent():
                if f.struct is not None and is_leaf(f.struct, v):
                    self.struct_into(b, f.struct, v, item, w)
                elif f.struct is not None:
                    b(f"{self.names(f.struct, v)}({item}, {w})")
                else:
                    self._non_null(b, _element_field(f), v, item, w)
        elif t.is_struct:
            assert f.struct is not None
            b(f"{self.names(f.struct, v)}({value}, {w})")
        elif t.is_fixed:
            b(f"{w}({self.state.struct_for(STRUCT_CODES[t.element])}.pack({_packable(f, value)}))")
        elif t.element == "uuid":
            b(f"{w}({value}.bytes)")
        elif t.element == "string":
            raw = b.tmp("raw")
            b(f"{raw} = {value}.encode()")
            b(f"n = len({raw})")
            self.length(b, f, v, "n", False, w)
            b(f"{w}({raw})")
        else:  # bytes / records: the buffer itself is a chunk (zero copy)
            raw = b.tmp("raw")
            b(f"{raw} = {value}")
            b(f"if type({raw}) is not bytes:")
            with b.indent():
                b(f"{raw} = _as_chunk({raw})")
            b(f"n = len({raw})")
            self.length(b, f, v, "n", True, w)
            b(f"{w}({raw})")
