"""SASL on a connection: SaslHandshake and SaslAuthenticate as a Kafka 3.9 broker answers
them (``SaslServerAuthenticator``), the PLAIN mechanism, and the delay before a failure.

A connection of a SASL listener starts unauthenticated: the server answers only ApiVersions
and SaslHandshake, then (handshake v1) SaslAuthenticate until the exchange completes, or
(handshake v0) raw length-prefixed tokens; anything else closes it. A failed exchange is
answered SASL_AUTHENTICATION_FAILED (v1) or just closed (v0), after
``connection.failed.authentication.delay.ms``, doubled for each further failure from the same
address within a minute (at most :data:`MAX_FAILURE_DELAY_S`): password guessing gets slow.

Mechanisms: PLAIN (``authzid NUL user NUL password``; checked against the user's SCRAM
credentials, so one user list serves both), SCRAM-SHA-256, SCRAM-SHA-512
(:mod:`kafscale.broker.security.scram`). ``sasl.enabled.mechanisms`` lists the ones offered.

Re-authentication (KIP-368): with ``connections.max.reauth.ms`` > 0 the final
SaslAuthenticate tells the client the session's lifetime; past it, any request other than a
SaslHandshake closes the connection. A re-authentication (SaslHandshake v1 then
SaslAuthenticate on the live connection) must use the same mechanism and principal.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass

from generated.errors import ErrorCode
from kafscale.broker.security.credentials import CredentialStore
from kafscale.broker.security.listeners import Listener
from kafscale.broker.security.scram import (
    MECHANISMS,
    SaslFailure,
    ScramServer,
    password_matches,
)

log = logging.getLogger("kafscale.security")
SUPPORTED = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAX_FAILURE_DELAY_S = 5.0
FAILURE_MEMORY_S = 60.0
"""Failures from one address older than this no longer lengthen the delay."""
REAUTH_MIN_INTERVAL_S = 1.0
"""A re-authentication starts at most once a second (sooner: a normal SaslHandshake, 34)."""
ANONYMOUS = "User:ANONYMOUS"


def normalize_host(host: str) -> str:
    """An address as Java's ``InetAddress.getHostAddress()`` writes it (ACL hosts compare
    against this): dotted IPv4 (also for an IPv4-mapped IPv6 peer), IPv6 uncompressed
    without leading zeros (``0:0:0:0:0:0:0:1``)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return ":".join(format(int(part, 16), "x") for part in ip.exploded.split(":"))
    return str(ip)


class PlainServer:
    """SASL/PLAIN (RFC 4616) with Kafka's messages; checks the SCRAM credentials."""

    mechanism = "PLAIN"

    def __init__(self, credentials: CredentialStore) -> None:
        self._credentials = credentials
        self.complete = False
        self.username = ""

    async def step_async(self, token: bytes) -> bytes:
        """Check ``authzid NUL user NUL password``; raises :class:`SaslFailure`."""
        parts = token.decode("utf-8", errors="replace").split("\0", 3)
        if len(parts) != 3:
            raise SaslFailure(f"Invalid SASL/PLAIN response: expected 3 tokens, got {len(parts)}")
        authzid, user, password = parts
        if not user:
            raise SaslFailure("Authentication failed: username not specified")
        if not password:
            raise SaslFailure("Authentication failed: password not specified")
        # PBKDF2 of thousands of rounds: off the event loop.
        ok = await asyncio.to_thread(self._check, user, password)
        if not ok:
            raise SaslFailure("Authentication failed: Invalid username or password")
        if authzid and authzid != user:
            raise SaslFailure(
                "Authentication failed: Client requested an authorization id that is different "
                "from username"
            )
        self.username = user
        self.complete = True
        return b""

    def _check(self, user: str, password: str) -> bool:
        for mechanism in MECHANISMS:
            credential = self._credentials.lookup(user, mechanism)
            if credential is not None and password_matches(mechanism, credential, password):
                return True
        return False


class _ScramAdapter:
    def __init__(self, server: ScramServer) -> None:
        self.server = server
        self.mechanism = server.mechanism

    @property
    def complete(self) -> bool:
        return self.server.complete

    @property
    def username(self) -> str:
        return self.server.username

    async def step_async(self, token: bytes) -> bytes:
        return self.server.step(token)


Mechanism = PlainServer | _ScramAdapter


@dataclass
class Session:
    """The security state of one connection."""

    listener: Listener
    host: str
    """The client's address, normalised (:func:`normalize_host`)."""
    principal: str = ANONYMOUS
    authenticated: bool = True
    """False on a SASL listener until the exchange completes."""
    mechanism: str | None = None
    exchange: Mechanism | None = None
    handshake_version: int | None = None
    api_versions_answered: bool = False
    expires_at: float | None = None
    """time.monotonic() after which only a SaslHandshake (re-authentication) is served."""
    reauth_started: float = 0.0
    close_after_answer: bool = False
    """The answer being sent is the last (a failed authentication)."""
    failure_delay: float = 0.0
    """Seconds to hold the failure answer (set with close_after_answer)."""
    switched: bool = False
    """A re-authentication asked for another mechanism: its exchange fails (as Kafka's)."""

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and time.monotonic() >= self.expires_at

    @property
    def user(self) -> str:
        return self.principal.partition(":")[2]


