"""The run layer's accounting for one execution: the run record, tokens and cost, the budget.

``Accounting`` sits between the executor's hooks and the store: the runner hands it what it
already sees (batches sent and stored, fresh LLM answers) and asks it, before each batch of a
model step is sent, whether the budget lets it go. It starts no work and never raises into the run.

The budget is an admission gate, not an alarm: a batch is held back when what was spent, plus
what the batches already running are expected to cost, plus what this one is expected to cost,
would pass the budget; the run then stops as for Ctrl+C. A step's cost per row is learnt from
its answers so far (paid ones: each fresh answer arrives before its batch ends); until a step
has one, its batches go one at a time, so a first guess can overshoot by one batch at most.
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
from synthpipe.store.usage import ModelUsage, Prices, UsageTally, load_prices

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


def _priced_names(llm: Any) -> list[str]:
    """The model names an LLM's tokens are counted (and priced) under."""
    parts = getattr(llm, "component_models", None)
    return [str(n) for n in parts()] if callable(parts) else [str(llm.model_name)]


class Accounting:
    def __init__(self, plan: Plan, pipeline_name: str, store_root: Path, run_dir: Path, durable: bool,
                 prices: Union[Prices, str, None], max_budget: Any) -> None:
        self.prices = load_prices(prices)
        self.budget = Budget.parse(max_budget)
        self.tally = UsageTally(self.prices)
        for step, llm in _models(plan) if durable else []:  # a dry run keeps no answers: all are paid
            try:
                self.tally.watch(namespace_of(llm), step, str(llm.model_name), _priced_names(llm))
            except Exception:  # a model whose set-up cannot be hashed is simply not followed
                continue
        if self.budget is not None and self.budget.cost is not None:
            unpriced = sorted({name for _, llm in _models(plan) for name in _priced_names(llm)
                               if name not in self.prices})
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
        self.model_steps = {name for name, _ in _models(plan)}
        self.batch_sizes = {name: int(getattr(plan.step(name), "batch_size", 0) or 0) for name in plan.order}
        self.on_stop: Any = lambda: None  # the runner's: ask for a graceful stop

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
                self.tally.add_answers(payload[0], payload[1], payload[2] if len(payload) > 2 else None)
            except Exception:
                pass

    # -- the budget ---------------------------------------------------------------------------

    def spent(self) -> float:
        if self.budget is None:
            return 0.0
        return self.tally.cost()[0] if self.budget.cost is not None else float(self.tally.paid_tokens)

    def _limit(self) -> float:
        assert self.budget is not None
        return self.budget.cost if self.budget.cost is not None else float(self.budget.tokens or 0)

    def _spend(self, usage: ModelUsage, paid: bool) -> float:
        """What one entry cost, in the budget's unit: what was paid in this run, or (``paid``
        False) all its tokens as if paid, for a rate learnt from answers served by the cache."""
        if not paid:
            usage = ModelUsage(usage.step, usage.model, usage.input_tokens, usage.output_tokens,
                               reported_cost=usage.reported_cost)
        if self.budget is not None and self.budget.cost is not None:
            return usage.cost(self.prices) or 0.0
        if usage.paid_input is not None and usage.paid_output is not None:
            return float(usage.paid_input + usage.paid_output)
        return float(usage.input_tokens + usage.output_tokens)

    def per_row(self, step: str) -> float | None:
        """What one row of ``step`` is expected to cost, from its answers so far (None: no answer yet)."""
        entries = [e for e in self.tally.entries.values() if e.step == step]
        asked = max((e.requests for e in entries), default=0)
        if asked:
            return sum(self._spend(e, paid=True) for e in entries) / asked
        rows = max((e.rows for e in entries), default=0)
        if rows:
            return sum(self._spend(e, paid=False) for e in entries) / rows
        return None

    def _expected(self, step: str, rows: int) -> float:
        rate = self.per_row(step)
        return (rate or 0.0) * (rows or self.batch_sizes.get(step, 0))

    def admit(self, step: str, rows: int, running: list[tuple[str, int]]) -> bool:
        """Whether a batch of ``rows`` rows (0: a generator's batch) of ``step`` may be sent,
        given the jobs ``running``. False for a step with no cost per row yet while one of its
        batches runs (it goes when that one is back), and, once the budget would be passed,
        for every model step: the run stops."""
        if self.budget is None or step not in self.model_steps:
            return True
        if self.stopped_by_budget:
            return False
        spent, limit = self.spent(), self._limit()
        pending = sum(self._expected(s, r) for s, r in running if s in self.model_steps)
        if self.per_row(step) is None:  # nothing to go on yet (a generator's requests are not held)
            if spent + pending < limit:
                return rows == 0 or not any(s == step for s, _ in running)
            wanted = 0.0
        else:
            wanted = self._expected(step, rows)
            if spent + pending + wanted <= limit:
                return True
        self._stop(spent, pending, wanted, len(running))
        return False

    def over_budget(self, in_flight: int) -> bool:
        """True (once) when what was spent has passed the budget (the gate missed: a first
        batch with no cost per row to go on); reaching it exactly lets a run that has nothing
        left to send finish."""
        if self.budget is None or self.stopped_by_budget:
            return False
        spent = self.spent()
        if spent <= self._limit():
            return False
        self._stop(spent, 0.0, 0.0, in_flight)
        return True

    def _stop(self, spent: float, pending: float, wanted: float, running: int) -> None:
        assert self.budget is not None
        self.stopped_by_budget = True
        logger.warning("synthpipe: budget %s: %s spent, about %s more in the %d batch(es) running and %s for the "
                       "next one; sending no more, stopping as for Ctrl+C", self.budget.describe(),
                       _amount(spent, self.budget), _amount(pending, self.budget), running,
                       _amount(wanted, self.budget))
        self.recorder.write()
        self.on_stop()

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
