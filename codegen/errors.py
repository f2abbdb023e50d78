"""Kafka's error codes: ``protocol_specs/errors.yaml`` -> ``generated/errors.py``.

    python -m codegen errors [--out DIR] [--check]
    python -m codegen errors --extract KAFKA_SOURCE_TREE

The table is Kafka's own (``Errors.java``: code, name, default message) plus whether each
error is retriable, which Kafka decides by its exception class extending ``RetriableException``.
It is pinned to the release the message definitions are (``kafka-specs.lock.json``): a table of
another release fails generation, so an upgrade of the definitions cannot leave the error codes
behind.

``--extract`` rebuilds the YAML from a Kafka source tree (a checkout, or ``git archive`` of its
``clients/src/main/java``): it reads the enum in ``Errors.java`` and follows each exception
class up its ``extends`` chain. Nothing is guessed: a construct the small Java scanner below does
not know fails loudly.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from codegen.model import SpecError
from codegen.render import format_source, stale_files, template_env, write_files
from codegen.specs import REPO_ROOT, SPECS_DIR, load_declaration, load_lock

ERRORS_SPEC = SPECS_DIR / "errors.yaml"
SCHEMA = "errors.schema.json"
OUTPUT = "errors.py"
"""The module of ``generated/`` this generator owns (the Kafka codecs' generator leaves it)."""
DEFAULT_OUT = REPO_ROOT / "generated"

JAVA_ROOT = Path("clients/src/main/java")
ERRORS_JAVA = JAVA_ROOT / "org/apache/kafka/common/protocol/Errors.java"
RETRIABLE_ROOT = "org.apache.kafka.common.errors.RetriableException"

_ENV = template_env()
_ENV.filters["py"] = repr


# --- the table ---------------------------------------------------------------------------------


def load_errors(path: Path = ERRORS_SPEC) -> dict[str, Any]:
    """The declaration, validated by its schema and checked for what the enum relies on."""
    table: dict[str, Any] = load_declaration(path, SCHEMA)
    pinned = load_lock()["kafka_release"]
    if table["kafka_release"] != pinned:
        raise SpecError(
            f"{path.name}: Kafka {table['kafka_release']}'s table, but the message definitions"
            f" are pinned to {pinned}: run python -m codegen errors --extract on {pinned}'s source"
        )
    names: set[str] = set()
    codes: set[int] = set()
    for entry in table["errors"]:
        name, code = entry["name"], entry["code"]
        if name in names:
            raise SpecError(f"{path.name}: {name} is listed twice")
        if code in codes:
            raise SpecError(f"{path.name}: code {code} is listed twice ({name})")
        names.add(name)
        codes.add(code)
        if (entry["message"] is None) != (name == "NONE"):
            raise SpecError(f"{path.name}: {name}: only NONE has no message")
    for name, code in (("NONE", 0), ("UNKNOWN_SERVER_ERROR", -1)):
        if not any(e["name"] == name and e["code"] == code for e in table["errors"]):
            raise SpecError(f"{path.name}: {name} must be code {code}")
    return table


def render_errors(path: Path = ERRORS_SPEC) -> str:
    """The generated module's formatted source."""
    table = load_errors(path)
    text = _ENV.get_template("errors.py.j2").render(
        release=table["kafka_release"],
        source=table["source"],
        errors=sorted(table["errors"], key=lambda e: e["code"]),
    )
    return format_source(text)


def generate_errors(out: Path, check: bool) -> int:
    """Write (or with ``check`` compare) ``out/errors.py``; the exit status."""
    target = out / OUTPUT
    files = {target: render_errors()}
    if check:
        problems = stale_files(files, f"{ERRORS_SPEC.name} gives")
        if not problems:
            print(f"{target.name} matches {ERRORS_SPEC.name}")
            return 0
        for p in problems:
            print(p, file=sys.stderr)
        print("generated error codes are stale: run scripts/regen", file=sys.stderr)
        return 1
    write_files(files)
    print(f"wrote {target} from {ERRORS_SPEC.name}")
    return 0


# --- extraction from Kafka's source ------------------------------------------------------------

# Java tokens the enum and a class declaration are made of; anything else is an error (gaps are
# found by checking that the matches cover the text).
_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<comment>//[^\n]*|/\*.*?\*/)
    |(?P<string>"(?:\\.|[^"\\\n])*")
    |(?P<char>'(?:\\.|[^'\\\n])')
    |(?P<op>->|::|[-+(){}\[\]<>,;.=@?&|!*/%:^~])
    |(?P<number>[0-9][0-9_]*[lL]?)
    |(?P<word>[A-Za-z_$][A-Za-z0-9_$]*)""",
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0"}


def _tokens(text: str, what: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            raise SpecError(f"{what}: cannot read Java at offset {pos}: {text[pos : pos + 40]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            out.append((kind, m.group()))
    if pos != len(text):
        raise SpecError(f"{what}: cannot read Java at offset {pos}: {text[pos : pos + 40]!r}")
    return out


def _java_string(literal: str) -> str:
    """The value of a Java string literal (its quotes included)."""
    body = literal[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "u":
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


def _split_args(tokens: list[tuple[str, str]], what: str) -> list[list[tuple[str, str]]]:
    """A parenthesised argument list (first token ``(``) split at its top-level commas."""
    assert tokens[0][1] == "("
    args: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for token in tokens[1:]:
        if token[1] in "({[" and token[0] == "op":
            depth += 1
        elif token[1] in ")}]" and token[0] == "op":
            if depth == 0:
                return args
            depth -= 1
        elif token == ("op", ",") and depth == 0:
            args.append([])
            continue
        args[-1].append(token)
    raise SpecError(f"{what}: unterminated argument list")


def _parse_enum(text: str) -> list[tuple[str, int, str | None, str | None]]:
    """``Errors.java``'s constants: (name, code, message or None, exception class or None)."""
    what = "Errors.java"
    start = text.find("public enum Errors {")
    if start < 0:
        raise SpecError(f"{what}: no 'public enum Errors {{'")
    tokens = _tokens(text[start + len("public enum Errors {") :], what)
    entries: list[tuple[str, int, str | None, str | None]] = []
    i = 0
    while True:
        kind, name = tokens[i]
        if kind != "word" or tokens[i + 1] != ("op", "("):
            raise SpecError(f"{what}: expected an enum constant, found {name!r}")
        args = _split_args(tokens[i + 1 :], f"{what}: {name}")
        width = sum(len(a) for a in args) + len(args) + 1  # the tokens, commas and parentheses
        i += 1 + width
        if len(args) != 3:
            raise SpecError(f"{what}: {name}: expected (code, message, exception), got {args}")
        code_tokens, message_tokens, factory = args
        number = "".join(t[1] for t in code_tokens)
        if not re.fullmatch(r"-?[0-9]+", number):
            raise SpecError(f"{what}: {name}: code {number!r} is not an integer literal")
        message: str | None
        if message_tokens == [("word", "null")]:
            message = None
        else:
            parts = message_tokens[::2]
            joins = message_tokens[1::2]
            if any(k != "string" for k, _ in parts) or any(j != ("op", "+") for j in joins):
                raise SpecError(f"{what}: {name}: message is not a string literal concatenation")
            message = "".join(_java_string(v) for _, v in parts)
        exception: str | None
        if len(factory) == 3 and factory[1:] == [("op", "::"), ("word", "new")]:
            exception = factory[0][1]
        elif [v for _, v in factory] == ["message", "->", "null"]:
            exception = None
        else:
            raise SpecError(f"{what}: {name}: unknown exception factory {factory}")
        entries.append((name, int(number), message, exception))
        separator = tokens[i][1]
        i += 1
        if separator == ";":
            return entries
        if separator != ",":
            raise SpecError(f"{what}: after {name}: expected ',' or ';', found {separator!r}")


def _imports(text: str) -> tuple[str, dict[str, str]]:
    """A Java file's package and its single-type imports (simple name -> qualified name)."""
    package = re.search(r"^package\s+([\w.]+)\s*;", text, re.MULTILINE)
    imports = {
        m.group(1).rsplit(".", 1)[-1]: m.group(1)
        for m in re.finditer(r"^import\s+([\w.]+)\s*;", text, re.MULTILINE)
    }
    return (package.group(1) if package else ""), imports


_JAVA_LANG = {"Throwable", "Exception", "RuntimeException", "IllegalStateException", "Error"}
"""Superclasses that need no import (java.lang): the end of a chain, not retriable."""


def _is_retriable(qualified: str, root: Path, chain: list[str]) -> bool:
    """Whether the class extends ``RetriableException`` (directly or through others)."""
    if qualified == RETRIABLE_ROOT:
        return True
    source = root / JAVA_ROOT / (qualified.replace(".", "/") + ".java")
    if not source.is_file():
        # Outside Kafka (java.lang.RuntimeException...): the chain ends, not retriable.
        if not qualified.startswith("java."):
            raise SpecError(f"{' -> '.join(chain)}: {source} not found")
        return False
    text = source.read_text(encoding="utf-8")
    simple = qualified.rsplit(".", 1)[-1]
    m = re.search(rf"\bclass\s+{re.escape(simple)}\b[^{{]*?\bextends\s+([\w.]+)", text)
    if m is None:
        raise SpecError(f"{' -> '.join(chain)}: {source.name} declares no superclass")
    name = m.group(1)
    package, imports = _imports(text)
    if "." in name:
        parent = name
    elif name in imports:
        parent = imports[name]
    elif (root / JAVA_ROOT / package.replace(".", "/") / f"{name}.java").is_file():
        parent = f"{package}.{name}"
    elif name in _JAVA_LANG:
        parent = f"java.lang.{name}"
    else:
        raise SpecError(f"{' -> '.join(chain)}: {source.name}: cannot find its superclass {name}")
    return _is_retriable(parent, root, [*chain, parent])


def extract_errors(root: Path) -> list[dict[str, Any]]:
    """Every error of the Kafka source tree at ``root``, in ``Errors.java``'s order."""
    errors_java = root / ERRORS_JAVA
    if not errors_java.is_file():
        raise SpecError(f"{root}: no {ERRORS_JAVA}")
    text = errors_java.read_text(encoding="utf-8")
    package, imports = _imports(text)
    out: list[dict[str, Any]] = []
    for name, code, message, exception in _parse_enum(text):
        retriable = False
        if exception is not None:
            qualified = imports.get(exception, f"{package}.{exception}")
            retriable = _is_retriable(qualified, root, [name, qualified])
        out.append(
            {
                "name": name,
                "code": code,
                "retriable": retriable,
                "exception": exception,
                "message": message,
            }
        )
    return out


_HEADER = """\
# Kafka {release}'s error codes: every constant of its Errors.java, with Kafka's default message,
# and whether it is retriable (its exception class extends RetriableException, as Kafka decides).
# Written by `python -m codegen errors --extract KAFKA_SOURCE_TREE`: do not edit by hand.
# `scripts/regen` writes generated/errors.py from it (`--check`: stale). The messages are Apache
# Kafka's (Apache-2.0).
"""


def spec_text(errors: list[dict[str, Any]], release: str) -> str:
    """The YAML of ``protocol_specs/errors.yaml`` for ``errors`` (one block per error; strings
    as JSON literals, which YAML reads as double-quoted scalars)."""
    lines = [_HEADER.format(release=release)]
    lines.append(f"kafka_release: {json.dumps(release)}\n")
    lines.append(f"source: {json.dumps(ERRORS_JAVA.as_posix())}\n")
    lines.append("errors:\n")
    for e in errors:
        lines.append(f"  - name: {e['name']}\n")
        lines.append(f"    code: {e['code']}\n")
        lines.append(f"    retriable: {'true' if e['retriable'] else 'false'}\n")
        lines.append(f"    exception: {json.dumps(e['exception'])}\n")
        lines.append(f"    message: {json.dumps(e['message'], ensure_ascii=False)}\n")
    return "".join(lines)


def write_spec(root: Path, path: Path | None = None) -> int:
    """``--extract``: rewrite the table from the source tree at ``root`` (of the pinned release:
    the tree carries no release name we could check, so that is the caller's word)."""
    path = path or ERRORS_SPEC
    errors = extract_errors(root)
    release = load_lock()["kafka_release"]
    path.write_text(spec_text(errors, release), encoding="utf-8")
    load_errors(path)  # what we wrote must pass the schema and the checks
    retriable = sum(1 for e in errors if e["retriable"])
    print(f"wrote {path}: {len(errors)} errors ({retriable} retriable) from {root}")
    return 0
