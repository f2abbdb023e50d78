"""Read-only JSON views of the whole cluster for the web console (``/api/...``).

Any broker answers for the whole cluster, not only for what it owns:

- **brokers and ownership** from the cluster's mirrors (registrations, partition owner keys,
  group coordinator keys), kept current by watches: no store read; each broker's
  **readiness** from its own ``/readyz`` (the HTTP address its registration advertises),
  asked concurrently;
- **partition offsets** (log start, high watermark, leader epoch) from memory for owned
  partitions, else one range read of the topic's partition states (cached a few seconds,
  :class:`kafscale.broker.lag.PartitionStates`); **sizes** likewise from memory, else one
  range read of the topic's committed entries;
- **rates**: ``/api/rates`` is this broker's; :meth:`ClusterView.cluster_rates` asks every
  broker's ``/api/rates`` (the console's charts);
- **groups**: every group with a coordinator (the mirror), in this coordinator's memory, or with
  committed offsets (one range read of every group's offsets); the state and members of a
  group another broker coordinates are asked of it with a Kafka DescribeGroups request, this
  broker's own come from its coordinator's memory.

Every store read is bounded by the requests that need it (nothing runs between requests), and
a coordinator that does not answer within :data:`PEER_TIMEOUT_S` leaves its groups' state
"unknown" with the reason, rather than failing the whole answer.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiohttp

from generated.consumer_protocol_assignment import ConsumerProtocolAssignment
from generated.describe_groups_request import DescribeGroupsRequest
from generated.describe_groups_response import DescribeGroupsResponse
from generated.registry import APIS
from generated.response_header import ResponseHeader
from kafscale.broker.group import DEAD, EMPTY, STABLE
from kafscale.broker.handlers.describe_log_dirs import partition_size
from kafscale.broker.internal_topics import is_internal
from kafscale.broker.lag import PartitionState
from kafscale.broker.metrics import error_label
from kafscale.broker.offsets import CommittedOffset, TopicPartition, live
from kafscale.protocol.framing import encode_request
from kafscale.protocol.message import Message
from kafscale.protocol.wire import Buffer

if TYPE_CHECKING:
    from kafscale.broker.cluster import BrokerInfo
    from kafscale.broker.server import Broker

PEER_TIMEOUT_S = 2.0
"""How long a coordinator has to answer DescribeGroups for the console (and a broker its
``/readyz`` or ``/api/rates``)."""
SIZES_MAX_AGE_S = 5.0
"""Partition sizes read from the store (partitions owned elsewhere) are kept this long."""
DESCRIBE_GROUPS = 15
DESCRIBE_GROUPS_VERSION = 5
_SIZE = struct.Struct(">i")


class ClusterView:
    """The ``/api`` answers of one broker (JSON-ready dicts)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._sizes: dict[str, tuple[float, dict[int, int]]] = {}

    # --- cluster ---------------------------------------------------------------------------

    async def cluster(self) -> dict[str, Any]:
        """Brokers, who owns which partitions and coordinates how many groups, and this
        broker's readiness."""
        b = self.broker
        live_brokers = b.cluster.live()
        owned: dict[int, int] = {}
        owners: dict[str, list[int | None]] = {}
        for topic in sorted(b.topics.by_name):
            known = b.topics.by_name[topic]
            row: list[int | None] = []
            for p in range(known.partitions):
                owner = b.cluster.owner(topic, p)
                row.append(None if owner is None else owner[0])
                if owner is not None:
                    owned[owner[0]] = owned.get(owner[0], 0) + 1
            owners[topic] = row
        coordinated: dict[int, int] = {}
        for kv in list(b.cluster.group_owners.items.values()):
            broker_id = int(json.loads(kv.value)["broker"])
            coordinated[broker_id] = coordinated.get(broker_id, 0) + 1
        report, peers = await asyncio.gather(
            b.readiness.check(), self._peers_json(live_brokers, "/readyz")
        )
        ready = {broker_id: _readiness(answer) for broker_id, answer in peers.items()}
        ready[b.config.broker_id] = _readiness(report.to_json())
        return {
            "cluster_id": b.config.cluster_id,
            "broker_id": b.config.broker_id,
            "janitor": min(live_brokers, default=None),
            "brokers": [
                {
                    "id": info.id,
                    "host": info.host,
                    "port": info.port,
                    "this": info.id == b.config.broker_id,
                    "partitions": owned.get(info.id, 0),
                    "groups": coordinated.get(info.id, 0),
                    "http": info.http,
                    **ready[info.id],
                }
                for info in sorted(live_brokers.values(), key=lambda i: i.id)
            ],
            "owners": owners,
            "unowned_partitions": sum(row.count(None) for row in owners.values()),
            "health": report.to_json(),
        }

    # --- topics ----------------------------------------------------------------------------

    async def topics(self, name: str | None = None) -> dict[str, Any] | None:
        """Every topic (or only ``name``; None when it does not exist) with its configs and
        partitions: leader, leader epoch, log start, high watermark, size."""
        b = self.broker
        names = sorted(b.topics.by_name) if name is None else [name]
        out = []
        for topic_name in names:
            topic = b.topics.get(topic_name)
            if topic is None:
                if name is not None:
                    return None
                continue
            states = await b.partition_states.topic(topic_name)
            sizes = await self._topic_sizes(topic_name, topic.partitions)
            partitions = []
            records = 0
            for p in range(topic.partitions):
                owner = b.cluster.owner(topic_name, p)
                state = states.get(p, PartitionState(0, 0, 0))
                records += state.hw - state.log_start
                partitions.append(
                    {
                        "partition": p,
                        "leader": None if owner is None else owner[0],
                        "leader_epoch": state.epoch if owner is None else owner[1],
                        "log_start_offset": state.log_start,
                        "high_watermark": state.hw,
                        "size_bytes": sizes.get(p, 0),
                    }
                )
            out.append(
                {
                    "name": topic_name,
                    "id": str(topic.id),
                    "internal": is_internal(topic_name),
                    "partitions": partitions,
                    "configs": dict(sorted(topic.configs.items())),
                    "size_bytes": sum(sizes.values()),
                    "records": records,
                }
            )
        if name is not None:
            return out[0]
        return {"topics": out}

    async def _topic_sizes(self, topic: str, partitions: int) -> dict[int, int]:
        """Bytes of each partition's committed entries from its log start on (as
        DescribeLogDirs reports them): from memory when owned here, else from the store."""
        b = self.broker
        out: dict[int, int] = {}
        missing = False
        for p in range(partitions):
            plog = b.logs.logs.get((topic, p))
            if plog is None:
                missing = True
                continue
            out[p] = partition_size(plog)
        if not missing:
            return out
        cached = self._sizes.get(topic)
        if cached is None or time.monotonic() - cached[0] > SIZES_MAX_AGE_S:
            cached = (time.monotonic(), await self._read_sizes(topic))
            self._sizes[topic] = cached
        for p, size in cached[1].items():
            out.setdefault(p, size)
        return out

    async def _read_sizes(self, topic: str) -> dict[int, int]:
        b = self.broker
        states = await b.partition_states.topic(topic)
        prefix = b.topics.topic_segments_prefix(topic)
        out: dict[int, int] = {}
        for kv in await b.meta.range(prefix):
            parts = kv.key[len(prefix) :].split(b"/")
            if len(parts) != 2 or not parts[0].isdigit():
                continue
            p = int(parts[0])
            entry = json.loads(kv.value)
            start = states[p].log_start if p in states else 0
            if int(entry.get("last", 0)) >= start:
                out[p] = out.get(p, 0) + int(entry.get("size", 0))
        return out

    # --- groups ----------------------------------------------------------------------------

    async def groups(self, name: str | None = None) -> dict[str, Any] | None:
        """Every group (or only ``name``; None when unknown): coordinator, state, protocol,
        members with their assignments, and per partition the committed offset, the high
        watermark and the lag."""
        b = self.broker
        if name is None:
            committed = await b.offsets.fetch_all()  # one range read for every group
            prefix = b.cluster.group_owners.prefix
            held = list(b.cluster.group_owners.items.values())
            coordinated = {unquote(kv.key[len(prefix) :].decode()) for kv in held}
            names = sorted(coordinated | set(b.groups.groups) | set(committed))
        else:
            committed = {name: await b.offsets.fetch(name)}
            names = [name]
        described: dict[str, dict[str, Any]] = {}
        remote: dict[int, list[str]] = {}
        for group in names:
            info = b.cluster.coordinator(group)
            if info is None or info.id == b.config.broker_id:
                described[group] = self._local(group, bool(committed.get(group)))
            else:
                remote.setdefault(info.id, []).append(group)
        for answer in await asyncio.gather(*(self._describe(i, g) for i, g in remote.items())):
            described.update(answer)
        states: dict[str, dict[int, PartitionState]] = {}
        out = []
        for group in names:
            offsets = committed.get(group, {})
            entry = await self._group(group, described[group], offsets, states)
            if name is not None and entry["state"] == "Dead" and not offsets:
                return None
            out.append(entry)
        if name is not None:
            return out[0]
        return {"groups": out}

    def _local(self, group_id: str, has_offsets: bool) -> dict[str, Any]:
        """A group this broker coordinates (or should), from its coordinator's memory, as
        DescribeGroups describes it: a group known only by its offsets is Empty, an unknown
        one Dead; protocol and assignments only once Stable."""
        group = self.broker.groups.get(group_id)
        if group is None:
            state = EMPTY if has_offsets else DEAD
            return {"state": state, "protocol_type": "", "protocol": "", "members": []}
        stable = group.state == STABLE and group.protocol_name is not None
        protocol_type = group.protocol_type or ""
        return {
            "state": group.state,
            "protocol_type": protocol_type,
            "protocol": (group.protocol_name or "") if stable else "",
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.instance_id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "assignment": _assignment(protocol_type, m.assignment) if stable else None,
                }
                for m in group.members.values()
            ],
        }

    async def _group(
        self,
        group: str,
        described: dict[str, Any],
        offsets: dict[TopicPartition, CommittedOffset],
        states: dict[str, dict[int, PartitionState]],
    ) -> dict[str, Any]:
        b = self.broker
        coordinator = b.cluster.coordinator(group)
        entry: dict[str, Any] = {
            "group": group,
            "coordinator": None if coordinator is None else coordinator.id,
            **described,
        }
        partitions = []
        for (topic, partition), c in sorted(offsets.items()):
            if not live(b.topics, (topic, partition), c):
                continue
            if topic not in states:
                states[topic] = await b.partition_states.topic(topic)
            state = states[topic].get(partition)
            hw = None if state is None else state.hw
            partitions.append(
                {
                    "topic": topic,
                    "partition": partition,
                    "committed_offset": c.offset,
                    "high_watermark": hw,
                    "lag": None if hw is None else max(0, hw - c.offset),
                    "metadata": c.metadata,
                    "commit_ms": c.commit_ms,
                }
            )
        entry["partitions"] = partitions
        entry["lag"] = sum(p["lag"] or 0 for p in partitions)
        return entry

    async def _describe(self, broker_id: int, groups: list[str]) -> dict[str, dict[str, Any]]:
        """DescribeGroups of ``groups`` by their coordinator, another broker; one that cannot
        be asked leaves their state "unknown", with the reason."""
        b = self.broker
        try:
            info = b.cluster.live().get(broker_id)
            if info is None:
                raise ConnectionError(f"broker {broker_id} is not live")
            answer = await kafka_request(
                info.host,
                info.port,
                DESCRIBE_GROUPS,
                DESCRIBE_GROUPS_VERSION,
                DescribeGroupsRequest(groups=groups),
            )
            assert isinstance(answer, DescribeGroupsResponse)
        except Exception as e:
            reason = f"coordinator {broker_id} did not answer: {type(e).__name__}: {e}"
            return {g: _unknown(reason) for g in groups}
        out: dict[str, dict[str, Any]] = {}
        for g in answer.groups:
            if g.error_code:
                out[g.group_id] = _unknown(f"DescribeGroups: {error_label(g.error_code)}")
                continue
            out[g.group_id] = {
                "state": g.group_state,
                "protocol_type": g.protocol_type,
                "protocol": g.protocol_data,
                "members": [
                    {
                        "member_id": m.member_id,
                        "group_instance_id": m.group_instance_id,
                        "client_id": m.client_id,
                        "client_host": m.client_host,
                        "assignment": _assignment(g.protocol_type, m.member_assignment)
                        if g.group_state == STABLE
                        else None,
                    }
                    for m in g.members
                ],
            }
        for group in groups:
            out.setdefault(group, _unknown("not in the coordinator's answer"))
        return out

    # --- rates -----------------------------------------------------------------------------

    def rates(self, seconds: int | None = None) -> dict[str, Any]:
        """The last ``seconds`` (default all kept) per-second samples of this broker's
        traffic and flush latency, oldest first."""
        samples = list(self.broker.metrics.rates.samples)
        if seconds is not None:
            samples = samples[-seconds:] if seconds > 0 else []
        return {
            "broker_id": self.broker.config.broker_id,
            "interval_s": 1,
            "samples": [s.to_json() for s in samples],
        }

    async def cluster_rates(self, seconds: int | None = None) -> dict[str, Any]:
        """:meth:`rates` of every live broker (asked at their ``/api/rates``), by broker; a
        broker that does not answer has no samples and an ``error``."""
        live_brokers = self.broker.cluster.live()
        query = "" if seconds is None else f"?seconds={seconds}"
        peers = await self._peers_json(live_brokers, "/api/rates" + query)
        peers[self.broker.config.broker_id] = self.rates(seconds)
        out = []
        for broker_id in sorted(live_brokers):
            answer = peers[broker_id]
            samples = answer.get("samples")
            entry: dict[str, Any] = {
                "broker_id": broker_id,
                "samples": samples if isinstance(samples, list) else [],
            }
            if "error" in answer:
                entry["error"] = answer["error"]
            out.append(entry)
        return {"interval_s": 1, "brokers": out}

    async def _peers_json(
        self, brokers: dict[int, BrokerInfo], path: str
    ) -> dict[int, dict[str, Any]]:
        """GET ``path`` of every broker but this one at its advertised HTTP address,
        concurrently (one session); by broker id the JSON answer (any status: ``/readyz``
        answers 503 with its reasons), or ``{"error": why}``."""
        me = self.broker.config.broker_id
        others = [info for info in brokers.values() if info.id != me]
        if not others:
            return {}

        async def one(session: aiohttp.ClientSession, info: BrokerInfo) -> dict[str, Any]:
            if not info.http:
                return {"error": "no HTTP port advertised"}
            try:
                async with (
                    asyncio.timeout(PEER_TIMEOUT_S),
                    session.get(f"http://{info.http}{path}") as response,
                ):
                    answer = await response.json(content_type=None)
            except Exception as e:
                return {"error": f"{info.http} did not answer: {type(e).__name__}: {e}"}
            if not isinstance(answer, dict):
                return {"error": f"{info.http}: unexpected answer"}
            return answer

        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(*(one(session, info) for info in others))
        return {info.id: answer for info, answer in zip(others, answers, strict=True)}


