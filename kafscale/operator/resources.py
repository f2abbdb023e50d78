"""The objects a ``KafscaleCluster`` owns, built from its (validated, defaulted) spec.

For a cluster ``C`` in namespace ``NS``:

- StatefulSet ``C-broker``: one broker per replica. Every pod gets the same settings as
  ``KAFSCALE_*`` environment variables; what differs per pod comes from the pod itself: the
  broker id is the pod ordinal (``KAFSCALE_BROKER_ID=ordinal``: the trailing ``-N`` of the host
  name), the listen addresses are the pod IP, and the advertised address is the pod's DNS name
  under the headless Service (``C-broker-N.C-broker-headless.NS.svc.CLUSTER-DOMAIN``).
  ``updateStrategy: OnDelete``: the operator, not the StatefulSet controller, chooses when a
  pod is replaced, so that it can wait for every broker to be ready (and every partition to have
  an owner) before draining the next one. The pod template carries the hash of itself
  (:data:`TEMPLATE_HASH`); a pod whose hash differs is outdated.
- Service ``C-broker-headless`` (per-pod DNS names) and Service ``C-broker`` (what clients and
  the operator bootstrap from; type and annotations from ``spec.brokers.service``).
- PodDisruptionBudget ``C-broker``: at most one broker down by eviction (a node drain takes
  them one at a time, each handing its partitions over on SIGTERM).
- HorizontalPodAutoscaler ``C-broker`` when ``spec.brokers.autoscaling.enabled``: it then owns
  the StatefulSet's replicas (the operator writes them only when it creates the StatefulSet).

Every object has a controller owner reference to the cluster, so deleting the cluster deletes
them (Kubernetes' garbage collector), and the labels of :func:`labels`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kafscale.broker.config import env_name
from kafscale.operator.spec import API_VERSION, CLUSTER_KIND, broker_settings

TEMPLATE_HASH = "kafscale.io/template-hash"
"""Pod template annotation: a hash of the rest of the template (outdated pods differ)."""
DEFAULT_IMAGE = "ghcr.io/kafscale/kafscale-py:0.1.0"
"""The broker image when neither the cluster nor the operator names one."""
DATA_DIR = "/var/lib/kafscale"
"""The broker's working directory: an emptyDir (the root filesystem is read-only)."""
USER_ID = 10001
"""The image's non-root user (deploy/Containerfile)."""


@dataclass(frozen=True)
class OperatorOptions:
    """What the operator adds to every cluster's objects."""

    broker_image: str = DEFAULT_IMAGE
    cluster_domain: str = "cluster.local"


@dataclass(frozen=True)
class Names:
    """The names of a cluster's objects."""

    cluster: str
    namespace: str

    @property
    def statefulset(self) -> str:
        return f"{self.cluster}-broker"

    @property
    def headless(self) -> str:
        return f"{self.cluster}-broker-headless"

    @property
    def service(self) -> str:
        return f"{self.cluster}-broker"

    @property
    def pdb(self) -> str:
        return f"{self.cluster}-broker"

    @property
    def hpa(self) -> str:
        return f"{self.cluster}-broker"

    def pod(self, ordinal: int) -> str:
        return f"{self.statefulset}-{ordinal}"

    def bootstrap(self, domain: str, port: int) -> str:
        """``host:port`` of the client Service, as clients in the cluster reach it."""
        return f"{self.service}.{self.namespace}.svc.{domain}:{port}"


def labels(cluster: str) -> dict[str, str]:
    """Labels of every object of the cluster (the first two also select its pods)."""
    return {
        "app.kubernetes.io/name": "kafscale-broker",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": "broker",
        "app.kubernetes.io/part-of": "kafscale",
        "app.kubernetes.io/managed-by": "kafscale-operator",
    }


def selector(cluster: str) -> dict[str, str]:
    return {k: v for k, v in labels(cluster).items() if k in _SELECTOR_KEYS}


_SELECTOR_KEYS = ("app.kubernetes.io/name", "app.kubernetes.io/instance")


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": CLUSTER_KIND,
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": labels(body["metadata"]["name"]),
        "ownerReferences": [owner_reference(body)],
    }


