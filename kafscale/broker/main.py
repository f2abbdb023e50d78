"""``kafscale serve``: run a broker on the embedded default (local object store + sqlite)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from kafscale.broker import config as broker_config
from kafscale.broker import logformat
from kafscale.broker.startup import BrokerStartError
from kafscale.metadata.store import MetadataStore
from kafscale.storage.objectstore import ObjectStore


def add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run a broker (default: 127.0.0.1:9092, data in ./kafscale-data)",
        description="Run a KafScale broker. With no options it uses the embedded default: a "
        "local object store and a sqlite metadata store under --data-dir, so one broker is "
        "durable with nothing else running. Every option also reads KAFSCALE_<NAME> from the "
        "environment (e.g. KAFSCALE_MESSAGE_MAX_BYTES) and Kafka-named keys from --config.",
    )
    broker_config.add_arguments(serve)
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Run a broker until it stops; :class:`BrokerStartError` if it cannot start with what it
    was given (settings, metadata store address, data directory)."""
    from kafscale.broker.server import Broker

    try:
        config = broker_config.load(args)
    except (ValueError, OSError) as e:
        raise BrokerStartError(str(e)) from None
    logformat.configure(config.log_level, config.log_format, config.broker_id)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BrokerStartError(f"data dir {config.data_dir}: {e.strerror or e}") from None
    objects = object_store(config)
    meta = metadata_store(config)
    try:
        broker = Broker(config, objects, meta)
    except ValueError as e:  # settings only checked with the broker's parts (mechanisms)
        raise BrokerStartError(str(e)) from None
    try:
        import uvloop
    except ImportError:
        asyncio.run(broker.serve_forever())
    else:
        uvloop.run(broker.serve_forever())
    return 0


def metadata_store(config: broker_config.BrokerConfig) -> MetadataStore:
    """etcd when endpoints are configured (TLS and username/password from the ``etcd.*``
    settings), else sqlite in ``data_dir``. Raises :class:`BrokerStartError` on bad
    settings."""
    if config.etcd_endpoints:
        from kafscale.metadata.etcd import EtcdMetadataStore

        try:
            return EtcdMetadataStore(
                config.etcd_endpoints,
                cacert=config.etcd_cacert or None,
                cert=config.etcd_cert or None,
                key=config.etcd_key or None,
                user=config.etcd_user or None,
                password=config.etcd_password or None,
            )
        except (ValueError, OSError) as e:
            raise BrokerStartError(f"--etcd: {e}") from None
    from kafscale.metadata.sqlite import SqliteMetadataStore

    return SqliteMetadataStore(config.data_dir / "metadata.sqlite3")


def object_store(config: broker_config.BrokerConfig) -> ObjectStore:
    """S3 when a bucket is configured (credentials from the standard AWS chain), else the
    local store in ``data_dir/objects``."""
    if config.s3_bucket:
        from kafscale.storage.s3 import S3ObjectStore

        return S3ObjectStore(
            config.s3_bucket,
            endpoint_url=config.s3_endpoint or None,
            region=config.s3_region or None,
            path_style=config.s3_path_style,
            sse=config.s3_sse or None,
            sse_kms_key_id=config.s3_sse_kms_key_id or None,
        )
    from kafscale.storage.local import LocalObjectStore

    return LocalObjectStore(config.data_dir / "objects")
