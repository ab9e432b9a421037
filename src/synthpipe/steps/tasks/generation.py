"""``TextGenerationWithImage`` (a prompt and an image, for vision chat models) and
``StructuredGeneration`` (each row brings the JSON schema its answer must follow)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, Literal, Optional

from pydantic import PrivateAttr, field_validator, model_validator

from synthpipe.models.base import ChatType, GenerateOutput, StructuredOutput
from synthpipe.models.cache import generate_cached
from synthpipe.steps.base import RowFailure, StepInput, StepResult
from synthpipe.steps.tasks.base import Task
from synthpipe.steps.tasks.templates import check_template, render_template
from synthpipe.worker_context import current_row_start


class TextGenerationWithImage(Task):
    """A user turn holding the rendered ``template`` (default: the ``instruction`` column) and
    the ``image`` column as an OpenAI ``image_url`` content part: a URL (``image_type="url"``),
    base64 data (``"base64"``, sent as a ``data:image/jpeg;base64,`` URL) or a PIL image
    (``"PIL"``, encoded here). Writes ``generation``. A backend that takes no images is refused
    when the task is built, before anything runs.

    Method: visual instruction following as in "Visual Instruction Tuning", Liu, Li, Wu, Lee,
    2023, arXiv:2304.08485.
    """

    system_prompt: Optional[str] = None
    template: Optional[str] = None
    image_type: Literal["url", "base64", "PIL"] = "url"

    _check = field_validator("template")(lambda cls, v: v if v is None else check_template(v))

    @model_validator(mode="after")
    def _backend_takes_images(self) -> TextGenerationWithImage:
        if not self.llm.supports_images():
            raise ValueError(f"{type(self).__name__}: {type(self.llm).__name__} does not take images in its chats; "
                             "use an OpenAI-compatible vision endpoint (OpenAILLM, ClientvLLM...)")
        return self

    @property
    def inputs(self) -> dict[str, bool]:
        return {"instruction": True, "image": True, "system_prompt": False}

    @property
    def task_outputs(self) -> list[str]:
        return ["generation"]

    def _image_url(self, image: Any) -> str:
        if self.image_type == "url":
            if not isinstance(image, str) or not image:
                raise ValueError(f"step '{self.name}': column 'image' must hold a URL string")
            return image
        if self.image_type == "PIL":
            import base64
            import io

            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG")
            image = base64.b64encode(buffer.getvalue()).decode()
        if not isinstance(image, str) or not image:
            raise ValueError(f"step '{self.name}': column 'image' must hold base64 text")
        return image if image.startswith("data:") else f"data:image/jpeg;base64,{image}"

    def format_input(self, row: dict[str, Any]) -> ChatType:
        text = render_template(self.template or "{{ instruction }}", **row)
        messages: ChatType = []
        system = row.get("system_prompt") or self.system_prompt
        if system:
            # content parts here too: one shape per column when the raw input is stored
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": self._image_url(row.get("image"))}},
        ]})
        return messages

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        return {"generation": output}


class StructuredGeneration(Task):
    """Each row's ``instruction`` answered as JSON following that row's ``structured_output``
    column: ``{"format": "json", "schema": {...}}`` (distilabel's shape) or a bare schema.
    Writes ``generation`` (the JSON text, validated against the row's schema: an answer that
    does not match fails its row, keeping the text). ``use_system_prompt`` sends a
    ``system_prompt`` column first.

    Rows are answered in groups of one schema each, the LLM's schema set per group: groups of
    the same worker take turns (one lock), rows within a group go at once.

    Method: schema-constrained decoding, "Efficient Guided Generation for Large Language
    Models", Willard and Louf, 2023, arXiv:2307.09702.
    """

    use_system_prompt: bool = False
    _schema_lock: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _backend_constrains(self) -> StructuredGeneration:
        if not self.llm.supports_structured_output():
            raise ValueError(f"{type(self).__name__}: {type(self.llm).__name__} cannot constrain its output to a "
                             "JSON schema here")
        return self

    @property
    def inputs(self) -> dict[str, bool]:
        return {"instruction": True, "structured_output": True, "system_prompt": False}

    @property
    def task_outputs(self) -> list[str]:
        return ["generation"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        messages: ChatType = []
        if self.use_system_prompt and row.get("system_prompt"):
            messages.append({"role": "system", "content": row["system_prompt"]})
        messages.append({"role": "user", "content": str(row["instruction"])})
        return messages

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        return {"generation": output}

    def _schema_of(self, row: dict[str, Any]) -> dict[str, Any]:
        value = row.get("structured_output")
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict) and "schema" in value:
            if value.get("format", "json") != "json":
                raise ValueError(f"step '{self.name}': column 'structured_output' format {value['format']!r} "
                                 "is not supported (only 'json')")
            value = value["schema"]
        if not isinstance(value, dict):
            raise ValueError(f"step '{self.name}': column 'structured_output' must hold a JSON schema")
        return value

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        failures: list[RowFailure] = []
        groups: dict[str, list[tuple[int, ChatType, dict[str, Any]]]] = {}
        for index, row in enumerate(inputs):
            try:
                schema = self._schema_of(row)
                key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]
                groups.setdefault(key, []).append((index, self.format_input(row), schema))
            except Exception as exc:
                failures.append(RowFailure(index, exc))
        start = current_row_start()
        kwargs = dict(self.llm.generation_kwargs)
        out_by_index: dict[int, list[dict[str, Any]]] = {}
        saved = self.llm.structured_output
        for key, members in groups.items():
            async with self._schema_lock:  # the LLM's schema is this group's while its rows are asked
                self.llm.structured_output = StructuredOutput(json_schema=members[0][2], name="row_schema")
                try:
                    def accept(i: int, answer: GenerateOutput, members=members) -> list[dict[str, Any]]:
                        index, chat, _ = members[i]
                        return self._rows_for(inputs[index], chat, answer)

                    # the schema is part of each request's cache key (a row whose schema changed asks again)
                    positions = [f"{start + index if start is not None else index}:{key}" for index, _, _ in members]
                    results = await generate_cached(self.llm, [chat for _, chat, _ in members], self.num_generations,
                                                    accept, positions=positions, read=self.use_cache,  # type: ignore
                                                    **kwargs)
                finally:
                    self.llm.structured_output = saved
            for (index, _, _), result in zip(members, results, strict=True):
                if isinstance(result, BaseException):
                    failures.append(RowFailure(index, result))
                else:
                    out_by_index[index] = result
        order = sorted(out_by_index)
        rows = [row for index in order for row in out_by_index[index]]
        sources = [index for index in order for _ in out_by_index[index]]
        return StepResult(rows, sorted(failures, key=lambda f: f.index), sources)
