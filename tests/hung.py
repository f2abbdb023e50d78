"""What a broker process that does not exit was doing (the harnesses' stop timeouts)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

MARK = "diagnostics (SIGUSR1):"
DUMP_LINES = 400


def kill_and_describe(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Ask the broker for its tasks' and threads' stacks (``kill -USR1``,
    :mod:`kafscale.broker.diagnostics`), then SIGKILL it; the dump from its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        # The dump is one log record then faulthandler's threads, written at once: wait for
        # the threads' part (its last line names the main thread) or a few seconds.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace") if log.exists() else ""
            if MARK in text and "most recent call first" in text.split(MARK)[-1]:
                time.sleep(0.5)
                break
            time.sleep(0.1)
        proc.kill()
    proc.wait()
    text = log.read_text(errors="replace") if log.exists() else ""
    if MARK not in text:
        return "(the broker wrote no diagnostics on SIGUSR1)"
    lines = (MARK + text.split(MARK)[-1]).splitlines()
    return "\n".join(lines[:DUMP_LINES])
