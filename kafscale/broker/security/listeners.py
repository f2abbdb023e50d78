"""Listeners in Kafka's syntax: ``listeners``, ``advertised.listeners`` and
``listener.security.protocol.map``.

A listener is ``NAME://host:port``; its security protocol is the one its name maps to
(PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL map to themselves). An empty host listens on every
interface (as ``0.0.0.0``); port 0 picks a free port. ``advertised.listeners`` names, per
listener, the address clients are told (Metadata, FindCoordinator, DescribeCluster answer with
the address of the listener the client connected through, as Kafka does); a listener it does
not name advertises its own address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_LISTENER = re.compile(r"^([A-Za-z0-9_]+)://(\[[0-9A-Fa-f:.]*\]|[^:\[\]/]*):(\d+)$")


@dataclass(frozen=True)
class Listener:
    """One listener: its name, security protocol and the address it binds."""

    name: str
    protocol: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        """Connections start with a TLS handshake (SSL, SASL_SSL)."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        """Connections authenticate with SASL before anything else (SASL_*)."""
        return self.protocol.startswith("SASL_")

    @property
    def bind_host(self) -> str:
        """The host to bind: brackets of an IPv6 literal removed; empty: every interface."""
        return self.host.removeprefix("[").removesuffix("]") or "0.0.0.0"


def parse_protocol_map(text: str) -> dict[str, str]:
    """``NAME:PROTOCOL,...`` -> {name: protocol}, over the default (each protocol's own
    name maps to it)."""
    out = {p: p for p in PROTOCOLS}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, protocol = item.partition(":")
        protocol = protocol.strip().upper()
        if not sep or not name.strip() or protocol not in PROTOCOLS:
            raise ValueError(
                f"listener.security.protocol.map: expected NAME:PROTOCOL with PROTOCOL one of "
                f"{', '.join(PROTOCOLS)}, got {item!r}"
            )
        out[name.strip().upper()] = protocol
    return out


def parse_listeners(
    text: str, protocols: dict[str, str], setting: str = "listeners"
) -> list[Listener]:
    """The listeners of a ``NAME://host:port,...`` list; raises ValueError naming the setting
    and what is wrong (unknown protocol, a name or port twice)."""
    out: list[Listener] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        m = _LISTENER.match(item)
        if m is None:
            raise ValueError(f"{setting}: expected NAME://host:port, got {item!r}")
        name, host, port = m.group(1).upper(), m.group(2), int(m.group(3))
        if name not in protocols:
            raise ValueError(
                f"{setting}: listener {name} has no security protocol (name it PLAINTEXT, SSL, "
                "SASL_PLAINTEXT or SASL_SSL, or map it in listener.security.protocol.map)"
            )
        if port > 65535:
            raise ValueError(f"{setting}: port {port} of {item!r} is out of range")
        if any(other.name == name for other in out):
            raise ValueError(f"{setting}: listener {name} is named twice")
        if port and any(other.port == port for other in out):
            raise ValueError(f"{setting}: port {port} is used by two listeners")
        out.append(Listener(name, protocols[name], host, port))
    return out


def parse_advertised(
    text: str, listeners: list[Listener], protocols: dict[str, str]
) -> dict[str, tuple[str, int]]:
    """``advertised.listeners`` -> {listener name: (host, port)}; each must name a listener,
    and none may advertise a wildcard address (clients cannot connect to it)."""
    out: dict[str, tuple[str, int]] = {}
    names = {listener.name for listener in listeners}
    for item in parse_listeners(text, protocols, "advertised.listeners"):
        if item.name not in names:
            raise ValueError(f"advertised.listeners: {item.name} is not in listeners")
        if item.host in ("0.0.0.0", "[::]", ""):
            raise ValueError(
                f"advertised.listeners: {item.name} advertises {item.host or 'an empty host'}, "
                "which clients cannot connect to"
            )
        out[item.name] = (item.host.removeprefix("[").removesuffix("]"), item.port)
    return out
