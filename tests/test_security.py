"""Security pieces without a broker process: listener settings, principals from certificates,
SCRAM against an RFC 5802 client, PLAIN, the ACL decision and filters, failure delays, TLS
reloads, and the broker's answers through ``Broker.respond`` (the authorizer's per-API rules).
The same behaviour through real clients: tests/conformance/test_security.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from generated.create_acls_request import AclCreation, CreateAclsRequest
from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.errors import ErrorCode
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from kafscale.broker.config import BrokerConfig, load
from kafscale.broker.security.acl import (
    AclBinding,
    AclFilter,
    AclOperation,
    AclPermission,
    PatternType,
    ResourceType,
)
from kafscale.broker.security.authorizer import Authorizer
from kafscale.broker.security.listeners import parse_listeners, parse_protocol_map
from kafscale.broker.security.sasl import FailureDelays, normalize_host
from kafscale.broker.security.scram import (
    SaslFailure,
    ScramServer,
    make_credential,
    password_matches,
)
from kafscale.broker.security.tls import PrincipalMapper, TlsServer, TlsSettings, subject_dn
from tests.broker_harness import Client, run
from tests.security_ca import TestCA

# --- listeners and settings --------------------------------------------------------------------


def test_listeners_in_kafkas_syntax() -> None:
    protocols = parse_protocol_map("INTERNAL:SASL_SSL")
    listeners = parse_listeners(
        "PLAINTEXT://127.0.0.1:9092,INTERNAL://:9094,SSL://[::1]:9095", protocols
    )
    assert [(x.name, x.protocol, x.bind_host, x.port) for x in listeners] == [
        ("PLAINTEXT", "PLAINTEXT", "127.0.0.1", 9092),
        ("INTERNAL", "SASL_SSL", "0.0.0.0", 9094),
        ("SSL", "SSL", "::1", 9095),
    ]
    assert listeners[1].tls and listeners[1].sasl and not listeners[0].tls


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"listeners": "FOO://:1"}, "no security protocol"),
        ({"listeners": "PLAINTEXT://:1,PLAINTEXT://:2"}, "named twice"),
        ({"listeners": "PLAINTEXT://:1,SSL://:1"}, "used by two listeners"),
        ({"listeners": "PLAINTEXT://nope"}, "expected NAME://host:port"),
        ({"listeners": "PLAINTEXT://:1", "advertised.listeners": "SSL://h:1"}, "not in listeners"),
        (
            {"listeners": "PLAINTEXT://:1", "advertised.listeners": "PLAINTEXT://0.0.0.0:1"},
            "cannot connect",
        ),
        ({"listener.security.protocol.map": "X:TLS"}, "expected NAME:PROTOCOL"),
        ({"s3.sse": "rot13"}, "AES256 or aws:kms"),
    ],
)
def test_bad_listener_settings_are_refused(settings: dict[str, str], message: str) -> None:
    environ = {"KAFSCALE_" + k.upper().replace(".", "_"): v for k, v in settings.items()}
    with pytest.raises(ValueError, match=message):
        load(None, environ)


def test_listen_stays_a_plaintext_listener() -> None:
    config = BrokerConfig(listen_host="127.0.0.1", listen_port=9999)
    [listener] = config.listener_list()
    assert (listener.name, listener.protocol, listener.port) == ("PLAINTEXT", "PLAINTEXT", 9999)


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"ssl.keystore.location"):
        TlsSettings().check()
    with pytest.raises(ValueError, match=r"ssl.truststore.location"):
        TlsSettings(keystore_location="x", client_auth="required").check()
    with pytest.raises(ValueError, match=r"ssl.client.auth"):
        TlsSettings(keystore_location="x", client_auth="maybe").check()


# --- principals ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def test_subject_is_the_rfc2253_name_kafka_uses(ca: TestCA) -> None:
    pem = ca.issue("dn", "client, with comma")
    decoded = ssl._ssl._test_decode_cert(str(pem.cert))  # type: ignore[attr-defined]
    expected = x509.load_pem_x509_certificate(pem.cert.read_bytes()).subject.rfc4514_string()
    assert subject_dn(decoded) == expected == "CN=client\\, with comma,O=KafScale Test,C=US"


@pytest.mark.parametrize(
    ("rules", "dn", "principal"),
    [
        ("DEFAULT", "CN=alice,O=acme,C=US", "CN=alice,O=acme,C=US"),
        ("RULE:^CN=(.*?),O=(.*?),.*$/$1@$2/L,DEFAULT", "CN=Alice,O=ACME,C=US", "alice@acme"),
        ("RULE:^CN=(.*?),.*$/$1/U", "CN=bob,O=x", "BOB"),
        ("RULE:^CN=x,.*$/x/,DEFAULT", "CN=bob,O=x", "CN=bob,O=x"),
    ],
)
def test_principal_mapping_rules(rules: str, dn: str, principal: str) -> None:
    assert PrincipalMapper(rules).map(dn) == principal


def test_no_matching_rule_fails() -> None:
    with pytest.raises(ValueError, match=r"no ssl.principal.mapping.rules rule matches"):
        PrincipalMapper("RULE:^CN=x$/x/").map("CN=y")
    with pytest.raises(ValueError, match=r"invalid rule"):
        PrincipalMapper("RULE:broken")


def test_certificates_reload_without_a_restart(ca: TestCA) -> None:
    first = ca.issue("reload", "localhost", server=True)
    tls = TlsServer("SSL", TlsSettings(keystore_location=str(first.both)))
    before = tls.context
    assert tls.reload() and tls.context is not before and tls.reloads == 1
    first.both.write_text("not a certificate")
    assert not tls.reload() and tls.reloads == 1  # a bad file keeps the working context


def test_peer_addresses_as_java_writes_them() -> None:
    assert normalize_host("::1") == "0:0:0:0:0:0:0:1"
    assert normalize_host("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_host("10.0.0.1") == "10.0.0.1"


# --- SCRAM and PLAIN -----------------------------------------------------------------------------


def _client_final(
    mechanism: str, user: str, password: str, server: ScramServer, nonce: str = "fyko+d2lbbFgONRv"
) -> tuple[bytes, bytes]:
    """An RFC 5802 client's exchange with ``server``: (server final, expected server final)."""
    h = "sha256" if mechanism.endswith("256") else "sha512"
    first_bare = f"n={user},r={nonce}"
    server_first = server.step(f"n,,{first_bare}".encode()).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    assert attrs["r"].startswith(nonce)
    salted = hashlib.pbkdf2_hmac(h, password.encode(), base64.b64decode(attrs["s"]), 4096)
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{first_bare},{server_first},{without_proof}".encode()
    client_key = hmac.new(salted, b"Client Key", h).digest()
    signature = hmac.new(hashlib.new(h, client_key).digest(), auth, h).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    final = server.step(f"{without_proof},p={proof.decode()}".encode())
    server_key = hmac.new(salted, b"Server Key", h).digest()
    return final, b"v=" + base64.b64encode(hmac.new(server_key, auth, h).digest())


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_exchange(mechanism: str) -> None:
    users = {"a,b=c": make_credential(mechanism, "pencil")}
    server = ScramServer(mechanism, users.get)
    final, expected = _client_final(mechanism, "a=2Cb=3Dc", "pencil", server)
    assert final == expected and server.complete and server.username == "a,b=c"
    wrong = ScramServer(mechanism, users.get)
    with pytest.raises(SaslFailure, match=r"invalid credentials"):
        _client_final(mechanism, "a=2Cb=3Dc", "wrong", wrong)
    assert not wrong.complete


