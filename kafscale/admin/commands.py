"""The ``kafscale`` admin commands (rpk-style): topics, groups, the cluster, produce, consume.

:func:`add_admin_commands` registers ``topic``, ``group``, ``cluster``, ``produce`` and
``consume`` on the ``kafscale`` parser; each leaf's handler opens a :class:`Client` on
``--bootstrap`` (default ``$KAFSCALE_BOOTSTRAP``, else 127.0.0.1:9092), runs, and prints an
aligned table (or JSON with ``--json``). A failure is one line on stderr,
``kafscale: error: topic "x": UNKNOWN_TOPIC_OR_PARTITION (3)``, and exit status 1 (2 for bad
input). docs/operations.md shows every command with an example.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from generated.errors import ErrorCode
from kafscale.admin import output
from kafscale.admin.client import (
    CONFIG_SOURCES,
    DEFAULT_BOOTSTRAP,
    EARLIEST,
    LATEST,
    Client,
    ConfigEntry,
    GroupDescription,
    GroupMember,
    TopicInfo,
    _q,
)
from kafscale.admin.errors import AdminError, KafkaError, UnsupportedApi, UsageError, error_name
from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.records import (
    RECORD_BATCH_OVERHEAD,
    CompressedBatchError,
    NewRecord,
    Record,
    build_batch,
    iter_records,
)

PROG = "kafscale"
BOOTSTRAP_ENV = "KAFSCALE_BOOTSTRAP"

Command = Callable[[argparse.Namespace, Client], int]


# --- registration ------------------------------------------------------------------------------


def add_admin_commands(commands: Any) -> None:
    """Register the admin commands on the ``kafscale`` subparsers ``commands``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-b",
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        help=f"brokers to start from (default: ${BOOTSTRAP_ENV}, else {DEFAULT_BOOTSTRAP})",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    _add_topic(commands, common)
    _add_group(commands, common)
    cluster = commands.add_parser(
        "cluster", help="cluster information", description="Cluster information."
    )
    cluster_actions = cluster.add_subparsers(
        dest="cluster_command", metavar="ACTION", required=True
    )
    info = cluster_actions.add_parser(
        "info",
        parents=[common],
        help="brokers, controller, cluster id and topic count",
        description="Show the cluster id, the controller, the brokers and how many topics "
        "there are (from Metadata).",
    )
    info.set_defaults(handler=_handler(cluster_info))
    _add_produce(commands, common)
    _add_consume(commands, common)


def _add_topic(commands: Any, common: argparse.ArgumentParser) -> None:
    topic = commands.add_parser(
        "topic",
        help="list, create, describe, delete topics and alter their configs",
        description="Topic administration against any Kafka-compatible broker.",
    )
    actions = topic.add_subparsers(dest="topic_command", metavar="ACTION", required=True)

    p = actions.add_parser(
        "list", parents=[common], help="list topics", description="List the topics."
    )
    p.add_argument(
        "-i", "--internal", action="store_true", help="include internal topics (__consumer_offsets)"
    )
    p.set_defaults(handler=_handler(topic_list))

    p = actions.add_parser(
        "create",
        parents=[common],
        help="create topics",
        description="Create one or more topics.",
    )
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.add_argument(
        "-p", "--partitions", type=int, default=-1, help="partitions (default: the broker's)"
    )
    p.add_argument(
        "-r",
        "--replication-factor",
        type=int,
        default=-1,
        help="replication factor (default: the broker's)",
    )
    p.add_argument(
        "-c",
        "--config",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a topic config (repeatable), e.g. -c retention.ms=60000",
    )
    p.add_argument("--validate-only", action="store_true", help="check, create nothing")
    p.set_defaults(handler=_handler(topic_create))

    p = actions.add_parser(
        "describe",
        parents=[common],
        help="partitions, offsets and configs of a topic",
        description="Describe a topic: its partitions (leader, replicas, log start offset, "
        "high watermark) and its configs that are not defaults.",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "-a", "--all-configs", action="store_true", help="show every config, defaults included"
    )
    p.set_defaults(handler=_handler(topic_describe))

    p = actions.add_parser(
        "delete", parents=[common], help="delete topics", description="Delete topics."
    )
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.set_defaults(handler=_handler(topic_delete))

    p = actions.add_parser(
        "alter-config",
        parents=[common],
        help="set, delete, append to or subtract from a topic's configs",
        description="Change a topic's configs with IncrementalAlterConfigs; the other configs "
        "stay as they are.",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "-s",
        "--set",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="set a config (repeatable)",
    )
    p.add_argument(
        "-d",
        "--delete",
        action="append",
        default=[],
        metavar="KEY",
        help="remove a config: back to its default (repeatable)",
    )
    p.add_argument(
        "--append",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="add to a list config (repeatable)",
    )
    p.add_argument(
        "--subtract",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="remove from a list config (repeatable)",
    )
    p.add_argument("--validate-only", action="store_true", help="check, change nothing")
    p.set_defaults(handler=_handler(topic_alter_config))


