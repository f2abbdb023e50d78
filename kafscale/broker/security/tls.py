"""TLS for the SSL and SASL_SSL listeners: server contexts from PEM files, reloaded without a
restart, and the principal of a client certificate.

Certificates (Kafka's PEM settings, KIP-651): ``ssl.keystore.location`` is one PEM file with
the certificate chain and the PKCS#8 private key (``ssl.key.password`` when the key is
encrypted), or ``ssl.keystore.certificate.chain`` and ``ssl.keystore.key`` hold them inline;
``ssl.truststore.location`` (or inline ``ssl.truststore.certificates``) the CAs whose client
certificates are accepted. Only TLS 1.2 and 1.3 are offered. ``ssl.client.auth``: ``none``
(no client certificate asked), ``requested`` (asked, optional) or ``required``.

The listening socket keeps the context it started with, so every context a listener loads
switches each handshake to the current one (its ``sni_callback``, which OpenSSL calls on
every ClientHello, with or without a server name): :meth:`TlsServer.reload` (SIGHUP, or a
change of a file's modification time, checked every second) applies to the next connection,
and a reload that fails keeps the working context (logged).

A client certificate's principal is ``User:`` + ``ssl.principal.mapping.rules`` applied to
its subject in RFC 2253 form (Java's, with the most specific part first: ``CN=client,O=acme``).
Rules are Kafka's (KIP-371): ``RULE:regex/replacement/`` with an optional ``L``/``U`` (lower
or upper case the result), and ``DEFAULT`` (the whole name); the first rule whose regex
matches the whole name wins; none matching fails the connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafscale.broker.periodic import stop_task

log = logging.getLogger("kafscale.security")

CLIENT_AUTH = {"none": ssl.CERT_NONE, "requested": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
RELOAD_CHECK_S = 1.0
"""How often the certificate files' modification times are checked."""


@dataclass(frozen=True)
class TlsSettings:
    """The TLS settings of a listener (see the module docstring)."""

    keystore_location: str = ""
    keystore_certificate_chain: str = ""
    keystore_key: str = ""
    key_password: str = ""
    truststore_location: str = ""
    truststore_certificates: str = ""
    client_auth: str = "none"
    principal_mapping_rules: str = "DEFAULT"

    def check(self) -> None:
        """Raise ValueError naming the setting when they cannot work together."""
        if self.client_auth not in CLIENT_AUTH:
            raise ValueError(
                f"ssl.client.auth: expected none, requested or required, got {self.client_auth!r}"
            )
        inline = bool(self.keystore_certificate_chain) + bool(self.keystore_key)
        if inline == 1:
            raise ValueError(
                "ssl.keystore.certificate.chain and ssl.keystore.key must be given together"
            )
        if inline and self.keystore_location:
            raise ValueError(
                "ssl.keystore.location and ssl.keystore.certificate.chain/key are exclusive"
            )
        if not inline and not self.keystore_location:
            raise ValueError(
                "a TLS listener needs ssl.keystore.location (a PEM file with the certificate "
                "chain and the private key) or ssl.keystore.certificate.chain and ssl.keystore.key"
            )
        if self.client_auth != "none" and not (
            self.truststore_location or self.truststore_certificates
        ):
            raise ValueError(
                f"ssl.client.auth={self.client_auth} needs ssl.truststore.location (the CAs of "
                "the client certificates)"
            )
        PrincipalMapper(self.principal_mapping_rules)

    @property
    def files(self) -> list[Path]:
        """The files whose change triggers a reload."""
        return [Path(p) for p in (self.keystore_location, self.truststore_location) if p]


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server context for ``settings`` (raises ssl.SSLError/OSError when a file is bad)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    password = settings.key_password or None
    if settings.keystore_location:
        ctx.load_cert_chain(settings.keystore_location, password=password)
    else:
        # ssl loads keys from files only: a private temporary file, removed at once.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "keystore.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(settings.keystore_certificate_chain.strip() + "\n")
                f.write(settings.keystore_key.strip() + "\n")
            ctx.load_cert_chain(path, password=password)
    if settings.truststore_location:
        ctx.load_verify_locations(cafile=settings.truststore_location)
    if settings.truststore_certificates:
        ctx.load_verify_locations(cadata=settings.truststore_certificates)
    ctx.verify_mode = CLIENT_AUTH[settings.client_auth]
    return ctx


