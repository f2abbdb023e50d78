"""Committed offsets of consumer groups, kept in the metadata store.

Key (value is JSON):
- ``/{ns}/offsets/{group}/{topic}/{p:05d}``:
  ``{"offset", "leader_epoch", "metadata", "commit_ms", "topic_id"}``. ``{group}`` is
  percent-encoded (only ``%`` and ``/`` change), so a group id holding ``/`` can never make
  its keys fall under another group's prefix; topic names cannot hold ``/``.

A commit of many partitions is one transaction, or several of at most ``MAX_TXN_OPS`` operations
each (etcd's default limit): each chunk is atomic, the whole commit is not. ``topic_id`` ties a
commit to the topic it was made for: an offset committed for a topic that was deleted (and
perhaps created again) is not reported, as Kafka removes such offsets on deletion. Such stale
keys stay in the store until the group commits that partition again or deletes it.

A group "exists" (for Kafka's ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID / GROUP_ID_NOT_FOUND
choices) while it has at least one committed offset, as a Kafka group with no members does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from kafscale.broker.topics import Topics
from kafscale.metadata import Compare, Delete, MetadataStore, Put

MAX_TXN_OPS = 128
"""Operations per metadata transaction (etcd's --max-txn-ops default)."""

TopicPartition = tuple[str, int]
OffsetsListener = Callable[[str | None, Mapping[TopicPartition, "CommittedOffset"] | None], None]
"""Called after offsets changed through :class:`Offsets`: (group, the commits stored), or
(group, None) when anything of the group may have changed (a deletion, a commit that failed
midway), or (None, None) for every group (a topic's offsets were deleted)."""


@dataclass(frozen=True)
class CommittedOffset:
    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_ms: int = 0
    topic_id: str = ""
    expire_ms: int = -1
    """OffsetCommit v2-4's RetentionTimeMs made absolute (-1: the broker's retention rules)."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "offset": self.offset,
                "leader_epoch": self.leader_epoch,
                "metadata": self.metadata,
                "commit_ms": self.commit_ms,
                "topic_id": self.topic_id,
                "expire_ms": self.expire_ms,
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def from_json(data: bytes) -> CommittedOffset:
        d = json.loads(data)
        return CommittedOffset(
            int(d["offset"]),
            int(d.get("leader_epoch", -1)),
            str(d.get("metadata", "")),
            int(d.get("commit_ms", 0)),
            str(d.get("topic_id", "")),
            int(d.get("expire_ms", -1)),
        )


def now_ms() -> int:
    return int(time.time() * 1000)


class Offsets:
    """Committed offsets of every group in one namespace (stateless: reads the store)."""

    def __init__(self, store: MetadataStore, namespace: str) -> None:
        self.store = store
        self.ns = namespace
        self.listeners: list[OffsetsListener] = []
        """Told of every change made through this object (the lag cache follows them)."""

    def _changed(
        self, group: str | None, committed: Mapping[TopicPartition, CommittedOffset] | None
    ) -> None:
        for listener in self.listeners:
            listener(group, committed)

    @property
    def prefix(self) -> bytes:
        return f"/{self.ns}/offsets/".encode()

    def group_prefix(self, group: str) -> bytes:
        return self.prefix + quote(group, safe="").encode() + b"/"

    def key(self, group: str, topic: str, partition: int) -> bytes:
        return self.group_prefix(group) + f"{topic}/{partition:05d}".encode()

    async def exists(self, group: str) -> bool:
        return bool(await self.store.range(self.group_prefix(group), limit=1))

    async def groups(self) -> list[str]:
        """Every group with at least one stored commit (stale ones included), sorted."""
        found: set[str] = set()
        for kv in await self.store.range(self.prefix):
            found.add(unquote(kv.key[len(self.prefix) :].split(b"/", 1)[0].decode()))
        return sorted(found)

    async def commit(
        self,
        group: str,
        offsets: Mapping[TopicPartition, CommittedOffset],
        guard: Sequence[Compare] = (),
    ) -> bool:
        """Store the commits (all in one transaction up to 128, else in chunks); each
        transaction also checks ``guard`` (that we still coordinate the group). False, with
        nothing stored, when the first chunk's guard fails."""
        ops = [Put(self.key(group, t, p), c.to_json()) for (t, p), c in offsets.items()]
        try:
            stored = await self._apply(ops, guard)
        except BaseException:
            self._changed(group, None)  # some chunks may have been stored
            raise
        self._changed(group, offsets if stored else None)
        return stored

    async def fetch(
        self, group: str, topics: Collection[str] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        """Every committed offset of ``group`` (of ``topics`` only, unless None), including
        stale ones (see :func:`live`)."""
        base = self.group_prefix(group)
        prefixes = [base] if topics is None else [base + f"{t}/".encode() for t in set(topics)]
        out: dict[TopicPartition, CommittedOffset] = {}
        for prefix in prefixes:
            for kv in await self.store.range(prefix):
                parts = kv.key[len(base) :].decode().split("/")
                if len(parts) != 2 or not parts[1].isdigit():
                    continue
                out[(parts[0], int(parts[1]))] = CommittedOffset.from_json(kv.value)
        return dict(sorted(out.items()))

    async def fetch_all(self) -> dict[str, dict[TopicPartition, CommittedOffset]]:
        """Every group's committed offsets (stale ones included), by group: one range read."""
        out: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        for kv in await self.store.range(self.prefix):
            parts = kv.key[len(self.prefix) :].decode().split("/")
            if len(parts) != 3 or not parts[2].isdigit():
                continue
            group = unquote(parts[0])
            out.setdefault(group, {})[(parts[1], int(parts[2]))] = CommittedOffset.from_json(
                kv.value
            )
        return out

    async def delete(self, group: str, partitions: Iterable[TopicPartition]) -> None:
        """OffsetDelete: forget these partitions' commits (absent ones are no error)."""
        try:
            await self._apply([Delete(self.key(group, t, p)) for t, p in partitions])
        finally:
            self._changed(group, None)

    async def delete_group(self, group: str) -> int:
        """DeleteGroups: forget every commit of ``group``; how many."""
        keys = [kv.key for kv in await self.store.range(self.group_prefix(group))]
        try:
            await self._apply([Delete(k) for k in keys])
        finally:
            self._changed(group, None)
        return len(keys)

    async def delete_topic(self, topic: str) -> int:
        """Forget every group's commits for ``topic`` (for topic deletion); how many."""
        keys = [
            kv.key
            for kv in await self.store.range(self.prefix)
            if kv.key.rsplit(b"/", 2)[-2] == topic.encode()
        ]
        try:
            await self._apply([Delete(k) for k in keys])
        finally:
            self._changed(None, None)
        return len(keys)

    async def _apply(self, ops: Sequence[Put | Delete], guard: Sequence[Compare] = ()) -> bool:
        for start in range(0, len(ops), MAX_TXN_OPS):
            result = await self.store.txn(guard, ops[start : start + MAX_TXN_OPS])
            if not result.succeeded:
                return False
        return True


def live(topics: Topics, tp: TopicPartition, committed: CommittedOffset) -> bool:
    """Whether a stored commit belongs to the topic now bearing that name."""
    topic = topics.get(tp[0])
    return (
        topic is not None and str(topic.id) == committed.topic_id and 0 <= tp[1] < topic.partitions
    )
