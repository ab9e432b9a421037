"""Judges and scorers (UltraFeedback, PrometheusEval, QualityScorer, ComplexityScorer,
InstructionBacktranslation, CLAIR) in real pipelines against the OpenAI-compatible test server,
with the answer asked for as structured output (JSON) and as text, and with malformed answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import python_path
from synthpipe.errors import PipelineValidationError
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import (
    CLAIR,
    ComplexityScorer,
    InstructionBacktranslation,
    PrometheusEval,
    QualityScorer,
    UltraFeedback,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


@pytest.fixture(autouse=True)
def _no_scripted_answers(server):
    server.configure(answers=[], responder=None)
    yield
    server.configure(answers=[], responder=None)


def _llm(server) -> OpenAILLM:
    return OpenAILLM(model="judge-model", base_url=server.base_url, api_key="sk-test", max_retries=1,
                     retry_base_delay=0.01)


def run_task(server, task_cls, rows, name="judge", **task_kw):
    """``rows`` through ``task_cls`` in a pipeline; (good rows, failed rows, last request body)."""
    with Pipeline(name=name) as pipeline:
        load = LoadDataFromDicts(data=rows)
        load >> task_cls(name="task", llm=_llm(server), **task_kw)
    distiset = pipeline.run()
    good = distiset["default"]["train"].to_list() if "default" in distiset else []
    return good, distiset.failed_rows


def last_prompt(server) -> str:
    body = server.state.recent_requests()[-1]["body"]
    return "\n".join(m["content"] for m in body["messages"])


def last_format(server):
    return server.state.recent_requests()[-1]["body"].get("response_format")


# -- UltraFeedback ----------------------------------------------------------------------------

UF_ROWS = [{"instruction": f"question {i}", "generations": [f"answer {i}a", f"answer {i}b"]} for i in range(3)]


def test_ultrafeedback_overall_rating_structured(server):
    good_json = json.dumps({"assessments": [{"rating": 4, "rationale": "clear"}, {"rating": 2, "rationale": "vague"}]})
    server.configure(answers=[(r"question 1", '{"assessments": [{"rating": 4, "rationale": "x"}'),  # cut off
                              (r"question", good_json)])
    good, failed = run_task(server, UltraFeedback, UF_ROWS)
    assert [r["instruction"] for r in good] == ["question 0", "question 2"]
    assert good[0]["ratings"] == [4, 2] and good[0]["rationales"] == ["clear", "vague"]
    assert good[0]["model_name"] == "judge-model"
    assert good[0]["synthpipe_metadata"]["raw_output_task"] == good_json
    fmt = last_format(server)
    assert fmt["type"] == "json_schema"
    assert "assessments" in fmt["json_schema"]["schema"]["properties"]
    (bad,) = failed
    assert bad["data"]["instruction"] == "question 1" and "not valid JSON" in bad["message"]


def test_ultrafeedback_text_mode_each_plain_aspect(server):
    answer = ("#### Output for Text 1\nRating: 5\nRationale: follows it all\n\n"
              "#### Output for Text 2\nRating: 3\nRationale: misses the length limit\n")
    server.configure(answers=[(r"question", answer)])
    for aspect in ("honesty", "instruction-following", "overall-rating"):
        good, failed = run_task(server, UltraFeedback, UF_ROWS[:1], name=f"uf-{aspect}", aspect=aspect,
                                use_default_structured_output=False)
        assert failed == []
        assert good[0]["ratings"] == [5, 3]
        assert good[0]["rationales"] == ["follows it all", "misses the length limit"]
        assert set(good[0]) >= {"ratings", "rationales"} and "types" not in good[0]
        prompt = last_prompt(server)
        assert "Output for Text <n>" in prompt and "answer 0b" in prompt
        assert last_format(server) is None


def test_ultrafeedback_typed_aspects_text_and_structured(server):
    text = ("#### Output for Text 1\nType: 2\nRationale: contradicts the input\nRating: 2\nRationale: off\n"
            "#### Output for Text 2\nType: None\nRationale: nothing invented\nRating: 5\nRationale: all true\n")
    server.configure(answers=[(r"question", text)])
    good, _ = run_task(server, UltraFeedback, UF_ROWS[:1], aspect="truthfulness", use_default_structured_output=False)
    row = good[0]
    assert row["types"] == [2, None] and row["ratings"] == [2, 5]
    assert row["rationales"] == ["contradicts the input", "nothing invented"]
    assert row["rationales-for-ratings"] == ["off", "all true"]
    structured = json.dumps({"assessments": [
        {"type": 1, "type_rationale": "clear", "rating": 4, "rationale": "good"},
        {"type": None, "type_rationale": "none", "rating": 1, "rationale": "wrong"}]})
    server.configure(answers=[(r"question", structured)])
    good, _ = run_task(server, UltraFeedback, UF_ROWS[:1], name="uf-help", aspect="helpfulness")
    assert good[0]["types"] == [1, None] and good[0]["ratings"] == [4, 1]
    assert good[0]["rationales-for-ratings"] == ["good", "wrong"]


def test_ultrafeedback_one_unreadable_rating_is_none_an_unreadable_answer_fails_the_row(server):
    partial = "#### Output for Text 1\nRating: 4\nRationale: fine\n#### Output for Text 2\nRating: excellent\n"
    server.configure(answers=[(r"question 0", partial), (r"question 1", "I think both are nice."),
                              (r"question 2", "#### Output for Text 2\nRating: 1\nRationale: bad\n")])
    good, failed = run_task(server, UltraFeedback, UF_ROWS, use_default_structured_output=False)
    by_q = {r["instruction"]: r for r in good}
    assert by_q["question 0"]["ratings"] == [4, None] and by_q["question 0"]["rationales"] == ["fine", None]
    assert by_q["question 2"]["ratings"] == [None, 1]
    (bad,) = failed
    assert bad["data"]["instruction"] == "question 1"
    assert bad["error_type"].endswith("UnparsableAnswer") and "I think both are nice." in bad["message"]


def test_ultrafeedback_custom_template_and_missing_column(server):
    server.configure(answers=[(r"CUSTOM", "#### Output for Text 1\nRating: 3\nRationale: ok\n")])
    good, _ = run_task(server, UltraFeedback, [{"instruction": "q", "generations": ["a"]}],
                       template="CUSTOM {{ instruction }} {{ generations[0] }}\n{{ answer_format }}",
                       use_default_structured_output=False)
    assert good[0]["ratings"] == [3]
    assert last_prompt(server).startswith("You grade")  # the system prompt, then the user's template
    with Pipeline(name="missing") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "q"}]) >> UltraFeedback(name="uf", llm=_llm(server))
    with pytest.raises(PipelineValidationError, match="step 'uf' needs column 'generations'"):
        pipeline.run()
    with pytest.raises(ValueError, match="does not compile"):
        UltraFeedback(llm=_llm(server), template="{% for %}")


# -- PrometheusEval ---------------------------------------------------------------------------


def test_prometheus_absolute_text_with_and_without_reference(server):
    server.configure(answers=[(r"broken", "Feedback: decent, but no verdict"),
                              (r"seven", "Feedback: too good [RESULT] 7"),
                              (r"q", "Feedback: accurate and complete. [RESULT] 4")])
    rows = [{"instruction": "q1", "generation": "fine"}, {"instruction": "q2 broken", "generation": "x"},
            {"instruction": "q3 seven", "generation": "y"}]
    good, failed = run_task(server, PrometheusEval, rows, mode="absolute", rubric="factual-validity",
                            use_default_structured_output=False)
    assert [(r["feedback"], r["result"]) for r in good] == [("accurate and complete.", 4)]
    prompt = last_prompt(server)
    assert "Are the facts stated" in prompt and "Reference answer" not in prompt and "[RESULT]" in prompt
    assert {f["data"]["instruction"] for f in failed} == {"q2 broken", "q3 seven"}
    assert all(f["error_type"].endswith("UnparsableAnswer") for f in failed)
    assert any("no verdict" in f["message"] for f in failed)

    with_ref = [{"instruction": "q", "generation": "g", "reference": "the gold answer"}]
    good, _ = run_task(server, PrometheusEval, with_ref, name="ref", mode="absolute", rubric="helpfulness",
                       reference=True, use_default_structured_output=False)
    assert good[0]["result"] == 4 and "the gold answer" in last_prompt(server)
    with Pipeline(name="noref") as pipeline:
        LoadDataFromDicts(data=rows) >> PrometheusEval(name="p", llm=_llm(server), mode="absolute",
                                                       rubric="honesty", reference=True)
    with pytest.raises(PipelineValidationError, match="step 'p' needs column 'reference'"):
        pipeline.run()


def test_prometheus_relative_structured_and_text(server):
    server.configure(answers=[(r"bad", '{"feedback": "both fine", "result": "C"}'),
                              (r"q", '{"feedback": "B is exact", "result": "B"}')])
    rows = [{"instruction": "q1", "generations": ["a", "b"]}, {"instruction": "q2 bad", "generations": ["a", "b"]},
            {"instruction": "q3", "generations": ["only one"]}]
    good, failed = run_task(server, PrometheusEval, rows, mode="relative", rubric="reasoning")
    assert [(r["instruction"], r["feedback"], r["result"]) for r in good] == [("q1", "B is exact", "B")]
    assert last_format(server)["json_schema"]["schema"]["properties"]["result"]["enum"] == ["A", "B"]
    failed = {f["data"]["instruction"]: f for f in failed}
    assert "not one of the enum" in failed["q2 bad"]["message"] or "C" in failed["q2 bad"]["message"]
    assert "exactly two 'generations'" in failed["q3"]["message"]

    server.configure(answers=[(r"q", "Feedback: A reasons step by step; B skips a step.\n[RESULT] A")])
    good, _ = run_task(server, PrometheusEval, rows[:1], name="rel-text", mode="relative", rubric="reasoning",
                       use_default_structured_output=False)
    assert good[0]["result"] == "A" and good[0]["feedback"].startswith("A reasons")
    assert "Response B" in last_prompt(server)


def test_prometheus_custom_rubric_and_unknown_rubric(server):
    server.configure(answers=[(r"q", '{"feedback": "concise", "result": 5}')])
    rubrics = {"brevity": "[Is it short?]\nScore 1: rambling.\nScore 5: as short as can be."}
    good, _ = run_task(server, PrometheusEval, [{"instruction": "q", "generation": "g"}], mode="absolute",
                       rubric="brevity", rubrics=rubrics)
    assert good[0]["result"] == 5 and "[Is it short?]" in last_prompt(server)
    with pytest.raises(ValueError, match="rubric 'brevity' is not one of"):
        PrometheusEval(llm=_llm(server), mode="absolute", rubric="brevity")


# -- the scorers ------------------------------------------------------------------------------


def test_complexity_scorer_text_structured_partial_and_malformed(server):
    rows = [{"instructions": [f"task {i} simple", f"task {i} harder", f"task {i} hardest"]} for i in range(3)]
    server.configure(answers=[(r"task 1 simple", "[1] Score: 1\n[2] Score: 3.5\n[3] Score: lots"),
                              (r"task 2 simple", "They are all complex."),
                              (r"task", "[1] Score: 1\n[2] Score: 3\n[3] Score: 6")])
    good, failed = run_task(server, ComplexityScorer, rows, use_default_structured_output=False)
    assert [r["scores"] for r in good] == [[1.0, 3.0, 6.0], [1.0, 3.5, None]]  # unreadable entry: None
    assert "[1] task 0 simple" in last_prompt(server) or "[1] task" in last_prompt(server)
    (bad,) = failed
    assert bad["data"]["instructions"][0] == "task 2 simple" and "They are all complex." in bad["message"]

    server.configure(answers=[(r"task 1", '{"scores": [2, 4]}'), (r"task", '{"scores": [1, 2, 3]}')])
    good, failed = run_task(server, ComplexityScorer, rows[:2], name="cs-json")
    assert [r["scores"] for r in good] == [[1.0, 2.0, 3.0], [2.0, 4.0, None]]
    assert last_format(server)["json_schema"]["schema"]["required"] == ["scores"]
    assert failed == []


def test_quality_scorer_text_and_structured(server):
    rows = [{"instruction": "explain tides", "responses": ["the moon", "gravity of moon and sun, with detail"]}]
    server.configure(answers=[(r"tides", "[Response 1] Score: 2\n[Response 2] Score: 5")])
    good, _ = run_task(server, QualityScorer, rows, use_default_structured_output=False)
    assert good[0]["scores"] == [2.0, 5.0]
    assert "[Response 2] gravity" in last_prompt(server)
    server.configure(answers=[(r"tides", '{"scores": [3, 9]}')])  # 9 breaks the schema's maximum
    good, failed = run_task(server, QualityScorer, rows, name="qs-json")
    assert good == [] and failed[0]["error_type"].endswith("InvalidStructuredOutput")
    assert '{"scores": [3, 9]}' in failed[0]["message"]


def test_instruction_backtranslation_text_structured_and_malformed(server):
    rows = [{"instruction": "q1", "generation": "g1"}, {"instruction": "q2 vague", "generation": "g2"}]
    server.configure(answers=[(r"q2 vague", "It is fine I suppose."),
                              (r"q1", "Focused, complete and in an assistant's voice.\nScore: 5")])
    good, failed = run_task(server, InstructionBacktranslation, rows, use_default_structured_output=False)
    assert [(r["score"], r["reason"]) for r in good] == [(5, "Focused, complete and in an assistant's voice.")]
    assert failed[0]["data"]["instruction"] == "q2 vague" and failed[0]["error_type"].endswith("UnparsableAnswer")
    server.configure(answers=[(r"q", '{"reason": "copied from a blog", "score": 2}')])
    good, _ = run_task(server, InstructionBacktranslation, rows[:1], name="ib-json")
    assert (good[0]["score"], good[0]["reason"]) == (2, "copied from a blog")


def test_clair_text_structured_and_malformed(server):
    rows = [{"task": "add 2 and 2", "student_solution": "2 + 2 = 5"},
            {"task": "name a colour", "student_solution": "blue"}]
    server.configure(answers=[(r"colour", "Looks fine to me."),
                              (r"add", "Teacher Reasoning: the sum is wrong.\n\n"
                                       "Corrected Student Solution:\n2 + 2 = 4")])
    good, failed = run_task(server, CLAIR, rows, use_default_structured_output=False)
    assert [(r["revision"], r["rational"]) for r in good] == [("2 + 2 = 4", "the sum is wrong.")]
    assert failed[0]["data"]["task"] == "name a colour" and "Looks fine to me." in failed[0]["message"]
    server.configure(answers=[(r"add", '{"rational": "off by one", "revision": "2 + 2 = 4"}')])
    good, _ = run_task(server, CLAIR, rows[:1], name="clair-json")
    assert good[0]["revision"] == "2 + 2 = 4" and good[0]["rational"] == "off by one"
    with Pipeline(name="missing") as pipeline:
        LoadDataFromDicts(data=[{"task": "t"}]) >> CLAIR(name="clair", llm=_llm(server))
    with pytest.raises(PipelineValidationError, match="step 'clair' needs column 'student_solution'"):
        pipeline.run()


# -- an unusable answer is asked for again, and a real local engine ---------------------------


def test_an_unparsable_judgement_is_not_cached_and_retry_failed_asks_again(server):
    server.configure(answers=[(r"q", "no verdict here")])
    with Pipeline(name="retry-judge") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "q", "generation": "g"}]) >> PrometheusEval(
            name="p", llm=_llm(server), mode="absolute", rubric="honesty", use_default_structured_output=False)
    first = pipeline.run()
    assert len(first.failed_rows) == 1 and first.failed_rows[0]["error_type"].endswith("UnparsableAnswer")
    server.configure(answers=[(r"q", "Feedback: candid. [RESULT] 5")])
    before = server.total_requests
    retried = pipeline.run(retry_failed=True)
    assert retried.failed_rows == [] and retried["default"]["train"].to_list()[0]["result"] == 5
    assert server.total_requests == before + 1  # asked again, not served the bad answer from the cache


@pytest.mark.timeout(240)
def test_a_judge_on_a_tiny_local_model_fails_noise_rows_alone(tiny_llama_dir):
    """A random-weight model writes noise: every row is a result or a failed row with the raw
    text, never a crashed batch."""
    from synthpipe.models.transformers import TransformersLLM

    llm = TransformersLLM(model=str(tiny_llama_dir), device="cpu")
    rows = [{"instruction": f"question {i}", "generation": f"answer {i}"} for i in range(3)]
    with Pipeline(name="tiny-judge") as pipeline:
        LoadDataFromDicts(data=rows) >> PrometheusEval(name="p", llm=llm, mode="absolute", rubric="helpfulness",
                                                       use_default_structured_output=False)
    result = pipeline.run(parameters={"p": {"llm": {"generation_kwargs": {"max_new_tokens": 12}}}})
    good = result["default"]["train"].to_list() if "default" in result else []
    assert len(good) + len(result.failed_rows) == 3
    assert all(r["result"] in (1, 2, 3, 4, 5) for r in good)
    for failed in result.failed_rows:
        assert failed["error_type"].endswith("UnparsableAnswer") and "raw output" in failed["message"]


def test_several_judgements_per_row_grouped_with_their_statistics(server):
    server.configure(answers=[(r"q", "Helpful.\nScore: 4")])
    good, _ = run_task(server, InstructionBacktranslation, [{"instruction": "q", "generation": "g"}],
                       num_generations=2, group_generations=True, use_default_structured_output=False)
    row = good[0]
    assert row["score"] == [4, 4] and row["reason"] == ["Helpful.", "Helpful."]
    meta = row["synthpipe_metadata"]
    assert meta["raw_output_task"] == ["Helpful.\nScore: 4"] * 2
    assert len(meta["statistics_task"]["output_tokens"]) == 2


@pytest.mark.timeout(240)
@pytest.mark.parametrize("recipe, expect", [
    ("ultrafeedback.py", "ratings [3, 5] for ['offline-a', 'offline-b']; chosen offline-b (5), rejected offline-a (3)"),
    ("prometheus_eval.py", "[relative]")])
def test_the_recipes_run_offline_from_a_shell(tmp_path, recipe, expect):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": python_path(root / "src"), "SYNTHPIPE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(root / "examples" / recipe)], capture_output=True, text=True,
                          timeout=200, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expect in done.stdout and "0 row(s) failed" in done.stdout


def test_answers_of_a_task_asking_for_its_schema_count_as_paid_on_a_fresh_run(server):
    """The coordinator follows the model set-up the worker runs (with the task's schema), so
    fresh answers are counted as paid, not as served from the response cache."""
    good_json = json.dumps({"assessments": [{"rating": 4, "rationale": "clear"}, {"rating": 2, "rationale": "vague"}]})
    server.configure(answers=[(r"question", good_json)])
    with Pipeline(name="judge-usage") as pipeline:
        LoadDataFromDicts(data=UF_ROWS) >> UltraFeedback(name="task", llm=_llm(server))
    distiset = pipeline.run()
    record = json.loads((Path(distiset.run_dir) / "run.json").read_text())
    [usage] = [u for u in record["usage"] if u["step"] == "task"]
    assert usage["requests"] == 3 and usage["cached_tokens"] == 0
    assert usage["paid_output"] == usage["output_tokens"] > 0
