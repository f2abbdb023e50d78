"""One harness for the broker's in-memory tests: a broker on a tmp dir without sockets, and a
client that frames requests for ``Broker.respond`` and decodes the answers."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from generated.create_topics_request import (
    CreatableTopic,
    CreatableTopicConfig,
    CreateTopicsRequest,
)
from generated.create_topics_response import CreateTopicsResponse
from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.fetch_response import FetchResponse
from generated.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from generated.list_offsets_response import ListOffsetsResponse
from generated.metadata_request import MetadataRequest
from generated.metadata_response import MetadataResponse
from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from generated.produce_response import ProduceResponse
from generated.registry import APIS
from kafscale.broker.config import BrokerConfig
from kafscale.broker.server import Broker
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.framing import encode_request
from kafscale.protocol.message import Message
from kafscale.protocol.records import iter_records
from kafscale.storage.local import LocalObjectStore


class Client:
    """Frames requests for one broker and decodes its answers."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.correlation = 0

    async def call(self, key: int, version: int, body: Message) -> Any:
        """The decoded response; None when none is sent (acks=0)."""
        self.correlation += 1
        correlation = self.correlation  # calls may overlap (long polls)
        frame = b"".join(encode_request(APIS[key], version, correlation, "t", body))[4:]
        chunks = await self.broker.respond(frame)
        if chunks is None:
            return None
        data = b"".join(chunks)
        assert struct.unpack_from(">i", data, 0)[0] == len(data) - 4
        assert struct.unpack_from(">i", data, 4)[0] == correlation
        header = 4 if APIS[key].response_header_version(version) == 0 else 5
        return APIS[key].response_type().decode(data[4 + header :], version)

    async def create(self, name: str, partitions: int = 1, **configs: str) -> uuid.UUID:
        """Create a topic (config names with ``_`` for ``.``); its topic id."""
        topic = CreatableTopic(
            name=name,
            num_partitions=partitions,
            replication_factor=1,
            configs=[
                CreatableTopicConfig(name=k.replace("_", "."), value=v) for k, v in configs.items()
            ],
        )
        resp: CreateTopicsResponse = await self.call(19, 7, CreateTopicsRequest(topics=[topic]))
        assert resp.topics[0].error_code == 0, resp
        return resp.topics[0].topic_id

    async def topics(self) -> dict[str, int]:
        """Every topic and its partition count, from Metadata."""
        resp: MetadataResponse = await self.call(3, 12, MetadataRequest(topics=None))
        return {t.name: len(t.partitions) for t in resp.topics if t.name is not None}

    async def produce(
        self, topic: str, data: bytes, partition: int = 0, acks: int = -1, version: int = 9
    ) -> Any:
        """The partition's produce response (None for acks=0)."""
        body = ProduceRequest(
            acks=acks,
            timeout_ms=5000,
            topic_data=[
                TopicProduceData(
                    name=topic, partition_data=[PartitionProduceData(index=partition, records=data)]
                )
            ],
        )
        resp: ProduceResponse | None = await self.call(0, version, body)
        return None if resp is None else resp.responses[0].partition_responses[0]

    async def fetch(
        self,
        topic: str,
        offset: int,
        partition: int = 0,
        wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = 1 << 20,
    ) -> Any:
        """The partition's fetch response (Fetch v12, by topic name)."""
        part = FetchPartition(
            partition=partition, fetch_offset=offset, partition_max_bytes=max_bytes
        )
        body = FetchRequest(
            max_wait_ms=wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            topics=[FetchTopic(topic=topic, partitions=[part])],
        )
        resp: FetchResponse = await self.call(1, 12, body)
        return resp.responses[0].partitions[0]

    async def list_offset(self, topic: str, timestamp: int, version: int = 8) -> Any:
        """Partition 0's ListOffsets answer for ``timestamp`` (-2 earliest, -1 latest, -3 max)."""
        part = ListOffsetsPartition(partition_index=0, timestamp=timestamp)
        body = ListOffsetsRequest(topics=[ListOffsetsTopic(name=topic, partitions=[part])])
        resp: ListOffsetsResponse = await self.call(2, version, body)
        return resp.topics[0].partitions[0]

    async def earliest(self, topic: str) -> int:
        part = await self.list_offset(topic, -2)
        assert part.error_code == 0
        return int(part.offset)


C = TypeVar("C", bound=Client)


def run(
    tmp_path: Path,
    scenario: Callable[[C], Awaitable[None]],
    objects: Any = None,
    client: Callable[[Broker], C] = Client,  # type: ignore[assignment]
    **config: Any,
) -> None:
    """Run ``scenario`` against a broker on ``tmp_path`` (flushing every 5 ms unless
    ``config`` says otherwise), then flush and close it as SIGTERM would."""

    async def main() -> None:
        cfg = BrokerConfig(data_dir=tmp_path, **{"flush_interval_ms": 5, **config})
        store = objects if objects is not None else LocalObjectStore(tmp_path / "objects")
        broker = Broker(cfg, store, SqliteMetadataStore(tmp_path / "metadata.sqlite3"))
        await broker.topics.load()
        broker.logs.start()
        try:
            await scenario(client(broker))
        finally:
            await asyncio.wait_for(broker.logs.close(), 10)
            await broker.meta.close()

    asyncio.run(main())


def values(records: Any) -> list[tuple[int, bytes | None]]:
    """(offset, value) of every record in a Fetch response's records."""
    out = []
    pos, data = 0, bytes(records)
    while pos < len(data):
        size = struct.unpack_from(">i", data, pos + 8)[0] + 12
        out += [
            (r.offset, None if r.value is None else bytes(r.value))
            for r in iter_records(data[pos : pos + size])
        ]
        pos += size
    return out
