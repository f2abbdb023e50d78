"""Security through real clients and raw bytes: TLS, mTLS, SASL PLAIN and SCRAM, ACLs.

One broker process serves the whole module (a fixed cost of about a second) with four
listeners: PLAINTEXT (the harness's port), SSL asking for a client certificate (mTLS),
SASL_PLAINTEXT and SASL_SSL with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; the authorizer on,
with ``User:admin`` and the test client certificate's subject as super users. Its
certificates come from a CA the module makes (tests/security_ca.py), its first users from
``kafscale user add`` before it starts. Each client (confluent-kafka, kafka-python, aiokafka,
kcat) produces and reads back records on each secure listener as ``alice``, whose ACLs the
module creates through confluent-kafka's admin API; a wrong password, an unknown user, an
untrusted or expired certificate and a plaintext client on a TLS port fail with the client's
error while the broker keeps serving; raw requests check the SASL state machine and
malformed SCRAM messages; ``bob``'s ACL matrix is checked through the clients' errors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.helpers
import confluent_kafka
import confluent_kafka.admin as cadmin
import kafka
import kafka.errors
import pytest

from generated.errors import ErrorCode
from generated.metadata_request import MetadataRequest
from generated.registry import api
from generated.sasl_authenticate_request import SaslAuthenticateRequest
from generated.sasl_authenticate_response import SaslAuthenticateResponse
from generated.sasl_handshake_request import SaslHandshakeRequest
from generated.sasl_handshake_response import SaslHandshakeResponse
from kafscale.protocol.framing import encode_request
from tests.conformance.conftest import BrokerProcess, free_port, require_kcat
from tests.security_ca import Pem, TestCA

TIMEOUT = 10.0
ADMIN, ALICE, BOB = ("admin", "admin-secret"), ("alice", "alice-secret"), ("bob", "bob-secret")
CLIENT_DN = "CN=client,O=KafScale Test,C=US"
REAUTH_MS = 600_000


@dataclass
class Secure:
    """The module's broker and what talking to it needs."""

    broker: BrokerProcess
    ports: dict[str, int]
    ca: Path
    client: Pem
    untrusted: Pem
    expired: Pem
    root: Path
    authority: TestCA

    def address(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("security")
    ca = TestCA(root / "ca")
    server = ca.issue("server", "localhost", server=True)
    client = ca.issue("client", "client")
    expired = ca.issue("expired", "client", expired=True)
    untrusted = TestCA(root / "other", "Other CA").issue("untrusted", "client")
    data_dir = root / "data"
    # The first super user before the broker runs; the others through the admin API.
    subprocess.run(
        [
            *(sys.executable, "-m", "kafscale", "user", "add", ADMIN[0]),
            *("--password", ADMIN[1], "--data-dir", str(data_dir)),
        ],
        check=True,
        capture_output=True,
    )
    ports = {"PLAINTEXT": free_port()}
    for name in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        ports[name] = free_port()
    listeners = ",".join(f"{n}://127.0.0.1:{p}" for n, p in ports.items())
    args = [
        f"--listeners={listeners}",
        f"--ssl.keystore.location={server.both}",
        f"--ssl.truststore.location={ca.ca_file}",
        "--ssl.client.auth=requested",
        "--sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "--authorizer.class.name=kafscale",
        f"--super.users=User:admin;User:{CLIENT_DN}",
        "--connection.failed.authentication.delay.ms=0",
        f"--connections.max.reauth.ms={REAUTH_MS}",
        "--group.initial.rebalance.delay.ms=0",
    ]
    broker = BrokerProcess("127.0.0.1", ports["PLAINTEXT"], data_dir, root, args=args)
    broker.start()
    sec = Secure(broker, ports, ca.ca_file, client, untrusted, expired, root, ca)
    try:
        _grant_alice(sec)
        yield sec
    except BaseException:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
        raise
    broker.stop_cleanly()


def confluent_conf(sec: Secure, mode: str, user: tuple[str, str] = ALICE) -> dict[str, Any]:
    """confluent-kafka (librdkafka) settings for ``mode``."""
    if mode == "ssl":
        return {
            "bootstrap.servers": sec.address("SSL"),
            "security.protocol": "ssl",
            "ssl.ca.location": str(sec.ca),
            "ssl.certificate.location": str(sec.client.cert),
            "ssl.key.location": str(sec.client.key),
        }
    mechanism = {"scram512": "SCRAM-SHA-512", "scram256": "SCRAM-SHA-256", "plain": "PLAIN"}[mode]
    conf = {
        "sasl.mechanism": mechanism,
        "sasl.username": user[0],
        "sasl.password": user[1],
    }
    if mode == "plain":
        return {
            **conf,
            "bootstrap.servers": sec.address("SASL_PLAINTEXT"),
            "security.protocol": "sasl_plaintext",
        }
    return {
        **conf,
        "bootstrap.servers": sec.address("SASL_SSL"),
        "security.protocol": "sasl_ssl",
        "ssl.ca.location": str(sec.ca),
    }


def python_conf(sec: Secure, mode: str, user: tuple[str, str] = ALICE) -> dict[str, Any]:
    """kafka-python / aiokafka settings for ``mode`` (aiokafka takes an ssl_context)."""
    c = confluent_conf(sec, mode, user)
    out: dict[str, Any] = {
        "bootstrap_servers": c["bootstrap.servers"],
        "security_protocol": c["security.protocol"].upper(),
    }
    if "sasl.mechanism" in c:
        out |= {
            "sasl_mechanism": c["sasl.mechanism"],
            "sasl_plain_username": user[0],
            "sasl_plain_password": user[1],
        }
    if mode == "ssl":
        out |= {
            "ssl_cafile": str(sec.ca),
            "ssl_certfile": str(sec.client.cert),
            "ssl_keyfile": str(sec.client.key),
        }
    elif mode != "plain":
        out["ssl_cafile"] = str(sec.ca)
    return out


def _aiokafka_conf(conf: dict[str, Any]) -> dict[str, Any]:
    conf = dict(conf)
    if "ssl_cafile" in conf:
        conf["ssl_context"] = aiokafka.helpers.create_ssl_context(
            cafile=conf.pop("ssl_cafile"),
            certfile=conf.pop("ssl_certfile", None),
            keyfile=conf.pop("ssl_keyfile", None),
        )
    return conf


def _admin(sec: Secure, user: tuple[str, str] = ADMIN) -> cadmin.AdminClient:
    return cadmin.AdminClient(confluent_conf(sec, "scram512", user))


def _acl(
    principal: str,
    resource: cadmin.ResourceType,
    name: str,
    operation: cadmin.AclOperation,
    pattern: cadmin.ResourcePatternType = cadmin.ResourcePatternType.LITERAL,
    permission: cadmin.AclPermissionType = cadmin.AclPermissionType.ALLOW,
) -> cadmin.AclBinding:
    return cadmin.AclBinding(resource, name, pattern, principal, "*", operation, permission)


def _grant_alice(sec: Secure) -> None:
    """alice and bob get passwords, and alice may do anything with topics and groups named
    sec-* (through confluent-kafka's admin API)."""
    admin = _admin(sec)
    for user, password in (ALICE, BOB):
        # Kafka refuses two alterations of one user in one request: one request each.
        for mechanism in (cadmin.ScramMechanism.SCRAM_SHA_256, cadmin.ScramMechanism.SCRAM_SHA_512):
            info = cadmin.ScramCredentialInfo(mechanism, 4096)
            upsert = cadmin.UserScramCredentialUpsertion(user, info, password.encode())
            admin.alter_user_scram_credentials([upsert])[user].result(TIMEOUT)
    prefixed = cadmin.ResourcePatternType.PREFIXED
    acls = [
        _acl("User:alice", cadmin.ResourceType.TOPIC, "sec-", cadmin.AclOperation.ALL, prefixed),
        _acl("User:alice", cadmin.ResourceType.GROUP, "sec-", cadmin.AclOperation.ALL, prefixed),
    ]
    # admin stays referenced until the futures resolve (they die with its handle)
    for future in admin.create_acls(acls, request_timeout=TIMEOUT).values():
        future.result(TIMEOUT)


# --- produce and consume with each client on each secure listener ---------------------------

MODES = ["ssl", "scram512", "scram256", "plain"]
VALUES = [b"one", b"two", b"three"]


def _confluent(sec: Secure, mode: str, topic: str) -> list[bytes]:
    conf = confluent_conf(sec, mode)
    producer = confluent_kafka.Producer(conf)
    errors: list[Any] = []
    for value in VALUES:
        producer.produce(topic, value, on_delivery=lambda err, _m: errors.append(err))
    assert producer.flush(TIMEOUT) == 0
    assert errors == [None] * len(VALUES)
    consumer = confluent_kafka.Consumer({**conf, "group.id": "sec-unused"})
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < len(VALUES) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg.value())
    consumer.close()
    return got