def _add_group(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "group",
        help="list, describe (with lag), delete consumer groups and seek their offsets",
        description="Consumer group administration against any Kafka-compatible broker.",
    )
    actions = group.add_subparsers(dest="group_command", metavar="ACTION", required=True)

    p = actions.add_parser(
        "list", parents=[common], help="list groups", description="List every broker's groups."
    )
    p.set_defaults(handler=_handler(group_list))

    p = actions.add_parser(
        "describe",
        parents=[common],
        help="state, members and lag per partition",
        description="Describe a group: state, members, and per partition the committed "
        "offset, the high watermark and the lag (high watermark - committed offset).",
    )
    p.add_argument("group", metavar="GROUP")
    p.set_defaults(handler=_handler(group_describe))

    p = actions.add_parser(
        "delete",
        parents=[common],
        help="delete groups (with no active members)",
        description="Delete groups and their committed offsets; a group with active members "
        "cannot be deleted (NON_EMPTY_GROUP).",
    )
    p.add_argument("groups", nargs="+", metavar="GROUP")
    p.set_defaults(handler=_handler(group_delete))

    p = actions.add_parser(
        "seek",
        parents=[common],
        help="move a group's committed offsets (no active members)",
        description="Commit new offsets for a group that has no active members (stop its "
        "consumers first): to the earliest or latest offset, to an offset (kept within each "
        "partition's log start and high watermark), or to the first offset at or after a "
        "timestamp. Without --topic, the partitions the group has committed offsets for.",
    )
    p.add_argument("group", metavar="GROUP")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument(
        "--to", type=_position, metavar="earliest|latest|OFFSET", help="where to move to"
    )
    to.add_argument(
        "--to-timestamp",
        type=int,
        metavar="MS",
        help="the first offset whose timestamp is at or after MS (ms since the epoch)",
    )
    p.add_argument(
        "-t",
        "--topic",
        action="append",
        default=[],
        metavar="TOPIC",
        help="seek every partition of TOPIC (repeatable; default: the committed partitions)",
    )
    p.set_defaults(handler=_handler(group_seek))


def _add_produce(commands: Any, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "produce",
        parents=[common],
        help="produce the lines of stdin to a topic",
        description="Produce one record per line of stdin (acks=all). --format json reads a "
        'JSON object per line: {"key": ..., "value": ..., "headers": {...}, "partition": N} '
        "(all optional; a non-string key or value is sent as its JSON text). Records with a "
        "key go to Kafka's default partition for it (murmur2), the others to one partition "
        "per batch.",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("-k", "--key", help="the key of every record (text format)")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a header on every record (repeatable)",
    )
    p.add_argument("-p", "--partition", type=int, help="produce to this partition")
    p.add_argument("-f", "--format", choices=["text", "json"], default="text")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="print each record's partition and offset"
    )
    p.set_defaults(handler=_handler(produce))


def _add_consume(commands: Any, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "consume",
        parents=[common],
        help="print a topic's records",
        description="Print a topic's records: the value per line (--format text) or a JSON "
        "object per line with topic, partition, offset, timestamp, key, value and headers. "
        "Stops after --count records or after --timeout seconds without one (else runs until "
        "interrupted). With --group it starts at the group's committed offsets (earliest where "
        "there are none) and commits what it printed, as a standalone consumer (the group must "
        "have no active members).",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "-o",
        "--from",
        dest="start",
        type=_position,
        metavar="earliest|latest|OFFSET",
        help="where to start (default: earliest, or the group's committed offsets)",
    )
    p.add_argument("-n", "--count", type=int, help="stop after this many records")
    p.add_argument(
        "-p",
        "--partition",
        type=int,
        action="append",
        metavar="P",
        help="consume only this partition (repeatable)",
    )
    p.add_argument("-g", "--group", help="start at and commit to this group's offsets")
    p.add_argument("-f", "--format", choices=["text", "json"], default="text")
    p.add_argument(
        "-t",
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop after this long without a new record",
    )
    p.set_defaults(handler=_handler(consume))


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _position(text: str) -> str | int:
    if text in ("earliest", "latest"):
        return text
    try:
        offset = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected earliest, latest or an offset, got {text!r}"
        ) from None
    if offset < 0:
        raise argparse.ArgumentTypeError(f"an offset is >= 0, got {offset}")
    return offset


