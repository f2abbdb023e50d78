# ListTransactions (key 66), versions 0-1 (all of Kafka 3.9's).
# - The transactional ids this broker coordinates (those it holds, and those it would take on
#   their next request: the admin client asks every broker and merges), with producer id and
#   state, read from the metadata store.
# - StateFilters (Kafka's state names; unknown ones are listed back in UnknownStateFilters),
#   ProducerIdFilters, and (v1, KIP-994) DurationFilter: only transactions running longer
#   than that many ms (-1: no filter).
from __future__ import annotations

import time

from generated.list_transactions_request import ListTransactionsRequest
from generated.list_transactions_response import ListTransactionsResponse, TransactionState
from kafscale.broker.handlers import RequestContext
from kafscale.broker.transactions import STATES


async def handle(ctx: RequestContext, request: ListTransactionsRequest) -> ListTransactionsResponse:
    states = set(request.state_filters)
    unknown = sorted(states - set(STATES))
    pids = set(request.producer_id_filters)
    duration = request.duration_filter if ctx.version >= 1 else -1
    now = int(time.time() * 1000)
    out: list[TransactionState] = []
    for tid, meta in await ctx.broker.transactions.list_mine():
        if states and meta.state not in states:
            continue
        if pids and meta.producer_id not in pids:
            continue
        if duration >= 0 and (meta.start_ms < 0 or now - meta.start_ms <= duration):
            continue
        out.append(
            TransactionState(
                transactional_id=tid, producer_id=meta.producer_id, transaction_state=meta.state
            )
        )
    return ListTransactionsResponse(
        throttle_time_ms=0, error_code=0, unknown_state_filters=unknown, transaction_states=out
    )