def _kafka_python(sec: Secure, mode: str, topic: str) -> list[bytes]:
    conf = python_conf(sec, mode)
    producer = kafka.KafkaProducer(**conf, acks="all")
    for value in VALUES:
        producer.send(topic, value).get(TIMEOUT)
    producer.close()
    consumer = kafka.KafkaConsumer(**conf, enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([kafka.TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    got = []
    for msg in consumer:
        got.append(msg.value)
        if len(got) == len(VALUES):
            break
    consumer.close()
    return got


def _aiokafka(sec: Secure, mode: str, topic: str) -> list[bytes]:
    conf = _aiokafka_conf(python_conf(sec, mode))

    async def run() -> list[bytes]:
        producer = aiokafka.AIOKafkaProducer(**conf, acks="all")
        await producer.start()
        try:
            for value in VALUES:
                await producer.send_and_wait(topic, value)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(**conf, enable_auto_commit=False)
        await consumer.start()
        got = []
        try:
            tp = aiokafka.TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while len(got) < len(VALUES):
                msg = await asyncio.wait_for(consumer.getone(), TIMEOUT)
                got.append(msg.value)
        finally:
            await consumer.stop()
        return got

    return asyncio.run(run())


def _kcat(sec: Secure, mode: str, topic: str) -> list[bytes]:
    kcat = require_kcat()
    conf = confluent_conf(sec, mode)
    args = [kcat, "-b", conf.pop("bootstrap.servers")]
    for key, value in conf.items():
        args += ["-X", f"{'sasl.mechanisms' if key == 'sasl.mechanism' else key}={value}"]
    data = b"".join(v + b"\n" for v in VALUES)
    subprocess.run([*args, "-P", "-t", topic, "-p", "0"], input=data, check=True, timeout=20)
    out = subprocess.run(
        [*args, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-c", str(len(VALUES)), "-e"],
        capture_output=True,
        check=True,
        timeout=20,
    )
    return out.stdout.splitlines()


CLIENTS: dict[str, Callable[[Secure, str, str], list[bytes]]] = {
    "confluent": _confluent,
    "kafka-python": _kafka_python,
    "aiokafka": _aiokafka,
    "kcat": _kcat,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", list(CLIENTS))
def test_produce_and_consume(secure: Secure, client: str, mode: str) -> None:
    topic = f"sec-{client}-{mode}"
    assert CLIENTS[client](secure, mode, topic) == VALUES


# --- failures: each client's error, and the broker keeps serving -----------------------------


def _confluent_fails(conf: dict[str, Any]) -> list[str]:
    """The errors confluent-kafka reports for ``conf`` (its metadata call must fail)."""
    errors: list[str] = []
    admin = cadmin.AdminClient({**conf, "error_cb": lambda e: errors.append(str(e))})
    with pytest.raises(confluent_kafka.KafkaException):
        admin.list_topics(timeout=1.5)
    admin.poll(0.5)  # error_cb runs from poll()
    return errors


def _still_serving(sec: Secure) -> None:
    assert _admin(sec).list_topics(timeout=TIMEOUT).brokers


@pytest.mark.parametrize("user", [("alice", "wrong"), ("nobody", "whatever")])
def test_bad_credentials_fail_for_each_client(secure: Secure, user: tuple[str, str]) -> None:
    errors = _confluent_fails(confluent_conf(secure, "scram512", user))
    assert any(
        "SASL authentication error: Authentication failed during authentication due to "
        "invalid credentials with SASL mechanism SCRAM-SHA-512" in e
        for e in errors
    ), errors
    errors = _confluent_fails(confluent_conf(secure, "plain", user))
    assert any("Invalid username or password" in e for e in errors), errors
    with pytest.raises(kafka.errors.KafkaError):  # SaslAuthenticationFailed, or no bootstrap
        kafka.KafkaProducer(
            **python_conf(secure, "scram256", user),
            bootstrap_timeout_ms=2000,
        )

    async def aio() -> None:
        producer = aiokafka.AIOKafkaProducer(
            **_aiokafka_conf(python_conf(secure, "scram512", user))
        )
        try:
            with pytest.raises(aiokafka.errors.KafkaError):
                await producer.start()
        finally:
            await producer.stop()

    asyncio.run(aio())
    _still_serving(secure)


@pytest.mark.parametrize("which", ["untrusted", "expired"])
def test_bad_client_certificate_is_refused(secure: Secure, which: str) -> None:
    pem: Pem = getattr(secure, which)
    conf = {
        **confluent_conf(secure, "ssl"),
        "ssl.certificate.location": str(pem.cert),
        "ssl.key.location": str(pem.key),
    }
    assert _confluent_fails(conf)  # librdkafka logs the TLS failure; the brokers are down
    # The same through Python's ssl: the handshake fails, nothing is served.
    context = ssl.create_default_context(cafile=str(secure.ca))
    context.load_cert_chain(pem.cert, pem.key)
    with (
        socket.create_connection(("127.0.0.1", secure.ports["SSL"]), timeout=TIMEOUT) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, EOFError)),
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(_frame("ApiVersions", 0, api("ApiVersions").request_type()()))
        if not tls.recv(4):
            raise EOFError("closed")
    _still_serving(secure)


def test_plaintext_client_on_a_tls_port(secure: Secure) -> None:
    conf = {"bootstrap.servers": secure.address("SASL_SSL"), "socket.timeout.ms": 2000}
    _confluent_fails(conf)
    with socket.create_connection(("127.0.0.1", secure.ports["SSL"]), timeout=TIMEOUT) as sock:
        sock.sendall(_frame("ApiVersions", 0, api("ApiVersions").request_type()()))
        assert _recv_all(sock)[:1] != b"\x00"  # a TLS alert or nothing, never a Kafka answer
    _still_serving(secure)


def test_tls_listener_principal_is_the_certificate_subject(secure: Secure) -> None:
    # The client certificate's subject is a super user: it may create any topic; a TLS
    # client without a certificate is User:ANONYMOUS, which may not.
    admin = _admin_ssl(secure, with_cert=True)
    admin.create_topics([cadmin.NewTopic("by-cert", 1, 1)])["by-cert"].result(TIMEOUT)
    anonymous = _admin_ssl(secure, with_cert=False)
    with pytest.raises(confluent_kafka.KafkaException) as denied:
        anonymous.create_topics([cadmin.NewTopic("by-anon", 1, 1)])["by-anon"].result(TIMEOUT)
    assert denied.value.args[0].code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED


def _admin_ssl(sec: Secure, with_cert: bool) -> cadmin.AdminClient:
    conf = confluent_conf(sec, "ssl")
    if not with_cert:
        del conf["ssl.certificate.location"], conf["ssl.key.location"]
    return cadmin.AdminClient(conf)


def _any_filter() -> cadmin.AclBindingFilter:
    return cadmin.AclBindingFilter(
        cadmin.ResourceType.ANY,
        None,
        cadmin.ResourcePatternType.ANY,
        None,
        None,
        cadmin.AclOperation.ANY,
        cadmin.AclPermissionType.ANY,
    )


# --- raw SASL exchanges ------------------------------------------------------------------------


def _frame(name: str, version: int, body: Any, correlation: int = 1) -> bytes:
    return b"".join(encode_request(api(name), version, correlation, "sec-raw", body))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _recv_all(sock: socket.socket) -> bytes:
    """Everything until the broker closes (or a timeout)."""
    data = b""
    sock.settimeout(3)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionError):
        pass
    return data


class Raw:
    """One connection to the SASL_PLAINTEXT listener, request by request."""

    def __init__(self, sec: Secure | int, listener: str = "SASL_PLAINTEXT") -> None:
        port = sec if isinstance(sec, int) else sec.ports[listener]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def call(self, name: str, version: int, body: Any) -> Any:
        self.correlation += 1
        self.sock.sendall(_frame(name, version, body, self.correlation))
        size = struct.unpack(">i", _recv_exactly(self.sock, 4))[0]
        data = _recv_exactly(self.sock, size)
        assert struct.unpack_from(">i", data)[0] == self.correlation
        spec = api(name)
        header = 4 if spec.response_header_version(version) == 0 else 5
        return spec.response_type().decode(data[header:], version)

    def closed(self) -> bool:
        return _recv_all(self.sock) == b""

    def handshake(self, mechanism: str, version: int = 1) -> SaslHandshakeResponse:
        return self.call("SaslHandshake", version, SaslHandshakeRequest(mechanism=mechanism))

    def auth(self, token: bytes, version: int = 2) -> SaslAuthenticateResponse:
        return self.call("SaslAuthenticate", version, SaslAuthenticateRequest(auth_bytes=token))

    def scram(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> Any:
        """A whole SCRAM exchange (RFC 5802); the final SaslAuthenticate answer."""
        h = "sha256" if mechanism.endswith("256") else "sha512"
        assert self.handshake(mechanism).error_code == 0
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={nonce}"
        server_first = self.auth(f"n,,{first_bare}".encode())
        assert server_first.error_code == 0, server_first
        attrs = dict(p.split("=", 1) for p in bytes(server_first.auth_bytes).decode().split(","))
        salted = hashlib.pbkdf2_hmac(
            h, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{bytes(server_first.auth_bytes).decode()},{without_proof}"
        client_key = hmac.new(salted, b"Client Key", h).digest()
        signature = hmac.new(hashlib.new(h, client_key).digest(), auth_message.encode(), h)
        proof = bytes(a ^ b for a, b in zip(client_key, signature.digest(), strict=True))
        final = self.auth(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
        if final.error_code == 0:
            server_key = hmac.new(salted, b"Server Key", h).digest()
            expected = hmac.new(server_key, auth_message.encode(), h).digest()
            assert bytes(final.auth_bytes) == b"v=" + base64.b64encode(expected)
        return final


@pytest.fixture
def raw(secure: Secure) -> Iterator[Raw]:
    conn = Raw(secure)
    yield conn
    conn.close()


def test_answers_advertise_the_listener_connected_through(secure: Secure, raw: Raw) -> None:
    plain = Raw(secure, "PLAINTEXT")
    meta = plain.call("Metadata", 12, MetadataRequest(topics=[]))
    assert [(b.host, b.port) for b in meta.brokers] == [("127.0.0.1", secure.ports["PLAINTEXT"])]
    plain.close()
    assert raw.scram(*ALICE).error_code == 0
    meta = raw.call("Metadata", 12, MetadataRequest(topics=[]))
    assert [b.port for b in meta.brokers] == [secure.ports["SASL_PLAINTEXT"]]
    cluster = raw.call("DescribeCluster", 0, api("DescribeCluster").request_type()())
    assert [b.port for b in cluster.brokers] == [secure.ports["SASL_PLAINTEXT"]]


def test_only_api_versions_and_sasl_before_authentication(secure: Secure, raw: Raw) -> None:
    raw.sock.sendall(_frame("Metadata", 12, MetadataRequest(topics=None)))
    assert raw.closed()
    # ApiVersions then SaslAuthenticate without a handshake: closed, no answer.
    conn = Raw(secure)
    assert conn.call("ApiVersions", 3, api("ApiVersions").request_type()()).error_code == 0
    conn.sock.sendall(_frame("SaslAuthenticate", 2, SaslAuthenticateRequest(auth_bytes=b"x"), 2))
    assert conn.closed()
    # After a v1 handshake anything but SaslAuthenticate: its error (34), then closed.
    conn = Raw(secure)
    assert conn.handshake("PLAIN").error_code == 0
    answer = conn.call("Metadata", 4, MetadataRequest(topics=None))
    assert answer.topics == [] or all(
        t.error_code == ErrorCode.ILLEGAL_SASL_STATE for t in answer.topics
    )
    assert conn.closed()


def test_handshake_mechanisms(secure: Secure, raw: Raw) -> None:
    answer = raw.handshake("GSSAPI")
    assert answer.error_code == ErrorCode.UNSUPPORTED_SASL_MECHANISM
    assert sorted(answer.mechanisms) == ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    assert raw.closed()
    plain = Raw(secure, "PLAINTEXT")
    assert plain.handshake("PLAIN").error_code == ErrorCode.ILLEGAL_SASL_STATE
    assert plain.auth(b"\0a\0b").error_code == ErrorCode.ILLEGAL_SASL_STATE
    plain.close()


def test_scram_and_reauthentication(secure: Secure, raw: Raw) -> None:
    final = raw.scram(*ALICE)
    assert final.error_code == 0 and final.session_lifetime_ms == REAUTH_MS
    assert raw.call("Metadata", 12, MetadataRequest(topics=None)).throttle_time_ms == 0
    again = raw.auth(b"n,,n=alice,r=abc")
    assert again.error_code == ErrorCode.ILLEGAL_SASL_STATE
    # KIP-368 on the live connection: the same principal again is fine.
    assert raw.scram(*ALICE).error_code == 0
    assert raw.call("Metadata", 12, MetadataRequest(topics=None)).throttle_time_ms == 0
    time.sleep(1.05)  # a re-authentication starts at most once a second
    changed = raw.scram(*BOB)
    assert changed.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
    assert "Cannot change principals during re-authentication" in changed.error_message
    assert raw.closed()


MALFORMED_SCRAM = [
    b"y,,n=alice,r=abc",  # channel binding
    b"p=tls-unique,,n=alice,r=abc",
    b"n,,n=ali=ce,r=abc",  # a bad escape
    b"n,,r=abc,n=alice",  # attribute order
    b"n,,n=alice,r=a,b",  # an empty attribute
    b"n,,n=alice,r=",  # an empty nonce
    b"n,a=bob,n=alice,r=abc",  # an authorization id of someone else
    b"n,,n=nobody,r=abc",  # unknown user
    b"\xff\xfe",  # not UTF-8
    b"",
    b"n,,m=ext,n=alice,r=abc",
]


@pytest.mark.parametrize("token", MALFORMED_SCRAM)
def test_malformed_scram_first_messages(secure: Secure, raw: Raw, token: bytes) -> None:
    assert raw.handshake("SCRAM-SHA-512").error_code == 0
    answer = raw.auth(token)
    assert answer.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
    assert raw.closed()


@pytest.mark.parametrize(
    "final",
    [
        "c=biws,r={nonce}x,p=AAAA",  # not the combined nonce
        "c=biws,r={nonce},p=not base64!",
        "c=biws,r={nonce},p=" + base64.b64encode(b"\0" * 32).decode(),  # a wrong proof
        "c=biws,r={nonce}",  # no proof
        "garbage",
    ],
)
def test_malformed_scram_final_messages(secure: Secure, raw: Raw, final: str) -> None:
    assert raw.handshake("SCRAM-SHA-256").error_code == 0
    first = raw.auth(b"n,,n=alice,r=clientnonce")
    nonce = bytes(first.auth_bytes).decode().split(",")[0][2:]
    answer = raw.auth(final.format(nonce=nonce).encode())
    assert answer.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
    assert raw.closed()


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (b"alice\0alice-secret", "expected 3 tokens, got 2"),
        (b"\0alice\0alice-secret\0x", "expected 3 tokens, got 4"),
        (b"\0\0alice-secret", "username not specified"),
        (b"\0alice\0", "password not specified"),
        (b"\0alice\0wrong", "Invalid username or password"),
        (b"bob\0alice\0alice-secret", "authorization id that is different from username"),
    ],
)
def test_plain_refusals(secure: Secure, raw: Raw, token: bytes, message: str) -> None:
    assert raw.handshake("PLAIN").error_code == 0
    answer = raw.auth(token, version=1)
    assert answer.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
    assert message in answer.error_message
    assert raw.closed()


def test_plain_raw_tokens_after_handshake_v0(secure: Secure, raw: Raw) -> None:
    assert raw.handshake("PLAIN", version=0).error_code == 0
    token = b"alice\0alice\0alice-secret"  # kafka-python and aiokafka send the user as authzid
    raw.sock.sendall(struct.pack(">i", len(token)) + token)
    assert _recv_exactly(raw.sock, 4) == b"\0\0\0\0"
    assert raw.call("Metadata", 12, MetadataRequest(topics=None)).throttle_time_ms == 0


def test_a_refused_acks_0_produce_closes_the_connection(secure: Secure) -> None:
    # User:ANONYMOUS (the PLAINTEXT listener) may write nothing: with acks=0 there is no
    # answer to carry the refusal, so the broker closes the connection, as Kafka does.
    from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData

    conn = Raw(secure, "PLAINTEXT")
    data = TopicProduceData(
        name="sec-x", partition_data=[PartitionProduceData(index=0, records=b"")]
    )
    body = ProduceRequest(acks=0, timeout_ms=1000, topic_data=[data])
    conn.sock.sendall(_frame("Produce", 9, body))
    assert conn.closed()
    conn.close()


def test_oversize_frame_before_authentication(secure: Secure, raw: Raw) -> None:
    raw.sock.sendall(struct.pack(">i", 600 * 1024) + b"\0" * 1024)
    assert raw.closed()


# --- the ACL matrix through the clients' errors -------------------------------------------------


def _delivery_error(conf: dict[str, Any], topic: str) -> Any:
    producer = confluent_kafka.Producer({**conf, "message.timeout.ms": 3000})
    result: list[Any] = []
    producer.produce(topic, b"v", on_delivery=lambda err, _m: result.append(err))
    producer.flush(TIMEOUT)
    assert result, "no delivery report"
    return result[0]


def test_acl_matrix(secure: Secure) -> None:
    admin = _admin(secure)
    for name in ("acl-rw", "acl-ro-x", "acl-deny", "acl-none"):
        admin.create_topics([cadmin.NewTopic(name, 1, 1)])[name].result(TIMEOUT)
    topic, group = cadmin.ResourceType.TOPIC, cadmin.ResourceType.GROUP
    op, deny = cadmin.AclOperation, cadmin.AclPermissionType.DENY
    prefixed = cadmin.ResourcePatternType.PREFIXED
    acls = [
        _acl("User:bob", topic, "acl-rw", op.WRITE),
        _acl("User:bob", topic, "acl-rw", op.READ),
        _acl("User:bob", topic, "acl-ro-", op.READ, prefixed),
        _acl("User:bob", topic, "acl-deny", op.ALL),
        _acl("User:bob", topic, "acl-deny", op.WRITE, permission=deny),
        _acl("User:bob", group, "acl-group", op.READ),
    ]
    for future in admin.create_acls(acls).values():
        future.result(TIMEOUT)
    listed = admin.describe_acls(
        cadmin.AclBindingFilter(
            topic,
            None,
            cadmin.ResourcePatternType.ANY,
            "User:bob",
            None,
            op.ANY,
            cadmin.AclPermissionType.ANY,
        )
    ).result(TIMEOUT)
    assert len(listed) == 5
    bob = confluent_conf(secure, "scram256", BOB)
    denied = confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _delivery_error(bob, "acl-rw") is None
    for name in ("acl-ro-x", "acl-deny", "acl-none"):  # read only, DENY wins, no ACL
        err = _delivery_error(bob, name)
        assert err is not None and err.code() == denied, (name, err)
    # Metadata lists only what bob may describe (READ and WRITE imply DESCRIBE).
    visible = set(cadmin.AdminClient(bob).list_topics(timeout=TIMEOUT).topics)
    assert {"acl-rw", "acl-ro-x", "acl-deny"} <= visible and "acl-none" not in visible
    # A group bob may read, and one he may not.
    consumer = confluent_kafka.Consumer({**bob, "group.id": "acl-group"})
    consumer.commit(offsets=[confluent_kafka.TopicPartition("acl-ro-x", 0, 0)], asynchronous=False)
    consumer.close()
    other = confluent_kafka.Consumer({**bob, "group.id": "not-bobs"})
    other.subscribe(["acl-ro-x"])
    codes = set()
    deadline = time.monotonic() + TIMEOUT
    while confluent_kafka.KafkaError.GROUP_AUTHORIZATION_FAILED not in codes:
        assert time.monotonic() < deadline, codes
        msg = other.poll(0.2)
        if msg is not None and msg.error() is not None:
            codes.add(msg.error().code())
    other.close()
    # Admin operations without their ACLs.
    bob_admin = cadmin.AdminClient(bob)
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        bob_admin.create_topics([cadmin.NewTopic("acl-new", 1, 1)])["acl-new"].result(TIMEOUT)
    assert raised.value.args[0].code() == denied
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        bob_admin.delete_topics(["acl-rw"])["acl-rw"].result(TIMEOUT)
    assert raised.value.args[0].code() == denied
    # kafka-python sees the same refusal as its own error.
    producer = kafka.KafkaProducer(**python_conf(secure, "scram512", BOB), max_block_ms=5000)
    with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
        producer.send("acl-none", b"v").get(TIMEOUT)
    producer.close()
    # Deleting the DENY (through kafka-python's admin client) lets bob write.
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePatternFilter,
        ResourceType,
    )

    bob_kp_admin = KafkaAdminClient(**python_conf(secure, "scram512", BOB))
    everything = ACLFilter(
        None,
        None,
        ACLOperation.ANY,
        ACLPermissionType.ANY,
        ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
    )
    with pytest.raises(kafka.errors.ClusterAuthorizationFailedError):
        bob_kp_admin.describe_acls(everything)
    bob_kp_admin.close()
    kp_admin = KafkaAdminClient(**python_conf(secure, "scram512", ADMIN))
    deleted = kp_admin.delete_acls(
        [
            ACLFilter(
                "User:bob",
                "*",
                ACLOperation.WRITE,
                ACLPermissionType.DENY,
                ResourcePatternFilter(
                    ResourceType.TOPIC, "acl-deny", ACLResourcePatternType.LITERAL
                ),
            )
        ]
    )
    kp_admin.close()
    assert len(deleted[0][1]) == 1
    assert _delivery_error(bob, "acl-deny") is None


def test_users_through_the_admin_api(secure: Secure) -> None:
    admin = _admin(secure)
    info = cadmin.ScramCredentialInfo(cadmin.ScramMechanism.SCRAM_SHA_256, 4096)
    upsert = cadmin.UserScramCredentialUpsertion("carol", info, b"carol-secret")
    admin.alter_user_scram_credentials([upsert])["carol"].result(TIMEOUT)
    described = admin.describe_user_scram_credentials(["carol"])["carol"].result(TIMEOUT)
    assert [(c.mechanism, c.iterations) for c in described.scram_credential_infos] == [
        (cadmin.ScramMechanism.SCRAM_SHA_256, 4096)
    ]
    carol = confluent_conf(secure, "scram256", ("carol", "carol-secret"))
    cadmin.AdminClient(carol).list_topics(timeout=TIMEOUT)  # authenticates; sees nothing
    deletion = cadmin.UserScramCredentialDeletion("carol", cadmin.ScramMechanism.SCRAM_SHA_256)
    admin.alter_user_scram_credentials([deletion])["carol"].result(TIMEOUT)
    assert any("Authentication failed" in e for e in _confluent_fails(carol))
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        admin.describe_user_scram_credentials(["carol"])["carol"].result(TIMEOUT)
    assert raised.value.args[0].code() == confluent_kafka.KafkaError.RESOURCE_NOT_FOUND
    # Too few iterations: refused.
    low = cadmin.UserScramCredentialUpsertion(
        "dave", cadmin.ScramCredentialInfo(cadmin.ScramMechanism.SCRAM_SHA_256, 1000), b"pw"
    )
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        admin.alter_user_scram_credentials([low])["dave"].result(TIMEOUT)
    assert raised.value.args[0].code() == confluent_kafka.KafkaError.UNACCEPTABLE_CREDENTIAL


# --- KIP-368: sessions that expire -----------------------------------------------------------


def test_sessions_expire_and_clients_reauthenticate(tmp_path: Path) -> None:
    # A broker of its own whose sessions last 1.5 s (the module's last 10 minutes); its one
    # user comes from kafscale user add.
    data_dir = tmp_path / "data"
    subprocess.run(
        [
            *(sys.executable, "-m", "kafscale", "user", "add", ALICE[0]),
            *("--password", ALICE[1], "--data-dir", str(data_dir)),
        ],
        check=True,
        capture_output=True,
    )
    plain, sasl = free_port(), free_port()
    args = [
        f"--listeners=PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl}",
        "--sasl.enabled.mechanisms=SCRAM-SHA-256",
        "--connections.max.reauth.ms=1500",
    ]
    broker = BrokerProcess("127.0.0.1", plain, data_dir, tmp_path, args=args)
    broker.start()
    try:
        raw = Raw(sasl)
        assert raw.scram(*ALICE).session_lifetime_ms == 1500
        assert raw.call("Metadata", 12, MetadataRequest(topics=None)).throttle_time_ms == 0
        time.sleep(1.6)
        raw.sock.sendall(_frame("Metadata", 12, MetadataRequest(topics=None), 9))
        assert raw.closed()  # expired: only a re-authentication would have been served
        raw.close()
        # librdkafka re-authenticates at 90 % of the lifetime: a producer keeps working.
        conf = {
            "bootstrap.servers": f"127.0.0.1:{sasl}",
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": ALICE[0],
            "sasl.password": ALICE[1],
        }
        producer = confluent_kafka.Producer(conf)
        errors: list[Any] = []
        for i in range(8):
            producer.produce("reauth", f"{i}".encode(), on_delivery=lambda e, _m: errors.append(e))
            producer.flush(TIMEOUT)
            time.sleep(0.5)
        assert errors == [None] * 8
    except BaseException:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
        raise
    broker.stop_cleanly()


def test_certificates_reload_on_sighup_and_on_change(secure: Secure) -> None:
    import signal

    assert secure.broker.proc is not None
    log = secure.broker.logs[-1]

    def reloads() -> int:
        return log.read_text(errors="replace").count("listener SASL_SSL: certificates reloaded")

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while reloads() < count:
            assert time.monotonic() < deadline, "no reload logged"
            time.sleep(0.1)

    def served() -> bytes:
        """The certificate a new connection to the SSL listener is given (DER)."""
        ctx = ssl.create_default_context(cafile=str(secure.ca))
        with socket.create_connection(("127.0.0.1", secure.ports["SSL"]), timeout=TIMEOUT) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    keystore = next(a for a in secure.broker.args if a.startswith("--ssl.keystore.location="))
    path = Path(keystore.split("=", 1)[1])
    first = served()
    before = reloads()
    secure.broker.proc.send_signal(signal.SIGHUP)
    wait_for(before + 1)
    assert served() == first  # the same files
    renewed = secure.authority.issue("server-renewed", "localhost", server=True)
    path.write_bytes(renewed.both.read_bytes())  # a new file: new certificate, new key
    os.utime(path, (time.time() + 5, time.time() + 5))
    wait_for(before + 2)
    now = served()
    assert now != first
    assert now == ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())
    _still_serving(secure)  # over SASL_SSL, with the reloaded context
