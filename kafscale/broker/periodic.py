"""A background task that runs a step every few seconds until it is closed, and
:func:`stop_task`, how every background task of the broker is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any


class Periodic:
    """Calls ``step()`` every ``interval`` seconds in a task of its own; a step that fails is
    logged and the next one runs as usual (background work must outlive any one failure)."""

    def __init__(
        self,
        name: str,
        interval: float,
        step: Callable[[], Awaitable[object]],
        log: logging.Logger,
        what: str,
    ) -> None:
        self.name = name
        self.what = what
        self.interval = interval
        self.step = step
        self.log = log
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.step()
            except Exception:
                self.log.warning("%s failed", self.what, exc_info=True)


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again while it has not:
    Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives as the awaited
    thing completes, and a loop around it then never ends (a broker that did not exit after
    SIGTERM, seen in CI: its marker writer's loop). Its outcome is not raised. A task
    stopping itself is only cancelled (waiting for itself would never end)."""
    if task is asyncio.current_task():
        task.cancel()
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """:func:`stop_task` for each of ``tasks`` (None skipped), all cancelled first so that
    they wind down together."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        await stop_task(task)
