"""A task's window of rows: while one batch waits on a slow answer, the rows of later batches are
asked (up to ``max_rows_in_flight``), and results keep their order and batches their boundaries."""

from __future__ import annotations

import pytest

from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


def _asked_before_the_straggler(server, tmp_path, **task_kw) -> tuple[int, list[str], list[str]]:
    """How many requests the server had seen when the first slow one was answered: rows 0, 4 and 8,
    the first of each of the first three batches, each wait 2 s."""
    prompts = [f"q{i} straggler [[delay:2]]" if i in (0, 4, 8) else f"q{i}" for i in range(40)]
    seen: list[int] = []

    def responder(body: dict) -> None:
        if "straggler" in body["messages"][-1]["content"]:
            seen.append(server.total_requests)
        return None

    server.configure(responder=responder)
    try:
        llm = OpenAILLM(model="test-model", base_url=server.base_url, api_key="sk-test", max_concurrency=4)
        with Pipeline(name=f"window-{task_kw}", cache_dir=tmp_path / "cache") as pipeline:
            LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=4) >> TextGeneration(
                name="gen", llm=llm, input_batch_size=4, **task_kw)
        rows = pipeline.run(use_cache=False)["default"]["train"].to_list()
    finally:
        server.configure(responder=None)
    return seen[0], prompts, [r["instruction"] for r in rows]


def test_later_batches_are_asked_while_a_batch_waits_on_a_straggler(server, tmp_path):
    asked, prompts, order = _asked_before_the_straggler(server, tmp_path)
    assert asked == 40  # every row was asked while three batches waited (the default window: 128 rows)
    assert order == prompts


def test_the_window_bounds_what_is_asked_ahead(server, tmp_path):
    asked, prompts, order = _asked_before_the_straggler(server, tmp_path, max_rows_in_flight=12)
    assert asked == 12  # three batches of 4, each holding a straggler: nothing more is asked
    assert order == prompts
