"""The run layer's accounting for one execution: the run record, tokens and cost, the budget.

``Accounting`` sits between the executor's hooks and the store: the runner hands it what it
already sees (batches sent and stored, fresh LLM answers) and asks it, on each tick, whether
the budget says stop. It starts no work and never raises into the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from synthpipe.errors import SynthpipeError, SynthpipeUserError
from synthpipe.models.cache import RESPONSE, namespace_of
from synthpipe.models.telemetry import LLM_STATS
from synthpipe.store.run_record import RunRecorder
from synthpipe.store.usage import Prices, UsageTally, load_prices

if TYPE_CHECKING:
    from synthpipe.pipeline.plan import Plan

logger = logging.getLogger("synthpipe")


class BudgetReached(SynthpipeError):
    """The run stopped (gracefully, every finished batch kept) before passing ``max_budget``."""


@dataclass(frozen=True)
class Budget:
    """A limit on money (``cost``, in the prices' currency) or on paid tokens (``tokens``)."""

    cost: float | None = None
    tokens: int | None = None

    @classmethod
    def parse(cls, value: Union[float, int, dict[str, Any], Budget, None]) -> Budget | None:
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, bool):
            raise SynthpipeUserError("max_budget must be money (a number), {'cost': X} or {'tokens': N}")
        if isinstance(value, (int, float)):
            return cls(cost=float(value))
        if isinstance(value, dict) and len(value) == 1 and set(value) <= {"cost", "tokens"}:
            key, amount = next(iter(value.items()))
            if isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0:
                return cls(cost=float(amount)) if key == "cost" else cls(tokens=int(amount))
        raise SynthpipeUserError(f"max_budget must be money (a number), {{'cost': X}} or {{'tokens': N}}, "
                                 f"a positive amount; not {value!r}")

    def describe(self) -> str:
        return f"{self.cost:g} (money)" if self.cost is not None else f"{self.tokens:,} tokens"


def _models(plan: Plan) -> list[tuple[str, Any]]:
    found = []
    for name in plan.order:
        step = plan.step(name)
        as_run = getattr(step, "llm_as_run", None)  # a task's LLM with the schema its worker adds
        llm = as_run() if callable(as_run) else getattr(step, "llm", None)
        if llm is not None and hasattr(llm, "model_name"):
            found.append((name, llm))
    return found


