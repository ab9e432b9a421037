"""Prompt templates: Jinja2 sources, compiled once per process.

Every task's prompt is a Jinja2 template that a user may replace per task (its ``template``
field); undefined variables are an error rather than an empty string, so a typo in a custom
template fails its row loudly instead of sending a half-empty prompt.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=256)
def compiled_template(source: str) -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


def render_template(source: str, **values: Any) -> str:
    """``source`` rendered with ``values`` (missing variables raise)."""
    return compiled_template(source).render(**values)


def check_template(source: str) -> str:
    """``source`` if it compiles; a ValueError naming the line otherwise (for field validators)."""
    import jinja2

    try:
        jinja2.Environment().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"the template does not compile: {exc.message} (line {exc.lineno})") from None
    return source
