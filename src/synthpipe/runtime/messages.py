"""The wire between coordinator and workers: tuples, pickled once, sent as bytes.

coordinator -> worker:  ("batch", seq, row_start, inputs) | ("generate", seq) | ("stop",)
worker -> coordinator:  ("ready",) | ("load_failed", record)
                        | ("done", seq, rows, last) | ("failed", seq, record)
                        | ("log", levelno, logger_name, text)
"""

from __future__ import annotations

import pickle
from typing import Any

BATCH, GENERATE, STOP = "batch", "generate", "stop"
READY, LOAD_FAILED, DONE, FAILED, LOG = "ready", "load_failed", "done", "failed", "log"


def encode(message: tuple[Any, ...]) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> tuple[Any, ...]:
    return pickle.loads(data)
