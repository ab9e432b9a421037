"""The response cache: an answer already paid for is never asked for again.

A request's key hashes what decides its answer: the model set-up (the LLM's class and
signature fields: model, base URL, structured output...), the chat, the number of
generations and the generation kwargs (the seed among them). Answers are stored with the
pipeline's store as they arrive, so the requests of batches that were in flight at a
Ctrl+C, a crash or a kill, of a step whose parameters changed but whose prompts did not,
or of a pipeline run again, are answered from disk. ``use_cache=False`` (on the run or on
the step) asks afresh, and still stores what comes back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, Union

from synthpipe.models.base import LLM, AsyncLLM, ChatType, GenerateOutput

T = TypeVar("T")
RESPONSE = "response"  # the kind of record a worker hands the coordinator: (namespace, [(key, answer)], step)
FLUSH_ANSWERS = 64
FLUSH_SECONDS = 0.05


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def namespace_of(llm: LLM) -> str:
    """One per model set-up: the class and what changes its answers, not its kwargs."""
    fields = {k: v for k, v in llm.signature_fields().items() if k != "generation_kwargs"}
    from synthpipe.store.signature import stable_form

    blob = _canonical({"class": f"{type(llm).__module__}.{type(llm).__qualname__}", "fields": stable_form(fields)})
    return f"{type(llm).__name__.lower()}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def request_key(chat: ChatType, num_generations: int, kwargs: dict[str, Any], position: int | None = None) -> str:
    """``position``: the row's number in the step's input. Identical prompts in different rows
    (sampling many answers to one prompt) are different requests; the same row asked again
    (a resumed batch, a changed task parameter) is the same one."""
    blob = _canonical({"chat": chat, "n": num_generations, "kwargs": kwargs, "row": position})
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """A worker's view of one model set-up's stored answers."""

    def __init__(self, llm: LLM, folder: Path | None, read: bool) -> None:
        from synthpipe.store.responses import ResponseIndex
        from synthpipe.worker_context import context

        self.namespace = namespace_of(llm)
        self.step = context().get("step")  # two steps with the same model set-up share a namespace
        self._stored = ResponseIndex(folder, self.namespace) if folder is not None and read else None
        self.hits = 0
        self._pending: list[tuple[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def get(self, key: str) -> GenerateOutput | None:
        answer = self._stored.get(key) if self._stored is not None else None
        if answer is not None:
            self.hits += 1
        return answer

    def put(self, key: str, answer: GenerateOutput) -> None:
        """Queue an answer for the coordinator: sent with others, within FLUSH_SECONDS (a kill
        loses at most that much), so thousands of answers a second are not thousands of messages."""
        self._pending.append((key, answer))
        if len(self._pending) >= FLUSH_ANSWERS:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        from synthpipe.worker_context import publish

        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            pending, self._pending = self._pending, []
            publish(RESPONSE, (self.namespace, pending, self.step))


_CACHES: dict[int, ResponseCache] = {}


def cache_for(llm: LLM, read: bool = True) -> ResponseCache | None:
    """The cache of this LLM in this worker (None outside a run, or in a dry run)."""
    from synthpipe.worker_context import context

    ctx = context()
    if "responses" not in ctx:
        return None
    cache = _CACHES.get(id(llm))
    if cache is None:
        cache = _CACHES[id(llm)] = ResponseCache(llm, Path(ctx["responses"]), read and ctx.get("read_responses", True))
    return cache


async def generate_cached(
    llm: LLM, inputs: list[ChatType], num_generations: int, accept: Callable[[int, GenerateOutput], T],
    positions: list[int] | None = None, read: bool = True, **kwargs: Any,
) -> list[Union[T, BaseException]]:
    """For each input, ``accept(i, answer)`` of the LLM's answer, or the exception that stopped
    it. Answers come from the cache where it has them; a fresh answer is stored only once
    ``accept`` took it (a result the task rejects, invalid JSON say, is asked for again next
    time), and the moment it arrives when the backend answers row by row."""
    cache = cache_for(llm, read)
    results: list[Union[T, BaseException, None]] = [None] * len(inputs)
    keys = [request_key(chat, num_generations, kwargs, positions[i] if positions else None)
            for i, chat in enumerate(inputs)]

    def take(i: int, answer: Union[GenerateOutput, BaseException], fresh: bool) -> None:
        if isinstance(answer, BaseException):
            results[i] = answer
            return
        try:
            results[i] = accept(i, answer)
        except Exception as exc:
            results[i] = exc
            return
        if fresh and cache is not None:
            cache.put(keys[i], answer)

    missing = []
    for i in range(len(inputs)):
        answer = cache.get(keys[i]) if cache is not None and read else None
        if answer is None:
            missing.append(i)
        else:
            take(i, answer, fresh=False)
    if not missing:
        return results  # type: ignore[return-value]
    try:
        if isinstance(llm, AsyncLLM) and type(llm).agenerate is not AsyncLLM.agenerate:
            # one request per row: each answer is taken (and kept) the moment it arrives

            async def one(i: int) -> None:
                try:
                    answer = await llm.agenerate(inputs[i], num_generations, **kwargs)
                except Exception as exc:
                    answer = exc
                take(i, answer, fresh=True)

            await asyncio.gather(*(one(i) for i in missing))
        else:
            fresh = await llm.agenerate_batch([inputs[i] for i in missing], num_generations, **kwargs)
            if len(fresh) != len(missing):
                raise RuntimeError(f"{type(llm).__name__} returned {len(fresh)} outputs for {len(missing)} inputs")
            for i, answer in zip(missing, fresh, strict=True):
                take(i, answer, fresh=True)
    finally:
        if cache is not None:
            cache.flush()
    return results  # type: ignore[return-value]
