"""The one error type of the protocol layer."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Bytes or objects that do not follow the Kafka wire format.

    Decoding and encoding raise only this (never ``IndexError``, ``struct.error`` or
    ``UnicodeDecodeError``). ``message`` names the Kafka message and version, ``field`` the
    dotted path of the field (``Topics[3].Partitions[0].ReplicaNodes``) and ``offset`` the byte
    offset into the decoded buffer where the problem starts, when they are known.
    """

    def __init__(
        self,
        reason: str,
        *,
        message: str | None = None,
        field: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.reason = reason
        self.message = message
        self.field = field
        self.offset = offset
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.message:
            where.append(self.message)
        if self.field:
            where.append(f"field {self.field}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason
