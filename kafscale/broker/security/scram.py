"""SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka speaks them, and the salted
credentials they check.

A credential is what Kafka stores: the salt, the iteration count, StoredKey =
H(HMAC(SaltedPassword, "Client Key")) and ServerKey = HMAC(SaltedPassword, "Server Key"),
with SaltedPassword = PBKDF2-HMAC-H(password, salt, iterations). The password itself is never
kept. No SASLprep: the password's UTF-8 bytes are hashed (Kafka's ScramFormatter).

:class:`ScramServer` is one server-side exchange: client-first -> server-first ->
client-final -> server-final. It refuses channel binding (gs2 flag ``y`` or ``p=``), a bad
user name escape, a nonce with a comma or outside printable ASCII, an unknown user (on the
first message), a client-final whose nonce does not end with the combined nonce (Kafka's
check), and a wrong proof (on the second message; compared in constant time). Every
refusal but an authorization id different from the user name carries Kafka's one fixed text,
so an unknown user and a wrong password look the same to the client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MECHANISM_TYPES = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}
"""Kafka's ScramMechanism type bytes (DescribeUserScramCredentials, AlterUserScramCredentials)."""
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 16384
DEFAULT_ITERATIONS = 4096
MAX_MESSAGE = 4096
"""A SCRAM message longer than this is refused (client messages are a few hundred bytes)."""


class SaslFailure(Exception):
    """The authentication failed; ``str()`` is the text the client is sent, ``reason``
    what the broker logs (the client is not told which check failed)."""

    def __init__(self, text: str, reason: str = "") -> None:
        super().__init__(text)
        self.reason = reason or text


def invalid_credentials(mechanism: str, reason: str) -> SaslFailure:
    """Kafka's one failure text for ``mechanism`` (``reason`` is only logged)."""
    return SaslFailure(
        "Authentication failed during authentication due to invalid credentials with SASL "
        f"mechanism {mechanism}",
        reason,
    )


@dataclass(frozen=True)
class ScramCredential:
    """One user's stored credential for one mechanism."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_json(self) -> dict[str, object]:
        b64 = base64.b64encode
        return {
            "salt": b64(self.salt).decode(),
            "iterations": self.iterations,
            "stored_key": b64(self.stored_key).decode(),
            "server_key": b64(self.server_key).decode(),
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> ScramCredential:
        b = base64.b64decode
        return cls(
            b(str(d["salt"])),
            int(str(d["iterations"])),
            b(str(d["stored_key"])),
            b(str(d["server_key"])),
        )


def _hash(mechanism: str) -> str:
    return MECHANISMS[mechanism]


def salted_password(mechanism: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5802's SaltedPassword: PBKDF2 with the mechanism's hash."""
    return hashlib.pbkdf2_hmac(_hash(mechanism), password, salt, iterations)


def credential_from_salted(
    mechanism: str, salted: bytes, salt: bytes, iterations: int
) -> ScramCredential:
    """The stored form of a salted password (AlterUserScramCredentials sends that)."""
    h = _hash(mechanism)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    return ScramCredential(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(h, client_key).digest(),
        server_key=hmac.new(salted, b"Server Key", h).digest(),
    )


