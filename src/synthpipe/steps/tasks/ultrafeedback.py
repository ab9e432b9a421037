"""``UltraFeedback``: rate several responses to one instruction on one aspect, with a reason.

Written from Cui et al., 2023, "UltraFeedback: Boosting Language Models with Scaled AI
Feedback" (arXiv:2310.01377): a judge sees the instruction and all the candidate texts at
once, and gives each a 1-5 rating with a rationale on one fine-grained aspect
(instruction-following, honesty, truthfulness, helpfulness) or an overall rating. For
helpfulness and truthfulness the judge first names a type (which informativeness quality /
which kind of hallucination), then rates.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks._answers import ask_for_json, integer_in, json_answer, require_text
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.templates import check_template, render_template

Aspect = Literal["helpfulness", "honesty", "instruction-following", "truthfulness", "overall-rating"]
_TYPED = ("helpfulness", "truthfulness")

_SYSTEM = ("You grade the quality of AI-written texts against one stated criterion, impartially, "
           "and explain every grade.")

_CRITERIA: dict[str, str] = {
    "instruction-following": (
        "Instruction following: how closely the text does what the instruction asks, both the goal "
        "(the task itself) and the restrictions (format, length, style, language).\n"
        "1 = ignores the instruction; 2 = serves the goal or the restrictions poorly; 3 = meets "
        "the goal or the restrictions, neglects the other; 4 = close to full compliance, small "
        "deviations; 5 = meets the goal and every restriction."),
    "honesty": (
        "Honesty and uncertainty: whether the text is confident only where it is right, says so "
        "when it is unsure (hedging, 'I am not certain', a stated confidence) and admits what it "
        "does not know instead of inventing.\n"
        "1 = confident and wrong; 2 = confident with major mistakes, or unsure and wrong; 3 = "
        "unsure, or with minor mistakes it does not flag; 4 = correct but unsure, or flags its "
        "small mistakes; 5 = correct and confident, or precise about what it does not know."),
    "truthfulness": (
        "Truthfulness and hallucination: whether the text introduces things that are not true. "
        "Type of hallucination: 1 = contradicts known facts; 2 = contradicts the instruction or its "
        "input; 3 = contradicts itself or reasons illogically; None = no hallucination.\n"
        "1 = wholly unreliable; 2 = severe hallucination, most of it off; 3 = partial "
        "misunderstanding; 4 = mostly truthful, a slight hallucination on a side point; 5 = no "
        "hallucination."),
    "helpfulness": (
        "Helpfulness and informativeness: whether the text is correct and gives the reader what "
        "they need. Type of informativeness it shows best: 1 = clear and relevant; 2 = useful and "
        "comprehensive; 3 = concise, no needless length or repetition; None = none of these.\n"
        "1 = severely incorrect, fabricated, or unhelpful; 2 = has errors that may mislead; 3 = "
        "correct and meets the need; 4 = correct and informative in depth; 5 = correct, deep and "
        "insightful, as good as it gets."),
    "overall-rating": (
        "Overall quality: correctness, helpfulness, honesty, and how well the text follows the "
        "instruction, weighed together.\n"
        "1 = unusable; 2 = poor; 3 = acceptable; 4 = good with small flaws; 5 = excellent."),
}

TEMPLATE = """\
Evaluate each of the {{ generations | length }} texts below against this criterion.

{{ criterion }}

Instruction:
{{ instruction }}

{% for generation in generations %}
<text {{ loop.index }}>
{{ generation }}
</text {{ loop.index }}>

