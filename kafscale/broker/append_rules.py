"""What a topic's configs do to a produced batch before it is appended (sans-io), as Kafka's
``LogValidator`` does for a client's batch:

- **message.timestamp.before.max.ms / after.max.ms** (and the deprecated
  message.timestamp.difference.max.ms where those keep their default), CreateTime topics only:
  a record whose timestamp (not -1) is further from the broker's clock refuses the whole batch
  with INVALID_TIMESTAMP (32), "One or more records have been rejected due to invalid
  timestamp", and one record error per such record (Produce v8+ RecordErrors: its index and
  Kafka's text). A LogAppendTime topic refuses a batch whose producer set the LogAppendTime
  type itself, as Kafka does.
- **compression.type** other than ``producer``: a batch in another codec is re-compressed
  into the topic's (``uncompressed``: decompressed), at the topic's compression level.
- **message.timestamp.type=LogAppendTime**: the batch gets the LogAppendTime type and the
  broker's clock as its max timestamp (the CRC is recomputed; records keep their deltas, and
  readers take the max timestamp as every record's timestamp). The Produce response carries
  that time (LogAppendTimeMs).
- **max.message.bytes** is checked on the batch as sent (``parse_batches``) and again after
  re-compression (MESSAGE_TOO_LARGE), as Kafka checks both.

Batches are rewritten only when a rule asks for it; otherwise their bytes are stored as sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from generated.errors import ErrorCode
from kafscale.broker.topic_configs import LONG_MAX, AppendRules
from kafscale.protocol.records import (
    NO_TIMESTAMP,
    BatchInfo,
    CompressedBatchError,
    RecordError,
    TimestampType,
    iter_records,
    parse_batches,
    rewrite_batch,
)
from kafscale.protocol.wire import Buffer


class TimestampError(RecordError):
    """A batch refused with INVALID_TIMESTAMP; ``record_errors``: (record index, message)."""

    def __init__(self, record_errors: list[tuple[int, str]]) -> None:
        super().__init__(
            "One or more records have been rejected due to invalid timestamp",
            ErrorCode.INVALID_TIMESTAMP,
        )
        self.record_errors = record_errors


@dataclass(frozen=True)
class Applied:
    data: Buffer
    """The batches to append (the ones sent when no rule changed them)."""
    log_append_time: int
    """The time stamped on them (-1: CreateTime, as Kafka answers)."""


def apply(data: Buffer, rules: AppendRules, now: int) -> Applied:
    """Check and rewrite the produced ``data`` (validated batches) as the topic's ``rules``
    ask; raises :class:`RecordError` (:class:`TimestampError` for timestamps)."""
    if not rules.rewrites:
        return Applied(data, -1)
    batches = parse_batches(data, rules.max_batch_bytes, produce=True)
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    out: list[bytes] = []
    changed = False
    for batch in batches:
        raw = view[batch.position : batch.end]
        _check_timestamps(raw, batch, rules, now)
        codec = rules.compression
        if codec is not None and codec == batch.compression:
            codec = None
        stamp = rules.log_append_time
        if codec is None and not stamp:
            out.append(bytes(raw))
            continue
        try:
            rewritten = rewrite_batch(
                raw,
                compression=codec,
                level=rules.level,
                timestamp_type=TimestampType.LOG_APPEND_TIME if stamp else None,
                max_timestamp=now if stamp else None,
            )
        except CompressedBatchError as e:
            raise RecordError(f"cannot re-compress the batch: {e}") from None
        if len(rewritten) > rules.max_batch_bytes:
            raise RecordError(
                f"the batch is {len(rewritten)} bytes once compressed as the topic's "
                f"compression.type, more than the {rules.max_batch_bytes} allowed "
                "(max.message.bytes)",
                ErrorCode.MESSAGE_TOO_LARGE,
            )
        out.append(rewritten)
        changed = True
    return Applied(b"".join(out) if changed else data, now if rules.log_append_time else -1)


def _check_timestamps(raw: memoryview, batch: BatchInfo, rules: AppendRules, now: int) -> None:
    """Kafka's LogValidator.validateTimestamp of every record of one batch."""
    if rules.log_append_time:
        if batch.timestamp_type == TimestampType.LOG_APPEND_TIME:
            errors = [
                (
                    i,
                    f"Invalid timestamp type in message {_describe(r)}. Producer should not set "
                    "timestamp type to LogAppendTime.",
                )
                for i, r in enumerate(_records(raw))
            ]
            raise TimestampError(errors)
        return
    before, after = rules.before_max_ms, rules.after_max_ms
    if before == LONG_MAX and after == LONG_MAX:
        return
    errors = []
    for i, r in enumerate(_records(raw)):
        if r.timestamp == NO_TIMESTAMP:
            continue
        if (before != LONG_MAX and now - r.timestamp > before) or (
            after != LONG_MAX and r.timestamp - now > after
        ):
            errors.append(
                (
                    i,
                    f"Timestamp {r.timestamp} of message with offset {r.offset} is out of range. "
                    f"The timestamp should be within [{_long(now - before)}, "
                    f"{_long(now + after)}]",
                )
            )
    if errors:
        raise TimestampError(errors)


def _long(n: int) -> int:
    """``n`` as a Java long computes it (wrapping), for Kafka's message text."""
    return (n + 2**63) % 2**64 - 2**63


def _records(raw: memoryview) -> list[_Rec]:
    try:
        return [
            _Rec(
                r.offset,
                r.timestamp,
                0 if r.key is None else len(r.key),
                0 if r.value is None else len(r.value),
            )
            for r in iter_records(raw)
        ]
    except CompressedBatchError as e:
        raise RecordError(f"cannot decompress the batch: {e}") from None


@dataclass(frozen=True)
class _Rec:
    offset: int
    timestamp: int
    key_size: int
    value_size: int


def _describe(r: _Rec) -> str:
    """Kafka's DefaultRecord.toString."""
    return (
        f"DefaultRecord(offset={r.offset}, timestamp={r.timestamp}, key={r.key_size} bytes, "
        f"value={r.value_size} bytes)"
    )
