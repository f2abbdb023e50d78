"""Specs as the CRDs define them: validation, defaults, and status conditions.

The schemas are the CRDs' own (``generated/crds.py``, generated from ``protocol_specs/crds/``),
so a spec is judged the same way by the operator as by an API server; the operator checks
anyway, because an API server with an older CRD installed, or none at all (the tests' emulator),
would let a bad spec through, and a bad spec must become a condition, never a crash loop. On
top of the schema: the names in a cluster's ``config`` must be broker settings the operator
does not derive itself.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass
from typing import Any

import jsonschema

from generated.crds import KINDS
from kafscale.broker.config import SETTINGS

GROUP = "kafscale.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "KafscaleCluster"
TOPIC_KIND = "KafscaleTopic"
CLUSTERS = KINDS[CLUSTER_KIND]["plural"]
TOPICS = KINDS[TOPIC_KIND]["plural"]

DERIVED_SETTINGS = frozenset(
    {
        "broker-id",
        "listen-host",
        "listen-port",
        "advertised-host",
        "advertised-port",
        "data-dir",
        "etcd",
        "s3-bucket",
        "s3-endpoint",
        "s3-region",
        "s3-path-style",
        "http-listen",
    }
)
"""Settings the operator sets from the rest of the spec (or per pod): not in ``spec.config``."""
KAFSCALE_CONFIG_ALIASES = {
    "segmentBytes": "segment.bytes",
    "flushIntervalMs": "flush.interval.ms",
    "cacheSize": "segment-cache-bytes",
}
"""KafScale's own ``spec.config`` fields, and the settings they are here."""


class InvalidSpec(ValueError):
    """A spec the operator cannot act on; ``reason`` is the condition's reason."""

    def __init__(self, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(message)
        self.reason = reason


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = KINDS[kind]["schema"]["properties"]["spec"]
    return schema


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in where a property is absent from an object
    that is present (the API server's rule: a default never creates its parent)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, child in schema.get("properties", {}).items():
            if name not in out and "default" in child:
                out[name] = copy.deepcopy(child["default"])
            if name in out:
                out[name] = apply_defaults(child, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in out:
                if name not in schema.get("properties", {}):
                    out[name] = apply_defaults(extra, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _jsonschema(node: Any) -> Any:
    """A CRD schema as plain JSON Schema (int-or-string becomes a type union)."""
    if isinstance(node, dict):
        out = {k: _jsonschema(v) for k, v in node.items() if not k.startswith("x-")}
        if node.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
        ):
            # Structural schemas prune unknown fields; a spec field we do not know is a mistake
            # worth saying (a typo such as `replcas`), not something to ignore silently.
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_jsonschema(v) for v in node]
    return node


def validate(kind: str, spec: Any) -> dict[str, Any]:
    """The spec with its defaults; :class:`InvalidSpec` naming the first problem."""
    schema = _schema(kind)
    if not isinstance(spec, dict):
        raise InvalidSpec("spec: expected an object")
    validator = jsonschema.Draft202012Validator(_jsonschema(schema))
    errors = sorted(validator.iter_errors(spec), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in ["spec", *first.absolute_path])
        raise InvalidSpec(f"{where}: {first.message}")
    defaulted: dict[str, Any] = apply_defaults(schema, spec)
    if kind == CLUSTER_KIND:
        broker_settings(defaulted)  # raises on a bad name
    return defaulted


def broker_settings(spec: dict[str, Any]) -> dict[str, str]:
    """A cluster's ``spec.config`` as broker settings (name -> value as text), KafScale's
    camelCase names translated; :class:`InvalidSpec` for a name that is no setting or one the
    operator derives."""
    out: dict[str, str] = {}
    for name, value in (spec.get("config") or {}).items():
        setting = KAFSCALE_CONFIG_ALIASES.get(name, name)
        if setting in DERIVED_SETTINGS:
            raise InvalidSpec(
                f"spec.config.{name}: set by the operator from the rest of the spec",
                "InvalidConfig",
            )
        if setting not in SETTINGS:
            raise InvalidSpec(
                f"spec.config.{name}: not a broker setting (see `kafscale serve --help`)",
                "InvalidConfig",
            )
        out[setting] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


# --- conditions ---------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    """One condition as judged now (``status`` "True", "False" or "Unknown")."""

    type: str
    status: str
    reason: str
    message: str


def merge_conditions(
    old: list[dict[str, Any]] | None, new: list[Condition], generation: int | None
) -> list[dict[str, Any]]:
    """The conditions to write: ``new`` in order, each keeping its old ``lastTransitionTime``
    when its status did not change (Kubernetes' convention), conditions not judged now kept."""
    previous = {c.get("type"): c for c in old or []}
    out: list[dict[str, Any]] = []
    for c in new:
        before = previous.pop(c.type, None)
        since = (
            before["lastTransitionTime"]
            if before and before.get("status") == c.status and before.get("lastTransitionTime")
            else now_rfc3339()
        )
        entry: dict[str, Any] = {
            "type": c.type,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    out.extend(previous.values())
    return out


def condition(status: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The condition of type ``kind`` in a status, if any."""
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None
