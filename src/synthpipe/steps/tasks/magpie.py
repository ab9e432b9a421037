"""Magpie: instructions drawn out of an aligned chat model with no seed data.

The conversation so far is rendered with the model's chat template, the tokens that open a
user turn (the *pre-query template*) are appended, and the model, continuing the raw text,
writes what a user would ask; its answer then comes from an ordinary chat request. Repeated
``n_turns`` times this builds a multi-turn conversation. Raw prompts need a backend that
takes them (``llm.supports_raw_prompts()``: TransformersLLM, LlamaCppLLM, vLLM, or an
OpenAI-compatible server's ``/completions``) and the LLM's ``magpie_pre_query_template``
(``"llama3"``, ``"qwen2"`` or the literal tokens); anything else is refused when the task is
built, before a pipeline runs.

Paper: "Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs with Nothing",
Xu, Jiang, Niu, Deng, Poovendran, Choi, Lin, 2024, arXiv:2406.08464.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Optional, Union

from pydantic import BaseModel, Field, model_validator

from synthpipe.models.base import LLM, GenerateOutput
from synthpipe.models.cache import cache_for, generate_cached, request_key
from synthpipe.steps.base import GeneratorStep, GeneratorStepOutput, RowFailure, StepInput, StepResult
from synthpipe.steps.tasks.base import METADATA_COLUMN, IncompleteAnswer, Task, UnparsableAnswer
from synthpipe.worker_context import current_row_start

SystemPrompts = Union[str, list[str], dict[str, str], dict[str, tuple[str, float]], None]
_TURN_ENDS = ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "</s>", "<|endoftext|>")


def check_magpie_llm(owner: str, llm: LLM) -> None:
    """A clear error now, not a failed run later, for a backend Magpie cannot use."""
    if not llm.supports_raw_prompts():
        hint = ""
        if hasattr(llm, "chat_template") and hasattr(llm, "base_url"):  # an OpenAI-compatible server
            hint = (" (for its /completions endpoint set magpie_pre_query_template='llama3' or 'qwen2', or a "
                    "chat_template, so the conversation can be rendered)")
        raise ValueError(f"{owner}: {type(llm).__name__} cannot generate from a raw prompt, which Magpie needs; "
                         f"use TransformersLLM, LlamaCppLLM, vLLM or an OpenAI-compatible /completions "
                         f"endpoint{hint}")
    if not getattr(llm, "magpie_pre_query_template", None):
        raise ValueError(f"{owner}: {type(llm).__name__} needs magpie_pre_query_template ('llama3', 'qwen2' or the "
                         "tokens that open a user turn in its chat format)")


def _clean_instruction(text: str | None) -> str:
    text = text or ""
    for end in _TURN_ENDS:
        text = text.split(end, 1)[0]
    return text.strip()


class MagpieSettings(BaseModel):
    """distilabel's Magpie parameters, shared by ``Magpie`` and ``MagpieGenerator``."""

    n_turns: int = Field(default=1, ge=1)
    end_with_user: bool = False
    include_system_prompt: bool = False
    only_instruction: bool = False
    system_prompt: SystemPrompts = None

    def magpie_outputs(self) -> list[str]:
        if self.only_instruction:
            columns = ["instruction"]
        elif self.n_turns == 1:
            columns = ["instruction", "response"]
        else:
            columns = ["conversation"]
        if isinstance(self.system_prompt, dict):
            columns.append("system_prompt_key")
        return columns

    def _draw_system(self, rng: random.Random, row: dict[str, Any]) -> tuple[Optional[str], Optional[str]]:
        """(system prompt, its key when ``system_prompt`` is a dict); a row's column wins."""
        if row.get("system_prompt"):
            return str(row["system_prompt"]), None
        prompts = self.system_prompt
        if prompts is None or isinstance(prompts, str):
            return prompts, None
        if isinstance(prompts, list):
            return (rng.choice(prompts) if prompts else None), None
        keys = list(prompts)
        weights = [v[1] if isinstance(v, (list, tuple)) else 1.0 for v in prompts.values()]
        key = rng.choices(keys, weights=weights)[0]
        value = prompts[key]
        return (value[0] if isinstance(value, (list, tuple)) else value), key

    async def _raw(self, llm: LLM, prompts: list[str], positions: list[str], read: bool,
                   kwargs: dict[str, Any]) -> list[Any]:
        """Raw completions through the response cache (the prompt is the request's identity)."""
        cache = cache_for(llm, read)
        keys = [request_key([{"role": "raw", "content": p}], 1, kwargs, pos)
                for p, pos in zip(prompts, positions, strict=True)]
        results: list[Any] = [cache.get(k) if cache is not None and read else None for k in keys]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fresh = await llm.agenerate_raw([prompts[i] for i in missing], 1, **kwargs)
            for i, answer in zip(missing, fresh, strict=True):
                results[i] = answer
        out: list[Any] = []
        for i, answer in enumerate(results):
            if isinstance(answer, BaseException):
                out.append(answer)
                continue
            text = _clean_instruction((answer.get("generations") or [None])[0])
            if not text:
                out.append(UnparsableAnswer("the model wrote no instruction after the pre-query template",
                                            (answer.get("generations") or [None])[0]))
                continue
            if i in missing and cache is not None:
                cache.put(keys[i], answer)
            out.append((text, answer.get("statistics") or {}))
        if cache is not None:
            cache.flush()
        return out

    async def conversations(self, llm: LLM, rows: list[dict[str, Any]], positions: list[int],
                            read: bool = True) -> list[Any]:
        """For each row, its Magpie columns (plus ``_statistics``), or the exception that stopped it."""
        kwargs = dict(llm.generation_kwargs)
        state: dict[int, dict[str, Any]] = {}
        results: list[Any] = [None] * len(rows)
        for i, row in enumerate(rows):
            system, key = self._draw_system(random.Random(f"magpie:{positions[i]}"), row)
            state[i] = {"messages": [{"role": "system", "content": system}] if system else [], "key": key,
                        "tokens": {"input_tokens": 0, "output_tokens": 0}}

        def add(i: int, statistics: dict[str, Any]) -> None:
            for name in state[i]["tokens"]:
                state[i]["tokens"][name] += sum(statistics.get(name) or [0])

        for turn in range(self.n_turns):
            living = sorted(state)
            answers = await self._raw(llm, [llm.magpie_prompt(state[i]["messages"]) for i in living],  # type: ignore
                                      [f"{positions[i]}:instruction{turn}" for i in living], read, kwargs)
            for i, answer in zip(living, answers, strict=True):
                if isinstance(answer, BaseException):
                    results[i] = answer
                    del state[i]
                else:
                    state[i]["messages"].append({"role": "user", "content": answer[0]})
                    add(i, answer[1])
            if self.only_instruction or (turn == self.n_turns - 1 and self.end_with_user):
                break
            living = sorted(state)

            def accept(j: int, answer: GenerateOutput) -> tuple[str, dict[str, Any]]:
                texts = answer.get("generations") or []
                if not texts or texts[0] is None:
                    raise IncompleteAnswer(f"{llm.model_name} returned no text")
                return texts[0].strip(), answer.get("statistics") or {}

            replies = await generate_cached(llm, [list(state[i]["messages"]) for i in living], 1, accept,
                                            positions=[f"{positions[i]}:response{turn}" for i in living],  # type: ignore
                                            read=read, **kwargs)
            for i, reply in zip(living, replies, strict=True):
                if isinstance(reply, BaseException):
                    results[i] = reply
                    del state[i]
                else:
                    state[i]["messages"].append({"role": "assistant", "content": reply[0]})
                    add(i, reply[1])
        for i, s in state.items():
            messages = s["messages"]
            turns = [m for m in messages if m["role"] != "system"]
            if self.only_instruction:
                columns: dict[str, Any] = {"instruction": turns[0]["content"]}
            elif self.n_turns == 1:
                columns = {"instruction": turns[0]["content"],
                           "response": turns[1]["content"] if len(turns) > 1 else None}
            else:
                columns = {"conversation": messages if self.include_system_prompt else turns}
            if isinstance(self.system_prompt, dict):
                columns["system_prompt_key"] = s["key"]
            columns["_statistics"] = {k: [v] for k, v in s["tokens"].items()}
            results[i] = columns
        return results


