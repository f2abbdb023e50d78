"""Metadata stores: topics, partition state, offsets (sqlite locally, etcd later)."""

from kafscale.metadata.sqlite import (
    LeaseNotFound,
    SqliteMetadataStore,
    StoreClosed,
    WatchCompacted,
)
from kafscale.metadata.store import (
    Compare,
    Delete,
    KeyValue,
    MetadataStore,
    Put,
    TxnResult,
    WatchEvent,
)

__all__ = [
    "Compare",
    "Delete",
    "KeyValue",
    "LeaseNotFound",
    "MetadataStore",
    "Put",
    "SqliteMetadataStore",
    "StoreClosed",
    "TxnResult",
    "WatchCompacted",
    "WatchEvent",
]
