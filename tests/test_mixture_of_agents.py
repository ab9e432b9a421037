"""MixtureOfAgentsLLM inside a real pipeline against the OpenAI-compatible test server:
rounds see the previous round's answers, the aggregator sees the last round, failures stay
in their row, a structured output goes to the aggregator only."""

from __future__ import annotations

import re

import pytest

from synthpipe.errors import SynthpipeUserError
from synthpipe.models import MixtureOfAgentsLLM, OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration
from synthpipe.store.run_record import read_run
from usage_check import tally_of

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


def _respond(body: dict) -> str | None:
    messages = body.get("messages") or []
    if not messages or body.get("response_format"):
        return None
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    seen = sorted(set(re.findall(r"\b(p\d-r\d)\b", system)))
    model = body["model"]
    if model == "agg":
        return f"final from {'+'.join(seen)}"
    return f"{model}-r{2 if seen else 1}"


@pytest.fixture
def srv(server):
    server.configure(responder=_respond)
    yield server
    server.configure(answers=[], responder=None)


def _llm(server, model: str) -> OpenAILLM:
    return OpenAILLM(model=model, base_url=server.base_url, api_key="k", max_retries=1, retry_base_delay=0.01)


def _moa(server, rounds: int = 1, **kw) -> MixtureOfAgentsLLM:
    return MixtureOfAgentsLLM(aggregator_llm=_llm(server, "agg"), proposers_llms=[_llm(server, "p1"),
                                                                                 _llm(server, "p2")],
                              rounds=rounds, **kw)


def test_rounds_see_the_previous_answers_and_the_aggregator_the_last_round(srv):
    with Pipeline(name="moa") as pipeline:
        LoadDataFromDicts(data=[{"instruction": f"q{i}"} for i in range(3)]) >> TextGeneration(
            name="gen", llm=_moa(srv, rounds=2), num_generations=2, group_generations=True)
    result = pipeline.run()
    rows = result["default"]["train"].to_list()
    assert [r["instruction"] for r in rows] == ["q0", "q1", "q2"] and result.failed_rows == []
    for row in rows:
        assert row["generation"] == ["final from p1-r2+p2-r2"] * 2
        assert row["model_name"] == "moa-agg-p1-p2"
    assert srv.total_requests == 3 * 2 * (2 + 2 + 1)
    second_round = [r["body"] for r in srv.state.recent_requests() if r["body"]["model"] == "p1"
                    and r["body"]["messages"][0]["role"] == "system"]
    assert second_round and all("p1-r1" in b["messages"][0]["content"] and "p2-r1" in b["messages"][0]["content"]
                                for b in second_round)


def test_a_failing_proposer_fails_only_its_row_and_structured_output_goes_to_the_aggregator(srv):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    with Pipeline(name="moa-faults") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "fine"}, {"instruction": "bad [[500:always]]"}]) >> TextGeneration(
            name="gen", llm=_moa(srv, structured_output={"schema": schema}))
    result = pipeline.run()
    (row,) = result["default"]["train"].to_list()
    assert row["instruction"] == "fine" and row["generation"].startswith('{"answer"')
    (failed,) = result.failed_rows
    assert failed["data"]["instruction"].startswith("bad") and "500" in failed["message"]
    formats = {r["body"]["model"]: bool(r["body"].get("response_format")) for r in srv.state.recent_requests()
               if "fine" in str(r["body"]["messages"])}
    assert formats == {"agg": True, "p1": False, "p2": False}


def test_its_signature_follows_the_models_inside():
    a = MixtureOfAgentsLLM(aggregator_llm=OpenAILLM(model="agg", base_url="http://127.0.0.1:9/v1"),
                           proposers_llms=[OpenAILLM(model="p1", base_url="http://127.0.0.1:9/v1")])
    b = a.model_copy(deep=True)
    b.proposers_llms[0].generation_kwargs = {"temperature": 0.9}
    assert a.signature_fields() != b.signature_fields()
    with pytest.raises(ValueError):
        MixtureOfAgentsLLM(aggregator_llm=a.aggregator_llm, proposers_llms=[])


def test_every_call_of_the_mixture_is_counted_per_model_and_priced(srv):
    prices = {"agg": {"input": 1.0, "output": 2.0}, "p1": {"input": 3.0, "output": 4.0},
              "p2": {"input": 5.0, "output": 6.0}}
    with Pipeline(name="moa-usage", prices=prices) as pipeline:
        LoadDataFromDicts(data=[{"instruction": f"usage-q{i}"} for i in range(3)]) >> TextGeneration(
            name="gen", llm=_moa(srv, rounds=2), num_generations=2)
    result = pipeline.run()
    rows = result["default"]["train"].to_list()
    assert len(rows) == 6 and result.failed_rows == []
    want: dict[str, list[int]] = {}  # per model, the words the server counted as tokens
    for request in srv.state.recent_requests():
        body = request["body"]
        if "usage-q" in str(body.get("messages")):
            entry = want.setdefault(body["model"], [0, 0])
            entry[0] += sum(len(str(m["content"]).split()) for m in body["messages"])
            entry[1] += len(_respond(body).split())
    usage = tally_of(result)
    assert set(usage) == set(want) == {"agg", "p1", "p2"}  # the proposers' tokens too, each under its model
    for model, (tokens_in, tokens_out) in want.items():
        u = usage[model]
        assert (u["input_tokens"], u["output_tokens"], u["paid_input"], u["paid_output"]) == (
            tokens_in, tokens_out, tokens_in, tokens_out), model
        assert u["requests"] == 3  # one answer per input row (both its generations)
    stats = rows[0]["synthpipe_metadata"]["statistics_gen"]
    assert {m["model"] for m in stats["models"]} == {"agg", "p1", "p2"}
    assert stats["input_tokens"] == sum(m["input_tokens"] for m in stats["models"])
    cost = sum(want[m][0] * prices[m]["input"] + want[m][1] * prices[m]["output"] for m in want) / 1_000_000
    assert read_run(result.run_dir)["cost"] == pytest.approx(cost)


def test_a_money_budget_needs_a_price_for_every_model_inside():
    llm = MixtureOfAgentsLLM(aggregator_llm=OpenAILLM(model="agg", base_url="http://127.0.0.1:9/v1"),
                             proposers_llms=[OpenAILLM(model="p1", base_url="http://127.0.0.1:9/v1")])
    assert llm.component_models() == ["agg", "p1"]
    with Pipeline(name="moa-budget", prices={"agg": {"input": 1.0, "output": 1.0}}, max_budget=1.0) as pipeline:
        LoadDataFromDicts(data=[{"instruction": "q"}]) >> TextGeneration(name="gen", llm=llm)
    with pytest.raises(SynthpipeUserError, match="no price for p1"):
        pipeline.run()
