"""kafscale.broker.periodic.stop_task: a task that swallows a cancellation still ends (as a
loop around Python 3.11's asyncio.wait_for can)."""

from __future__ import annotations

import asyncio
import contextlib

from kafscale.broker.periodic import stop_task, stop_tasks


def test_a_loop_that_swallows_the_first_cancellation_is_stopped() -> None:
    async def scenario() -> int:
        swallowed = 0

        async def loop() -> None:
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed += 1  # as wait_for does when its future completes meanwhile

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_task(task), 5)
        assert task.done()
        return swallowed

    assert asyncio.run(scenario()) == 1


def test_a_task_already_failed_or_done_is_not_raised() -> None:
    async def scenario() -> None:
        async def fail() -> None:
            raise RuntimeError("boom")

        task = asyncio.create_task(fail())
        await asyncio.sleep(0)
        await stop_task(task)  # its error is not raised here
        assert task.done()

    asyncio.run(scenario())


def test_stop_tasks_ends_each_even_one_that_swallows_a_cancellation() -> None:
    async def scenario() -> list[bool]:
        async def stubborn() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)  # the first cancellation is swallowed
            await asyncio.sleep(10)

        tasks = [asyncio.create_task(stubborn()), asyncio.create_task(asyncio.sleep(10))]
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_tasks([tasks[0], None, tasks[1]]), 5)
        return [t.done() for t in tasks]

    assert asyncio.run(scenario()) == [True, True]


def test_a_task_stopping_itself_is_cancelled_without_waiting_for_itself() -> None:
    async def scenario() -> bool:
        async def closes_itself() -> None:
            await stop_task(asyncio.current_task())  # type: ignore[arg-type]
            await asyncio.sleep(10)  # the cancellation lands here

        task = asyncio.create_task(closes_itself())
        await asyncio.wait([task], timeout=5)
        return task.cancelled()

    assert asyncio.run(scenario())