def _handler(command: Command) -> Callable[[argparse.Namespace], int]:
    """The argparse handler of ``command``: a client on --bootstrap, and every
    :class:`AdminError` printed as one line with its exit status."""

    def run(args: argparse.Namespace) -> int:
        bootstrap = args.bootstrap or os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP
        try:
            with Client(bootstrap) as client:
                return command(args, client)
        except AdminError as error:
            print_error(str(error))
            return error.exit_status

    run.__doc__ = command.__doc__
    return run


def print_error(text: str) -> None:
    """``kafscale: error: <text>`` on stderr, folded to one line."""
    print(f"{PROG}: error: {' '.join(text.split())}", file=sys.stderr)


def _failures(errors: list[KafkaError]) -> int:
    """Print each error as its line; the exit status (0 when there are none)."""
    for error in errors:
        print_error(str(error))
    return 1 if errors else 0


# --- topics ------------------------------------------------------------------------------------


def topic_list(args: argparse.Namespace, client: Client) -> int:
    """``kafscale topic list``: name, partitions, replicas (internal topics with -i)."""
    cluster = client.metadata(None)
    topics = [t for _, t in sorted(cluster.topics.items()) if args.internal or not t.internal]
    if args.json:
        output.write(
            output.dumps(
                [
                    {
                        "name": t.name,
                        "id": str(t.topic_id),
                        "partitions": len(t.partitions),
                        "replicas": _replicas(t),
                        "internal": t.internal,
                        "error": error_name(t.error_code) if t.error_code else None,
                    }
                    for t in topics
                ]
            )
        )
        return 0
    rows = [(t.name, len(t.partitions), _replicas(t)) for t in topics]
    output.write(output.table(("NAME", "PARTITIONS", "REPLICAS"), rows))
    return 0


def _replicas(topic: TopicInfo) -> int:
    return max((len(p.replicas) for p in topic.partitions.values()), default=0)


def topic_create(args: argparse.Namespace, client: Client) -> int:
    """``kafscale topic create``: one line per topic created; each failure on its own line."""
    results = client.create_topics(
        args.topics,
        args.partitions,
        args.replication_factor,
        args.config,
        validate_only=args.validate_only,
    )
    created, errors = [], []
    for name in args.topics:
        code, message, partitions = results.get(name, (-1, "not in the answer", -1))
        if code:
            errors.append(KafkaError(code, f"topic {_q(name)}", message))
        else:
            created.append((name, partitions if partitions >= 0 else args.partitions))
    status = "valid" if args.validate_only else "created"
    if args.json:
        output.write(
            output.dumps(
                [
                    {"name": n, "partitions": p if p > 0 else None, "status": status}
                    for n, p in created
                ]
            )
        )
    elif created:
        rows = [(n, p if p > 0 else None, status) for n, p in created]
        output.write(output.table(("TOPIC", "PARTITIONS", "STATUS"), rows))
    return _failures(errors)


def topic_delete(args: argparse.Namespace, client: Client) -> int:
    """``kafscale topic delete``: one line per topic deleted; each failure on its own line."""
    results = client.delete_topics(args.topics)
    deleted, errors = [], []
    for name in args.topics:
        code, message = results.get(name, (-1, "not in the answer"))
        if code:
            errors.append(KafkaError(code, f"topic {_q(name)}", message))
        else:
            deleted.append(name)
    if args.json:
        output.write(output.dumps([{"name": n, "status": "deleted"} for n in deleted]))
    elif deleted:
        output.write(output.table(("TOPIC", "STATUS"), [(n, "deleted") for n in deleted]))
    return _failures(errors)


