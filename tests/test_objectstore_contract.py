"""The ObjectStore contract, run against every backend: the local directory and S3 (moto's S3
server over HTTP, a fresh bucket per test). Backend mechanics are tested beside each backend
(tests/test_objectstore_local.py, tests/test_objectstore_s3.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from kafscale.storage import LocalObjectStore, NotFound, ObjectStore
from kafscale.storage.local import TEMP_PREFIX
from tests import s3server

T = TypeVar("T")


@dataclass
class Backend:
    name: str
    make: Callable[[], ObjectStore]
    root: Path | None = None
    """The local store's directory (None for S3)."""

    def run(self, fn: Callable[[ObjectStore], Awaitable[T]]) -> T:
        """Run ``fn`` with a new store in a fresh event loop, closing the store after."""

        async def main() -> T:
            store = self.make()
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(main())


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if request.param == "local":
        root = tmp_path / "root"
        return Backend("local", lambda: LocalObjectStore(root), root)
    server = s3server.shared_or_skip()
    for name, value in s3server.TEST_ENV.items():
        monkeypatch.setenv(name, value)
    from kafscale.storage.s3 import S3ObjectStore

    bucket = server.create_bucket()
    return Backend(
        "s3", lambda: S3ObjectStore(bucket, endpoint_url=server.endpoint_url, path_style=True)
    )


def test_is_an_object_store(backend: Backend) -> None:
    assert isinstance(backend.make(), ObjectStore)


def test_put_get(backend: Backend) -> None:
    async def body(store: ObjectStore) -> tuple[bytes, list[str]]:
        await store.put("ns/topic/0/segment-1.kfs", b"hello")
        return await store.get("ns/topic/0/segment-1.kfs"), await store.list("")

    assert backend.run(body) == (b"hello", ["ns/topic/0/segment-1.kfs"])


def test_put_accepts_chunks_of_each_buffer_type(backend: Backend) -> None:
    async def body(store: ObjectStore) -> tuple[bytes, bytes, bytes]:
        await store.put("k", [b"ab", bytearray(b"cd"), memoryview(b"xxefxx")[2:4]])
        await store.put("one-bytearray", bytearray(b"12"))
        await store.put("one-memoryview", memoryview(b"345"))
        return (
            await store.get("k"),
            await store.get("one-bytearray"),
            await store.get("one-memoryview"),
        )

    assert backend.run(body) == (b"abcdef", b"12", b"345")


def test_put_empty_object(backend: Backend) -> None:
    async def body(store: ObjectStore) -> tuple[bytes, bytes, list[str]]:
        await store.put("empty", b"")
        await store.put("empty-chunks", [])
        return await store.get("empty"), await store.get("empty-chunks"), await store.list("")

    assert backend.run(body) == (b"", b"", ["empty", "empty-chunks"])


def test_put_replaces(backend: Backend) -> None:
    async def body(store: ObjectStore) -> bytes:
        await store.put("a/b", b"first, longer value")
        await store.put("a/b", b"second")
        return await store.get("a/b")

    assert backend.run(body) == b"second"


def test_get_missing_raises_not_found(backend: Backend) -> None:
    async def body(store: ObjectStore) -> None:
        await store.put("a/b/c", b"x")
        for key in ("nope", "a/b/nope", "a/b", "a", "a/b/c/d"):
            with pytest.raises(NotFound):
                await store.get(key)
            with pytest.raises(NotFound):
                await store.get_range(key, 0, 1)
            with pytest.raises(NotFound):
                await store.get_range(key, 0, 0)

    backend.run(body)


def test_not_found_is_a_key_error(backend: Backend) -> None:
    async def body(store: ObjectStore) -> None:
        with pytest.raises(KeyError):
            await store.get("missing")

    backend.run(body)


