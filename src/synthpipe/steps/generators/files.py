"""``LoadDataFromFileSystem``: rows from JSON Lines, JSON, CSV or Parquet files on any fsspec
filesystem, read piece by piece so a file far larger than memory streams through."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import Field, PrivateAttr

from synthpipe.steps.base import GeneratorStep, GeneratorStepOutput, RuntimeParameter
from synthpipe.steps.generators._batching import batched

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class LoadDataFromFileSystem(GeneratorStep):
    """Loads ``data_files`` — a file, a directory (searched recursively), a glob, or a list of
    them, local or any fsspec URL (``storage_options`` go to the filesystem) — in sorted
    file order. ``filetype`` (``jsonl``/``json``/``csv``/``parquet``) is taken from the first
    file's extension when not given. Parquet is read by record batches and text line by
    line, so memory holds one batch, not the file; a JSON file holding one array is the one
    format read whole. ``num_examples`` caps the rows; ``split`` is kept for distilabel
    compatibility (files carry one split)."""

    data_files: RuntimeParameter[Union[str, Path, list[Union[str, Path]]]] = None
    filetype: RuntimeParameter[str] = None
    split: RuntimeParameter[str] = "train"
    streaming: RuntimeParameter[bool] = True
    num_examples: RuntimeParameter[int] = Field(default=None, ge=0)
    storage_options: Optional[dict[str, Any]] = None

    _columns: Optional[list[str]] = PrivateAttr(default=None)

    # -- finding files ---------------------------------------------------------------------

    def _resolve(self) -> list[tuple[Any, str]]:
        from fsspec.core import url_to_fs

        if self.data_files is None:
            raise ValueError(f"step '{self.name}': data_files is not set (give it, or set it at run time)")
        specs = self.data_files if isinstance(self.data_files, list) else [self.data_files]
        found: list[tuple[Any, str]] = []
        for spec in specs:
            fs, path = url_to_fs(str(spec), **(self.storage_options or {}))
            if any(ch in path for ch in "*?["):
                paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
            elif fs.isdir(path):
                paths = sorted(p for p in fs.find(path) if Path(p).suffix.lower() in _EXTENSIONS)
            elif fs.exists(path):
                paths = [path]
            else:
                paths = []
            if not paths:
                raise FileNotFoundError(f"step '{self.name}': no data file at {str(spec)!r}")
            found.extend((fs, p) for p in paths)
        return found

    def _filetype(self, path: str) -> str:
        if self.filetype:
            kind = self.filetype.lower()
        else:
            kind = _EXTENSIONS.get(Path(path).suffix.lower(), "")
        if kind not in {"jsonl", "json", "csv", "parquet"}:
            raise ValueError(f"step '{self.name}': cannot tell the format of {path!r}; "
                             "set filetype to jsonl, json, csv or parquet")
        return kind

    # -- reading ---------------------------------------------------------------------------

    @property
    def outputs(self) -> list[str]:
        """The columns of the first row of the first file (read at definition, so the next
        steps' inputs can be checked before the run starts)."""
        if self._columns is None:
            fs, path = self._resolve()[0]
            if self._filetype(path) == "parquet":
                import pyarrow.parquet as pq

                with fs.open(path, "rb") as fh:
                    self._columns = list(pq.ParquetFile(fh).schema_arrow.names)
            else:
                first = next(self._read_file(fs, path), None)
                self._columns = list(first) if first else []
        return list(self._columns)

    def _read_file(self, fs: Any, path: str) -> Iterator[dict[str, Any]]:
        kind = self._filetype(path)
        where = fs.unstrip_protocol(path)
        if kind == "parquet":
            return _parquet_rows(fs, path, 0, self.batch_size)
        if kind == "csv":
            return _csv_rows(self, fs, path, where)
        return _json_rows(self, fs, path, where, kind)

    def _rows(self, offset: int) -> Iterator[dict[str, Any]]:
        """Every row from ``offset`` on; a resumed run skips whole Parquet files and row groups
        by their metadata, and text rows by counting them."""
        skip = offset
        for fs, path in self._resolve():
            if skip and self._filetype(path) == "parquet":
                n = _count_rows(fs, path)
                if n <= skip:
                    skip -= n
                    continue
                yield from _parquet_rows(fs, path, skip, self.batch_size)
                skip = 0
                continue
            for row in self._read_file(fs, path):
                if skip:
                    skip -= 1
                    continue
                yield row

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        limit = None if self.num_examples is None else max(0, self.num_examples - offset)
        yield from batched(self._rows(offset), self.batch_size, limit)


def _count_rows(fs: Any, path: str) -> int:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def _parquet_rows(fs: Any, path: str, skip: int, batch_size: int) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        # A buffered stream without pre-buffering decodes page by page: memory holds one
        # record batch, not one row group (a 1Mi-row group would otherwise sit whole in memory).
        pf = pq.ParquetFile(fh, buffer_size=1 << 20, pre_buffer=False)
        groups = []
        for i in range(pf.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if skip >= n:
                skip -= n
                continue
            groups.append(i)
        if not groups:
            return
        for record_batch in pf.iter_batches(batch_size=max(batch_size, 1024), row_groups=groups, use_threads=False):
            rows = record_batch.to_pylist()
            if skip:
                rows, skip = rows[skip:], max(0, skip - len(rows))
            yield from rows


def _json_rows(step: Any, fs: Any, path: str, where: str, kind: str) -> Iterator[dict[str, Any]]:
    with fs.open(path, "rt", encoding="utf-8") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        if kind == "json" and head == "[":
            try:
                data = json.loads(head + fh.read())
            except json.JSONDecodeError as exc:
                raise ValueError(f"step '{step.name}': {where} is not valid JSON: {exc}") from None
            if not isinstance(data, list):
                data = [data]
            for i, row in enumerate(data):
                yield _as_row(step, row, where, f"item {i}")
            return
        for line_no, line in enumerate(_lines(head, fh), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"step '{step.name}': {where} line {line_no} is not valid JSON "
                                 f"({exc.msg}): {line.strip()!r:.80}") from None
            yield _as_row(step, row, where, f"line {line_no}")


def _lines(head: str, fh: Any) -> Iterator[str]:
    first = head + fh.readline() if head else ""
    if first:
        yield first
    yield from fh


def _as_row(step: Any, row: Any, where: str, at: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"step '{step.name}': {where} {at} holds a JSON {type(row).__name__}, not an object")
    return row


def _csv_rows(step: Any, fs: Any, path: str, where: str) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with fs.open(path, "rb") as fh:
        try:
            reader = pcsv.open_csv(fh, read_options=pcsv.ReadOptions(block_size=1 << 20))
            for record_batch in reader:
                yield from record_batch.to_pylist()
        except pa.ArrowInvalid as exc:
            raise ValueError(f"step '{step.name}': cannot read CSV {where}: {exc}") from None
