"""A small asynchronous Kubernetes API client for the objects the operator owns.

kopf watches the custom resources and patches them; the operator's other calls (its children,
pods, events) go through this client, on aiohttp (already a broker dependency), with the
credentials kopf logged in with (a ``kopf.ConnectionInfo``: server, CA, token or client
certificate). Only what the operator needs: get, list, create, merge-patch, delete, and
:meth:`Kube.apply` (create, or patch when the live object differs from the desired one).
Deliberately no PUT: a merge patch of the fields we own leaves the fields others own (the API
server's defaults, an autoscaler's replicas) alone.
"""

from __future__ import annotations

import base64
import logging
import ssl
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from kafscale.operator.spec import now_rfc3339

log = logging.getLogger("kafscale.operator")

MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = aiohttp.ClientTimeout(total=30)


class KubeError(Exception):
    """An API answer other than success; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """The API path of a resource collection or object (``/api/v1/...``, ``/apis/g/v/...``)."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return f"{base}/{name}" if name else base


def object_path(obj: Mapping[str, Any], with_name: bool = True) -> str:
    meta = obj["metadata"]
    return path(
        obj["apiVersion"],
        obj["kind"].lower() + "s",  # every kind the operator writes pluralises so
        meta.get("namespace"),
        meta["name"] if with_name else None,
    )


def contains(live: Any, desired: Any) -> bool:
    """Whether ``live`` already has everything ``desired`` says (dicts: every key, recursively;
    lists: the same length, item by item): the API server adds defaults, which do not count
    as a difference."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    if isinstance(desired, int | float) and isinstance(live, str):
        return str(desired) == live  # an int-or-string the server kept as given
    return bool(live == desired)


def _text(data: str | bytes) -> str:
    return data.decode() if isinstance(data, bytes) else data


def _bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _path(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Kube:
    """One API server, one aiohttp session (create it inside the operator's event loop)."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_path: str | None = None,
        ca_data: str | bytes | None = None,
        certificate_path: str | None = None,
        certificate_data: str | bytes | None = None,
        private_key_path: str | None = None,
        private_key_data: str | bytes | None = None,
        insecure: bool = False,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif username and password:
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        context: ssl.SSLContext | bool = True
        if self.server.startswith("https"):
            context = ssl.create_default_context(
                cafile=ca_path, cadata=_text(ca_data) if ca_data else None
            )
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            cert, key = certificate_path, private_key_path
            with tempfile.TemporaryDirectory() as tmp:
                # ssl wants files: data given inline is written out only for the loading.
                if certificate_data and not cert:
                    cert = f"{tmp}/tls.crt"
                    Path(cert).write_bytes(_bytes(certificate_data))
                if private_key_data and not key:
                    key = f"{tmp}/tls.key"
                    Path(key).write_bytes(_bytes(private_key_data))
                if cert:
                    context.load_cert_chain(cert, key)
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=TIMEOUT,
            connector=aiohttp.TCPConnector(ssl=context),
        )

    @classmethod
    def from_connection_info(cls, info: Any) -> Kube:
        """From a ``kopf.ConnectionInfo`` (duck-typed: kopf is imported by the handlers only)."""
        return cls(
            info.server,
            token=info.token,
            username=info.username,
            password=info.password,
            ca_path=_path(info.ca_path),
            ca_data=info.ca_data,
            certificate_path=_path(info.certificate_path),
            certificate_data=info.certificate_data,
            private_key_path=_path(info.private_key_path),
            private_key_data=info.private_key_data,
            insecure=bool(info.insecure),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self, method: str, url_path: str, body: Any = None, content_type: str | None = None
    ) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self._session.request(
            method, self.server + url_path, json=body, headers=headers
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise KubeError(response.status, text[:300])
            return await response.json(content_type=None) if text else None

    async def get(self, url_path: str) -> dict[str, Any] | None:
        """The object, or None when there is none (404)."""
        try:
            result: dict[str, Any] = await self._request("GET", url_path)
            return result
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, url_path: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The collection's objects whose labels include ``match_labels`` (also filtered here:
        the selector is a hint some servers, the tests' emulator among them, ignore)."""
        selector = ",".join(f"{k}={v}" for k, v in match_labels.items())
        answer = await self._request("GET", f"{url_path}?labelSelector={selector}")
        items: list[dict[str, Any]] = (answer or {}).get("items") or []
        return [
            i
            for i in items
            if all(
                ((i.get("metadata") or {}).get("labels") or {}).get(k) == v
                for k, v in match_labels.items()
            )
        ]

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", object_path(obj, False), obj)
        return result

    async def patch(self, url_path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): dicts merge, lists are replaced, None deletes."""
        result: dict[str, Any] = await self._request("PATCH", url_path, body, MERGE_PATCH)
        return result

    async def delete(self, url_path: str, body: dict[str, Any] | None = None) -> bool:
        """False when there was nothing to delete."""
        try:
            await self._request("DELETE", url_path, body)
            return True
        except KubeError as e:
            if e.status == 404:
                return False
            raise

    async def apply(self, desired: dict[str, Any], create_only: Any = None) -> str:
        """Make the live object contain ``desired``: "created", "patched" or "unchanged".
        ``create_only`` (a dict merged into ``spec``) is written only when creating (the
        StatefulSet's replicas when an autoscaler owns them)."""
        url = object_path(desired)
        live = await self.get(url)
        if live is None:
            obj = desired
            if create_only:
                obj = {**desired, "spec": {**create_only, **desired["spec"]}}
            try:
                await self.create(obj)
                return "created"
            except KubeError as e:
                if e.status != 409:  # created meanwhile (a concurrent pass): patch it
                    raise
                live = await self.get(url) or {}
        if contains(live, desired):
            return "unchanged"
        await self.patch(url, desired)
        return "patched"

    async def event(
        self,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        type_: str = "Normal",
    ) -> None:
        """Post a core/v1 Event about ``involved`` (what ``kubectl describe`` lists); a
        failure is logged, never raised (an event is a courtesy)."""
        meta = involved["metadata"]
        namespace = meta.get("namespace") or "default"
        now = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                # Named as kubectl and the controllers name theirs: object name + unique part.
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "kafscale-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.create(event)
        except (KubeError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], e)
