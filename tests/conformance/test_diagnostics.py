"""``kill -USR1``: a running broker logs its asyncio tasks' and threads' stacks and goes on
(what the harnesses collect from a broker that does not exit after SIGTERM)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.conformance.conftest import BrokerProcess, free_port, running_broker
from tests.hung import MARK, ask_for_dump, kill_and_describe


def test_sigusr1_logs_tasks_and_threads_and_the_broker_goes_on(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:
        assert broker.proc is not None
        dump = ask_for_dump(broker.proc, broker.logs[-1], timeout=10)
        assert dump is not None, broker.stderr()
        # The flusher's task, with where it waits, and the event loop's thread.
        assert "--- kafscale-flusher" in dump, dump
        assert "_run_flusher" in dump, dump
        assert "asyncio tasks" in dump and "Thread 0x" in dump, dump
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5):
            pass  # still serving; running_broker's exit checks a clean stop after it


def test_the_harness_collects_the_dump_of_a_broker_it_kills(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    broker = BrokerProcess("127.0.0.1", free_port(), data, tmp_path)
    broker.start()
    assert broker.proc is not None
    dump = kill_and_describe(broker.proc, broker.logs[-1])
    assert broker.proc.poll() == -signal.SIGKILL
    assert dump.startswith(MARK) and "kafscale-flusher" in dump, dump
