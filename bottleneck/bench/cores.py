"""How many cores a measurement may use, limited inside the running process (no `taskset`, no new process).

`on_cores(k)` pins every thread of this process to the first k cores it may use and restores the whole set after.
Threads started meanwhile (tf.data's, a pool's workers) inherit the mask of the thread that starts them, which is
pinned too; a process pool started inside inherits it as well. TensorFlow sizes its thread pools once, for every
core, so on fewer cores its threads share them: what a pipeline gets when other work holds the rest of a machine.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity), in order."""
    return sorted(os.sched_getaffinity(0))


def core_counts(limit: int | None = None) -> tuple[int, ...]:
    """1, 2 and all usable cores, each once (a 2-core machine: (1, 2)), at most `limit` when given."""
    every = len(usable_cores())
    counts = sorted({1, min(2, every), every})
    return tuple(c for c in counts if limit is None or c <= limit)


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir(Path("/proc/self/task"))]
    except OSError:  # no /proc: the calling thread only
        return [0]


def _pin(cores: set[int]) -> None:
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue


@contextmanager
def on_cores(k: int):
    """Run the block on `k` of this process's cores (every thread of it, and those it starts meanwhile)."""
    every = usable_cores()
    if not 1 <= k <= len(every):
        raise ValueError(f"k should be between 1 and {len(every)} (the usable cores); received {k}")
    _pin(set(every[:k]))
    try:
        yield
    finally:
        _pin(set(every))
