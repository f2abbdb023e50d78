"""The broker's HTTP port (``--http-listen``, default 127.0.0.1:9093): health, metrics, and
the read-only JSON API the web console reads.

Served with aiohttp on the broker's own event loop, started first and stopped last by the
broker (so ``/healthz`` answers while it starts and ``/readyz`` says why it is not ready while
it starts or drains). Routes:

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process serves HTTP at all;
- ``GET /readyz``: 200 when ready, else 503; both with the checks as JSON
  (:class:`kafscale.broker.health.Readiness`);
- ``GET /metrics``: Prometheus text exposition, or OpenMetrics when the ``Accept`` header asks
  for ``application/openmetrics-text``;
- ``GET /api/cluster``, ``/api/topics``, ``/api/topics/{name}``, ``/api/groups``,
  ``/api/groups/{group}``, ``/api/rates[?seconds=N]``, ``/api/cluster/rates[?seconds=N]``
  (every broker's): see :mod:`kafscale.broker.ops_api`;
- ``GET /``: the web console (static files of ``kafscale/broker/console/``, served under
  ``/console/``), a read-only page over the ``/api`` answers.

A scrape first refreshes what the lag collector needs (when lag is due to be rendered again)
and runs the readiness checks (both bounded in time), then renders the registry without
awaiting anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kafscale.broker.ops_api import ClusterView
from kafscale.broker.periodic import stop_task
from kafscale.broker.startup import BrokerStartError
from kafscale.metadata import MetadataUnavailable, StoreClosed
from kafscale.storage import ObjectStoreError

if TYPE_CHECKING:
    from kafscale.broker.server import Broker

log = logging.getLogger("kafscale.http")

RATE_TICK_S = 1.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONSOLE_DIR = Path(__file__).with_name("console")
"""The web console's static files (package data: an installed wheel has them)."""
CONSOLE_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
# The console inserts cluster data (topic names, client ids: anyone's input) into the page as
# text only; the policy is the second line of defence: no inline or foreign script, no
# framing, requests to this origin only.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class HttpServer:
    """The HTTP port of one broker."""

    def __init__(self, broker: Broker, host: str, port: int) -> None:
        self.broker = broker
        self.host = host
        self.port = port
        """The bound port once started (the configured one may be 0)."""
        self.view = ClusterView(broker)
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors_as_json])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/cluster", self.api_cluster)
        app.router.add_get("/api/topics", self.api_topics)
        app.router.add_get("/api/topics/{name}", self.api_topic)
        app.router.add_get("/api/groups", self.api_groups)
        app.router.add_get("/api/groups/{group}", self.api_group)
        app.router.add_get("/api/rates", self.api_rates)
        app.router.add_get("/api/cluster/rates", self.api_cluster_rates)
        app.router.add_get("/", self.console_index)
        app.router.add_get("/console/{file}", self.console_file)
        return app

    async def start(self) -> int:
        """Listen; the bound port (:class:`BrokerStartError` when the address is taken)."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:  # taken, or not an address of this host: the user's setting
            await runner.cleanup()
            where = f"{self.host}:{self.port}"
            raise BrokerStartError(f"http-listen {where}: {e.strerror or e}") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:
            self.port = runner.addresses[0][1]
        self.broker.cluster.http_address = self.advertised()
        self._ticker = asyncio.create_task(self._tick(), name="kafscale-rates")
        log.info("HTTP on %s:%d (/healthz /readyz /metrics /api)", self.host, self.port)
        return self.port

    def advertised(self) -> str:
        """``host:port`` other brokers reach this port at: the bound host, or the broker's
        advertised Kafka host when bound to every address."""
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = self.broker.config.advertised[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def close(self) -> None:
        if self._ticker is not None:
            await stop_task(self._ticker)
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tick(self) -> None:
        """One rate sample a second, at whole seconds of the loop's clock (no drift)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + RATE_TICK_S
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += RATE_TICK_S
            if next_at < loop.time():  # the loop stalled: skip, do not catch up
                next_at = loop.time() + RATE_TICK_S
            self.broker.metrics.rates.tick()

    # --- health ----------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "broker_id": self.broker.config.broker_id})

    async def readyz(self, request: web.Request) -> web.Response:
        report = await self.broker.readiness.check()
        return web.json_response(report.to_json(), status=200 if report.ready else 503)

    # --- metrics ---------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        broker = self.broker
        started = time.perf_counter()
        if not broker.draining and broker.metrics.lag_due():
            await broker.lag.refresh()
        await broker.readiness.check()
        body, content_type = broker.metrics.exposition(request.headers.get("Accept", ""))
        broker.metrics.scrape_seconds.observe(time.perf_counter() - started)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    # --- the console's API -----------------------------------------------------------------

    async def api_cluster(self, request: web.Request) -> web.Response:
        return _json(await self.view.cluster())

    async def api_topics(self, request: web.Request) -> web.Response:
        return _json(await self.view.topics())

    async def api_topic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        topic = await self.view.topics(name)
        if topic is None:
            return _json({"error": f"no topic {name!r}"}, status=404)
        return _json(topic)

    async def api_groups(self, request: web.Request) -> web.Response:
        return _json(await self.view.groups())

    async def api_group(self, request: web.Request) -> web.Response:
        group_id = request.match_info["group"]
        group = await self.view.groups(group_id)
        if group is None:
            return _json({"error": f"no group {group_id!r}"}, status=404)
        return _json(group)

    async def api_rates(self, request: web.Request) -> web.Response:
        return _json(self.view.rates(_seconds(request)))

    async def api_cluster_rates(self, request: web.Request) -> web.Response:
        return _json(await self.view.cluster_rates(_seconds(request)))

    # --- the console -----------------------------------------------------------------------

    async def console_index(self, request: web.Request) -> web.Response:
        return _console_file("index.html")

    async def console_file(self, request: web.Request) -> web.Response:
        return _console_file(request.match_info["file"])


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A failure answers JSON, not aiohttp's HTML: 503 when a store did not answer (the
    console retries), 500 (logged) for anything else."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (MetadataUnavailable, StoreClosed, ObjectStoreError, TimeoutError) as e:
        return _json({"error": f"{type(e).__name__}: {e}"}, status=503)
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return _json({"error": f"{type(e).__name__}: {e}"}, status=500)


def _console_file(name: str) -> web.Response:
    """One of the console's files (a name of :data:`CONSOLE_DIR`, no path), never cached
    (an upgraded broker serves its own console at once)."""
    path = CONSOLE_DIR / name
    kind = CONSOLE_TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        return _json({"error": f"no console file {name!r}"}, status=404)
    response = web.Response(body=path.read_bytes(), content_type=kind, charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = CONSOLE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _seconds(request: web.Request) -> int | None:
    """The rates' ``?seconds=N`` (None when absent); 400 with a JSON error when not an
    integer."""
    if "seconds" not in request.query:
        return None
    try:
        return int(request.query["seconds"])
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "seconds: expected an integer"}),
            content_type="application/json",
        ) from None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)
