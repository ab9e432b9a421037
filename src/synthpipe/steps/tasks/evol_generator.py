"""``EvolInstructGenerator`` / ``EvolComplexityGenerator``: Evol-Instruct with no seed rows,
as the first step of a pipeline.

Design: a ``GeneratorStep`` that holds an ``llm``. Each batch is asked in one event loop
(``asyncio.run``) through the response cache, so the LLM's concurrency is used within a
batch; a request that fails stops the step with its error (a generator has no input row to
fail on its own). A run that cannot find ``num_instructions`` instructions within the length
bounds after ``max_attempts_factor`` times as many requests stops with a clear error.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from pydantic import Field

from synthpipe.models.base import LLM
from synthpipe.steps.base import GeneratorStep, GeneratorStepOutput
from synthpipe.steps.tasks.evol_instruct import COMPLEXITY_TEMPLATES, MUTATION_TEMPLATES, clean_evolution

FRESH_START = ("Write one new question or request that a user could ask an AI assistant, using one or more "
               "of these words: <PROMPT>. Answer with the request only.\n\n#Created prompt#:\n")
_SEED_WORDS = ("river", "budget", "algorithm", "recipe", "poem", "history", "planet", "contract", "garden",
               "startup", "protein", "bridge", "melody", "tax", "vaccine", "chess", "satellite", "novel",
               "spreadsheet", "volcano", "language", "museum", "battery", "ethics", "marathon", "bakery")


class EvolInstructGenerator(GeneratorStep):
    """``num_instructions`` instructions grown from nothing: a fresh start from random words,
    then random evolutions of instructions already made; an instruction is kept when its
    length lies in ``[min_length, max_length]`` characters. Writes ``instruction`` (and
    ``answer`` with ``generate_answers``) and ``model_name``.

    Paper: "WizardLM: Empowering Large Language Models to Follow Complex Instructions", Xu et
    al., 2023, arXiv:2304.12244.
    """

    llm: LLM
    num_instructions: int = Field(ge=1)
    generate_answers: bool = False
    mutation_templates: dict[str, str] = Field(
        default_factory=lambda: {"FRESH_START": FRESH_START, **MUTATION_TEMPLATES})
    min_length: int = Field(default=512, ge=0)
    max_length: int = Field(default=1024, ge=1)
    seed: int = 42
    max_attempts_factor: int = Field(default=10, ge=1)
    use_cache: bool = True

    @property
    def outputs(self) -> list[str]:
        return ["instruction", *(["answer"] if self.generate_answers else []), "model_name"]

    def load(self) -> None:
        self.llm.load()

    def unload(self) -> None:
        self.llm.unload()

    def _ask(self, chats: list[list[dict[str, Any]]], positions: list[str]) -> list[str]:
        from synthpipe.models.cache import generate_cached

        def accept(i: int, answer: Any) -> str:
            texts = answer.get("generations") or []
            if not texts or texts[0] is None:
                raise ValueError(f"{self.llm.model_name} returned no text")
            return texts[0]

        results = asyncio.run(generate_cached(self.llm, chats, 1, accept, positions=positions,  # type: ignore
                                              read=self.use_cache, **dict(self.llm.generation_kwargs)))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        rng = random.Random(self.seed)
        pool: list[str] = []
        kept = 0
        attempt = 0
        budget = self.num_instructions * self.max_attempts_factor
        names = sorted(self.mutation_templates)
        while kept < self.num_instructions:
            if attempt >= budget:
                raise RuntimeError(
                    f"step '{self.name}': {kept} of {self.num_instructions} instructions after {attempt} requests; "
                    f"the model's instructions fall outside [{self.min_length}, {self.max_length}] characters")
            want = min(self.batch_size, self.num_instructions - kept)
            chats, positions = [], []
            for _ in range(want):
                name = rng.choice(names)
                if name == "FRESH_START" or not pool:
                    words = ", ".join(rng.sample(_SEED_WORDS, 3))
                    text = self.mutation_templates.get("FRESH_START", FRESH_START).replace("<PROMPT>", words)
                else:
                    text = self.mutation_templates[name].replace("<PROMPT>", rng.choice(pool))
                chats.append([{"role": "user", "content": text}])
                positions.append(f"evol-generator:{attempt}")
                attempt += 1
            batch = []
            for text in self._ask(chats, positions):
                instruction = clean_evolution(text)
                if self.min_length <= len(instruction) <= self.max_length and kept < self.num_instructions:
                    pool.append(instruction)
                    kept += 1
                    batch.append({"instruction": instruction, "model_name": self.llm.model_name})
            if self.generate_answers and batch:
                answers = self._ask([[{"role": "user", "content": r["instruction"]}] for r in batch],
                                    [f"evol-generator-answer:{kept - len(batch) + j}" for j in range(len(batch))])
                for row, answer in zip(batch, answers, strict=True):
                    row["answer"] = answer
            first = kept - len(batch)  # rows before offset were stored by an earlier run
            batch = batch[max(0, offset - first):]
            if batch or kept >= self.num_instructions:
                yield batch, kept >= self.num_instructions


class EvolComplexityGenerator(EvolInstructGenerator):
    """``EvolInstructGenerator`` with the in-depth evolutions only (no breadth).

    Paper: "What Makes Good Data for Alignment?", Liu et al., 2023, arXiv:2312.15685.
    """

    mutation_templates: dict[str, str] = Field(
        default_factory=lambda: {"FRESH_START": FRESH_START, **COMPLEXITY_TEMPLATES})


