"""Routing batch functions and convergence (mixed into Scheduler).

A *routing step* has a router: for each of its output batches, the router picks which of the
step's successors get it. The decision is made once, when the batch's output is complete,
and goes out with its ``Persist``; a replayed batch takes the stored decision and the router
is not asked again, so a resumed run routes every stored batch as before.

A routing step counts origins afresh: its rows leave with the seq of their batch as origin
(as a generator's do). So the steps on its branches never mix two routed batches in one
batch (they split at origin, as every step on the way to a join does), and a step joining the
branches (a *convergence* step) forms one batch per routed batch. Of its predecessors it keeps
those on a branch the batch was routed to (from the decision recorded at release), in the
order of its predecessors; the others hold nothing of that batch. No batch size needs to
match another: each side cuts at the routed batches' edges.

A router is any object with ``choose(successors) -> chosen names`` and a ``name``; the
scheduler calls it and nothing else. What it raises stops the run, named after it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Protocol

from synthpipe.errors import ErrorRecord, RoutingError, trim_internal_frames
from synthpipe.runtime.contract import Action, Row, StepSpec
from synthpipe.runtime.scheduler.state import _StepState

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Router(Protocol):
    name: str

    def choose(self, steps: Sequence[str]) -> list[str]: ...


class RoutingFailed(Exception):
    """The router of a step could not route a batch: the run stops with ``record``."""

    def __init__(self, record: ErrorRecord) -> None:
        super().__init__(record.message)
        self.record = record


class Routing:
    """Routing decisions and the batches of convergence steps."""

    specs: dict[str, StepSpec]

    def _init_routing(self, routers: Mapping[str, Router] | None) -> None:
        self.routers: dict[str, Router] = dict(routers or {})
        self.convergence = convergence_steps(self.specs, set(self.routers))
        self._recorded = {router for router, _ in self.convergence.values()}
        self.decisions: dict[str, dict[int, tuple[str, ...]]] = {name: {} for name in self._recorded}

    def _route(self, st: _StepState, seq: int, rows: list[Row], replayed: bool) -> tuple[str, ...] | None:
        """Where batch ``seq`` of ``st`` goes (None: everywhere, it is no routing step).

        Raises ``RoutingFailed``."""
        name = st.spec.name
        router = self.routers.get(name)
        if router is None:
            return None
        if replayed:
            record = st.stored.get(seq)
            if record is not None and record.routed_to is not None:
                return record.routed_to
            raise RoutingFailed(ErrorRecord.from_diagnosis(RoutingError(
                f"the stored batch {seq} of routing step '{name}' has no routing decision; run with "
                "use_cache=False"), step=name, batch=seq))
        if not rows:
            return ()  # nothing to route: no step waits for this batch
        where = {"step": name, "batch": seq, "phase": f"routing function '{router.name}'"}
        try:
            return tuple(router.choose(list(st.spec.successors)))
        except RoutingError as exc:
            record = ErrorRecord.from_diagnosis(exc, **where)
        except Exception as exc:
            record = ErrorRecord.from_exception(trim_internal_frames(exc, _PACKAGE_DIR), **where)
        record.retryable = False
        raise RoutingFailed(record)

    def _routing_failed(self, failure: RoutingFailed) -> list[Action]:
        return self._fail(failure.record)  # type: ignore[attr-defined]

    def _record_decision(self, name: str, seq: int, routed_to: tuple[str, ...] | None) -> None:
        if routed_to is not None and name in self._recorded:
            self.decisions[name][seq] = routed_to

    def _converge(self, st: _StepState, inputs: list[list[Row]], origins: list[list[int]],
                  keys: list[list[int]]) -> tuple[list[list[Row]], list[list[int]], list[list[int]]]:
        """A convergence step's batch keeps the inputs of the branches its routed batch took."""
        found = self.convergence.get(st.spec.name)
        heads = [o[0] for o in origins if o]
        if found is None or not heads:
            return inputs, origins, keys
        router, branches = found
        chosen = self.decisions[router].get(min(heads))
        if chosen is None:
            return inputs, origins, keys
        keep = [i for i, targets in enumerate(branches) if targets & set(chosen)]
        return [inputs[i] for i in keep], [origins[i] for i in keep], [keys[i] for i in keep] if keys else keys


def convergence_steps(specs: Mapping[str, StepSpec], routers: set[str]) -> dict[str, tuple[str, list[frozenset[str]]]]:
    """Steps joining the branches of a routing step: step -> (the routing step, for each of its
    predecessors the routed successors that predecessor's rows come through)."""
    domain: dict[str, str] = {}
    through: dict[str, frozenset[str]] = {}  # step -> the routed successors its rows come through
    for name, spec in specs.items():  # in topological order
        if spec.kind != "normal" or not spec.predecessors or name in routers:
            domain[name] = name
            continue
        domain[name] = domain[spec.predecessors[0]]
        targets: set[str] = set()
        for p in spec.predecessors:
            targets |= {name} if p in routers else through.get(p, frozenset())
        through[name] = frozenset(targets)
    found: dict[str, tuple[str, list[frozenset[str]]]] = {}
    for name, spec in specs.items():
        source = domain.get(spec.predecessors[0]) if spec.predecessors else None
        if spec.kind == "normal" and len(spec.predecessors) > 1 and source in routers:
            branches = [frozenset({name}) if p in routers else through.get(p, frozenset()) for p in spec.predecessors]
            found[name] = (source, branches)
    return found
