# AlterReplicaLogDirs (key 34), versions 0-2 (all of Kafka 3.9's).
# - There is one log dir, the object store (see describe_log_dirs.py), and every partition is
#   in it. A Path other than that one -> LOG_DIR_NOT_FOUND (57), as Kafka answers a dir not in
#   its config (checked first, as Kafka does). That one: a partition this broker owns is
#   already there -> no error (Kafka answers a move to the current dir so); owned by another
#   broker -> REPLICA_NOT_AVAILABLE (9, Kafka's answer for a replica not on this broker);
#   unknown topic or partition -> UNKNOWN_TOPIC_OR_PARTITION (3).
# - Results are grouped by topic; a partition named twice is answered once (the last path
#   wins, as in Kafka's map of partition to dir).
from __future__ import annotations

from generated.alter_replica_log_dirs_request import AlterReplicaLogDirsRequest
from generated.alter_replica_log_dirs_response import (
    AlterReplicaLogDirPartitionResult,
    AlterReplicaLogDirsResponse,
    AlterReplicaLogDirTopicResult,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext, owned_log
from kafscale.broker.handlers.describe_log_dirs import log_dir


async def handle(
    ctx: RequestContext, request: AlterReplicaLogDirsRequest
) -> AlterReplicaLogDirsResponse:
    ours = log_dir(ctx.broker.config)
    wanted: dict[tuple[str, int], str] = {}
    for entry in request.dirs:
        for topic in entry.topics:
            for index in topic.partitions:
                wanted[(topic.name, index)] = entry.path
    results: dict[str, AlterReplicaLogDirTopicResult] = {}
    for (name, index), path in wanted.items():
        code: int
        if path != ours:
            code = ErrorCode.LOG_DIR_NOT_FOUND
        else:
            plog = await owned_log(ctx, name, index)
            code = 0 if not isinstance(plog, int) else plog
            if code == ErrorCode.NOT_LEADER_OR_FOLLOWER:
                code = ErrorCode.REPLICA_NOT_AVAILABLE
        result = results.setdefault(name, AlterReplicaLogDirTopicResult(topic_name=name))
        result.partitions.append(
            AlterReplicaLogDirPartitionResult(partition_index=index, error_code=code)
        )
    return AlterReplicaLogDirsResponse(throttle_time_ms=0, results=list(results.values()))