def template_hash(template: dict[str, Any]) -> str:
    """A short hash of a pod template (its own hash annotation left out)."""
    clean = json.loads(json.dumps(template))
    clean.get("metadata", {}).get("annotations", {}).pop(TEMPLATE_HASH, None)
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def broker_env(body: dict[str, Any], spec: dict[str, Any], options: OperatorOptions) -> list[Any]:
    """The broker container's environment (order matters: ``$(VAR)`` refers to earlier ones)."""
    names = Names(body["metadata"]["name"], body["metadata"]["namespace"])
    brokers, s3, etcd = spec["brokers"], spec["s3"], spec["etcd"]
    kafka_port, http_port = brokers["advertisedPort"], brokers["httpPort"]
    settings = broker_settings(spec)

    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    env: list[Any] = [
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        {"name": env_name("broker-id"), "value": "ordinal"},
        # One address per pod: the pod IP (also what the kubelet's probes use).
        {"name": env_name("listen"), "value": f"$(POD_IP):{kafka_port}"},
        {"name": env_name("http-listen"), "value": f"$(POD_IP):{http_port}"},
        {
            "name": env_name("advertised"),
            "value": f"$(POD_NAME).{names.headless}.$(POD_NAMESPACE).svc."
            f"{options.cluster_domain}:{kafka_port}",
        },
        {"name": env_name("data-dir"), "value": DATA_DIR},
        {"name": env_name("etcd"), "value": ",".join(etcd["endpoints"])},
        {"name": env_name("s3-bucket"), "value": s3["bucket"]},
        {"name": env_name("s3-region"), "value": s3["region"]},
    ]
    if s3.get("endpoint"):
        env.append({"name": env_name("s3-endpoint"), "value": s3["endpoint"]})
    path_style = s3.get("pathStyle", bool(s3.get("endpoint")))
    env.append({"name": env_name("s3-path-style"), "value": "true" if path_style else "false"})
    # The key prefix in etcd and the bucket: one per cluster, so that clusters may share both.
    settings.setdefault("namespace", f"{names.namespace}.{names.cluster}")
    settings.setdefault("cluster-id", body["metadata"].get("uid") or names.cluster)
    # Lines of JSON: what log collectors in a cluster expect.
    settings.setdefault("log-format", "json")
    for name in sorted(settings):
        env.append({"name": env_name(name), "value": settings[name]})
    return env


def pod_template(
    body: dict[str, Any], spec: dict[str, Any], options: OperatorOptions
) -> dict[str, Any]:
    cluster = body["metadata"]["name"]
    brokers = spec["brokers"]
    image = brokers.get("image") or {}
    default_repo, _, default_tag = options.broker_image.rpartition(":")
    if "/" in default_tag:  # a registry port, no tag
        default_repo, default_tag = options.broker_image, "latest"
    repository = image.get("repository") or default_repo
    tag = image.get("tag") or default_tag
    container: dict[str, Any] = {
        "name": "broker",
        "image": f"{repository}:{tag}",
        "command": ["kafscale"],
        "args": ["serve"],
        "workingDir": DATA_DIR,
        "ports": [
            {"name": "kafka", "containerPort": brokers["advertisedPort"], "protocol": "TCP"},
            {"name": "http", "containerPort": brokers["httpPort"], "protocol": "TCP"},
        ],
        "env": broker_env(body, spec, options),
        # Ready: serving, metadata store answering, lease held, object store available, not
        # draining (a draining broker answers 503 at once, so Services stop sending to it).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        # Alive: the process serves HTTP at all (it does from its first second).
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if image.get("pullPolicy"):
        container["imagePullPolicy"] = image["pullPolicy"]
    resources = {k: v for k, v in (brokers.get("resources") or {}).items() if v}
    if resources:
        container["resources"] = resources
    secret = spec["s3"].get("credentialsSecretRef")
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(brokers["httpPort"]),
        "prometheus.io/path": "/metrics",
        **(brokers.get("podAnnotations") or {}),
    }
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": brokers["terminationGracePeriodSeconds"],
        # Service links would put variables such as KAFSCALE_BROKER_PORT (from a Service named
        # kafscale-broker) into the environment, where the broker reads its settings.
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "fsGroup": USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector(cluster)},
                        },
                    }
                ]
            }
        },
        "containers": [container],
        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    if brokers.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(brokers["nodeSelector"])
    if brokers.get("tolerations"):
        pod_spec["tolerations"] = list(brokers["tolerations"])
    template: dict[str, Any] = {
        "metadata": {"labels": labels(cluster), "annotations": annotations},
        "spec": pod_spec,
    }
    template["metadata"]["annotations"][TEMPLATE_HASH] = template_hash(template)
    return template


