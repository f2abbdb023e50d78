"""What each API asks the authorizer, as Kafka's ``KafkaApis`` does, in one table.

:func:`authorized_handle` runs a request's handler under its API's rule, when an authorizer
is configured. A rule either refuses the whole request (the API's error response with the
code spread as Kafka spreads it: :func:`~kafscale.broker.error_response.error_response`), or
splits an array of the request (topics, groups, resources) into the items the principal may
act on, which go to the handler, and those it may not, which are answered with the code
(TOPIC_AUTHORIZATION_FAILED per topic, ...) beside the handler's answers; the handler never
sees a refused item, so nothing is created, read or leaked for it (authorization comes before
existence: a refused name answers the authorization error whether it exists or not).
Listings (Metadata of all topics, ListGroups, OffsetFetch of all topics) silently leave out
what the principal may not describe.

The ACL APIs and the SCRAM credential APIs check the cluster themselves (their handlers).
An API with no rule here (a new one) is refused unless the principal may CLUSTER_ACTION the
cluster (super users may): new APIs stay closed until someone writes their rule.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from generated.errors import ErrorCode
from generated.registry import APIS
from kafscale.broker.error_response import error_elements, error_response
from kafscale.broker.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from kafscale.broker.security.authorizer import SUPPORTED_OPERATIONS
from kafscale.protocol.message import Message

if TYPE_CHECKING:
    from kafscale.broker.handlers import Handler, RequestContext

Op = AclOperation
RT = ResourceType
TOPIC_DENIED = ErrorCode.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = ErrorCode.GROUP_AUTHORIZATION_FAILED
CLUSTER_DENIED = ErrorCode.CLUSTER_AUTHORIZATION_FAILED
TXN_DENIED = ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
INT_MIN = -(2**31)
UNCHECKED = frozenset({17, 18, 36, 29, 30, 31, 50, 51})
"""ApiVersions and the SASL APIs need nothing (as in Kafka); the ACL and SCRAM APIs check in
their handlers."""


class AuthorizationClose(Exception):
    """A refused acks=0 produce: Kafka closes the connection instead of answering."""


Check = Callable[["RequestContext", Any], int]
"""An item's error code (0: allowed)."""
Rule = Callable[["RequestContext", "Handler", Any], Awaitable[Message | None]]


def _whole(ctx: RequestContext, request: Any, code: int, message: str | None = None) -> Message:
    response_cls = APIS[ctx.header.request_api_key].response_type()
    return error_response(request, response_cls, ctx.version, code, message)  # type: ignore[arg-type]


async def _split(
    ctx: RequestContext,
    handler: Handler,
    request: Any,
    request_field: str,
    response_field: str,
    check: Check,
    message: str | None = None,
    fix: Callable[[Any], None] | None = None,
) -> Message | None:
    """Answer the refused items of ``request_field`` with their codes, the rest by the
    handler (not called when nothing is left); ``fix`` adjusts each refused answer."""
    items = list(getattr(request, request_field) or [])
    codes = [check(ctx, item) for item in items]
    if not any(codes):
        return await handler(ctx, request)
    response_cls = APIS[ctx.header.request_api_key].response_type()
    denied: list[Any] = []
    for code in sorted(set(codes) - {0}):
        chosen = [item for item, c in zip(items, codes, strict=True) if c == code]
        denied += error_elements(
            request, request_field, chosen, response_cls, response_field, ctx.version, code, message
        )
    if fix is not None:
        for element in denied:
            fix(element)
    allowed = [item for item, c in zip(items, codes, strict=True) if not c]
    if allowed:
        narrowed = copy.copy(request)
        setattr(narrowed, request_field, allowed)
        response = await handler(ctx, narrowed)
        if response is None:
            return None
    else:
        response = response_cls()
    setattr(response, response_field, list(getattr(response, response_field) or []) + denied)
    return response


def _topic(op: int) -> Check:
    def check(ctx: RequestContext, item: Any) -> int:
        name = getattr(item, "name", None) or getattr(item, "topic", None)
        if not name and getattr(item, "topic_id", None) is not None:  # by id (Fetch v13+)
            topic = ctx.broker.topics.by_id.get(item.topic_id)
            if topic is None:
                return 0  # unknown id: the handler answers UNKNOWN_TOPIC_ID (ids are not secret)
            name = topic.name
        if isinstance(item, str):
            name = item
        return 0 if ctx.authorize(op, RT.TOPIC, name or "") else TOPIC_DENIED

    return check


