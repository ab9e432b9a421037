"""Scorers: ``ComplexityScorer`` and ``QualityScorer`` (Deita) and
``InstructionBacktranslation`` (self-curation).

``ComplexityScorer`` and ``QualityScorer`` are written from Liu et al., 2023, "What Makes Good
Data for Alignment? A Comprehensive Study of Automatic Data Selection in Instruction Tuning"
(Deita, arXiv:2312.15685): the scorer sees a set of variants together (instructions that evolved
from one another, or responses to one instruction) and scores each, so the scores separate
close variants. ``InstructionBacktranslation`` is written from Li et al., 2023, "Self-Alignment
with Instruction Backtranslation" (arXiv:2308.06259): a model rates, on a 5-point scale, how
well a response answers an instruction as an AI assistant would, and says why.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Optional

from pydantic import field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks._answers import ask_for_json, integer_in, json_answer, require_text
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.templates import check_template, render_template

SCALE = (1, 6)  # Deita's scores run from 1 to 6

COMPLEXITY_TEMPLATE = """\
Below are {{ instructions | length }} instructions. Score how complex each one is, from 1 (trivial: \
one step, no constraints) to 6 (very demanding: many steps, several constraints, specialised \
knowledge or deep reasoning). Compare them with each other, so that a more complex instruction \
gets a higher score than a simpler one.

{% for instruction in instructions %}
[{{ loop.index }}] {{ instruction }}
{% endfor %}

{{ answer_format }}"""

QUALITY_TEMPLATE = """\
Below is an instruction and {{ responses | length }} responses to it. Score the quality of each \
response, from 1 (wrong, unhelpful or off the point) to 6 (correct, complete, clear and as helpful \
as it could be). Compare the responses with each other, so that a better response gets a higher \
score than a worse one.

Instruction:
{{ instruction }}

{% for response in responses %}
[Response {{ loop.index }}] {{ response }}
{% endfor %}

{{ answer_format }}"""

BACKTRANSLATION_TEMPLATE = """\
Rate how well the answer below serves the instruction, as the reply of a good AI assistant would: \
on a scale of 1 to 5, where 1 means it misses the instruction or reads like text copied from \
elsewhere (a blog post, a forum thread), 3 means it is helpful but not written from an \
assistant's point of view, and 5 means it is a focused, complete, expert and well-written \
assistant answer with nothing irrelevant.

Instruction:
{{ instruction }}

Answer:
{{ generation }}

{{ answer_format }}"""


def _score_of(value: Any) -> float | None:
    """A score on Deita's scale as a float, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.match(r"\s*(\d+(?:\.\d+)?)", value)
        value = float(match.group(1)) if match else None
    if isinstance(value, (int, float)) and SCALE[0] <= value <= SCALE[1]:
        return float(value)
    return None


class _ListScorer(Task):
    """Scores each item of a list column in one request; ``scores`` holds one per item.

    Contract (as distilabel's): an item whose score cannot be read is ``None`` in ``scores``,
    the others kept; an answer with no readable score at all fails the row (``UnparsableAnswer``).
    """

    template: Optional[str] = None
    _LIST: ClassVar[str] = ""
    _LABEL: ClassVar[str] = ""  # what each line of the text format starts with: "[1]", "[Response 1]"

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def task_outputs(self) -> list[str]:
        return ["scores"]

    def get_structured_output(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"scores": {"type": "array", "items": {
            "type": "number", "minimum": SCALE[0], "maximum": SCALE[1]}}},
            "required": ["scores"], "additionalProperties": False}

    def _items(self, row: dict[str, Any]) -> list[str]:
        items = row.get(self._LIST)
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError(f"step '{self.name}': column '{self._LIST}' must be a non-empty list, got {items!r}")
        return [require_text(item, self.name, self._LIST) for item in items]

    def _answer_format(self, count: int) -> str:
        if self.uses_structured_output:
            return f"Give the {count} scores in order. " + ask_for_json(self.get_structured_output())
        label = self._LABEL.format(n="<n>")
        return (f"Answer with one line per item, in order ({count} lines), in exactly this format:\n"
                f"{label} Score: <score>")

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        count = len(row.get(self._LIST) or [])
        if self.uses_structured_output:
            raw = json_answer(output, f"step '{self.name}'").get("scores")
            if not isinstance(raw, list):
                raise UnparsableAnswer(f"step '{self.name}': no 'scores' list in the answer", output)
            scores = [_score_of(v) for v in raw[:count]]
        else:
            label = re.escape(self._LABEL).replace(re.escape("{n}"), r"(\d+)")
            found: dict[int, float | None] = {}
            for match in re.finditer(label + r"\s*:?\s*Score\s*:\s*([^\n]*)", output or "", re.I):
                found.setdefault(int(match.group(1)), _score_of(match.group(2)))
            scores = [found.get(n) for n in range(1, count + 1)]
        scores += [None] * (count - len(scores))
        if all(s is None for s in scores):
            raise UnparsableAnswer(f"step '{self.name}': no score could be read for any of the {count} items", output)
        return {"scores": scores}