def test_get_range(backend: Backend) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes

    async def body(store: ObjectStore) -> None:
        await store.put("seg", data)
        await store.put("empty", b"")
        assert await store.get_range("seg", 0, 10) == data[:10]
        assert await store.get_range("seg", 100, 5000) == data[100:5000]
        assert await store.get_range("seg", 10230, 10240) == data[10230:]
        # Shorter at the end, empty past it, empty for an empty range.
        assert await store.get_range("seg", 10230, 20000) == data[10230:]
        assert await store.get_range("seg", 20000, 30000) == b""
        assert await store.get_range("seg", 10240, 10241) == b""
        assert await store.get_range("seg", 7, 7) == b""
        assert await store.get_range("seg", 0, len(data)) == data
        assert await store.get_range("empty", 0, 10) == b""
        with pytest.raises(ValueError):
            await store.get_range("seg", -1, 5)
        with pytest.raises(ValueError):
            await store.get_range("seg", 5, 4)

    backend.run(body)


def test_list_sorted_with_string_prefixes(backend: Backend) -> None:
    keys = [
        "ns/t/0/segment-00000000000000000010.kfs",
        "ns/t/0/segment-00000000000000000000.kfs",
        "ns/t/1/segment-00000000000000000000.kfs",
        "ns/t/10/segment-00000000000000000000.kfs",
        "ns/tx/0/a",
        "ns/t-other",
        "other/x",
        "top",
    ]

    async def body(store: ObjectStore) -> None:
        for key in keys:
            await store.put(key, key.encode())
        assert await store.list("") == sorted(keys)
        assert await store.list("ns/t/0/") == [
            "ns/t/0/segment-00000000000000000000.kfs",
            "ns/t/0/segment-00000000000000000010.kfs",
        ]
        # A prefix need not end at a segment boundary.
        assert await store.list("ns/t/1") == [
            "ns/t/1/segment-00000000000000000000.kfs",
            "ns/t/10/segment-00000000000000000000.kfs",
        ]
        assert await store.list("ns/t") == sorted(k for k in keys if k.startswith("ns/t"))
        assert await store.list("ns/t/0/segment-000000000000000000") == [
            "ns/t/0/segment-00000000000000000000.kfs",
            "ns/t/0/segment-00000000000000000010.kfs",
        ]
        assert await store.list("ns/t/0/segment-00000000000000000010.kfs") == [
            "ns/t/0/segment-00000000000000000010.kfs"
        ]
        assert await store.list("t") == ["top"]
        assert await store.list("nothing/here/") == []
        assert await store.list("ns/t/0/segment-9") == []
        assert await store.list("top/") == []  # a key is not a directory

    backend.run(body)


def test_list_order_is_s3_byte_order(backend: Backend) -> None:
    keys = ["a/B", "a/a", "a/b", "a/\u00e9", "a/z", "a/_", "a/-", "a/0"]

    async def body(store: ObjectStore) -> list[str]:
        for key in keys:
            await store.put(key, b"")
        return await store.list("a/")

    assert backend.run(body) == sorted(keys, key=lambda k: k.encode())


def test_list_rejects_escaping_prefixes(backend: Backend) -> None:
    async def body(store: ObjectStore) -> None:
        for prefix in ("/etc", "../", "a/../", "a\\b", "a//b"):
            with pytest.raises(ValueError):
                await store.list(prefix)

    backend.run(body)


def test_delete(backend: Backend) -> None:
    async def body(store: ObjectStore) -> None:
        await store.put("ns/t/0/a", b"1")
        await store.put("ns/t/0/b", b"2")
        await store.put("ns/u/0/c", b"3")
        await store.delete("ns/t/0/a")
        with pytest.raises(NotFound):
            await store.get("ns/t/0/a")
        assert await store.list("") == ["ns/t/0/b", "ns/u/0/c"]
        await store.delete("ns/t/0/a")  # absent: no error
        await store.delete("never/existed")
        await store.delete("ns/t")  # a prefix of keys, not an object: no error, no effect
        assert await store.list("") == ["ns/t/0/b", "ns/u/0/c"]

    backend.run(body)


