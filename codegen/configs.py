"""The config tables: ``protocol_specs/topic-configs.yaml`` and ``broker-configs.yaml`` ->
``generated/topic_configs.py`` and ``generated/broker_configs.py``.

    python -m codegen configs [--out DIR] [--check]

Both tables are ours (they need nothing outside the repository). Besides its schema, each entry
is checked against what the broker relies on: a topic config's default parses as its type and
passes its validator, every broker synonym is in the broker table, and names are unique.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from codegen.model import SpecError
from codegen.render import format_source, stale_files, template_env, write_files
from codegen.specs import REPO_ROOT, SPECS_DIR, load_declaration

TOPIC_SPEC = SPECS_DIR / "topic-configs.yaml"
BROKER_SPEC = SPECS_DIR / "broker-configs.yaml"
OUTPUTS = ("topic_configs.py", "broker_configs.py")
"""Modules of ``generated/`` this generator owns (the Kafka codecs' generator leaves them)."""

_ENV = template_env()
_ENV.filters["py"] = repr
_ENV.filters["tuple"] = tuple

_INT_RANGES = {"INT": 31, "SHORT": 15, "LONG": 63}


def _check_default(entry: dict[str, Any]) -> None:
    """The default must be a value the config's own type and validator accept."""
    where = f"topic-configs.yaml: {entry['name']}"
    kind, default = entry["type"], entry["default"]
    validator: dict[str, Any] = entry.get("validator") or {}
    number: float | None = None
    if kind in _INT_RANGES:
        if not re.fullmatch(r"-?[0-9]+", default):
            raise SpecError(f"{where}: default {default!r} is not an integer")
        number = int(default)
        bits = _INT_RANGES[kind]
        if not -(2**bits) <= number < 2**bits:
            raise SpecError(f"{where}: default {default} does not fit a {kind}")
    elif kind == "DOUBLE":
        number = float(default)
    elif kind == "BOOLEAN" and default not in ("true", "false"):
        raise SpecError(f"{where}: default {default!r} is not true or false")
    if ("at_least" in validator or "between" in validator or "between_or" in validator) and (
        number is None
    ):
        raise SpecError(f"{where}: a range validator needs a numeric type, not {kind}")
    if number is not None:
        low, high = validator.get("between", [validator.get("at_least"), None])
        if "between_or" in validator:
            b = validator["between_or"]
            if not (b["min"] <= number <= b["max"] or number == b["or"]):
                raise SpecError(f"{where}: default {default} is outside its validator")
        elif (low is not None and number < low) or (high is not None and number > high):
            raise SpecError(f"{where}: default {default} is outside its validator")
    if "in" in validator:
        if kind not in ("STRING", "LIST"):
            raise SpecError(f"{where}: a valid-values validator needs STRING or LIST")
        items = [default] if kind == "STRING" else [i for i in default.split(",") if i]
        if any(i not in validator["in"] for i in items):
            raise SpecError(f"{where}: default {default!r} is not among its valid values")
    if "metadata_version" in validator and default not in validator["metadata_version"]:
        raise SpecError(f"{where}: default {default!r} is not a known version")


def load_tables() -> tuple[dict[str, Any], dict[str, Any]]:
    """Both declarations, validated by their schemas and checked against each other."""
    topics: dict[str, Any] = load_declaration(TOPIC_SPEC, "topic-configs.schema.json")
    brokers: dict[str, Any] = load_declaration(BROKER_SPEC, "broker-configs.schema.json")
    broker_names: set[str] = set()
    for entry in brokers["configs"]:
        if entry["name"] in broker_names:
            raise SpecError(f"broker-configs.yaml: {entry['name']} is listed twice")
        broker_names.add(entry["name"])
    seen: set[str] = set()
    for entry in topics["configs"]:
        name = entry["name"]
        if name in seen:
            raise SpecError(f"topic-configs.yaml: {name} is listed twice")
        seen.add(name)
        _check_default(entry)
        for synonym in entry["synonyms"]:
            if synonym not in broker_names:
                raise SpecError(
                    f"topic-configs.yaml: {name}: synonym {synonym} is not in broker-configs.yaml"
                )
    return topics, brokers


def _validator_expr(validator: dict[str, Any] | None) -> str:
    if not validator:
        return "None"
    ((kind, arg),) = validator.items()
    if kind == "at_least":
        return f"Validator('at_least', low={arg!r})"
    if kind == "between":
        return f"Validator('between', low={arg[0]!r}, high={arg[1]!r})"
    if kind == "between_or":
        return (
            f"Validator('between_or', low={arg['min']!r}, high={arg['max']!r}, "
            f"alternative={arg['or']!r})"
        )
    if kind in ("in", "metadata_version"):
        return f"Validator({kind!r}, values={tuple(arg)!r})"
    return f"Validator({kind!r})"


def render_tables() -> dict[str, str]:
    """The generated modules (file name -> formatted source)."""
    topics, brokers = load_tables()
    topic_rows = [
        {**entry, "validator_expr": _validator_expr(entry.get("validator"))}
        for entry in topics["configs"]
    ]
    files = {
        "topic_configs.py": _ENV.get_template("topic_configs.py.j2").render(
            release=topics["kafka_release"], configs=topic_rows
        ),
        "broker_configs.py": _ENV.get_template("broker_configs.py.j2").render(
            release=brokers["kafka_release"], configs=brokers["configs"]
        ),
    }
    return {name: format_source(text) for name, text in files.items()}


def generate_tables(out: Path, check: bool) -> int:
    files = {out / name: text for name, text in render_tables().items()}
    if check:
        problems = stale_files(files, "the config tables give")
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("generated config tables are stale: run scripts/regen", file=sys.stderr)
            return 1
        print(f"{len(files)} files match {TOPIC_SPEC.name} and {BROKER_SPEC.name}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_files(files)
    print(f"wrote {len(files)} files to {out} from {TOPIC_SPEC.name} and {BROKER_SPEC.name}")
    return 0


DEFAULT_OUT = REPO_ROOT / "generated"
