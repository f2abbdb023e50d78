"""Failpoints: make the process die at an exact step, for fault tests.

``KAFSCALE_FAILPOINTS=after_object_put:exit,after_metadata_commit:exit`` (read once, at
import) arms the named points; the code calls :func:`hit` at each step. An armed point with
action ``exit`` ends the process at once with status 86 (``os._exit``: no cleanup, no flush,
as a crash), after writing one line to stderr so a test can tell it happened. ``exit@N`` fires
on the N-th hit instead of the first.

The points:

- ``after_object_put``: a flush uploaded its ingest object, before the metadata commit.
- ``after_metadata_commit``: the commit succeeded, before any produce request is answered.
- ``mid_response``: half of a response's bytes are written to the socket.
- ``after_compaction_put``: a compaction uploaded its merged segments (its intent recorded),
  before the swap (``kafscale/broker/compaction.py``).
- ``after_compaction_commit``: a compaction's swap committed, before anything else.
- ``mid_delete``: the janitor deleted the first object of a due garbage record or of a
  deleted topic, before the others and the record (``kafscale/broker/janitor.py``).
- ``after_txn_decision``: a transaction coordinator committed its decision (PrepareCommit or
  PrepareAbort and the marker requests), before any marker is written or EndTxn answered
  (``kafscale/broker/transactions.py``).
- ``before_txn_complete``: every marker of a decided transaction is written, before its
  offsets move and it completes.
- ``before_txn_markers_commit``: a coordinator ending a transaction in one step (it owns every
  partition) uploaded the markers, before the one commit that writes them all and completes
  it (``LogManager.append_markers``).
``tests/faults/test_faults.py`` crashes a broker at each of them under load
(``tests/faults/test_txn_faults.py`` the transaction ones;
``tests/conformance/test_transactions.py`` the one-step ending).

Disarmed (the normal case) a hit is one dictionary lookup.
"""

from __future__ import annotations

import os
import sys

EXIT_STATUS = 86

_armed: dict[str, list[int]] = {}  # point -> [hits left before it fires]


def arm(spec: str) -> None:
    """Arm the points of a ``name:action[@n],...`` spec (replacing what was armed)."""
    _armed.clear()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition(":")
        action, _, count = action.partition("@")
        if action != "exit":
            raise ValueError(f"failpoint {name!r}: unknown action {action!r} (only 'exit')")
        _armed[name] = [int(count) if count else 1]


def armed(name: str) -> bool:
    return name in _armed


def hit(name: str) -> None:
    """Pass the failpoint ``name``: die here if it is armed (and its count is reached)."""
    left = _armed.get(name)
    if left is None:
        return
    left[0] -= 1
    if left[0] > 0:
        return
    sys.stderr.write(f"failpoint {name}: exiting\n")
    sys.stderr.flush()
    os._exit(EXIT_STATUS)


arm(os.environ.get("KAFSCALE_FAILPOINTS", ""))
