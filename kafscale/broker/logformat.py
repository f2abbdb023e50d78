"""How the broker's log lines look: text (the default) or one JSON object per line.

``--log-format json`` is for log pipelines (Loki, Elasticsearch, CloudWatch): every line is a
JSON object with ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``broker``
(the broker id), ``message``, and ``exc_info`` (the formatted traceback) when there is one. A
line never spans lines: newlines inside a message or traceback are escaped by JSON.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, broker_id: int) -> None:
        super().__init__()
        self.broker_id = broker_id

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "broker": self.broker_id,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str, broker_id: int) -> None:
    """Send the process's log records to stderr at ``level``, as text or JSON lines
    (replacing any handlers set before: one format per process)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(broker_id))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
