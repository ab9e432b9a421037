"""``GenerateSentencePair``: a positive (and a negative) sentence for an anchor, to train or
fine-tune embedding models.

Written from Wang et al., 2024, "Improving Text Embeddings with Large Language Models"
(arXiv:2401.00368): an LLM writes, for a given text, a matching text (paraphrase, similar
text, query or answer) and, for triplets, a non-matching one, optionally a hard negative that
looks close but does not match.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks._answers import ask_for_json, json_answer, require_text
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.templates import check_template, render_template

GenerationAction = Literal["paraphrase", "semantically-similar", "query", "answer"]

_POSITIVE = {
    "paraphrase": "a paraphrase of the anchor: the same meaning in different words",
    "semantically-similar": "a sentence about the same thing as the anchor, close in meaning but not a rewording",
    "query": "a search query or question that the anchor answers",
    "answer": "an answer to the anchor (which is a question or a query)",
}
_NEGATIVE = {
    "paraphrase": "a sentence that is not a paraphrase of the anchor",
    "semantically-similar": "a sentence whose meaning differs from the anchor's",
    "query": "a query or question that the anchor does not answer",
    "answer": "a text that does not answer the anchor",
}
_HARD = ("make the negative a hard one: on the same topic and close in wording to the anchor, "
         "so that only its meaning tells it apart")

TEMPLATE = """\
You write training data for a sentence-embedding model. Given the anchor below, write \
{{ positive_kind }} (the positive){% if triplet %}, and {{ negative_kind }} (the negative){% if hard_negative %}; \
{{ hard }}{% endif %}{% endif %}. Keep them about as long as the anchor.
{% if context %}

Context (what the data is for): {{ context }}
{% endif %}

Anchor:
{{ anchor }}

{{ answer_format }}"""

_SECTION = re.compile(r"^\s*#*\s*\**(Positive|Negative)\**\s*:?\s*\**\s*$", re.I | re.M)
_INLINE = re.compile(r"^\s*\**(Positive|Negative)\**\s*:\s*(\S.*)$", re.I | re.M)


class GenerateSentencePair(Task):
    """For each ``anchor``, writes ``positive`` (and ``negative`` when ``triplet``) by
    ``action``: paraphrase, semantically-similar, query or answer; ``hard_negative`` asks for a
    negative close to the anchor; ``context`` says what the data is for. An answer without
    the sentences asked for fails its row (``UnparsableAnswer``)."""

    triplet: bool = False
    action: GenerationAction
    hard_negative: bool = False
    context: str = ""
    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def inputs(self) -> list[str]:
        return ["anchor"]

    @property
    def task_outputs(self) -> list[str]:
        return ["positive", "negative"] if self.triplet else ["positive"]

    def get_structured_output(self) -> dict[str, Any]:
        fields = self.task_outputs
        return {"type": "object", "properties": {f: {"type": "string"} for f in fields}, "required": fields,
                "additionalProperties": False}

    def format_input(self, row: dict[str, Any]) -> ChatType:
        if self.uses_structured_output:
            answer_format = ask_for_json(self.get_structured_output())
        else:
            answer_format = "Answer in exactly this format:\n## Positive\n<the positive>"
            if self.triplet:
                answer_format += "\n## Negative\n<the negative>"
        prompt = render_template(self.template or TEMPLATE, anchor=require_text(row.get("anchor"), self.name, "anchor"),
                                 positive_kind=_POSITIVE[self.action], negative_kind=_NEGATIVE[self.action],
                                 triplet=self.triplet, hard_negative=self.hard_negative, hard=_HARD,
                                 context=self.context, action=self.action, answer_format=answer_format)
        return [{"role": "user", "content": prompt}]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        if self.uses_structured_output:
            answer = json_answer(output, f"step '{self.name}'")
            found = {k: answer.get(k) for k in self.task_outputs}
        else:
            text = output or ""
            found = {}
            heads = list(_SECTION.finditer(text))
            for i, head in enumerate(heads):
                end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
                found.setdefault(head.group(1).lower(), text[head.end():end].strip())
            for match in _INLINE.finditer(text):
                found.setdefault(match.group(1).lower(), match.group(2).strip())
        missing = [k for k in self.task_outputs if not isinstance(found.get(k), str) or not found[k].strip()]
        if missing:
            raise UnparsableAnswer(f"step '{self.name}': no {' or '.join(missing)} sentence in the answer", output)
        return {k: found[k].strip() for k in self.task_outputs}
