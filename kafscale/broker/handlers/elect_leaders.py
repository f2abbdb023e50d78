# ElectLeaders (key 43), versions 0-2 (all of Kafka 3.9's).
# - Each partition has one replica, its leader: the broker owning it (kafscale/broker/cluster.py),
#   or, while nobody owns it, the broker that will take it on its next request (as Metadata
#   names it). The *preferred* leader is the broker our placement names (rendezvous hashing over
#   the live brokers), which Kafka's preferred replica stands for.
# - PREFERRED (0; v0 always): the leader is the preferred one -> ELECTION_NOT_NEEDED (84). This
#   broker owns a partition placement gives another broker (a broker joined moments ago) -> it
#   hands the partition over now (what its next ownership round would do) -> no error. Another
#   broker owns it -> PREFERRED_LEADER_NOT_AVAILABLE (80, retriable: that broker hands it over
#   at its next ownership round, within a second).
# - UNCLEAN (1): Kafka elects a leader only where a partition has none; ours always has one
#   while any broker is live (its owner, or the broker that takes it on the next request), and
#   the object store holds every committed record, so no election can lose data or is needed:
#   ELECTION_NOT_NEEDED (84). (No live broker to name: ELIGIBLE_LEADERS_NOT_AVAILABLE, 83.)
# - Unknown topic or partition -> UNKNOWN_TOPIC_OR_PARTITION (3), Kafka's messages. An unknown
#   election type -> INVALID_REQUEST (42) at the top level and for every partition, as Kafka.
# - TopicPartitions null = every partition of every topic; as Kafka, those that need no
#   election are then left out (each topic is listed, perhaps with no partitions).
from __future__ import annotations

import logging

from generated.elect_leaders_request import ElectLeadersRequest
from generated.elect_leaders_response import (
    ElectLeadersResponse,
    PartitionResult,
    ReplicaElectionResult,
)
from generated.errors import ErrorCode
from kafscale.broker.cluster import Cluster
from kafscale.broker.handlers import RequestContext

log = logging.getLogger("kafscale.broker")

PREFERRED, UNCLEAN = 0, 1


async def handle(ctx: RequestContext, request: ElectLeadersRequest) -> ElectLeadersResponse:
    election = request.election_type if ctx.version >= 1 else PREFERRED
    if election not in (PREFERRED, UNCLEAN):
        why = f"Unknown election type {election}"
        return ElectLeadersResponse(
            throttle_time_ms=0,
            error_code=ErrorCode.INVALID_REQUEST,
            replica_election_results=[
                ReplicaElectionResult(
                    topic=t.topic,
                    partition_result=[
                        PartitionResult(
                            partition_id=p, error_code=ErrorCode.INVALID_REQUEST, error_message=why
                        )
                        for p in t.partitions
                    ],
                )
                for t in request.topic_partitions or []
            ],
        )
    results: list[ReplicaElectionResult] = []
    if request.topic_partitions is None:
        for topic in sorted(ctx.broker.topics.by_name.values(), key=lambda t: t.name):
            result = ReplicaElectionResult(topic=topic.name)
            results.append(result)
            for index in range(topic.partitions):
                code, message = await _elect(ctx, topic.name, index, election)
                if code != ErrorCode.ELECTION_NOT_NEEDED:
                    result.partition_result.append(
                        PartitionResult(partition_id=index, error_code=code, error_message=message)
                    )
    else:
        for wanted in request.topic_partitions:
            result = ReplicaElectionResult(topic=wanted.topic)
            results.append(result)
            for index in wanted.partitions:
                code, message = await _elect(ctx, wanted.topic, index, election)
                result.partition_result.append(
                    PartitionResult(partition_id=index, error_code=code, error_message=message)
                )
    return ElectLeadersResponse(throttle_time_ms=0, error_code=0, replica_election_results=results)


def leader_of(cluster: Cluster, topic: str, index: int, partitions: int) -> int | None:
    """The partition's leader (its one replica) as Metadata names it: its owner, else the
    broker that takes it on its next request; None without a live broker."""
    owner = cluster.owner(topic, index)
    return owner[0] if owner is not None else cluster.desired_owner(topic, index, partitions)


async def _elect(
    ctx: RequestContext, topic: str, index: int, election: int
) -> tuple[int, str | None]:
    """(error code, message) for one partition."""
    broker = ctx.broker
    known = broker.topics.get(topic)
    if known is None:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"No such topic as {topic}"
    if not 0 <= index < known.partitions:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"No such partition as {topic}-{index}"
    cluster = broker.cluster
    preferred = cluster.desired_owner(topic, index, known.partitions)
    leader = leader_of(cluster, topic, index, known.partitions)
    if election == UNCLEAN:
        if leader is None:
            return ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE, "no live broker to lead it"
        return ErrorCode.ELECTION_NOT_NEEDED, "Leader election not needed for topic partition."
    if leader is not None and leader == preferred:
        return ErrorCode.ELECTION_NOT_NEEDED, "Leader election not needed for topic partition."
    if preferred is None:
        return ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE, "no live broker to lead it"
    if leader == cluster.me:
        try:
            await broker.logs.release(topic, index)
        except Exception as e:
            log.warning("handing %s-%d over failed", topic, index, exc_info=True)
            return (
                ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE,
                f"handing it over to broker {preferred}: {e}",
            )
        return 0, None
    return (
        ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE,
        f"broker {leader} hands it over to the preferred leader, broker {preferred}, at its "
        "next ownership round",
    )
