"""Load stages: which steps may hold their workers (and models) at the same time.

``pipeline.run(load_groups=...)`` splits a run into stages run one after the other: a stage's
workers start only once every worker of the stage before it has finished and exited, so local
models that do not fit a GPU together each get it in turn. The stages follow distilabel's rule:

* every group the user names is a stage; a global step is always a stage of its own;
* groups take their place in the run by their earliest step in topological order;
* the steps no group names stay together, in topological order, as stages of their own
  between the groups (a run of them ends where a named group begins);
* ``"sequential_step_execution"``: every step is a stage of its own.

Everything that cannot work is found here, before any worker starts.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, Union

from synthpipe.pipeline.dag import DAG

SEQUENTIAL = "sequential_step_execution"

LoadGroups = Union[list[list[Any]], Literal["sequential_step_execution"]]
"""What ``pipeline.run(load_groups=...)`` takes: lists of steps (or step names), or
``"sequential_step_execution"``."""


def _name_of(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    name = getattr(item, "name", None)
    return name if isinstance(name, str) else None


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def build_stages(dag: DAG, order: list[str], load_groups: Any, problems: list[str]) -> list[list[str]] | None:
    """The stages of a run, in the order they run, or None without ``load_groups``. Problems are
    appended to ``problems`` (and None returned when the groups cannot be read at all)."""
    if load_groups is None:
        return None
    if isinstance(load_groups, str):
        if load_groups != SEQUENTIAL:
            problems.append(f"load_groups={load_groups!r} is not understood: give a list of groups (lists of "
                            f"steps or step names) or {SEQUENTIAL!r}")
            return None
        return [[name] for name in order]
    groups = _read_groups(dag, load_groups, problems)
    if groups is None:
        return None
    position = {name: i for i, name in enumerate(order)}
    for name in order:  # a global step always runs alone
        if dag.nodes[name].step_kind == "global" and not any(name in g for g in groups):
            groups.append([name])
    groups.sort(key=lambda g: min(position[n] for n in g))
    stage_of_group = {n: i for i, g in enumerate(groups) for n in g}
    stages: list[list[str]] = []
    loose: list[str] = []
    placed: set[int] = set()
    for name in order:
        if name not in stage_of_group:
            loose.append(name)
            continue
        if loose:
            stages.append(loose)
            loose = []
        index = stage_of_group[name]
        if index not in placed:
            placed.add(index)
            stages.append(sorted(groups[index], key=position.__getitem__))
    if loose:
        stages.append(loose)
    _check_order(dag, stages, groups, problems)
    return stages


def _read_groups(dag: DAG, load_groups: Any, problems: list[str]) -> list[list[str]] | None:
    if not isinstance(load_groups, (list, tuple)) or not all(isinstance(g, (list, tuple)) for g in load_groups):
        problems.append("load_groups must be a list of groups, each a list of steps or step names "
                        f"(e.g. [['generate_a'], ['generate_b']]), or {SEQUENTIAL!r}; got {load_groups!r}")
        return None
    known = list(dag.nodes)
    groups: list[list[str]] = []
    seen: dict[str, int] = {}
    for number, group in enumerate(load_groups, start=1):
        if not group:
            problems.append(f"load group {number} is empty")
            continue
        names: list[str] = []
        for item in group:
            name = _name_of(item)
            if name is None:
                problems.append(f"load group {number}: {item!r} is neither a step nor a step name")
                continue
            if name not in dag.nodes:
                problems.append(f"load group {number} names step '{name}', which is not in the pipeline"
                                + _suggest(name, known))
                continue
            if name in seen:
                where = "twice in that group" if seen[name] == number else f"also in load group {seen[name]}"
                problems.append(f"step '{name}' is in load group {number} and {where}: a step is loaded in one "
                                "stage only")
                continue
            seen[name] = number
            names.append(name)
        if len(names) > 1:
            for name in names:
                if dag.nodes[name].step_kind == "global":
                    problems.append(f"load group {number}: global step '{name}' runs in a stage of its own (it "
                                    "needs every row of the steps before it); give it a group of its own")
        if names:
            groups.append(names)
    return groups


def _check_order(dag: DAG, stages: list[list[str]], groups: list[list[str]], problems: list[str]) -> None:
    """A stage may only need steps of its own stage or of earlier ones."""
    stage_index = {name: i for i, stage in enumerate(stages) for name in stage}
    for i, stage in enumerate(stages):
        for name in stage:
            for pred in dag.predecessors(name):
                if stage_index[pred] > i:
                    grouped = any(pred in g for g in groups)
                    how = ("it is in a later load group" if grouped
                           else "no load group names it, so it runs in a later stage of its own")
                    problems.append(
                        f"load groups: step '{name}' (stage {i + 1}) needs step '{pred}' to run first, but {how} "
                        f"(stage {stage_index[pred] + 1}); put '{pred}' in the same group or in an earlier one")


def stage_of(stages: list[list[str]]) -> dict[str, int]:
    return {name: i for i, stage in enumerate(stages) for name in stage}
