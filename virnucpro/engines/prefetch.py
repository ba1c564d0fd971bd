"""Host work one step ahead of the GPU: an iterator run in a background thread.

Both packed engines build their next batch (tokens, index arrays, pinned copies) on the host
while the current one computes. Items are handed over in order through a small queue; an
exception in the producer is raised in the consumer; a consumer that stops early (an error,
a closed generator) stops the producer and joins it, so no thread outlives the call.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class _End:
    pass


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(items: Iterable[T], name: str, depth: int = 2) -> Iterator[T]:
    """Yield `items` in order, computed in a thread named `name` at most `depth` items ahead."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_End())
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            offer(_Failure(exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then join it
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
