"""Render the model into Python modules (jinja2 templates + black), deterministically."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import black
import jinja2

from codegen.emit import (
    ModuleState,
    NativeReadEmitter,
    ReadEmitter,
    WriteEmitter,
    annotation,
    annotation_is_optional,
    default_expr,
)
from codegen.model import Field, Message, SpecError, Struct, Versions
from codegen.special_cases import (
    SPECIAL_CASES,
    request_header_version,
    response_header_version,
)
from codegen.specs import REPO_ROOT, load_broker_apis

TEMPLATES = Path(__file__).resolve().parent / "templates"

KAFKA = "Kafka"
"""Vendor of definitions that come from a Kafka release (the default)."""
KAFSCALE = "KafScale"
"""Vendor of KafScale's own definitions (``protocol_specs/storage``): no API table, our license."""


def template_env() -> jinja2.Environment:
    """The jinja environment every generator renders ``codegen/templates`` with (strict:
    an undefined name is an error; no escaping: the output is Python)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


_ENV = template_env()

# Runtime names a generated module may need: alias -> import line. Only the ones a module
# uses are imported (ruff would flag the rest).
_IMPORTS: dict[str, str] = {
    "_Packer": "from struct import Struct as _Packer",
    "_Any": "from typing import Any as _Any",
    "_Final": "from typing import Final as _Final",
    "_UUID": "from uuid import UUID as _UUID",
    " ": "",  # isort's section break: standard library above, third party below
    "_read_f64_be": "from librt.strings import read_f64_be as _read_f64_be",
    "_read_i16_be": "from librt.strings import read_i16_be as _read_i16_be",
    "_read_i32_be": "from librt.strings import read_i32_be as _read_i32_be",
    "_read_i64_be": "from librt.strings import read_i64_be as _read_i64_be",
    "_mypyc_attr": "from mypy_extensions import mypyc_attr as _mypyc_attr",
    "": "",  # isort's section break: third party above, first party below
    "_ProtocolError": "from kafscale.protocol.errors import ProtocolError as _ProtocolError",
    "_UNSET": "from kafscale.protocol.message import UNSET as _UNSET",
    "_F": "from kafscale.protocol.message import FieldSpec as _F",
    "_Message": "from kafscale.protocol.message import Message as _Message",
    "_StructBase": "from kafscale.protocol.message import Struct as _StructBase",
    "_Unset": "from kafscale.protocol.message import Unset as _Unset",
    "_BOOL": "from kafscale.protocol.wire import BOOL as _BOOL",
    "_UVARINT_1": "from kafscale.protocol.wire import UVARINT_1 as _UVARINT_1",
    "_ZERO_UUID": "from kafscale.protocol.wire import ZERO_UUID as _ZERO_UUID",
    "_Buffer": "from kafscale.protocol.wire import Buffer as _Buffer",
    "_UnknownTags": "from kafscale.protocol.wire import UnknownTags as _UnknownTags",
    "_Writer": "from kafscale.protocol.wire import Writer as _Writer",
    "_array_struct": "from kafscale.protocol.wire import array_struct as _array_struct",
    "_as_chunk": "from kafscale.protocol.wire import as_chunk as _as_chunk",
    "_check_tag_end": "from kafscale.protocol.wire import check_tag_end as _check_tag_end",
    "_check_tag_order": "from kafscale.protocol.wire import check_tag_order as _check_tag_order",
    "_null_error": "from kafscale.protocol.wire import null_error as _null_error",
    "_read_tag_section": "from kafscale.protocol.wire import read_tag_section as _read_tag_section",
    "_read_uuid": "from kafscale.protocol.wire import read_uuid as _read_uuid",
    "_uvarint": "from kafscale.protocol.wire import read_uvarint as _uvarint",
    "_small_arrays": "from kafscale.protocol.wire import small_arrays as _small_arrays",
    "_tag_end": "from kafscale.protocol.wire import tag_payload_end as _tag_end",
    "_too_long": "from kafscale.protocol.wire import too_long as _too_long",
    "_uvarint_bytes": "from kafscale.protocol.wire import uvarint as _uvarint_bytes",
    "_write_tags": "from kafscale.protocol.wire import write_tags as _write_tags",
}


def docstring(text: str, indent: str = "    ") -> str:
    """A triple-quoted literal for ``text`` (safe for any content)."""
    text = text.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text += " "
    if "\n" in text:
        body = "\n".join(indent + line if line.strip() else "" for line in text.split("\n"))
        body = body[len(indent) :]
        return f'"""{body}\n{indent}"""'
    return f'"""{text}"""'


def _field_doc(f: Field) -> str:
    text = f.about or f.name
    facts = [f"Versions {f.versions}"]
    if not f.nullable.empty:
        facts.append(f"nullable {f.nullable}")
    if f.tag is not None:
        facts.append(f"tag {f.tag} in {f.tagged}")
    if f.ignorable:
        facts.append("ignorable")
    return docstring(f"{text}\n\n{', '.join(facts)}.")


def _range(v: Versions) -> str:
    return repr(v.as_tuple())


def _spec(f: Field) -> str:
    if f.type.is_array or f.type.is_struct:
        default = "None" if f.default is None else "()"
    else:
        default = default_expr(f)
    struct = f.struct.name if f.struct is not None else "None"
    flexible = "None" if f.flexible is None else _range(f.flexible)
    return (
        f'"{f.py_name}", "{f.name}", "{f.type.name}", {struct}, {_range(f.versions)}, '
        f"{_range(f.nullable)}, {_range(f.tagged)}, {f.tag}, {f.ignorable}, {default}, {flexible}"
    )


def _class(msg: Message, s: Struct, root: bool, vendor: str) -> dict[str, Any]:
    fields = []
    for f in s.fields:
        ann = annotation(f)
        optional = annotation_is_optional(f)
        fresh = (f.type.is_array or f.type.is_struct) and f.default is not None
        fields.append(
            {
                "py_name": f.py_name,
                "annotation": ann,
                "doc": _field_doc(f),
                # A fresh default is marked by the UNSET sentinel: admitted by the annotation,
                # since compiled (mypyc) code checks argument types at run time.
                "param_annotation": (
                    ann.replace(" | None", "") + " | _Unset" + (" | None" if optional else "")
                    if fresh
                    else ann
                ),
                "param_default": "_UNSET" if fresh else default_expr(f),
                "init_expr": (
                    f"{default_expr(f)} if isinstance({f.py_name}, _Unset) else {f.py_name}"
                    if fresh
                    else f.py_name
                ),
                "spec": _spec(f),
            }
        )
    if root:
        history = "\n".join(msg.history)
        about = f"{vendor} {msg.name} ({msg.kind}"
        if msg.api_key is not None:
            about += f", API key {msg.api_key}"
        about += f"), versions {msg.valid}, flexible {msg.flexible}."
        if history:
            about += "\n\n" + history
    else:
        about = s.about or f"{s.name} (part of {msg.name})."
    return {
        "name": s.name,
        "base": "_Message" if root else "_StructBase",
        "root": root,
        "doc": docstring(about),
        "fields": fields,
        "slots": sorted(f["py_name"] for f in fields),
    }


@dataclass
class _Fn:
    name: str
    params: str
    returns: str
    comment: str
    body: str


def _post_order(msg: Message) -> list[Struct]:
    """Structs with every struct they contain before them."""
    out: list[Struct] = []
    seen: set[str] = set()

    def visit(s: Struct) -> None:
        if s.name in seen:
            return
        seen.add(s.name)
        for f in s.fields:
            if f.struct is not None:
                visit(f.struct)
        out.append(s)

    for s in msg.structs:
        visit(s)
    return out


def _versions_comment(versions: list[int]) -> str:
    spans: list[str] = []
    start = prev = versions[0]
    for v in [*versions[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return "versions " + ", ".join(spans)


def _dedupe(
    prefix: str, s: Struct, versions: list[int], render: Any
) -> tuple[dict[int, str], list[tuple[str, list[int], str]]]:
    """Render a body per version; versions with identical bodies share one function."""
    by_body: dict[str, list[int]] = {}
    for v in versions:
        by_body.setdefault(render(s, v), []).append(v)
    names: dict[int, str] = {}
    fns = []
    for body, vs in by_body.items():
        name = f"{prefix}_{s.name}_v{vs[0]}"
        fns.append((name, vs, body))
        for v in vs:
            names[v] = name
    return names, fns


def render_message(msg: Message, release: str, vendor: str = KAFKA, native: bool = False) -> str:
    """The module of one message; ``native``: the compiled build's flavor (see
    :func:`render_native`), else the committed pure-Python one."""
    state = ModuleState()
    read_names: dict[tuple[str, int], str] = {}
    tag_names: dict[tuple[str, int], str] = {}
    write_names: dict[tuple[str, int], str] = {}
    reader = (NativeReadEmitter if native else ReadEmitter)(
        msg,
        state,
        lambda s, v: read_names[(s.name, v)],
        lambda s, v: tag_names[(s.name, v)],
    )
    writer = WriteEmitter(msg, state, lambda s, v: write_names[(s.name, v)])
    functions: list[_Fn] = []
    for s in _post_order(msg):
        versions = sorted(s.used_versions)
        if not versions:
            continue
        tagged_versions = [v for v in versions if s.tagged_fields(v)]
        names, fns = _dedupe("_read_tags", s, tagged_versions, reader.tags_body)
        tag_names.update({(s.name, v): n for v, n in names.items()})
        for name, vs, body in fns:
            functions.append(
                _Fn(name, f"o: {s.name}, buf: bytes, pos: int", "int", _versions_comment(vs), body)
            )
        names, fns = _dedupe("_read", s, versions, reader.struct_body)
        read_names.update({(s.name, v): n for v, n in names.items()})
        for name, vs, body in fns:
            functions.append(
                _Fn(
                    name,
                    "buf: bytes, pos: int",
                    f"tuple[{s.name}, int]",
                    _versions_comment(vs),
                    body,
                )
            )
        names, fns = _dedupe("_write", s, versions, writer.struct_body)
        write_names.update({(s.name, v): n for v, n in names.items()})
        for name, vs, body in fns:
            functions.append(
                _Fn(name, f"o: {s.name}, w: _Writer", "None", _versions_comment(vs), body)
            )
    roots = [read_names[(msg.root.name, v)] for v in msg.versions()]
    roots += [write_names[(msg.root.name, v)] for v in msg.versions()]
    functions = _reachable(functions, roots)
    # Each class after the structs it contains: compiled (mypyc) class bodies evaluate their
    # annotations, so a struct field's class must exist already.
    classes = [_class(msg, s, s is msg.root, vendor) for s in _post_order(msg)]
    tag_sets = [
        (s.name, "{" + ", ".join(map(str, s.known_tags)) + "}" if s.known_tags else "")
        for s in msg.structs
        if s.used_versions and v_flexible(msg, s)
    ]
    module_doc = docstring(
        f"{msg.name}: {vendor} {msg.kind} message"
        + (f", API key {msg.api_key}" if msg.api_key is not None else "")
        + f".\n\nGenerated from {msg.source} of {vendor} {release}.",
        indent="",
    )
    text = _ENV.get_template("message.py.j2").render(
        msg=msg,
        release=release,
        vendor=vendor,
        native=native,
        module_doc=module_doc,
        imports="{{IMPORTS}}",
        formats=sorted(state.formats.items()),
        arrays=sorted(state.arrays.items()),
        classes=classes,
        all_names=sorted(c["name"] for c in classes),
        tag_sets=tag_sets,
        functions=functions,
        readers=[(v, read_names[(msg.root.name, v)]) for v in msg.versions()],
        writers=[(v, write_names[(msg.root.name, v)]) for v in msg.versions()],
    )
    used = [
        line
        for alias, line in _IMPORTS.items()
        if not alias.strip() or re.search(rf"\b{re.escape(alias)}\b", text)
    ]
    return text.replace("{{IMPORTS}}", "\n".join(used).strip())


def render_native(modules: Iterable[str]) -> dict[str, str]:
    """The compiled build's flavor of the named modules of ``generated/`` (``metadata_response``),
    from the pinned Kafka definitions: native classes (no ``__slots__``, mypyc lays them out) and
    :class:`NativeReadEmitter`'s readers; the same classes, fields, writers and errors as the
    committed modules. ``scripts/accelerate`` compiles these, never commits them."""
    from codegen.specs import default_specs_path, load_lock, load_messages

    wanted = set(modules)
    release = str(load_lock()["kafka_release"])
    by_module = {m.module: m for m in load_messages(default_specs_path())}
    missing = wanted - by_module.keys()
    if missing:
        raise SpecError(f"no definition generates {', '.join(sorted(missing))}")
    return {name: render_message(by_module[name], release, native=True) for name in wanted}


def _reachable(functions: list[_Fn], roots: list[str]) -> list[_Fn]:
    """Drop functions nothing calls (readers of structs that are always decoded inline)."""
    by_name = {fn.name: fn for fn in functions}
    keep: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo.extend(re.findall(r"\b_(?:read|write)\w*_v\d+\b", by_name[name].body))
    return [fn for fn in functions if fn.name in keep]


def v_flexible(msg: Message, s: Struct) -> bool:
    """True when the struct occurs in a flexible version (it then needs its tag set)."""
    return any(v in msg.flexible for v in s.used_versions)


def render_registry(messages: Iterable[Message], release: str, strict: bool = True) -> str:
    msgs = list(messages)
    apis: dict[int, dict[str, Message]] = {}
    for m in msgs:
        if m.api_key is not None:
            apis.setdefault(m.api_key, {})[m.kind] = m
    rows = []
    for key in sorted(apis):
        req, resp = apis[key]["request"], apis[key]["response"]
        versions = list(req.versions())
        rows.append(
            {
                "key": key,
                "name": req.name.removesuffix("Request"),
                "request": req,
                "response": resp,
                "listeners": tuple(req.listeners),
                "req_headers": tuple(
                    request_header_version(key, v, v in req.flexible) for v in versions
                ),
                "resp_headers": tuple(
                    response_header_version(key, v, v in resp.flexible) for v in versions
                ),
            }
        )
    others = [m for m in msgs if m.api_key is None]
    table = sorted(load_broker_apis(msgs, strict).items())
    served = [(key, b.served.as_tuple()) for key, b in table]
    advertised = [(key, b.advertised.as_tuple()) for key, b in table]
    effects = [(key, b.effects) for key, b in table if b.effects != "ordered"]
    return _ENV.get_template("registry.py.j2").render(
        release=release,
        rows=rows,
        rows_by_key={r["key"]: r for r in rows},
        others=others,
        exceptions=SPECIAL_CASES,
        served=served,
        advertised=advertised,
        effects=effects,
    )


FORMAT_CACHE_ENV = "KAFSCALE_CODEGEN_CACHE"
"""Where :func:`format_source` keeps black's output (default ``build/codegen-cache``, never
committed; empty: no cache)."""


_BLACK_VERSION = importlib.metadata.version("black")


def format_cache_dir() -> Path | None:
    value = os.environ.get(FORMAT_CACHE_ENV)
    if value is None:
        return REPO_ROOT / "build" / "codegen-cache"
    return Path(value) if value else None


def format_source(text: str) -> str:
    """``text`` formatted by black (line length 100).

    Black is nearly all of a generator run's time (~190 modules, tens of seconds of CPU), and
    ``--check`` (scripts/regen --check, then tests/test_releases.py again) formats the same
    texts as the last run did: the result is kept under :func:`format_cache_dir`, keyed by the
    sha256 of the text, black's version and the interpreter's (an entry is written whole, by
    rename, so a reader sees all of it or nothing)."""
    cache = format_cache_dir()
    if cache is None:
        return _black(text)
    version = f"black {_BLACK_VERSION} py{sys.version_info[0]}.{sys.version_info[1]} 100"
    key = hashlib.sha256(f"{version}\0{text}".encode()).hexdigest()
    entry = cache / key[:2] / f"{key}.py"
    with contextlib.suppress(OSError):
        return entry.read_text(encoding="utf-8")
    out = _black(text)
    partial = entry.with_name(f"{key}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(out, encoding="utf-8")
        os.replace(partial, entry)
    except OSError:  # a read-only tree or a full disk: no cache, the same result
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return out


def _black(text: str) -> str:
    return black.format_str(text, mode=black.Mode(line_length=100))


def stale_files(files: Mapping[Path, str], source: str, root: Path | None = None) -> list[str]:
    """``--check``: each file that does not hold its text, in path order, as ``PATH: missing``
    or ``PATH: differs from what SOURCE`` (``PATH`` relative to ``root`` when given)."""
    problems = []
    for target, text in sorted(files.items()):
        shown = target.relative_to(root) if root else target
        if not target.is_file():
            problems.append(f"{shown}: missing")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{shown}: differs from what {source}")
    return problems


def write_files(files: Mapping[Path, str]) -> None:
    """Write each file whose text differs (or that is missing), with its directory."""
    for target, text in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")


def _format_item(item: tuple[str, str]) -> tuple[str, str]:
    return item[0], format_source(item[1])


def render_all(
    messages: list[Message],
    release: str,
    strict: bool = True,
    jobs: int | None = None,
    vendor: str = KAFKA,
) -> dict[str, str]:
    """Every output file (name -> formatted source); ``strict``: see ``load_broker_apis``.

    ``vendor`` :data:`KAFSCALE` marks our own definitions (``release`` is then their directory):
    the files say so, and the package gets its own ``__init__``. ``registry.py`` (the API table)
    is written only when the definitions contain requests and responses.
    """
    raw = {f"{m.module}.py": render_message(m, release, vendor) for m in messages}
    if any(m.api_key is not None for m in messages):
        raw["registry.py"] = render_registry(messages, release, strict)
    init = "init.py.j2" if vendor == KAFKA else "own_init.py.j2"
    raw["__init__.py"] = _ENV.get_template(init).render(release=release, messages=messages)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(_format_item, sorted(raw.items()), chunksize=8))
