"""The operator's handlers under kopf's runner against kmock's API emulator, without brokers
(tests/operator_env.py): the objects a cluster gets, how a spec change and autoscaling show in
them, the status, and bad specs becoming conditions and events instead of crash loops. The
cluster that really runs is tests/test_operator_cluster.py's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kafscale.operator.kube import path
from kafscale.operator.resources import TEMPLATE_HASH, selector
from kafscale.operator.spec import CLUSTER_KIND, TOPIC_KIND, condition
from tests.operator_env import NAMESPACE, Env, custom_resource, operator_env, wait_for

STEP = 30.0
"""Seconds a step may take: kopf takes up to several seconds to pick a change up from the
emulator (its resourceVersions never change, which kopf's consistency tracking relies on)."""
SPEC: dict[str, Any] = {
    "brokers": {
        "replicas": 3,
        "service": {"type": "LoadBalancer", "annotations": {"lb.example/internal": "true"}},
    },
    "s3": {
        "bucket": "kafscale-demo",
        "region": "eu-west-1",
        "credentialsSecretRef": "s3-credentials",
        "kmsKeyArn": "arn:aws:kms:eu-west-1:1:key/x",
    },
    "etcd": {"endpoints": ["etcd-0:2379", "etcd-1:2379"]},
    "config": {"num.partitions": 6, "flushIntervalMs": 20},
}


def sts_path(cluster: str) -> str:
    return path("apps/v1", "statefulsets", NAMESPACE, f"{cluster}-broker")


async def status_of(env: Env, url: str) -> dict[str, Any]:
    return dict((await env.get(url)).get("status") or {})


def test_a_cluster_and_its_changes() -> None:
    asyncio.run(cluster_scenario())


async def cluster_scenario() -> None:
    async with operator_env(interval=0.3) as env:
        kube = env.kube
        await kube.create(custom_resource(CLUSTER_KIND, "demo", SPEC))
        sts = await wait_for(lambda: kube.get(sts_path("demo")), STEP, "StatefulSet", env)
        children = {
            "headless": path("v1", "services", NAMESPACE, "demo-broker-headless"),
            "client": path("v1", "services", NAMESPACE, "demo-broker"),
            "pdb": path("policy/v1", "poddisruptionbudgets", NAMESPACE, "demo-broker"),
        }
        objs = {k: await wait_for(lambda u=u: kube.get(u), 10, k, env) for k, u in children.items()}
        for obj in [sts, *objs.values()]:
            [owner] = obj["metadata"]["ownerReferences"]
            assert (
                owner["kind"] == "KafscaleCluster"
                and owner["name"] == "demo"
                and owner["controller"]
            )
        assert objs["pdb"]["spec"]["maxUnavailable"] == 1
        assert objs["headless"]["spec"]["clusterIP"] == "None"
        assert objs["client"]["spec"]["type"] == "LoadBalancer"
        assert objs["client"]["metadata"]["annotations"] == {"lb.example/internal": "true"}
        spec = sts["spec"]
        assert spec["replicas"] == 3 and spec["updateStrategy"] == {"type": "OnDelete"}
        assert spec["serviceName"] == "demo-broker-headless"
        assert spec["selector"]["matchLabels"] == selector("demo")
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        env_vars = {e["name"]: e.get("value") for e in container["env"]}
        assert env_vars["KAFSCALE_BROKER_ID"] == "ordinal"
        assert env_vars["KAFSCALE_ADVERTISED"] == (
            "$(POD_NAME).demo-broker-headless.$(POD_NAMESPACE).svc.cluster.local:9092"
        )
        assert env_vars["KAFSCALE_ETCD"] == "etcd-0:2379,etcd-1:2379"
        assert env_vars["KAFSCALE_S3_REGION"] == "eu-west-1"
        assert env_vars["KAFSCALE_NUM_PARTITIONS"] == "6"
        assert env_vars["KAFSCALE_FLUSH_INTERVAL_MS"] == "20"  # KafScale's camelCase name
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert pod["terminationGracePeriodSeconds"] == 60 and pod["enableServiceLinks"] is False
        first_hash = spec["template"]["metadata"]["annotations"][TEMPLATE_HASH]

        st = await wait_for(lambda: status_of(env, env.cluster_path("demo")), STEP, "a status", env)
        assert st["phase"] == "Pending" and st["observedGeneration"] == 1
        assert condition(st, "Ready")["status"] == "False"
        reasons = {e["reason"] for e in await env.events("demo")}
        assert {"Created", "FieldNotUsed"} <= reasons, reasons

        # A spec change: a new template (so a roll), the status follows the generation.
        await env.change_spec(env.cluster_path("demo"), {"config": {"segment.ms": 1000}})

        async def new_template() -> bool:
            live = await env.get(sts_path("demo"))
            annotations = live["spec"]["template"]["metadata"]["annotations"]
            return bool(annotations[TEMPLATE_HASH] != first_hash)

        await wait_for(new_template, STEP, "a new pod template", env)
        await wait_for(
            lambda: _observed(env, env.cluster_path("demo"), 2), STEP, "observedGeneration 2", env
        )

        # Autoscaling: an HPA that owns the replicas from then on; off again: no HPA.
        hpa_path = path("autoscaling/v2", "horizontalpodautoscalers", NAMESPACE, "demo-broker")
        await env.change_spec(
            env.cluster_path("demo"), {"brokers": {"autoscaling": {"enabled": True}}}
        )
        hpa = await wait_for(lambda: kube.get(hpa_path), STEP, "the HPA", env)
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
        # It owns the replicas: the StatefulSet the operator wants names none.
        desired = await env.get(sts_path("demo"))
        assert desired["spec"]["replicas"] == 3  # written once, on creation
        await env.change_spec(
            env.cluster_path("demo"), {"brokers": {"autoscaling": {"enabled": False}}}
        )

        async def hpa_gone() -> bool:
            return await kube.get(hpa_path) is None

        await wait_for(hpa_gone, STEP, "the HPA deleted", env)
        await wait_for(
            lambda: _replicas(env, "demo", 3), STEP, "replicas owned by the spec again", env
        )

        # A child deleted by hand comes back (drift repair by the timer).
        await kube.delete(children["pdb"])
        await wait_for(lambda: kube.get(children["pdb"]), STEP, "the PDB recreated", env)


async def _observed(env: Env, url: str, generation: int) -> bool:
    st = (await env.get(url)).get("status") or {}
    return bool(st.get("observedGeneration") == generation)


async def _replicas(env: Env, cluster: str, n: int) -> bool:
    return bool((await env.get(sts_path(cluster)))["spec"].get("replicas") == n)


def test_bad_specs_become_conditions_and_events() -> None:
    asyncio.run(bad_specs())


async def bad_specs() -> None:
    async with operator_env(interval=0.3) as env:
        kube = env.kube
        invalid = {**SPEC, "brokers": {"replicas": 0}}
        await kube.create(custom_resource(CLUSTER_KIND, "zero", invalid))
        bad_config = {**SPEC, "config": {"no.such.setting": 1}}
        await kube.create(custom_resource(CLUSTER_KIND, "typo", bad_config))
        derived = {**SPEC, "config": {"etcd": "elsewhere:2379"}}
        await kube.create(custom_resource(CLUSTER_KIND, "derived", derived))
        orphan = {"clusterRef": "nowhere", "partitions": 3}
        await kube.create(custom_resource(TOPIC_KIND, "orphan", orphan))
        await kube.create(
            custom_resource(TOPIC_KIND, "empty", {"clusterRef": "x", "partitions": 0})
        )

        async def ready_reason(url: str) -> tuple[str, str, str] | None:
            st = (await env.get(url)).get("status") or {}
            ready = condition(st, "Ready")
            return (st["phase"], ready["status"], ready["reason"]) if ready else None

        expected = {
            env.cluster_path("zero"): ("Failed", "False", "InvalidSpec"),
            env.cluster_path("typo"): ("Failed", "False", "InvalidConfig"),
            env.cluster_path("derived"): ("Failed", "False", "InvalidConfig"),
            env.topic_path("orphan"): ("Pending", "False", "ClusterNotFound"),
            env.topic_path("empty"): ("Failed", "False", "InvalidSpec"),
        }
        for url, want in expected.items():
            got = await wait_for(lambda u=url: ready_reason(u), 10, f"{url} condition", env)
            assert got == want, (url, got)
        st = await status_of(env, env.cluster_path("zero"))
        assert "spec.brokers.replicas" in condition(st, "Ready")["message"]
        for name in ("zero", "typo", "orphan"):
            warnings = [e for e in await env.events(name) if e["type"] == "Warning"]
            assert len(warnings) == 1, (name, warnings)  # one event, not one per pass
        assert await kube.get(sts_path("zero")) is None  # nothing created for a bad spec
        # The cluster appears: the topic's condition moves on (its cluster has no brokers yet).
        await kube.create(custom_resource(CLUSTER_KIND, "nowhere", SPEC))

        async def moved_on() -> bool:
            got = await ready_reason(env.topic_path("orphan"))
            return got is not None and got[2] == "ClusterUnavailable"

        await wait_for(moved_on, STEP, "the topic waiting for the cluster's brokers", env)
        await env.check()  # the operator is still running
