"""The golden byte vectors of ../shared/protocol-golden (produced by Kafka's Java classes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from generated import registry
from kafscale.protocol.message import Message
from tests.conftest import SHARED

FILES = ("corpus-3.9.1.jsonl", "special-cases-3.9.1.jsonl")


@dataclass(frozen=True)
class Golden:
    file: str
    line: int
    name: str  # Kafka's ApiMessageType name, e.g. FETCH
    api: int
    kind: str  # request | response | header
    version: int
    data: bytes

    @property
    def cls(self) -> type[Message]:
        if self.kind == "header":
            return registry.message_class(
                "RequestHeader" if self.name.startswith("REQUEST") else "ResponseHeader"
            )
        spec = registry.APIS[self.api]
        return spec.request_type() if self.kind == "request" else spec.response_type()

    @property
    def flexible(self) -> bool:
        lo, hi = self.cls.FLEXIBLE_VERSIONS
        return lo <= self.version <= hi

    @property
    def id(self) -> str:
        return f"{self.file.split('-')[0]}{self.line}-{self.name}-{self.kind}-v{self.version}"


def load(name: str) -> list[Golden]:
    path = SHARED / "protocol-golden" / name
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        d: dict[str, Any] = json.loads(line)
        out.append(
            Golden(name, i, d["name"], d["api"], d["kind"], d["version"], bytes.fromhex(d["hex"]))
        )
    return out


def all_golden() -> list[Golden]:
    return [g for name in FILES for g in load(name)]


def params(goldens: list[Golden]) -> list[Any]:
    """pytest params; one visible placeholder when ../shared is absent (the test then calls
    ``shared_path`` and skips, or fails under CI)."""
    if not goldens:
        return [pytest.param(None, id="golden-absent")]
    return [pytest.param(g, id=g.id) for g in goldens]
