"""An object store in a local directory: the development and single-node stand-in for S3.

The directory holds exactly the objects S3 would: key ``a/b/c.kfs`` is the file
``root/a/b/c.kfs``, so a bucket can be seeded from (or copied to) the directory as it is. The
only other entries are ``.tmp-*`` files of writes in progress (or left by a crash); they are
never listed and never collide with a key, because keys may not contain a segment starting
with ``.tmp-``.

Writes are durable when they return: the data goes to a temporary file in the target
directory, which is fsynced and then renamed (``put``) or hard-linked (``create``) to the final
name, and the directory is fsynced so the new name survives a crash too. Readers therefore see
either nothing or a whole object, never a partial one.

A filesystem, unlike S3, cannot hold both a key ``a/b`` and a key ``a/b/c`` (``a/b`` would be a
file and a directory at once); writing the second fails with an :class:`OSError`. The broker's
keys (``{namespace}/{topic}/{partition}/segment-....kfs``) never do this.

All blocking file I/O runs in :func:`asyncio.to_thread`, so a slow disk never stalls the event
loop; each call is one thread hop, which is cheap next to the I/O itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from kafscale.protocol.wire import Buffer
from kafscale.storage.objectstore import NotFound, ObjectStore

TEMP_PREFIX = ".tmp-"
"""Name prefix of in-progress writes; no key segment may start with it."""

_BUFFER_TYPES = (bytes, bytearray, memoryview)


def validate_key(key: str) -> list[str]:
    """The ``/``-separated segments of ``key``; :class:`ValueError` if it is not a safe key.

    Rejected: empty keys, absolute keys, backslashes (a Windows separator, and ambiguous in
    S3 tooling), NUL, empty segments (``a//b``, a trailing ``/``), ``.`` and ``..`` segments
    (which would escape or alias the root) and segments starting with ``.tmp-`` (reserved for
    in-progress writes, which ``list`` hides).
    """
    if not isinstance(key, str):
        raise TypeError(f"object key must be str, not {type(key).__name__}")
    if not key:
        raise ValueError("empty object key")
    if "\\" in key or "\0" in key:
        raise ValueError(f"object key contains a backslash or NUL: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"object key is absolute: {key!r}")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"object key has an empty, '.' or '..' segment: {key!r}")
        if segment.startswith(TEMP_PREFIX):
            raise ValueError(f"object key segment starts with {TEMP_PREFIX!r}: {key!r}")
    return segments


def _chunks(data: Buffer | Sequence[Buffer]) -> Sequence[Buffer]:
    # ``bytes`` is itself a Sequence (of ints), so test for one buffer first.
    if isinstance(data, _BUFFER_TYPES):
        return (data,)
    return data


_IOV_MAX = 1024
"""Buffers per ``writev`` call (POSIX's minimum IOV_MAX on Linux)."""


def _write_all(fd: int, chunks: Sequence[Buffer]) -> None:
    """Write every chunk to ``fd`` with as few system calls as possible (``writev``): each
    call from this worker thread is a round trip through the GIL, slow while the event loop
    is busy."""
    views = [v for v in (memoryview(c).cast("B") for c in chunks) if len(v)]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        if written <= 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        done = 0
        while done < len(views) and written >= len(views[done]):
            written -= len(views[done])
            done += 1
        del views[:done]
        if written:
            views[0] = views[0][written:]


_FADVISE = getattr(os, "posix_fadvise", None)
"""``os.posix_fadvise`` where the platform has it (not macOS)."""


def _drop_behind(fd: int) -> None:
    """Drop the just-written (and fsynced, so clean) file's pages from the page cache.

    An object is written once and read back through the broker's segment cache, which
    already holds the recent bytes: kept in the page cache too, every byte would be held
    twice, and the page cache would grow with every object written, each new page taken
    from free memory. On a virtual machine that hands free memory back to its host (free page
    reporting, as on these Firecracker machines) the first write to such a page costs a host
    fault: embedded produce spent 2.7-3.4 ms of system time per MB, most of it copying into
    new page-cache pages; dropping them behind lets the next object reuse them (1.7 ms).
    Reads of a dropped object go to the disk (cold reads; compaction's inputs no longer
    in the segment cache)."""
    if _FADVISE is not None:
        with contextlib.suppress(OSError):  # advice only: a filesystem may not take it
            _FADVISE(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _fsync_dir(path: Path) -> None:
    """Make the directory's entries (names created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore(ObjectStore):
    """:class:`ObjectStore` on a local directory ``root`` (created if missing).

    Several instances (or processes) may share one directory: ``create`` is atomic against
    every other writer because it relies on :func:`os.link` failing when the name exists.
    """

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root).resolve()
        self._root.mkdir(parents=True, exist_ok=True)
        # Directories whose own name is known to be durable (fsynced into their parent) by
        # this instance, so a put pays for a new directory once, not on every write.
        self._durable_dirs: set[Path] = {self._root}
        self._dirs_lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The directory holding the objects."""
        return self._root

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*validate_key(key))

    # -- writes ------------------------------------------------------------------------------

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        """Store ``data`` under ``key``, atomically replacing any object there; durable on
        return."""
        path = self._path(key)
        await asyncio.to_thread(self._put_sync, path, _chunks(data))

    async def create(self, key: str, data: Buffer | Sequence[Buffer]) -> bool:
        """Store ``data`` only if ``key`` does not exist; False (nothing written) if it does.

        Atomic against concurrent creators in any process: the final name is made with
        :func:`os.link`, which fails if the name exists, so exactly one creator wins.
        """
        path = self._path(key)
        return await asyncio.to_thread(self._create_sync, path, _chunks(data))

    def _put_sync(self, path: Path, chunks: Sequence[Buffer]) -> None:
        temp = self._write_temp(path, chunks)
        try:
            os.replace(temp, path)
        except BaseException:
            _unlink_quietly(temp)
            raise
        _fsync_dir(path.parent)

    def _create_sync(self, path: Path, chunks: Sequence[Buffer]) -> bool:
        temp = self._write_temp(path, chunks)
        try:
            os.link(temp, path)
        except FileExistsError:
            if path.is_dir():
                # S3 would create the object; here the name is taken by a "directory" of
                # other keys (see the module docstring). Saying "exists" would be a lie.
                raise IsADirectoryError(
                    errno.EISDIR, "a key is a prefix of other keys", str(path)
                ) from None
            return False
        finally:
            # The temp name is only a vehicle: drop it whether or not the link was made.
            _unlink_quietly(temp)
        # One fsync makes both the new name and the temp name's removal durable.
        _fsync_dir(path.parent)
        return True

    def _write_temp(self, path: Path, chunks: Sequence[Buffer]) -> Path:
        """Write and fsync ``chunks`` into a fresh temp file next to ``path``.

        A concurrent ``delete`` may remove empty directories on the way (even one we just
        made) before the temp file is in place; then make them again and retry. Once the temp
        file exists its directory is not empty, so it cannot vanish.
        """
        for attempt in range(100):
            temp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
            try:
                self._ensure_dir(path.parent)
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                if attempt == 99:
                    raise
                self._forget_dirs(path.parent)
                continue
            try:
                try:
                    _write_all(fd, chunks)
                    os.fsync(fd)
                    _drop_behind(fd)
                finally:
                    os.close(fd)
            except BaseException:
                _unlink_quietly(temp)
                raise
            return temp
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` (and missing parents) with each new name fsynced into its
        parent, so an object written below it is still reachable after a crash."""
        with self._dirs_lock:
            if directory in self._durable_dirs:
                return
        if directory.parent != directory:
            self._ensure_dir(directory.parent)
        while True:
            try:
                directory.mkdir()
                break
            except FileExistsError:
                try:
                    mode = os.stat(directory).st_mode
                except FileNotFoundError:
                    continue  # a concurrent delete removed it after our mkdir failed: again
                if not stat.S_ISDIR(mode):
                    raise NotADirectoryError(
                        errno.ENOTDIR, "a prefix of the key is itself a key", str(directory)
                    ) from None
                break
        # Fsync the parent even when another writer made the directory: that writer may not
        # have fsynced it yet, and our own write must not depend on its progress.
        _fsync_dir(directory.parent)
        with self._dirs_lock:
            self._durable_dirs.add(directory)

    def _forget_dirs(self, directory: Path) -> None:
        """Drop ``directory`` and its ancestors (below the root) from the durable cache: one
        of them was found missing, and we cannot tell which."""
        with self._dirs_lock:
            while directory != self._root:
                self._durable_dirs.discard(directory)
                directory = directory.parent

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """The whole object; :class:`NotFound` if absent."""
        path = self._path(key)
        return await asyncio.to_thread(self._get_sync, key, path)

    def _get_sync(self, key: str, path: Path) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            # A directory is a "common prefix" in S3 terms, not an object.
            raise NotFound(key) from None

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object, shorter (possibly empty) past its end;
        :class:`NotFound` if absent, :class:`ValueError` if ``start < 0`` or ``end < start``.
        Reads only the requested bytes."""
        if start < 0 or end < start:
            raise ValueError(f"bad byte range [{start}, {end})")
        path = self._path(key)
        return await asyncio.to_thread(self._get_range_sync, key, path, start, end)

    def _get_range_sync(self, key: str, path: Path, start: int, end: int) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise NotFound(key)  # opening a directory read-only succeeds; it is no object
            parts: list[bytes] = []
            offset, remaining = start, end - start
            # pread may return less than asked (large reads, signals); loop until EOF or done.
            while remaining > 0:
                chunk = os.pread(fd, remaining, offset)
                if not chunk:
                    break
                parts.append(chunk)
                offset += len(chunk)
                remaining -= len(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (a string prefix, not necessarily a whole segment),
        sorted as S3 sorts them (by UTF-8 bytes, which is code-point order)."""
        if "\\" in prefix or "\0" in prefix or prefix.startswith("/"):
            raise ValueError(f"bad object key prefix: {prefix!r}")
        # Only the directory named by the prefix's complete segments can hold matches.
        directory, _, _ = prefix.rpartition("/")
        if directory:
            validate_key(directory)
        return await asyncio.to_thread(_scan, self._root, prefix, directory)

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent), then any parent directories it leaves empty,
        so deleted partitions do not leave directory skeletons behind."""
        path = self._path(key)
        await asyncio.to_thread(self._delete_sync, path)

    def _delete_sync(self, path: Path) -> None:
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # absent, or a prefix of other keys rather than an object
        try:
            _fsync_dir(path.parent)
        except FileNotFoundError:
            return  # a concurrent delete emptied and removed the directory: nothing to climb
        directory = path.parent
        while directory != self._root:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (or already gone): stop climbing
            # A put racing with this finds the directory gone when it makes its temp file,
            # forgets it too and re-creates it (see _write_temp).
            with self._dirs_lock:
                self._durable_dirs.discard(directory)
            directory = directory.parent


def _scan(root: Path, prefix: str, directory: str) -> list[str]:
    """Keys under ``root/directory`` starting with ``prefix``, sorted."""
    keys: list[str] = []
    base = root.joinpath(*directory.split("/")) if directory else root
    stack = [(base, f"{directory}/" if directory else "")]
    while stack:
        path, key_prefix = stack.pop()
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            continue  # absent, or removed by a concurrent delete: nothing under it
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            key = key_prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    # Descend only where keys could still match the prefix.
                    sub = key + "/"
                    if sub.startswith(prefix) or prefix.startswith(sub):
                        stack.append((Path(entry.path), sub))
                elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                    keys.append(key)
            except FileNotFoundError:
                continue
    keys.sort()
    return keys


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
