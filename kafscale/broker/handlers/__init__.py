"""One module per Kafka API. Each has a header comment with the versions served and the
behaviour notes that matter, and an ``async def handle(ctx, request) -> response | None``.

The served version ranges live in ``protocol_specs/broker-apis.yaml`` (generated into
``generated.registry.BROKER_APIS``); this table only maps API keys to handler functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from generated.errors import ErrorCode
from generated.request_header import RequestHeader
from kafscale.broker.security.sasl import ANONYMOUS, Session
from kafscale.protocol.message import Message

if TYPE_CHECKING:
    from kafscale.broker.log import PartitionLog
    from kafscale.broker.server import Broker


@dataclass
class RequestContext:
    broker: Broker
    header: RequestHeader
    version: int
    client_host: str = ""
    """The client's address (JoinGroup members report it; Kafka shows "/" + the IP)."""
    session: Session | None = None
    """The connection's security state (None: a request without a connection, in tests)."""

    @property
    def principal(self) -> str:
        """``User:name`` of the connection (``User:ANONYMOUS`` when unauthenticated)."""
        return self.session.principal if self.session is not None else ANONYMOUS

    @property
    def listener_name(self) -> str:
        """The listener the request came through (answers advertise its addresses)."""
        if self.session is not None:
            return self.session.listener.name
        return self.broker.listeners[0].name

    def authorize(self, operation: int, resource_type: int, name: str) -> bool:
        """Whether the connection's principal may perform ``operation`` on the resource
        (always, when no authorizer is configured)."""
        authorizer = self.broker.authorizer
        if authorizer is None:
            return True
        host = self.session.host if self.session is not None else self.client_host
        return authorizer.authorize(self.principal, host, operation, resource_type, name)

    def authorize_any(self, operation: int, resource_type: int) -> bool:
        """Whether ``operation`` is allowed on some resource of the type (Kafka's
        authorizeByResourceType)."""
        authorizer = self.broker.authorizer
        if authorizer is None:
            return True
        host = self.session.host if self.session is not None else self.client_host
        return authorizer.authorize_any(self.principal, host, operation, resource_type)


Handler = Callable[[RequestContext, Any], Awaitable[Message | None]]


async def owned_log(
    ctx: RequestContext, topic: str, partition: int, current_leader_epoch: int | None = None
) -> PartitionLog | int:
    """The partition's log, or the error code to answer for it: UNKNOWN_TOPIC_OR_PARTITION
    (3); NOT_LEADER_OR_FOLLOWER (6) when another broker owns it; with ``current_leader_epoch``
    (the request's CurrentLeaderEpoch, when it sent one) FENCED_LEADER_EPOCH (74) or
    UNKNOWN_LEADER_EPOCH (75) when it is not the partition's."""
    from kafscale.broker.log import FlushError

    known = ctx.broker.topics.get(topic)
    if known is None or not 0 <= partition < known.partitions:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    try:
        plog = await ctx.broker.logs.get(topic, partition)
    except FlushError as e:
        return e.code
    if current_leader_epoch is not None and (error := plog.epoch_error(current_leader_epoch)):
        return error
    return plog


async def coordinator_error(ctx: RequestContext, group_id: str, *, claim: bool = False) -> int:
    """0 when this broker coordinates ``group_id`` (with ``claim``, for requests that create
    group state, taking it when it should and nobody does), else NOT_COORDINATOR (16): the
    client asks FindCoordinator again."""
    from kafscale.broker.cluster import NotCoordinator

    try:
        await ctx.broker.cluster.hold_group(group_id, claim=claim)
    except NotCoordinator:
        return ErrorCode.NOT_COORDINATOR
    return 0


from kafscale.broker.handlers import (  # noqa: E402 - the modules import RequestContext
    add_offsets_to_txn,
    add_partitions_to_txn,
    alter_configs,
    alter_partition_reassignments,
    alter_replica_log_dirs,
    alter_user_scram_credentials,
    api_versions,
    create_acls,
    create_partitions,
    create_topics,
    delete_acls,
    delete_groups,
    delete_records,
    delete_topics,
    describe_acls,
    describe_cluster,
    describe_configs,
    describe_groups,
    describe_log_dirs,
    describe_producers,
    describe_transactions,
    describe_user_scram_credentials,
    elect_leaders,
    end_txn,
    fetch,
    find_coordinator,
    heartbeat,
    incremental_alter_configs,
    init_producer_id,
    join_group,
    leave_group,
    list_groups,
    list_offsets,
    list_partition_reassignments,
    list_transactions,
    metadata,
    offset_commit,
    offset_delete,
    offset_fetch,
    offset_for_leader_epoch,
    produce,
    sasl_authenticate,
    sasl_handshake,
    sync_group,
    txn_offset_commit,
)

HANDLERS: dict[int, Handler] = {
    18: api_versions.handle,
    3: metadata.handle,
    0: produce.handle,
    1: fetch.handle,
    2: list_offsets.handle,
    23: offset_for_leader_epoch.handle,
    19: create_topics.handle,
    20: delete_topics.handle,
    21: delete_records.handle,
    32: describe_configs.handle,
    33: alter_configs.handle,
    37: create_partitions.handle,
    44: incremental_alter_configs.handle,
    60: describe_cluster.handle,
    10: find_coordinator.handle,
    8: offset_commit.handle,
    9: offset_fetch.handle,
    47: offset_delete.handle,
    16: list_groups.handle,
    15: describe_groups.handle,
    42: delete_groups.handle,
    11: join_group.handle,
    14: sync_group.handle,
    12: heartbeat.handle,
    13: leave_group.handle,
    22: init_producer_id.handle,
    61: describe_producers.handle,
    35: describe_log_dirs.handle,
    43: elect_leaders.handle,
    46: list_partition_reassignments.handle,
    45: alter_partition_reassignments.handle,
    34: alter_replica_log_dirs.handle,
    24: add_partitions_to_txn.handle,
    25: add_offsets_to_txn.handle,
    26: end_txn.handle,
    28: txn_offset_commit.handle,
    65: describe_transactions.handle,
    66: list_transactions.handle,
    17: sasl_handshake.handle,
    36: sasl_authenticate.handle,
    29: describe_acls.handle,
    30: create_acls.handle,
    31: delete_acls.handle,
    50: describe_user_scram_credentials.handle,
    51: alter_user_scram_credentials.handle,
}
