"""Limiting a measurement to k cores inside the running process: every thread pinned, the whole set back after."""

import os
import threading

import pytest

from bottleneck.bench.cores import core_counts, on_cores, usable_cores


def test_core_counts_are_one_two_and_all_each_once():
    every = len(usable_cores())
    counts = core_counts()
    assert counts[0] == 1 and counts[-1] == every and list(counts) == sorted(set(counts))
    assert core_counts(limit=1) == (1,)


def test_every_thread_is_pinned_inside_the_block_and_released_after():
    every = set(usable_cores())
    seen, go, done = {}, threading.Event(), threading.Event()

    def before():  # started before the block: pinned by it too
        go.wait(10)
        seen["before"] = os.sched_getaffinity(0)
        done.wait(10)

    early = threading.Thread(target=before)
    early.start()
    with on_cores(1):
        go.set()
        inner = threading.Thread(target=lambda: seen.setdefault("inside", os.sched_getaffinity(0)))
        inner.start()
        inner.join()
        seen["main"] = os.sched_getaffinity(0)
        while "before" not in seen:
            threading.Event().wait(0.01)
    done.set()
    early.join()
    first = {min(every)}
    assert seen["main"] == seen["inside"] == seen["before"] == first
    assert os.sched_getaffinity(0) == every


def test_a_core_count_out_of_range_is_refused():
    with pytest.raises(ValueError, match="between 1 and"):
        with on_cores(0):
            pass
    with pytest.raises(ValueError, match="between 1 and"):
        with on_cores(len(usable_cores()) + 1):
            pass