def _group(op: int) -> Check:
    def check(ctx: RequestContext, item: Any) -> int:
        name = item if isinstance(item, str) else item.group_id
        return 0 if ctx.authorize(op, RT.GROUP, name) else GROUP_DENIED

    return check


def _cluster(ctx: RequestContext, op: int) -> bool:
    return ctx.authorize(op, RT.CLUSTER, CLUSTER_NAME)


def topic_rule(request_field: str, response_field: str, op: int) -> Rule:
    async def rule(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
        return await _split(ctx, handler, request, request_field, response_field, _topic(op))

    return rule


def group_rule(op: int) -> Rule:
    """The whole request needs ``op`` on its group (JoinGroup, SyncGroup, ...)."""

    async def rule(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
        if not ctx.authorize(op, RT.GROUP, request.group_id):
            return _whole(ctx, request, GROUP_DENIED)
        return await handler(ctx, request)

    return rule


def cluster_rule(op: int) -> Rule:
    """The whole request needs ``op`` on the cluster."""

    async def rule(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
        if not _cluster(ctx, op):
            return _whole(ctx, request, CLUSTER_DENIED)
        return await handler(ctx, request)

    return rule


async def _produce(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    txn = request.transactional_id if ctx.version >= 3 else None
    if txn is not None and not ctx.authorize(Op.WRITE, RT.TRANSACTIONAL_ID, txn):
        if request.acks == 0:
            raise AuthorizationClose(f"producing as transactional id {txn!r} is not authorized")
        return _whole(ctx, request, TXN_DENIED)
    check = _topic(Op.WRITE)
    if request.acks == 0 and any(check(ctx, t) for t in request.topic_data):
        raise AuthorizationClose("an acks=0 produce to a topic it may not write")
    return await _split(ctx, handler, request, "topic_data", "responses", check)


def _empty_records(topic: Any) -> None:
    # A refused partition carries empty records, not null ones (Kafka's MemoryRecords.EMPTY:
    # librdkafka cannot parse a null record set).
    for p in topic.partitions:
        p.records = b""


async def _fetch(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    replica = request.replica_id if ctx.version < 15 else request.replica_state.replica_id
    check = _topic(Op.READ)
    if replica >= 0 and not _cluster(ctx, Op.CLUSTER_ACTION):
        check = lambda c, i: TOPIC_DENIED  # noqa: E731 - a follower: every topic refused
    return await _split(ctx, handler, request, "topics", "responses", check, fix=_empty_records)


async def _metadata(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    from generated.metadata_response import MetadataResponseTopic
    from kafscale.broker.internal_topics import is_internal

    broker = ctx.broker
    ops = ctx.version >= 8 and request.include_topic_authorized_operations
    if request.topics is None or (ctx.version == 0 and not request.topics):
        response: Any = await handler(ctx, request)
        listed = []
        for topic in response.topics:  # a listing leaves undescribable topics out
            if topic.name is None or ctx.authorize(Op.DESCRIBE, RT.TOPIC, topic.name):
                if ops and topic.name is not None:
                    topic.topic_authorized_operations = authorized_operations(
                        ctx, RT.TOPIC, topic.name
                    )
                listed.append(topic)
        response.topics = listed
        _cluster_operations(ctx, request, response)
        return response  # type: ignore[no-any-return]
    may_create = (
        request.allow_auto_topic_creation if ctx.version >= 4 else True
    ) and broker.config.auto_create_topics_enable
    keep = []
    denied: dict[str, Any] = {}
    for wanted in request.topics:
        name = wanted.name
        if name is not None:
            ok = ctx.authorize(Op.DESCRIBE, RT.TOPIC, name)
            if ok and may_create and broker.topics.get(name) is None:
                # Auto-creation needs CREATE too; without it the topic is not created.
                ok = _cluster(ctx, Op.CREATE) or ctx.authorize(Op.CREATE, RT.TOPIC, name)
            if not ok:
                denied[name] = MetadataResponseTopic(
                    error_code=TOPIC_DENIED,
                    name=name,
                    topic_id=uuid.UUID(int=0),
                    is_internal=is_internal(name),
                    partitions=[],
                )
                continue
        keep.append(wanted)
    narrowed = copy.copy(request)
    narrowed.topics = keep
    response = await handler(ctx, narrowed)
    by_name = {w.name for w in keep if w.name is not None}
    answered = []
    for topic in response.topics if keep else []:
        if topic.error_code == 0 and topic.name is not None:
            # Asked for by id (v12), or an ACL that changed since the check above.
            if not ctx.authorize(Op.DESCRIBE, RT.TOPIC, topic.name):
                topic = MetadataResponseTopic(
                    error_code=TOPIC_DENIED,
                    name=topic.name if topic.name in by_name else None,
                    topic_id=topic.topic_id if topic.name not in by_name else uuid.UUID(int=0),
                    is_internal=topic.is_internal,
                    partitions=[],
                )
            elif ops:
                topic.topic_authorized_operations = authorized_operations(ctx, RT.TOPIC, topic.name)
        answered.append(topic)
    order = {w.name: i for i, w in enumerate(request.topics) if w.name is not None}
    merged = answered + list(denied.values())
    merged.sort(key=lambda t: order.get(t.name, len(order)))
    response.topics = merged
    _cluster_operations(ctx, request, response)
    return response  # type: ignore[no-any-return]


def _cluster_operations(ctx: RequestContext, request: Any, response: Any) -> None:
    """Metadata v8-10 and DescribeCluster: the cluster's authorized-operations bitfield, when
    asked (else it stays INT_MIN, as Kafka leaves it)."""
    if getattr(request, "include_cluster_authorized_operations", False):
        name = CLUSTER_NAME
        response.cluster_authorized_operations = authorized_operations(ctx, RT.CLUSTER, name)


async def _describe_cluster(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    # No check (as on Kafka's brokers): only the bitfield, when asked.
    response = await handler(ctx, request)
    _cluster_operations(ctx, request, response)
    return response


def authorized_operations(ctx: RequestContext, resource_type: int, name: str) -> int:
    """Kafka's authorized-operations bitfield: bit n set when operation n is allowed."""
    bits = 0
    for op in SUPPORTED_OPERATIONS.get(resource_type, ()):
        if ctx.authorize(op, resource_type, name):
            bits |= 1 << op
    return bits


async def _offset_commit(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if not ctx.authorize(Op.READ, RT.GROUP, request.group_id):
        return _whole(ctx, request, GROUP_DENIED)
    return await _split(ctx, handler, request, "topics", "topics", _topic(Op.READ))


def _filter_fetched_topics(ctx: RequestContext, named: bool, topics: list[Any]) -> list[Any]:
    out = []
    for topic in topics:
        if ctx.authorize(Op.DESCRIBE, RT.TOPIC, topic.name):
            out.append(topic)
        elif named:
            for p in topic.partitions:
                p.error_code = TOPIC_DENIED
                p.committed_offset = -1
            out.append(topic)
    return out


async def _offset_fetch(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if ctx.version < 8:
        if not ctx.authorize(Op.DESCRIBE, RT.GROUP, request.group_id):
            return _whole(ctx, request, GROUP_DENIED)
        response: Any = await handler(ctx, request)
        response.topics = _filter_fetched_topics(ctx, request.topics is not None, response.topics)
        return response  # type: ignore[no-any-return]
    response = await _split(ctx, handler, request, "groups", "groups", _group(Op.DESCRIBE))
    named = {g.group_id: g.topics is not None for g in request.groups}
    for group in response.groups:
        if group.error_code != GROUP_DENIED:
            group.topics = _filter_fetched_topics(
                ctx, named.get(group.group_id, True), group.topics
            )
        else:
            group.topics = []
    return response  # type: ignore[no-any-return]


async def _find_coordinator(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    def check(c: RequestContext, key: str) -> int:
        if request.key_type == 1:
            return 0 if c.authorize(Op.DESCRIBE, RT.TRANSACTIONAL_ID, key) else TXN_DENIED
        if request.key_type == 0:
            return 0 if c.authorize(Op.DESCRIBE, RT.GROUP, key) else GROUP_DENIED
        return 0

    if ctx.version < 4:
        code = check(ctx, request.key)
        if code:
            response: Any = _whole(ctx, request, code)
            response.node_id, response.host, response.port = -1, "", -1
            return response  # type: ignore[no-any-return]
        return await handler(ctx, request)
    return await _split(ctx, handler, request, "coordinator_keys", "coordinators", check)


async def _list_groups(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    response: Any = await handler(ctx, request)
    if not _cluster(ctx, Op.DESCRIBE):
        response.groups = [
            g for g in response.groups if ctx.authorize(Op.DESCRIBE, RT.GROUP, g.group_id)
        ]
    return response  # type: ignore[no-any-return]


async def _describe_groups(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    response: Any = await _split(ctx, handler, request, "groups", "groups", _group(Op.DESCRIBE))
    for group in response.groups:
        if group.error_code == GROUP_DENIED:
            group.authorized_operations = INT_MIN
        elif ctx.version >= 3 and request.include_authorized_operations:
            group.authorized_operations = authorized_operations(ctx, RT.GROUP, group.group_id)
    return response  # type: ignore[no-any-return]


async def _create_topics(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if _cluster(ctx, Op.CREATE):
        return await handler(ctx, request)

    def check(c: RequestContext, item: Any) -> int:
        return 0 if c.authorize(Op.CREATE, RT.TOPIC, item.name) else TOPIC_DENIED

    return await _split(ctx, handler, request, "topics", "topics", check, "Authorization failed.")


async def _delete_topics(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if _cluster(ctx, Op.DELETE):
        return await handler(ctx, request)

    def check(c: RequestContext, item: Any) -> int:
        name = item if isinstance(item, str) else item.name
        if name is None:
            topic = c.broker.topics.by_id.get(item.topic_id)
            if topic is None:
                return 0
            name = topic.name
        describable = c.authorize(Op.DESCRIBE, RT.TOPIC, name)
        return 0 if describable and c.authorize(Op.DELETE, RT.TOPIC, name) else TOPIC_DENIED

    field = "topics" if ctx.version >= 6 else "topic_names"
    return await _split(ctx, handler, request, field, "responses", check)


async def _init_producer_id(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if request.transactional_id is not None:
        if not ctx.authorize(Op.WRITE, RT.TRANSACTIONAL_ID, request.transactional_id):
            return _whole(ctx, request, TXN_DENIED)
    elif not (_cluster(ctx, Op.IDEMPOTENT_WRITE) or ctx.authorize_any(Op.WRITE, RT.TOPIC)):
        return _whole(ctx, request, CLUSTER_DENIED)
    return await handler(ctx, request)


async def _offset_for_leader_epoch(
    ctx: RequestContext, handler: Handler, request: Any
) -> Message | None:
    if _cluster(ctx, Op.CLUSTER_ACTION):
        return await handler(ctx, request)
    return await _split(ctx, handler, request, "topics", "topics", _topic(Op.DESCRIBE))


def _config_rule(op: int, response_field: str) -> Rule:
    def check(ctx: RequestContext, item: Any) -> int:
        if item.resource_type == 2:
            return 0 if ctx.authorize(op, RT.TOPIC, item.resource_name) else TOPIC_DENIED
        if item.resource_type in (4, 8, 16):  # BROKER, BROKER_LOGGER, CLIENT_METRICS
            return 0 if _cluster(ctx, op) else CLUSTER_DENIED
        return 0

    async def rule(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
        return await _split(ctx, handler, request, "resources", response_field, check)

    return rule


async def _offset_delete(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if not ctx.authorize(Op.DELETE, RT.GROUP, request.group_id):
        return _whole(ctx, request, GROUP_DENIED)
    return await _split(ctx, handler, request, "topics", "topics", _topic(Op.READ))


async def _describe_log_dirs(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if _cluster(ctx, Op.DESCRIBE):
        return await handler(ctx, request)
    response: Any = APIS[35].response_type()()
    response.results = []
    if ctx.version >= 3:
        response.error_code = CLUSTER_DENIED
    return response  # type: ignore[no-any-return]


async def _add_partitions_to_txn(
    ctx: RequestContext, handler: Handler, request: Any
) -> Message | None:
    # Clients send v0-3 (one transaction); v4+ is broker-to-broker (CLUSTER_ACTION).
    if ctx.version >= 4:
        if not _cluster(ctx, Op.CLUSTER_ACTION):
            return _whole(ctx, request, CLUSTER_DENIED)
        return await handler(ctx, request)
    if not ctx.authorize(Op.WRITE, RT.TRANSACTIONAL_ID, request.v3_and_below_transactional_id):
        return _whole(ctx, request, TXN_DENIED)
    return await _split(
        ctx,
        handler,
        request,
        "v3_and_below_topics",
        "results_by_topic_v3_and_below",
        _topic(Op.WRITE),
    )


async def _add_offsets_to_txn(
    ctx: RequestContext, handler: Handler, request: Any
) -> Message | None:
    if not ctx.authorize(Op.WRITE, RT.TRANSACTIONAL_ID, request.transactional_id):
        return _whole(ctx, request, TXN_DENIED)
    if not ctx.authorize(Op.READ, RT.GROUP, request.group_id):
        return _whole(ctx, request, GROUP_DENIED)
    return await handler(ctx, request)


async def _end_txn(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if not ctx.authorize(Op.WRITE, RT.TRANSACTIONAL_ID, request.transactional_id):
        return _whole(ctx, request, TXN_DENIED)
    return await handler(ctx, request)


async def _txn_offset_commit(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if not ctx.authorize(Op.WRITE, RT.TRANSACTIONAL_ID, request.transactional_id):
        return _whole(ctx, request, TXN_DENIED)
    if not ctx.authorize(Op.READ, RT.GROUP, request.group_id):
        return _whole(ctx, request, GROUP_DENIED)
    return await _split(ctx, handler, request, "topics", "topics", _topic(Op.READ))


async def _describe_transactions(
    ctx: RequestContext, handler: Handler, request: Any
) -> Message | None:
    def check(c: RequestContext, txn_id: str) -> int:
        return 0 if c.authorize(Op.DESCRIBE, RT.TRANSACTIONAL_ID, txn_id) else TXN_DENIED

    return await _split(ctx, handler, request, "transactional_ids", "transaction_states", check)


async def _list_transactions(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    response: Any = await handler(ctx, request)
    response.transaction_states = [
        t
        for t in response.transaction_states
        if ctx.authorize(Op.DESCRIBE, RT.TRANSACTIONAL_ID, t.transactional_id)
    ]
    return response  # type: ignore[no-any-return]


async def _unlisted(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    if not _cluster(ctx, Op.CLUSTER_ACTION):
        return _whole(ctx, request, CLUSTER_DENIED)
    return await handler(ctx, request)


RULES: dict[int, Rule] = {
    0: _produce,
    1: _fetch,
    2: topic_rule("topics", "topics", Op.DESCRIBE),
    3: _metadata,
    8: _offset_commit,
    9: _offset_fetch,
    10: _find_coordinator,
    11: group_rule(Op.READ),
    12: group_rule(Op.READ),
    13: group_rule(Op.READ),
    14: group_rule(Op.READ),
    15: _describe_groups,
    16: _list_groups,
    19: _create_topics,
    20: _delete_topics,
    21: topic_rule("topics", "topics", Op.DELETE),
    22: _init_producer_id,
    23: _offset_for_leader_epoch,
    32: _config_rule(Op.DESCRIBE_CONFIGS, "results"),
    33: _config_rule(Op.ALTER_CONFIGS, "responses"),
    44: _config_rule(Op.ALTER_CONFIGS, "responses"),
    37: topic_rule("topics", "results", Op.ALTER),
    42: lambda ctx, handler, request: _split(
        ctx, handler, request, "groups_names", "results", _group(Op.DELETE)
    ),
    47: _offset_delete,
    61: topic_rule("topics", "topics", Op.READ),
    35: _describe_log_dirs,
    43: cluster_rule(Op.ALTER),
    45: cluster_rule(Op.ALTER),
    46: cluster_rule(Op.DESCRIBE),
    34: cluster_rule(Op.ALTER),
    24: _add_partitions_to_txn,
    25: _add_offsets_to_txn,
    26: _end_txn,
    28: _txn_offset_commit,
    65: _describe_transactions,
    66: _list_transactions,
    60: _describe_cluster,
}


async def authorized_handle(ctx: RequestContext, handler: Handler, request: Any) -> Message | None:
    """``handler``'s answer to ``request`` under its API's rule (see the module docstring)."""
    key = ctx.header.request_api_key
    if key in UNCHECKED:
        return await handler(ctx, request)
    return await RULES.get(key, _unlisted)(ctx, handler, request)