def make_credential(
    mechanism: str, password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramCredential:
    """A new credential for ``password`` with a random salt."""
    salt = salt if salt is not None else os.urandom(32)
    return credential_from_salted(
        mechanism, salted_password(mechanism, password.encode(), salt, iterations), salt, iterations
    )


def password_matches(mechanism: str, credential: ScramCredential, password: str) -> bool:
    """Whether ``password`` is the one ``credential`` was made from (SASL/PLAIN checks the
    SCRAM credentials this way: the password never needs storing in the clear)."""
    again = credential_from_salted(
        mechanism,
        salted_password(mechanism, password.encode(), credential.salt, credential.iterations),
        credential.salt,
        credential.iterations,
    )
    return hmac.compare_digest(again.stored_key, credential.stored_key)


def _attributes(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise SaslFailure(f"Invalid SCRAM message attribute {part[:16]!r}")
        out.append((part[0], part[2:]))
    return out


def _unescape(name: str) -> str:
    """A saslname: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is invalid."""
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise SaslFailure("Invalid SCRAM user name escape")
    return name.replace("=2C", ",").replace("=3D", "=")


def _valid_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


class ScramServer:
    """One server-side SCRAM exchange. ``lookup(user)`` gives the user's credential for this
    mechanism (None: unknown). After the last step, :attr:`username` is the authenticated
    user."""

    def __init__(self, mechanism: str, lookup: Callable[[str], ScramCredential | None]) -> None:
        self.mechanism = mechanism
        self._lookup = lookup
        self._hash = _hash(mechanism)
        self.complete = False
        self.username = ""
        self._state = "first"
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._credential: ScramCredential | None = None

    def step(self, token: bytes) -> bytes:
        """The answer to the client's next message; raises :class:`SaslFailure`."""
        if len(token) > MAX_MESSAGE:
            raise invalid_credentials(self.mechanism, f"a {len(token)}-byte SCRAM message")
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise SaslFailure("Invalid SCRAM message: not UTF-8") from None
        if self._state == "first":
            return self._first(text)
        if self._state == "final":
            return self._final(text)
        raise SaslFailure("SCRAM exchange already complete")

    def _first(self, text: str) -> bytes:
        # gs2-header: "n," [ "a=" authzid ] "," ; only "n" (no channel binding) is accepted.
        flag, sep, rest = text.partition(",")
        if not sep or flag != "n":
            raise SaslFailure(
                "Invalid SCRAM client first message: channel binding is not supported"
            )
        authzid, sep, bare = rest.partition(",")
        if not sep or (authzid and not authzid.startswith("a=")):
            raise SaslFailure("Invalid SCRAM client first message: bad gs2 header")
        attrs = _attributes(bare)
        if attrs and attrs[0][0] == "m":
            raise SaslFailure(
                "Invalid SCRAM client first message: mandatory extensions are not supported"
            )
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise SaslFailure("Invalid SCRAM client first message: expected n= and r=")
        username = _unescape(attrs[0][1])
        client_nonce = attrs[1][1]
        if not username or not _valid_nonce(client_nonce):
            raise SaslFailure("Invalid SCRAM client first message: bad user name or nonce")
        if authzid and _unescape(authzid[2:]) != username:
            raise SaslFailure(
                "Authentication failed: Client requested an authorization id that is different "
                "from username"
            )
        credential = self._lookup(username)
        if credential is None or credential.iterations < MIN_ITERATIONS:
            raise invalid_credentials(
                self.mechanism, f"no {self.mechanism} credential of {username!r}"
            )
        self.username = username
        self._credential = credential
        self._client_first_bare = bare
        # Kafka's server nonce: 130 random bits in base 36; any printable nonce will do.
        self._nonce = client_nonce + secrets.token_urlsafe(24).replace(",", "")
        salt = base64.b64encode(credential.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={credential.iterations}"
        self._state = "final"
        return self._server_first.encode()

    def _final(self, text: str) -> bytes:
        assert self._credential is not None
        without_proof, sep, proof_attr = text.rpartition(",p=")
        attrs = _attributes(without_proof) if sep else []
        if not sep or len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise SaslFailure("Invalid SCRAM client final message")
        # Kafka checks that the nonce *ends with* the combined one: librdkafka before 2.1
        # sends the client nonce twice (client + combined), and Kafka accepts it.
        if not attrs[1][1].endswith(self._nonce):
            raise invalid_credentials(self.mechanism, "the client final nonce is not ours")
        try:
            proof = base64.b64decode(proof_attr, validate=True)
            base64.b64decode(attrs[0][1], validate=True)
        except ValueError:
            raise SaslFailure("Invalid SCRAM client final message: bad base64") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        credential = self._credential
        signature = hmac.new(credential.stored_key, auth_message, self._hash).digest()
        if len(proof) != len(signature):
            raise invalid_credentials(self.mechanism, "a proof of the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(
            hashlib.new(self._hash, client_key).digest(), credential.stored_key
        ):
            raise invalid_credentials(self.mechanism, f"a wrong proof for {self.username!r}")
        server_signature = hmac.new(credential.server_key, auth_message, self._hash).digest()
        self._state = "done"
        self.complete = True
        return b"v=" + base64.b64encode(server_signature)
