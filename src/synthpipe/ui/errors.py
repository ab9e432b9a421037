"""How a failure is put into the run's log file: the same frames the user reads on the terminal.

The terminal gets the raised error itself (Python prints it, the worker's traceback as its
cause); the log file, which outlives the terminal, gets that whole text too."""

from __future__ import annotations

import logging
import traceback

from synthpipe.ui.logs import FILE_ONLY

logger = logging.getLogger("synthpipe.error")


def describe_failure(exc: BaseException) -> str:
    """The error as Python prints it, with the worker's traceback (its cause) first."""
    return "".join(traceback.format_exception(exc)).rstrip()


def log_failure(exc: BaseException) -> None:
    """The error that ended the run, whole, into the log file only (the terminal gets it raised)."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return
    try:
        logger.error("synthpipe: the run stopped on this error:\n%s", describe_failure(exc), extra=FILE_ONLY)
    except Exception:  # never let the report replace the error
        pass