class Magpie(MagpieSettings, Task):
    """Magpie on input rows (an optional ``system_prompt`` column steers each row). Writes
    ``instruction`` (``only_instruction``), ``instruction`` and ``response`` (``n_turns=1``),
    or ``conversation`` (a list of role/content dicts, the system prompt in it with
    ``include_system_prompt``), plus ``system_prompt_key`` when ``system_prompt`` is a dict
    of named prompts (``{name: prompt}`` or ``{name: (prompt, weight)}``)."""

    @model_validator(mode="after")
    def _backend_takes_raw_prompts(self) -> Magpie:
        check_magpie_llm(type(self).__name__, self.llm)
        return self

    @property
    def inputs(self) -> dict[str, bool]:
        return {"system_prompt": False}

    @property
    def task_outputs(self) -> list[str]:
        return self.magpie_outputs()

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        start = current_row_start() or 0
        copies = [(index, g) for index in range(len(inputs)) for g in range(self.num_generations)]
        rows = [inputs[index] for index, _ in copies]
        positions = [(start + index) * self.num_generations + g for index, g in copies]
        results = await self.conversations(self.llm, rows, positions, read=self.use_cache)
        out, sources, failures, failed = [], [], [], set()
        for (index, _), result in zip(copies, results, strict=True):
            if isinstance(result, BaseException):
                if index not in failed:
                    failures.append(RowFailure(index, result))
                    failed.add(index)
                continue
            meta = dict(inputs[index].get(METADATA_COLUMN) or {})
            meta[f"statistics_{self.name}"] = result.pop("_statistics")
            out.append({**inputs[index], **result, "model_name": self.llm.model_name, METADATA_COLUMN: meta})
            sources.append(index)
        keep = [k for k, s in enumerate(sources) if s not in failed]
        return StepResult([out[k] for k in keep], failures, [sources[k] for k in keep])


class MagpieGenerator(MagpieSettings, GeneratorStep):
    """Magpie as the first step of a pipeline: ``num_rows`` rows, ``batch_size`` at a time,
    each batch asked in one event loop. A row whose requests fail stops the step with its
    error (a generator has no input row to fail on its own); columns as for ``Magpie``."""

    llm: LLM
    num_rows: int = Field(ge=1)
    use_cache: bool = True

    @model_validator(mode="after")
    def _backend_takes_raw_prompts(self) -> MagpieGenerator:
        check_magpie_llm(type(self).__name__, self.llm)
        return self

    @property
    def outputs(self) -> list[str]:
        return [*self.magpie_outputs(), "model_name"]

    def load(self) -> None:
        self.llm.load()

    def unload(self) -> None:
        self.llm.unload()

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        done = offset
        while done < self.num_rows:
            count = min(self.batch_size, self.num_rows - done)
            positions = list(range(done, done + count))
            results = asyncio.run(self.conversations(self.llm, [{} for _ in positions], positions, self.use_cache))
            rows = []
            for result in results:
                if isinstance(result, BaseException):
                    raise result
                result.pop("_statistics")
                rows.append({**result, "model_name": self.llm.model_name})
            done += count
            yield rows, done >= self.num_rows
