"""The ``kafscale`` command line.

Commands are argparse subcommands. Each group is added by an ``_add_<group>`` function that
creates its parsers and sets ``handler`` (a function ``(argparse.Namespace) -> int``) on each
leaf with ``set_defaults``; :func:`build_parser` calls those functions. A new command (``kafscale
serve``) is one more ``_add_serve(commands)`` call.

A handler signals a user error by raising :class:`CliError`: :func:`main` prints it as one line
``kafscale: error: ...`` on stderr and exits with status 2 (no traceback). ``kafscale serve``'s
broker reports what it cannot start with as its own
:class:`~kafscale.broker.startup.BrokerStartError`, which :func:`main` answers the same way (the
broker never imports this module). Anything else that escapes a handler is a bug and keeps its
traceback.

``kafscale proto`` is the protocol inspector:

* ``decode``: hex bytes of a request or response body (optionally preceded by its header) to
  JSON, with Kafka's name of every error code beside it (``"error_code": 3, "error_name":
  "UNKNOWN_TOPIC_OR_PARTITION"``);
* ``encode``: that JSON back to the identical bytes (an error code given by its number or its
  name);
* ``list``: the API table (keys, names, versions, header versions).
"""

from __future__ import annotations

import argparse
import json
import os
import string
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from generated import registry
from generated.errors import ErrorCode, error_name
from generated.registry import ApiSpec
from kafscale.admin.commands import add_admin_commands
from kafscale.broker.main import add_serve
from kafscale.broker.security.user_cli import add_user
from kafscale.broker.startup import BrokerStartError
from kafscale.operator.command import add_operator
from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.message import FieldSpec, Message, Struct

PROG = "kafscale"
EXIT_USAGE = 2
"""Exit status of every user error (bad arguments, bad input, settings a broker cannot start
with)."""

Kind = Literal["request", "response"]
Handler = Callable[[argparse.Namespace], int]

_API_KEY_AND_VERSION = struct.Struct(">hh")


class CliError(Exception):
    """A user error: :func:`main` prints it as one ``kafscale: error:`` line, exit status 2."""


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``kafscale`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="KafScale: a Kafka-protocol-compatible broker whose log lives in object "
        "storage.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_proto(commands)
    add_serve(commands)
    add_user(commands)  # SCRAM users in the metadata store
    add_admin_commands(commands)  # topic, group, cluster, produce, consume
    add_operator(commands)  # kopf is imported only when it runs
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kafscale`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status (0 success, 2 user error) instead of exiting, also for argparse's
    own exits (``--help``, usage errors), so that it can be called in-process.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return _exit_status(exit_.code)
    handler: Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()
    except (CliError, BrokerStartError) as error:
        _print_error(str(error))
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`kafscale proto list | head`): not an error worth a message.
        # Point stdout at /dev/null so that the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_error(text: str) -> None:
    # One line, whatever the text: a multi-line reason is folded.
    one_line = " ".join(text.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)


# --- kafscale proto ----------------------------------------------------------------------------


def _add_proto(commands: Any) -> None:
    proto = commands.add_parser(
        "proto",
        help="inspect Kafka protocol messages (decode, encode, list)",
        description="Inspect Kafka protocol messages: decode bytes to JSON, encode JSON to "
        "bytes, list the APIs.",
    )
    actions = proto.add_subparsers(dest="proto_command", metavar="ACTION", required=True)

    decode = actions.add_parser(
        "decode",
        help="decode a hex message body (optionally with its header) to JSON",
        description="Decode the hex bytes of one request or response body and print it as "
        "JSON. The bytes have no size prefix. With --with-header they start with the "
        "request or response header of the header version this API version uses, and the "
        'output is {"header": ..., "body": ...}; a request header must name the same API '
        "and version as --api and --version. Every error code has Kafka's name beside it "
        '("error_code": 3, "error_name": "UNKNOWN_TOPIC_OR_PARTITION").',
    )
    _add_message_options(decode)
    decode.add_argument(
        "hex",
        nargs="+",
        metavar="HEX",
        help="the bytes in hex (whitespace and a 0x prefix are ignored; several arguments "
        "are joined); - reads the hex from stdin",
    )
    decode.set_defaults(handler=_run_decode)

    encode = actions.add_parser(
        "encode",
        help="encode JSON (as printed by decode) from stdin to hex",
        description="Read the JSON that `kafscale proto decode` prints (same options) from "
        "stdin and print the encoded bytes in hex: decode then encode gives the same bytes. "
        "Missing fields take their defaults; with --with-header a request header's API key "
        "and version default to --api and --version. An error code may be given by its "
        "number or its Kafka name; an error_name beside it must name it.",
    )
    _add_message_options(encode)
    encode.set_defaults(handler=_run_encode)

    list_ = actions.add_parser(
        "list",
        help="list the Kafka APIs with their versions and header versions",
        description="List every Kafka API: key, name, valid versions, flexible versions, the "
        "request and response header version of each version, and whether the latest version "
        "is unstable.",
    )
    list_.set_defaults(handler=_run_list)