def topic_describe(args: argparse.Namespace, client: Client) -> int:
    """``kafscale topic describe``: summary, configs, partitions with their offsets."""
    info = client.topic(args.topic)
    parts = sorted(info.partitions)
    offsets = {
        kind: client.list_offsets({(info.name, p): ts for p in parts})
        for kind, ts in (("start", EARLIEST), ("end", LATEST))
    }
    configs: list[ConfigEntry] | None
    try:
        configs = client.describe_topic_configs(info.name)
    except UnsupportedApi:
        configs = None  # a broker without DescribeConfigs still has partitions to show
    shown = [c for c in configs or [] if args.all_configs or not c.is_default]
    partitions = [
        {
            "partition": p,
            "leader": info.partitions[p].leader,
            "leader_epoch": info.partitions[p].leader_epoch,
            "replicas": list(info.partitions[p].replicas),
            "isr": list(info.partitions[p].isr),
            "log_start_offset": offsets["start"][info.name, p].offset,
            "high_watermark": offsets["end"][info.name, p].offset,
        }
        for p in parts
    ]
    if args.json:
        doc = {
            "name": info.name,
            "id": str(info.topic_id),
            "internal": info.internal,
            "partitions": partitions,
            "configs": None
            if configs is None
            else [
                {
                    "name": c.name,
                    "value": None if c.sensitive else c.value,
                    "source": CONFIG_SOURCES.get(c.source, str(c.source)),
                    "read_only": c.read_only,
                    "sensitive": c.sensitive,
                }
                for c in shown
            ],
        }
        output.write(output.dumps(doc))
        return 0
    text = output.fields(
        [
            ("NAME", info.name),
            ("ID", str(info.topic_id)),
            ("INTERNAL", info.internal),
            ("PARTITIONS", len(parts)),
            ("REPLICAS", _replicas(info)),
        ]
    )
    if configs is None:
        text += "\nCONFIGS (the broker does not serve DescribeConfigs)\n"
    else:
        what = "CONFIGS" if args.all_configs else "CONFIGS (not defaults; -a shows all)"
        text += f"\n{what}\n" + output.table(
            ("KEY", "VALUE", "SOURCE"),
            [
                (
                    c.name,
                    "(sensitive)" if c.sensitive else c.value,
                    CONFIG_SOURCES.get(c.source, c.source),
                )
                for c in shown
            ],
        )
    text += "\nPARTITIONS\n" + output.table(
        ("PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "LOG-START", "HIGH-WATERMARK"),
        [
            (
                d["partition"],
                d["leader"],
                d["leader_epoch"],
                d["replicas"],
                d["isr"],
                d["log_start_offset"],
                d["high_watermark"],
            )
            for d in partitions
        ],
    )
    output.write(text)
    return 0


def topic_alter_config(args: argparse.Namespace, client: Client) -> int:
    """``kafscale topic alter-config``: IncrementalAlterConfigs (SET, DELETE, APPEND,
    SUBTRACT)."""
    ops: list[tuple[str, int, str | None]] = [(k, 0, v) for k, v in args.set]
    ops += [(k, 1, None) for k in args.delete]
    ops += [(k, 2, v) for k, v in args.append]
    ops += [(k, 3, v) for k, v in args.subtract]
    if not ops:
        raise UsageError("nothing to change: give --set, --delete, --append or --subtract")
    client.alter_topic_configs(args.topic, ops, validate_only=args.validate_only)
    names = {0: "set", 1: "delete", 2: "append", 3: "subtract"}
    if args.json:
        output.write(
            output.dumps(
                {
                    "topic": args.topic,
                    "validate_only": args.validate_only,
                    "changes": [{"op": names[o], "name": n, "value": v} for n, o, v in ops],
                }
            )
        )
        return 0
    status = "valid" if args.validate_only else "done"
    rows = [(args.topic, names[o], n, v, status) for n, o, v in ops]
    output.write(output.table(("TOPIC", "OPERATION", "KEY", "VALUE", "STATUS"), rows))
    return 0


# --- groups ------------------------------------------------------------------------------------


def group_list(args: argparse.Namespace, client: Client) -> int:
    """``kafscale group list``: every broker's groups."""
    groups = client.list_groups()
    if args.json:
        output.write(
            output.dumps(
                [
                    {
                        "group": g.group_id,
                        "coordinator": g.coordinator,
                        "state": g.state or None,
                        "protocol_type": g.protocol_type,
                    }
                    for g in groups
                ]
            )
        )
        return 0
    rows = [(g.group_id, g.coordinator, g.state or None, g.protocol_type or None) for g in groups]
    output.write(output.table(("GROUP", "COORDINATOR", "STATE", "PROTOCOL-TYPE"), rows))
    return 0


@dataclass
class _LagRow:
    topic: str
    partition: int
    committed: int | None
    end: int
    member: GroupMember | None

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(self.end - self.committed, 0)


def group_describe(args: argparse.Namespace, client: Client) -> int:
    """``kafscale group describe``: state, members, and per partition the committed offset,
    the high watermark and the lag."""
    group = client.describe_group(args.group)
    committed = client.committed_offsets(args.group)
    if group.state == "Dead" and not group.members and not committed:
        # Kafka describes a group it does not know as Dead with no error: name it.
        raise KafkaError(ErrorCode.GROUP_ID_NOT_FOUND, f"group {_q(args.group)}", "no such group")
    owners: dict[tuple[str, int], GroupMember] = {}
    for m in group.members:
        for topic, partitions in m.assignment.items():
            owners.update({(topic, p): m for p in partitions})
    tps = sorted(set(committed) | set(owners))
    ends = client.list_offsets({tp: LATEST for tp in tps}) if tps else {}
    rows = [
        _LagRow(t, p, committed.get((t, p)), ends[t, p].offset, owners.get((t, p))) for t, p in tps
    ]
    coordinator = client._coordinators.get(args.group)
    total = sum(r.lag or 0 for r in rows)
    if args.json:
        output.write(output.dumps(_group_doc(group, coordinator, rows, total)))
        return 0
    text = output.fields(
        [
            ("GROUP", group.group_id),
            ("COORDINATOR", coordinator),
            ("STATE", group.state),
            ("PROTOCOL", _protocol(group)),
            ("MEMBERS", len(group.members)),
            ("TOTAL-LAG", total),
        ]
    )
    text += "\n" + output.table(
        (
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "MEMBER-ID",
            "CLIENT-ID",
            "HOST",
        ),
        [
            (
                r.topic,
                r.partition,
                r.committed,
                r.end,
                r.lag,
                r.member.member_id if r.member else None,
                r.member.client_id if r.member else None,
                r.member.client_host if r.member else None,
            )
            for r in rows
        ],
    )
    output.write(text)
    return 0


def _protocol(group: GroupDescription) -> str | None:
    if not group.protocol_type:
        return None
    return f"{group.protocol_type}/{group.protocol}" if group.protocol else group.protocol_type


def _group_doc(
    group: GroupDescription, coordinator: int | None, rows: list[_LagRow], total: int
) -> dict[str, Any]:
    return {
        "group": group.group_id,
        "coordinator": coordinator,
        "state": group.state,
        "protocol_type": group.protocol_type,
        "protocol": group.protocol,
        "members": [
            {
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "host": m.client_host,
                "assignment": m.assignment,
            }
            for m in group.members
        ],
        "total_lag": total,
        "partitions": [
            {
                "topic": r.topic,
                "partition": r.partition,
                "committed_offset": r.committed,
                "high_watermark": r.end,
                "lag": r.lag,
                "member_id": r.member.member_id if r.member else None,
            }
            for r in rows
        ],
    }


def group_delete(args: argparse.Namespace, client: Client) -> int:
    """``kafscale group delete``: one line per group deleted; each failure on its own line."""
    results = client.delete_groups(args.groups)
    deleted = [g for g in args.groups if results[g] == 0]
    errors = [KafkaError(results[g], f"group {_q(g)}") for g in args.groups if results[g]]
    if args.json:
        output.write(output.dumps([{"group": g, "status": "deleted"} for g in deleted]))
    elif deleted:
        output.write(output.table(("GROUP", "STATUS"), [(g, "deleted") for g in deleted]))
    return _failures(errors)


def group_seek(args: argparse.Namespace, client: Client) -> int:
    """``kafscale group seek``: commit new offsets for a group with no active members."""
    group = client.describe_group(args.group)
    if group.members:
        raise AdminError(
            f"group {_q(args.group)} has {len(group.members)} active member(s) (state "
            f"{group.state}): seek needs a group with none; stop its consumers first"
        )
    committed = client.committed_offsets(args.group)
    if args.topic:
        tps = [(t, p) for t in args.topic for p in sorted(client.topic(t).partitions)]
    else:
        tps = sorted(committed)
    if not tps:
        raise UsageError(
            f"group {_q(args.group)} has no committed offsets: name the partitions with --topic"
        )
    earliest = client.list_offsets({tp: EARLIEST for tp in tps})
    latest = client.list_offsets({tp: LATEST for tp in tps})
    if args.to_timestamp is not None:
        found = client.list_offsets({tp: args.to_timestamp for tp in tps})
        # No record at or after the timestamp: the end of the log (as Kafka's tool does).
        # Kafka answers offset -1 then; tansu 0.6.0 offset 0 with timestamp -1, which a found
        # record never has.
        new = {
            tp: found[tp].offset
            if found[tp].offset >= 0 and found[tp].timestamp >= 0
            else latest[tp].offset
            for tp in tps
        }
    elif args.to == "earliest":
        new = {tp: earliest[tp].offset for tp in tps}
    elif args.to == "latest":
        new = {tp: latest[tp].offset for tp in tps}
    else:
        new = {tp: min(max(args.to, earliest[tp].offset), latest[tp].offset) for tp in tps}
    client.commit_offsets(args.group, new)
    if args.json:
        output.write(
            output.dumps(
                {
                    "group": args.group,
                    "partitions": [
                        {
                            "topic": t,
                            "partition": p,
                            "previous_offset": committed.get((t, p)),
                            "offset": new[t, p],
                        }
                        for t, p in tps
                    ],
                }
            )
        )
        return 0
    rows = [(t, p, committed.get((t, p)), new[t, p]) for t, p in tps]
    output.write(output.table(("TOPIC", "PARTITION", "PREVIOUS-OFFSET", "NEW-OFFSET"), rows))
    return 0


# --- cluster -----------------------------------------------------------------------------------


def cluster_info(args: argparse.Namespace, client: Client) -> int:
    """``kafscale cluster info``: cluster id, controller, brokers, topic count."""
    cluster = client.metadata(None)
    internal = sum(t.internal for t in cluster.topics.values())
    brokers = [cluster.brokers[b] for b in sorted(cluster.brokers)]
    if args.json:
        doc = {
            "cluster_id": cluster.cluster_id,
            "controller_id": cluster.controller_id,
            "brokers": [
                {"id": b.node_id, "host": b.host, "port": b.port, "rack": b.rack} for b in brokers
            ],
            "topics": len(cluster.topics),
            "internal_topics": internal,
        }
        output.write(output.dumps(doc))
        return 0
    text = output.fields(
        [
            ("CLUSTER-ID", cluster.cluster_id),
            ("CONTROLLER", cluster.controller_id if cluster.controller_id >= 0 else None),
            ("BROKERS", len(brokers)),
            ("TOPICS", f"{len(cluster.topics)} ({internal} internal)"),
        ]
    )
    text += "\n" + output.table(
        ("ID", "HOST", "PORT", "RACK"), [(b.node_id, b.host, b.port, b.rack) for b in brokers]
    )
    output.write(text)
    return 0


# --- produce -----------------------------------------------------------------------------------

BATCH_RECORDS = 1000
BATCH_BYTES = 512 * 1024
"""A produce request is sent once this many records or bytes are waiting (or stdin pauses)."""


@dataclass
class _Pending:
    line: int
    partition: int
    record: NewRecord


def produce(args: argparse.Namespace, client: Client) -> int:
    """``kafscale produce``: the lines of stdin as records."""
    info = client.topic(args.topic)
    partitions = sorted(info.partitions)
    if args.partition is not None and args.partition not in info.partitions:
        raise KafkaError(
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            f"topic {_q(args.topic)} partition {args.partition}",
        )
    key = None if args.key is None else args.key.encode()
    headers = [(k, v.encode()) for k, v in args.header]
    sticky = random.choice(partitions)  # keyless records: one partition per batch
    pending: list[_Pending] = []
    size = 0
    counts: dict[int, list[int]] = {}  # partition -> [records, first offset, last offset]
    total = 0

    def flush() -> None:
        nonlocal pending, size, sticky, total
        if not pending:
            return
        by_partition: dict[int, list[_Pending]] = {}
        for item in pending:
            by_partition.setdefault(item.partition, []).append(item)
        now = int(time.time() * 1000)
        batches = {
            p: build_batch([i.record for i in items], timestamp=now)
            for p, items in by_partition.items()
        }
        base = client.produce(info.name, batches)
        offsets = {}
        for p, items in by_partition.items():
            for delta, item in enumerate(items):
                offsets[item.line] = (p, base[p] + delta)
            c = counts.setdefault(p, [0, base[p], base[p]])
            c[0] += len(items)
            c[2] = base[p] + len(items) - 1
        if args.verbose:
            for item in pending:
                p, offset = offsets[item.line]
                if args.json:
                    output.write(
                        output.line({"topic": info.name, "partition": p, "offset": offset})
                    )
                else:
                    output.write(f"partition {p} offset {offset}\n")
        total += len(pending)
        pending, size = [], 0
        sticky = random.choice(partitions)

    stdin = _stdin_bytes()
    for number, raw in enumerate(_lines(stdin), 1):
        record, partition = _parse_line(raw, number, args.format, key, headers)
        if partition is None:
            partition = args.partition
        if partition is None:
            partition = (
                _default_partition(record.key, len(partitions))
                if record.key is not None
                else sticky
            )
        elif partition not in info.partitions:
            raise KafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic {_q(args.topic)} partition {partition}",
                f"line {number}",
            )
        pending.append(_Pending(number, partition, record))
        size += len(raw)
        if len(pending) >= BATCH_RECORDS or size >= BATCH_BYTES or not _more_ready(stdin):
            flush()
    flush()
    if args.verbose:
        return 0
    if args.json:
        doc = {
            "topic": info.name,
            "records": total,
            "partitions": {
                str(p): {"records": c[0], "first_offset": c[1], "last_offset": c[2]}
                for p, c in sorted(counts.items())
            },
        }
        output.write(output.dumps(doc))
    else:
        where = ", ".join(
            f"partition {p}: offsets {c[1]}-{c[2]}" for p, c in sorted(counts.items())
        )
        output.write(
            f"produced {total} record{'s' if total != 1 else ''} to topic {_q(info.name)}"
            + (f" ({where})" if where else "")
            + "\n"
        )
    return 0