def test_plain_checks_the_scram_credentials() -> None:
    credential = make_credential("SCRAM-SHA-512", "secret")
    assert password_matches("SCRAM-SHA-512", credential, "secret")
    assert not password_matches("SCRAM-SHA-512", credential, "Secret")


def test_failure_delays_grow_per_address() -> None:
    delays = FailureDelays(100)
    assert [delays.failed("1.2.3.4") for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert delays.failed("5.6.7.8") == 0.1
    assert max(delays.failed("1.2.3.4") for _ in range(20)) == 5.0


# --- the ACL decision --------------------------------------------------------------------------


class _Store:
    def __init__(self, acls: list[AclBinding]) -> None:
        self._acls = acls
        self.version = 1

    def acls(self) -> list[AclBinding]:
        return self._acls


def _acl(
    name: str,
    op: AclOperation,
    perm: AclPermission = AclPermission.ALLOW,
    pattern: PatternType = PatternType.LITERAL,
    principal: str = "User:bob",
    host: str = "*",
) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, name, pattern, principal, host, op, perm)


def _authorizer(acls: list[AclBinding], super_users: str = "", allow: bool = False) -> Authorizer:
    return Authorizer(_Store(acls), super_users, allow)  # type: ignore[arg-type]


def _may(
    a: Authorizer, op: AclOperation, name: str, who: str = "User:bob", host: str = "1.1.1.1"
) -> bool:
    return a.authorize(who, host, op, ResourceType.TOPIC, name)


