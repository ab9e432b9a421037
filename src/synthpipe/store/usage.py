"""Tokens and cost of a run: counted from what the run itself computed, priced only by the user.

Usage comes from two places the coordinator already sees: each finished batch's rows (the
``statistics_<step>`` entries tasks put in the metadata column: every answer the step used,
served from the response cache or not) and the fresh answers workers hand it for the response
cache (the ones paid for in this run). A resumed run reuses stored batches without persisting
them again, so nothing is counted twice. Prices are never guessed: a model without one has an
unknown cost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from synthpipe.errors import SynthpipeUserError

METADATA_COLUMN = "synthpipe_metadata"  # as the tasks write it (steps/tasks/base.py)
PER_TOKENS = 1_000_000  # prices are per million tokens

Prices = dict[str, dict[str, float]]
"""``{model name: {"input": price per 1M input tokens, "output": price per 1M output tokens}}``."""


def load_prices(prices: Union[Prices, str, os.PathLike[str], None]) -> Prices:
    """Prices given as a dict or as a YAML/JSON file of that dict (``SYNTHPIPE_PRICES`` names
    one when the pipeline gives none). Malformed entries are an error, not a silent zero."""
    if prices is None:
        env = os.environ.get("SYNTHPIPE_PRICES")
        if not env:
            return {}
        prices = env
    if isinstance(prices, (str, os.PathLike)):
        import yaml

        path = Path(prices).expanduser()
        try:
            prices = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SynthpipeUserError(f"prices file {str(path)!r} cannot be read: {exc}") from None
    if not isinstance(prices, dict):
        raise SynthpipeUserError("prices must map a model name to {'input': ..., 'output': ...} (per million tokens)")
    checked: Prices = {}
    for model, entry in prices.items():
        if not isinstance(entry, dict) or not set(entry) <= {"input", "output"} or not entry:
            raise SynthpipeUserError(f"prices for {model!r} must be {{'input': ..., 'output': ...}} per million "
                                     f"tokens, not {entry!r}")
        try:
            checked[str(model)] = {k: float(v) for k, v in entry.items()}
        except (TypeError, ValueError):
            raise SynthpipeUserError(f"prices for {model!r} must be numbers, not {entry!r}") from None
    return checked


def _sum(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_sum(v) for v in value)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _money(value: Any) -> float | None:
    """The sum of a provider's reported costs, None when it reports none."""
    if isinstance(value, (list, tuple)):
        parts = [_money(v) for v in value]
        known = [p for p in parts if p is not None]
        return sum(known) if known else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _model_parts(value: Any) -> list[dict[str, Any]]:
    """The per-model split a composite LLM reports (``statistics["models"]``), flattened over
    generations: ``[{"model", "input_tokens", "output_tokens"}, ...]``."""
    if isinstance(value, dict):
        return [value] if "model" in value else []
    if isinstance(value, (list, tuple)):
        return [part for v in value for part in _model_parts(v)]
    return []


def _add(usage: dict[str, list[Any]], model: str, stats: dict[str, Any], count: int) -> None:
    entry = usage.setdefault(model, [0, 0, 0, None])
    entry[0] += _sum(stats.get("input_tokens"))
    entry[1] += _sum(stats.get("output_tokens"))
    entry[2] += count
    cost = _money(stats.get("cost"))
    if cost is not None:
        entry[3] = (entry[3] or 0.0) + cost


def split_usage(stats: dict[str, Any], model: str, count: int = 1) -> dict[str, list[Any]]:
    """``{model: [input tokens, output tokens, count, reported cost]}`` of one row's (or one
    answer's) statistics: per model where a composite LLM split them, else all ``model``'s."""
    usage: dict[str, list[Any]] = {}
    parts = _model_parts(stats.get("models"))
    if parts:
        for part in parts:
            _add(usage, str(part["model"]), part, 0)
        for name in usage:
            usage[name][2] = count
    else:
        _add(usage, model, stats, count)
    return usage


