"""A check shared by the backend tests: the run's usage tally (run.json) holds exactly the
tokens the rows' statistics report, as paid (a fresh run asks for every answer)."""

from __future__ import annotations

from typing import Any

from synthpipe.store.run_record import read_run


def _total(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_total(v) for v in value)
    return int(value or 0)


def tally_of(distiset: Any) -> dict[str, dict[str, Any]]:
    """The run's usage entries, per model."""
    return {u["model"]: u for u in read_run(distiset.run_dir)["usage"]}


def assert_tally_matches_rows(distiset: Any, step: str = "gen", leaf: str = "default") -> dict[str, Any]:
    rows = distiset[leaf]["train"].to_list()
    assert rows, "no rows to check"
    tokens_in = sum(_total(r["synthpipe_metadata"][f"statistics_{step}"]["input_tokens"]) for r in rows)
    tokens_out = sum(_total(r["synthpipe_metadata"][f"statistics_{step}"]["output_tokens"]) for r in rows)
    assert tokens_in > 0 and tokens_out > 0
    [model] = {r["model_name"] for r in rows}
    entry = tally_of(distiset)[model]
    assert (entry["step"], entry["input_tokens"], entry["output_tokens"]) == (step, tokens_in, tokens_out)
    assert (entry["paid_input"], entry["paid_output"]) == (tokens_in, tokens_out), entry
    return entry
