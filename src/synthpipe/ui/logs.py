"""Logging for one run: quiet on the terminal, everything in the run's log file.

No global traceback hook is installed: a traceback printer showing local variables
would leak API keys into terminals and CI logs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOGGER_NAME = "synthpipe"
FILE_ONLY = {"synthpipe_file_only": True}
"""``extra=`` for a log line meant for the run's log file and not the terminal (it shows it otherwise)."""


def level_from_env(explicit: str | int | None = None) -> int:
    value = explicit if explicit is not None else os.environ.get("SYNTHPIPE_LOG_LEVEL", "INFO")
    if isinstance(value, int):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
    return level


class RunLogging:
    """Attaches a terminal handler and a file handler for the run; ``close()`` undoes it."""

    def __init__(self, level: int, log_file: Path | None) -> None:
        self.level = level
        self.logger = logging.getLogger(LOGGER_NAME)
        self._saved = (self.logger.level, self.logger.propagate)
        self.console = logging.StreamHandler(sys.stderr)
        self.console.setLevel(level)
        self.console.setFormatter(logging.Formatter("%(message)s"))
        self.console.addFilter(lambda record: not getattr(record, "synthpipe_file_only", False))
        self.handlers: list[logging.Handler] = [self.console]
        if log_file is not None:
            file = logging.FileHandler(log_file, encoding="utf-8")
            file.setLevel(logging.DEBUG)
            file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            self.handlers.append(file)
        for handler in self.handlers:
            self.logger.addHandler(handler)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def close(self) -> None:
        if not self.handlers:
            return  # closed already
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.logger.setLevel(self._saved[0])
        self.logger.propagate = self._saved[1]
        self.handlers = []

    @staticmethod
    def worker_line(level: int, name: str, text: str) -> None:
        """A log line from a worker, under the synthpipe logger so it reaches both handlers."""
        target = name if name.startswith(LOGGER_NAME + ".") else f"{LOGGER_NAME}.worker.{name}"
        logging.getLogger(target).log(level, text)
