"""``CLAIR``: a minimal revision of a student's answer, for contrastive preference pairs.

Written from D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive
Revisions: Addressing Underspecification in Alignment" (arXiv:2408.06266): a stronger model
reads the task and the student's solution, reasons about what is wrong or weak in it, and
rewrites it as little as needed to fix that, so the (revision, original) pair differs only
where it matters.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks._answers import ask_for_json, json_answer, require_text
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.templates import check_template, render_template

_SYSTEM = ("You are a teacher who improves students' answers by the smallest changes that make them "
           "correct, clear and engaging, keeping whatever is already good.")

TEMPLATE = """\
Task:
{{ task }}

Student solution:
{{ student_solution }}

Work out what in the student solution is wrong, missing, unclear or unhelpful for the task, and \
how to fix it. Then write the corrected solution: change only what needs changing, keep the \
student's wording and structure elsewhere.

{{ answer_format }}"""

_HEADING = re.compile(r"^\s*[#*]*\s*Corrected\s+Student\s+Solution\s*[#*]*\s*:?\s*[#*]*\s*$", re.I | re.M)
_REASONING = re.compile(r"^\s*[#*]*\s*Teacher\s+Reasoning\s*[#*]*\s*:?\s*[#*]*\s*", re.I)


class CLAIR(Task):
    """Revises ``student_solution`` for ``task`` into ``revision``, with the teacher's reasoning
    in ``rational`` (distilabel's column names). An answer without a corrected solution fails
    its row (``UnparsableAnswer``)."""

    system_prompt: Optional[str] = _SYSTEM
    template: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else check_template(value)

    @property
    def inputs(self) -> list[str]:
        return ["task", "student_solution"]

    @property
    def task_outputs(self) -> list[str]:
        return ["revision", "rational"]

    def get_structured_output(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"rational": {"type": "string"}, "revision": {"type": "string"}},
                "required": ["rational", "revision"], "additionalProperties": False}

    def format_input(self, row: dict[str, Any]) -> ChatType:
        if self.uses_structured_output:
            answer_format = ("Put your reasoning in 'rational' and the corrected solution in 'revision'. "
                             + ask_for_json(self.get_structured_output()))
        else:
            answer_format = ("Answer in exactly this format:\nTeacher Reasoning: <your reasoning>\n\n"
                             "Corrected Student Solution:\n<the corrected solution>")
        prompt = render_template(self.template or TEMPLATE, answer_format=answer_format,
                                 task=require_text(row.get("task"), self.name, "task"),
                                 student_solution=require_text(row.get("student_solution"), self.name,
                                                               "student_solution"))
        chat: ChatType = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*chat, {"role": "user", "content": prompt}]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        if self.uses_structured_output:
            answer = json_answer(output, f"step '{self.name}'")
            rational, revision = answer.get("rational"), answer.get("revision")
        else:
            heads = list(_HEADING.finditer(output or ""))
            if not heads:
                raise UnparsableAnswer(f"step '{self.name}': no 'Corrected Student Solution:' in the answer", output)
            text = output or ""
            rational = _REASONING.sub("", text[:heads[0].start()]).strip() or None
            revision = text[heads[0].end():].strip()
        if not isinstance(revision, str) or not revision.strip():
            raise UnparsableAnswer(f"step '{self.name}': the corrected solution is empty", output)
        return {"revision": revision.strip(), "rational": rational}
