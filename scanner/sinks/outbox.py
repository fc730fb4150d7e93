"""Deliver the outbox: each sink's pending items, oldest first, stopping at its first failure.

Stopping keeps a sink's items in order (a "resolved" never overtakes the "opened" before it);
whatever is left stays in the outbox for the next run or `fleetscan sinks retry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scanner.sinks import Sink, SinkError
from scanner.store import Store


@dataclass
class Delivery:
    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)


def deliver(store: Store, sinks: list[Sink], log: Callable[[Sink, str], None]) -> Delivery:
    result = Delivery()
    for sink in sinks:
        if not store.claim(sink.key):
            log(sink, "another fleetscan is delivering this sink's outbox; left to it")
            continue
        try:
            _deliver_one(store, sink, log, result)
        finally:
            store.release(sink.key)
    return result


def _deliver_one(
    store: Store, sink: Sink, log: Callable[[Sink, str], None], result: Delivery
) -> None:
    pending = store.pending(sink.key)
    for index, item in enumerate(pending):
        try:
            done = sink.deliver(item.payload)
        except Exception as exc:
            reason = (
                str(exc)
                if isinstance(exc, SinkError)
                else f"{sink.name}: unexpected answer ({type(exc).__name__})"
            )
            store.failed(item.id, reason)
            result.failed[sink.key] = reason
            result.left[sink.key] = len(pending) - index
            log(sink, f"failed: {reason}; {len(pending) - index} item(s) kept in the outbox")
            return
        store.delivered(item.id)
        store.claim(sink.key)  # extend the claim while the work goes on
        result.sent += 1
        log(sink, done)
