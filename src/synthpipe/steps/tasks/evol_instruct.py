"""Evol-Instruct: an instruction rewritten several times, each time by a randomly drawn
"evolution" (add a constraint, go deeper, be more concrete, need more reasoning, branch out),
and optionally answered; Evol-Quality does the same to a response. ``EvolComplexity`` is
Evol-Instruct without the breadth evolution (the in-depth ones only), as used by Deita.

Each evolution of a row is its own request (cached on its own), drawn by a generator seeded
with ``seed`` and the row's position, so a resumed run draws the same evolutions.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from pydantic import Field

from synthpipe.models.base import ChatType, GenerateOutput
from synthpipe.models.cache import generate_cached
from synthpipe.steps.base import RowFailure, StepInput, StepResult
from synthpipe.steps.tasks.base import METADATA_COLUMN, IncompleteAnswer, Task
from synthpipe.worker_context import current_row_start

_REWRITE = ("I want you to act as a prompt rewriter. Rewrite the prompt below into a harder version that a "
            "capable AI model still understands and a human could answer. Keep any table, code or input "
            "it contains. Make the rewrite only 10 to 20 words longer, and do not mention that it is "
            "rewritten. {how}\n\n#Original prompt#:\n<PROMPT>\n\n#Rewritten prompt#:\n")

MUTATION_TEMPLATES: dict[str, str] = {
    "CONSTRAINTS": _REWRITE.format(how="Add exactly one more constraint or requirement to it."),
    "DEEPENING": _REWRITE.format(how="If it touches a question or an issue, make it ask about it in more "
                                     "depth and breadth."),
    "CONCRETIZING": _REWRITE.format(how="Replace its general concepts with more specific ones."),
    "INCREASED_REASONING_STEPS": _REWRITE.format(how="If it can be solved in a few simple steps, rewrite it "
                                                     "so that it explicitly needs several steps of reasoning."),
    "BREADTH": ("I want you to act as a prompt creator. Taking the prompt below as inspiration, write a "
                "brand-new prompt in the same domain that is rarer and about a different topic, of a "
                "similar length and difficulty, that a human could answer.\n\n#Given prompt#:\n<PROMPT>\n\n"
                "#Created prompt#:\n"),
}
COMPLEXITY_TEMPLATES = {k: v for k, v in MUTATION_TEMPLATES.items() if k != "BREADTH"}

_IMPROVE = ("I want you to act as a response rewriter. Given a prompt and its response, rewrite the "
            "response into a better version. {how} Answer only with the rewritten response, without "
            "mentioning that it is rewritten.\n\n#Given prompt#:\n<PROMPT>\n\n#Given response#:\n<RESPONSE>\n\n"
            "#Rewritten response#:\n")

QUALITY_TEMPLATES: dict[str, str] = {
    "HELPFULNESS": _IMPROVE.format(how="Make it more helpful to the user."),
    "RELEVANCE": _IMPROVE.format(how="Make it more relevant to the prompt, dropping what does not serve it."),
    "DEEPENING": _IMPROVE.format(how="Give it more insight and depth."),
    "CREATIVITY": _IMPROVE.format(how="Make it more creative and engaging."),
    "DETAILS": _IMPROVE.format(how="Add useful details and examples."),
}

_PREFIXES = ("#Rewritten prompt#:", "#Created prompt#:", "#Rewritten response#:", "Rewritten prompt:",
             "Created prompt:", "Rewritten response:")


def clean_evolution(text: str | None) -> str:
    """The rewritten text alone (models sometimes repeat the heading they were given)."""
    text = (text or "").strip()
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text


async def ask_each(task: Task, chats: list[ChatType], positions: list[Any]) -> list[Any]:
    """One generation per chat (text, or the exception that stopped it), through the response
    cache; ``positions`` tell the requests of one row apart."""

    def accept(i: int, answer: GenerateOutput) -> tuple[str, dict[str, Any]]:
        texts = list(answer.get("generations") or [])
        if len(texts) != 1 or texts[0] is None:
            raise IncompleteAnswer(f"{task.llm.model_name} returned no text")
        return texts[0], answer.get("statistics") or {}

    return await generate_cached(task.llm, chats, 1, accept, positions=positions, read=task.use_cache,
                                 **dict(task.llm.generation_kwargs))


class _EvolBase(Task):
    """Shared loop: ``num_evolutions`` rounds over the batch's living rows, one request each."""

    num_evolutions: int = Field(default=1, ge=1)
    store_evolutions: bool = False
    mutation_templates: dict[str, str] = Field(default_factory=lambda: dict(MUTATION_TEMPLATES))
    seed: int = 42

    subject: ClassVar[str] = "instruction"  # the column evolved

    def _prompt(self, mutation: str, current: str, row: dict[str, Any]) -> ChatType:
        return [{"role": "user", "content": self.mutation_templates[mutation].replace("<PROMPT>", current)}]

    def format_input(self, row: dict[str, Any]) -> ChatType:  # the first evolution's prompt, for add_raw_input
        return self._prompt(sorted(self.mutation_templates)[0], str(row[self.subject]), row)

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _finish(self, row: dict[str, Any], evolutions: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    async def _after(self, rows: list[dict[str, Any]], out: dict[int, dict[str, Any]],
                     failures: list[RowFailure], start: int | None) -> None:
        """Extra work on the finished rows (answers)."""

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        start = current_row_start()
        failures: list[RowFailure] = []
        current: dict[int, str] = {}
        evolutions: dict[int, list[str]] = {}
        stats: dict[int, dict[str, int]] = {}
        rngs: dict[int, random.Random] = {}
        last: dict[int, tuple[ChatType, str]] = {}  # each row's last prompt and raw answer, for the metadata
        for index, row in enumerate(inputs):
            value = row.get(self.subject)
            if not isinstance(value, str) or not value.strip():
                failures.append(RowFailure(index, ValueError(f"step '{self.name}': column '{self.subject}' is empty")))
                continue
            current[index], evolutions[index], stats[index] = value, [], {"input_tokens": 0, "output_tokens": 0}
            rngs[index] = random.Random(f"{self.seed}:{start + index if start is not None else index}")
        names = sorted(self.mutation_templates)
        for round_ in range(self.num_evolutions):
            living = sorted(current)
            chats = [self._prompt(rngs[i].choice(names), current[i], inputs[i]) for i in living]
            positions = [f"{(start or 0) + i}:evolution{round_}" for i in living]
            for i, chat, result in zip(living, chats, await ask_each(self, chats, positions), strict=True):
                if isinstance(result, BaseException):
                    failures.append(RowFailure(i, result))
                    del current[i]
                    continue
                text, statistics = result
                last[i] = (chat, text)
                current[i] = clean_evolution(text)
                evolutions[i].append(current[i])
                for key in stats[i]:
                    stats[i][key] += sum(statistics.get(key) or [0])
        out: dict[int, dict[str, Any]] = {}
        for i in sorted(current):
            meta = dict(inputs[i].get(METADATA_COLUMN) or {})
            meta[f"statistics_{self.name}"] = {k: [v] for k, v in stats[i].items()}
            if self.add_raw_input:
                meta[f"raw_input_{self.name}"] = last[i][0]
            if self.add_raw_output:
                meta[f"raw_output_{self.name}"] = last[i][1]
            out[i] = {**inputs[i], **self._finish(inputs[i], evolutions[i]), "model_name": self.llm.model_name,
                      METADATA_COLUMN: meta}
        await self._after(list(inputs), out, failures, start)
        order = sorted(out)
        return StepResult([out[i] for i in order], sorted(failures, key=lambda f: f.index), order)


class EvolInstruct(_EvolBase):
    """Evolves the ``instruction`` column ``num_evolutions`` times. Writes ``evolved_instruction``
    (the last), or ``evolved_instructions`` (every one, the original first with
    ``include_original_instruction``) when ``store_evolutions``; with ``generate_answers``
    also ``answer`` / ``answers``.

    Paper: "WizardLM: Empowering Large Language Models to Follow Complex Instructions", Xu,
    Sun, Zheng, Geng, Zhao, Feng, Tao, Jiang, 2023, arXiv:2304.12244.
    """

    generate_answers: bool = False
    include_original_instruction: bool = False

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def task_outputs(self) -> list[str]:
        evolved = ["evolved_instructions"] if self.store_evolutions else ["evolved_instruction"]
        if self.generate_answers:
            evolved.append("answers" if self.store_evolutions else "answer")
        return evolved

    def _finish(self, row: dict[str, Any], evolutions: list[str]) -> dict[str, Any]:
        if self.store_evolutions:
            return {"evolved_instructions": ([row["instruction"]] if self.include_original_instruction else [])
                    + evolutions}
        return {"evolved_instruction": evolutions[-1]}

    async def _after(self, rows: list[dict[str, Any]], out: dict[int, dict[str, Any]],
                     failures: list[RowFailure], start: int | None) -> None:
        if not self.generate_answers:
            return
        asked: list[tuple[int, int]] = []
        chats: list[ChatType] = []
        for i, row in out.items():
            questions = row["evolved_instructions"] if self.store_evolutions else [row["evolved_instruction"]]
            for k, question in enumerate(questions):
                asked.append((i, k))
                chats.append([{"role": "user", "content": question}])
        results = await ask_each(self, chats, [f"{(start or 0) + i}:answer{k}" for i, k in asked])
        answers: dict[int, list[str]] = {}
        for (i, _), result in zip(asked, results, strict=True):
            if isinstance(result, BaseException):
                if i in out:
                    failures.append(RowFailure(i, result))
                    del out[i]
            elif i in out:
                answers.setdefault(i, []).append(result[0])
        for i in list(out):
            if self.store_evolutions:
                out[i]["answers"] = answers[i]
            else:
                out[i]["answer"] = answers[i][0]


class EvolComplexity(EvolInstruct):
    """Evol-Instruct with the in-depth evolutions only (no breadth), as Deita scores complexity.

    Paper: "What Makes Good Data for Alignment? A Comprehensive Study of Automatic Data
    Selection in Instruction Tuning", Liu, Zeng, He, Jiang, He, 2023, arXiv:2312.15685.
    """

    mutation_templates: dict[str, str] = Field(default_factory=lambda: dict(COMPLEXITY_TEMPLATES))


class EvolQuality(_EvolBase):
    """Evolves the ``response`` to the ``instruction`` ``num_evolutions`` times (more helpful,
    relevant, deep, creative, detailed). Writes ``evolved_response``, or ``evolved_responses``
    (the original first with ``include_original_response``) when ``store_evolutions``.

    Paper: Deita, "What Makes Good Data for Alignment?", Liu et al., 2023, arXiv:2312.15685.
    """

    mutation_templates: dict[str, str] = Field(default_factory=lambda: dict(QUALITY_TEMPLATES))
    include_original_response: bool = False
    subject: ClassVar[str] = "response"

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "response"]

    @property
    def task_outputs(self) -> list[str]:
        return ["evolved_responses"] if self.store_evolutions else ["evolved_response"]

    def _prompt(self, mutation: str, current: str, row: dict[str, Any]) -> ChatType:
        text = self.mutation_templates[mutation].replace("<PROMPT>", str(row["instruction"]))
        return [{"role": "user", "content": text.replace("<RESPONSE>", current)}]

    def _finish(self, row: dict[str, Any], evolutions: list[str]) -> dict[str, Any]:
        if self.store_evolutions:
            return {"evolved_responses": ([row["response"]] if self.include_original_response else [])
                    + evolutions}
        return {"evolved_response": evolutions[-1]}


