# ListPartitionReassignments (key 46), version 0 (Kafka 3.9's only).
# - No reassignment is ever in progress: a partition has one replica, its leader, and
#   AlterPartitionReassignments starts none (the object store replicates the data). The answer
#   is always an empty list, for every topic or the listed ones; unknown topics and partitions
#   are ignored, as Kafka ignores them.
from __future__ import annotations

from generated.list_partition_reassignments_request import ListPartitionReassignmentsRequest
from generated.list_partition_reassignments_response import ListPartitionReassignmentsResponse
from kafscale.broker.handlers import RequestContext


async def handle(
    ctx: RequestContext, request: ListPartitionReassignmentsRequest
) -> ListPartitionReassignmentsResponse:
    return ListPartitionReassignmentsResponse(
        throttle_time_ms=0, error_code=0, error_message=None, topics=[]
    )
