"""The history checker (tests/checker.py) on synthetic histories: a clean one passes, and each
invariant's violation is caught (and only counted where the notes say "report, don't fail")."""

from __future__ import annotations

import threading

import pytest

from tests.checker import FINAL, History, check


def clean(partitions: int = 2, per_partition: int = 3) -> History:
    """Sends acked in order and read back by one consumer and the final read."""
    h = History()
    t = 0.0
    for p in range(partitions):
        h.assign("c0", 0, p, 0)
        h.assign(FINAL, 0, p, 0)
        for o in range(per_partition):
            value = f"p0:{p}-{o}"
            s = h.invoke("p0", value, p, at=t)
            h.ok(s, o, at=t + 0.5)
            t += 1
            h.read("c0", 0, p, o, value, at=t)
    for p in range(partitions):
        for o in range(per_partition):
            h.read(FINAL, 0, p, o, f"p0:{p}-{o}", at=t)
    h.final(dict.fromkeys(range(partitions), per_partition))
    return h


def test_a_clean_history_passes() -> None:
    result = check(clean())
    assert result.valid, result.explain()
    s = result.summary
    assert (s["operations"], s["acked"], s["reads"], s["final_records"]) == (6, 6, 12, 6)
    assert s["lost"] == s["unseen"] == s["duplicates"] == s["inconsistent_offsets"] == 0
    assert result.line().startswith("PASS operations=6 acked=6")


def test_an_acked_value_read_at_another_offset_is_lost() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, 0, at=1)  # the ack says offset 0 ...
    h.read("c0", 0, 0, 1, "p0:0", at=2)  # ... but the value is at offset 1
    result = check(h)
    assert not result.valid
    assert result.summary["lost"] == 1
    assert "read only at [(0, 1)]" in result.problems["lost"][0]


def test_an_acked_value_missing_below_a_later_read_is_lost() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, 0, at=1)
    b = h.invoke("p0", "p0:1", 0, at=2)
    h.ok(b, 1, at=3)
    h.read("c0", 0, 0, 1, "p0:1", at=4)  # offset 1 read, offset 0 never
    result = check(h)
    assert result.summary["lost"] == 1
    assert not result.valid


def test_an_acked_offset_holding_another_value_is_lost_and_inconsistent() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, 0, at=1)
    b = h.invoke("p1", "p1:0", 0, at=0)
    h.unknown(b, "timed out", at=5)
    h.read("c0", 0, 0, 0, "p1:0", at=6)
    result = check(h)
    assert result.summary["lost"] == 1
    assert result.summary["inconsistent_offsets"] == 1
    assert result.summary["unknown_written"] == 1
    assert not result.valid


def test_unseen_is_reported_and_fails_only_with_a_final_read() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, 0, at=1)
    result = check(h)
    assert result.summary["unseen"] == 1 and result.summary["lost"] == 0
    assert result.valid  # nothing was read yet: not known to be lost
    h.final({0: 0})  # the final read found the log empty: the ack was above its end
    result = check(h)
    assert result.summary["unseen"] == 1
    assert not result.valid
    assert "final high watermark 0" in result.problems["unseen"][0]


def test_two_values_at_one_offset_are_inconsistent() -> None:
    h = History()
    for i, value in enumerate(["p0:0", "p0:1"]):
        s = h.invoke("p0", value, 0, at=i)
        h.unknown(s, at=i + 1)
    h.read("c0", 0, 0, 0, "p0:0", at=3)
    h.read("c1", 0, 0, 0, "p0:1", at=3)
    result = check(h)
    assert result.summary["inconsistent_offsets"] == 1
    assert result.summary["lost"] == 0
    assert not result.valid


def test_two_acks_for_one_offset_are_inconsistent() -> None:
    h = History()
    for i, value in enumerate(["p0:0", "p1:0"]):
        s = h.invoke(value[:2], value, 0, at=0)
        h.ok(s, 7, at=1 + i)
    result = check(h)
    assert result.summary["inconsistent_offsets"] == 1
    assert not result.valid


def test_duplicates_are_counted_not_failed() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, 1, at=1)  # a retry wrote it again: the ack names the second copy
    h.assign("c0", 0, 0, 0)
    h.read("c0", 0, 0, 0, "p0:0", at=2)
    h.read("c0", 0, 0, 1, "p0:0", at=2)
    result = check(h)
    assert result.summary["duplicates"] == 1
    assert result.valid, result.explain()


def test_duplicates_fail_for_idempotent_producers() -> None:
    h = History()
    for name in ("p0", "i0"):
        s = h.invoke(name, f"{name}:0", 0, at=0)
        h.ok(s, 1 if name == "p0" else 3, at=1)
    for offset, value in enumerate(["p0:0", "p0:0", "i0:0", "i0:0"]):
        h.read("c0", 0, 0, offset, value, at=2)
    assert check(h).valid  # nobody promised exactly once
    result = check(h, exactly_once={"i0"})
    assert result.summary["duplicates"] == 2
    assert result.summary["duplicates_exactly_once"] == 1
    assert (
        "i0:0 of idempotent producer i0 stored at [(0, 2), (0, 3)]"
        in (result.problems["duplicates_exactly_once"][0])
    )
    assert "duplicates_exactly_once=1" in result.line()
    assert not result.valid