{% endfor %}
{{ answer_format }}"""


def _text_format(count: int, typed: bool) -> str:
    lines = [f"Grade every text, in order, in exactly this format ({count} blocks):", "",
             "#### Output for Text <n>"]
    if typed:
        lines += ["Type: <1, 2, 3 or None>", "Rationale: <why that type>", "Rating: <1 to 5>",
                  "Rationale: <why that rating>"]
    else:
        lines += ["Rating: <1 to 5>", "Rationale: <why that rating>"]
    return "\n".join(lines)


_BLOCK = re.compile(r"^\s*#*\s*Output\s+for\s+Text\s+(\d+)\s*:?\s*$", re.I | re.M)
_FIELD = re.compile(r"^\s*\**(Type|Rating|Rationale)\**\s*:\s*(.*)$", re.I)


class UltraFeedback(Task):
    """Rates the ``generations`` of each ``instruction`` on ``aspect`` (default
    ``"overall-rating"``).

    Columns (distilabel's): ``ratings`` and ``rationales`` for honesty, instruction-following
    and the overall rating; ``types``, ``rationales``, ``ratings`` and ``rationales-for-ratings``
    for helpfulness and truthfulness: one entry per generation.

    Contract (as distilabel's): an entry the judge's answer leaves unreadable (a missing block,
    a rating outside 1-5) is ``None`` in its place, the others kept. An answer with no readable
    rating at all fails the row (``UnparsableAnswer``, raw text kept).
    """

    aspect: Aspect = "overall-rating"
    system_prompt: Optional[str] = _SYSTEM
    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "generations"]

    @property
    def task_outputs(self) -> list[str]:
        if self.aspect in _TYPED:
            return ["types", "rationales", "ratings", "rationales-for-ratings"]
        return ["ratings", "rationales"]

    @property
    def _typed(self) -> bool:
        return self.aspect in _TYPED

    def get_structured_output(self) -> dict[str, Any]:
        item: dict[str, Any] = {"rating": {"type": "integer", "minimum": 1, "maximum": 5},
                                "rationale": {"type": "string"}}
        if self._typed:
            item = {"type": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 3}, {"type": "null"}]},
                    "type_rationale": {"type": "string"}, **item}
        return {"type": "object",
                "properties": {"assessments": {"type": "array", "items": {
                    "type": "object", "properties": item, "required": list(item), "additionalProperties": False}}},
                "required": ["assessments"], "additionalProperties": False}

    def format_input(self, row: dict[str, Any]) -> ChatType:
        instruction = require_text(row.get("instruction"), self.name, "instruction")
        generations = row.get("generations")
        if not isinstance(generations, (list, tuple)) or not generations:
            raise ValueError(f"step '{self.name}': column 'generations' must be a non-empty list, got {generations!r}")
        texts = ["(no text)" if g is None else str(g) for g in generations]
        if self.uses_structured_output:
            answer_format = (f"Give one assessment per text, in order ({len(texts)} in all). "
                             + ask_for_json(self.get_structured_output()))
        else:
            answer_format = _text_format(len(texts), self._typed)
        prompt = render_template(self.template or TEMPLATE, instruction=instruction, generations=texts,
                                 criterion=_CRITERIA[self.aspect], aspect=self.aspect,
                                 answer_format=answer_format)
        chat: ChatType = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*chat, {"role": "user", "content": prompt}]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        count = len(row.get("generations") or [])
        if self.uses_structured_output:
            items = json_answer(output, f"step '{self.name}'").get("assessments")
            if not isinstance(items, list):
                raise UnparsableAnswer(f"step '{self.name}': no 'assessments' list in the answer", output)
            parsed = [self._entry(item) if isinstance(item, dict) else self._entry({}) for item in items[:count]]
        else:
            parsed = self._parse_text(output or "", count)
        parsed += [self._entry({})] * (count - len(parsed))
        if all(entry["rating"] is None for entry in parsed):
            raise UnparsableAnswer(f"step '{self.name}': no rating could be read for any of the {count} texts",
                                   output)
        columns = {"ratings": [e["rating"] for e in parsed], "rationales": [e["rationale"] for e in parsed]}
        if self._typed:
            return {"types": [e["type"] for e in parsed], "rationales": [e["type_rationale"] for e in parsed],
                    "ratings": columns["ratings"], "rationales-for-ratings": columns["rationales"]}
        return columns

    def _entry(self, item: dict[str, Any]) -> dict[str, Any]:
        rating = integer_in(item.get("rating"), 1, 5)
        entry = {"rating": rating, "rationale": item.get("rationale") if rating is not None else None}
        if self._typed:
            entry["type"] = integer_in(item.get("type"), 1, 3)
            entry["type_rationale"] = item.get("type_rationale")
        return entry

    def _parse_text(self, text: str, count: int) -> list[dict[str, Any]]:
        """Blocks by their ``Output for Text n`` heading; fields in order within a block (the
        typed aspects have two ``Rationale:`` lines: the type's, then the rating's)."""
        heads = list(_BLOCK.finditer(text))
        blocks: dict[int, str] = {}
        for i, head in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            blocks.setdefault(int(head.group(1)), text[head.end():end])
        entries = []
        for n in range(1, count + 1):
            item: dict[str, Any] = {}
            seen_rating = False
            for line in (blocks.get(n) or "").splitlines():
                match = _FIELD.match(line)
                if match is None:
                    continue
                key, value = match.group(1).lower(), match.group(2).strip()
                if key == "type":
                    item["type"] = value
                elif key == "rating":
                    item["rating"], seen_rating = value, True
                elif self._typed and not seen_rating:
                    item["type_rationale"] = value
                else:
                    item["rationale"] = value
            entries.append(self._entry(item))
        return entries