def _add_message_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        required=True,
        metavar="NAME_OR_KEY",
        help="API name (Metadata, ApiVersions, case-insensitive) or key (3, 18)",
    )
    parser.add_argument(
        "--version",
        required=True,
        metavar="V",
        help="API version of the message",
    )
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--request", dest="kind", action="store_const", const="request")
    kind.add_argument("--response", dest="kind", action="store_const", const="response")
    parser.add_argument(
        "--with-header",
        action="store_true",
        help="the bytes start with the request/response header",
    )


def resolve_api(name_or_key: str, version: str | int) -> tuple[ApiSpec, int]:
    """The API named (or numbered) ``name_or_key`` and ``version`` checked against it.

    Raises :class:`CliError` for an unknown API or a version it does not have.
    """
    try:
        spec = registry.api(name_or_key)
    except KeyError:
        raise CliError(
            f"unknown API {name_or_key!r} (`{PROG} proto list` shows names and keys)"
        ) from None
    try:
        v = int(version)
    except ValueError:
        raise CliError(f"bad version {version!r}: expected an integer") from None
    if not spec.is_valid(v):
        lo, hi = spec.valid_versions
        raise CliError(f"{spec.name} has no version {v} (valid versions: {_range(lo, hi)})")
    return spec, v


def parse_hex(text: str) -> bytes:
    """Bytes from hex digits; whitespace anywhere and one leading ``0x`` are ignored.

    Raises :class:`CliError` naming the first offending character and its position in
    ``text``.
    """
    digits: list[str] = []
    start = len(text) - len(text.lstrip())
    if text[start : start + 2].lower() == "0x":
        start += 2
    for i in range(start, len(text)):
        ch = text[i]
        if ch.isspace():
            continue
        if ch not in string.hexdigits:
            raise CliError(f"bad hex: {ch!r} at position {i} is not a hex digit")
        digits.append(ch)
    if len(digits) % 2:
        raise CliError(f"bad hex: odd number of hex digits ({len(digits)})")
    return bytes.fromhex("".join(digits))


def body_class(spec: ApiSpec, kind: Kind) -> type[Message]:
    """The request or response body class of an API."""
    return spec.request_type() if kind == "request" else spec.response_type()


def header_class_and_version(spec: ApiSpec, version: int, kind: Kind) -> tuple[type[Message], int]:
    """The header class (``RequestHeader`` / ``ResponseHeader``) and header version that
    ``version`` of the API uses, as the registry says (special cases included)."""
    if kind == "request":
        return registry.message_class("RequestHeader"), spec.request_header_version(version)
    return registry.message_class("ResponseHeader"), spec.response_header_version(version)


def decode_message(
    spec: ApiSpec, version: int, kind: Kind, data: bytes, *, with_header: bool = False
) -> dict[str, Any]:
    """Decode ``data`` into the JSON-ready dict that ``proto decode`` prints.

    Without ``with_header``, ``data`` is exactly one body. With it, ``data`` is the header
    then the body, and the result is ``{"header": ..., "body": ...}``; a request header must
    carry the API key and version of ``spec``/``version`` (:class:`CliError` if not).
    Raises :class:`~kafscale.protocol.errors.ProtocolError` for bytes that do not decode;
    its offsets count from the start of ``data``.
    """
    cls = body_class(spec, kind)
    if not with_header:
        return with_error_names(cls, cls.decode(data, version).to_dict(version))
    header_cls, header_version = header_class_and_version(spec, version, kind)
    if kind == "request" and len(data) >= _API_KEY_AND_VERSION.size:
        # Every request header version starts with the key and version: check them before
        # parsing the rest with a header version that may not be the one the sender used.
        key, api_version = _API_KEY_AND_VERSION.unpack_from(data)
        _check_request_header(spec, version, key, api_version, decoding=True)
    header, pos = header_cls.read(data, 0, header_version)
    body, end = cls.read(data, pos, version)
    if end != len(data):
        raise ProtocolError(
            f"{len(data) - end} trailing bytes after the message",
            message=f"{cls.NAME} v{version}",
            offset=end,
        )
    return {
        "header": header.to_dict(header_version),
        "body": with_error_names(cls, body.to_dict(version)),
    }


