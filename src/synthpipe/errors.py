"""The error model shared by every layer.

Exceptions never cross a process boundary as live objects: a worker turns them into an
:class:`ErrorRecord` (plain data), and the coordinator turns the record back into the
original exception when it round-trips, or into a faithful stand-in when it does not.
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass, field
from typing import Any

from synthpipe import _compat


class SynthpipeError(Exception):
    """Base class of every error synthpipe raises on its own."""


class SynthpipeUserError(SynthpipeError, ValueError):
    """Something the user gave is wrong (distilabel's ``DistilabelUserError``); ``page`` names a
    documentation page, as distilabel's does."""

    def __init__(self, message: str = "", *, page: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.page = page


class SynthpipeTypeError(SynthpipeError, TypeError):
    """A value of the wrong type (distilabel's ``DistilabelTypeError``)."""


class SynthpipeNotImplementedError(SynthpipeError, NotImplementedError):
    """A method a subclass must define (distilabel's ``DistilabelNotImplementedError``)."""


class PipelineDefinitionError(SynthpipeError, ValueError):
    """A pipeline was built wrongly (raised at once, while it is being defined)."""


class PipelineFileError(SynthpipeError, ValueError):
    """A pipeline file cannot be written or read: what is wrong, where, and what to do."""


RUN_IN_WORKER_EXIT_CODE = 87
"""A worker exits with this when ``pipeline.run()`` is called in it: the coordinator then says why."""

RUN_IN_WORKER_MESSAGE = (
    "pipeline.run() was called in a synthpipe worker process: put the call under "
    "`if __name__ == \"__main__\":` (workers import your script again, as in any multiprocessing "
    "program, and a run at its top level would start in every worker)"
)


class PipelineValidationError(SynthpipeError, ValueError):
    """A pipeline cannot run; lists every problem found, before any worker starts."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"the pipeline cannot run ({len(self.problems)} problem(s)):\n{listing}")


class RemoteTraceback(Exception):
    """Carries the worker-side traceback text, shown as the cause of the original error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nTraceback in the worker process:\n{self.text.rstrip()}\n"


class RemoteError(SynthpipeError):
    """Stand-in for an exception that could not be brought back from a worker.

    Subclasses are created on the fly with the original's module and qualname, so the
    user still reads ``mymodule.MyError: message`` in the traceback.
    """

    type_name: str = "Exception"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_standin_classes: dict[str, type[RemoteError]] = {}


def _standin_class(type_name: str) -> type[RemoteError]:
    cls = _standin_classes.get(type_name)
    if cls is None:
        module, _, qualname = type_name.rpartition(".")
        cls = type(qualname.rpartition(".")[2] or "RemoteError", (RemoteError,), {})
        cls.__qualname__ = qualname
        cls.__module__ = module or "builtins"
        cls.type_name = type_name
        _standin_classes[type_name] = cls
    return cls


def _type_name(exc_type: type) -> str:
    module = exc_type.__module__
    if module in ("builtins", "__main__", "__mp_main__"):
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


@dataclass
class ErrorRecord:
    """Plain-data description of an exception raised in a worker."""

    type_name: str
    message: str
    traceback: str
    step: str | None = None
    replica: int | None = None
    batch: int | None = None
    rows: tuple[int, int] | None = None
    phase: str = "process"
    retryable: bool = True  # False for failures that a retry cannot change
    original: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_exception(cls, exc: BaseException, **where: Any) -> ErrorRecord:
        """Describe ``exc``; keep its pickle only when it survives a round trip here."""
        return cls(
            type_name=_type_name(type(exc)),
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            original=_round_trip(exc),
            retryable=not isinstance(exc, (UnpicklableOutput, StepOutputError)),
            **where,
        )

    @classmethod
    def from_message(cls, type_name: str, message: str, **where: Any) -> ErrorRecord:
        """An error known only by its name and message."""
        return cls(type_name=type_name, message=message, traceback="", **where)

    @classmethod
    def from_diagnosis(cls, exc: SynthpipeError, **where: Any) -> ErrorRecord:
        """An error the engine diagnosed itself (a crash, a timeout): no worker traceback."""
        return cls(type_name=_type_name(type(exc)), message=str(exc), traceback="",
                   original=_round_trip(exc), **where)

    def location(self) -> str:
        parts = [f"step '{self.step}'"]
        if self.replica is not None:
            parts.append(f"replica {self.replica}")
        if self.phase == "load":
            parts.append("in load()")
        elif self.phase == "import":
            parts.append("while importing the script")
        elif self.phase.startswith("routing function"):
            parts.append(self.phase)
        if self.batch is not None:
            parts.append(f"batch {self.batch}")
        if self.rows is not None:
            parts.append(f"rows {self.rows[0]}–{self.rows[1]}")
        return ", ".join(parts)

    def headline(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def to_exception(self) -> BaseException:
        """The original exception when it round-trips, otherwise a stand-in of the same name.

        Either way its ``__cause__`` is the worker's traceback text, so the user's own
        frames show up when the error is printed.
        """
        exc: BaseException | None = None
        if self.original is not None:
            try:
                exc = pickle.loads(self.original)
            except Exception:
                exc = None
        if exc is None:
            exc = _standin_class(self.type_name)(self.message)
        if self.traceback:
            exc.__cause__ = RemoteTraceback(self.traceback)
        return exc


def _round_trip(exc: BaseException) -> bytes | None:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        return None
    return data


class StepFailed(SynthpipeError):
    """A step failed and its policy stopped the run. ``__cause__`` is the original error."""

    def __init__(self, record: ErrorRecord) -> None:
        self.record = record
        super().__init__(f"{record.location()} failed: {record.headline()}")

    @property
    def step(self) -> str | None:
        return self.record.step


class WorkerDied(SynthpipeError):
    """A worker process ended without being asked to (crash, kill, ``os._exit``)."""


class UnpicklableOutput(SynthpipeError):
    """A step produced a value that cannot be sent to another process."""


class ColumnTypeClash(SynthpipeError, TypeError):
    """A row's value cannot share its result column's type with the other rows (an int
    among strings): the row is set aside in the failed rows, the rest of the result kept."""


class StepOutputError(SynthpipeError, TypeError):
    """A step gave back something else than rows in the shape its kind promises."""


class StepTimeout(SynthpipeError):
    """A batch ran longer than its step's ``timeout``; its worker was killed."""


class RoutingError(SynthpipeError):
    """A routing batch function gave an answer that routes a batch nowhere it can go."""


class TooManyFailedRows(SynthpipeError):
    """A step's failed rows passed its ``max_failed_rows`` or ``max_failure_rate``."""


class RunInterrupted(SynthpipeError):
    """The run was stopped by SIGINT or SIGTERM (raised inside the engine, turned into
    ``KeyboardInterrupt`` or exit status 143 for the user)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def trim_internal_frames(exc: BaseException, package_dir: str) -> BaseException:
    """Drop the leading traceback frames that are synthpipe's own, so the user's come first."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(package_dir):
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb
    return exc


# distilabel's error names (DistilabelUserError...): the synthpipe class each one is (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
