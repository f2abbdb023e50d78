# OffsetFetch (key 9), versions 0-9.
# - Reads the committed offsets kept by OffsetCommit (kafscale/broker/offsets.py). A partition
#   with no commit answers offset -1, metadata "" and leader epoch -1 (never 0), error 0, as
#   Kafka does; so does a partition of an unknown topic. Topics null (v2+) returns every
#   committed partition of the group. Commits made for a since-deleted topic are not reported.
# - v0-7: one group (GroupId/Topics); v8+: several groups per request (Groups), each answered
#   on its own. A group another broker coordinates: NOT_COORDINATOR (16) — v8+ for that
#   group, v2-7 as the top-level ErrorCode, v0-1 for every partition asked (those versions
#   have no top-level error). An empty group id is accepted, as Kafka does for OffsetFetch.
# - RequireStable (v7+): a partition with offsets a transaction staged (TxnOffsetCommit) and
#   has not decided yet answers UNSTABLE_OFFSET_COMMIT (88, retriable) with offset -1, as
#   Kafka does (read_committed consumers ask so); without it the last committed offset.
# - v9 MemberId/MemberEpoch are not checked (Kafka 3.9's classic coordinator ignores them; they
#   matter for KIP-848 groups, not served).
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from generated.errors import ErrorCode
from generated.offset_fetch_request import OffsetFetchRequest
from generated.offset_fetch_response import (
    OffsetFetchResponse,
    OffsetFetchResponseGroup,
    OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
)
from kafscale.broker.handlers import RequestContext, coordinator_error
from kafscale.broker.offsets import CommittedOffset, live

Wanted = Sequence[tuple[str, Sequence[int]]]
Found = list[tuple[str, list[tuple[int, CommittedOffset | None]]]]


async def handle(ctx: RequestContext, request: OffsetFetchRequest) -> OffsetFetchResponse:
    if ctx.version >= 8:
        groups = []
        for group in request.groups:
            wanted = (
                None
                if group.topics is None
                else [(t.name, t.partition_indexes) for t in group.topics]
            )
            if error := await coordinator_error(ctx, group.group_id):
                groups.append(OffsetFetchResponseGroup(group_id=group.group_id, error_code=error))
                continue
            found = await _fetch(ctx, group.group_id, wanted)
            unstable = await _unstable(ctx, group.group_id, request.require_stable)
            topics = _topics(
                found, OffsetFetchResponseTopics, OffsetFetchResponsePartitions, unstable
            )
            groups.append(OffsetFetchResponseGroup(group_id=group.group_id, topics=topics))
        return OffsetFetchResponse(throttle_time_ms=0, groups=groups)
    wanted = (
        None if request.topics is None else [(t.name, t.partition_indexes) for t in request.topics]
    )
    if error := await coordinator_error(ctx, request.group_id):
        if ctx.version >= 2:
            return OffsetFetchResponse(throttle_time_ms=0, error_code=error, topics=[])
        refused = [
            OffsetFetchResponseTopic(
                name=name,
                partitions=[
                    OffsetFetchResponsePartition(
                        partition_index=p, committed_offset=-1, metadata="", error_code=error
                    )
                    for p in parts
                ],
            )
            for name, parts in wanted or []
        ]
        return OffsetFetchResponse(throttle_time_ms=0, topics=refused)
    found = await _fetch(ctx, request.group_id, wanted)
    unstable = await _unstable(ctx, request.group_id, ctx.version >= 7 and request.require_stable)
    return OffsetFetchResponse(
        throttle_time_ms=0,
        topics=_topics(found, OffsetFetchResponseTopic, OffsetFetchResponsePartition, unstable),
    )


async def _unstable(ctx: RequestContext, group: str, require_stable: bool) -> set[tuple[str, int]]:
    """The partitions whose offsets a transaction has staged (with RequireStable)."""
    if not require_stable:
        return set()
    return await ctx.broker.transactions.pending_groups(group)


T = TypeVar("T")


def _topics(
    found: Found,
    topic: Callable[..., T],
    partition: Callable[..., Any],
    unstable: set[tuple[str, int]] | None = None,
) -> list[T]:
    """The response topics, in the v0-7 (one group) or v8+ (per group) classes, which have the
    same fields under different names; ``unstable`` partitions answer UNSTABLE_OFFSET_COMMIT."""
    pending = unstable or set()
    return [
        topic(
            name=name,
            partitions=[
                partition(
                    partition_index=p,
                    committed_offset=-1 if (name, p) in pending else c.offset if c else -1,
                    committed_leader_epoch=c.leader_epoch if c else -1,
                    metadata=c.metadata if c else "",
                    error_code=ErrorCode.UNSTABLE_OFFSET_COMMIT if (name, p) in pending else 0,
                )
                for p, c in parts
            ],
        )
        for name, parts in found
    ]


async def _fetch(ctx: RequestContext, group: str, wanted: Wanted | None) -> Found:
    """The commits of the wanted partitions (None where there is none), in request order; or
    with ``wanted`` None, every live commit of the group, by topic and partition."""
    broker = ctx.broker
    offsets = broker.offsets
    stored = await offsets.fetch(group, None if wanted is None else [t for t, _ in wanted])
    current = {tp: c for tp, c in stored.items() if live(broker.topics, tp, c)}
    if wanted is not None:
        return [(t, [(p, current.get((t, p))) for p in parts]) for t, parts in wanted]
    found: Found = []
    for (topic, p), committed in current.items():
        if not found or found[-1][0] != topic:
            found.append((topic, []))
        found[-1][1].append((p, committed))
    return found