def _stdin_bytes() -> BinaryIO:
    # Bytes, not text: a value is sent exactly as it was read.
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    import io

    return io.BytesIO(sys.stdin.read().encode())


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        raw = stream.readline()
        if not raw:
            return
        yield raw.removesuffix(b"\n").removesuffix(b"\r")


def _more_ready(stream: BinaryIO) -> bool:
    """Whether more input is waiting (then the batch may grow); a stream that is not a file
    (tests) always has more until it ends."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return True
    try:
        ready, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _parse_line(
    raw: bytes,
    number: int,
    fmt: str,
    key: bytes | None,
    headers: list[tuple[str, bytes]],
) -> tuple[NewRecord, int | None]:
    if fmt == "text":
        return NewRecord(value=raw, key=key, headers=headers), None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"stdin line {number}: not JSON ({error})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"stdin line {number}: expected a JSON object, got {type(doc).__name__}")
    unknown = set(doc) - {"key", "value", "headers", "partition"}
    if unknown:
        raise UsageError(f"stdin line {number}: unknown field(s) {', '.join(sorted(unknown))}")
    merged: dict[str, bytes | None] = dict(headers)
    line_headers = doc.get("headers") or {}
    if not isinstance(line_headers, dict):
        raise UsageError(f"stdin line {number}: headers must be a JSON object")
    merged.update({str(k): _json_bytes(v) for k, v in line_headers.items()})
    partition = doc.get("partition")
    if partition is not None and (not isinstance(partition, int) or isinstance(partition, bool)):
        raise UsageError(f"stdin line {number}: partition must be an integer")
    record = NewRecord(
        value=_json_bytes(doc.get("value")),
        key=_json_bytes(doc["key"]) if "key" in doc else key,
        headers=list(merged.items()),
    )
    return record, partition


def _json_bytes(value: Any) -> bytes | None:
    """A JSON value as record bytes: a string's UTF-8, null as null, anything else its JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``Utils.murmur2``), as an unsigned 32-bit value."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    extra = length % 4
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def _default_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a key: ``toPositive(murmur2(key)) % partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- consume -----------------------------------------------------------------------------------

