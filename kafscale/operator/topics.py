"""A ``KafscaleTopic`` made true through the Kafka admin protocol.

Synchronous (:class:`kafscale.admin.client.Client`, the admin commands' client): the kopf
handlers run :func:`reconcile` and :func:`delete` in a thread. Against the cluster's client
Service, like any other client:

1. Metadata: does the topic exist, with how many partitions?
2. CreateTopics with the spec's partitions and configs, or CreatePartitions to grow it; fewer
   partitions than it has is refused (:class:`TopicProblem` ``NotSupported``): Kafka cannot
   remove partitions.
3. DescribeConfigs, then one IncrementalAlterConfigs with what differs: SET for every config of
   the spec whose value differs, DELETE (back to the default) for every dynamic config the spec
   does not name. The spec is the truth: a config changed by hand is changed back.
4. The status: each partition's leader (Metadata), log start and log end offset (ListOffsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from generated.errors import ErrorCode
from kafscale.admin.client import EARLIEST, LATEST, Client
from kafscale.admin.errors import AdminError, KafkaError, error_name

SET, DELETE = 0, 1
"""IncrementalAlterConfigs operations."""
DYNAMIC_TOPIC_CONFIG = 1
"""DescribeConfigs source of a config set on the topic itself."""
CONFIG_ERRORS = frozenset(
    {ErrorCode.INVALID_CONFIG, ErrorCode.INVALID_REQUEST, ErrorCode.POLICY_VIOLATION}
)
"""Answers that say the spec's configs are wrong (no retry will help)."""


class TopicProblem(Exception):
    """The spec cannot be made true as it is; ``reason`` is the condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class TopicState:
    """What :func:`reconcile` found and did."""

    topic_id: str = ""
    partitions: list[dict[str, int]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    """What changed, for the events ("created with 3 partitions", "set retention.ms=...")."""


def desired_configs(spec: dict[str, Any]) -> dict[str, str]:
    """The topic configs a spec asks for (``config``, plus ``retentionMs``/``retentionBytes``)."""
    configs = {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in (spec.get("config") or {}).items()
    }
    if spec.get("retentionMs") is not None:
        configs["retention.ms"] = str(spec["retentionMs"])
    if spec.get("retentionBytes") is not None:
        configs["retention.bytes"] = str(spec["retentionBytes"])
    return configs


def _config_problem(error: KafkaError) -> TopicProblem:
    return TopicProblem("InvalidConfig", str(error))


def reconcile(bootstrap: str, name: str, spec: dict[str, Any]) -> TopicState:
    """Create, grow and configure topic ``name`` as ``spec`` says, and read its state.

    Raises :class:`TopicProblem` for a spec that cannot be made true, and
    :class:`~kafscale.admin.errors.AdminError` when the cluster cannot be reached or answers an
    error worth trying again later."""
    state = TopicState()
    wanted = int(spec["partitions"])
    configs = desired_configs(spec)
    with Client(bootstrap, client_id="kafscale-operator", attempts=3) as client:
        info = client.metadata([name]).topics.get(name)
        exists = info is not None and info.error_code == 0
        if not exists:
            results = client.create_topics([name], wanted, -1, sorted(configs.items()))
            code, message, _ = results.get(name, (ErrorCode.UNKNOWN_SERVER_ERROR, None, 0))
            if code in CONFIG_ERRORS:
                raise TopicProblem("InvalidConfig", f"CreateTopics: {error_name(code)}: {message}")
            if code == ErrorCode.INVALID_PARTITIONS:
                raise TopicProblem("InvalidPartitions", f"CreateTopics: {message}")
            if code not in (0, ErrorCode.TOPIC_ALREADY_EXISTS):
                raise KafkaError(code, f"topic {name!r}", message)
            if code == 0:
                state.actions.append(f"created with {wanted} partitions")
            info = client.topic(name)
        else:
            assert info is not None
            have = len(info.partitions)
            if wanted < have:
                raise TopicProblem(
                    "NotSupported",
                    f"partitions cannot be decreased: the topic has {have}, the spec asks for"
                    f" {wanted}",
                )
            if wanted > have:
                code, message = client.create_partitions({name: wanted}).get(
                    name, (ErrorCode.UNKNOWN_SERVER_ERROR, None)
                )
                if code == ErrorCode.INVALID_PARTITIONS:
                    raise TopicProblem("InvalidPartitions", f"CreatePartitions: {message}")
                if code:
                    raise KafkaError(code, f"topic {name!r}", message)
                state.actions.append(f"grown from {have} to {wanted} partitions")
                info = client.topic(name)
        _configure(client, name, configs, state)
        state.topic_id = str(info.topic_id)
        tps = {(name, p): 0 for p in sorted(info.partitions)}
        starts = client.list_offsets(dict.fromkeys(tps, EARLIEST))
        ends = client.list_offsets(dict.fromkeys(tps, LATEST))
        state.partitions = [
            {
                "id": p,
                "leader": info.partitions[p].leader,
                "logStartOffset": starts[name, p].offset,
                "logEndOffset": ends[name, p].offset,
            }
            for p in sorted(info.partitions)
        ]
    return state


def _configure(client: Client, name: str, configs: dict[str, str], state: TopicState) -> None:
    current = {
        c.name: c.value
        for c in client.describe_topic_configs(name)
        if c.source == DYNAMIC_TOPIC_CONFIG
    }
    ops: list[tuple[str, int, str | None]] = [
        (k, SET, v) for k, v in sorted(configs.items()) if current.get(k) != v
    ]
    ops += [(k, DELETE, None) for k in sorted(current) if k not in configs]
    if not ops:
        return
    try:
        client.alter_topic_configs(name, ops, validate_only=False)
    except KafkaError as error:
        if error.code in CONFIG_ERRORS:
            raise _config_problem(error) from None
        raise
    state.actions += [f"set {k}={v}" if op == SET else f"reset {k}" for k, op, v in ops]


def delete(bootstrap: str, name: str) -> bool:
    """DeleteTopics; False when there was no such topic."""
    with Client(bootstrap, client_id="kafscale-operator", attempts=3) as client:
        code, message = client.delete_topics([name]).get(
            name, (ErrorCode.UNKNOWN_SERVER_ERROR, None)
        )
    if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
        return False
    if code:
        raise KafkaError(code, f"topic {name!r}", message)
    return True


def partitions_by_leader(bootstrap: str) -> tuple[dict[int, int], int, int, int]:
    """(partitions led per broker id, brokers in the metadata, topics, partitions with no
    leader) over every topic, from one Metadata request."""
    with Client(bootstrap, client_id="kafscale-operator", attempts=1) as client:
        cluster = client.metadata(None)
    led: dict[int, int] = dict.fromkeys(cluster.brokers, 0)
    leaderless = 0
    for topic in cluster.topics.values():
        for p in topic.partitions.values():
            if p.leader >= 0:
                led[p.leader] = led.get(p.leader, 0) + 1
            else:
                leaderless += 1
    return led, len(cluster.brokers), len(cluster.topics), leaderless


__all__ = [
    "AdminError",
    "TopicProblem",
    "TopicState",
    "delete",
    "partitions_by_leader",
    "reconcile",
]
