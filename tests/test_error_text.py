"""Errors for humans: the user's frames first, synthpipe's own folded (shown under DEBUG)."""

from __future__ import annotations

import traceback

import pytest

from synthpipe.errors import ErrorRecord, StepFailed
from synthpipe.steps import StepInput, step
from synthpipe.ui.error_text import failed_run_text, fold_traceback


@step(inputs=["n"], outputs=["m"])
def Explodes(inputs: StepInput):
    for row in inputs:
        raise ZeroDivisionError(f"row {row['n']} divides by zero")
    yield inputs


def _traceback_through_synthpipe() -> str:
    with pytest.raises(ZeroDivisionError) as info:
        Explodes(name="explodes").process_applying_mappings([{"n": 1}])
    return "".join(traceback.format_exception(info.value))


def test_synthpipe_frames_are_folded_and_user_frames_kept():
    text = _traceback_through_synthpipe()
    assert "synthpipe/steps/" in text  # the raw traceback goes through synthpipe's own code
    folded = fold_traceback(text)
    assert "synthpipe/steps/" not in folded and "synthpipe frame(s) folded" in folded
    assert "in Explodes" in folded and "test_error_text.py" in folded
    assert folded.rstrip().endswith("ZeroDivisionError: row 1 divides by zero")
    assert fold_traceback(text, debug=True) == text


def test_a_failed_run_is_told_with_its_location_and_folded_traceback():
    record = ErrorRecord.from_exception(ZeroDivisionError("row 1 divides by zero"), step="explodes", batch=4)
    record.traceback = _traceback_through_synthpipe()
    text = failed_run_text(StepFailed(record))
    assert "step 'explodes'" in text and "batch 4" in text and "ZeroDivisionError: row 1 divides by zero" in text
    assert "synthpipe frame(s) folded" in text and "in Explodes" in text
