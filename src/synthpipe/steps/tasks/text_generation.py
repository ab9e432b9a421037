"""Generate text from columns: ``TextGeneration`` (a Jinja2 template over columns) and
``ChatGeneration`` (a conversation already in a column)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Optional, Union

from pydantic import field_validator

from synthpipe.models.base import ChatType
from synthpipe.steps.tasks.base import Task

_ONE_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@lru_cache(maxsize=64)
def _compiled(template: str) -> Any:
    """A callable rendering the template; a template that is one variable (the default) is
    that value as text, without Jinja2's per-row cost."""
    one = _ONE_VARIABLE.fullmatch(template)
    if one is not None:
        name = one.group(1)
        return lambda values: str(values[name])
    import jinja2

    compiled = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(template)
    return lambda values: compiled.render(**values)


class TextGeneration(Task):
    """One prompt per row, rendered from ``template`` with the row's ``columns``.

    The default template is the ``instruction`` column itself. A ``system_prompt`` (or a
    ``system_prompt`` column, when ``use_system_prompt``) goes first. Writes ``generation``.
    """

    system_prompt: Optional[str] = None
    use_system_prompt: bool = True
    template: str = "{{ instruction }}"
    columns: Union[str, list[str]] = "instruction"

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: str) -> str:
        import jinja2

        try:
            jinja2.Environment().parse(value)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"the template does not compile: {exc.message} (line {exc.lineno})") from None
        return value

    @property
    def column_list(self) -> list[str]:
        return [self.columns] if isinstance(self.columns, str) else list(self.columns)

    @property
    def inputs(self) -> dict[str, bool]:
        return {**dict.fromkeys(self.column_list, True), "system_prompt": False}

    @property
    def task_outputs(self) -> list[str]:
        return ["generation"]

    def prompt_column_types(self) -> dict[str, tuple[type, ...]]:
        """With the default kind of template (one column, as it is), that column is the prompt:
        it must be text. A template of its own may format numbers or loop over lists."""
        types: dict[str, tuple[type, ...]] = {}
        if _ONE_VARIABLE.fullmatch(self.template):
            types.update(dict.fromkeys(self.column_list, (str,)))
        if self.use_system_prompt:
            types["system_prompt"] = (str,)
        return types

    def format_input(self, row: dict[str, Any]) -> ChatType:
        values = {}
        for column in self.column_list:
            value = row.get(column)
            if value is None:
                raise ValueError(f"step '{self.name}': column '{column}' is empty in this row")
            values[column] = value
        messages: ChatType = []
        system = row.get("system_prompt") if self.use_system_prompt else None
        system = system or self.system_prompt
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": _compiled(self.template)(values)})
        return messages

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        return {"generation": output}


class ChatGeneration(Task):
    """Continues the conversation in the ``messages`` column (a list of role/content dicts)."""

    @property
    def inputs(self) -> list[str]:
        return ["messages"]

    @property
    def task_outputs(self) -> list[str]:
        return ["generation"]

    def format_input(self, row: dict[str, Any]) -> ChatType:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise ValueError(f"step '{self.name}': 'messages' must be a list of {{'role', 'content'}} dicts")
        if not all(isinstance(m["content"], str) for m in messages):
            bad = next(m["content"] for m in messages if not isinstance(m["content"], str))
            raise TypeError(f"step '{self.name}': column 'messages' holds a message whose content is "
                            f"a {type(bad).__name__} ({bad!r:.80}), not text")
        if not messages or messages[-1]["role"] != "user":
            raise ValueError(f"step '{self.name}': the conversation must end with a user message")
        return list(messages)

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:
        return {"generation": output}

