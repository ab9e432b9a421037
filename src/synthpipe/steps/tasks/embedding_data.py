"""Synthetic data for text embeddings: brainstormed tasks, then examples for each task.

Paper: "Improving Text Embeddings with Large Language Models", Liang Wang, Nan Yang, Xiaolong
Huang, Linjun Yang, Rangan Majumder, Furu Wei, 2024, arXiv:2401.00368. A first prompt
brainstorms tasks of a category; a second writes one example for a task, with the knobs the
paper varies (query type and length, clarity, difficulty, words, language) drawn at random
where not fixed. Every answer is a JSON object, asked for as structured output where the
backend supports it and as a JSON format in the prompt otherwise; an answer without its keys
fails its row (``UnparsableAnswer`` with the raw text), never ``None`` columns.

The random choices are seeded per row (``seed`` and the task text), so a resumed or retried
run sends the same prompt. A user ``template`` is rendered with the same variables; the
answer-format sentence is added after it either way.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal, Optional

from pydantic import field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.generator_task import GeneratorTask
from synthpipe.steps.tasks.json_answers import loads_answer, object_schema, string_fields
from synthpipe.steps.tasks.templates import check_template, render_template

Category = Literal["text-retrieval", "text-matching-short", "text-matching-long", "text-classification"]

BRAINSTORM_TEMPLATES: dict[str, str] = {
    "text-retrieval": (
        "We are collecting training data for a text embedding model. Think of many different "
        "text retrieval tasks that would be useful in practice: in each, a user types a search query and "
        "expects relevant documents back. Example: 'Given a medical symptom, find articles describing possible "
        "causes.' Cover varied domains, query styles and document kinds. Describe each task in one sentence "
        "of at most 25 words, saying what the query is and what should be retrieved."),
    "text-matching-short": (
        "We are collecting training data for a text embedding model. Think of many different tasks that pair "
        "two short texts which mean the same thing or answer one another, for example 'Given a product "
        "question, find a paraphrase of it.' Both sides should be short (a sentence or a phrase). Describe "
        "each task in one sentence of at most 25 words."),
    "text-matching-long": (
        "We are collecting training data for a text embedding model. Think of many different tasks that pair "
        "two long texts (paragraphs or documents) that correspond, for example 'Given a research abstract, "
        "find the press release written about it.' Describe each task in one sentence of at most 25 words."),
    "text-classification": (
        "We are collecting training data for a text embedding model. Think of many different text "
        "classification tasks, for example 'Decide whether a restaurant review is positive, negative or "
        "mixed.' Vary the domains and the kinds of labels. Describe each task in one sentence of at most "
        "25 words."),
}

TEXT_RETRIEVAL = (
    "You write one training example for this retrieval task: {{ task }}\n\n"
    "Write a search query and two documents, all in {{ language }}:\n"
    "- user_query: a {{ query_type }} query of {{ query_length }}, {{ clarity }}, that needs {{ difficulty }} "
    "level knowledge to understand;\n"
    "- positive_document: a document of about {{ num_words }} words that fully answers the query;\n"
    "- hard_negative_document: a document on a close topic that looks relevant but does not answer it.\n"
    "The query must not copy phrases from the documents.")
SHORT_TEXT_MATCHING = (
    "You write one training example for this text matching task: {{ task }}\n\n"
    "Write, in {{ language }}, a short input text ('input') and a short text that matches it "
    "('positive_document'). Keep both brief and vary their wording.")
LONG_TEXT_MATCHING = (
    "You write one training example for this text matching task: {{ task }}\n\n"
    "Write, in {{ language }}, a long input text ('input', a paragraph or more) and a long text that matches it "
    "('positive_document'). They should share meaning, not wording.")
TEXT_CLASSIFICATION = (
    "You write one training example for this classification task: {{ task }}\n\n"
    "Write, in {{ language }}, a text to classify ('input_text'), {{ clarity }} and at {{ difficulty }} level, "
    "its correct label ('label') and a label that is plausible but wrong ('misleading_label').")
MONOLINGUAL_TRIPLET = (
    "You write one training example for judging semantic similarity in {{ language }}.\n\n"
    "Write three {{ unit }}s: S1; S2, which a reader would rate {{ high_score }} out of 5 for similarity to S1; "
    "and S3, rated {{ low_score }} out of 5 against S1. Keep the vocabulary at {{ difficulty }} level, and make "
    "S2 and S3 differ from S1 in wording, not only in meaning.")
BITEXT_RETRIEVAL = (
    "You write one training example for matching translations.\n\n"
    "Write S1, a {{ unit }} in {{ source_language }}; S2, its translation into {{ target_language }}, rated "
    "{{ high_score }} out of 5 for faithfulness; and S3, a {{ target_language }} {{ unit }} that looks like a "
    "translation of S1 but is rated only {{ low_score }} out of 5. Keep the vocabulary at {{ difficulty }} level.")

QUERY_TYPE = ["extremely long-tail", "long-tail", "common"]
QUERY_LENGTH = ["less than 5 words", "5 to 15 words", "at least 10 words"]
DIFFICULTY = ["high school", "college", "PhD"]
CLARITY = ["clear", "understandable with some effort", "ambiguous"]
NUM_WORDS = [50, 100, 200, 300, 400, 500]
UNITS = ["sentence", "phrase", "passage"]
DIFFICULTIES = ["elementary school", "high school", "college"]
HIGH_SCORES = ["4", "4.5", "5"]
LOW_SCORES = ["2.5", "3", "3.5"]


def _json_format(keys: list[str]) -> str:
    return "Answer with a JSON object with the string fields " + ", ".join(f'"{k}"' for k in keys) + ", nothing else."


class _JSONKeys:
    """Shared by the example writers: the answer is a JSON object of string fields ``keys``."""

    keys: ClassVar[list[str]] = []
    default_template: ClassVar[str] = ""

    @property
    def task_outputs(self) -> list[str]:
        return list(self.keys)

    def get_structured_output(self) -> dict[str, Any]:
        return object_schema(self.keys)

    def _prompt(self, values: dict[str, Any]) -> ChatType:
        body = render_template(self.template or self.default_template, **values)  # type: ignore[attr-defined]
        return [{"role": "user", "content": f"{body}\n\n{_json_format(self.keys)}"}]

    def _parse(self, output: str | None) -> dict[str, Any]:
        value = loads_answer(output, dict, f"a JSON object with {', '.join(self.keys)}")
        return string_fields(value, self.keys, output or "", self.name)  # type: ignore[attr-defined]


class _EmbeddingDataGeneration(_JSONKeys, Task):
    """Writes one example per row of the ``task`` column."""

    template: Optional[str] = None
    seed: int = 42

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    language: str = "English"

    @property
    def inputs(self) -> list[str]:
        return ["task"]

    def _values(self, rng: random.Random) -> dict[str, Any]:
        return {}

    def format_input(self, row: dict[str, Any]) -> ChatType:
        task = row.get("task")
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"step '{self.name}': column 'task' must be a non-empty string, got {task!r}")
        rng = random.Random(f"{self.seed}:{task}")
        return self._prompt({"task": task, "language": self.language, **self._values(rng)})

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        return self._parse(output)


class GenerateTextRetrievalData(_EmbeddingDataGeneration):
    """A query, a document that answers it and a hard negative, for the row's ``task``
    (Wang et al., 2024, arXiv:2401.00368). Writes ``user_query``, ``positive_document``,
    ``hard_negative_document``."""

    keys: ClassVar[list[str]] = ["user_query", "positive_document", "hard_negative_document"]
    default_template: ClassVar[str] = TEXT_RETRIEVAL
    query_type: Optional[Literal["extremely long-tail", "long-tail", "common"]] = None
    query_length: Optional[Literal["less than 5 words", "5 to 15 words", "at least 10 words"]] = None
    difficulty: Optional[Literal["high school", "college", "PhD"]] = None
    clarity: Optional[Literal["clear", "understandable with some effort", "ambiguous"]] = None
    num_words: Optional[Literal[50, 100, 200, 300, 400, 500]] = None

    def _values(self, rng: random.Random) -> dict[str, Any]:
        return {"query_type": self.query_type or rng.choice(QUERY_TYPE),
                "query_length": self.query_length or rng.choice(QUERY_LENGTH),
                "difficulty": self.difficulty or rng.choice(DIFFICULTY),
                "clarity": self.clarity or rng.choice(CLARITY),
                "num_words": self.num_words or rng.choice(NUM_WORDS)}


class GenerateShortTextMatchingData(_EmbeddingDataGeneration):
    """Two short texts that match, for the row's ``task`` (Wang et al., 2024,
    arXiv:2401.00368). Writes ``input``, ``positive_document``."""

    keys: ClassVar[list[str]] = ["input", "positive_document"]
    default_template: ClassVar[str] = SHORT_TEXT_MATCHING


class GenerateLongTextMatchingData(_EmbeddingDataGeneration):
    """Two long texts that match, for the row's ``task`` (Wang et al., 2024,
    arXiv:2401.00368). Writes ``input``, ``positive_document``."""

    keys: ClassVar[list[str]] = ["input", "positive_document"]
    default_template: ClassVar[str] = LONG_TEXT_MATCHING


class GenerateTextClassificationData(_EmbeddingDataGeneration):
    """A text with its label and a misleading label, for the row's ``task`` (Wang et al.,
    2024, arXiv:2401.00368). Writes ``input_text``, ``label``, ``misleading_label``."""

    keys: ClassVar[list[str]] = ["input_text", "label", "misleading_label"]
    default_template: ClassVar[str] = TEXT_CLASSIFICATION
    difficulty: Optional[Literal["high school", "college", "PhD"]] = None
    clarity: Optional[Literal["clear", "understandable with some effort", "ambiguous"]] = None

    def _values(self, rng: random.Random) -> dict[str, Any]:
        return {"difficulty": self.difficulty or rng.choice(DIFFICULTY),
                "clarity": self.clarity or rng.choice(CLARITY)}


class _EmbeddingDataGenerator(_JSONKeys, GeneratorTask):
    """A generator: ``num_generations`` examples from one prompt, no input rows."""

    template: Optional[str] = None
    seed: int = 42

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    unit: Optional[Literal["sentence", "phrase", "passage"]] = None
    difficulty: Optional[Literal["elementary school", "high school", "college"]] = None
    high_score: Optional[Literal["4", "4.5", "5"]] = None
    low_score: Optional[Literal["2.5", "3", "3.5"]] = None

    def _values(self) -> dict[str, Any]:
        rng = random.Random(self.seed)
        return {"unit": self.unit or rng.choice(UNITS), "difficulty": self.difficulty or rng.choice(DIFFICULTIES),
                "high_score": self.high_score or rng.choice(HIGH_SCORES),
                "low_score": self.low_score or rng.choice(LOW_SCORES)}

    def prompts(self) -> list[ChatType]:
        return [self._prompt(self._values())]

    def format_output(self, output: str | None) -> list[dict[str, Any]]:
        return [self._parse(output)]


class MonolingualTripletGenerator(_EmbeddingDataGenerator):
    """Three texts in one language, S2 close to S1 and S3 further (Wang et al., 2024,
    arXiv:2401.00368). A generator; writes ``S1``, ``S2``, ``S3``."""

    keys: ClassVar[list[str]] = ["S1", "S2", "S3"]
    default_template: ClassVar[str] = MONOLINGUAL_TRIPLET
    language: str = "English"

    def _values(self) -> dict[str, Any]:
        return {**super()._values(), "language": self.language}


class BitextRetrievalGenerator(_EmbeddingDataGenerator):
    """A text, a faithful translation and a poor one (Wang et al., 2024, arXiv:2401.00368).
    A generator; writes ``S1``, ``S2``, ``S3``."""

    keys: ClassVar[list[str]] = ["S1", "S2", "S3"]
    default_template: ClassVar[str] = BITEXT_RETRIEVAL
    source_language: str = "English"
    target_language: str = "French"

    def _values(self) -> dict[str, Any]:
        return {**super()._values(), "source_language": self.source_language,
                "target_language": self.target_language}


class EmbeddingTaskGenerator(GeneratorTask):
    """Brainstorms embedding tasks of a ``category`` (Wang et al., 2024, arXiv:2401.00368).

    A generator: each of ``num_generations`` answers is a list of task descriptions, written
    as one row with the list in ``tasks``, or with ``flatten_tasks`` one row per task in
    ``task`` (what the ``Generate*Data`` tasks read)."""

    category: Category
    flatten_tasks: bool = False
    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def task_outputs(self) -> list[str]:
        return ["task" if self.flatten_tasks else "tasks"]

    def get_structured_output(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"tasks": {"type": "array", "items": {"type": "string"},
                                                           "minItems": 1}},
                "required": ["tasks"], "additionalProperties": False}

    def prompts(self) -> list[ChatType]:
        body = render_template(self.template or BRAINSTORM_TEMPLATES[self.category], category=self.category)
        if self.uses_structured_output:
            fmt = 'Answer with a JSON object {"tasks": [...]} holding the descriptions as strings.'
        else:
            fmt = "Answer with a JSON list of strings, one description each, nothing else."
        return [[{"role": "user", "content": f"{body}\n\n{fmt}"}]]

    def format_output(self, output: str | None) -> list[dict[str, Any]]:
        if self.uses_structured_output:
            tasks = loads_answer(output, dict, 'a JSON object {"tasks": [...]}').get("tasks")
        else:
            tasks = loads_answer(output, list, "a JSON list of task descriptions")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
            raise UnparsableAnswer(f"step '{self.name}': expected a non-empty list of task descriptions", output)
        if self.flatten_tasks:
            return [{"task": task} for task in tasks]
        return [{"tasks": tasks}]