MAX_WAIT_MS = 500
"""Longest a Fetch waits at the broker for new records."""


def consume(args: argparse.Namespace, client: Client) -> int:
    """``kafscale consume``: print records until --count or --timeout."""
    if args.count is not None and args.count <= 0:
        return 0
    info = client.topic(args.topic)
    parts = sorted(set(args.partition)) if args.partition else sorted(info.partitions)
    for p in parts:
        if p not in info.partitions:
            raise KafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {_q(args.topic)} partition {p}"
            )
    tps = [(info.name, p) for p in parts]
    positions = _start_positions(args, client, tps)
    started = dict(positions)

    def commit() -> None:
        moved = {tp: o for tp, o in positions.items() if o != started[tp]}
        if args.group and moved:
            client.commit_offsets(args.group, moved)

    try:
        _consume_loop(args, client, info, tps, positions)
    except BaseException:
        # Interrupted (Ctrl-C) or failed: still commit what was printed, but report the
        # original failure rather than one of the commit.
        with contextlib.suppress(AdminError):
            commit()
        raise
    commit()
    return 0


def _consume_loop(
    args: argparse.Namespace,
    client: Client,
    info: TopicInfo,
    tps: list[tuple[str, int]],
    positions: dict[tuple[str, int], int],
) -> None:
    """Fetch from each leader in turn and print, until --count records or --timeout idle
    seconds; ``positions`` follows what was printed."""
    topic_ids = {info.name: info.topic_id}
    fmt = "json" if args.json else args.format  # --json: JSON lines, as --format json
    printed = 0
    last_record = time.monotonic()
    leaders = client._by_leader(tps)
    failures = 0
    while args.count is None or printed < args.count:
        idle = time.monotonic() - last_record
        if args.timeout is not None and idle >= args.timeout:
            return
        wait = MAX_WAIT_MS
        if args.timeout is not None:
            wait = max(0, min(wait, int((args.timeout - idle) * 1000)))
        stale = False
        printed_before = printed
        for leader, owned in leaders.items():
            # Once this round printed something, the other leaders are not waited on.
            answers = client.fetch(
                leader,
                {tp: positions[tp] for tp in owned},
                topic_ids,
                max_wait_ms=0 if printed > printed_before else wait,
            )
            for answer in answers:
                tp = (info.name, answer.partition)
                if tp not in positions:
                    continue
                if answer.error_code:
                    error = KafkaError(
                        answer.error_code, f"topic {_q(info.name)} partition {answer.partition}"
                    )
                    failures += 1
                    if not error.retriable or failures >= client.attempts:
                        raise error
                    stale = True
                    continue
                for record in _records(answer.records, positions, tp):
                    _print_record(fmt, info.name, answer.partition, record)
                    printed += 1
                    last_record = time.monotonic()
                    if args.count is not None and printed >= args.count:
                        return
        if stale:
            time.sleep(client.backoff)
            leaders = client._by_leader(tps)
        else:
            failures = 0


