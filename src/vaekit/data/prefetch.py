"""Reading ahead in a background thread, so that decoding files overlaps the model's compute.

Pillow's decoders and torch's kernels release the GIL, so one reader thread is enough to keep a
model fed without the start-up cost and memory of loader processes.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Iterate over ``items`` with up to ``depth`` of them produced ahead by a background thread.
    An exception raised while producing is re-raised here, at the item where it happened; stopping
    early (break, an exception in the consumer) stops the thread."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, who decides
            put(_Failure(error))
            return
        put(_END)

    thread = threading.Thread(target=produce, name="vaekit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = ready.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)
