"""Math-Shepherd (generator, completer with hard estimation) and FormatPRM in real pipelines
against the OpenAI-compatible test server, structured and text modes, malformed answers."""

from __future__ import annotations

import json

import pytest

from synthpipe.errors import PipelineValidationError
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import FormatPRM, MathShepherdCompleter, MathShepherdGenerator

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]

PROBLEM = "Tom has 3 bags of 4 apples and eats 2. How many are left?"
GOLDEN = "Step 1: He has 3 * 4 = <<3*4=12>>12 apples.\nStep 2: 12 - 2 = <<12-2=10>>10.\nThe answer is: 10"
WRONG = "Step 1: He has 3 + 4 = 7 apples.\nStep 2: 7 - 2 = 5.\nThe answer is: 5"


@pytest.fixture
def srv(server):
    yield server
    server.configure(answers=[], responder=None)


def _llm(server) -> OpenAILLM:
    return OpenAILLM(model="test-model", base_url=server.base_url, api_key="k", max_retries=1, retry_base_delay=0.01)


def _rows(distiset, leaf="default") -> list[dict]:
    return distiset[leaf]["train"].to_list()


def test_generator_golden_and_candidate_solutions_in_both_modes(srv):
    srv.configure(answers=[
        (r"Write 2 different solutions.*separated.*Tom", f"{GOLDEN}\n---\n{WRONG}"),
        (r"Write 2 different solutions.*Tom", json.dumps({"solutions": [{"solution": GOLDEN}, {"solution": WRONG}]})),
        (r"Write 2 different solutions.*broken", json.dumps({"solutions": [{"solution": GOLDEN}]})),  # one, not 2
        (r"Solve this problem.*Tom", GOLDEN),
        (r"Solve this problem.*broken", "I do not know."),
    ])
    data = [{"instruction": PROBLEM}, {"instruction": "broken problem"}]
    with Pipeline(name="shepherd-gen") as pipeline:
        golden = LoadDataFromDicts(name="a", data=data)
        golden >> MathShepherdGenerator(name="golden", llm=_llm(srv), use_default_structured_output=False)
        LoadDataFromDicts(name="b", data=data) >> MathShepherdGenerator(name="structured", llm=_llm(srv), M=2)
        LoadDataFromDicts(name="c", data=data[:1]) >> MathShepherdGenerator(
            name="text", llm=_llm(srv), M=2, use_default_structured_output=False)
    result = pipeline.run()
    (row,) = _rows(result, "golden")
    assert row["golden_solution"] == ["Step 1: He has 3 * 4 = <<3*4=12>>12 apples.", "Step 2: 12 - 2 = <<12-2=10>>10.",
                                      "The answer is: 10"]
    assert "<<4*12=48>>48" in row["synthpipe_metadata"]["raw_input_golden"][0]["content"]  # the GSM8K rules
    for leaf in ("structured", "text"):
        (row,) = _rows(result, leaf)
        assert [s[-1] for s in row["solutions"]] == ["The answer is: 10", "The answer is: 5"]
    failed = {(f["step"], f["data"]["instruction"]): f["message"] for f in result.failed_rows}
    assert set(failed) == {("golden", "broken problem"), ("structured", "broken problem")}
    assert "I do not know." in failed[("golden", "broken problem")]
    assert "expected 2 solution(s), found 1" in failed[("structured", "broken problem")]


def test_completer_labels_steps_by_hard_estimation_and_fpr_formats_them(srv):
    # completions after step 1 of the right solution reach 10; after step 1 of the wrong one, only 5
    srv.configure(answers=[
        (r"Problem: broken", "nonsense without steps"),
        (r"Step 1: He has 3 \* 4",
         "Step 2: 12 - 2 = 10.\nThe answer is: 10\n---\nStep 2: 12 + 2 = 14.\nThe answer is: 14"),
        (r"Step 1: He has 3 \+ 4", "Step 2: 7 - 2 = 5.\nThe answer is: 5\n---\nStep 2: 7 + 2 = 9.\nThe answer is: 9"),
    ])
    split = lambda t: t.split("\n")  # noqa: E731
    rows = [{"instruction": PROBLEM, "golden_solution": split(GOLDEN), "solutions": [split(GOLDEN), split(WRONG)]},
            {"instruction": "broken", "golden_solution": split(GOLDEN), "solutions": [split(GOLDEN)]}]
    with Pipeline(name="shepherd-complete") as pipeline:
        load = LoadDataFromDicts(data=rows)
        labels = MathShepherdCompleter(name="label", llm=_llm(srv), N=2, use_default_structured_output=False)
        load >> labels
    result = pipeline.run()
    (row,) = _rows(result)
    good, bad = row["solutions"]
    assert good == ["Step 1: He has 3 * 4 = <<3*4=12>>12 apples. +",
                    "Step 2: 12 - 2 = <<12-2=10>>10. The answer is: 10 +"]
    assert bad == ["Step 1: He has 3 + 4 = 7 apples. -", "Step 2: 7 - 2 = 5. The answer is: 5 -"]
    (failed,) = result.failed_rows
    assert failed["data"]["instruction"] == "broken" and "nonsense without steps" in failed["message"]

    with Pipeline(name="prm") as pipeline:
        data = LoadDataFromDicts(data=[{"instruction": PROBLEM, "solutions": good}, {"instruction": PROBLEM,
                                                                                    "solutions": bad}])
        data >> FormatPRM(name="shepherd")
        data >> FormatPRM(name="trl", format="trl")
    formatted = pipeline.run()
    first = _rows(formatted, "shepherd")[0]
    assert first["input"] == f"{PROBLEM} Step 1: He has 3 * 4 = <<3*4=12>>12 apples. ки\n" \
                             "Step 2: 12 - 2 = <<12-2=10>>10. The answer is: 10 ки"
    assert first["label"] == f"{PROBLEM} " + "\n".join(good)
    trl = _rows(formatted, "trl")
    assert trl[1]["prompt"] == PROBLEM and trl[1]["labels"] == [False, False]
    assert trl[0]["completions"][0] == "Step 1: He has 3 * 4 = <<3*4=12>>12 apples."
    assert trl[0]["labels"] == [True, True]