def statefulset(
    body: dict[str, Any], spec: dict[str, Any], options: OperatorOptions
) -> dict[str, Any]:
    """The broker StatefulSet (replicas left out when an autoscaler owns them: the caller
    writes them only on creation then)."""
    names = Names(body["metadata"]["name"], body["metadata"]["namespace"])
    sts_spec: dict[str, Any] = {
        "serviceName": names.headless,
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": selector(names.cluster)},
        "template": pod_template(body, spec, options),
    }
    if not autoscaled(spec):
        sts_spec = {"replicas": spec["brokers"]["replicas"], **sts_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(body, names.statefulset),
        "spec": sts_spec,
    }


def autoscaled(spec: dict[str, Any]) -> bool:
    return bool((spec["brokers"].get("autoscaling") or {}).get("enabled"))


def services(body: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The headless Service and the client Service."""
    names = Names(body["metadata"]["name"], body["metadata"]["namespace"])
    brokers = spec["brokers"]
    ports = [
        {"name": "kafka", "port": brokers["advertisedPort"], "targetPort": "kafka"},
        {"name": "http", "port": brokers["httpPort"], "targetPort": "http"},
    ]
    headless_meta = _meta(body, names.headless)
    # The job label Prometheus' ServiceMonitor names the scrape job by (deploy/helm/kafscale):
    # the alert rules select job="kafscale".
    headless_meta["labels"]["kafscale.io/scrape-job"] = "kafscale"
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": headless_meta,
        "spec": {
            "clusterIP": "None",
            "selector": selector(names.cluster),
            "ports": ports,
        },
    }
    svc = brokers.get("service") or {}
    client_meta = _meta(body, names.service)
    if svc.get("annotations"):
        client_meta["annotations"] = dict(svc["annotations"])
    client_spec: dict[str, Any] = {
        "type": svc.get("type", "ClusterIP"),
        "selector": selector(names.cluster),
        "ports": ports[:1],
    }
    for key in ("loadBalancerIP", "loadBalancerSourceRanges", "externalTrafficPolicy"):
        if svc.get(key):
            client_spec[key] = svc[key]
    client = {"apiVersion": "v1", "kind": "Service", "metadata": client_meta, "spec": client_spec}
    return [headless, client]


def pod_disruption_budget(body: dict[str, Any]) -> dict[str, Any]:
    names = Names(body["metadata"]["name"], body["metadata"]["namespace"])
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(body, names.pdb),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(names.cluster)}},
    }


def autoscaler(body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    names = Names(body["metadata"]["name"], body["metadata"]["namespace"])
    scaling = spec["brokers"]["autoscaling"]
    low = spec["brokers"]["replicas"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(body, names.hpa),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "name": names.statefulset,
            },
            "minReplicas": low,
            "maxReplicas": max(low, scaling.get("maxReplicas") or 4 * low),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling["targetCPUUtilizationPercentage"],
                        },
                    },
                }
            ],
        },
    }


def children(
    body: dict[str, Any], spec: dict[str, Any], options: OperatorOptions
) -> list[dict[str, Any]]:
    """Every object the cluster should own, in creation order (the autoscaler only when
    enabled: :func:`autoscaled`)."""
    out = [*services(body, spec), statefulset(body, spec, options), pod_disruption_budget(body)]
    if autoscaled(spec):
        out.append(autoscaler(body, spec))
    return out
