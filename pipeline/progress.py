"""Progress of long work, on stderr: a line each time a piece finishes, with how much is done and about
how long the rest takes, so that what a stage prints on stdout and writes to files stays clean.

evaluate reports each classifier run as it finishes (`finishing_order`: not in the order the runs were
handed out, where a finished run would wait behind a slow one), generate each round of candidates.
prepare takes its decoded images in source order (`in_order`), from worker processes.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, as_completed

WINDOW = 4096  # items in_order hands to the pool at a time; two windows are in flight
CHUNK = 128  # items a worker takes at a time


class Progress:
    """`done(n, what)` after each piece: prints '<name>: <done> of <total> <unit>: <what>; about <t> left'."""

    def __init__(self, name: str, total: int, unit: str, clock: Callable[[], float] = time.monotonic):
        self.name, self.total, self.unit, self.clock = name, total, unit, clock
        self.finished, self.started = 0, clock()

    def done(self, count: int, what: str) -> None:
        self.finished += count
        left = self.seconds_left()
        tail = "" if left is None else f"; about {duration(left)} left"
        print(f"{self.name}: {self.finished} of {self.total} {self.unit}: {what}{tail}", file=sys.stderr, flush=True)

    def seconds_left(self) -> float | None:
        """The time so far scaled to what is left (None before anything is done, 0 once all is)."""
        if self.finished == 0:
            return None
        return (self.clock() - self.started) / self.finished * max(0, self.total - self.finished)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def finishing_order(pool: Executor, function: Callable, jobs: Iterable) -> Iterator:
    """`function(job)` of every job on the pool's workers, each result as soon as its job finishes."""
    futures = [pool.submit(function, job) for job in jobs]
    for future in as_completed(futures):
        yield future.result()


def in_order(function: Callable, items: list, pool: Executor | None) -> Iterator:
    """function(item) for each item, in the order of `items`, computed on the pool's workers (None: here).
    The items go to the pool a WINDOW at a time, the next window queued while this one's results are
    taken, so that results waiting to be taken stay few whatever the number of items."""
    if pool is None:
        yield from map(function, items)
        return
    try:
        windows = deque()
        for start in range(0, len(items), WINDOW):
            windows.append(pool.map(function, items[start : start + WINDOW], chunksize=CHUNK))
            if len(windows) == 2:
                yield from windows.popleft()
        while windows:
            yield from windows.popleft()
    except Exception:  # an error (a changed file, a bad image): the queued items are not decoded
        pool.shutdown(cancel_futures=True)
        raise
