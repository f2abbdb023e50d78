"""S3 server-side encryption (``s3.sse``, ``s3.sse.kms.key.id``): every object the store
writes, by ``put`` and by the conditional ``create``, carries the encryption the settings
ask for, as the S3 server (moto) reports it back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kafscale.broker.config import BrokerConfig
from kafscale.broker.main import object_store
from kafscale.storage.s3 import S3ObjectStore
from tests import s3server


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> s3server.S3Server:
    server = s3server.shared_or_skip()
    for name, value in s3server.TEST_ENV.items():
        monkeypatch.setenv(name, value)
    return server


@pytest.mark.parametrize(
    ("sse", "key_id", "expected"),
    [("AES256", None, ("AES256", None)), ("aws:kms", "my-key", ("aws:kms", "my-key"))],
)
def test_every_write_is_encrypted(
    server: s3server.S3Server, sse: str, key_id: str | None, expected: tuple[str, str | None]
) -> None:
    bucket = server.create_bucket()

    async def main() -> list[tuple[str, str | None]]:
        store = S3ObjectStore(
            bucket,
            endpoint_url=server.endpoint_url,
            path_style=True,
            sse=sse,
            sse_kms_key_id=key_id,
        )
        try:
            await store.put("a", b"data")
            assert await store.create("b", b"data")
            client: Any = await store._client()
            seen = []
            for key in ("a", "b"):
                head = await client.head_object(Bucket=bucket, Key=key)
                kms = head.get("SSEKMSKeyId")
                seen.append((head.get("ServerSideEncryption"), kms and kms.rsplit("/", 1)[-1]))
            return seen
        finally:
            await store.close()

    assert asyncio.run(main()) == [expected, expected]


def test_settings_reach_the_store() -> None:
    config = BrokerConfig(s3_bucket="b", s3_sse="aws:kms", s3_sse_kms_key_id="k")
    store = object_store(config)
    assert isinstance(store, S3ObjectStore)
    assert store._sse == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k"}
    with pytest.raises(ValueError, match="needs sse='aws:kms'"):
        S3ObjectStore("b", sse="AES256", sse_kms_key_id="k")
