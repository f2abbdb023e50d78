"""One reconciliation pass of a ``KafscaleCluster``: children, status, and one rolling step.

A pass (run on every spec change and every ``--interval`` seconds by the kopf handlers, one at a
time per cluster) does:

1. **validate** the spec (:func:`kafscale.operator.spec.validate`); an invalid spec gives phase
   ``Failed``, ``Ready=False`` with the reason and a Warning event, and creates nothing;
2. **apply** the children (:func:`kafscale.operator.resources.children`): created when missing,
   patched when they differ from what the spec gives (a child edited or deleted by hand is
   repaired on the next pass);
3. **observe**: the broker pods (kubelet readiness), each broker's own ``/readyz`` (why it is not
   ready; whether its metadata store and object store answer: ``EtcdReachable``,
   ``S3Reachable``), and one Metadata request through the client Service (partitions led per
   broker, brokers and topics in the cluster, partitions with no leader);
4. **roll**, one broker at a time: when every wanted pod exists, is ready and not terminating,
   and every partition has a leader, the highest-ordinal pod whose template hash is not the
   current one is deleted. Its kubelet sends SIGTERM: the broker turns unready (``/readyz`` 503),
   flushes, answers what it owes and revokes its lease, so its partitions are taken over at once
   (docs/architecture.md), and exits within ``terminationGracePeriodSeconds``. The StatefulSet
   controller (``OnDelete``) starts its replacement from the new template; the next broker goes
   only once that one is ready. A broker that never gets ready stops the rollout there (phase
   ``Rolling``, ``Progressing`` says which broker it waits for): a bad template takes down at
   most one broker.

What a pass does not do: anything when a broker dies. Its lease expires and the other brokers
take its partitions; the StatefulSet controller restarts the pod. The operator only reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kafscale.admin.errors import AdminError
from kafscale.operator import resources, topics
from kafscale.operator.kube import Kube, KubeError, path
from kafscale.operator.resources import TEMPLATE_HASH, Names, OperatorOptions
from kafscale.operator.spec import (
    CLUSTER_KIND,
    Condition,
    InvalidSpec,
    condition,
    merge_conditions,
    validate,
)

log = logging.getLogger("kafscale.operator")

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=3)
UNUSED_FIELDS = {
    ("brokers", "advertisedHost"): "each broker advertises its own per-pod DNS name",
    ("s3", "readBucket"): "this broker reads from the main bucket only",
    (
        "s3",
        "kmsKeyArn",
    ): "this broker does not ask for SSE-KMS (use the bucket's default encryption)",
    ("etcd", "tlsSecretRef"): "etcd TLS is not supported by this broker yet",
    ("etcd", "authSecretRef"): "etcd authentication is not supported by this broker yet",
}
"""Fields of KafScale's CRD this broker accepts and does not use: a Warning event each."""

Emit = Callable[[str, str, str], Awaitable[None]]
"""``emit(type, reason, message)``: post an event about the cluster."""


@dataclass
class BrokerView:
    """One broker pod as a pass sees it."""

    ordinal: int
    pod: dict[str, Any]
    ready: bool
    updated: bool
    terminating: bool
    readyz: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])


@dataclass
class PassResult:
    """The status to write and what the pass did."""

    status: dict[str, Any]
    deleted: list[str] = field(default_factory=list)


def ordinal(pod: dict[str, Any], statefulset: str) -> int | None:
    name = str(pod["metadata"]["name"])
    prefix = f"{statefulset}-"
    tail = name[len(prefix) :]
    return int(tail) if name.startswith(prefix) and tail.isdigit() else None