def test_create(backend: Backend) -> None:
    async def body(store: ObjectStore) -> None:
        assert await store.create("a/b/c", b"first") is True
        assert await store.create("a/b/c", b"second") is False
        assert await store.get("a/b/c") == b"first"
        assert await store.create("a/b/d", [b"x", b"y"]) is True
        assert await store.get("a/b/d") == b"xy"
        await store.delete("a/b/c")
        assert await store.create("a/b/c", b"third") is True
        assert await store.get("a/b/c") == b"third"
        assert await store.list("") == ["a/b/c", "a/b/d"]

    backend.run(body)


def test_create_over_a_put_object_fails(backend: Backend) -> None:
    async def body(store: ObjectStore) -> tuple[bool, bytes]:
        await store.put("k", b"put")
        return await store.create("k", b"create"), await store.get("k")

    assert backend.run(body) == (False, b"put")


def test_concurrent_creates_exactly_one_wins(backend: Backend) -> None:
    async def body(store: ObjectStore) -> None:
        for round_ in range(20):
            key = f"ns/t/0/segment-{round_}.kfs"
            payloads = [bytes([i]) * 4096 for i in range(8)]
            results = await asyncio.gather(*(store.create(key, p) for p in payloads))
            assert results.count(True) == 1, results
            # The object is the winner's payload, whole.
            assert await store.get(key) == payloads[results.index(True)]

    backend.run(body)


def test_concurrent_creates_from_separate_stores_and_threads(backend: Backend) -> None:
    # Separate instances (as separate processes would be) racing in real threads.
    barrier = threading.Barrier(4)
    results: dict[int, bool] = {}

    def worker(i: int) -> None:
        async def create(store: ObjectStore) -> bool:
            barrier.wait()
            return await store.create("race/key", str(i).encode())

        results[i] = backend.run(create)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, False, False, True]
    winner = next(i for i, won in results.items() if won)
    assert backend.run(lambda store: store.get("race/key")) == str(winner).encode()


def test_durable_across_reopen(backend: Backend) -> None:
    async def write(store: ObjectStore) -> None:
        await store.put("ns/t/0/a", b"aaa")
        assert await store.create("ns/t/0/b", b"bbb")

    async def read(store: ObjectStore) -> tuple[list[str], bytes, bytes, bool]:
        return (
            await store.list(""),
            await store.get("ns/t/0/a"),
            await store.get_range("ns/t/0/b", 1, 3),
            await store.create("ns/t/0/b", b"again"),
        )

    backend.run(write)
    assert backend.run(read) == (["ns/t/0/a", "ns/t/0/b"], b"aaa", b"bb", False)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a/../b",
        "..",
        "../x",
        "a/..",
        "./a",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "a\0b",
        f"a/{TEMP_PREFIX}x",
        f"{TEMP_PREFIX}x/b",
    ],
)
def test_bad_keys_are_rejected(backend: Backend, key: str) -> None:
    async def body(store: ObjectStore) -> list[str]:
        with pytest.raises(ValueError):
            await store.put(key, b"x")
        with pytest.raises(ValueError):
            await store.create(key, b"x")
        with pytest.raises(ValueError):
            await store.get(key)
        with pytest.raises(ValueError):
            await store.get_range(key, 0, 1)
        with pytest.raises(ValueError):
            await store.delete(key)
        return await store.list("")

    assert backend.run(body) == []  # nothing was written
    if backend.root is not None:  # not beside the root either
        assert [p.name for p in backend.root.parent.iterdir()] == ["root"]
        assert list(backend.root.iterdir()) == []


def test_odd_but_valid_keys(backend: Backend) -> None:
    keys = ["a..b", "...", ".hidden", "sp ace", "\u00fcnicode/\u2603", "a.tmp-x", "a+b=c&d?e"]

    async def body(store: ObjectStore) -> list[str]:
        for key in keys:
            await store.put(key, key.encode())
            assert await store.get(key) == key.encode()
            assert await store.get_range(key, 1, 3) == key.encode()[1:3]
        return await store.list("")

    assert backend.run(body) == sorted(keys)
