"""Errors of the admin commands, and Kafka error names.

Every failure a command reports is an :class:`AdminError`: its text is the one line printed
after ``kafscale: error:`` and :attr:`AdminError.exit_status` the command's exit status.
"""

from __future__ import annotations

from generated.errors import RETRIABLE as _KAFKA_RETRIABLE
from generated.errors import ErrorCode
from generated.errors import error_name as _kafka_name


def error_name(code: int) -> str:
    """Kafka's name of an error code (``UNKNOWN_TOPIC_OR_PARTITION`` for 3)."""
    return _kafka_name(code) or f"UNKNOWN_ERROR_CODE_{code}"


RETRIABLE: frozenset[int] = frozenset(_KAFKA_RETRIABLE - {ErrorCode.UNKNOWN_TOPIC_OR_PARTITION})
"""Errors worth the same request again after a short wait and fresh metadata: those Kafka's
clients retry (generated/errors.py), but for UNKNOWN_TOPIC_OR_PARTITION: a command naming a
topic that does not exist should say so at once."""

EXIT_ERROR = 1
"""Exit status of a Kafka error or a broker that cannot be reached."""
EXIT_USAGE = 2
"""Exit status of bad input (as every other ``kafscale`` command's user error)."""


class AdminError(Exception):
    """A failure a command reports as one line; ``exit_status`` is what the command returns."""

    exit_status = EXIT_ERROR


class UsageError(AdminError):
    """Bad input (an argument or a line on stdin): exit status 2."""

    exit_status = EXIT_USAGE


class BrokerUnreachable(AdminError):
    """No connection to a broker, or it closed or timed out mid-request."""


class UnsupportedApi(AdminError):
    """The broker does not serve an API (or no version of it this client can use)."""


class KafkaError(AdminError):
    """A Kafka error code in an answer; ``context`` says what it is about (``topic "x"``)."""

    def __init__(self, code: int, context: str, message: str | None = None) -> None:
        self.code = int(code)
        self.context = context
        self.message = message
        text = f"{context}: {error_name(code)} ({self.code})"
        if message:
            text += f": {message}"
        super().__init__(text)

    @property
    def retriable(self) -> bool:
        """Whether the same request may succeed later (see :data:`RETRIABLE`)."""
        return self.code in RETRIABLE


def check(code: int, context: str, message: str | None = None) -> None:
    """Raise :class:`KafkaError` for a non-zero ``code``."""
    if code:
        raise KafkaError(code, context, message)
