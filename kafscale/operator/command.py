"""``kafscale operator``: run the Kubernetes operator (docs/kubernetes.md).

    kafscale operator [--namespace NS]... [--standalone | --peering NAME] [--priority N]
                      [--broker-image IMAGE] [--cluster-domain DOMAIN] [--interval SECONDS]
                      [--liveness URL]

Watches KafscaleCluster and KafscaleTopic resources in every namespace (a ClusterRole), or
only in the ``--namespace`` ones (Roles there). kopf's peering keeps one operator active: with
several running, the one of highest ``--priority`` acts and the others pause (``--standalone``:
no peering). Credentials: the pod's service account, else ``$KUBECONFIG`` / ``~/.kube/config``.
Every option also reads ``KAFSCALE_OPERATOR_<NAME>`` from the environment.

kopf is an optional dependency (``pip install 'kafscale[operator]'``): it is imported only when
the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from kafscale.operator.resources import DEFAULT_IMAGE, OperatorOptions

ENV_PREFIX = "KAFSCALE_OPERATOR_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def add_operator(commands: Any) -> None:
    """Register ``kafscale operator`` on the ``kafscale`` subcommands."""
    p = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (KafscaleCluster, KafscaleTopic)",
        description="Run the KafScale Kubernetes operator: KafscaleCluster resources become "
        "broker StatefulSets (rolled one drained broker at a time), KafscaleTopic resources "
        "topics. Options also read KAFSCALE_OPERATOR_<NAME>.",
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable, or comma-separated; default: all)",
    )
    p.add_argument("--standalone", action="store_true", help="no peering: act even if others run")
    p.add_argument("--peering", default=_env("peering", "kafscale"), help="kopf peering name")
    p.add_argument(
        "--priority", type=int, default=int(_env("priority", "0")), help="peering priority"
    )
    p.add_argument(
        "--broker-image",
        default=_env("broker-image", DEFAULT_IMAGE),
        help=f"image of clusters that name none (default {DEFAULT_IMAGE})",
    )
    p.add_argument(
        "--cluster-domain",
        default=_env("cluster-domain", "cluster.local"),
        help="the Kubernetes cluster's DNS domain (default cluster.local)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=float(_env("interval", "10")),
        help="seconds between status passes and rolling steps (default 10)",
    )
    p.add_argument(
        "--liveness",
        default=_env("liveness", ""),
        help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz",
    )
    p.add_argument("--log-level", default=_env("log-level", "INFO"), help="default INFO")
    p.set_defaults(handler=run_operator)


def run_operator(args: argparse.Namespace) -> int:
    """The command's handler: run until SIGTERM or SIGINT."""
    try:
        import kopf
    except ImportError:
        from kafscale.cli import CliError  # here: kafscale.cli imports this module

        raise CliError("kafscale operator needs kopf: pip install 'kafscale[operator]'") from None
    from kafscale.operator.handlers import Settings, build_registry, namespaces_arg

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    namespaces = namespaces_arg(args.namespace or [n for n in [_env("namespace", "")] if n])
    settings = Settings(
        OperatorOptions(broker_image=args.broker_image, cluster_domain=args.cluster_domain),
        interval=args.interval,
    )
    registry = build_registry(settings)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=args.priority,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0
