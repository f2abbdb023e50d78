"""A background task that runs a step every few seconds until it is closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


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
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.step()
            except Exception:
                self.log.warning("%s failed", self.what, exc_info=True)
