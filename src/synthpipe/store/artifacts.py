"""Step artifacts in the run directory: ``<run dir>/artifacts/<step>/<name>/``.

A step's fitted model or figure is kept with the run that made it, next to its data and log,
so it is found where the run's result is (``distiset.artifacts_path``). The worker sends the
files; the coordinator, the only writer of the store, writes them here. A resumed run that
reuses a finished step does not make its artifacts again: they stay in the run that made them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

ARTIFACTS_FOLDER = "artifacts"
METADATA_FILE = "metadata.json"


def _plain(part: str, what: str) -> str:
    if not part or part in {".", ".."} or "/" in part or "\\" in part:
        raise ValueError(f"artifact {what} {part!r} must be a plain file or folder name")
    return part


def write_artifact(run_path: Path, payload: dict[str, Any]) -> Path:
    """Write one artifact (``{"step", "name", "files": {relative path: bytes}, "metadata"}``)
    and return its folder. Each file is written whole, then renamed into place."""
    folder = run_path / ARTIFACTS_FOLDER / _plain(str(payload["step"]), "step") / _plain(str(payload["name"]), "name")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = dict(payload.get("files") or {})
    files[METADATA_FILE] = json.dumps(payload.get("metadata") or {}, indent=2, sort_keys=True, default=str).encode()
    for relative, data in files.items():
        parts = [_plain(p, "file") for p in PurePosixPath(relative).parts]
        target = folder.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return folder
