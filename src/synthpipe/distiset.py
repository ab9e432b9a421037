"""The result of a run: one ``datasets.DatasetDict`` per leaf step, plus the failed rows."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from synthpipe import _compat
from synthpipe.store.result_stream import RESULT_FOLDER, is_current, write_from_parquet

FAILED_ROWS_FILE = "failed_rows.jsonl"


def warm_up() -> None:
    """Import what building the result needs (``datasets``: over a second on a busy machine)
    in a thread of its own, while the run starts its workers, rather than after the last
    step, when the user is waiting for the result. Idempotent; a failure here is no failure
    (building the result imports it again and says what is wrong)."""
    global _WARMING
    if _WARMING is None and "datasets" not in sys.modules:
        _WARMING = threading.Thread(target=_import_result_libraries, name="synthpipe-result-import", daemon=True)
        _WARMING.start()


_WARMING: threading.Thread | None = None


def settle_warm_up(timeout: float = 5.0) -> None:
    """Let the warm-up import finish before a KeyboardInterrupt leaves the run. CPython gives an
    uncaught KeyboardInterrupt the exit status of SIGINT (130) through one process-wide flag,
    which code run by an import in another thread clears (Cython modules such as pyarrow's run
    code through ``PyRun_String``): a Ctrl+C during start-up would otherwise exit with 1."""
    if _WARMING is not None:
        try:
            _WARMING.join(timeout)
        except KeyboardInterrupt:  # a further Ctrl+C while waiting: go at once
            pass


def _import_result_libraries() -> None:
    try:
        import datasets  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except Exception:  # noqa: BLE001  (said when the result is built, where it matters)
        pass


def _dataset_from_parquet(files: list[Path], target: Path) -> Any:
    """The leaf's rows as a dataset memory-mapped from one Arrow file at ``target``: the one
    the leaf writer streamed during the run where it holds exactly these chunks, else made
    from them a record batch at a time, so neither building nor holding the result costs
    memory that grows with its rows."""
    from datasets import Dataset

    if not files:
        return Dataset.from_dict({})
    if not is_current(target, files):
        write_from_parquet(files, target)
    return Dataset.from_file(str(target), in_memory=False)


class Distiset(dict):
    """``{leaf step name: DatasetDict({"train": Dataset})}``; a single leaf is ``"default"``.

    ``failed_rows`` lists rows that failed under the ``skip`` policy, each with its step,
    batch, row number, input data and error.
    """

    def __init__(self, *args: Any, failed_rows: list[dict[str, Any]] | None = None,
                 run_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_rows: list[dict[str, Any]] = failed_rows or []
        self.run_dir = run_dir
        self._artifacts: Path | None = None  # a saved Distiset's own copy of the artifacts
        self.pipeline: Any = None  # the Pipeline that made it (set by Pipeline.run): the card describes it

    @classmethod
    def from_leaf_files(cls, leaf_files: dict[str, list[Path]], failed_rows: list[dict[str, Any]],
                        run_dir: Path | None = None) -> Distiset:
        from datasets import DatasetDict

        single = len(leaf_files) == 1
        result = cls(failed_rows=failed_rows, run_dir=run_dir)
        folder = (run_dir if run_dir is not None else Path(tempfile.mkdtemp(prefix="synthpipe-"))) / RESULT_FOLDER
        for leaf, files in leaf_files.items():
            dataset = _dataset_from_parquet(files, folder / f"{leaf}.arrow")
            result["default" if single else leaf] = DatasetDict({"train": dataset})
        return result

    @property
    def log_path(self) -> Path | None:
        return self.run_dir / "pipeline.log" if self.run_dir else None

    @property
    def artifacts_path(self) -> Path | None:
        """``<run dir>/artifacts``: ``<step>/<artifact name>/`` folders of files steps kept (a
        fitted UMAP, a cluster figure); None when no step of this run kept any."""
        folder = self._artifacts or (self.run_dir / "artifacts" if self.run_dir else None)
        return folder if folder is not None and folder.is_dir() else None

    def save_to_disk(self, path: str | Path) -> None:
        """Each leaf's DatasetDict in its own folder, the failed rows and the steps' artifacts
        (``artifacts/``) beside them."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, dataset_dict in self.items():
            dataset_dict.save_to_disk(str(path / name))
        artifacts = self.artifacts_path
        if artifacts is not None and artifacts.resolve() != (path / "artifacts").resolve():
            import shutil

            shutil.copytree(artifacts, path / "artifacts", dirs_exist_ok=True)
        with (path / FAILED_ROWS_FILE).open("w", encoding="utf-8") as fh:
            for entry in self.failed_rows:
                fh.write(json.dumps(entry, default=repr) + "\n")
        (path / "distiset.json").write_text(json.dumps({"leaves": list(self)}))

    @classmethod
    def load_from_disk(cls, path: str | Path) -> Distiset:
        from datasets import load_from_disk

        path = Path(path)
        leaves = json.loads((path / "distiset.json").read_text())["leaves"]
        failed: list[dict[str, Any]] = []
        failed_file = path / FAILED_ROWS_FILE
        if failed_file.exists():
            failed = [json.loads(line) for line in failed_file.read_text().splitlines() if line]
        result = cls({leaf: load_from_disk(str(path / leaf)) for leaf in leaves}, failed_rows=failed)
        result._artifacts = path / "artifacts"
        return result

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    generate_card: bool = True, include_script: bool = False, **kwargs: Any) -> None:
        """One config per leaf, a dataset card, ``pipeline.yaml`` and ``pipeline.log``
        (synthpipe/distiset_hub.py); ``kwargs`` go to ``DatasetDict.push_to_hub``."""
        from synthpipe.distiset_hub import push_to_hub

        push_to_hub(self, repo_id, private=private, token=token, generate_card=generate_card,
                    include_script=include_script, **kwargs)

    def train_test_split(self, train_size: float, shuffle: bool = True, seed: int | None = None) -> Distiset:
        """Each leaf's ``train`` split becomes ``train`` and ``test``, in place; returns self."""
        from synthpipe.distiset_hub import train_test_split

        return train_test_split(self, train_size, shuffle=shuffle, seed=seed)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{name!r}: {ds['train'].num_rows} rows {ds['train'].column_names}"
            for name, ds in self.items()
        )
        failed = f", failed_rows={len(self.failed_rows)}" if self.failed_rows else ""
        return f"Distiset({{{inner}}}{failed})"


# distilabel names this module lacks (create_distiset): what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