def encode_message(
    spec: ApiSpec, version: int, kind: Kind, doc: Any, *, with_header: bool = False
) -> bytes:
    """Encode the JSON document that :func:`decode_message` returns back into bytes.

    Missing fields take their defaults. An error code may be given by its Kafka name instead of
    its number (``"error_code": "NOT_COORDINATOR"``, or ``"error_name"`` alone); an
    ``error_name`` next to a code must name it. With ``with_header``, ``doc`` must be
    ``{"header": {...}, "body": {...}}``; a request header's ``request_api_key`` and
    ``request_api_version`` default to ``spec``/``version`` and must agree with them when
    given (:class:`CliError` if not). Raises
    :class:`~kafscale.protocol.errors.ProtocolError` for values that cannot be encoded.
    """
    cls = body_class(spec, kind)
    if not with_header:
        return _encode_one(cls, doc, version)
    if not isinstance(doc, dict) or set(doc) != {"header", "body"}:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise CliError(
            'with --with-header the JSON must be an object {"header": {...}, "body": {...}}'
            f" (got {got})"
        )
    header_doc = doc["header"]
    header_cls, header_version = header_class_and_version(spec, version, kind)
    if kind == "request" and isinstance(header_doc, dict):
        header_doc = {
            "request_api_key": spec.api_key,
            "request_api_version": version,
            **header_doc,
        }
        _check_request_header(
            spec,
            version,
            header_doc["request_api_key"],
            header_doc["request_api_version"],
            decoding=False,
        )
    return _encode_one(header_cls, header_doc, header_version) + _encode_one(
        cls, doc["body"], version
    )


def _encode_one(cls: type[Message], doc: Any, version: int) -> bytes:
    try:
        obj: Message = cls.from_dict(without_error_names(cls, doc))
        return obj.encode(version)
    except ProtocolError as error:
        if error.message:
            raise
        raise ProtocolError(
            error.reason, message=f"{cls.NAME} v{version}", field=error.field, offset=error.offset
        ) from None
    except (ValueError, TypeError) as error:  # from_dict on malformed "_unknown_tags"
        raise ProtocolError(f"bad value: {error}", message=f"{cls.NAME} v{version}") from None


def is_error_code(field: FieldSpec) -> bool:
    """Whether a field holds a Kafka error code: an int16 Kafka names ``ErrorCode`` or
    ``...ErrorCode`` (``TopicConfigErrorCode``, ``PartitionErrorCode``...)."""
    return field.kafka_type == "int16" and field.kafka_name.endswith("ErrorCode")


def error_name_key(field: FieldSpec) -> str:
    """The JSON key of an error code field's name: ``error_code`` -> ``error_name``."""
    return field.name.removesuffix("_code") + "_name"


