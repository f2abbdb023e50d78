"""Output of the admin commands: aligned tables and ``KEY  value`` blocks, or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


def cell(value: object) -> str:
    """A value as a table cell: ``-`` for None, ``a,b`` for a sequence, ``true``/``false``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, two spaces apart; one line per row, ending with a
    newline (just the header line when there are no rows)."""
    cells = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``KEY  value`` lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "".join(f"{k.ljust(width)}  {cell(v)}".rstrip() + "\n" for k, v in pairs)


def dumps(doc: Any) -> str:
    """A JSON document, indented, ending with a newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def line(doc: Any) -> str:
    """One JSON document on one line (JSON lines), ending with a newline."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


def write(text: str, out: TextIO | None = None) -> None:
    """Write ``text`` to stdout (looked up now: tests capture it) and flush, so that a pipe
    sees each line as it is produced."""
    stream = sys.stdout if out is None else out
    stream.write(text)
    stream.flush()
