"""What a broker process that does not exit was doing (the harnesses' stop timeouts)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

MARK = "diagnostics (SIGUSR1):"
DUMP_LINES = 400


def ask_for_dump(proc: subprocess.Popen[bytes], log: Path, timeout: float = 5.0) -> str | None:
    """``kill -USR1`` the broker (:mod:`kafscale.broker.diagnostics`) and wait until its log
    holds the dump: the tasks' log record, then faulthandler's threads (the first thread's
    header, "most recent call first", then half a second for the rest). The dump, or None
    when none came within ``timeout`` seconds (or the process ended)."""
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if "most recent call first" in _dump(log):
            time.sleep(0.5)
            return _dump(log)
        time.sleep(0.1)
    return None


def kill_and_describe(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Ask the broker for its tasks' and threads' stacks, then SIGKILL it; the dump (its
    first :data:`DUMP_LINES` lines)."""
    if proc.poll() is None:
        ask_for_dump(proc, log)
        proc.kill()
    proc.wait()
    dump = _dump(log)
    if not dump:
        return "(the broker wrote no diagnostics on SIGUSR1)"
    return "\n".join(dump.splitlines()[:DUMP_LINES])


def _dump(log: Path) -> str:
    """The last dump in ``log`` (from its mark to the end), or ""."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return MARK + text.split(MARK)[-1] if MARK in text else ""
