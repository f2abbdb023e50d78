"""``kafscale user add|delete|list``: SCRAM users straight in the metadata store.

For the first super user, before any broker runs (the embedded sqlite store is opened by one
process at a time: stop the broker first, or use the clients' admin APIs against a running
one); on etcd it works while brokers run, and they see the change at once (their watch).
The store options are ``kafscale serve``'s (``--etcd``, ``--data-dir``, ``--namespace``,
``--config``, the ``etcd.*`` TLS and password settings, or their ``KAFSCALE_*`` variables).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import Any

from kafscale.broker import config as broker_config
from kafscale.broker.security.scram import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    MECHANISMS,
    MIN_ITERATIONS,
)
from kafscale.broker.startup import BrokerStartError

_STORE_OPTIONS = (
    "data-dir",
    "etcd",
    "namespace",
    "etcd.cacert",
    "etcd.cert",
    "etcd.key",
    "etcd.user",
    "etcd.password",
)


def add_user(commands: Any) -> None:
    """Register ``kafscale user add|delete|list``."""
    user = commands.add_parser(
        "user",
        help="add, delete or list SCRAM users in the metadata store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user or change its password")
    add.add_argument("name")
    add.add_argument("--password", help="the password (default: asked, or read from stdin)")
    add.add_argument(
        "--mechanism",
        action="append",
        choices=list(MECHANISMS),
        help="a mechanism to store (repeatable; default both)",
    )
    add.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help=f"PBKDF2 rounds ({MIN_ITERATIONS}-{MAX_ITERATIONS})",
    )
    delete = actions.add_parser("delete", help="delete a user's credentials")
    delete.add_argument("name")
    delete.add_argument("--mechanism", action="append", choices=list(MECHANISMS))
    listing = actions.add_parser("list", help="list the users and their mechanisms")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    for parser in (add, delete, listing):
        parser.add_argument("--config", help="YAML file of settings (Kafka names)")
        for option in _STORE_OPTIONS:
            parser.add_argument(
                f"--{option}",
                dest=broker_config._OPTIONS[option],
                default=None,
                help=f"{option} (env {broker_config.env_name(option)})",
            )
        parser.set_defaults(handler=run_user)


def run_user(args: argparse.Namespace) -> int:
    """Run one ``kafscale user`` action against the configured metadata store."""
    from kafscale.broker.main import metadata_store

    try:
        config = broker_config.load(args)
    except (ValueError, OSError) as e:
        raise BrokerStartError(str(e)) from None
    password = None
    if args.action == "add":
        password = args.password
        if password is None:
            password = (
                getpass.getpass(f"password for {args.name}: ")
                if sys.stdin.isatty()
                else sys.stdin.readline().rstrip("\n")
            )
        if not password:
            raise BrokerStartError("the password is empty")
        if not MIN_ITERATIONS <= args.iterations <= MAX_ITERATIONS:
            raise BrokerStartError(
                f"--iterations must be within {MIN_ITERATIONS}..{MAX_ITERATIONS} (Kafka's bounds)"
            )
    if args.action != "list" and not args.name:
        raise BrokerStartError("the user name is empty")
    if not config.etcd_endpoints:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata_store(config)
    return asyncio.run(_run(args, config, meta, password))


async def _run(args: argparse.Namespace, config: Any, meta: Any, password: str | None) -> int:
    from kafscale.broker.security.credentials import CredentialStore
    from kafscale.broker.security.scram import make_credential

    store = CredentialStore(meta, config.namespace)
    try:
        if args.action == "add":
            assert password is not None
            mechanisms = args.mechanism or list(MECHANISMS)
            upserts = {m: make_credential(m, password, args.iterations) for m in mechanisms}
            await store.change(args.name, upserts, set())
            print(f"user {args.name}: {', '.join(sorted(upserts))} stored")
        elif args.action == "delete":
            users = await store.read_all()
            have = set(users.get(args.name, {}))
            doomed = set(args.mechanism or have)
            if not have or not doomed <= have:
                raise BrokerStartError(f"user {args.name} has no such credential")
            await store.change(args.name, {}, doomed)
            print(f"user {args.name}: {', '.join(sorted(doomed))} deleted")
        else:
            users = await store.read_all()
            rows = {
                name: {m: c.iterations for m, c in sorted(creds.items())}
                for name, creds in sorted(users.items())
            }
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'USER':<24} MECHANISMS (ITERATIONS)")
                for name, mechs in rows.items():
                    text = ", ".join(f"{m} ({i})" for m, i in mechs.items())
                    print(f"{name:<24} {text}")
    finally:
        await meta.close()
    return 0