def _start_positions(
    args: argparse.Namespace, client: Client, tps: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    if args.start == "latest":
        return {tp: a.offset for tp, a in client.list_offsets({tp: LATEST for tp in tps}).items()}
    if isinstance(args.start, int):
        return {tp: args.start for tp in tps}
    committed = client.committed_offsets(args.group) if args.group and args.start is None else {}
    missing = [tp for tp in tps if tp not in committed]
    earliest = client.list_offsets({tp: EARLIEST for tp in missing}) if missing else {}
    return {tp: committed[tp] if tp in committed else earliest[tp].offset for tp in tps}


_CONTROL = 0x20


def _records(
    data: bytes, positions: dict[tuple[str, int], int], tp: tuple[str, int]
) -> Iterator[Record]:
    """The records of a Fetch answer at or after the partition's position (which moves past
    every whole batch, control batches included); a partial last batch is left for later."""
    pos = 0
    while len(data) - pos >= 17:
        size = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True) + 12
        if size < 12 or pos + size > len(data):
            break
        batch = memoryview(data)[pos : pos + size]
        pos += size
        if batch[16] != 2:
            raise AdminError(
                f"topic {_q(tp[0])} partition {tp[1]}: a message format v0/v1 batch; "
                "this client reads record batch v2 only"
            )
        if size < RECORD_BATCH_OVERHEAD:
            raise AdminError(
                f"topic {_q(tp[0])} partition {tp[1]}: a record batch of {size} bytes"
                f" (shorter than its {RECORD_BATCH_OVERHEAD}-byte header)"
            )
        base = int.from_bytes(batch[0:8], "big", signed=True)
        last_delta = int.from_bytes(batch[23:27], "big", signed=True)
        attributes = int.from_bytes(batch[21:23], "big")
        if not attributes & _CONTROL:
            try:
                records = list(iter_records(batch))
            except (ProtocolError, CompressedBatchError) as e:  # corrupt, or unknown codec
                raise AdminError(f"topic {_q(tp[0])} partition {tp[1]}: {e}") from None
            for r in records:
                if r.offset < positions[tp]:
                    continue  # a compressed batch starts before the position asked for
                positions[tp] = r.offset + 1
                yield r
        positions[tp] = max(positions[tp], base + last_delta + 1)


def _print_record(fmt: str, topic: str, partition: int, r: Record) -> None:
    if fmt == "text":
        output.write(_text(r.value) + "\n")
        return
    output.write(
        output.line(
            {
                "topic": topic,
                "partition": partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": None if r.key is None else _text(r.key),
                "value": None if r.value is None else _text(r.value),
                "headers": {k: None if v is None else _text(v) for k, v in r.headers},
            }
        )
    )


def _text(data: memoryview | None) -> str:
    return "" if data is None else str(data, "utf-8", errors="replace")
