"""Tasks that write instructions or instruction/answer pairs from seed text: ``SelfInstruct``,
``Genstruct`` and ``URIAL``."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from pydantic import Field, field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks.base import Task, UnparsableAnswer
from synthpipe.steps.tasks.templates import check_template, render_template

SELF_INSTRUCT_TEMPLATE = """\
You are helping build the training data of {{ application_description }}.
Write {{ num_instructions }} different requests that a user could send to it about the text below.

Each request must meet these criteria:
{{ criteria_for_query_generation }}

Text:
{{ input }}

{% if structured %}\
Answer with a JSON object whose "instructions" field is the list of the {{ num_instructions }} requests.\
{% else %}\
Write one request per line, with nothing else: no numbering, no blank lines, no commentary.\
{% endif %}"""

DEFAULT_CRITERIA = (
    "- Vary the wording and the verbs: questions, commands, requests for examples.\n"
    "- Keep each one self-contained and answerable from general knowledge or the text.\n"
    "- Mix simple requests with ones that need several steps of reasoning.\n"
    "- Keep each request to one or two sentences.")


class SelfInstruct(Task):
    """``num_instructions`` user requests written from the ``input`` column, for the assistant
    described by ``application_description``; writes ``instructions`` (a list of strings).
    Asked for as JSON ``{"instructions": [...]}`` where the backend supports structured output,
    else one request per line.

    Paper: "Self-Instruct: Aligning Language Models with Self-Generated Instructions", Wang,
    Kordi, Mishra, Liu, Smith, Khashabi, Hajishirzi, 2022, arXiv:2212.10560.
    """

    num_instructions: int = Field(default=5, ge=1)
    criteria_for_query_generation: str = DEFAULT_CRITERIA
    application_description: str = "AI assistant"
    template: Optional[str] = None

    _check = field_validator("template")(lambda cls, v: v if v is None else check_template(v))

    @property
    def inputs(self) -> list[str]:
        return ["input"]

    @property
    def task_outputs(self) -> list[str]:
        return ["instructions"]

    def get_structured_output(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"instructions": {"type": "array", "items": {"type": "string"}}},
                "required": ["instructions"]}

    def format_input(self, row: dict[str, Any]) -> ChatType:
        prompt = render_template(self.template or SELF_INSTRUCT_TEMPLATE, input=row["input"],
                                 num_instructions=self.num_instructions,
                                 criteria_for_query_generation=self.criteria_for_query_generation,
                                 application_description=self.application_description,
                                 structured=self.uses_structured_output)
        return [{"role": "user", "content": prompt}]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        if self.uses_structured_output:
            items = [str(i).strip() for i in json.loads(output or "")["instructions"]]
        else:
            items = [re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip() for line in (output or "").splitlines()]
        items = [i for i in items if i]
        if not items:
            raise UnparsableAnswer(f"step '{self.name}': the answer holds no instruction", output)
        return {"instructions": items}


# Genstruct's own input format (the model was trained on it): title, content, then the open user turn
GENSTRUCT_TEMPLATE = """\
[[[Title]]] {{ title }}
[[[Content]]] {{ content }}

The following is an interaction between a user and an AI assistant that is related to the above text.

[[[User]]] """

_GENSTRUCT_ANSWER = re.compile(r"(.*?)\[\[\[Assistant\]\]\](.*)", re.S)


class Genstruct(Task):
    """A user question grounded in a passage (``title``, ``content``) and its answer, in the
    format of NousResearch's Genstruct model; writes ``user`` and ``assistant``. An answer
    without the ``[[[Assistant]]]`` marker fails its row (raw text kept) rather than giving
    ``None`` columns, so ``retry_failed`` can ask again.

    Method: "Ada-Instruct: Adapting Instruction Generators for Complex Reasoning", Cui and
    Wang, 2023, arXiv:2310.04484 (the model: NousResearch/Genstruct-7B).
    """

    template: Optional[str] = None
    _check = field_validator("template")(lambda cls, v: v if v is None else check_template(v))

    @property
    def inputs(self) -> list[str]:
        return ["title", "content"]

    @property
    def task_outputs(self) -> list[str]:
        return ["user", "assistant"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        prompt = render_template(self.template or GENSTRUCT_TEMPLATE, title=row["title"], content=row["content"])
        return [{"role": "user", "content": prompt}]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        text = (output or "").split("[[[User]]]", 1)[-1] if (output or "").lstrip().startswith("[[[User]]]") \
            else (output or "")
        match = _GENSTRUCT_ANSWER.match(text)
        if match is None or not match.group(1).strip() or not match.group(2).strip():
            raise UnparsableAnswer(f"step '{self.name}': no '[[[Assistant]]]' part in the answer", output)
        return {"user": match.group(1).strip(), "assistant": match.group(2).strip()}


URIAL_TEMPLATE = """\
# Instructions

Below are conversations between a curious user and an assistant. The assistant answers \
accurately and helpfully, admits what it does not know, and declines harmful requests politely.

# Query:
```
What is the boiling point of water at sea level?
```

# Answer:
```
At sea level (standard pressure, 101.325 kPa) water boils at 100 °C, which is 212 °F. \
At higher altitudes the pressure is lower, so it boils at a lower temperature.
```

# Query:
```
Give me two tips for remembering new words in a foreign language.
```

# Answer:
```
1. Use spaced repetition: review each word after growing intervals (a day, three days, a week).
2. Put every new word in a sentence about your own life; personal context makes it stick.
```

{% for message in messages %}\
{% if message['role'] == 'user' %}\
# Query:
```
{{ message['content'] }}
```

{% elif message['role'] == 'assistant' %}\
# Answer:
```
{{ message['content'] }}
```

{% endif %}\
{% endfor %}\
# Answer:
```
"""


class URIAL(Task):
    """Alignment by in-context learning for base (non-chat) models: a fixed preamble with
    worked examples, then the ``instruction`` (or the ``conversation`` column, a list of
    role/content dicts ending with the user) in the same Query/Answer layout; the answer is
    the text up to the next ``# Query`` or closing fence. Writes ``generation``.

    Paper: "The Unlocking Spell on Base LLMs: Rethinking Alignment via In-Context Learning",
    Lin, Ravichander, Lu, Dziri, Sclar, Chandu, Bhagavatula, Choi, 2023, arXiv:2312.01552.
    """

    template: Optional[str] = None
    _check = field_validator("template")(lambda cls, v: v if v is None else check_template(v))

    @property
    def inputs(self) -> dict[str, bool]:
        return {"instruction": False, "conversation": False}

    @property
    def task_outputs(self) -> list[str]:
        return ["generation"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        messages = row.get("conversation") or (
            [{"role": "user", "content": row["instruction"]}] if row.get("instruction") else None)
        if not messages:
            raise ValueError(f"step '{self.name}': the row has neither 'instruction' nor 'conversation'")
        if messages[-1].get("role") != "user":
            raise ValueError(f"step '{self.name}': column 'conversation' must end with a user message")
        return [{"role": "user", "content": render_template(self.template or URIAL_TEMPLATE, messages=messages)}]

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        text = (output or "").split("# Query", 1)[0]
        text = text.split("```", 1)[0].strip()
        return {"generation": text or None}
