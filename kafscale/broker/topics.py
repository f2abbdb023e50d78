"""Topics and their partitions, kept in the metadata store.

Keys (values are JSON):
- ``/{ns}/topics/{name}``: ``{"id": uuid, "partitions": n, "configs": {...}}``
- ``/{ns}/partitions/{topic}/{p:05d}``: ``{"log_start": offset, "hw": offset}`` — the committed
  log end offset (high watermark) moves only by a compare-and-swap transaction on this key.
  Written by the partition's first claim: absent, the partition is empty from offset 0. So a
  topic of any number of partitions is created (and grown) by writing its one topic key, which
  is atomic whatever the count and within etcd's 128 operations per transaction.
- ``/{ns}/segments/{topic}/{p:05d}/{base:020d}``: one committed segment object.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from generated.errors import ErrorCode
from kafscale.broker.cluster import Mirror
from kafscale.broker.config import BrokerConfig
from kafscale.broker.topic_configs import AppendRules, ConfigError, append_rules
from kafscale.broker.topic_configs import validate as validate_configs
from kafscale.metadata import Compare, Delete, MetadataStore, Put

# Kafka's topic name rule: legal characters, at most 249, not "." or "..".
_LEGAL = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class TopicError(Exception):
    """A topic operation refused with a Kafka error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Topic:
    name: str
    id: uuid.UUID
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    """The overrides (as given: ``topic_configs`` parses them; a Topic is replaced, never
    changed, when they change)."""
    _rules: AppendRules | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {"id": str(self.id), "partitions": self.partitions, "configs": self.configs},
            sort_keys=True,
        ).encode()

    @staticmethod
    def from_json(name: str, data: bytes) -> Topic:
        d = json.loads(data)
        return Topic(name, uuid.UUID(d["id"]), int(d["partitions"]), dict(d.get("configs", {})))

    def config(self, name: str, default: str | None = None) -> str | None:
        return self.configs.get(name, default)

    def append_rules(self, broker: BrokerConfig) -> AppendRules:
        """What the topic's configs ask of produced batches (computed once per Topic)."""
        if self._rules is None:
            self._rules = append_rules(self.configs, broker)
        return self._rules


def validate_topic_name(name: str) -> None:
    """Kafka's rules (INVALID_TOPIC_EXCEPTION = 17)."""
    if name in (".", "..") or not _LEGAL.fullmatch(name):
        raise TopicError(
            ErrorCode.INVALID_TOPIC_EXCEPTION,
            f"topic name {name!r} is illegal (characters [a-zA-Z0-9._-], 1-249)",
        )


