"""Object stores: where immutable log segments live (a local directory, or S3 through
:mod:`kafscale.storage.s3`, imported on demand because it pulls in aiobotocore)."""

from kafscale.storage.local import LocalObjectStore
from kafscale.storage.objectstore import (
    NotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
)

__all__ = [
    "LocalObjectStore",
    "NotFound",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
]
