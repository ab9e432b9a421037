"""Routing batch functions: ``step >> route >> [a, b, c] >> converge``.

A routing function is called once per output batch of the step before it, with the names of
that step's successors, and returns the names of those that get the batch. The decision is
stored with the batch (a resumed run routes every stored batch as before, without calling
the function again), and a step joining the routed branches (the *convergence* step) gets
each routed batch whole: one input per branch the batch was routed to, in the pipeline's
order of those branches, each with the batch's rows in their original order. Which branches
it waits for is read from the stored decision, so no batch size has to match another.

The function runs in the coordinator process (not in a worker): it may be a lambda or a
closure, but to be saved in a pipeline file it must be importable (a module-level function)
or made by ``sample_n_steps``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union, overload

from synthpipe.errors import PipelineDefinitionError, PipelineFileError, RoutingError

if TYPE_CHECKING:
    from synthpipe.steps.base import _Step

RoutingBatchFunc = Callable[[list[str]], list[str]]
"""Takes the names of the successors of the routed step, returns the names that get the batch."""


class SampleNSteps:
    """The routing function ``sample_n_steps(n)`` makes: ``n`` successors picked at random."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PipelineDefinitionError(f"sample_n_steps(n): n must be a whole number from 1, not {n!r}")
        self.n = n
        self.__name__ = f"sample_n_steps({n})"

    def __call__(self, steps: list[str]) -> list[str]:
        return random.sample(steps, self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SampleNSteps) and other.n == self.n

    def __hash__(self) -> int:
        return hash(("sample_n_steps", self.n))


class RoutingBatchFunction:
    """A routing function with what the pipeline needs to know of it (see the module docstring).

    ``step >> fn`` binds a copy of it to ``step`` (one function can route several steps);
    ``fn >> [a, b, c]`` then connects ``step`` to each of them."""

    _routes_batches = True  # _Step.__rshift__ leaves ``step >> fn`` to __rrshift__ below

    def __init__(self, routing_function: RoutingBatchFunc, description: Optional[str] = None) -> None:
        if not callable(routing_function):
            raise PipelineDefinitionError(f"a routing batch function must be callable, not {routing_function!r}")
        self.routing_function = routing_function
        self.description = description
        self._step: _Step | None = None

    @property
    def name(self) -> str:
        return getattr(self.routing_function, "__name__", type(self.routing_function).__name__)

    def __repr__(self) -> str:
        where = f" of step '{self._step.name}'" if self._step is not None else ""
        return f"RoutingBatchFunction({self.name}{where})"

    @property
    def step(self) -> _Step | None:
        """The step whose batches it routes, once ``step >> fn`` bound it."""
        return self._step

    # -- connecting ------------------------------------------------------------------------

    def __rrshift__(self, other: Any) -> RoutingBatchFunction:
        from synthpipe.steps.base import _Step

        if not isinstance(other, _Step):
            raise PipelineDefinitionError(f"a routing batch function routes the batches of one step, not {other!r}")
        if other.pipeline is None:
            raise PipelineDefinitionError(f"step '{other.name}' is in no pipeline; create it inside "
                                          "`with Pipeline(...):` before routing its batches")
        routes = other.pipeline.routing
        if other.name in routes and routes[other.name].routing_function is not self.routing_function:
            raise PipelineDefinitionError(f"step '{other.name}' already has the routing function "
                                          f"'{routes[other.name].name}'; a step's batches have one routing function")
        bound = RoutingBatchFunction(self.routing_function, self.description)
        bound._step = other
        routes[other.name] = bound
        return bound

    def __rshift__(self, other: Any) -> Any:
        from synthpipe.steps.base import _Step

        if self._step is None:
            raise PipelineDefinitionError(f"routing function '{self.name}' has no step before it: write "
                                          "`step >> routing_function >> [step_a, step_b, ...]`")
        if not isinstance(other, (list, tuple)) or not all(isinstance(s, _Step) for s in other):
            raise PipelineDefinitionError(f"routing function '{self.name}' routes to a list of steps "
                                          f"(`>> [step_a, step_b, ...]`), not {other!r}")
        self._step.connect(*other)
        return other

    # -- routing ---------------------------------------------------------------------------

    def __call__(self, steps: list[str]) -> list[str]:
        return self.choose(steps)

    def route_batch(self, batch: Any, steps: list[str]) -> list[str]:
        """distilabel's spelling: the steps that get ``batch`` (the batch does not change the choice)."""
        return self.choose(steps)

    def choose(self, steps: Sequence[str]) -> list[str]:
        """The successors that get the next batch, checked and in the order of ``steps``.

        Raises the function's own error as it is; ``RoutingError`` for an answer that is not
        a non-empty list of names among ``steps`` (a batch routed nowhere would be lost)."""
        steps = list(steps)
        chosen = self.routing_function(list(steps))
        if isinstance(chosen, str) or not isinstance(chosen, (list, tuple, set, frozenset)):
            raise RoutingError(f"routing function '{self.name}' returned {chosen!r}; it must return a list of "
                               f"step names among {', '.join(steps)}")
        unknown = [c for c in chosen if c not in steps]
        if unknown:
            raise RoutingError(f"routing function '{self.name}' returned unknown step(s) "
                               f"{', '.join(repr(u) for u in unknown)}; it may choose among {', '.join(steps)}")
        if not chosen:
            raise RoutingError(f"routing function '{self.name}' chose no step: each batch must go to at least "
                               f"one of {', '.join(steps)}")
        return [s for s in steps if s in set(chosen)]

    def problems(self, successors: Sequence[str]) -> list[str]:
        """What makes this routing impossible, known before the run."""
        where = f"step '{self._step.name if self._step else '?'}'"
        if not successors:
            return [f"{where} has the routing function '{self.name}' but no step after it; write "
                    "`step >> routing_function >> [step_a, step_b, ...]`"]
        fn = self.routing_function
        if isinstance(fn, SampleNSteps) and fn.n > len(successors):
            return [f"{where}: sample_n_steps({fn.n}) needs at least {fn.n} steps to route to, "
                    f"it has {len(successors)} ({', '.join(successors)})"]
        return []

    def signature_form(self) -> str:
        """What identifies the function in the routed step's signature: another function makes
        other decisions, so the stored ones are not reused for it."""
        fn = self.routing_function
        if isinstance(fn, SampleNSteps):
            return f"sample_n_steps:{fn.n}"
        return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"

    # -- pipeline files --------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The function as plain data: ``sample_n_steps`` by its ``n``, another by its import path."""
        assert self._step is not None
        data: dict[str, Any] = {"step": self._step.name}
        fn = self.routing_function
        if isinstance(fn, SampleNSteps):
            data["sample_n_steps"] = fn.n
        else:
            data["function"] = function_path(fn, f"the routing function of step '{self._step.name}'")
        if self.description is not None:
            data["description"] = self.description
        return data


