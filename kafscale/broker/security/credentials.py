"""SCRAM credentials in the metadata store, shared by every broker of a cluster.

One key per user, ``/{ns}/scram-users/{user}`` (the name URL-quoted), whose JSON value maps
each mechanism to its salted credential (:class:`~kafscale.broker.security.scram.ScramCredential`;
never a password). A change is one compare-and-swap on that key, so two brokers altering one
user concurrently cannot lose either change. Brokers read them from an in-memory mirror kept
current by a watch: a user added on one broker can log in on every broker at once.
``kafscale user add|delete|list`` writes the same keys straight into the store (before any
broker runs: the first super user).
"""

from __future__ import annotations

import json
from urllib.parse import quote, unquote

from kafscale.broker.cluster import Mirror
from kafscale.broker.security.scram import ScramCredential
from kafscale.metadata import Compare, Delete, KeyValue, MetadataStore, Put

UserCredentials = dict[str, ScramCredential]
"""mechanism name -> credential."""


def users_prefix(namespace: str) -> bytes:
    """The metadata-store prefix of the users of ``namespace``."""
    return f"/{namespace}/scram-users/".encode()


def _decode(value: bytes) -> UserCredentials:
    data = json.loads(value)
    return {mech: ScramCredential.from_json(c) for mech, c in data.items()}


def _encode(creds: UserCredentials) -> bytes:
    return json.dumps({m: c.to_json() for m, c in sorted(creds.items())}).encode()


class CredentialStore:
    """Read and change the SCRAM credentials of one namespace (see the module docstring)."""

    def __init__(self, meta: MetadataStore, namespace: str) -> None:
        self.meta = meta
        self.prefix = users_prefix(namespace)
        self.mirror: Mirror | None = None

    async def follow(self) -> None:
        """Keep an in-memory copy current (brokers); :meth:`lookup` reads it."""
        self.mirror = Mirror(self.meta, self.prefix)
        await self.mirror.start()

    async def close(self) -> None:
        """Stop following."""
        if self.mirror is not None:
            await self.mirror.close()

    def lookup(self, user: str, mechanism: str) -> ScramCredential | None:
        """The user's credential for ``mechanism`` from the mirror (None: none)."""
        assert self.mirror is not None, "follow() first"
        kv = self.mirror.get(quote(user, safe="").encode())
        if kv is None:
            return None
        try:
            return _decode(kv.value).get(mechanism)
        except (ValueError, KeyError, TypeError):
            return None

    def all_users(self) -> dict[str, UserCredentials]:
        """Every user with credentials, from the mirror."""
        assert self.mirror is not None, "follow() first"
        out = {}
        for key, kv in self.mirror.items.items():
            try:
                out[unquote(key.decode())] = _decode(kv.value)
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def read_all(self) -> dict[str, UserCredentials]:
        """Every user with credentials, read from the store (the CLI)."""
        out = {}
        for kv in await self.meta.range(self.prefix):
            out[unquote(kv.key[len(self.prefix) :].decode())] = _decode(kv.value)
        return out

    async def change(
        self, user: str, upserts: UserCredentials, deletions: set[str]
    ) -> UserCredentials:
        """Apply upserts and deletions to one user by compare-and-swap (retried on a
        concurrent change); the user's credentials afterwards. Raises KeyError naming a
        mechanism to delete that the user does not have."""
        key = self.prefix + quote(user, safe="").encode()
        while True:
            kv = await self.meta.get(key)
            current = _decode(kv.value) if kv is not None else {}
            missing = deletions - current.keys()
            if missing:
                raise KeyError(sorted(missing)[0])
            new = {m: c for m, c in current.items() if m not in deletions}
            new.update(upserts)
            guard = Compare(key, "mod_revision", "==", kv.mod_revision if kv is not None else 0)
            op: Put | Delete = Put(key, _encode(new)) if new else Delete(key)
            result = await self.meta.txn([guard], [op])
            if result.succeeded:
                if self.mirror is not None:  # visible to the next login here at once
                    self.mirror.note(
                        key[len(self.prefix) :],
                        None if not new else KeyValue(key, _encode(new), result.revision, 1),
                    )
                return new
