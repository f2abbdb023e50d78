"""What a running broker is doing, on request: ``kill -USR1 <pid>`` logs the stack of every
asyncio task and every thread (as a JVM's ``kill -3`` prints its threads).

For a broker that hangs, for example one that does not exit after SIGTERM: the tasks' stacks
say what each is awaiting, which a thread dump alone (py-spy, faulthandler) cannot, since an
idle event loop shows only its selector.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import logging
import sys
from typing import Any

log = logging.getLogger("kafscale.diagnostics")

MAX_DEPTH = 40
"""Frames shown per task (an await chain deeper than this is cut)."""


def task_stacks() -> str:
    """Every asyncio task of the running loop, each with its await chain: the frames from its
    coroutine down to what it waits for (``Task.print_stack`` shows only the outermost frame
    of a suspended task)."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out.write(f"{len(tasks)} asyncio tasks\n")
    for task in tasks:
        out.write(f"--- {task.get_name()}\n")
        awaited: Any = task.get_coro()
        for _ in range(MAX_DEPTH):
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                break
            code = frame.f_code
            out.write(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}\n")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        if awaited is not None and type(awaited).__name__ != "FutureIter":
            out.write(f"  waiting for {awaited!r:.300}\n")
    return out.getvalue()


def dump() -> None:
    """Log the asyncio tasks' stacks, then write every thread's stack to stderr."""
    log.warning("diagnostics (SIGUSR1):\n%s", task_stacks())
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
