"""LocalObjectStore mechanics: keys as paths, temp files, fsyncs, directories, threads. The
ObjectStore contract itself runs against every backend in tests/test_objectstore_contract.py."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from kafscale.storage import LocalObjectStore
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


def test_creates_leave_no_temp_files(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> None:
        assert await store.create("a/b/c", b"first") is True
        assert await store.create("a/b/c", b"second") is False
        for round_ in range(5):
            key = f"r/{round_}"
            results = await asyncio.gather(*(store.create(key, bytes([i])) for i in range(8)))
            assert results.count(True) == 1, results

    run(body, tmp_path)
    # Neither the winning nor the losing creates leave their temp files behind.
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "a/b/c",
        *(f"r/{i}" for i in range(5)),
    ]


def test_list_skips_temp_files(tmp_path: Path) -> None:
    async def body(store: LocalObjectStore) -> list[str]:
        await store.put("a/b", b"x")
        # As a crash mid-write would leave them.
        (tmp_path / "a" / f"{TEMP_PREFIX}123").write_bytes(b"partial")
        (tmp_path / f"{TEMP_PREFIX}456").write_bytes(b"partial")
        return await store.list("")

    assert run(body, tmp_path) == ["a/b"]


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


def test_a_written_object_is_dropped_from_the_page_cache_after_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each put and create advises the kernel to drop the file's pages (DONTNEED), after the
    file's fsync (its pages are clean then: nothing is lost or written twice); the object
    reads back whole."""
    import kafscale.storage.local as local

    if local._FADVISE is None:
        pytest.skip("no posix_fadvise on this platform")
    calls: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert (offset, length, advice) == (0, 0, os.POSIX_FADV_DONTNEED)
        assert os.fstat(fd).st_size == 5  # the whole object, written
        calls.append("dontneed")

    async def body(store: LocalObjectStore) -> tuple[bytes, bytes]:
        await store.put("a/first", b"x")  # its directory's fsyncs are not counted below
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(local, "_FADVISE", fadvise)
        await store.put("a/b", b"hello")
        await store.create("a/c", b"world")
        return await store.get("a/b"), await store.get("a/c")

    assert run(body, tmp_path) == (b"hello", b"world")
    # Each: the file's fsync, the advice, then the directory's fsync.
    assert calls == ["fsync", "dontneed", "fsync"] * 2


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


def test_put_writes_every_chunk_despite_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put's chunks go out in few writev calls; a short write (allowed for any write) is
    resumed where it stopped, and more chunks than one call takes are written in turns."""
    calls: list[int] = []

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        data = b"".join(bytes(b) for b in buffers)
        return os.write(fd, data[: max(1, len(data) // 3)])  # a prefix of what was asked

    monkeypatch.setattr(os, "writev", short_writev)
    chunks = [bytes([i % 251]) * (i % 13) for i in range(3000)]  # some empty
    store = LocalObjectStore(tmp_path)
    asyncio.run(store.put("a/b", chunks))
    assert (tmp_path / "a" / "b").read_bytes() == b"".join(chunks)
    assert max(calls) <= 1024
