"""``MixtureOfAgentsLLM``: several proposer LLMs answer, over ``rounds`` each seeing the
previous round's answers, and an aggregator LLM writes the final answer from the last round.

Paper: "Mixture-of-Agents Enhances Large Language Model Capabilities", Junlin Wang, Jue Wang,
Ben Athiwaratkun, Ce Zhang, James Zou, 2024, arXiv:2406.04692.

It is an LLM like any other, so any task can use it. Each proposer uses its own
``generation_kwargs``; the aggregator its own merged with this LLM's. A structured output set
on this LLM (a task's schema) applies to the aggregator, whose answer is the one returned.
A request that fails in any proposer or in the aggregator fails that row with its error.

Every call is paid for, so each generation's statistics count them all: ``input_tokens`` and
``output_tokens`` are the totals over the proposers' and the aggregator's requests, and
``models`` splits them per model (``[{"model", "input_tokens", "output_tokens"}]``), which
is what the run's usage tally and prices go by.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from synthpipe.models.base import LLM, AsyncLLM, ChatType, GenerateOutput

REFERENCES_PROMPT = (
    "Several assistants have answered the latest user message; their answers are below. Read them "
    "critically: some may be wrong, biased or incomplete. Write one answer of your own that keeps what is "
    "right in them, fixes what is not, and reads as a single well-organised reply, not a summary of theirs."
    "\n\nAnswers from the assistants:")


def with_references(chat: ChatType, answers: list[str]) -> ChatType:
    """``chat`` with a system message that lists ``answers`` (after any system message it had)."""
    listing = "\n".join(f"{i + 1}. {answer}" for i, answer in enumerate(answers))
    note = f"{REFERENCES_PROMPT}\n{listing}"
    if chat and chat[0].get("role") == "system":
        return [{"role": "system", "content": f"{chat[0]['content']}\n\n{note}"}, *chat[1:]]
    return [{"role": "system", "content": note}, *chat]


class MixtureOfAgentsLLM(AsyncLLM):
    """``proposers_llms`` answer ``rounds`` times (from the second round on with the previous
    answers as references); ``aggregator_llm`` answers with the last round as references."""

    aggregator_llm: LLM
    proposers_llms: list[LLM] = Field(min_length=1)
    rounds: int = Field(default=1, ge=1)

    @property
    def model_name(self) -> str:
        return "moa-" + "-".join([self.aggregator_llm.model_name, *(p.model_name for p in self.proposers_llms)])

    def _all(self) -> list[LLM]:
        return [self.aggregator_llm, *self.proposers_llms]

    def load(self) -> None:
        if self.structured_output is not None:
            self.aggregator_llm.structured_output = self.structured_output
        for llm in self._all():
            llm.load()

    def unload(self) -> None:
        for llm in self._all():
            llm.unload()

    def concurrency(self) -> int:
        return max(1, min(llm.concurrency() for llm in self._all()))

    def supports_structured_output(self) -> bool:
        return self.aggregator_llm.supports_structured_output()

    def share_limits(self, parts: int) -> None:
        for llm in self._all():
            llm.share_limits(parts)

    def signature_fields(self) -> dict[str, Any]:
        def form(llm: LLM) -> dict[str, Any]:
            return {"type": type(llm).__name__, **llm.signature_fields()}

        return {"aggregator_llm": form(self.aggregator_llm), "proposers_llms": [form(p) for p in self.proposers_llms],
                "rounds": self.rounds, "generation_kwargs": self.generation_kwargs,
                "structured_output": self.structured_output}

    @staticmethod
    async def _one(llm: LLM, chat: ChatType, **kwargs: Any) -> GenerateOutput:
        (answer,) = await llm.agenerate_batch([chat], 1, **{**llm.generation_kwargs, **kwargs})
        if isinstance(answer, BaseException):
            raise answer
        texts = answer.get("generations") or []
        if not texts or texts[0] is None:
            raise ValueError(f"{llm.model_name} returned no text")
        return answer

    def component_models(self) -> list[str]:
        """The model names this mixture pays for (aggregator first), each once."""
        names: list[str] = []
        for llm in self._all():
            names.extend(n for n in llm.component_models() if n not in names)
        return names

    async def _mixture(self, chat: ChatType, **kwargs: Any) -> tuple[str, dict[str, list[int]]]:
        """The aggregator's text and, per model, [input tokens, output tokens] of every call."""
        used: dict[str, list[int]] = {}
        answers: list[str] = []
        for round_ in range(self.rounds):
            prompt = chat if round_ == 0 else with_references(chat, answers)
            outputs = await asyncio.gather(*(self._one(p, prompt) for p in self.proposers_llms))
            for llm, output in zip(self.proposers_llms, outputs, strict=True):
                _count(used, llm, output)
            answers = [output["generations"][0] for output in outputs]
        final = await self._one(self.aggregator_llm, with_references(chat, answers), **kwargs)
        _count(used, self.aggregator_llm, final)
        return final["generations"][0], used  # type: ignore[return-value]

    async def agenerate(self, input: ChatType, num_generations: int = 1, **kwargs: Any) -> GenerateOutput:
        outputs = await asyncio.gather(*(self._mixture(input, **kwargs) for _ in range(num_generations)))
        per_model = [[{"model": name, "input_tokens": tokens[0], "output_tokens": tokens[1]}
                      for name, tokens in used.items()] for _, used in outputs]
        return {"generations": [text for text, _ in outputs],  # type: ignore[typeddict-unknown-key]
                "statistics": {"input_tokens": [sum(m["input_tokens"] for m in ms) for ms in per_model],
                               "output_tokens": [sum(m["output_tokens"] for m in ms) for ms in per_model],
                               "models": per_model}}


def _count(used: dict[str, list[int]], llm: LLM, output: GenerateOutput) -> None:
    """Add one call's tokens to ``used``: per model, or the inner mixture's own split."""
    statistics: dict[str, Any] = dict(output.get("statistics") or {})
    inner = statistics.get("models")
    if isinstance(inner, list) and inner and isinstance(inner[0], list):
        for entry in inner[0]:
            tokens = used.setdefault(str(entry["model"]), [0, 0])
            tokens[0] += int(entry.get("input_tokens") or 0)
            tokens[1] += int(entry.get("output_tokens") or 0)
        return
    tokens = used.setdefault(llm.model_name, [0, 0])
    for i, key in enumerate(("input_tokens", "output_tokens")):
        values = statistics.get(key)
        value = values[0] if isinstance(values, (list, tuple)) and values else values
        tokens[i] += int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
