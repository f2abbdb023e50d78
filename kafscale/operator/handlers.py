"""The kopf handlers: what runs when a KafscaleCluster or KafscaleTopic changes.

:func:`build_registry` registers them in a registry of their own (no module-level decorators:
importing this module changes nothing, and a test can run several operators in one process).

Clusters (:mod:`kafscale.operator.cluster` does the work): a pass on create, resume and every
spec change, and one every ``interval`` seconds (a kopf timer: status, drift repair and the
rolling restart's next step). Passes of one cluster never overlap (a lock per cluster), so two
passes cannot each delete a broker. No finalizer: the children go with the cluster through their
owner references.

Topics: a pass (:mod:`kafscale.operator.topics`, in a thread) on create, resume, every spec
change and every ``interval`` seconds (which also retries what failed: a cluster not up yet, an
unreachable broker). A delete handler, hence kopf's finalizer (``kafscale.io/finalizer``): with
``deletionPolicy: Delete`` it deletes the topic before the resource goes; with ``Retain`` (the
default) the topic stays.

A bad spec (invalid, an unknown cluster, fewer partitions, a config the broker refuses) becomes
``Ready=False`` with a reason, phase ``Failed`` (or ``Pending`` while the cluster is not there)
and one Warning event when it first appears; no handler raises for it, so kopf never retries it
in a loop: the next spec change or timer pass looks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from kafscale.admin.errors import AdminError
from kafscale.operator import topics
from kafscale.operator.cluster import Emit
from kafscale.operator.cluster import reconcile as reconcile_cluster
from kafscale.operator.kube import Kube, KubeError, path
from kafscale.operator.resources import Names, OperatorOptions
from kafscale.operator.spec import (
    API_VERSION,
    CLUSTER_KIND,
    CLUSTERS,
    GROUP,
    TOPIC_KIND,
    TOPICS,
    VERSION,
    Condition,
    InvalidSpec,
    condition,
    merge_conditions,
    validate,
)

log = logging.getLogger("kafscale.operator")

FINALIZER = "kafscale.io/finalizer"
ANNOTATION_PREFIX = "kafscale.io"
"""kopf keeps its bookkeeping (last handled spec, handler progress) in annotations under it."""


@dataclass
class Settings:
    """How the operator runs (``kafscale operator``'s options)."""

    options: OperatorOptions = field(default_factory=OperatorOptions)
    interval: float = 10.0
    """Seconds between timer passes (status, drift repair, rolling steps)."""
    connection: Any = None
    """A ``kopf.ConnectionInfo`` to use instead of the service account or kubeconfig (tests)."""


@dataclass
class _State:
    settings: Settings
    connection: Any = None
    kube: Kube | None = None
    session: aiohttp.ClientSession | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    warned: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Per object uid, the last Warning event posted (reason, message)."""

    def clients(self) -> tuple[Kube, aiohttp.ClientSession]:
        """The API client and the HTTP session for the brokers' /readyz (made in the loop)."""
        if self.kube is None:
            if self.connection is None:
                raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
            self.kube = Kube.from_connection_info(self.connection)
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return self.kube, self.session

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    def emitter(self, kube: Kube, obj: dict[str, Any]) -> Emit:
        """Posts events about ``obj``; a Warning the same as the last one about it is posted
        once (a bad spec is seen by every pass until it is fixed; passes started together
        both see the status from before either wrote it)."""
        key = str(obj["metadata"].get("uid") or obj["metadata"]["name"])

        async def emit(type_: str, reason: str, message: str) -> None:
            if type_ == "Warning":
                if self.warned.get(key) == (reason, message):
                    return
                self.warned[key] = (reason, message)
            await kube.event(obj, reason, message, type_)

        return emit

    async def close(self) -> None:
        if self.kube is not None:
            await self.kube.close()
            self.kube = None
        if self.session is not None:
            await self.session.close()
            self.session = None


def _status_patch(patch: kopf.Patch, old: Any, new: dict[str, Any]) -> None:
    """Write ``new`` into the status only when it differs (no write per timer tick)."""
    old = dict(old or {})
    if new != old:
        for key, value in new.items():
            if old.get(key) != value:
                patch.status[key] = value


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator."""
    registry = kopf.OperatorRegistry()
    state = _State(settings)
    interval = settings.interval

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        # Our events are posted by the handlers (named, on transitions only); kopf's own
        # per-handler "succeeded" events would be noise.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.reconnect_backoff = 1.0

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        info = state.settings.connection
        if info is None:
            info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        state.connection = info
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await state.close()

    # --- clusters ------------------------------------------------------------------------

    async def cluster_pass(body: kopf.Body, patch: kopf.Patch, roll: bool) -> None:
        kube, session = state.clients()
        obj = _plain(body)
        async with state.lock(obj["metadata"].get("uid") or obj["metadata"]["name"]):
            # The object as it is now: a timer's body can be one event old, and a pass from
            # an old spec (or writing an old observedGeneration back) would undo a newer one.
            meta = obj["metadata"]
            fresh = await kube.get(path(API_VERSION, CLUSTERS, meta["namespace"], meta["name"]))
            if fresh is None:
                return
            obj = fresh
            emit = state.emitter(kube, obj)
            try:
                result = await reconcile_cluster(
                    kube, obj, settings.options, emit, session, roll=roll
                )
            except (KubeError, aiohttp.ClientError) as e:
                raise kopf.TemporaryError(f"API server: {e}", delay=interval) from e
        _status_patch(patch, obj.get("status"), result.status)

    # Explicit ids: kopf keeps each handler's progress in an annotation named after its id,
    # and a nested function's default id (build_registry.<locals>...) is no valid key.
    @kopf.on.resume(GROUP, VERSION, CLUSTERS, id="cluster-resumed", registry=registry)
    @kopf.on.create(GROUP, VERSION, CLUSTERS, id="cluster-created", registry=registry)
    @kopf.on.update(GROUP, VERSION, CLUSTERS, field="spec", id="cluster-changed", registry=registry)
    async def cluster_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await cluster_pass(body, patch, roll=True)

    @kopf.timer(GROUP, VERSION, CLUSTERS, interval=interval, id="cluster-tick", registry=registry)
    async def cluster_tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        if body.meta.get("deletionTimestamp"):
            return
        await cluster_pass(body, patch, roll=True)

    # --- topics --------------------------------------------------------------------------

    async def topic_pass(body: kopf.Body, patch: kopf.Patch) -> None:
        kube = state.clients()[0]
        meta = body.meta
        fresh = await kube.get(path(API_VERSION, TOPICS, str(meta["namespace"]), str(meta["name"])))
        if fresh is None:  # deleted meanwhile
            return
        obj = fresh  # as it is now (see cluster_pass)
        old = dict(obj.get("status") or {})
        emit = state.emitter(kube, obj)
        _status_patch(patch, old, await _topic_status(kube, obj, settings.options, emit))

    @kopf.on.resume(GROUP, VERSION, TOPICS, id="topic-resumed", registry=registry)
    @kopf.on.create(GROUP, VERSION, TOPICS, id="topic-created", registry=registry)
    @kopf.on.update(GROUP, VERSION, TOPICS, field="spec", id="topic-changed", registry=registry)
    async def topic_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await topic_pass(body, patch)

    @kopf.timer(GROUP, VERSION, TOPICS, interval=interval, id="topic-tick", registry=registry)
    async def topic_tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        if body.meta.get("deletionTimestamp"):
            return
        await topic_pass(body, patch)

    @kopf.on.delete(GROUP, VERSION, TOPICS, id="topic-deleted", registry=registry)
    async def topic_deleted(body: kopf.Body, **_: Any) -> None:
        kube = state.clients()[0]
        obj = _plain(body)
        spec = obj.get("spec") or {}
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        if spec.get("deletionPolicy", "Retain") != "Delete":
            log.info("topic %s/%s: deletionPolicy Retain: the topic stays", namespace, name)
            return
        cluster = await _cluster(kube, namespace, str(spec.get("clusterRef", "")))
        if cluster is None or cluster["metadata"].get("deletionTimestamp"):
            await kube.event(
                obj,
                "TopicNotDeleted",
                f"cluster {spec.get('clusterRef')!r} is gone: topic {name!r} was not deleted",
                "Warning",
            )
            return
        bootstrap = _bootstrap(cluster, settings.options)
        try:
            existed = await asyncio.get_running_loop().run_in_executor(
                None, topics.delete, bootstrap, name
            )
        except (AdminError, OSError) as e:
            raise kopf.TemporaryError(
                f"DeleteTopics through {bootstrap}: {e}", delay=interval
            ) from e
        await kube.event(
            obj,
            "Deleted",
            f"deleted topic {name!r}" if existed else f"topic {name!r} was already gone",
        )

    return registry


def _plain(body: Any) -> dict[str, Any]:
    """A kopf body as a plain dict (deep copy)."""
    import copy

    return copy.deepcopy(dict(body))


async def _cluster(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    if not name:
        return None
    return await kube.get(path(API_VERSION, CLUSTERS, namespace, name))


def _bootstrap(cluster: dict[str, Any], options: OperatorOptions) -> str:
    names = Names(cluster["metadata"]["name"], cluster["metadata"]["namespace"])
    port = ((cluster.get("spec") or {}).get("brokers") or {}).get("advertisedPort") or 9092
    return names.bootstrap(options.cluster_domain, int(port))


async def _topic_status(
    kube: Kube, obj: dict[str, Any], options: OperatorOptions, emit: Emit
) -> dict[str, Any]:
    """One topic pass: the status to write (events posted on transitions)."""
    meta = obj["metadata"]
    generation = meta.get("generation")
    old = dict(obj.get("status") or {})
    name = meta["name"]

    async def result(
        phase: str, ready: Condition, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        before = condition(old, "Ready")
        changed = not before or before.get("reason") != ready.reason
        if ready.status != "True" and changed:
            await emit("Warning", ready.reason, ready.message)
        return {
            **old,
            **(extra or {}),
            "phase": phase,
            "observedGeneration": generation,
            "conditions": merge_conditions(old.get("conditions"), [ready], generation),
        }

    try:
        spec = validate(TOPIC_KIND, obj.get("spec"))
    except InvalidSpec as e:
        return await result("Failed", Condition("Ready", "False", e.reason, str(e)))
    cluster = await _cluster(kube, meta["namespace"], spec["clusterRef"])
    if cluster is None:
        return await result(
            "Pending",
            Condition(
                "Ready",
                "False",
                "ClusterNotFound",
                f"no KafscaleCluster {spec['clusterRef']!r} in namespace {meta['namespace']!r}",
            ),
        )
    try:
        validate(CLUSTER_KIND, cluster.get("spec"))
    except InvalidSpec as e:
        return await result(
            "Pending",
            Condition("Ready", "False", "ClusterInvalid", f"cluster {spec['clusterRef']!r}: {e}"),
        )
    bootstrap = _bootstrap(cluster, options)
    try:
        state = await asyncio.get_running_loop().run_in_executor(
            None, topics.reconcile, bootstrap, name, spec
        )
    except topics.TopicProblem as e:
        return await result("Failed", Condition("Ready", "False", e.reason, str(e)))
    except (AdminError, OSError) as e:
        return await result(
            "Pending",
            Condition("Ready", "False", "ClusterUnavailable", f"through {bootstrap}: {e}"),
        )
    for action in state.actions:
        await emit("Normal", "Reconciled", f"topic {name!r}: {action}")
    partitions = state.partitions
    return await result(
        "Ready",
        Condition("Ready", "True", "Reconciled", f"{len(partitions)} partitions as specified"),
        {"topicId": state.topic_id, "partitionCount": len(partitions), "partitions": partitions},
    )


def namespaces_arg(values: Iterable[str]) -> list[str]:
    """``--namespace a,b --namespace c`` as a list."""
    return [n for v in values for n in v.split(",") if n]
