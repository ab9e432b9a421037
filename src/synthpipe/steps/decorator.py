"""``@step``: turn a plain generator function into a step class."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from synthpipe.steps.base import GeneratorStep, GlobalStep, Step, _Step, column_spec

_BASES: dict[str, type[_Step]] = {
    "normal": Step,
    "global": GlobalStep,
    "generator": GeneratorStep,
}


def step(
    inputs: list[str] | dict[str, bool] | None = None,
    outputs: list[str] | dict[str, bool] | None = None,
    step_type: Literal["normal", "global", "generator"] = "normal",
) -> Callable[[Callable[..., Any]], type[_Step]]:
    """Make a step class from a function, as distilabel's ``@step`` does.

    The function's parameters after the inputs become fields of the step (annotate
    them with ``RuntimeParameter[...]`` to set them at run time). The class keeps the
    function's module and name so worker processes can import it.
    """
    if step_type not in _BASES:
        raise ValueError(f"step_type must be one of {sorted(_BASES)}, not {step_type!r}")
    input_spec = column_spec(inputs)
    output_spec = column_spec(outputs)

    def decorator(func: Callable[..., Any]) -> type[_Step]:
        params = list(inspect.signature(func).parameters.values())
        positional_kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)
        if step_type == "generator":
            field_params = [p for p in params if p.name != "offset"]
            takes_offset = any(p.name == "offset" for p in params)
        else:
            field_params = [p for p in params[1:] if p.kind not in positional_kinds]
            takes_offset = False
        base = _BASES[step_type]
        reserved = set(base.model_fields) | {n for n in dir(base) if not n.startswith("__")}
        clashes = [p.name for p in field_params if p.name in reserved]
        if clashes:
            raise TypeError(
                f"@step {func.__qualname__}: parameter(s) {', '.join(clashes)} would replace the step's own "
                "attribute(s) of that name; rename them"
            )
        annotations: dict[str, Any] = {}
        namespace: dict[str, Any] = {}
        for p in field_params:
            annotations[p.name] = Any if p.annotation is inspect.Parameter.empty else p.annotation
            if p.default is not inspect.Parameter.empty:
                namespace[p.name] = p.default
        field_names = [p.name for p in field_params]

        def kwargs_of(self: _Step) -> dict[str, Any]:
            return {name: getattr(self, name) for name in field_names}

        if step_type == "generator":

            def process(self: Any, offset: int = 0) -> Any:
                extra = {"offset": offset} if takes_offset else {}
                yield from func(**extra, **kwargs_of(self))
        else:

            def process(self: Any, *inputs: Any) -> Any:
                yield from func(*inputs, **kwargs_of(self))

        namespace.update(
            {
                "__annotations__": annotations,
                "__module__": func.__module__,
                "__qualname__": func.__qualname__,
                "__doc__": func.__doc__,
                "process": process,
                "inputs": property(lambda self: dict(input_spec)),
                "outputs": property(lambda self: dict(output_spec)),
            }
        )
        return type(func.__name__, (base,), namespace)

    return decorator
