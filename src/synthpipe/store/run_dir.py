"""Where a run keeps its files: ``<cache root>/<pipeline>-<signature>/runs/<run id>/``."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_cache_root() -> Path:
    env = os.environ.get("SYNTHPIPE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "synthpipe"


def structure_signature(description: dict[str, Any]) -> str:
    """A short, stable hash of a pipeline's structure (names the pipeline's directory)."""
    blob = json.dumps(description, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class RunDirectory:
    path: Path

    @classmethod
    def create(cls, cache_root: str | os.PathLike[str] | None, pipeline_name: str, signature: str) -> RunDirectory:
        root = Path(cache_root).expanduser() if cache_root else default_cache_root()
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 100000:05d}"
        path = root / f"{pipeline_name}-{signature}" / "runs" / run_id
        (path / "data").mkdir(parents=True, exist_ok=False)
        return cls(path)

    @property
    def log_path(self) -> Path:
        return self.path / "pipeline.log"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def failed_rows_path(self) -> Path:
        return self.path / "failed_rows.jsonl"
