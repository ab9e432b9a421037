"""Replay and resume: what an earlier run stored, one record per batch, and whether a batch
formed now is the very batch that was stored (see *replay* in ``events``)."""

from __future__ import annotations

from collections.abc import Mapping

from synthpipe.runtime.contract import Batch
from synthpipe.runtime.scheduler.state import StoredOutput, _StepState


def stored_outputs(stored: Mapping[int, StoredOutput | int]) -> dict[int, StoredOutput]:
    """One step's stored batches as records (a bare number is the rows out, nothing else known)."""
    return {seq: r if isinstance(r, StoredOutput) else StoredOutput(rows=r) for seq, r in stored.items()}


def is_stored(st: _StepState, batch: Batch) -> bool:
    """``batch`` (formed now) has a stored output of the same size: it may be given back."""
    record = st.stored.get(batch.seq)
    return record is not None and (record.inputs is None or record.inputs == batch.size)
