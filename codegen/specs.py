"""Load Kafka's JSON message definitions from a directory or a kafka-clients jar.

Kafka's files are JSON with ``//`` comments. We strip the comments with a small scanner that
knows about strings (an ``about`` text may contain ``//``), keep the comment lines found inside
the definition (they hold the version history) and validate every file against
``protocol_specs/schemas/kafka-message.schema.json`` before building the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from codegen.model import Message, SpecError, Versions, build_message

REPO_ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO_ROOT / "protocol_specs"
SCHEMAS_DIR = SPECS_DIR / "schemas"
JAR_PREFIX = "common/message/"
ENV_SPECS = "KAFSCALE_KAFKA_SPECS"


@dataclass(frozen=True)
class SpecFile:
    name: str  # file name, e.g. "FetchRequest.json"
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def strip_comments(text: str) -> tuple[str, list[str]]:
    """Remove ``//`` comments outside JSON strings.

    Returns the bare JSON and the comment lines that appear after the definition's opening
    brace (the license header before it is dropped).
    """
    out: list[str] = []
    history: list[str] = []
    in_string = escaped = False
    seen_brace = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            if seen_brace:
                history.append(text[i + 2 : end].strip())
            i = end
            continue
        else:
            seen_brace = seen_brace or c == "{"
            out.append(c)
        i += 1
    while history and not history[0]:
        history.pop(0)
    while history and not history[-1]:
        history.pop()
    return "".join(out), history


def read_spec_files(path: str | os.PathLike[str]) -> list[SpecFile]:
    """Every ``*.json`` definition in a directory, or under ``common/message/`` in a jar."""
    p = Path(path)
    files: list[SpecFile] = []
    if p.is_dir():
        for child in sorted(p.iterdir()):
            if child.suffix == ".json":
                files.append(SpecFile(child.name, child.read_text(encoding="utf-8")))
    elif p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as jar:
            for entry in sorted(jar.namelist()):
                if entry.startswith(JAR_PREFIX) and entry.endswith(".json"):
                    text = jar.read(entry).decode("utf-8")
                    files.append(SpecFile(entry[len(JAR_PREFIX) :], text))
    else:
        raise SpecError(f"{path}: not a directory of definitions or a kafka-clients jar")
    if not files:
        raise SpecError(f"{path}: no Kafka message definitions found")
    return files


@cache
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS_DIR / schema_name).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(data: Any, schema_name: str, what: str) -> None:
    """Raise :class:`SpecError` naming the first place ``data`` breaks the schema."""
    errors = sorted(_validator(schema_name).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise SpecError(f"{what}: {where}: {first.message}")


def load_declaration(path: Path, schema_name: str) -> Any:
    """One of our own declarative inputs (YAML or JSON), validated by its schema."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    validate(data, schema_name, path.name)
    return data


def load_lock() -> dict[str, Any]:
    lock: dict[str, Any] = load_declaration(
        SPECS_DIR / "kafka-specs.lock.json", "kafka-specs-lock.schema.json"
    )
    return lock


@dataclass(frozen=True)
class BrokerApi:
    """One entry of ``protocol_specs/broker-apis.yaml``, checked against the definitions."""

    served: Versions
    advertised: Versions
    effects: str
    """How its requests order against the earlier ones of their connection: ``ordered`` (after
    all of them), ``read`` (no effects: alongside earlier reads), ``append`` (Produce: alongside
    earlier appends, which keep their order)."""


def load_broker_apis(messages: list[Message], strict: bool = True) -> dict[int, BrokerApi]:
    """``protocol_specs/broker-apis.yaml`` checked against the definitions: API key -> what
    the broker serves of it.

    ``advertise`` widens only what ApiVersions lists (KAFKA-18659: librdkafka enables
    compression only when Produce v0 is listed); requests outside ``versions`` are still
    refused. ``strict`` (generating the repository's own code): a range outside Kafka's
    validVersions is an error. Otherwise (trying another release into a scratch directory) it
    is narrowed to what that release defines, with a warning.
    """
    data = load_declaration(SPECS_DIR / "broker-apis.yaml", "broker-apis.schema.json")
    requests = {m.name.removesuffix("Request"): m for m in messages if m.kind == "request"}
    table: dict[int, BrokerApi] = {}
    for entry in data["apis"]:
        m = requests.get(entry["name"])
        where = f"broker-apis.yaml: {entry['name']}"
        if m is None or m.api_key is None:
            raise SpecError(f"{where}: no such Kafka API")
        ranges = []
        for key in ("versions", "advertise"):
            versions = Versions.parse(entry.get(key, entry["versions"]))
            if versions & m.valid != versions:
                problem = f"{where}: {key} {versions} are not within Kafka's {m.valid}"
                if strict:
                    raise SpecError(problem)
                versions &= m.valid
                print(f"warning: {problem}; using {versions}", file=sys.stderr)
            ranges.append(versions)
        served, advertised = ranges
        if served & advertised != served:
            raise SpecError(f"{where}: advertise {advertised} must include versions {served}")
        if "broker" not in m.listeners:
            raise SpecError(f"{where}: Kafka does not serve this API on brokers")
        if m.api_key in table:
            raise SpecError(f"{where}: listed twice")
        table[m.api_key] = BrokerApi(served, advertised, entry.get("effects", "ordered"))
    return table


def parse_spec(spec: SpecFile) -> Message:
    """Strip, validate and model one definition; any problem is a :class:`SpecError`."""
    bare, history = strip_comments(spec.text)
    try:
        raw: Any = json.loads(bare)
    except json.JSONDecodeError as e:
        raise SpecError(f"{spec.name}: invalid JSON: {e}") from e
    validate(raw, "kafka-message.schema.json", spec.name)
    if spec.name != raw["name"] + ".json":
        raise SpecError(f"{spec.name}: defines {raw['name']}, expected the file name to match")
    return build_message(raw, spec.name, history)


def load_messages(path: str | os.PathLike[str]) -> list[Message]:
    """Parse every definition under ``path``, sorted by name."""
    return sorted((parse_spec(f) for f in read_spec_files(path)), key=lambda m: m.name)


def is_own_specs(path: str | os.PathLike[str]) -> bool:
    """True for KafScale's own definitions: a directory under ``protocol_specs/``."""
    return Path(path).resolve().is_relative_to(SPECS_DIR)


def default_specs_path() -> Path:
    """``$KAFSCALE_KAFKA_SPECS``, else the pinned release next to the repository."""
    env = os.environ.get(ENV_SPECS)
    if env:
        return Path(env)
    release = str(load_lock()["kafka_release"])
    return REPO_ROOT.parent / "shared" / "kafka-message-specs" / release