class FailureDelays:
    """How long to hold a failed authentication's answer, per client address."""

    def __init__(self, base_ms: int) -> None:
        self.base = max(base_ms, 0) / 1000
        self._recent: dict[str, tuple[int, float]] = {}

    def failed(self, host: str) -> float:
        """Record a failure from ``host``; the delay to apply to it."""
        now = time.monotonic()
        count, last = self._recent.get(host, (0, 0.0))
        if now - last > FAILURE_MEMORY_S:
            count = 0
        count += 1
        self._recent[host] = (count, now)
        if len(self._recent) > 10_000:  # forget the oldest half of a scan from many addresses
            for key, _ in sorted(self._recent.items(), key=lambda kv: kv[1][1])[:5_000]:
                del self._recent[key]
        delay: float = self.base * 2 ** min(count - 1, 16)
        return min(delay, max(self.base, MAX_FAILURE_DELAY_S))


class Authenticator:
    """The broker's SASL side: settings, credentials, and the per-address failure delays."""

    def __init__(
        self,
        credentials: CredentialStore,
        mechanisms: list[str],
        reauth_ms: int,
        failure_delay_ms: int,
    ) -> None:
        unknown = [m for m in mechanisms if m not in SUPPORTED]
        if unknown:
            raise ValueError(
                f"sasl.enabled.mechanisms: {', '.join(unknown)} not supported "
                f"(supported: {', '.join(SUPPORTED)})"
            )
        self.credentials = credentials
        self.mechanisms = mechanisms
        self.reauth_ms = reauth_ms
        self.delays = FailureDelays(failure_delay_ms)

    def handshake(self, session: Session, mechanism: str, version: int) -> tuple[int, list[str]]:
        """(error code, enabled mechanisms) for a SaslHandshake; closes the session on a
        mechanism not enabled."""
        if not session.listener.sasl:
            return ErrorCode.ILLEGAL_SASL_STATE, []
        if session.authenticated:
            now = time.monotonic()
            reauth = (
                self.reauth_ms > 0
                and version >= 1
                and now - session.reauth_started >= REAUTH_MIN_INTERVAL_S
                and session.exchange is None
            )
            if not reauth:
                return ErrorCode.ILLEGAL_SASL_STATE, []
            session.reauth_started = now
        elif session.handshake_version is not None:
            self._fail(session)
            return ErrorCode.ILLEGAL_SASL_STATE, list(self.mechanisms)
        if mechanism not in self.mechanisms:
            self._fail(session)
            return ErrorCode.UNSUPPORTED_SASL_MECHANISM, list(self.mechanisms)
        if session.authenticated and mechanism != session.mechanism:
            # Kafka answers the handshake and fails the exchange that follows.
            session.switched = True
        session.handshake_version = version
        session.exchange = self._new(mechanism)
        return 0, list(self.mechanisms)

    def _new(self, mechanism: str) -> Mechanism:
        if mechanism == "PLAIN":
            return PlainServer(self.credentials)
        store = self.credentials
        return _ScramAdapter(ScramServer(mechanism, lambda user: store.lookup(user, mechanism)))

    def _fail(self, session: Session) -> None:
        session.close_after_answer = True
        session.failure_delay = self.delays.failed(session.host)
        session.exchange = None

    async def authenticate(
        self, session: Session, token: bytes
    ) -> tuple[int, str | None, bytes, int]:
        """(error code, message, server token, session lifetime ms) for one SaslAuthenticate
        (or one raw v0 token). A failure sets the session to close after the answer."""
        exchange = session.exchange
        if exchange is None:
            if session.authenticated:
                return (
                    ErrorCode.ILLEGAL_SASL_STATE,
                    "SaslAuthenticate request received after successful authentication",
                    b"",
                    0,
                )
            self._fail(session)
            return ErrorCode.ILLEGAL_SASL_STATE, "Unexpected SaslAuthenticate request", b"", 0
        reauth = session.authenticated
        try:
            if session.switched:
                raise SaslFailure(
                    "Authentication failed during re-authentication due to invalid credentials "
                    f"with SASL mechanism {exchange.mechanism}"
                )
            answer = await exchange.step_async(token)
        except SaslFailure as e:
            log.info(
                "SASL/%s authentication from %s failed: %s",
                exchange.mechanism,
                session.host,
                e.reason,
            )
            self._fail(session)
            session.switched = False
            text = str(e)
            if reauth:
                text = text.replace("during authentication", "during re-authentication")
            return ErrorCode.SASL_AUTHENTICATION_FAILED, text, b"", 0
        if not exchange.complete:
            return 0, None, answer, 0
        principal = "User:" + exchange.username
        session.exchange = None
        if reauth and principal != session.principal:
            self._fail(session)
            old = session.principal.replace(":", ".", 1)
            return (
                ErrorCode.SASL_AUTHENTICATION_FAILED,
                f"Cannot change principals during re-authentication from {old}: "
                f"{principal.replace(':', '.', 1)}",
                b"",
                0,
            )
        session.principal = principal
        session.mechanism = exchange.mechanism
        session.authenticated = True
        lifetime = self.reauth_ms if self.reauth_ms > 0 else 0
        session.expires_at = time.monotonic() + lifetime / 1000 if lifetime else None
        return 0, None, answer, lifetime
