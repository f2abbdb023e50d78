"""What the console's cluster page shows of brokers that cannot be asked (issue 13, item 2).

The serving broker asks every other broker's ``/readyz`` (and ``/api/rates``) at the HTTP
address its registration advertises (:meth:`kafscale.broker.ops_api.ClusterView._peers_json`).
A broker with no HTTP port, one whose port refuses connections and one that accepts but never
answers each come back as a reason, within the peer timeout, without failing the others; the
page then shows its readiness as unknown with that reason (:func:`_readiness`). The answers of
live brokers are covered by tests/conformance/test_console.py against a real cluster.
"""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web

from kafscale.broker import ops_api
from kafscale.broker.cluster import BrokerInfo
from kafscale.broker.ops_api import ClusterView, _readiness


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def test_peers_that_cannot_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_api, "PEER_TIMEOUT_S", 0.5)

    async def main() -> None:
        async def ready(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "ready": False,
                    "reason": "draining: the broker is shutting down",
                    "checks": {"object_store": {"state": "healthy"}},
                },
                status=503,
            )

        release = asyncio.Event()

        async def stalled(request: web.Request) -> web.Response:
            await release.wait()  # past the peer timeout: until the test is done
            return web.json_response({})

        good = web.Application()
        good.router.add_get("/readyz", ready)
        slow = web.Application()
        slow.router.add_get("/readyz", stalled)
        (good_runner, good_port), (slow_runner, slow_port) = await serve(good), await serve(slow)
        try:
            me = SimpleNamespace(config=SimpleNamespace(broker_id=0))
            view = ClusterView(cast(Any, me))
            brokers = {
                0: BrokerInfo(0, "127.0.0.1", 9092, "127.0.0.1:9093"),  # this one: not asked
                1: BrokerInfo(1, "127.0.0.1", 9094, ""),
                2: BrokerInfo(2, "127.0.0.1", 9096, f"127.0.0.1:{closed_port()}"),
                3: BrokerInfo(3, "127.0.0.1", 9098, f"127.0.0.1:{slow_port}"),
                4: BrokerInfo(4, "127.0.0.1", 9100, f"127.0.0.1:{good_port}"),
            }
            started = time.monotonic()
            answers = await view._peers_json(brokers, "/readyz")
            took = time.monotonic() - started
        finally:
            release.set()
            await good_runner.cleanup()
            await slow_runner.cleanup()
        assert sorted(answers) == [1, 2, 3, 4]
        assert took < 2.0, f"peers asked one after another, or unbounded: {took:.2f}s"
        shown = {broker_id: _readiness(answer) for broker_id, answer in answers.items()}
        assert shown[1] == {"ready": None, "reason": "no HTTP port advertised", "object_store": ""}
        assert shown[2]["ready"] is None and "did not answer" in shown[2]["reason"], shown[2]
        assert shown[3]["ready"] is None and "TimeoutError" in shown[3]["reason"], shown[3]
        assert shown[4] == {
            "ready": False,
            "reason": "draining: the broker is shutting down",
            "object_store": "healthy",
        }

    asyncio.run(main())


def test_registration_advertises_http() -> None:
    """A broker's registration names its HTTP address: the bound port, and the advertised
    Kafka host when it listens on every address."""
    from kafscale.broker.config import BrokerConfig
    from kafscale.broker.http import HttpServer

    config = BrokerConfig(advertised_host="broker-0.example", listen_port=9092)
    broker = SimpleNamespace(config=config, cluster=SimpleNamespace(http_address=""))
    for host, want in (
        ("127.0.0.1", "127.0.0.1:9193"),
        ("0.0.0.0", "broker-0.example:9193"),
        ("::1", "[::1]:9193"),
    ):
        server = HttpServer(cast(Any, broker), host, 9193)  # not started: the bound port
        assert server.advertised() == want, host
