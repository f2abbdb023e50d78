# DescribeLogDirs (key 35), versions 0-4 (all of Kafka 3.9's).
# - One log dir, standing for the object store that holds the log: s3://{bucket}/{namespace}
#   on S3, else the absolute path of the embedded store's directory for the namespace
#   ({data dir}/objects/{namespace}). Every broker of a cluster names the same one (they share
#   the store); each lists the partitions it owns, so every partition is listed once across the
#   cluster, as Kafka lists each replica on its broker (admin clients ask every broker).
# - Topics null = every partition this broker owns (or should own and claims now); else the
#   listed ones it owns. Unknown topics or partitions, and those owned elsewhere, are left out,
#   as Kafka leaves out what it does not host; a topic with nothing left is not listed.
# - PartitionSize: the sum of the sizes of the partition's committed entries (segments and
#   pieces) that hold anything at or above the log start, from the metadata the broker keeps
#   in memory: the bucket is never listed. OffsetLag 0 (nothing above the high watermark is
#   kept), IsFutureKey false (nothing moves between dirs).
# - TotalBytes / UsableBytes (v4+): -1, Kafka's "unknown" (an object store has no volume).
from __future__ import annotations

from generated.describe_log_dirs_request import DescribeLogDirsRequest
from generated.describe_log_dirs_response import (
    DescribeLogDirsPartition,
    DescribeLogDirsResponse,
    DescribeLogDirsResult,
    DescribeLogDirsTopic,
)
from kafscale.broker.config import BrokerConfig
from kafscale.broker.handlers import RequestContext, owned_log
from kafscale.broker.log import PartitionLog

UNKNOWN_BYTES = -1


def log_dir(config: BrokerConfig) -> str:
    """The one log dir: where this cluster's log lives (also the broker's log.dirs)."""
    return config.log_dir


def partition_size(plog: PartitionLog) -> int:
    """Bytes of the committed entries still (partly) in the log: at or above its start."""
    return sum(s.size for s in plog.segments if s.last >= plog.log_start)


async def handle(ctx: RequestContext, request: DescribeLogDirsRequest) -> DescribeLogDirsResponse:
    topics = ctx.broker.topics
    wanted: dict[str, set[int]] = {}
    if request.topics is None:
        for topic in topics.by_name.values():
            wanted[topic.name] = set(range(topic.partitions))
    else:
        for entry in request.topics:
            wanted.setdefault(entry.topic, set()).update(entry.partitions)
    out: list[DescribeLogDirsTopic] = []
    for name in sorted(wanted):
        hosted = []
        for index in sorted(wanted[name]):
            plog = await owned_log(ctx, name, index)
            if isinstance(plog, int):
                continue  # unknown, or owned by another broker
            hosted.append(
                DescribeLogDirsPartition(
                    partition_index=index,
                    partition_size=partition_size(plog),
                    offset_lag=0,
                    is_future_key=False,
                )
            )
        if hosted:
            out.append(DescribeLogDirsTopic(name=name, partitions=hosted))
    result = DescribeLogDirsResult(
        error_code=0,
        log_dir=log_dir(ctx.broker.config),
        topics=out,
        total_bytes=UNKNOWN_BYTES,
        usable_bytes=UNKNOWN_BYTES,
    )
    return DescribeLogDirsResponse(throttle_time_ms=0, error_code=0, results=[result])