def with_error_names(cls: type[Struct], doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (``cls``'s ``to_dict``) with ``error_name`` right after every error code, in
    nested structs too: Kafka's name, or null for a code Kafka does not define."""
    fields = {f.name: f for f in cls._fields}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out[key] = value
        f = fields.get(key)
        if f is None or value is None:
            continue
        if is_error_code(f):
            out[error_name_key(f)] = error_name(value)
        elif f.struct is not None:
            sub = f.struct
            out[key] = (
                [with_error_names(sub, item) for item in value]
                if f.is_array
                else with_error_names(sub, value)
            )
    return out


def without_error_names(cls: type[Struct], doc: Any, path: str = "") -> Any:
    """Inverse of :func:`with_error_names`: every error code as its number (a name given as
    the code, or as ``error_name`` alone, is looked up), each ``error_name`` checked against
    its code and dropped. Raises :class:`ProtocolError` naming the field of a name Kafka does
    not define or one that disagrees with its code. What is not a JSON object is left for
    ``from_dict`` to refuse."""
    if not isinstance(doc, dict):
        return doc
    out = dict(doc)
    for f in cls._fields:
        where = f"{path}.{f.name}" if path else f.name
        if is_error_code(f):
            name_key = error_name_key(f)
            has_name = name_key in out
            name = out.pop(name_key, None)
            code = out.get(f.name)
            if isinstance(code, str):
                code = _error_code_of(code, where)
                out[f.name] = code
            if name is None:
                # decode prints null for a code Kafka does not define, so null names no code.
                if has_name and isinstance(code, int) and error_name(code) is not None:
                    raise ProtocolError(
                        f"{name_key} is null but {code} is {error_name(code)}", field=where
                    )
                continue
            name_where = f"{path}.{name_key}" if path else name_key
            if not isinstance(name, str):
                raise ProtocolError(f"expected an error name, got {name!r}", field=name_where)
            named = _error_code_of(name, name_where)
            if f.name not in out:
                out[f.name] = int(named)
            elif code != named:
                raise ProtocolError(
                    f"{name_key} {name} does not match {f.name} {code!r}"
                    f" ({error_name(code) if isinstance(code, int) else 'not a code'})",
                    field=where,
                )
        elif f.struct is not None and isinstance(out.get(f.name), list | dict):
            value = out[f.name]
            out[f.name] = (
                [without_error_names(f.struct, v, f"{where}[{i}]") for i, v in enumerate(value)]
                if isinstance(value, list)
                else without_error_names(f.struct, value, where)
            )
    return out


def _error_code_of(name: str, where: str) -> int:
    try:
        return int(ErrorCode[name])
    except KeyError:
        raise ProtocolError(f"{name!r} is not a Kafka error name", field=where) from None


def _check_request_header(
    spec: ApiSpec, version: int, key: object, header_version: object, *, decoding: bool
) -> None:
    """A request header must name the API and version the body is decoded/encoded as."""
    if key == spec.api_key and header_version == version:
        return
    other = registry.APIS.get(key) if isinstance(key, int) else None
    said = f"{other.name} v{header_version}" if other else "an unknown API"
    hint = (
        f"; use --api {key} --version {header_version} to decode it"
        if decoding and other is not None
        else ""
    )
    raise CliError(
        f"the request header is for {said} (api key {key}, version {header_version}), "
        f"not {spec.name} v{version} (api key {spec.api_key}){hint}"
    )


def _run_decode(args: argparse.Namespace) -> int:
    spec, version = resolve_api(args.api, args.version)
    if args.hex == ["-"]:
        text = sys.stdin.read()
    elif "-" in args.hex:
        raise CliError("- (read the hex from stdin) must be the only HEX argument")
    else:
        text = " ".join(args.hex)
    data = parse_hex(text)
    try:
        doc = decode_message(spec, version, args.kind, data, with_header=args.with_header)
    except ProtocolError as error:
        raise CliError(str(error)) from None
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return 0


def _run_encode(args: argparse.Namespace) -> int:
    spec, version = resolve_api(args.api, args.version)
    text = sys.stdin.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"bad JSON on stdin: {error}") from None
    try:
        data = encode_message(spec, version, args.kind, doc, with_header=args.with_header)
    except ProtocolError as error:
        raise CliError(str(error)) from None
    sys.stdout.write(data.hex() + "\n")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    sys.stdout.write(format_api_table(registry.APIS.values()))
    return 0


def format_api_table(specs: Any) -> str:
    """The ``proto list`` table of ``specs`` (an iterable of ApiSpec): aligned columns, one
    line per API, ending with a newline."""
    head = ("KEY", "NAME", "VERSIONS", "FLEXIBLE", "REQUEST HEADER", "RESPONSE HEADER", "UNSTABLE")
    rows = [head]
    for spec in sorted(specs, key=lambda s: s.api_key):
        lo, hi = spec.valid_versions
        rows.append(
            (
                str(spec.api_key),
                spec.name,
                _range(lo, hi),
                _open_range(*spec.flexible_versions),
                _header_summary(lo, spec.request_header_versions),
                _header_summary(lo, spec.response_header_versions),
                f"v{hi}" if spec.latest_version_unstable else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for row in rows:
        cells = [row[0].rjust(widths[0])]
        cells += [cell.ljust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _open_range(lo: int, hi: int) -> str:
    """Kafka's spelling of a version range: ``none``, ``9+``, ``0-3``."""
    if lo > hi:
        return "none"
    return f"{lo}+" if hi >= 32767 else _range(lo, hi)


def _header_summary(low: int, header_versions: Sequence[int]) -> str:
    """``2`` when every version uses header v2, else ``1 (0-8), 2 (9-11)``."""
    if len(set(header_versions)) <= 1:
        return str(header_versions[0]) if header_versions else ""
    groups: list[tuple[int, int, int]] = []  # (header version, first, last API version)
    for i, hv in enumerate(header_versions):
        if groups and groups[-1][0] == hv:
            groups[-1] = (hv, groups[-1][1], low + i)
        else:
            groups.append((hv, low + i, low + i))
    return ", ".join(f"{hv} ({_range(first, last)})" for hv, first, last in groups)
