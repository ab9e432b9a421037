"""The wire between coordinator and workers: tuples, pickled once, sent as bytes.

coordinator -> worker:  ("batch", ticket, seq, row_start, inputs) | ("generate", ticket, seq, offset)
                        | ("stop",)
worker -> coordinator:  ("ready",) | ("load_failed", record)
                        | ("done", ticket, pickled_rows, last, failed, sources, stored, count, leaf, crc,
                          seconds)
                        | ("failed", ticket, record)
                        | ("log", levelno, logger_name, text) | ("record", kind, payload)

``record``: something for the coordinator to keep (an LLM's answer for the response cache).
``failed``: [(index, record)], input rows that failed while the rest of the batch went on;
``sources``: for each output row, the position of the input row it came from (or None);
``stored``: the rows as the store keeps them (columnar), or None to store the pickled rows;
``count``: how many rows ``pickled_rows`` holds (the coordinator need not unpickle them to know);
``leaf``: a leaf step's rows in the result's Arrow form, or None (the coordinator converts them);
``crc``: the CRC-32 of the bytes to store (``stored``, else ``pickled_rows``); ``seconds``: how
long the step took over the batch (the scheduler gives a quick step's workers more at once).
A batch's ``inputs`` are lists of rows; one that is a step's output whole travels as the bytes
its worker sent (``runtime.packed``) and arrives as a list all the same.
A ticket names one dispatch; a batch sent again (a retry, a part of it) gets a new one.
Output rows travel pickled on their own, so the coordinator can store those very bytes.
"""

from __future__ import annotations

import pickle
from typing import Any

BATCH, GENERATE, STOP = "batch", "generate", "stop"
READY, LOAD_FAILED, DONE, FAILED, LOG, RECORD = "ready", "load_failed", "done", "failed", "log", "record"


def encode(message: tuple[Any, ...]) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> tuple[Any, ...]:
    return pickle.loads(data)
