"""Failure policy: retry a batch that raised, restart a worker that died, isolate the rows that
keep killing it, give up on rows (failed rows) or on the run, and the failure guard."""

from __future__ import annotations

from dataclasses import replace

from synthpipe.errors import ErrorRecord, TooManyFailedRows
from synthpipe.runtime.contract import (
    Action,
    Batch,
    Fail,
    RowsFailed,
)
from synthpipe.runtime.scheduler.state import (
    MIN_ROWS_FOR_FAILURE_RATE,
    _Isolation,
    _Job,
    _StepState,
)


class FailurePolicy:
    """What the scheduler does when a batch fails or its worker dies (mixed into Scheduler)."""

    def _fail(self, error: ErrorRecord) -> list[Action]:
        self.failed = error
        return [Fail(error)]

    def _give_up(self, st: _StepState, batch: Batch, error: ErrorRecord) -> list[Action]:
        """The batch will not succeed: record its rows (skip) or stop the run (fail)."""
        if st.spec.kind != "normal" or st.spec.on_error == "fail":
            self.failed_batch = batch  # for the error shown to the user: the rows it was given
            return self._fail(error)
        st.stats.rows_failed += batch.size
        actions: list[Action] = [RowsFailed(batch, error), *self._complete(st, batch, [], None, failed=True)]
        st.last_error = error
        too_many = self._failure_guard(st)
        if too_many is not None:
            return [*actions, *self._fail(too_many)]
        return [*actions, *self._advance()]

    def _failure_guard(self, st: _StepState) -> ErrorRecord | None:
        """Judged whenever rows complete, failed or not: a rate can pass its limit later."""
        spec, stats, error = st.spec, st.stats, st.last_error
        if error is None:
            return None
        reason = None
        if spec.max_failed_rows is not None and stats.rows_failed > spec.max_failed_rows:
            reason = f"{stats.rows_failed} rows failed, more than max_failed_rows={spec.max_failed_rows}"
        elif (
            spec.max_failure_rate is not None
            and stats.rows_in >= MIN_ROWS_FOR_FAILURE_RATE
            and stats.rows_failed / stats.rows_in > spec.max_failure_rate
        ):
            reason = (
                f"{stats.rows_failed} of {stats.rows_in} rows failed "
                f"({stats.rows_failed / stats.rows_in:.0%}), more than max_failure_rate={spec.max_failure_rate:g}"
            )
        if reason is None:
            return None
        return ErrorRecord.from_diagnosis(
            TooManyFailedRows(f"step '{spec.name}': {reason}; the last error was {error.headline()}"),
            step=spec.name,
        )

    def _split(self, st: _StepState, batch: Batch) -> list[Batch]:
        """Halve a crashing batch; each half crashing again is halved at once."""
        lo, hi = batch.part or (0, batch.size)
        k = batch.size // 2
        rows, origins, keys = batch.inputs[0], batch.origins[0], batch.keys[0]
        halves = [
            replace(batch, inputs=[rows[:k]], origins=[origins[:k]], keys=[keys[:k]], part=(lo, lo + k)),
            replace(batch, inputs=[rows[k:]], origins=[origins[k:]], keys=[keys[k:]], part=(lo + k, hi),
                    row_start=batch.row_start + k),
        ]
        if batch.part is None:
            st.isolating[batch.seq] = _Isolation(batch.min_origin, pending=2, size=batch.size)
        else:
            st.isolating[batch.seq].pending += 1
        return halves

    @staticmethod
    def _requeue(st: _StepState, batch: Batch) -> None:
        """Put a batch back among those waiting for a worker, keeping them in seq (and part)
        order: dispatch stays oldest-first, and the first one holds the lowest origin."""
        key = (batch.seq, batch.part[0] if batch.part else 0)
        index = 0
        for queued in st.ready:
            if (queued.seq, queued.part[0] if queued.part else 0) > key:
                break
            index += 1
        st.ready.insert(index, batch)

    def _pop_job(self, st: _StepState, ticket: int, replica: int) -> _Job | None:
        job = st.in_flight.pop(ticket, None)
        if job is not None and replica in st.workers:
            st.workers[replica] = max(0, st.workers[replica] - 1)
        return job


def _one_row(batch: Batch, index: int) -> Batch:
    """Row ``index`` of a batch, as a batch of its own (for the failed-rows ledger)."""
    return replace(batch, inputs=[[batch.inputs[0][index]]], origins=[[batch.origins[0][index]]],
                   keys=[[batch.keys[0][index]]] if batch.keys else [], row_start=batch.row_start + index)