def test_acl_decisions() -> None:
    a = _authorizer(
        [
            _acl("orders", AclOperation.READ),
            _acl("logs-", AclOperation.WRITE, pattern=PatternType.PREFIXED),
            _acl("logs-secret", AclOperation.WRITE, AclPermission.DENY),
            _acl("*", AclOperation.DESCRIBE, principal="User:*"),
            _acl("pinned", AclOperation.ALL, host="2.2.2.2"),
            _acl("cfg", AclOperation.ALTER_CONFIGS),
            _acl("noread", AclOperation.ALL),
            _acl("noread", AclOperation.READ, AclPermission.DENY),
        ],
        super_users="User:root",
    )
    assert _may(a, AclOperation.READ, "orders")
    assert _may(a, AclOperation.DESCRIBE, "orders")  # READ implies DESCRIBE
    assert not _may(a, AclOperation.WRITE, "orders")
    assert _may(a, AclOperation.WRITE, "logs-app")  # prefixed
    assert not _may(a, AclOperation.WRITE, "logs-secret")  # DENY wins
    assert _may(a, AclOperation.DESCRIBE, "anything", who="User:eve")  # wildcard principal/name
    assert not _may(a, AclOperation.READ, "pinned")  # wrong host
    assert _may(a, AclOperation.READ, "pinned", host="2.2.2.2")
    assert _may(a, AclOperation.DESCRIBE_CONFIGS, "cfg")  # ALTER_CONFIGS implies it
    assert not _may(a, AclOperation.READ, "noread") and _may(a, AclOperation.DESCRIBE, "noread")
    assert _may(a, AclOperation.DELETE, "logs-secret", who="User:root")  # super user
    assert not _may(a, AclOperation.READ, "unrelated", who="User:eve")
    # allow.everyone.if.no.acl.found: only where no ACL touches the resource.
    open_ = _authorizer([_acl("guarded", AclOperation.READ)], allow=True)
    assert _may(open_, AclOperation.WRITE, "free", who="User:eve")
    assert not _may(open_, AclOperation.WRITE, "guarded", who="User:eve")


def test_authorize_any_topic_for_idempotent_producers() -> None:
    prefixed = _authorizer([_acl("p-", AclOperation.WRITE, pattern=PatternType.PREFIXED)])
    assert prefixed.authorize_any("User:bob", "h", AclOperation.WRITE, ResourceType.TOPIC)
    denied = _authorizer(
        [_acl("t", AclOperation.WRITE), _acl("*", AclOperation.WRITE, AclPermission.DENY)]
    )
    assert not denied.authorize_any("User:bob", "h", AclOperation.WRITE, ResourceType.TOPIC)
    assert not _authorizer([]).authorize_any(
        "User:bob", "h", AclOperation.WRITE, ResourceType.TOPIC
    )


def test_acl_filters() -> None:
    literal = _acl("orders", AclOperation.READ)
    prefixed = _acl("ord", AclOperation.READ, pattern=PatternType.PREFIXED)
    wildcard = _acl("*", AclOperation.READ)

    def f(name: str | None, pattern: PatternType, principal: str | None = None) -> list[AclBinding]:
        flt = AclFilter(
            ResourceType.ANY, name, pattern, principal, None, AclOperation.ANY, AclPermission.ANY
        )
        return [acl for acl in (literal, prefixed, wildcard) if flt.matches(acl)]

    assert f("orders", PatternType.MATCH) == [literal, prefixed, wildcard]
    assert f("orders", PatternType.ANY) == [literal]
    assert f("ord", PatternType.PREFIXED) == [prefixed]
    assert f(None, PatternType.LITERAL) == [literal, wildcard]
    assert f(None, PatternType.ANY, "User:eve") == []


