"""Where one run keeps its files (log, leaf datasets): ``<pipeline store>/runs/<run id>/``."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def cache_location() -> str | Path:
    """Where stores live unless a pipeline says: ``SYNTHPIPE_CACHE_DIR`` (a folder, or an fsspec
    URL such as ``s3://bucket/synthpipe``), else the user's cache folder."""
    env = os.environ.get("SYNTHPIPE_CACHE_DIR")
    if env and "://" in env:
        return env
    return default_cache_root()


def default_cache_root() -> Path:
    """The local cache folder (also where copies of remote stores are worked on):
    ``SYNTHPIPE_LOCAL_CACHE_DIR``, else a local ``SYNTHPIPE_CACHE_DIR``, else ~/.cache/synthpipe."""
    for name in ("SYNTHPIPE_LOCAL_CACHE_DIR", "SYNTHPIPE_CACHE_DIR"):
        env = os.environ.get(name)
        if env and "://" not in env:
            return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "synthpipe"


def structure_signature(description: dict[str, Any]) -> str:
    """A short, stable hash of a pipeline's shape: step names, classes and edges, not
    parameters, so that a changed parameter finds the same store (and its earlier steps)."""
    blob = json.dumps(description, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class RunDirectory:
    path: Path

    @classmethod
    def create_in(cls, runs_folder: Path) -> RunDirectory:
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 100000:05d}"
        path = runs_folder / run_id
        (path / "data").mkdir(parents=True, exist_ok=False)
        return cls(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def log_path(self) -> Path:
        return self.path / "pipeline.log"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def failed_rows_path(self) -> Path:
        return self.path / "failed_rows.jsonl"