def rows_usage(step: str, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """``{model: [input tokens, output tokens, rows with usage, reported cost]}`` that ``step`` used for
    these output rows (statistics of earlier steps, carried along in the metadata, are not
    counted again)."""
    usage: dict[str, list[Any]] = {}
    key = f"statistics_{step}"
    for row in rows:
        meta = row.get(METADATA_COLUMN)
        stats = meta.get(key) if isinstance(meta, dict) else None
        if not isinstance(stats, dict):
            continue
        _merge(usage, split_usage(stats, str(row.get("model_name") or "unknown model")))
    return usage


def _merge(into: dict[str, list[Any]], more: dict[str, list[Any]]) -> None:
    for model, (tokens_in, tokens_out, count, cost) in more.items():
        entry = into.setdefault(model, [0, 0, 0, None])
        entry[0] += tokens_in
        entry[1] += tokens_out
        entry[2] += count
        if cost is not None:
            entry[3] = (entry[3] or 0.0) + cost


def answers_usage(answers: list[tuple[str, Any]], model: str) -> dict[str, list[Any]]:
    """``{model: [input tokens, output tokens, answers, reported cost or None]}`` of fresh answers
    (all ``model``'s, unless an answer splits its tokens per model)."""
    usage: dict[str, list[Any]] = {}
    for _, answer in answers:
        stats = answer.get("statistics") if isinstance(answer, dict) else None
        _merge(usage, split_usage(stats if isinstance(stats, dict) else {}, model))
    return usage


@dataclass
class ModelUsage:
    """One step's use of one model in one run. ``paid_*``: tokens of answers asked for in this
    run (None where the step's answers are not seen fresh, e.g. no response cache)."""

    step: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    rows: int = 0
    paid_input: int | None = None
    paid_output: int | None = None
    requests: int = 0
    reported_cost: float | None = None  # the provider's own figure, over the rows
    paid_reported_cost: float | None = None  # the same, over the answers asked for in this run

    @property
    def cached_tokens(self) -> int | None:
        if self.paid_input is None or self.paid_output is None:
            return None
        return max(0, self.input_tokens + self.output_tokens - self.paid_input - self.paid_output)

    def cost(self, prices: Prices) -> float | None:
        """Money for the tokens paid in this run, at the user's price, else as the provider
        reported it; None when neither is known."""
        price = prices.get(self.model)
        if price is None or "input" not in price or "output" not in price:
            if self.reported_cost is None and self.paid_reported_cost is None:
                return None
            if self.paid_input is not None:  # answers are seen fresh: only theirs were paid
                return self.paid_reported_cost or 0.0
            return self.reported_cost
        tokens_in = self.paid_input if self.paid_input is not None else self.input_tokens
        tokens_out = self.paid_output if self.paid_output is not None else self.output_tokens
        return (tokens_in * price["input"] + tokens_out * price["output"]) / PER_TOKENS

    def to_json(self, prices: Prices) -> dict[str, Any]:
        return {"step": self.step, "model": self.model, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "rows": self.rows, "paid_input": self.paid_input,
                "paid_output": self.paid_output, "requests": self.requests, "cached_tokens": self.cached_tokens,
                "cost": self.cost(prices)}


@dataclass
class UsageTally:
    """The coordinator's running count for one run."""

    prices: Prices = field(default_factory=dict)
    namespaces: dict[str, tuple[str, str]] = field(default_factory=dict)  # response namespace -> (step, model)
    entries: dict[tuple[str, str], ModelUsage] = field(default_factory=dict)

    def _entry(self, step: str, model: str) -> ModelUsage:
        entry = self.entries.get((step, model))
        if entry is None:
            entry = self.entries[(step, model)] = ModelUsage(step, model)
        return entry

    def add_rows(self, step: str, rows: list[dict[str, Any]]) -> dict[str, list[int]]:
        usage = rows_usage(step, rows)
        for model, (tokens_in, tokens_out, count, cost) in usage.items():
            entry = self._entry(step, model)
            entry.input_tokens += tokens_in
            entry.output_tokens += tokens_out
            entry.rows += count
            if cost is not None:
                entry.reported_cost = (entry.reported_cost or 0.0) + cost
        return usage

    def add_answers(self, namespace: str, answers: list[tuple[str, Any]], step: str | None = None) -> None:
        """Fresh answers of ``step`` (the one that asked: two steps may share a model set-up,
        and so a namespace), else of the step the namespace was first watched for."""
        first, model = self.namespaces.get(namespace, (namespace, namespace))
        step = step or first
        for name, (tokens_in, tokens_out, count, cost) in answers_usage(answers, model).items():
            entry = self._entry(step, name)
            entry.paid_input = (entry.paid_input or 0) + tokens_in
            entry.paid_output = (entry.paid_output or 0) + tokens_out
            entry.requests += count
            if cost is not None:
                entry.paid_reported_cost = (entry.paid_reported_cost or 0.0) + cost

    def watch(self, namespace: str, step: str, model: str, parts: list[str] | None = None) -> None:
        """Answers of this response namespace are ``step``'s use of ``model`` (or of ``parts``,
        the models a composite LLM calls): their paid count starts at zero (every answer it used
        came from the cache until one is asked for)."""
        self.namespaces.setdefault(namespace, (step, model))
        for name in parts or [model]:
            entry = self._entry(step, name)
            entry.paid_input = entry.paid_input or 0
            entry.paid_output = entry.paid_output or 0

    @property
    def paid_tokens(self) -> int:
        return sum((e.paid_input if e.paid_input is not None else e.input_tokens)
                   + (e.paid_output if e.paid_output is not None else e.output_tokens)
                   for e in self.entries.values())

    def cost(self) -> tuple[float, bool]:
        """(money known so far, whether every model used has a price)."""
        total, complete = 0.0, True
        for entry in self.entries.values():
            if entry.input_tokens + entry.output_tokens + (entry.paid_input or 0) + (entry.paid_output or 0) == 0:
                continue
            value = entry.cost(self.prices)
            if value is None:
                complete = False
            else:
                total += value
        return total, complete

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json(self.prices) for e in self.entries.values()
                if e.input_tokens or e.output_tokens or e.paid_input or e.paid_output]


def totals(usage: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's tokens and cost from its stored usage entries (cost None when any is unknown)."""
    tokens = sum(int(u.get("input_tokens") or 0) + int(u.get("output_tokens") or 0) for u in usage)
    paid = sum((u["paid_input"] if u.get("paid_input") is not None else int(u.get("input_tokens") or 0))
               + (u["paid_output"] if u.get("paid_output") is not None else int(u.get("output_tokens") or 0))
               for u in usage)
    costs = [u.get("cost") for u in usage]
    cost = None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]
    return {"tokens": tokens, "paid_tokens": paid, "cost": cost if usage else 0.0}


def dumps(value: Any) -> str:
    return json.dumps(value, default=repr)