# --- through Broker.respond: the rules the handlers run under -----------------------------------


def _creation(
    name: str,
    op: AclOperation,
    perm: AclPermission,
    pattern: PatternType,
    resource: ResourceType = ResourceType.TOPIC,
) -> AclCreation:
    return AclCreation(
        resource_type=resource,
        resource_name=name,
        resource_pattern_type=pattern,
        principal="User:ANONYMOUS",
        host="*",
        operation=op,
        permission_type=perm,
    )


def test_authorizer_rules_through_the_broker(tmp_path: Path) -> None:
    # The harness's requests have no connection: the principal is User:ANONYMOUS. With
    # allow.everyone.if.no.acl.found it may create ACLs (none guards the cluster).
    async def scenario(client: Client) -> None:
        broker = client.broker
        await broker.acls.start()
        allow, deny = AclPermission.ALLOW, AclPermission.DENY
        creations = [
            _creation("mine", AclOperation.ALL, allow, PatternType.LITERAL),
            _creation("theirs", AclOperation.ALL, deny, PatternType.LITERAL),
            _creation("abs", AclOperation.CREATE, deny, PatternType.PREFIXED),
            _creation("", AclOperation.ALL, allow, PatternType.LITERAL),
            # An ACL on the cluster: CREATE there is no longer everyone's.
            _creation(
                "kafka-cluster",
                AclOperation.ALTER,
                allow,
                PatternType.LITERAL,
                ResourceType.CLUSTER,
            ),
        ]
        created = await client.call(30, 3, CreateAclsRequest(creations=creations))
        assert [r.error_code for r in created.results] == [0, 0, 0, ErrorCode.INVALID_REQUEST, 0]
        topics = [
            CreatableTopic(name=n, num_partitions=1, replication_factor=1)
            for n in ("mine", "theirs")
        ]
        answer = await client.call(19, 7, CreateTopicsRequest(topics=topics))
        codes = {t.name: t.error_code for t in answer.topics}
        assert codes == {"mine": 0, "theirs": ErrorCode.TOPIC_AUTHORIZATION_FAILED}
        wanted = [MetadataRequestTopic(name=n) for n in ("mine", "theirs", "absent", "free")]
        meta: Any = await client.call(
            3, 12, MetadataRequest(topics=wanted, allow_auto_topic_creation=True)
        )
        assert [(t.name, t.error_code) for t in meta.topics] == [
            ("mine", 0),
            ("theirs", ErrorCode.TOPIC_AUTHORIZATION_FAILED),
            ("absent", ErrorCode.TOPIC_AUTHORIZATION_FAILED),  # no CREATE: not auto-created
            ("free", 0),  # no ACL touches it: everyone may
        ]
        assert broker.topics.get("absent") is None
        listing: Any = await client.call(3, 12, MetadataRequest(topics=None))
        assert sorted(t.name for t in listing.topics) == ["free", "mine"]
        # Bitfields: ALTER on the cluster (and DESCRIBE, which it implies); "mine": all 8.
        ops: Any = await client.call(
            3,
            10,
            MetadataRequest(
                topics=[MetadataRequestTopic(name="mine")],
                include_cluster_authorized_operations=True,
                include_topic_authorized_operations=True,
            ),
        )
        assert ops.cluster_authorized_operations == 1 << 7 | 1 << 8
        assert ops.topics[0].topic_authorized_operations == 3576
        await broker.acls.close()

    run(tmp_path, scenario, authorizer_class_name="on", allow_everyone_if_no_acl_found=True)


def test_every_served_api_has_an_authorization_rule() -> None:
    # An API without one is refused unless the principal may CLUSTER_ACTION the cluster:
    # a new API must say what Kafka checks for it (kafscale/broker/security/rules.py).
    from generated.registry import APIS, BROKER_APIS
    from kafscale.broker.security.rules import RULES, UNCHECKED

    missing = [APIS[k].name for k in BROKER_APIS if k not in RULES and k not in UNCHECKED]
    assert not missing, f"no authorization rule for {missing}"
