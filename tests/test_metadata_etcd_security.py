"""The etcd metadata store over TLS with a client certificate, and with etcd users.

One etcd process of the test's own: TLS on its client port with ``--client-cert-auth`` (a
certificate from the suite's CA, tests/security_ca.py), then a root user and authentication
enabled through etcd's Auth API. The store works with the CA, the client certificate and the
password; without the certificate the TLS handshake fails, without the password etcd refuses
the request, and an expired token is replaced without the caller noticing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from kafscale.metadata import MetadataUnavailable
from kafscale.metadata.etcd import EtcdMetadataStore
from tests.etcdserver import etcd_binary, free_ports, unavailable
from tests.security_ca import Pem, TestCA


class TlsEtcd:
    def __init__(self, root: Path) -> None:
        ca = TestCA(root / "ca")
        self.ca = ca.ca_file
        self.server = ca.issue("etcd", "localhost", server=True)
        self.client: Pem = ca.issue("etcd-client", "kafscale")
        self.client_port, peer = free_ports(2)
        self.root = root
        binary = etcd_binary()
        if binary is None:
            unavailable("no etcd binary")
        url = f"https://127.0.0.1:{self.client_port}"
        args = [
            str(binary),
            f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            f"--cert-file={self.server.cert}",
            f"--key-file={self.server.key}",
            f"--trusted-ca-file={self.ca}",
            "--client-cert-auth",
            "--auth-token=simple",
            "--log-level=warn",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with (root / "etcd.log").open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(), self.client.key.read_bytes(), self.client.cert.read_bytes()
        )

    async def enable_auth(self) -> None:
        """A root user with a password, then authentication on (etcd's Auth API)."""
        target = f"127.0.0.1:{self.client_port}"
        deadline = time.monotonic() + 20
        async with grpc.aio.secure_channel(target, self.credentials()) as channel:
            auth = rpc.AuthStub(channel)
            while True:
                try:
                    await auth.UserAdd(
                        rpc.AuthUserAddRequest(name="root", password="pw"), timeout=2
                    )
                    break
                except grpc.aio.AioRpcError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
            await auth.AuthEnable(rpc.AuthEnableRequest())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEtcd]:
    server = TlsEtcd(tmp_path_factory.mktemp("etcd-tls"))
    try:
        asyncio.run(server.enable_auth())
        yield server
    finally:
        server.stop()


def _store(etcd: TlsEtcd, *, cert: bool = True, password: str | None = "pw") -> EtcdMetadataStore:
    return EtcdMetadataStore(
        f"https://127.0.0.1:{etcd.client_port}",
        cacert=str(etcd.ca),
        cert=str(etcd.client.cert) if cert else None,
        key=str(etcd.client.key) if cert else None,
        user="root" if password else None,
        password=password,
        retry_timeout=1.0,
    )


def test_tls_client_certificate_and_password(etcd: TlsEtcd) -> None:
    async def main() -> None:
        store = _store(etcd)
        try:
            await store.put(b"/k", b"v")
            got = await store.get(b"/k")
            assert got is not None and got.value == b"v"
            # An expired token (etcd forgets simple tokens) is replaced transparently.
            assert store._security is not None
            store._security.token = "expired.token"
            assert (await store.get(b"/k")) is not None
        finally:
            await store.close()

    asyncio.run(main())


def test_no_password_is_refused(etcd: TlsEtcd) -> None:
    async def main() -> None:
        store = _store(etcd, password=None)
        try:
            with pytest.raises(PermissionError):
                await store.get(b"/k")
        finally:
            await store.close()

    asyncio.run(main())


def test_no_client_certificate_is_refused(etcd: TlsEtcd) -> None:
    async def main() -> None:
        store = _store(etcd, cert=False)
        try:
            with pytest.raises(MetadataUnavailable):
                await store.get(b"/k")
        finally:
            with contextlib.suppress(Exception):
                await store.close()

    asyncio.run(main())


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="both cert and key"):
        EtcdMetadataStore("127.0.0.1:2379", cacert="ca.pem", cert="c.pem")
    with pytest.raises(ValueError, match="both user and password"):
        EtcdMetadataStore("127.0.0.1:2379", user="root")
    with pytest.raises(ValueError, match=r"https needs etcd\.cacert"):
        EtcdMetadataStore("https://127.0.0.1:2379")
