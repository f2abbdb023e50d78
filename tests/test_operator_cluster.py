"""What the operator writes really starts a working cluster (issue 12, item 4).

The operator runs under kopf's runner against kmock's API emulator (tests/operator_env.py);
tests/kubelet.py's stand-in starts one real ``kafscale serve`` process per StatefulSet replica
from the pod template the operator wrote (its command, env and probes), against a real etcd and
moto (tests/etcdserver.py, tests/s3server.py), and answers the cluster's DNS names in this
process. One cluster of 3 brokers serves the whole scenario:

1. the cluster comes up (phase Running, 3 ready brokers, etcd and S3 reachable);
2. a KafscaleTopic is created through the admin protocol against the client Service; its status
   lists each partition's leader and offsets; kafka-python produces and reads back through the
   per-pod DNS names the brokers advertise;
3. a rolling change (a broker setting) with a producer running: the operator restarts the 3
   brokers one at a time, each drained by SIGTERM; every acknowledged record is read back
   (0 lost; the figures go to the run's "kafscale report");
4. scale 3 -> 4: the new broker takes partitions (status.brokers[3].partitions > 0);
5. the topic grows (CreatePartitions), a decrease is refused (Ready False, NotSupported, an
   event), and deleting a topic's resource with deletionPolicy Delete deletes the topic.

At the end every broker must exit 0 on SIGTERM, including those the roll replaced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafscale.admin.client import Client
from kafscale.operator.kube import path
from kafscale.operator.resources import selector
from kafscale.operator.spec import CLUSTER_KIND, TOPIC_KIND, condition
from tests.etcdserver import require_etcd
from tests.kubelet import ClusterDns, Kubelet, pod_logs
from tests.operator_env import NAMESPACE, Env, custom_resource, operator_env, require, wait_for
from tests.s3server import TEST_ENV, shared_or_skip

CLUSTER = "kfs"
TOPIC = "orders"
UP_TIMEOUT = 60.0
BOOTSTRAP = f"{CLUSTER}-broker.{NAMESPACE}.svc.cluster.local:9092"


def cluster_spec(etcd: str, s3: str, bucket: str) -> dict[str, Any]:
    return {
        "brokers": {"replicas": 3, "terminationGracePeriodSeconds": 20},
        "s3": {
            "bucket": bucket,
            "region": "us-east-1",
            "endpoint": s3,
            "credentialsSecretRef": "s3-credentials",
        },
        "etcd": {"endpoints": etcd.split(",")},
        "config": {"lease.ttl.ms": 2000, "log-format": "text"},
    }


def test_operator_runs_a_real_cluster(tmp_path: Path, report: Callable[[str], None]) -> None:
    require("kafka", "kafka-python, the client of this test")
    with require_etcd(1) as etcd:
        s3 = shared_or_skip()
        bucket = s3.create_bucket()
        asyncio.run(scenario(tmp_path, etcd.endpoints, s3.endpoint_url, bucket, report))


async def scenario(
    root: Path, etcd: str, s3: str, bucket: str, report: Callable[[str], None]
) -> None:
    async with operator_env(interval=0.5) as env:
        kubelet = Kubelet(env.url, NAMESPACE, root)
        dns = ClusterDns(kubelet, {})
        await kubelet.start()
        try:
            with dns.active():
                await run(env, kubelet, dns, etcd, s3, bucket, report)
            statuses = await kubelet.stop()
            exits = {r.name: r.exits for r in kubelet.finished}
            assert all(s == 0 for s in statuses.values()), (statuses, pod_logs(kubelet))
            assert all(e == [0] for e in exits.values()), (exits, pod_logs(kubelet))
        finally:
            kubelet.kill_all()


async def run(
    env: Env,
    kubelet: Kubelet,
    dns: ClusterDns,
    etcd: str,
    s3: str,
    bucket: str,
    report: Callable[[str], None],
) -> None:
    kube = env.kube
    clock = [time.monotonic()]

    def phase(what: str) -> None:
        """How long each step took (printed; seen with -s)."""
        now = time.monotonic()
        print(f"operator scenario: {what}: {now - clock[0]:.1f}s")
        clock[0] = now

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-credentials", "namespace": NAMESPACE, "resourceVersion": "1"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in TEST_ENV.items()},
    }
    await kube.create(secret)
    cluster_path = env.cluster_path(CLUSTER)
    await kube.create(custom_resource(CLUSTER_KIND, CLUSTER, cluster_spec(etcd, s3, bucket)))
    # The client Service's selector, as the operator wrote it, for the DNS stand-in.
    service = await wait_for(
        lambda: kube.get(path("v1", "services", NAMESPACE, f"{CLUSTER}-broker")), 10, "Service", env
    )
    dns.services[f"{CLUSTER}-broker"] = service["spec"]["selector"]
    assert service["spec"]["selector"] == selector(CLUSTER)

    async def cluster_status() -> dict[str, Any]:
        return dict((await env.get(cluster_path)).get("status") or {})

    async def running(n: int) -> dict[str, Any] | None:
        st = await cluster_status()
        ok = st.get("phase") == "Running" and st.get("readyBrokers") == n
        return st if ok and all(b.get("updated") for b in st.get("brokers", [])) else None

    try:
        status = await wait_for(lambda: running(3), UP_TIMEOUT, "3 brokers running", env)
    except BaseException:
        print(pod_logs(kubelet))
        raise
    assert [c["status"] for c in status["conditions"] if c["type"] != "Progressing"] == ["True"] * 3
    assert status["bootstrap"] == BOOTSTRAP
    phase("3 brokers up")

    # -- a topic through the admin protocol; produce and read back through the DNS names
    topic_path = env.topic_path(TOPIC)
    topic_spec = {
        "clusterRef": CLUSTER,
        "partitions": 6,
        "retentionMs": 86_400_000,
        "config": {"cleanup.policy": "delete"},
    }
    await kube.create(custom_resource(TOPIC_KIND, TOPIC, topic_spec))

    async def topic_ready(partitions: int) -> dict[str, Any] | None:
        st = dict((await env.get(topic_path)).get("status") or {})
        ok = st.get("phase") == "Ready" and st.get("partitionCount") == partitions
        return st if ok else None

    topic_status = await wait_for(lambda: topic_ready(6), 30, "topic ready", env)
    assert [p["id"] for p in topic_status["partitions"]] == list(range(6))
    assert all(p["leader"] in (0, 1, 2) for p in topic_status["partitions"])
    configs = await asyncio.to_thread(_dynamic_configs, TOPIC)
    assert configs == {"retention.ms": "86400000", "cleanup.policy": "delete"}
    sent = await asyncio.to_thread(_produce, [f"first-{i}" for i in range(60)])
    assert len(sent) == 60
    assert set(await asyncio.to_thread(_read_all, TOPIC, 60)) >= set(sent)
    phase("topic created, 60 records produced and read")

    # -- a rolling change with a producer running
    producer = BackgroundProducer(TOPIC)
    producer.start()
    try:
        await asyncio.sleep(1.0)
        started = time.monotonic()
        await env.change_spec(cluster_path, {"config": {"segment.ms": 3_600_000}})
        await wait_for(
            lambda: _rolled(env, cluster_path, 3), 3 * UP_TIMEOUT, "the rolling change", env
        )
        rolled_s = time.monotonic() - started
        for at, text in kubelet.timeline:
            if at >= started:
                print(f"{at - started:7.2f} {text}")
        await asyncio.sleep(1.0)
    finally:
        producer.stop()
    sigterms = [e for e in kubelet.events if e.startswith("SIGTERM")]
    assert len(sigterms) == 3, kubelet.events
    assert not [e for e in kubelet.events if "SIGKILL" in e], kubelet.events
    # One at a time: each broker's replacement was ready before the next one got SIGTERM.
    order = [e for e in kubelet.events if e.startswith("SIGTERM") or e.endswith(" ready")]
    for this, after in itertools.pairwise(sigterms):
        pod = this.split()[1]
        between = order[order.index(this) + 1 : order.index(after)]
        assert f"{pod} ready" in between, order
    read = set(await asyncio.to_thread(_read_all, TOPIC, 60 + len(producer.acked)))
    lost = [v for v in producer.acked if v not in read]
    report(
        f"rolling change of 3 brokers in {rolled_s:.1f}s with a producer running: "
        f"{len(producer.acked)} records acked, {len(lost)} lost, "
        f"{producer.failed} sends failed (not acked, retried by the client first)"
    )
    assert producer.acked, "the producer got no acknowledgement at all"
    assert not lost, f"{len(lost)} acked records not read back, e.g. {lost[:5]}"
    events = {e["reason"] for e in await env.events(CLUSTER)}
    assert {"Created", "RollingRestart", "RolloutComplete"} <= events, events
    phase("rolling change")

    # -- scale 3 -> 4: the new broker takes partitions
    await env.change_spec(cluster_path, {"brokers": {"replicas": 4}})

    async def fourth_leads() -> dict[str, Any] | None:
        st = await running(4)
        if st and len(st["brokers"]) == 4 and st["brokers"][3]["partitions"] > 0:
            return st
        return None

    status = await wait_for(fourth_leads, UP_TIMEOUT, "broker 3 leading partitions", env)
    report(
        f"scale 3 -> 4: partitions led per broker {[b['partitions'] for b in status['brokers']]}"
    )
    phase("scale 3 -> 4")

    # -- the topic grows; a decrease is refused; deleting the resource deletes the topic
    await env.change_spec(topic_path, {"partitions": 8})
    await wait_for(lambda: topic_ready(8), 30, "topic grown to 8", env)
    await env.change_spec(topic_path, {"partitions": 4})

    async def refused() -> dict[str, Any] | None:
        st = (await env.get(topic_path)).get("status") or {}
        ready = condition(st, "Ready")
        return ready if ready and ready["reason"] == "NotSupported" else None

    ready = await wait_for(refused, 30, "the decrease refused", env)
    assert ready["status"] == "False" and "cannot be decreased" in ready["message"]
    assert "NotSupported" in {e["reason"] for e in await env.events(TOPIC)}

    # deletionPolicy Delete: deleting the resource deletes the topic (a topic of its own: one
    # whose resource kopf has not handled several changes of, see tests/test_operator.py).
    scratch = {"clusterRef": CLUSTER, "partitions": 2, "deletionPolicy": "Delete"}
    await kube.create(custom_resource(TOPIC_KIND, "scratch", scratch))
    scratch_path = env.topic_path("scratch")

    async def scratch_ready() -> bool:
        st = (await env.get(scratch_path)).get("status") or {}
        return st.get("phase") == "Ready"

    await wait_for(scratch_ready, 30, "topic scratch ready", env)
    assert await asyncio.to_thread(_exists, "scratch")
    await kube.delete(scratch_path)

    async def scratch_gone() -> bool:
        gone = await kube.get(scratch_path) is None
        return gone and not await asyncio.to_thread(_exists, "scratch")

    # kopf sees the deletion late on kmock (no resourceVersion bumps): a generous bound.
    await wait_for(scratch_gone, 120, "topic scratch deleted", env)
    phase("topic grown, decrease refused, a topic deleted")


async def _rolled(env: Env, cluster_path: str, n: int) -> bool:
    st = (await env.get(cluster_path)).get("status") or {}
    progressing = condition(st, "Progressing") or {}
    return bool(
        st.get("phase") == "Running"
        and st.get("readyBrokers") == n
        and progressing.get("status") == "False"
        and st.get("observedGeneration") == (await env.get(cluster_path))["metadata"]["generation"]
        and all(b.get("updated") for b in st.get("brokers", []))
    )


def _client() -> Client:
    return Client(BOOTSTRAP, client_id="operator-test")


def _exists(topic: str) -> bool:
    with _client() as c:
        info = c.metadata([topic]).topics.get(topic)
    return info is not None and info.error_code == 0


def _dynamic_configs(topic: str) -> dict[str, str | None]:
    with _client() as c:
        return {e.name: e.value for e in c.describe_topic_configs(topic) if e.source == 1}


def _producer() -> Any:
    import kafka

    return kafka.KafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        retries=1_000_000,
        request_timeout_ms=10_000,
        delivery_timeout_ms=120_000,
        retry_backoff_ms=100,
        metadata_max_age_ms=2_000,
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=500,
    )


def _produce(values: list[str]) -> list[str]:
    producer = _producer()
    try:
        futures = [(v, producer.send(TOPIC, value=v.encode())) for v in values]
        producer.flush(timeout=30)
        return [v for v, f in futures if f.get(timeout=30) is not None]
    finally:
        producer.close(timeout=10)


def _read_all(topic: str, at_least: int, timeout: float = 60) -> list[str]:
    """Every record of the topic, from the start of each partition to its end."""
    import kafka

    consumer = kafka.KafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=10_000,
        metadata_max_age_ms=2_000,
    )
    out: list[str] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [kafka.TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out += [r.value.decode() for r in records]
            if all(consumer.position(tp) >= ends[tp] for tp in tps) and len(out) >= at_least:
                break
    finally:
        consumer.close()
    return out


class BackgroundProducer:
    """Sends numbered records (about 100 a second) until stopped; records which were acked."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.acked: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-producer", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(180)
        assert not self._thread.is_alive(), "the producer did not stop"

    def _ok(self, value: str) -> Callable[[Any], None]:
        def done(_: Any) -> None:
            with self._lock:
                self.acked.append(value)

        return done

    def _failed(self, _: Any) -> None:
        with self._lock:
            self.failed += 1

    def _run(self) -> None:
        producer = _producer()
        try:
            for i in range(1_000_000):
                if self._stop.is_set():
                    break
                value = f"roll-{i}"
                future = producer.send(self.topic, value=value.encode())
                future.add_callback(self._ok(value))
                future.add_errback(self._failed)
                time.sleep(0.01)
            with contextlib.suppress(Exception):
                producer.flush(timeout=120)
        finally:
            producer.close(timeout=10)