class Topics:
    """The topic table, cached in memory and written through to the metadata store."""

    def __init__(
        self, store: MetadataStore, namespace: str, config: BrokerConfig | None = None
    ) -> None:
        self.store = store
        self.ns = namespace
        self.config = config or BrokerConfig()
        """The broker's settings: the defaults configs are validated with."""
        self.by_name: dict[str, Topic] = {}
        self.by_id: dict[uuid.UUID, Topic] = {}
        self.listeners: list[Callable[[set[str]], None]] = []
        """Called with the names of topics that disappeared (deleted, maybe by another
        broker) whenever the table changes under :meth:`follow`."""
        self._mirror: Mirror | None = None
        self._parsed: dict[bytes, tuple[int, Topic]] = {}

    async def follow(self) -> None:
        """Keep the table current with the store (topics created, changed or deleted by other
        brokers) through a watch."""
        self._mirror = Mirror(self.store, f"/{self.ns}/topics/".encode(), self._mirrored)
        await self._mirror.start()
        self._mirrored()

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.close()
            self._mirror = None

    def _mirrored(self) -> None:
        assert self._mirror is not None
        by_name: dict[str, Topic] = {}
        parsed: dict[bytes, tuple[int, Topic]] = {}
        for name, kv in self._mirror.items.items():
            known = self._parsed.get(name)
            if known is not None and known[0] == kv.mod_revision:
                topic = known[1]  # unchanged: a thousand topics created at once are parsed
            else:  # once each, not once per change
                try:
                    topic = Topic.from_json(name.decode(), kv.value)
                except (ValueError, KeyError):
                    continue
            parsed[name] = (kv.mod_revision, topic)
            by_name[topic.name] = topic
        self._parsed = parsed
        gone = set(self.by_name) - set(by_name)
        self.by_name = by_name
        self.by_id = {t.id: t for t in by_name.values()}
        if gone:
            for listener in self.listeners:
                listener(gone)

    def topic_key(self, name: str) -> bytes:
        return f"/{self.ns}/topics/{name}".encode()

    @property
    def partitions_root(self) -> bytes:
        """The prefix of every topic's partition state keys."""
        return f"/{self.ns}/partitions/".encode()

    def partitions_prefix(self, topic: str) -> bytes:
        """The prefix of every partition state key of ``topic``."""
        return self.partitions_root + f"{topic}/".encode()

    def partition_key(self, topic: str, partition: int) -> bytes:
        return self.partitions_prefix(topic) + f"{partition:05d}".encode()

    def topic_segments_prefix(self, topic: str) -> bytes:
        """The prefix of every committed entry of every partition of ``topic``."""
        return f"/{self.ns}/segments/{topic}/".encode()

    def segments_prefix(self, topic: str, partition: int) -> bytes:
        return self.topic_segments_prefix(topic) + f"{partition:05d}/".encode()

    @property
    def ingest_prefix(self) -> bytes:
        """The ingest registry: ``/{ns}/ingest/{object key}/{nonce}``, one entry per commit
        transaction that put pieces into the object."""
        return f"/{self.ns}/ingest/".encode()

    def ingest_entry_key(self, object_key: str, nonce: str) -> bytes:
        return self.ingest_prefix + f"{object_key}/{nonce}".encode()

    async def load(self) -> None:
        prefix = f"/{self.ns}/topics/".encode()
        for kv in await self.store.range(prefix):
            topic = Topic.from_json(kv.key[len(prefix) :].decode(), kv.value)
            self._remember(topic)

    def _remember(self, topic: Topic) -> None:
        self.by_name[topic.name] = topic
        self.by_id[topic.id] = topic

    def get(self, name: str) -> Topic | None:
        return self.by_name.get(name)

    async def create(
        self, name: str, partitions: int, configs: dict[str, str], validate_only: bool = False
    ) -> Topic:
        validate_topic_name(name)
        if name in self.by_name:
            raise TopicError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        self.check_configs(configs)  # before the partitions, as Kafka's controller
        self.check_partitions(partitions)
        topic = Topic(name, uuid.uuid4(), partitions, dict(configs))
        if validate_only:
            return topic
        result = await self.store.txn(
            [Compare(self.topic_key(name), "version", "==", 0)],
            [Put(self.topic_key(name), topic.to_json())],
        )
        if not result.succeeded:
            await self.load()
            raise TopicError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        self._remember(topic)
        return topic

    def check_partitions(self, count: int) -> None:
        """A topic's partition count: at least 1, at most ``max.partitions.per.topic``
        (INVALID_PARTITIONS, 37)."""
        if count < 1:
            raise TopicError(
                ErrorCode.INVALID_PARTITIONS,
                f"number of partitions must be at least 1, got {count}",
            )
        limit = self.config.max_partitions_per_topic
        if count > limit:
            raise TopicError(
                ErrorCode.INVALID_PARTITIONS,
                f"{count} partitions is more than this cluster allows per topic"
                f" (max.partitions.per.topic={limit})",
            )

    async def delete(self, name: str, tombstone: Callable[[str, str], Put] | None = None) -> Topic:
        """Delete the topic and its metadata at once; ``tombstone(topic id, name)`` (in the
        same transaction) makes the janitor delete its objects."""
        topic = self.by_name.get(name)
        if topic is None:
            raise TopicError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
        await self.store.txn(
            [],
            ([tombstone(str(topic.id), name)] if tombstone is not None else [])
            + [
                Delete(self.topic_key(name)),
                Delete(self.partitions_prefix(name), prefix=True),
                Delete(self.topic_segments_prefix(name), prefix=True),
                Delete(f"/{self.ns}/owners/{name}/".encode(), prefix=True),
            ],
        )
        self.by_name.pop(name, None)  # the watch may have removed it already
        self.by_id.pop(topic.id, None)
        return topic

    async def add_partitions(self, name: str, total: int, validate_only: bool = False) -> None:
        topic = self.by_name.get(name)
        if topic is None:
            raise TopicError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
        if total <= topic.partitions:
            raise TopicError(
                ErrorCode.INVALID_PARTITIONS,
                f"topic {name!r} has {topic.partitions} partitions; cannot go to {total}",
            )
        self.check_partitions(total)
        if validate_only:
            return

        def grow(stored: Topic) -> Topic:
            if total <= stored.partitions:  # another broker grew it meanwhile
                raise TopicError(
                    ErrorCode.INVALID_PARTITIONS,
                    f"topic {name!r} has {stored.partitions} partitions; cannot go to {total}",
                )
            return Topic(stored.name, stored.id, total, stored.configs)

        await self._update(name, topic.id, grow)

    async def _update(
        self, name: str, topic_id: uuid.UUID, change: Callable[[Topic], Topic]
    ) -> None:
        """Replace the stored topic ``name`` (while it has ``topic_id``) by ``change`` of it, by
        compare-and-swap: another broker changing the same topic at the same time (its configs
        while we add partitions) is never overwritten."""
        key = self.topic_key(name)
        for _ in range(10):
            kv = await self.store.get(key)
            stored = Topic.from_json(name, kv.value) if kv is not None else None
            if kv is None or stored is None or stored.id != topic_id:
                raise TopicError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
                )
            updated = change(stored)
            result = await self.store.txn(
                [Compare(key, "mod_revision", "==", kv.mod_revision)],
                [Put(key, updated.to_json())],
            )
            if result.succeeded:
                self._remember(updated)
                return
        raise TopicError(
            ErrorCode.REQUEST_TIMED_OUT, f"topic {name!r} is being changed by others: try again"
        )

    def check_configs(self, configs: dict[str, str]) -> None:
        """A topic's whole override set as Kafka validates it: INVALID_CONFIG (40) with
        Kafka's message otherwise (``topic_configs.validate``)."""
        try:
            validate_configs(configs, self.config)
        except ConfigError as e:
            raise TopicError(e.code, e.message) from None

    async def set_configs(self, name: str, configs: dict[str, str], validate_only: bool) -> None:
        topic = self.by_name.get(name)
        if topic is None:
            raise TopicError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")
        self.check_configs(configs)
        if validate_only:
            return
        await self._update(
            name,
            topic.id,
            lambda stored: Topic(stored.name, stored.id, stored.partitions, dict(configs)),
        )