class ComplexityScorer(_ListScorer):
    """Scores the complexity of each of the ``instructions`` (a list column) from 1 to 6, into
    ``scores``; Deita's complexity scorer (see the module docstring)."""

    _LIST = "instructions"
    _LABEL = "[{n}]"

    @property
    def inputs(self) -> list[str]:
        return ["instructions"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        instructions = self._items(row)
        prompt = render_template(self.template or COMPLEXITY_TEMPLATE, instructions=instructions,
                                 answer_format=self._answer_format(len(instructions)))
        return [{"role": "user", "content": prompt}]


class QualityScorer(_ListScorer):
    """Scores the quality of each of the ``responses`` to ``instruction`` from 1 to 6, into
    ``scores``; Deita's quality scorer (see the module docstring)."""

    _LIST = "responses"
    _LABEL = "[Response {n}]"

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "responses"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        responses = self._items(row)
        prompt = render_template(self.template or QUALITY_TEMPLATE, responses=responses,
                                 instruction=require_text(row.get("instruction"), self.name, "instruction"),
                                 answer_format=self._answer_format(len(responses)))
        return [{"role": "user", "content": prompt}]


class InstructionBacktranslation(Task):
    """Rates ``generation`` as an answer to ``instruction`` on 1-5, into ``score`` with its
    ``reason`` (self-curation from instruction backtranslation, see the module docstring).
    An answer without a readable 1-5 score fails its row (``UnparsableAnswer``)."""

    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "generation"]

    @property
    def task_outputs(self) -> list[str]:
        return ["score", "reason"]

    def get_structured_output(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"reason": {"type": "string"},
                                                 "score": {"type": "integer", "minimum": 1, "maximum": 5}},
                "required": ["reason", "score"], "additionalProperties": False}

    def format_input(self, row: dict[str, Any]) -> ChatType:
        if self.uses_structured_output:
            answer_format = ask_for_json(self.get_structured_output())
        else:
            answer_format = ("First explain your rating briefly, then end with a last line in exactly this format:\n"
                             "Score: <1 to 5>")
        prompt = render_template(self.template or BACKTRANSLATION_TEMPLATE, answer_format=answer_format,
                                 instruction=require_text(row.get("instruction"), self.name, "instruction"),
                                 generation=require_text(row.get("generation"), self.name, "generation"))
        return [{"role": "user", "content": prompt}]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        if self.uses_structured_output:
            answer = json_answer(output, f"step '{self.name}'")
            reason, raw = answer.get("reason"), answer.get("score")
        else:
            found = list(re.finditer(r"^\s*\**Score\**\s*:\s*(.+)$", output or "", re.I | re.M))
            if not found:
                raise UnparsableAnswer(f"step '{self.name}': no 'Score: <1 to 5>' line in the answer", output)
            raw = found[-1].group(1)
            reason = (output or "")[:found[-1].start()].strip() or None
        score = integer_in(raw, 1, 5)
        if score is None:
            raise UnparsableAnswer(f"step '{self.name}': the score {raw!r} is not 1 to 5", output)
        return {"score": score, "reason": reason}