def test_a_value_never_sent_is_caught() -> None:
    h = History()
    h.read("c0", 0, 0, 0, "ghost:1", at=1)
    result = check(h)
    assert result.summary["never_sent"] == 1
    assert not result.valid


def test_a_definitely_failed_value_must_not_be_read() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.fail(a, "NOT_LEADER_OR_FOLLOWER", at=1)
    h.read("c0", 0, 0, 0, "p0:0", at=2)
    result = check(h)
    assert result.summary["read_after_fail"] == 1
    assert result.summary["failed"] == 1
    assert not result.valid


def test_an_unknown_outcome_may_or_may_not_be_read() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.unknown(a, "timed out", at=1)
    b = h.invoke("p0", "p0:1", 0, at=0)
    h.unknown(b, "timed out", at=1)
    h.read("c0", 0, 0, 0, "p0:1", at=2)
    h.final({0: 1})
    h.read(FINAL, 0, 0, 0, "p0:1", at=3)
    result = check(h)
    assert result.valid, result.explain()
    assert result.summary["unknown"] == 2 and result.summary["unknown_written"] == 1


@pytest.mark.parametrize(
    ("offsets", "what"),
    [([0, 2], "skipped to 2"), ([0, 1, 0], "went back to 0"), ([1, 2], "skipped to 1")],
)
def test_an_assign_mode_consumer_never_skips_nor_goes_back(offsets: list[int], what: str) -> None:
    h = History()
    for o in range(3):
        s = h.invoke("p0", f"p0:{o}", 0, at=o)
        h.ok(s, o, at=o + 0.5)
    h.assign("c0", 0, 0, 0)
    for o in offsets:
        h.read("c0", 0, 0, o, f"p0:{o}", at=5)
    result = check(h)
    assert result.summary["non_monotonic_reads"] == 1
    assert what in result.problems["non_monotonic_reads"][0]
    assert not result.valid


def test_a_new_session_may_start_over() -> None:
    h = History()
    for o in range(2):
        s = h.invoke("p0", f"p0:{o}", 0, at=o)
        h.ok(s, o, at=o + 0.5)
    for session in (0, 1):
        h.assign("c0", session, 0, 0)
        h.read("c0", session, 0, 0, "p0:0", at=3)
        h.read("c0", session, 0, 1, "p0:1", at=3)
    assert check(h).valid


def test_real_time_order_within_a_partition() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, 5, at=1)  # acked before b was invoked ...
    b = h.invoke("p1", "p1:0", 0, at=2)
    h.ok(b, 4, at=3)  # ... yet b got the lower offset
    c = h.invoke("p2", "p2:0", 1, at=2)  # another partition: no order with a
    h.ok(c, 0, at=3)
    result = check(h)
    assert result.summary["order_violations"] == 1
    assert "p0:0 acked at 5 before p1:0 was sent" in result.problems["order_violations"][0]
    assert not result.valid


def test_concurrent_sends_may_be_ordered_either_way() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    b = h.invoke("p1", "p1:0", 0, at=1)
    h.ok(a, 1, at=2)  # overlapping: a was not acked before b was sent
    h.ok(b, 0, at=3)
    assert check(h).summary["order_violations"] == 0


@pytest.mark.parametrize("offset", [-1, -1001])
def test_an_ack_below_zero_is_invalid(offset: int) -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, offset, at=1)
    result = check(h)
    assert result.summary["invalid_acks"] == 1
    assert not result.valid


def test_an_ack_for_another_partition_is_invalid() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0, at=0)
    h.ok(a, 0, partition=1, at=1)
    result = check(h)
    assert result.summary["invalid_acks"] == 1
    assert not result.valid


def test_a_spurious_zero_offset_is_caught() -> None:
    """Bufstream's bug: an ack answering offset 0 for a record stored elsewhere."""
    h = clean(partitions=1, per_partition=2)
    s = h.invoke("p9", "p9:0", 0, at=100)
    h.ok(s, 0, at=101)
    h.read("c0", 0, 0, 2, "p9:0", at=102)
    result = check(h)
    assert result.summary["lost"] == 1
    assert result.summary["inconsistent_offsets"] == 1  # offset 0 holds p0:0-0, acked p9:0
    assert not result.valid


def test_the_final_read_must_reach_the_high_watermark() -> None:
    h = clean(partitions=1, per_partition=3)
    h.final({0: 4})  # one more offset than it read
    result = check(h)
    assert result.summary["final_gaps"] == 1
    assert not result.valid


def test_close_makes_pending_sends_unknown() -> None:
    h = History()
    h.invoke("p0", "p0:0", 0)
    h.close()
    assert h.sends[0].outcome == "unknown"
    assert check(h).summary["unknown"] == 1


def test_outcomes_are_final_and_values_unique() -> None:
    h = History()
    a = h.invoke("p0", "p0:0", 0)
    h.ok(a, 0)
    with pytest.raises(ValueError, match="second outcome"):
        h.fail(a)
    h.invoke("p0", "p0:0", 0)
    with pytest.raises(ValueError, match="sent twice"):
        check(h)


def test_recording_from_threads() -> None:
    h = History()

    def producer(name: str) -> None:
        for i in range(200):
            s = h.invoke(name, f"{name}:{i}", i % 3)
            h.unknown(s)

    threads = [threading.Thread(target=producer, args=(f"p{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert check(h).summary["operations"] == 800
