"""Raw-prompt generation: text continued from a prompt string, not a chat.

Magpie (and any task that must write the prompt's tokens itself) renders a conversation with
the model's chat template, appends a *pre-query template* (the tokens that open a user turn)
and lets the model go on: an aligned model then writes a user's query. Only backends that take
a raw prompt can do this: TransformersLLM, LlamaCppLLM, vLLM, and OpenAI-compatible servers'
``/completions`` endpoint. ``use_magpie_template`` / ``magpie_pre_query_template`` keep
distilabel's names (its ``MagpieChatTemplateMixin``).
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, model_validator

# the tokens that open a user turn in each chat format (formats are facts of the model families)
MAGPIE_PRE_QUERY_TEMPLATES: dict[str, str] = {
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
    "qwen2": "<|im_start|>user\n",
}

# the same formats as chat templates, for servers whose template we cannot read (/completions)
CHAT_FORMATS: dict[str, str] = {
    "llama3": (
        "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
    "qwen2": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}


def render_jinja_chat(template: str, chat: list[dict[str, Any]], add_generation_prompt: bool = False,
                      **tokens: Any) -> str:
    import jinja2

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
    return env.from_string(template).render(messages=chat, add_generation_prompt=add_generation_prompt, **tokens)


class MagpieChatTemplateMixin(BaseModel):
    """The Magpie switches of a raw-prompt backend. ``magpie_pre_query_template`` is ``"llama3"``,
    ``"qwen2"`` or the literal tokens. Left at their defaults they are not part of the
    LLM's signature, so existing runs keep theirs."""

    use_magpie_template: bool = False
    magpie_pre_query_template: Optional[str] = None

    @model_validator(mode="after")
    def _template_when_used(self) -> Any:
        if self.use_magpie_template and not self.magpie_pre_query_template:
            raise ValueError(f"{type(self).__name__}: use_magpie_template=True needs a magpie_pre_query_template "
                             f"({' or '.join(map(repr, MAGPIE_PRE_QUERY_TEMPLATES))}, or the literal tokens)")
        return self

    def signature_fields(self) -> dict[str, Any]:
        fields = super().signature_fields()  # type: ignore[misc]
        for name, default in (("use_magpie_template", False), ("magpie_pre_query_template", None)):
            if fields.get(name) == default:
                fields.pop(name, None)
        return fields

    def pre_query_tokens(self) -> str:
        name = self.magpie_pre_query_template or ""
        return MAGPIE_PRE_QUERY_TEMPLATES.get(name, name)

    def magpie_prompt(self, chat: list[dict[str, Any]]) -> str:
        """The conversation so far, rendered without a generation prompt, then the tokens that
        open a user turn (the start-of-text token once, not twice)."""
        pre = self.pre_query_tokens()
        if not chat:
            return pre
        rendered = self.render_chat(chat)  # type: ignore[attr-defined]
        for bos in ("<|begin_of_text|>", "<s>"):
            if pre.startswith(bos) and rendered.startswith(bos):
                pre = pre[len(bos):]
        return rendered + pre
