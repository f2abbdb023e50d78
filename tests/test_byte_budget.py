"""kafscale.broker.budget.ByteBudget: the broker-wide budget of request bytes being processed,
and of compactions in progress."""

from __future__ import annotations

import asyncio

from kafscale.broker.budget import ByteBudget


def test_a_request_waits_until_enough_is_released() -> None:
    async def scenario() -> None:
        budget = ByteBudget(100)
        await budget.acquire(60)
        big = asyncio.ensure_future(budget.acquire(50))  # 110 > 100: waits
        await asyncio.sleep(0.01)
        assert not big.done()
        await budget.acquire(10)  # fits beside what is taken: at once
        await budget.release(60)
        await asyncio.wait_for(big, 1)
        assert budget.used == 60
        await budget.release(50)
        await budget.release(10)
        assert budget.used == 0

    asyncio.run(scenario())


def test_one_request_larger_than_the_budget_takes_all_of_it() -> None:
    async def scenario() -> None:
        budget = ByteBudget(100)
        await asyncio.wait_for(budget.acquire(1000), 1)
        assert budget.used == 100
        waiting = asyncio.ensure_future(budget.acquire(1))
        await asyncio.sleep(0)
        assert not waiting.done()
        await budget.release(1000)
        await asyncio.wait_for(waiting, 1)
        assert budget.used == 1

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_fast_path_open() -> None:
    async def scenario() -> None:
        budget = ByteBudget(10)
        await budget.acquire(10)
        waiting = asyncio.ensure_future(budget.acquire(5))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await budget.release(10)
        await asyncio.wait_for(budget.acquire(10), 1)  # at once: nobody queues any more
        assert budget.used == 10

    asyncio.run(scenario())
