"""The operator under kopf's own runner against kmock's Kubernetes API emulator, for the
operator tests (tests/test_operator*.py).

:func:`operator_env` starts a ``kmock.KubernetesEmulator`` served over HTTP (Kubernetes'
bundled resources, plus our CRDs' kinds from ``generated/crds.py`` with their status
subresource), and ``kopf.operator()`` with the operator's registry
(:func:`kafscale.operator.handlers.build_registry`) logged in to it, cluster-wide and
standalone. The test talks to the emulator over HTTP (:class:`~kafscale.operator.kube.Kube`), so
every change is a watch event kopf sees, as it would from a real API server.

The emulator's limits shape the tests (see ../shared/notes/kubernetes-operator.md): it assigns
no ``resourceVersion``, ``uid``, ``generation`` or ``creationTimestamp`` (a test sends them and
bumps ``metadata.generation`` itself on a spec change), applies no defaults, validates nothing,
and collects no garbage (owner references are asserted, not followed). Since it never changes
an object's ``resourceVersion``, kopf's wait for its own patches to come back is cut short
(``consistency_timeout``), or it would pace every handler at 5 s.

Without kopf or kmock the tests skip with the reason, and fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import pytest

from generated.crds import KINDS
from kafscale.operator.kube import Kube, path
from kafscale.operator.resources import OperatorOptions
from kafscale.operator.spec import API_VERSION, CLUSTERS, TOPICS

T = TypeVar("T")
NAMESPACE = "ns1"


def require(module: str, why: str) -> ModuleType:
    """Import ``module``, or skip (fail under CI) saying what is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"{module} is not installed ({why}; pip install -e '.[test]'): {e}"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)


@dataclass
class Env:
    """A running emulator and operator."""

    emulator: Any
    url: str
    kube: Kube
    operator: asyncio.Task[None]

    def cluster_path(self, name: str | None = None, namespace: str = NAMESPACE) -> str:
        return path(API_VERSION, CLUSTERS, namespace, name)

    def topic_path(self, name: str | None = None, namespace: str = NAMESPACE) -> str:
        return path(API_VERSION, TOPICS, namespace, name)

    async def get(self, url_path: str) -> dict[str, Any]:
        obj = await self.kube.get(url_path)
        assert obj is not None, f"{url_path}: not found"
        return obj

    async def change_spec(self, url_path: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the spec and bump ``metadata.generation`` (the emulator does not)."""
        obj = await self.get(url_path)
        generation = int(obj["metadata"].get("generation", 1)) + 1
        return await self.kube.patch(
            url_path, {"metadata": {"generation": generation}, "spec": spec}
        )

    async def events(self, name: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        """Events about the object ``name``, oldest first."""
        answer = await self.kube._request("GET", path("v1", "events", namespace))
        items = (answer or {}).get("items") or []
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    async def check(self) -> None:
        if self.operator.done():
            self.operator.result()  # raises what stopped it
            raise AssertionError("the operator stopped")


def custom_resource(
    kind: str, name: str, spec: dict[str, Any], namespace: str = NAMESPACE
) -> dict[str, Any]:
    """A new custom resource as an API server would store it (the emulator fills nothing in)."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}-{time.monotonic_ns()}",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec,
    }


async def wait_for(
    probe: Callable[[], Awaitable[T]], timeout: float, what: str, env: Env | None = None
) -> T:
    """Poll ``probe`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if env is not None:
            await env.check()
        with contextlib.suppress(AssertionError):
            last = await probe()
            if last:
                return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s (last: {last!r})")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def operator_env(
    interval: float = 0.5, options: OperatorOptions | None = None
) -> AsyncIterator[Env]:
    """The emulator and the operator (see the module docstring), stopped on exit."""
    kmock = require("kmock", "the Kubernetes API emulator")
    kopf = require("kopf", "the operator's framework")
    from kafscale.operator.handlers import Settings, build_registry

    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        emulator.resources.load_bundled()
        for kind, d in KINDS.items():
            emulator.resources[f"{d['group']}/{d['version']}/{d['plural']}"] = {
                "kind": kind,
                "namespaced": d["namespaced"],
                "subresources": {"status"},
                "verbs": {"get", "list", "watch", "patch", "create", "delete", "update"},
            }
        url = str(emulator.url).rstrip("/")
        settings = Settings(
            options or OperatorOptions(),
            interval=interval,
            connection=kopf.ConnectionInfo(server=url),
        )
        registry = build_registry(settings)

        @kopf.on.startup(registry=registry)
        def emulator_settings(settings: Any, **_: Any) -> None:
            # kopf waits up to this long after each of its patches for the watch event that
            # carries the patched resourceVersion; the emulator never changes resourceVersion,
            # so every wait would run to the end (5 s by default) and pace every handler.
            settings.persistence.consistency_timeout = 0.05

        stop = asyncio.Event()
        task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                clusterwide=True,
                standalone=True,
                stop_flag=stop,
            )
        )
        kube = Kube(url)
        try:
            yield Env(emulator, url, kube, task)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
            await kube.close()
