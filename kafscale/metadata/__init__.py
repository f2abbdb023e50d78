"""Metadata stores: topics, partition state, offsets (sqlite locally, etcd for a cluster).

The etcd backend is imported on demand (``kafscale.metadata.etcd.EtcdMetadataStore``), so
that the embedded default does not load gRPC.
"""

from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.metadata.store import (
    Compare,
    Delete,
    HeldLease,
    KeyValue,
    LeaseNotFound,
    MetadataStore,
    MetadataUnavailable,
    Put,
    StoreClosed,
    TxnOutcomeUnknown,
    TxnResult,
    WatchCompacted,
    WatchEvent,
)

__all__ = [
    "Compare",
    "Delete",
    "HeldLease",
    "KeyValue",
    "LeaseNotFound",
    "MetadataStore",
    "MetadataUnavailable",
    "Put",
    "SqliteMetadataStore",
    "StoreClosed",
    "TxnOutcomeUnknown",
    "TxnResult",
    "WatchCompacted",
    "WatchEvent",
]
