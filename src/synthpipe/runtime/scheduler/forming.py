"""Batch forming: re-batching between steps of different batch sizes, origins kept exact on the
way to a join, and joins aligned origin by origin."""

from __future__ import annotations

import bisect
import math

from synthpipe.runtime.contract import (
    Batch,
    Row,
    StepSpec,
)
from synthpipe.runtime.scheduler.replay import is_stored
from synthpipe.runtime.scheduler.state import (
    RowBuffer,
    _StepState,
)


class BatchForming:
    """Turns the rows buffered for a step into batches (mixed into Scheduler)."""

    def _watermark(self, name: str, memo: dict[str, float]) -> float:
        """Highest origin whose rows this step has all released downstream (-1: none yet)."""
        if name in memo:
            return memo[name]
        st = self.states[name]
        if st.finished:
            mark = math.inf
        elif st.spec.kind == "generator" or name in self.routers:  # origins counted by its own batches
            mark = st.next_release - 1
        elif st.spec.kind == "global":
            mark = -1
        else:
            upstream = min(self._watermark(p, memo) for p in st.spec.predecessors)
            mark = min(upstream, st.pending_origin() - 1)
        memo[name] = mark
        return mark

    def _form_batches(self, st: _StepState) -> bool:
        spec = st.spec
        if spec.kind == "generator" or st.finished:
            return False
        if spec.kind == "global":
            if st.next_seq > 0 or not self._preds_finished(st):
                return False
            if any(st.buffers):
                self._queue(st, [buffer.take_all() for buffer in st.buffers], st.buffer_origins, st.buffer_keys)
            st.buffers = [RowBuffer() for _ in spec.predecessors]
            st.buffer_origins = [[] for _ in spec.predecessors]
            st.buffer_keys = [[] for _ in spec.predecessors]
            return st.next_seq > 0
        if len(spec.predecessors) == 1:
            return self._form_sequential(st)
        return self._form_joined(st)

    def _form_sequential(self, st: _StepState) -> bool:
        size = st.spec.batch_size
        rows, origins, keys = st.buffers[0], st.buffer_origins[0], st.buffer_keys[0]
        upstream_done: bool | None = None  # asked only of a short group
        split = st.spec.name in self.split_at_origin
        formed = False
        start, total = 0, len(rows)
        while True:
            end = min(start + size, total)
            if split and end > start and origins[end - 1] != origins[start]:
                end = bisect.bisect_right(origins, origins[start], start, end)
            elif end - start < size:
                if upstream_done is None:
                    upstream_done = self._preds_finished(st)
                # A short group can go once upstream has delivered all of its origin.
                if not upstream_done and not (split and end > start and self._upstream_complete(st, origins[start])):
                    break
            if end <= start:
                break
            self._queue(st, [rows.take(end - start)], [origins[start:end]], [keys[start:end]])
            start = end
            formed = True
        if start:
            del origins[:start]
            del keys[:start]
        return formed

    def _upstream_complete(self, st: _StepState, origin: int) -> bool:
        memo: dict[str, float] = {}
        return min(self._watermark(p, memo) for p in st.spec.predecessors) >= origin

    def _form_joined(self, st: _StepState) -> bool:
        """One batch per origin, once every branch has delivered all of that origin's rows."""
        memo: dict[str, float] = {}
        complete = min(self._watermark(p, memo) for p in st.spec.predecessors)
        formed = False
        while True:
            heads = [o[0] for o in st.buffer_origins if o]
            if not heads or min(heads) > complete:
                break
            origin = min(heads)
            inputs: list[list[Row]] = []
            origins: list[list[int]] = []
            keys: list[list[int]] = []
            for rows, orig, ks in zip(st.buffers, st.buffer_origins, st.buffer_keys, strict=True):
                n = bisect.bisect_right(orig, origin)
                inputs.append(rows.take(n))
                origins.append(orig[:n])
                keys.append(ks[:n])
                del orig[:n]
                del ks[:n]
            self._queue(st, inputs, origins, keys)
            formed = True
        return formed

    def _queue(self, st: _StepState, inputs: list[list[Row]], origins: list[list[int]],
               keys: list[list[int]]) -> None:
        same_as_stored = True  # every row of it came from stored outputs upstream
        for i, rows in enumerate(inputs):
            st.consumed[i] += len(rows)
            same_as_stored &= st.consumed[i] <= st.fresh_at[i]
        inputs, origins, keys = self._converge(st, inputs, origins, keys)
        batch = Batch(st.spec.name, st.next_seq, inputs, origins, st.rows_batched, keys=keys)
        st.next_seq += 1
        st.rows_batched += len(inputs[0]) if inputs else 0
        if same_as_stored and is_stored(st, batch):
            batch.replay = True
            st.replays.append(batch)
        else:
            st.ready.append(batch)


def _feeders_of_joins(specs: dict[str, StepSpec], routing: set[str] = frozenset()) -> set[str]:
    """Steps whose rows reach a join without passing a global or routing step: they must keep
    origins exact (a routing step's rows take its batches as origins)."""
    feeders: set[str] = set()
    todo = [p for s in specs.values() if s.kind == "normal" and len(s.predecessors) > 1 for p in s.predecessors]
    while todo:
        name = todo.pop()
        spec = specs[name]
        if name in feeders or spec.kind != "normal" or name in routing:
            continue
        feeders.add(name)
        todo.extend(spec.predecessors)
    return feeders
