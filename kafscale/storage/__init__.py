"""Object stores: where immutable log segments live (a local directory now, S3 later)."""

from kafscale.storage.local import LocalObjectStore
from kafscale.storage.objectstore import NotFound, ObjectStore

__all__ = ["LocalObjectStore", "NotFound", "ObjectStore"]
