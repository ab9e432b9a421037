"""From a user's pipeline to a checked, frozen plan: parameters applied, problems found.

Everything that can be known before a process starts is checked here, and all problems
are reported together in one ``PipelineValidationError``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from synthpipe.errors import PipelineValidationError
from synthpipe.pipeline.dag import DAG
from synthpipe.pipeline.stages import build_stages
from synthpipe.steps.base import GeneratorStep, _Step

if TYPE_CHECKING:
    from synthpipe.pipeline.base import Pipeline

DATASET_STEP_NAME = "load_dataset"


@dataclass
class Plan:
    """The steps (copies, parameters applied) and graph one run executes."""

    dag: DAG
    order: list[str]
    domains: dict[str, str]
    routing: dict[str, Any] = field(default_factory=dict)  # step -> its RoutingBatchFunction
    stages: list[list[str]] | None = None  # load stages, run one after the other (pipeline/stages.py)

    def step(self, name: str) -> _Step:
        return self.dag.nodes[name]


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def dataset_rows(dataset: Any) -> list[dict[str, Any]]:
    """Rows of a list of dicts, a ``datasets.Dataset`` or a pandas DataFrame."""
    if isinstance(dataset, list):
        return dataset
    if hasattr(dataset, "to_dict") and hasattr(dataset, "columns") and hasattr(dataset, "iloc"):
        return dataset.to_dict(orient="records")
    if hasattr(dataset, "to_list"):
        return dataset.to_list()
    raise TypeError(
        f"dataset must be a list of dicts, a datasets.Dataset or a pandas DataFrame, "
        f"not {type(dataset).__name__}"
    )


def build_plan(
    pipeline: Pipeline,
    parameters: dict[str, dict[str, Any]] | None = None,
    dataset: Any = None,
    dry_run_batch_size: int | None = None,
    load_groups: Any = None,
) -> Plan:
    problems: list[str] = []
    dag = DAG()
    for name, step in pipeline.dag.nodes.items():
        dag.add_node(name, step.detached())
    for name in pipeline.dag:
        for succ in pipeline.dag.successors(name):
            dag.add_edge(name, succ)

    if dataset is not None:
        _add_dataset_generator(dag, dataset, problems)
    _apply_parameters(dag, parameters or {}, problems)
    if dry_run_batch_size is not None:
        for step in dag.nodes.values():
            if isinstance(step, GeneratorStep):
                step.batch_size = dry_run_batch_size

    if not dag.nodes:
        raise PipelineValidationError([f"pipeline '{pipeline.name}' has no steps"])
    cycle = dag.find_cycle()
    if cycle:
        raise PipelineValidationError(
            problems + [f"the steps form a cycle: {' >> '.join(cycle)}"]
        )
    order = dag.topological_order()
    routing = dict(getattr(pipeline, "routing", {}))
    for name, route in routing.items():
        problems.extend(route.problems(dag.successors(name)))
    _check_kinds(dag, problems)
    domains = _origin_domains(dag, order, problems, set(routing))
    _check_columns(dag, order, problems)
    stages = build_stages(dag, order, load_groups, problems)
    if problems:
        raise PipelineValidationError(problems)
    return Plan(dag=dag, order=order, domains=domains, routing=routing, stages=stages)


def _add_dataset_generator(dag: DAG, dataset: Any, problems: list[str]) -> None:
    from synthpipe.pipeline.loader import LoadDataFromDicts

    try:
        rows = dataset_rows(dataset)
    except TypeError as exc:
        problems.append(str(exc))
        return
    roots = [n for n in dag.roots() if not isinstance(dag.nodes[n], GeneratorStep)]
    if not roots:
        problems.append(
            "a dataset was given but every first step is already a generator; "
            "remove the generator or the dataset"
        )
        return
    if DATASET_STEP_NAME in dag.nodes:
        problems.append(f"a step is already named '{DATASET_STEP_NAME}', the name used for dataset=")
        return
    loader = LoadDataFromDicts(name=DATASET_STEP_NAME, data=rows)
    dag.add_node(DATASET_STEP_NAME, loader)
    for root in roots:
        dag.add_edge(DATASET_STEP_NAME, root)


def _apply_parameters(dag: DAG, parameters: dict[str, dict[str, Any]], problems: list[str]) -> None:
    for step_name, values in parameters.items():
        step = dag.nodes.get(step_name)
        if step is None:
            problems.append(
                f"runtime parameters given for unknown step '{step_name}'"
                + _suggest(step_name, list(dag.nodes))
            )
            continue
        _apply_to(step, f"step '{step_name}'", values or {}, problems)


def _apply_to(target: Any, who: str, values: dict[str, Any], problems: list[str]) -> None:
    """Set runtime parameters on a step, or on a model inside it (``{"llm": {...}}``)."""
    allowed = target.runtime_parameter_names()
    nested = [name for name in type(target).model_fields
              if hasattr(getattr(target, name, None), "runtime_parameter_names")]
    for key, value in values.items():
        if key in nested and isinstance(value, dict):
            _apply_to(getattr(target, key), f"{who}, {key}", value, problems)
            continue
        if key not in allowed:
            kind = "is not a runtime parameter" if key in type(target).model_fields else "is unknown"
            names = allowed + [f"{n} (a dict of its own)" for n in nested]
            problems.append(
                f"{who}: parameter '{key}' {kind}"
                + _suggest(key, allowed + nested)
                + f"; runtime parameters: {', '.join(names) or 'none'}"
            )
            continue
        try:
            setattr(target, key, value)
        except ValidationError as exc:
            reason = "; ".join(e["msg"] for e in exc.errors())
            problems.append(f"{who}: parameter '{key}'={value!r} is invalid: {reason}")


def _check_kinds(dag: DAG, problems: list[str]) -> None:
    for name, step in dag.nodes.items():
        preds = dag.predecessors(name)
        if step.step_kind == "generator":
            if preds:
                problems.append(
                    f"generator step '{name}' cannot receive data (it is fed by {', '.join(preds)})"
                )
            if step.resources.replicas != 1:
                problems.append(f"generator step '{name}' runs one replica, not {step.resources.replicas}")
        elif not preds:
            problems.append(
                f"step '{name}' has no predecessor and is not a generator: connect a generator "
                "before it (`load >> step`) or pass `dataset=` to run()"
            )
        if step.step_kind == "global" and step.resources.replicas != 1:
            problems.append(f"global step '{name}' runs one replica, not {step.resources.replicas}")
        for column in step.input_mappings:
            if column not in step.inputs:
                problems.append(
                    f"step '{name}': input_mappings names '{column}', which is not an input of the "
                    f"step{_suggest(column, list(step.inputs))} (inputs: {', '.join(step.inputs) or 'none'})"
                )
        for column in step.output_mappings:
            if column not in step.outputs:
                problems.append(
                    f"step '{name}': output_mappings names '{column}', which is not an output of the "
                    f"step{_suggest(column, list(step.outputs))} (outputs: {', '.join(step.outputs) or 'none'})"
                )


def _origin_domains(dag: DAG, order: list[str], problems: list[str], routed: set[str] = frozenset()) -> dict[str, str]:
    """Which generator, global or routing step the rows of each step are counted from.

    Branches can only be joined (aligned row by row) when they share that origin. A routing
    step counts its output batches afresh: the steps joining its branches align by them.
    """
    domains: dict[str, str] = {}
    for name in order:
        step = dag.nodes[name]
        preds = dag.predecessors(name)
        if step.step_kind in ("generator", "global") or not preds:
            domains[name] = name
            continue
        upstream = {domains[p] for p in preds}
        if len(upstream) > 1:
            problems.append(
                f"step '{name}' joins branches that start from different sources "
                f"({', '.join(sorted(upstream))}); joined branches must come from one generator "
                "or one routing step (or put a global step before the join)"
            )
        domains[name] = name if name in routed else sorted(upstream)[0]
    return domains


def _check_columns(dag: DAG, order: list[str], problems: list[str]) -> None:
    available: dict[str, set[str]] = {}
    for name in order:
        step = dag.nodes[name]
        preds = dag.predecessors(name)
        incoming: set[str] = set()
        for p in preds:
            incoming |= available[p]
        if preds:
            for column, required in step.input_columns().items():
                if required and column not in incoming:
                    near = _suggest(column, sorted(incoming))
                    problems.append(
                        f"step '{name}' needs column '{column}', which no step before it produces"
                        f"{near}; available: {', '.join(sorted(incoming)) or 'none'}"
                    )
            problems.extend(step.input_problems(incoming))
        available[name] = incoming | set(step.output_columns())
