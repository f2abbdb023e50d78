"""The KafScale Kubernetes operator (``kafscale operator``; docs/kubernetes.md).

It turns ``KafscaleCluster`` and ``KafscaleTopic`` resources (``kafscale.io/v1alpha1``, their
CRDs generated from ``protocol_specs/crds/``) into a running cluster of stateless brokers and
its topics. Modules, from the bottom up:

- :mod:`~kafscale.operator.spec`: validating and defaulting a spec with the CRD's own schema
  (``generated/crds.py``), conditions;
- :mod:`~kafscale.operator.resources`: the objects a cluster owns (StatefulSet, Services,
  PodDisruptionBudget, HorizontalPodAutoscaler), built as plain dicts;
- :mod:`~kafscale.operator.kube`: a small asynchronous Kubernetes API client (aiohttp);
- :mod:`~kafscale.operator.topics`: a topic's reconciliation through the Kafka admin protocol
  (:mod:`kafscale.admin.client`, synchronous: run in a thread);
- :mod:`~kafscale.operator.handlers`: the kopf handlers (the only module that imports kopf,
  which is an optional dependency: ``pip install kafscale[operator]``);
- :mod:`~kafscale.operator.command`: the ``kafscale operator`` subcommand.

The broker never imports this package (tests/test_layering.py).
"""
