"""LocalObjectStore: the ObjectStore contract on a directory, plus its durability mechanics."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from kafscale.storage import LocalObjectStore, NotFound, ObjectStore
from kafscale.storage.local import TEMP_PREFIX

T = TypeVar("T")


def run(fn: Callable[[LocalObjectStore], Awaitable[T]], root: Path) -> T:
    """Run ``fn`` with a store on ``root`` in a fresh event loop, closing the store after."""

    async def main() -> T:
        store = LocalObjectStore(root)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_is_an_object_store(tmp_path: Path) -> None:
    assert isinstance(LocalObjectStore(tmp_path), ObjectStore)


def test_root_is_created(tmp_path: Path) -> None:
    root = tmp_path / "x" / "y"
    store = LocalObjectStore(root)
    assert root.is_dir()
    assert store.root == root.resolve()


def test_put_get_maps_key_to_path(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> bytes:
        await store.put("ns/topic/0/segment-1.kfs", b"hello")
        return await store.get("ns/topic/0/segment-1.kfs")

    assert run(body, tmp_path) == b"hello"
    # The directory holds exactly the key S3 would, and nothing else.
    assert (tmp_path / "ns" / "topic" / "0" / "segment-1.kfs").read_bytes() == b"hello"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "ns/topic/0/segment-1.kfs"
    ]


def test_put_accepts_chunks_of_each_buffer_type(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> tuple[bytes, bytes, bytes]:
        await store.put("k", [b"ab", bytearray(b"cd"), memoryview(b"xxefxx")[2:4]])
        await store.put("one-bytearray", bytearray(b"12"))
        await store.put("one-memoryview", memoryview(b"345"))
        return (
            await store.get("k"),
            await store.get("one-bytearray"),
            await store.get("one-memoryview"),
        )

    assert run(body, tmp_path) == (b"abcdef", b"12", b"345")


def test_put_empty_object(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> tuple[bytes, bytes, list[str]]:
        await store.put("empty", b"")
        await store.put("empty-chunks", [])
        return await store.get("empty"), await store.get("empty-chunks"), await store.list("")

    assert run(body, tmp_path) == (b"", b"", ["empty", "empty-chunks"])


def test_put_replaces(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> bytes:
        await store.put("a/b", b"first, longer value")
        await store.put("a/b", b"second")
        return await store.get("a/b")

    assert run(body, tmp_path) == b"second"


def test_get_missing_raises_not_found(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
        await store.put("a/b/c", b"x")
        for key in ("nope", "a/b/nope", "a/b", "a", "a/b/c/d"):
            with pytest.raises(NotFound):
                await store.get(key)
            with pytest.raises(NotFound):
                await store.get_range(key, 0, 1)
            with pytest.raises(NotFound):
                await store.get_range(key, 0, 0)

    run(body, tmp_path)


def test_not_found_is_a_key_error(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
        with pytest.raises(KeyError):
            await store.get("missing")

    run(body, tmp_path)


def test_get_range(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes

    async def body(store: LocalObjectStore) -> None:
        await store.put("seg", data)
        assert await store.get_range("seg", 0, 10) == data[:10]
        assert await store.get_range("seg", 100, 5000) == data[100:5000]
        assert await store.get_range("seg", 10230, 10240) == data[10230:]
        # Shorter at the end, empty past it, empty for an empty range.
        assert await store.get_range("seg", 10230, 20000) == data[10230:]
        assert await store.get_range("seg", 20000, 30000) == b""
        assert await store.get_range("seg", 7, 7) == b""
        assert await store.get_range("seg", 0, len(data)) == data
        with pytest.raises(ValueError):
            await store.get_range("seg", -1, 5)
        with pytest.raises(ValueError):
            await store.get_range("seg", 5, 4)

    run(body, tmp_path)


def test_get_range_reads_only_the_requested_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested: list[int] = []
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        requested.append(n)
        return real_pread(fd, n, offset)

    async def body(store: LocalObjectStore) -> bytes:
        await store.put("big", b"z" * 1_000_000)
        monkeypatch.setattr(os, "pread", pread)
        return await store.get_range("big", 500_000, 500_010)

    assert run(body, tmp_path) == b"z" * 10
    assert requested and sum(requested) == 10


def test_list_sorted_with_string_prefixes(tmp_path: Path) -> None:
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

    async def body(store: LocalObjectStore) -> None:
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

    run(body, tmp_path)


def test_list_order_is_s3_byte_order(tmp_path: Path) -> None:
    keys = ["a/B", "a/a", "a/b", "a/\u00e9", "a/z", "a/_", "a/-", "a/0"]

    async def body(store: LocalObjectStore) -> list[str]:
        for key in keys:
            await store.put(key, b"")
        return await store.list("a/")

    assert run(body, tmp_path) == sorted(keys, key=lambda k: k.encode())


def test_list_skips_temp_files(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> list[str]:
        await store.put("a/b", b"x")
        # As a crash mid-write would leave them.
        (tmp_path / "a" / f"{TEMP_PREFIX}123").write_bytes(b"partial")
        (tmp_path / f"{TEMP_PREFIX}456").write_bytes(b"partial")
        return await store.list("")

    assert run(body, tmp_path) == ["a/b"]


def test_list_rejects_escaping_prefixes(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
        for prefix in ("/etc", "../", "a/../", "a\\b", "a//b"):
            with pytest.raises(ValueError):
                await store.list(prefix)

    run(body, tmp_path)


def test_delete(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
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

    run(body, tmp_path)


def test_delete_removes_empty_parents_only(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
        await store.put("ns/t/0/a", b"1")
        await store.put("ns/u/0/c", b"3")
        await store.delete("ns/t/0/a")
        assert not (tmp_path / "ns" / "t").exists()
        assert (tmp_path / "ns" / "u" / "0" / "c").is_file()
        await store.delete("ns/u/0/c")
        assert list(tmp_path.iterdir()) == []
        assert tmp_path.is_dir()  # the root itself stays
        # Writing again re-creates the directories the deletes removed.
        await store.put("ns/t/0/a", b"again")
        assert await store.get("ns/t/0/a") == b"again"

    run(body, tmp_path)


def test_create(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
        assert await store.create("a/b/c", b"first") is True
        assert await store.create("a/b/c", b"second") is False
        assert await store.get("a/b/c") == b"first"
        assert await store.create("a/b/d", [b"x", b"y"]) is True
        assert await store.get("a/b/d") == b"xy"
        await store.delete("a/b/c")
        assert await store.create("a/b/c", b"third") is True
        assert await store.get("a/b/c") == b"third"
        assert await store.list("a/") == ["a/b/c", "a/b/d"]

    run(body, tmp_path)
    # Neither the winning nor the losing create leaves its temp file behind.
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_create_over_a_put_object_fails(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> tuple[bool, bytes]:
        await store.put("k", b"put")
        return await store.create("k", b"create"), await store.get("k")

    assert run(body, tmp_path) == (False, b"put")


def test_concurrent_creates_exactly_one_wins(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
        for round_ in range(20):
            key = f"ns/t/0/segment-{round_}.kfs"
            payloads = [bytes([i]) * 4096 for i in range(8)]
            results = await asyncio.gather(*(store.create(key, p) for p in payloads))
            assert results.count(True) == 1, results
            # The object is the winner's payload, whole.
            assert await store.get(key) == payloads[results.index(True)]

    run(body, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_concurrent_creates_from_separate_stores_and_threads(tmp_path: Path) -> None:
    # Two instances (as two processes would be) racing in real threads.
    stores = [LocalObjectStore(tmp_path) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[bool] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        barrier.wait()
        won = asyncio.run(stores[i].create("race/key", str(i).encode()))
        with lock:
            results.append(won)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert (tmp_path / "race" / "key").read_bytes() in {b"0", b"1", b"2", b"3"}


def test_concurrent_puts_and_deletes_in_one_directory(tmp_path: Path) -> None:
    # Deletes remove empty directories while puts create files in them; every put must land.
    async def body(store: LocalObjectStore) -> None:
        for round_ in range(30):
            await store.put("d/e/old", b"o")
            await asyncio.gather(store.delete("d/e/old"), store.put(f"d/e/new{round_}", b"n"))
            assert await store.get(f"d/e/new{round_}") == b"n"
            await store.delete(f"d/e/new{round_}")
        assert await store.list("") == []

    run(body, tmp_path)


def test_concurrent_deletes_and_puts_across_directory_levels(tmp_path: Path) -> None:
    # Many deletes race to remove the same directories while puts need them back.
    async def body(store: LocalObjectStore) -> None:
        for round_ in range(20):
            old = [f"n/t/{p}/seg-{i}" for p in range(2) for i in range(4)]
            await asyncio.gather(*(store.put(key, b"o") for key in old))
            new = [f"n/t/{p}/new-{round_}" for p in range(2)]
            await asyncio.gather(
                *(store.delete(key) for key in old), *(store.put(key, b"n") for key in new)
            )
            assert await store.list("n/") == sorted(new)
            await asyncio.gather(*(store.delete(key) for key in new))
            assert await store.list("") == []
        assert list(tmp_path.iterdir()) == []

    run(body, tmp_path)


def test_durable_across_reopen(tmp_path: Path) -> None:
    async def write(store: LocalObjectStore) -> None:
        await store.put("ns/t/0/a", b"aaa")
        assert await store.create("ns/t/0/b", b"bbb")

    async def read(store: LocalObjectStore) -> tuple[list[str], bytes, bytes, bool]:
        return (
            await store.list(""),
            await store.get("ns/t/0/a"),
            await store.get_range("ns/t/0/b", 1, 3),
            await store.create("ns/t/0/b", b"again"),
        )

    run(write, tmp_path)
    assert run(read, tmp_path) == (["ns/t/0/a", "ns/t/0/b"], b"aaa", b"bb", False)


def test_put_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc") else "?")
        real_fsync(fd)

    async def body(store: LocalObjectStore) -> None:
        await store.put("a/first", b"x")  # creates directory a: its name must be fsynced too
        monkeypatch.setattr(os, "fsync", fsync)
        await store.put("a/b", b"x")
        await store.create("a/c", b"y")

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name fsynced descriptors")
    run(body, tmp_path)
    root = str(tmp_path.resolve())
    # put: the temp file, then the directory after the rename. create: the same.
    assert len(synced) == 4
    assert os.path.basename(synced[0]).startswith(TEMP_PREFIX)
    assert synced[1] == f"{root}/a"
    assert os.path.basename(synced[2]).startswith(TEMP_PREFIX)
    assert synced[3] == f"{root}/a"


def test_new_directories_are_fsynced_into_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name fsynced descriptors")
    monkeypatch.setattr(os, "fsync", fsync)
    root = str(tmp_path.resolve())
    run(lambda store: store.put("x/y/z", b"1"), tmp_path)
    # Each new directory's parent, then the file, then the file's directory.
    assert synced[:2] == [root, f"{root}/x"]
    assert os.path.basename(synced[2]).startswith(TEMP_PREFIX)
    assert synced[3:] == [f"{root}/x/y"]
    synced.clear()
    run(lambda store: store.put("x/y/w", b"2"), tmp_path)
    # A new instance re-checks existing directories once (cheap, and it cannot know).
    assert synced[-1] == f"{root}/x/y"


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
def test_bad_keys_are_rejected(tmp_path: Path, key: str) -> None:
    async def body(store: LocalObjectStore) -> None:
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

    run(body, tmp_path / "root")
    # Nothing was written anywhere, inside the root or beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["root"]
    assert list((tmp_path / "root").iterdir()) == []


def test_odd_but_valid_keys(tmp_path: Path) -> None:
    keys = ["a..b", "...", ".hidden", "sp ace", "\u00fcnicode/\u2603", "a.tmp-x"]

    async def body(store: LocalObjectStore) -> list[str]:
        for key in keys:
            await store.put(key, key.encode())
            assert await store.get(key) == key.encode()
        return await store.list("")

    assert run(body, tmp_path) == sorted(keys)


def test_key_that_is_a_prefix_directory_cannot_be_written(tmp_path: Path) -> None:
    # The one S3 behaviour a filesystem cannot mirror; it must fail loudly, not lie.
    async def body(store: LocalObjectStore) -> None:
        await store.put("a/b/c", b"x")
        with pytest.raises(OSError):
            await store.create("a/b", b"y")
        with pytest.raises(OSError):
            await store.put("a/b", b"y")
        with pytest.raises(OSError):
            await store.put("a/b/c/d", b"y")
        assert await store.list("") == ["a/b/c"]

    run(body, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_io_runs_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[int] = set()
    real_open = os.open

    def spy_open(*args: object, **kwargs: object) -> int:
        threads.add(threading.get_ident())
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    async def body(store: LocalObjectStore) -> None:
        monkeypatch.setattr(os, "open", spy_open)
        await store.put("k", b"v")
        await store.get_range("k", 0, 1)
        await store.create("k2", b"v")

    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    run(body, tmp_path)
    assert threads and loop_thread not in threads
