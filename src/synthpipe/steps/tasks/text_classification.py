"""``TextClassification``: label a text, one label or several, optionally from a fixed set.

Written from Gilardi, Alizadeh and Kubli, 2023, "ChatGPT Outperforms Crowd-Workers for
Text-Annotation Tasks" (arXiv:2303.15056): a zero-shot LLM annotator given the task context,
the label set with what each label means, and a few annotated examples. The answer is a JSON
object ``{"labels": [...]}`` (structured output), or a ``Labels: a, b`` line in text mode.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union

from pydantic import Field, field_validator, model_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks._answers import ask_for_json, json_answer, require_text
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.templates import check_template, render_template

_SYSTEM = ("You annotate texts with classification labels. You read the text, decide which labels "
           "describe it, and answer with those labels only.")

TEMPLATE = """\
{{ context }}

{% if available_labels %}
Choose {{ "one label" if n == 1 else "up to " ~ n ~ " labels" }} from this list only:
{% for label, meaning in available_labels.items() %}
- {{ label }}{% if meaning %}: {{ meaning }}{% endif %}

{% endfor %}
{% else %}
Give {{ "one label" if n == 1 else "up to " ~ n ~ " labels" }}.
{% endif %}
{% if default_label %}
If no label fits, answer with {{ default_label }}.
{% endif %}
{% if examples %}

Examples:
{% for example in examples %}
{{ example }}

{% endfor %}
{% endif %}

{{ query_title }}:
{{ text }}

{{ answer_format }}"""

_LABELS_LINE = re.compile(r"^\s*\**Labels?\**\s*:\s*(.*)$", re.I | re.M)


class TextClassification(Task):
    """Labels ``text`` into ``labels``: a string when ``n == 1``, else a list of up to ``n``.

    ``context`` says what the labels are for; ``available_labels`` (a list, or a dict label ->
    meaning) limits the choice, and ``default_label`` (default ``"Unclassified"``; a list for
    several) is what to answer when nothing fits; ``examples`` are shown as given. An answer
    with no label, or with one outside ``available_labels`` and the default, fails its row
    (``UnparsableAnswer``).
    """

    system_prompt: Optional[str] = _SYSTEM
    n: int = Field(default=1, ge=1)
    context: Optional[str] = "Classify the text below by its main topic, intent or sentiment, as fits it best."
    examples: Optional[list[str]] = None
    available_labels: Optional[Union[list[str], dict[str, str]]] = None
    default_label: Optional[Union[str, list[str]]] = "Unclassified"
    query_title: str = "User Query"
    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @model_validator(mode="after")
    def _check_labels(self) -> TextClassification:
        if self.available_labels is not None and len(self.available_labels) == 0:
            raise ValueError(f"{type(self).__name__}: available_labels is empty")
        return self

    @property
    def inputs(self) -> list[str]:
        return ["text"]

    @property
    def task_outputs(self) -> list[str]:
        return ["labels"]

    @property
    def _label_meanings(self) -> dict[str, str]:
        if self.available_labels is None:
            return {}
        if isinstance(self.available_labels, dict):
            return dict(self.available_labels)
        return dict.fromkeys(self.available_labels, "")

    @property
    def _defaults(self) -> list[str]:
        if self.default_label is None:
            return []
        return [self.default_label] if isinstance(self.default_label, str) else list(self.default_label)

    def get_structured_output(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "string"}
        if self.available_labels is not None:
            item["enum"] = list(dict.fromkeys([*self._label_meanings, *self._defaults]))
        return {"type": "object", "properties": {"labels": {"type": "array", "items": item, "minItems": 1,
                                                            "maxItems": max(self.n, len(self._defaults))}},
                "required": ["labels"], "additionalProperties": False}

    def _prompt(self, text: str) -> ChatType:
        if self.uses_structured_output:
            answer_format = ask_for_json(self.get_structured_output())
        else:
            answer_format = ("Answer with one line in exactly this format, labels separated by commas:\n"
                             "Labels: <label>" + ("" if self.n == 1 else ", <label>, ..."))
        default = ", ".join(self._defaults) or None
        prompt = render_template(self.template or TEMPLATE, context=self.context or "", n=self.n,
                                 available_labels=self._label_meanings, default_label=default,
                                 examples=self.examples or [], query_title=self.query_title, text=text,
                                 answer_format=answer_format)
        chat: ChatType = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*chat, {"role": "user", "content": prompt}]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        return self._prompt(require_text(row.get("text"), self.name, "text"))

    def parse_labels(self, output: str | None) -> str | list[str]:
        """The labels in an answer: a string when ``n == 1``, else a list."""
        if self.uses_structured_output:
            raw = json_answer(output, f"step '{self.name}'").get("labels")
            labels = [raw] if isinstance(raw, str) else raw
        else:
            found = _LABELS_LINE.findall(output or "")
            labels = [part.strip().strip("'\"`*.") for part in found[-1].split(",")] if found else None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UnparsableAnswer(f"step '{self.name}': no labels in the answer", output)
        labels = list(dict.fromkeys(x.strip() for x in labels if x.strip()))
        if not labels:
            raise UnparsableAnswer(f"step '{self.name}': no labels in the answer", output)
        if self.available_labels is not None:
            allowed = {**self._label_meanings, **dict.fromkeys(self._defaults, "")}
            by_lower = {label.lower(): label for label in allowed}
            unknown = [x for x in labels if x.lower() not in by_lower]
            if unknown:
                raise UnparsableAnswer(f"step '{self.name}': label(s) {unknown} are not among {sorted(allowed)}",
                                       output)
            labels = [by_lower[x.lower()] for x in labels]
        if self.n == 1:
            return labels[0]
        return labels[:max(self.n, len(self._defaults))]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        return {"labels": self.parse_labels(output)}
