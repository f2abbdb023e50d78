"""DescribeTransactions and ListTransactions straight on the wire (our admin client does not
have them; confluent-kafka's Python admin client does not expose them either)."""

from __future__ import annotations

from typing import Any

from generated.describe_transactions_request import DescribeTransactionsRequest
from generated.list_transactions_request import ListTransactionsRequest
from kafscale.admin.client import Connection


def describe_transaction(host: str, port: int, tid: str) -> Any:
    """The one TransactionState of ``tid`` (asked of the broker at host:port)."""
    conn = Connection(host, port)
    try:
        _, response = conn.call(
            65, lambda v: DescribeTransactionsRequest(transactional_ids=[tid]), version=0
        )
    finally:
        conn.close()
    return response.transaction_states[0]


def list_transactions(host: str, port: int, states: list[str] | None = None) -> list[Any]:
    conn = Connection(host, port)
    try:
        _, response = conn.call(
            66, lambda v: ListTransactionsRequest(state_filters=states or []), version=1
        )
    finally:
        conn.close()
    return list(response.transaction_states)