class TlsServer:
    """The current server context of one listener, reloaded on demand or on file changes."""

    def __init__(self, name: str, settings: TlsSettings) -> None:
        settings.check()
        self.name = name
        self.settings = settings
        self.context = self._load()
        self.mapper = PrincipalMapper(settings.principal_mapping_rules)
        self.reloads = 0
        """Successful reloads so far (tests and logs)."""
        self._stamps = self._mtimes()
        self._task: asyncio.Task[None] | None = None

    def _load(self) -> ssl.SSLContext:
        context = server_context(self.settings)
        context.sni_callback = self._current
        return context

    def _current(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        """Hand the handshake to the current context (a reload replaced the one the listening
        socket was started with)."""
        if context is not self.context:
            ssl_object.context = self.context

    def _mtimes(self) -> tuple[float, ...]:
        stamps = []
        for path in self.settings.files:
            try:
                stamps.append(path.stat().st_mtime)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)

    def reload(self) -> bool:
        """Load the certificates again; on failure keep the current ones (logged)."""
        self._stamps = self._mtimes()
        try:
            context = self._load()
        except (OSError, ssl.SSLError, ValueError) as e:
            log.error(
                "listener %s: reloading the certificates failed, keeping the current ones: %s",
                self.name,
                e,
            )
            return False
        self.context = context
        self.reloads += 1
        log.info("listener %s: certificates reloaded", self.name)
        return True

    def start(self) -> None:
        """Reload whenever a certificate file's modification time changes."""
        self._task = asyncio.create_task(self._watch(), name=f"tls reload {self.name}")

    async def close(self) -> None:
        """Stop watching the files."""
        if self._task is not None:
            await stop_task(self._task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_CHECK_S)
            if self._mtimes() != self._stamps:
                self.reload()

    def principal(self, ssl_object: ssl.SSLObject | None) -> str:
        """``User:`` + the mapped subject of the client certificate; ``User:ANONYMOUS``
        without one. Raises ValueError when no mapping rule matches."""
        if ssl_object is None or not ssl_object.getpeercert(binary_form=True):
            return "User:ANONYMOUS"
        # A certificate is only here once verified, so the decoded form is available.
        return "User:" + self.mapper.map(subject_dn(ssl_object.getpeercert()))


# Java's X500Principal keywords (RFC 2253 plus the ones Java adds); other attributes are
# written with their names here (Java writes their OIDs: name them in mapping rules then).
_KEYWORDS = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def subject_dn(cert: Any) -> str:
    """The certificate's subject in RFC 2253 form, as Java's X500Principal.getName() gives
    it (the form Kafka's principals and ACLs use): its RDNs in reverse of their encoded order
    (usually CN first), joined by commas without spaces, multi-valued ones by ``+``."""
    subject = cert.get("subject", ()) if isinstance(cert, dict) else ()
    rdns = []
    for rdn in reversed(list(subject)):
        rdns.append("+".join(f"{_KEYWORDS.get(k, k)}={_escape(str(v))}" for k, v in rdn))
    return ",".join(rdns)


_RULE = re.compile(r"^RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?)$")


class PrincipalMapper:
    """``ssl.principal.mapping.rules`` (see the module docstring)."""

    def __init__(self, rules: str) -> None:
        self.rules: list[tuple[re.Pattern[str], str, str] | None] = []
        for text in _split_rules(rules or "DEFAULT"):
            if text == "DEFAULT":
                self.rules.append(None)
                continue
            m = _RULE.match(text)
            if m is None:
                raise ValueError(f"ssl.principal.mapping.rules: invalid rule {text!r}")
            try:
                pattern = re.compile(m.group(1))
            except re.error as e:
                raise ValueError(f"ssl.principal.mapping.rules: {text!r}: {e}") from None
            # Java's $1 group references, as Python's \g<1>.
            replacement = re.sub(r"\$(\d+)", r"\\g<\1>", m.group(2))
            self.rules.append((pattern, replacement, m.group(3)))

    def map(self, dn: str) -> str:
        """The principal name of ``dn``; raises ValueError when no rule matches."""
        for rule in self.rules:
            if rule is None:
                return dn
            pattern, replacement, case = rule
            if pattern.fullmatch(dn):
                out = pattern.sub(replacement, dn, count=1)
                return out.lower() if case == "L" else out.upper() if case == "U" else out
        raise ValueError(f"no ssl.principal.mapping.rules rule matches {dn!r}")


def _split_rules(text: str) -> list[str]:
    """Rules are separated by commas, which their regexes may also hold: a new rule starts
    at ``,RULE:`` or ``,DEFAULT`` only."""
    parts = re.split(r",\s*(?=RULE:|DEFAULT)", text.strip())
    return [p.strip() for p in parts if p.strip()]
