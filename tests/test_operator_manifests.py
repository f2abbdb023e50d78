"""Every Kubernetes manifest we ship or the operator writes is valid for Kubernetes.

- The Helm chart (deploy/helm/kafscale) rendered by a real Helm engine (PyPI helm-python-sdk,
  Helm 4 as a library), with its defaults and with every option turned on, and linted for
  Kubernetes 1.30; its CRDs; the plain manifests rendered from it (deploy/manifests/);
- what the operator writes for a cluster (StatefulSet, Services, PodDisruptionBudget,
  HorizontalPodAutoscaler);

all validated strictly (unknown fields refused) against Kubernetes' own OpenAPI schemas (PyPI
kubernetes-validate) at the oldest version the chart supports (1.25) and a current one. Custom
resources have no schema there (ServiceMonitor, PrometheusRule, kopf's peering): those are
checked for their kind only. The sample resources (deploy/examples/) validate against our CRDs'
schemas. And the CRD declarations' own checks (codegen/crds.py) refuse what Kubernetes would.
Without helm-python-sdk or kubernetes-validate the tests skip, and fail when ``CI`` is set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from codegen import crds as crdgen
from codegen.model import SpecError
from kafscale.operator import resources, spec
from tests.conftest import REPO
from tests.operator_env import require
from tests.test_layering import imported_modules

VERSIONS = ("1.25", "1.30")
NO_SCHEMA = {"ServiceMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}
"""Kinds kubernetes-validate has no schema for (custom resources)."""
EXAMPLES = REPO / "deploy" / "examples"
ALL_ON = {
    "watchNamespaces": ["streaming", "analytics"],
    "brokerImage": "registry.example/kafscale:1.2.3",
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "podAnnotations": {"example.com/owner": "streaming"},
}


def validate(doc: dict[str, Any]) -> None:
    kv = require("kubernetes_validate", "Kubernetes' OpenAPI schemas")
    if doc["kind"] in NO_SCHEMA:
        assert doc["apiVersion"] in ("monitoring.coreos.com/v1", "kopf.dev/v1"), doc
        return
    for version in VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            pytest.fail(
                f"{doc['kind']} {doc['metadata'].get('name')} at {version}: {where}: {e.message}"
            )


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    helm = require("helm_python", "a Helm engine (helm-python-sdk)")
    return crdgen.render_chart(helm, values)


def test_the_chart_renders_valid_objects() -> None:
    docs = rendered({})
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "ServiceAccount",
    ]
    for doc in docs:
        validate(doc)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["kafscale"] and container["args"][0] == "operator"
    assert "--peering=kafscale" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Least privilege: no Secrets, nothing deleted but pods and autoscalers.
    [role] = [d for d in docs if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        assert "secrets" not in rule["resources"]
        if "delete" in rule["verbs"]:
            assert set(rule["resources"]) <= {"pods", "horizontalpodautoscalers"}, rule


def test_the_chart_with_every_option() -> None:
    docs = rendered(ALL_ON)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        validate(doc)
        by_kind.setdefault(doc["kind"], []).append(doc)
    # Namespaced: a Role, a RoleBinding and a peering object in each namespace; the
    # ClusterRole only reads CRDs.
    assert sorted(r["metadata"]["namespace"] for r in by_kind["Role"]) == ["analytics", "streaming"]
    assert len(by_kind["RoleBinding"]) == 2 and len(by_kind["KopfPeering"]) == 2
    [cluster_role] = by_kind["ClusterRole"]
    assert [r["resources"] for r in cluster_role["rules"]] == [["customresourcedefinitions"]]
    [deployment] = by_kind["Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=streaming" in args and "--namespace=analytics" in args
    assert "--broker-image=registry.example/kafscale:1.2.3" in args
    [rule] = by_kind["PrometheusRule"]
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "KafscaleBrokerNotReady" in alerts
    # The rules' own templates reach Prometheus untouched by Helm.
    assert any(
        "{{ $labels.instance }}" in str(r) for g in rule["spec"]["groups"] for r in g["rules"]
    )
    [monitor] = by_kind["ServiceMonitor"]
    assert monitor["spec"]["jobLabel"] == "kafscale.io/scrape-job"


def test_the_chart_lints_and_carries_the_crds() -> None:
    helm = require("helm_python", "a Helm engine (helm-python-sdk)")
    result = helm.lint(str(crdgen.CHART), {}, strict=True, kube_version="v1.30.0")
    errors = [m for m in result.get("messages") or [] if m.get("severity", 0) >= 2]
    assert not errors and not result.get("errors"), result
    with helm.Chart.load(str(crdgen.CHART)) as chart:
        names = sorted(c["name"] for c in chart.crds)
        for c in chart.crds:
            validate(yaml.safe_load(c["data"]))
    assert len(names) == 4


def test_the_plain_manifests() -> None:
    manifests = REPO / "deploy" / "manifests"
    docs = [
        d
        for name in ("crds.yaml", "kafscale-operator.yaml")
        for d in yaml.safe_load_all((manifests / name).read_text())
    ]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("CustomResourceDefinition") == 4 and kinds[4] == "Namespace"
    for doc in docs:
        validate(doc)


def test_what_the_operator_writes() -> None:
    [_, cluster] = list(yaml.safe_load_all((EXAMPLES / "kafscalecluster.yaml").read_text()))
    cluster["metadata"]["uid"] = "0b0e-uid"
    for autoscaling in (False, True):
        cluster["spec"]["brokers"]["autoscaling"] = {"enabled": autoscaling, "maxReplicas": 6}
        desired = spec.validate(spec.CLUSTER_KIND, cluster["spec"])
        children = resources.children(cluster, desired, resources.OperatorOptions())
        assert [c["kind"] for c in children] == [
            "Service",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            *(["HorizontalPodAutoscaler"] if autoscaling else []),
        ]
        [sts] = [c for c in children if c["kind"] == "StatefulSet"]
        assert ("replicas" in sts["spec"]) is not autoscaling  # the autoscaler owns them
        for child in children:
            validate(child)
            assert child["metadata"]["ownerReferences"][0]["uid"] == "0b0e-uid"


def test_the_examples_are_valid_resources() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["apiVersion"] == spec.API_VERSION:
                spec.validate(doc["kind"], doc["spec"])  # raises InvalidSpec
            else:
                validate(doc)


def test_crd_declarations_refuse_what_kubernetes_would(tmp_path: Path) -> None:
    good = (REPO / "protocol_specs" / "crds" / "kafscaletopic.yaml").read_text()
    bad = {
        "no description": good.replace(
            '      description: "Partitions. It may grow; a decrease is refused (Ready False,'
            ' NotSupported)."\n',
            "",
        ),
        "unknown key": good.replace("scope: Namespaced", "scope: Namespaced\nshards: 3"),
        "bad default": good.replace("default: Retain", "default: Keep"),
        "missing required": good.replace(
            "required: [clusterRef, partitions]", "required: [cluster]"
        ),
        "dangling reference": good.replace(
            '$ref: "#/definitions/condition"', '$ref: "#/definitions/nope"'
        ),
    }
    for what, text in bad.items():
        assert text != good, what
        path = tmp_path / "x.yaml"
        path.write_text(text)
        with pytest.raises(SpecError) as info:
            crdgen.Crd(path).manifest()
        print(what, "->", info.value)


def test_the_broker_never_imports_the_operator() -> None:
    broker = REPO / "kafscale" / "broker"
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted(broker.rglob("*.py"))
        if any(m.startswith("kafscale.operator") or m == "kopf" for m in imported_modules(p))
    ]
    assert offenders == []
    code = (
        "import sys, kafscale.broker.main, kafscale.broker.server\n"
        "assert 'kafscale.operator' not in sys.modules\n"
        "assert 'kopf' not in sys.modules\n"
        "import kafscale.cli\n"  # the command line knows the command, not kopf
        "assert 'kopf' not in sys.modules, 'kafscale.cli imported kopf'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
