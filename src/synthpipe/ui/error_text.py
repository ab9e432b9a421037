"""An error as a person reads it at the end of a failed run: the headline, the user's own frames
with synthpipe's folded away (``SYNTHPIPE_LOG_LEVEL=DEBUG`` shows them), and where it happened."""

from __future__ import annotations

import os
import re
from pathlib import Path

import synthpipe

PACKAGE_DIR = str(Path(synthpipe.__file__).resolve().parent) + os.sep
_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+, in ')


def _ours(path: str) -> bool:
    try:
        return str(Path(path).resolve()).startswith(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def fold_traceback(text: str, debug: bool = False) -> str:
    """``text`` (a formatted traceback) with each run of synthpipe's own frames folded into one
    line; every frame kept when ``debug``."""
    if debug or not text:
        return text
    out: list[str] = []
    folded = 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FRAME.match(lines[i])
        if match and _ours(match.group(1)):
            folded += 1
            i += 1
            while i < len(lines) and lines[i].startswith("    ") and not _FRAME.match(lines[i]):
                i += 1  # the frame's source line (and any ^^^ markers)
            continue
        if folded:
            out.append(f"  [{folded} synthpipe frame(s) folded; SYNTHPIPE_LOG_LEVEL=DEBUG shows them]")
            folded = 0
        out.append(lines[i])
        i += 1
    if folded:
        out.append(f"  [{folded} synthpipe frame(s) folded; SYNTHPIPE_LOG_LEVEL=DEBUG shows them]")
    return "\n".join(out)


def truncated_row(row: object, limit: int = 300) -> str:
    import json

    text = json.dumps(row, default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


def failed_run_text(exc: BaseException, debug: bool = False) -> str:
    """What the command prints when a run ends with ``exc``."""
    record = getattr(exc, "record", None)
    lines = [f"synthpipe: the run failed: {exc}" if record is not None
             else f"synthpipe: the run failed: {type(exc).__name__}: {exc}"]
    traceback_text = getattr(record, "traceback", None) if record is not None else None
    if traceback_text:
        lines.append(fold_traceback(traceback_text.rstrip(), debug))
    row = getattr(exc, "input_row", None)
    if row is not None:
        lines.append(f"input row: {truncated_row(row)}")
    if record is not None and getattr(record, "batch", None) is not None:
        lines.append(f"(step '{record.step}', batch {record.batch}; the run's log has every detail, "
                     "and a resumed run reuses every batch that finished)")
    return "\n".join(lines)