def pod_ready(pod: dict[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


async def probe(
    session: aiohttp.ClientSession, pod: dict[str, Any], port: int
) -> dict[str, Any] | None:
    """A broker's ``/readyz`` answer (200 or 503, both JSON), None when it cannot be asked."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    try:
        async with session.get(f"http://{host}:{port}/readyz", timeout=PROBE_TIMEOUT) as r:
            answer: dict[str, Any] = await r.json(content_type=None)
            return answer
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def _reachability(views: list[BrokerView]) -> tuple[Condition, Condition]:
    """EtcdReachable and S3Reachable from the brokers' own readiness checks."""
    answers = [v.readyz for v in views if v.readyz]
    if not answers:
        why = "no broker answered /readyz"
        return (
            Condition("EtcdReachable", "Unknown", "NoBrokerAnswer", why),
            Condition("S3Reachable", "Unknown", "NoBrokerAnswer", why),
        )
    metas = [a.get("checks", {}).get("metadata_store") for a in answers]
    metas = [m for m in metas if m is not None]  # a draining broker does not probe
    if not metas:
        etcd = Condition("EtcdReachable", "Unknown", "NoBrokerAnswer", "every broker is draining")
    elif "ok" in metas:
        etcd = Condition("EtcdReachable", "True", "BrokersConnected", "the brokers' etcd answers")
    else:
        etcd = Condition("EtcdReachable", "False", "EtcdUnavailable", str(metas[0]))
    states = [(a.get("checks", {}).get("object_store") or {}) for a in answers]
    good = [s for s in states if s.get("state") in ("healthy", "degraded")]
    if any(s.get("state") == "healthy" for s in states):
        s3 = Condition("S3Reachable", "True", "Healthy", "the brokers' bucket answers")
    elif good:
        s3 = Condition("S3Reachable", "True", "Degraded", str(good[0].get("reason") or "degraded"))
    else:
        s3 = Condition(
            "S3Reachable", "False", "ObjectStoreUnavailable", str(states[0].get("reason") or "")
        )
    return etcd, s3


async def reconcile(
    kube: Kube,
    body: dict[str, Any],
    options: OperatorOptions,
    emit: Emit,
    session: aiohttp.ClientSession,
    roll: bool = True,
) -> PassResult:
    """One pass over the cluster ``body`` (see the module docstring); the status to write."""
    meta = body["metadata"]
    generation = meta.get("generation")
    old = dict(body.get("status") or {})
    new_generation = old.get("observedGeneration") != generation
    names = Names(meta["name"], meta["namespace"])
    try:
        spec = validate(CLUSTER_KIND, body.get("spec"))
    except InvalidSpec as e:
        before = condition(old, "Ready")
        if not before or before.get("reason") != e.reason or before.get("message") != str(e):
            await emit("Warning", e.reason, str(e))
        failed = Condition("Ready", "False", e.reason, str(e))
        return PassResult(
            {
                **old,
                "phase": "Failed",
                "observedGeneration": generation,
                "conditions": merge_conditions(old.get("conditions"), [failed], generation),
            }
        )
    if new_generation:
        for (section, key), why in UNUSED_FIELDS.items():
            if (spec.get(section) or {}).get(key):
                await emit("Warning", "FieldNotUsed", f"spec.{section}.{key} is not used: {why}")
    # -- children
    desired = resources.children(body, spec, options)
    sts_desired = next(c for c in desired if c["kind"] == "StatefulSet")
    for child in desired:
        create_only = None
        if child["kind"] == "StatefulSet" and resources.autoscaled(spec):
            create_only = {"replicas": spec["brokers"]["replicas"]}
        outcome = await kube.apply(child, create_only)
        if outcome != "unchanged":
            log.info(
                "%s %s %s/%s", outcome, child["kind"], meta["namespace"], child["metadata"]["name"]
            )
        if outcome == "created":
            await emit("Normal", "Created", f"created {child['kind']} {child['metadata']['name']}")
    if not resources.autoscaled(spec):
        hpa = path("autoscaling/v2", "horizontalpodautoscalers", meta["namespace"], names.hpa)
        if await kube.delete(hpa):
            await emit("Normal", "Deleted", f"deleted HorizontalPodAutoscaler {names.hpa}")
    # -- observe
    sts = await kube.get(path("apps/v1", "statefulsets", meta["namespace"], names.statefulset))
    wanted = int(((sts or {}).get("spec") or {}).get("replicas") or spec["brokers"]["replicas"])
    current_hash = sts_desired["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH]
    pods = await kube.list(path("v1", "pods", meta["namespace"]), resources.selector(names.cluster))
    views: list[BrokerView] = []
    for pod in pods:
        n = ordinal(pod, names.statefulset)
        if n is None:
            continue
        annotations = pod["metadata"].get("annotations") or {}
        views.append(
            BrokerView(
                n,
                pod,
                pod_ready(pod),
                annotations.get(TEMPLATE_HASH) == current_hash,
                bool(pod["metadata"].get("deletionTimestamp")),
            )
        )
    views.sort(key=lambda v: v.ordinal)
    http_port = spec["brokers"]["httpPort"]
    answers = await asyncio.gather(*(probe(session, v.pod, http_port) for v in views))
    for v, answer in zip(views, answers, strict=True):
        v.readyz = answer
    bootstrap = names.bootstrap(options.cluster_domain, spec["brokers"]["advertisedPort"])
    led: dict[int, int] = {}
    broker_count = topic_count = leaderless = None
    if any(v.ready for v in views):
        try:
            (
                led,
                broker_count,
                topic_count,
                leaderless,
            ) = await asyncio.get_running_loop().run_in_executor(
                None, topics.partitions_by_leader, bootstrap
            )
        except (AdminError, OSError) as e:
            log.info(
                "%s/%s: Metadata through %s: %s", meta["namespace"], meta["name"], bootstrap, e
            )
    ready = [v for v in views if v.ready and not v.terminating and v.ordinal < wanted]
    outdated = [v for v in views if not v.updated and v.ordinal < wanted]
    # -- roll
    deleted: list[str] = []
    steady = (
        len(ready) == wanted
        and len([v for v in views if v.ordinal < wanted]) == wanted
        and not any(v.terminating for v in views)
        and leaderless == 0
    )
    if roll and outdated and steady:
        victim = max(outdated, key=lambda v: v.ordinal)
        pod_path = path("v1", "pods", meta["namespace"], victim.name)
        try:
            await kube.delete(pod_path)
            deleted.append(victim.name)
            await emit(
                "Normal",
                "RollingRestart",
                f"restarting {victim.name} ({len(outdated)} of {wanted} to go): it drains on"
                " SIGTERM, its partitions move to the other brokers",
            )
        except KubeError as e:
            await emit("Warning", "RollingRestartFailed", f"deleting {victim.name}: {e}")
    # -- status
    brokers = []
    for v in views:
        entry: dict[str, Any] = {
            "id": v.ordinal,
            "pod": v.name,
            "ready": v.ready and not v.terminating,
            "updated": v.updated,
            "partitions": led.get(v.ordinal, 0),
        }
        if v.readyz and not v.readyz.get("ready"):
            entry["reason"] = str(v.readyz.get("reason", ""))
        elif v.terminating:
            entry["reason"] = "terminating"
        brokers.append(entry)
    rolling = bool(outdated) or bool(deleted)
    if not ready:
        phase = "Pending"
    elif rolling:
        phase = "Rolling"
    elif len(ready) < wanted:
        phase = "Degraded"
    else:
        phase = "Running"
    if phase == "Running":
        ready_condition = Condition("Ready", "True", "AllBrokersReady", f"{wanted} brokers ready")
    else:
        waiting = [v.name for v in views if not v.ready or v.terminating]
        missing = wanted - len([v for v in views if v.ordinal < wanted])
        detail = f"{len(ready)} of {wanted} brokers ready"
        if waiting:
            detail += f"; not ready: {', '.join(waiting)}"
        if missing > 0:
            detail += f"; {missing} not started"
        ready_condition = Condition("Ready", "False", phase, detail)
    if rolling:
        to_go = len(outdated) - len(deleted)
        message = f"{to_go + len(deleted)} of {wanted} brokers still run an older template"
        if not steady and not deleted:
            message += "; waiting for every broker to be ready and every partition led"
        progressing = Condition("Progressing", "True", "RollingUpdate", message)
    else:
        progressing = Condition(
            "Progressing", "False", "UpToDate", "every broker runs the current template"
        )
    before = condition(old, "Progressing")
    if before and before.get("status") == "True" and progressing.status == "False":
        await emit("Normal", "RolloutComplete", "every broker runs the current template")
    etcd, s3 = _reachability(views)
    status: dict[str, Any] = {
        **old,
        "phase": phase,
        "observedGeneration": generation,
        "replicas": wanted,
        "readyBrokers": len(ready),
        "bootstrap": bootstrap,
        "brokers": brokers,
        "conditions": merge_conditions(
            old.get("conditions"), [ready_condition, etcd, s3, progressing], generation
        ),
    }
    if broker_count is not None:
        status["brokerCount"] = broker_count
        status["topicCount"] = topic_count
    return PassResult(status, deleted)