def function_path(fn: Any, where: str) -> str:
    """``module:qualname`` of a function, checked to lead back to it (as ``class_path`` does for classes)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    fix = ("define it at the top level of a module of its own (e.g. my_routes.py, importable from where the "
           "pipeline is loaded) and import it from there, or use sample_n_steps(n)")
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise PipelineFileError(f"{where}: {fn!r} is not a function with an import path; {fix}")
    if module.startswith("__"):
        raise PipelineFileError(f"{where}: function {qualname} is defined in {module} (a script run directly, or a "
                                f"notebook), which cannot be imported again to load the file; {fix}")
    if "<" in qualname:  # <lambda>, <locals>
        raise PipelineFileError(f"{where}: function {qualname} is a lambda or is defined inside a function, so "
                                f"no import path leads to it; {fix}")
    import importlib

    found: Any
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        found = None
    if isinstance(found, RoutingBatchFunction):  # the name a @routing_batch_function decorator bound
        found = found.routing_function
    if found is not fn:
        raise PipelineFileError(f"{where}: function {qualname} is not found again at {module}:{qualname}; {fix}")
    return f"{module}:{qualname}"


def routing_from_data(pipeline: Any, data: Any, resolve: Callable[[str, str], Any], source: str) -> None:
    """Bind the routing function one entry of a file's ``routing`` list describes.

    ``resolve(path, where)`` imports ``module:qualname`` under the file's trust rules."""
    if not isinstance(data, dict) or data.get("step") not in pipeline.dag.nodes:
        raise PipelineFileError(f"{source}: routing entry {data!r} must name a step of the file under 'step'")
    where = f"{source}, routing function of step '{data['step']}'"
    description = data.get("description")
    if "sample_n_steps" in data:
        try:
            fn: Any = SampleNSteps(data["sample_n_steps"])
        except PipelineDefinitionError as exc:
            raise PipelineFileError(f"{where}: {exc}") from None
    elif isinstance(data.get("function"), str):
        fn = resolve(data["function"], where)
        if isinstance(fn, RoutingBatchFunction):
            description = description if description is not None else fn.description
            fn = fn.routing_function
        if not callable(fn):
            raise PipelineFileError(f"{where}: {data['function']} is not a function")
    else:
        raise PipelineFileError(f"{where}: give 'function' (module:name) or 'sample_n_steps' (a number)")
    pipeline.dag.nodes[data["step"]] >> RoutingBatchFunction(fn, description)


# -- the decorator and the ready-made one ----------------------------------------------------


@overload
def routing_batch_function(func: RoutingBatchFunc, /) -> RoutingBatchFunction: ...


@overload
def routing_batch_function(
    description: Optional[str] = None,
) -> Callable[[RoutingBatchFunc], RoutingBatchFunction]: ...


def routing_batch_function(
    func: Union[RoutingBatchFunc, str, None] = None, description: Optional[str] = None
) -> Union[RoutingBatchFunction, Callable[[RoutingBatchFunc], RoutingBatchFunction]]:
    """Make a routing batch function of ``func(steps) -> chosen steps``.

    Works bare (``@routing_batch_function``), called (``@routing_batch_function()``) and with
    a description (``@routing_batch_function(description="...")`` or as the first argument)."""
    if callable(func):
        return RoutingBatchFunction(func, description)
    if func is not None and not isinstance(func, str):
        raise PipelineDefinitionError(f"routing_batch_function takes a function or a description, not {func!r}")
    text = func if func is not None else description

    def decorate(fn: RoutingBatchFunc) -> RoutingBatchFunction:
        return RoutingBatchFunction(fn, text)

    return decorate


def sample_n_steps(n: int) -> RoutingBatchFunction:
    """A routing function sending each batch to ``n`` of the successors, picked at random."""
    return RoutingBatchFunction(SampleNSteps(n), f"Sample {n} steps from the list of downstream steps.")