def test_completer_in_structured_mode_and_a_malformed_json_completion(srv):
    srv.configure(answers=[
        (r"Problem: broken", '{"solutions": [{"solution": "Step 2'),
        (r"Step 1: He has 3 \* 4", json.dumps({"solutions": [{"solution": "Step 2: 10.\nThe answer is: 10."}]})),
    ])
    rows = [{"instruction": PROBLEM, "golden_solution": GOLDEN, "solutions": json.dumps([GOLDEN.split("\n")])},
            {"instruction": "broken", "golden_solution": GOLDEN, "solutions": [GOLDEN.split("\n")]}]
    with Pipeline(name="shepherd-structured") as pipeline:
        LoadDataFromDicts(data=rows) >> MathShepherdCompleter(name="label", llm=_llm(srv))
    result = pipeline.run()
    (row,) = _rows(result)
    assert row["solutions"][0][0].endswith(" +")
    (failed,) = result.failed_rows
    assert failed["data"]["instruction"] == "broken" and '"solution": "Step 2' in failed["message"]
    bodies = [r["body"] for r in srv.state.recent_requests()]
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)


def test_missing_columns_and_bad_solutions_are_named(srv):
    with Pipeline(name="shepherd-missing") as pipeline:
        LoadDataFromDicts(data=[{"instruction": PROBLEM}]) >> MathShepherdCompleter(name="label", llm=_llm(srv))
    with pytest.raises(PipelineValidationError, match="golden_solution|solutions"):
        pipeline.run()
    assert srv.total_requests == 0
    with Pipeline(name="prm-bad") as pipeline:
        LoadDataFromDicts(data=[{"instruction": PROBLEM, "solutions": ["Step 1: x"]}]) >> FormatPRM(name="fmt")
    with pytest.raises(Exception, match="fmt.*does not end in one of the tags"):
        pipeline.run()


def test_a_completer_row_that_failed_is_asked_again_by_retry_failed(srv):
    srv.configure(answers=[(r"Problem: Tom", "no steps at all")])
    rows = [{"instruction": PROBLEM, "golden_solution": GOLDEN.split("\n"), "solutions": [GOLDEN.split("\n")]}]
    with Pipeline(name="shepherd-retry") as pipeline:
        LoadDataFromDicts(data=rows) >> MathShepherdCompleter(name="label", llm=_llm(srv),
                                                              use_default_structured_output=False)
    first = pipeline.run()
    assert len(first.failed_rows) == 1 and "no steps at all" in first.failed_rows[0]["message"]
    srv.configure(answers=[(r"Problem: Tom", "Step 2: 12 - 2 = 10.\nThe answer is: 10")])
    retried = pipeline.run(retry_failed=True)
    assert retried.failed_rows == []
    (row,) = _rows(retried)
    assert row["solutions"][0][0].endswith(" +")


@pytest.mark.timeout(300)
def test_generator_on_a_tiny_llama_cpp_model_keeps_every_row_accounted_for(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from synthpipe.models.llamacpp import LlamaCppLLM

    problems = [{"instruction": f"{PROBLEM} ({i})"} for i in range(3)]
    with Pipeline(name="shepherd-tiny") as pipeline:
        LoadDataFromDicts(data=problems) >> MathShepherdGenerator(
            name="gen", llm=LlamaCppLLM(model_path=str(tiny_gguf), n_ctx=1024, n_threads=1), M=2)
    result = pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_new_tokens": 80}}}})
    rows = _rows(result) if "default" in result else []
    assert len(rows) + len(result.failed_rows) == len(problems)
    for row in rows:
        assert len(row["solutions"]) == 2 and all(isinstance(s, list) and s for s in row["solutions"])
    for failed in result.failed_rows:  # random text has no "Step i:": the raw output is kept
        assert "raw output" in failed["message"]
