"""Loaders over ``datasets``: a dataset on disk (``save_to_disk`` or a saved Distiset) and a
Hub dataset (or a local folder or cache, offline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import Field, PrivateAttr

from synthpipe.steps.base import GeneratorStep, GeneratorStepOutput, RuntimeParameter
from synthpipe.steps.generators._batching import batched


def _slices(dataset: Any, offset: int, size: int) -> Iterator[dict[str, Any]]:
    """Rows of a memory-mapped ``Dataset`` a slice at a time (only the slice is decoded)."""
    for start in range(offset, dataset.num_rows, size):
        yield from dataset.select(range(start, min(start + size, dataset.num_rows))).to_list()


class LoadDataFromDisk(GeneratorStep):
    """Rows of a dataset saved with ``Dataset.save_to_disk``/``DatasetDict.save_to_disk`` or,
    with ``is_distiset=True``, of one leaf (``config``) of a saved Distiset."""

    dataset_path: RuntimeParameter[Union[str, Path]] = None
    config: RuntimeParameter[str] = None
    split: RuntimeParameter[str] = "train"
    is_distiset: bool = False
    keep_in_memory: bool = False
    num_examples: RuntimeParameter[int] = Field(default=None, ge=0)
    storage_options: Optional[dict[str, Any]] = None

    _dataset: Any = PrivateAttr(default=None)

    def _load(self) -> Any:
        if self._dataset is not None:
            return self._dataset
        if self.dataset_path is None:
            raise ValueError(f"step '{self.name}': dataset_path is not set")
        path = str(self.dataset_path)
        if not Path(path).exists() and "://" not in path:
            raise FileNotFoundError(f"step '{self.name}': no saved dataset at {path!r}")
        if self.is_distiset:
            from synthpipe.distiset import Distiset

            distiset = Distiset.load_from_disk(path)
            config = self.config or ("default" if "default" in distiset else next(iter(distiset)))
            if config not in distiset:
                raise KeyError(f"step '{self.name}': the Distiset at {path!r} has no config {config!r} "
                               f"(it has {sorted(distiset)})")
            data = distiset[config]
        else:
            from datasets import load_from_disk

            data = load_from_disk(path, keep_in_memory=self.keep_in_memory, storage_options=self.storage_options)
        if hasattr(data, "keys"):  # a DatasetDict
            if self.split not in data:
                raise KeyError(f"step '{self.name}': {path!r} has no split {self.split!r} (it has {sorted(data)})")
            data = data[self.split]
        self._dataset = data
        return data

    @property
    def outputs(self) -> list[str]:
        return list(self._load().column_names)

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        dataset = self._load()
        limit = None if self.num_examples is None else max(0, self.num_examples - offset)
        yield from batched(_slices(dataset, offset, self.batch_size), self.batch_size, limit)


class LoadDataFromHub(GeneratorStep):
    """Rows of a Hub dataset through ``datasets.load_dataset(repo_id, config, split=...)``;
    ``streaming=True`` reads it as it goes. With ``HF_HUB_OFFLINE=1`` it is served from the
    local dataset cache (or ``repo_id`` may be a local folder of data files)."""

    repo_id: RuntimeParameter[str] = None
    split: RuntimeParameter[str] = "train"
    config: RuntimeParameter[str] = None
    revision: RuntimeParameter[str] = None
    streaming: RuntimeParameter[bool] = False
    num_examples: RuntimeParameter[int] = Field(default=None, ge=0)
    storage_options: Optional[dict[str, Any]] = None

    _columns: Optional[list[str]] = PrivateAttr(default=None)

    def _open(self, streaming: bool) -> Any:
        from datasets import load_dataset

        if not self.repo_id:
            raise ValueError(f"step '{self.name}': repo_id is not set")
        try:
            return load_dataset(self.repo_id, self.config, split=self.split, revision=self.revision,
                                streaming=streaming, storage_options=self.storage_options)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"step '{self.name}': cannot load {self.repo_id!r} "
                                    f"(config {self.config!r}, split {self.split!r}): {exc}") from exc
        except ConnectionError as exc:
            raise ConnectionError(f"step '{self.name}': cannot reach the Hub for {self.repo_id!r} ({exc}); "
                                  "with no network, HF_HUB_OFFLINE=1 reads a dataset downloaded before from the "
                                  "local cache, or repo_id can name a local folder of data files") from exc

    @property
    def outputs(self) -> list[str]:
        if self._columns is None:
            data = self._open(streaming=True)
            features = getattr(data, "features", None)
            if features:
                self._columns = list(features)
            else:
                first = next(iter(data), None)
                self._columns = list(first) if first else []
        return list(self._columns)

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        data = self._open(streaming=self.streaming)
        limit = None if self.num_examples is None else max(0, self.num_examples - offset)
        if self.streaming:
            rows: Iterator[dict[str, Any]] = iter(data.skip(offset)) if offset else iter(data)
        else:
            rows = _slices(data, offset, self.batch_size)
        yield from batched(rows, self.batch_size, limit)
