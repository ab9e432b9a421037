"""The garbage collector while the coordinator's loop runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_COLLECTION_THRESHOLD = 100_000
"""Allocations between the collector's passes over young objects while the loop runs (default 700)."""


@contextmanager
def few_collections() -> Iterator[None]:
    """While the loop runs: what was there before it (the imports, the pipeline) is left out of
    the garbage collector's passes, and young objects are collected less often. Every batch
    allocates rows by the thousand, nearly all freed by reference counting alone; with the
    interpreter's defaults the collector's passes were a tenth of the coordinator's time.
    Both are given back as they were, however the loop ends (a program that froze objects
    itself keeps them as it had them: nothing is frozen or unfrozen then)."""
    thresholds = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    gc.set_threshold(max(thresholds[0], YOUNG_COLLECTION_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        if freeze:
            # The loop's young objects go to the oldest generation with the rest, untraversed: a
            # pass over the tens of thousands the loop leaves young would cost the run's end
            # ~40 ms, mostly over objects about to be freed anyway.
            gc.freeze()
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()
