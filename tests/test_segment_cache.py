"""The segment cache's memory budget with entries cached as chunks that view shared buffers
(kafscale/broker/segment_cache.py): a buffer counts once, at its full size, while any entry
views it; an entry is joined when first read; LRU eviction keeps ``used`` within capacity."""

from __future__ import annotations

import random

import pytest

from kafscale.broker import segment_cache
from kafscale.broker.segment_cache import SegmentCache


@pytest.fixture(autouse=True)
def any_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small buffers stand for big ones here: chunks of any size are kept as they are."""
    monkeypatch.setattr(segment_cache, "MIN_CHUNK_BYTES", 1)


def frame(size: int) -> bytearray:
    return bytearray(random.randbytes(size))


def test_chunks_viewing_one_buffer_count_it_once_at_its_full_size() -> None:
    cache = SegmentCache(10_000)
    buf = frame(1_000)
    view = memoryview(buf)
    cache.put("a", [b"HEAD", view[0:300], b"FOOT"])
    cache.put("b", [b"HDR2", view[300:700]])
    # The frame's 1,000 bytes once, the two headers and the footer (bytes objects).
    assert cache.used == 1_000 + 4 + 4 + 4
    assert "a" in cache and len(cache) == 2
    assert cache.get("b") == b"HDR2" + bytes(buf[300:700])
    # b was joined: it now holds its own 404 bytes; a still views the frame.
    assert cache.used == 1_000 + 4 + 4 + 404
    assert cache.get("a") == b"HEAD" + bytes(buf[0:300]) + b"FOOT"
    assert cache.used == 404 + 308  # no entry views the frame any more
    assert all(isinstance(v, bytes) for v in cache.items.values())


def test_a_buffer_is_uncounted_only_when_its_last_viewer_is_evicted() -> None:
    cache = SegmentCache(2_500)
    one, two = frame(1_000), frame(1_000)
    cache.put("a1", [memoryview(one)[:500]])
    cache.put("a2", [memoryview(one)[500:]])
    cache.put("b1", [memoryview(two)[:500]])
    assert cache.used == 2_000
    cache.put("c", b"x" * 400)
    assert cache.used == 2_400 and len(cache) == 4
    # 1,000 more: a1 goes first (LRU) but frees nothing; a2 goes too, which frees `one`.
    cache.put("d", [memoryview(frame(1_000))])
    assert list(cache.items) == ["b1", "c", "d"]
    assert cache.used == 1_000 + 400 + 1_000 <= cache.capacity


def test_reading_refreshes_recency_and_never_exceeds_capacity() -> None:
    cache = SegmentCache(3_000)
    bufs = [frame(1_000) for _ in range(3)]
    for i, b in enumerate(bufs):
        cache.put(f"k{i}", [memoryview(b)])
    assert cache.get("k0") == bytes(bufs[0])  # now most recent
    cache.put("k3", [memoryview(frame(1_000))])
    assert "k1" not in cache and "k0" in cache
    assert cache.used <= cache.capacity
    assert cache.get("missing") is None


def test_entries_too_large_for_their_buffers_are_copied_or_skipped() -> None:
    cache = SegmentCache(1_000)
    big = frame(5_000)
    cache.put("small-view-of-a-big-frame", [memoryview(big)[:100]])
    assert cache.items["small-view-of-a-big-frame"] == bytes(big[:100])  # a copy of 100 bytes
    assert cache.used == 100
    cache.put("too-big", [memoryview(big)[:2_000]])
    cache.put("too-big-bytes", b"y" * 2_000)
    assert "too-big" not in cache and "too-big-bytes" not in cache and cache.used == 100


def test_replacing_a_key_releases_what_it_held() -> None:
    cache = SegmentCache(10_000)
    buf = frame(1_000)
    cache.put("k", [memoryview(buf)[:10]])
    cache.put("k", b"new")
    assert cache.used == 3 and cache.get("k") == b"new"


def test_a_range_of_a_chunked_entry_is_the_range_of_its_joined_bytes() -> None:
    rng = random.Random(7)
    cache = SegmentCache(1 << 20)
    buf = frame(5_000)
    chunks = [b"H" * 32, memoryview(buf)[100:1_100], b"h" * 8, memoryview(buf)[2_000:4_500]]
    chunks.append(b"F" * 16)
    whole = b"".join(chunks)
    cache.put("k", chunks)
    for _ in range(300):
        start = rng.randrange(0, len(whole) + 10)
        end = rng.randrange(start, len(whole) + 20)
        assert cache.get_range("k", start, end) == whole[start:end], (start, end)
    assert cache.get_range("k", 40, 40) == b""
    assert isinstance(cache.items["k"], tuple)  # ranges are copied out; the entry stays
    cache.put("b", whole)
    assert cache.get_range("b", 10, 20) == whole[10:20]
    assert cache.get_range("missing", 0, 1) is None


def test_entries_of_small_chunks_are_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each view is an object the garbage collector walks: chunks below MIN_CHUNK_BYTES on
    average are cached as one ``bytes``; larger ones as they are."""
    monkeypatch.setattr(segment_cache, "MIN_CHUNK_BYTES", 1_000)
    cache = SegmentCache(100_000)
    buf = frame(10_000)
    small = [b"HEAD", memoryview(buf)[:900], memoryview(buf)[900:1_800]]  # 601 on average
    cache.put("small", small)
    assert cache.items["small"] == b"".join(small) and cache.used == 1_804
    large = [b"HEAD", memoryview(buf)[2_000:9_000]]  # 3,502 on average
    cache.put("large", large)
    assert isinstance(cache.items["large"], tuple)
    assert cache.used == 1_804 + 4 + 10_000


def test_clear_forgets_the_buffers_held() -> None:
    cache = SegmentCache(10_000)
    cache.put("k", [memoryview(frame(1_000))])
    cache.clear()
    assert cache.used == 0 and len(cache) == 0
    buf = frame(1_000)
    cache.put("j", [memoryview(buf)])
    assert cache.used == 1_000  # counted afresh, whatever id the new buffer has