def _readiness(answer: dict[str, Any]) -> dict[str, Any]:
    """A broker's ``/readyz`` answer as the console shows it: ready (None when it could not be
    asked), the reason, and its object store's health state."""
    if "ready" not in answer:
        return {"ready": None, "reason": str(answer.get("error", "no answer")), "object_store": ""}
    store = answer.get("checks", {}).get("object_store", {})
    return {
        "ready": bool(answer["ready"]),
        "reason": str(answer.get("reason", "")),
        "object_store": str(store.get("state", "")) if isinstance(store, dict) else "",
    }


def _unknown(reason: str) -> dict[str, Any]:
    return {"state": "unknown", "protocol_type": "", "protocol": "", "members": [], "error": reason}


def _assignment(protocol_type: str, data: Buffer) -> dict[str, list[int]] | None:
    """A consumer group member's assignment (topic -> partitions), None when it is not a
    consumer group's or does not parse."""
    if protocol_type != "consumer" or len(data) < 2:
        return None
    try:
        version = int.from_bytes(data[:2], "big", signed=True)
        low, high = ConsumerProtocolAssignment.VALID_VERSIONS
        if version < low:
            return None
        # A newer version is read as the newest we know (fields are only ever appended).
        decoded, _ = ConsumerProtocolAssignment.read(bytes(data), 2, min(version, high))
    except Exception:
        return None
    return {tp.topic: sorted(tp.partitions) for tp in decoded.assigned_partitions}


async def kafka_request(
    host: str, port: int, api_key: int, version: int, body: Message, timeout: float = PEER_TIMEOUT_S
) -> Message:
    """One request to a Kafka broker over a connection of its own: the decoded answer."""
    api = APIS[api_key]
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.writelines(encode_request(api, version, 1, "kafscale-console", body))
            await writer.drain()
            size = _SIZE.unpack(await reader.readexactly(4))[0]
            frame = await reader.readexactly(size)
        finally:
            writer.close()
    _, pos = ResponseHeader.read(frame, 0, api.response_header_version(version))
    answer, _ = api.response_type().read(frame, pos, version)
    return answer
