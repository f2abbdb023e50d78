"""Security on a 3-broker cluster (etcd, one S3 bucket): a SCRAM user and an ACL made through
one broker apply on the others within a second, because both live in the metadata store
and every broker watches it.

Each broker has a PLAINTEXT listener (``User:ANONYMOUS``; ``allow.everyone.if.no.acl.found``
lets it administer a cluster without ACLs) and a SASL_PLAINTEXT one with SCRAM-SHA-256.
The user is created with AlterUserScramCredentials on broker 0 and logs in on brokers 1 and
2; a DENY ACL made on broker 0 turns each broker's Metadata answer for that topic into
TOPIC_AUTHORIZATION_FAILED.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from generated.alter_user_scram_credentials_request import (
    AlterUserScramCredentialsRequest,
    ScramCredentialUpsertion,
)
from generated.create_acls_request import AclCreation, CreateAclsRequest
from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.errors import ErrorCode
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from kafscale.broker.security.acl import AclOperation, AclPermission, PatternType, ResourceType
from kafscale.broker.security.scram import salted_password
from tests.conformance.test_security import Raw
from tests.conformance.three_brokers import GROUP_ARGS, LEASE_TTL_MS
from tests.etcdserver import require_etcd
from tests.faults.cluster import Cluster, free_ports
from tests.s3server import shared_or_skip

APPLIED_WITHIN_S = 1.0


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, list[int]]]:
    root = tmp_path_factory.mktemp("security-cluster")
    with require_etcd(1) as etcd:
        s3 = shared_or_skip()
        cluster = Cluster(
            root,
            etcd,
            s3.endpoint_url,
            s3.endpoint_url,
            s3.create_bucket(),
            lease_ttl_ms=LEASE_TTL_MS,
        )
        sasl_ports = free_ports(len(cluster.brokers))
        for broker, sasl in zip(cluster.brokers, sasl_ports, strict=True):
            broker.args += [
                *GROUP_ARGS,
                f"--listeners=PLAINTEXT://127.0.0.1:{broker.port},SASL_PLAINTEXT://127.0.0.1:{sasl}",
                "--sasl.enabled.mechanisms=SCRAM-SHA-256",
                "--authorizer.class.name=kafscale",
                "--allow.everyone.if.no.acl.found=true",
            ]
        try:
            cluster.start()
            yield cluster, sasl_ports
            statuses = cluster.stop()
            assert statuses == dict.fromkeys(statuses, 0), cluster.logs_text()
            assert not cluster.tracebacks(), cluster.tracebacks()[0].text
        finally:
            cluster.kill_all()


def _call(port: int, name: str, version: int, body: object) -> Any:
    conn = Raw(port)
    try:
        return conn.call(name, version, body)
    finally:
        conn.close()


def test_a_user_and_an_acl_made_on_one_broker_apply_on_the_others(
    secure_cluster: tuple[Cluster, list[int]],
) -> None:
    cluster, sasl_ports = secure_cluster
    first = cluster.brokers[0].port
    salt = b"0123456789abcdef"
    upsert = ScramCredentialUpsertion(
        name="carol",
        mechanism=1,  # SCRAM-SHA-256
        iterations=4096,
        salt=salt,
        salted_password=salted_password("SCRAM-SHA-256", b"carol-secret", salt, 4096),
    )
    altered = _call(
        first,
        "AlterUserScramCredentials",
        0,
        AlterUserScramCredentialsRequest(deletions=[], upsertions=[upsert]),
    )
    assert [r.error_code for r in altered.results] == [0]
    made = time.monotonic()
    for broker, sasl in zip(cluster.brokers[1:], sasl_ports[1:], strict=True):
        while True:
            conn = Raw(sasl)
            try:
                final = conn.scram("carol", "carol-secret")
            except AssertionError as refused:
                # Until the user reaches this broker its first SCRAM message is refused
                # (an unknown user), before any final message.
                final = refused
            finally:
                conn.close()
            if not isinstance(final, AssertionError) and final.error_code == 0:
                break
            assert time.monotonic() - made < APPLIED_WITHIN_S, f"broker {broker.id}: {final}"
    topic = CreatableTopic(name="locked", num_partitions=1, replication_factor=1)
    created = _call(first, "CreateTopics", 5, CreateTopicsRequest(topics=[topic]))
    assert created.topics[0].error_code == 0
    deny = AclCreation(
        resource_type=ResourceType.TOPIC,
        resource_name="locked",
        resource_pattern_type=PatternType.LITERAL,
        principal="User:ANONYMOUS",
        host="*",
        operation=AclOperation.ALL,
        permission_type=AclPermission.DENY,
    )
    answer = _call(first, "CreateAcls", 2, CreateAclsRequest(creations=[deny]))
    assert [r.error_code for r in answer.results] == [0]
    made = time.monotonic()
    wanted = MetadataRequest(topics=[MetadataRequestTopic(name="locked")])
    for broker in cluster.brokers:
        while True:
            meta = _call(broker.port, "Metadata", 9, wanted)
            if meta.topics[0].error_code == ErrorCode.TOPIC_AUTHORIZATION_FAILED:
                break
            assert time.monotonic() - made < APPLIED_WITHIN_S, f"broker {broker.id}: {meta}"
            time.sleep(0.02)