class Accounting:
    def __init__(self, plan: Plan, pipeline_name: str, store_root: Path, run_dir: Path, durable: bool,
                 prices: Union[Prices, str, None], max_budget: Any) -> None:
        self.prices = load_prices(prices)
        self.budget = Budget.parse(max_budget)
        self.tally = UsageTally(self.prices)
        for step, llm in _models(plan) if durable else []:  # a dry run keeps no answers: all are paid
            try:
                self.tally.watch(namespace_of(llm), step, str(llm.model_name))
            except Exception:  # a model whose set-up cannot be hashed is simply not followed
                continue
        if self.budget is not None and self.budget.cost is not None:
            unpriced = sorted({str(llm.model_name) for _, llm in _models(plan)
                               if str(llm.model_name) not in self.prices})
            if unpriced:
                raise SynthpipeUserError(
                    f"max_budget={self.budget.cost:g} is money, but there is no price for {', '.join(unpriced)}; "
                    "give Pipeline(prices={model: {'input': X, 'output': Y}}) per million tokens, "
                    "or a token budget: max_budget={'tokens': N}")
        steps = {name: {"class": f"{type(plan.step(name)).__module__}.{type(plan.step(name)).__qualname__}",
                        "after": plan.dag.predecessors(name)} for name in plan.order}
        self.recorder = RunRecorder(run_dir, pipeline_name, store_root, steps, self.tally, durable)
        if self.budget is not None:
            self.recorder.info["budget"] = {"cost": self.budget.cost, "tokens": self.budget.tokens}
        self.stopped_by_budget = False
        self.clients: dict[str, dict[str, Any]] = {}  # the latest counters of each worker's HTTP client
        # Token statistics are written by steps with a model (tasks): only their rows are read for them,
        # not every row of every step (at 1,000-row batches that reading was a sixth of the coordinator's time).
        self._with_model = {name for name in plan.order if getattr(plan.step(name), "llm", None) is not None}
        self._batches_with_usage = 0

    # -- what the runner hands over ---------------------------------------------------------

    def sent(self, step: str, replica: int, seq: int) -> None:
        self.recorder.sent(step, replica, seq)

    def flush(self) -> None:
        """Write out the batch lines of the run record gathered since the last flush."""
        self.recorder.flush()

    def stored(self, step: str, seq: int, rows: list[dict[str, Any]], inputs: int, failed: int) -> None:
        if self.recorder.stored(step, seq, rows, inputs, failed, with_model=step in self._with_model):
            self._batches_with_usage += 1

    def llm_activity(self) -> dict[str, dict[str, int]]:
        """Per model, over every worker: requests in flight, sent, retried, answered 429, failed."""
        found: dict[str, dict[str, int]] = {}
        for client in self.clients.values():
            entry = found.setdefault(client["model"], {"in_flight": 0, "requests": 0, "retries": 0, "http_429": 0,
                                                       "failed": 0})
            for name in entry:
                entry[name] += int(client.get(name) or 0)
        return found

    def record(self, kind: str, payload: Any) -> None:
        if kind == LLM_STATS and isinstance(payload, dict) and "key" in payload:
            self.clients[str(payload["key"])] = payload
            return
        if kind == RESPONSE:
            try:
                self.tally.add_answers(payload[0], payload[1])
            except Exception:
                pass

    # -- the budget ---------------------------------------------------------------------------

    def spent(self) -> float:
        if self.budget is None:
            return 0.0
        return self.tally.cost()[0] if self.budget.cost is not None else float(self.tally.paid_tokens)

    def over_budget(self, in_flight: int) -> bool:
        """True (once) when what was spent, plus what the batches in flight are expected to cost
        (at the average so far), would reach the budget."""
        if self.budget is None or self.stopped_by_budget:
            return False
        limit = self.budget.cost if self.budget.cost is not None else float(self.budget.tokens or 0)
        spent = self.spent()
        per_batch = spent / self._batches_with_usage if self._batches_with_usage else 0.0
        if spent + per_batch * in_flight < limit:
            return False
        self.stopped_by_budget = True
        logger.warning("synthpipe: budget %s: %s spent, about %s more in the %d batch(es) in flight; "
                       "stopping as for Ctrl+C", self.budget.describe(), _amount(spent, self.budget),
                       _amount(per_batch * in_flight, self.budget), in_flight)
        self.recorder.write()
        return True

    def budget_error(self) -> BudgetReached:
        assert self.budget is not None
        return BudgetReached(
            f"stopped before passing the budget of {self.budget.describe()}: {_amount(self.spent(), self.budget)} "
            "spent in this run; every finished batch is kept. Run again (with a new max_budget) to resume.")

    def finish(self, status: str, rows: dict[str, int], failed_rows: int) -> None:
        if self.stopped_by_budget and status != "finished":
            status = "budget"
        self.recorder.finish(status, rows, failed_rows, llm=self.llm_activity())

    def summary(self) -> str | None:
        """One line of tokens and cost for the end of a run (None when no model was used)."""
        usage = self.tally.to_json()
        if not usage:
            return None
        tokens = sum(u["input_tokens"] + u["output_tokens"] for u in usage)
        cached = sum(u["cached_tokens"] or 0 for u in usage)
        cost, complete = self.tally.cost()
        money = f"cost {cost:.4f}" if complete else ("cost unknown (no price for some models)" if cost == 0
                                                      else f"cost {cost:.4f} + unknown (no price for some models)")
        return f"  tokens {tokens:,} ({cached:,} served from the response cache, not paid); {money}"


def _amount(value: float, budget: Budget) -> str:
    return f"{value:.4f}" if budget.cost is not None else f"{int(value):,} tokens"
