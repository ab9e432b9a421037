"""Magpie and MagpieGenerator: raw-prompt generation on the test server's /v1/completions, on
tiny transformers and llama.cpp models, and a clear refusal of backends that cannot."""

from __future__ import annotations

import pytest

from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import Magpie, MagpieGenerator

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]

LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n"


def _llm(server, **kw) -> OpenAILLM:
    return OpenAILLM(model="test-model", base_url=server.base_url, api_key="k", max_retries=0,
                     magpie_pre_query_template="llama3", **kw)


def _responder(log):
    """/completions writes a user's question (counted per turn); chat answers it."""

    def respond(body):
        if "prompt" in body:
            log.append(body["prompt"])
            if "[[empty]]" in body["prompt"]:
                return "   <|eot_id|>"
            return f"question {body['prompt'].count(LLAMA3_USER)}?<|eot_id|>ignored"
        return f"answer to {body['messages'][-1]['content']}"

    return respond


def test_magpie_multi_turn_with_system_prompts_over_completions(server):
    log: list[str] = []
    server.configure(responder=_responder(log))
    with Pipeline(name="magpie") as pipeline:
        load = LoadDataFromDicts(data=[{"id": 0}, {"id": 1, "system_prompt": "You are terse."}])
        load >> Magpie(name="magpie", llm=_llm(server), n_turns=2, include_system_prompt=True,
                       system_prompt={"math": ("You teach maths.", 1.0), "code": ("You write code.", 0.0)})
    result = pipeline.run()
    rows = result["default"]["train"].to_list()
    assert result.failed_rows == [] and len(rows) == 2
    first = rows[0]["conversation"]
    assert first == [{"role": "system", "content": "You teach maths."},
                     {"role": "user", "content": "question 1?"},
                     {"role": "assistant", "content": "answer to question 1?"},
                     {"role": "user", "content": "question 2?"},
                     {"role": "assistant", "content": "answer to question 2?"}]
    assert rows[0]["system_prompt_key"] == "math" and rows[1]["system_prompt_key"] is None
    assert rows[1]["conversation"][0] == {"role": "system", "content": "You are terse."}
    # the raw prompt: the llama3 rendering of the conversation so far, then the user-turn tokens
    assert log[0].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert all(p.endswith(LLAMA3_USER) and p.count("<|begin_of_text|>") == 1 for p in log)
    assert any("answer to question 1?<|eot_id|>" + LLAMA3_USER == p[-len("answer to question 1?<|eot_id|>")
               - len(LLAMA3_USER):] for p in log)
    assert rows[0]["synthpipe_metadata"]["statistics_magpie"]["output_tokens"][0] > 0
    server.configure(responder=None)


def test_magpie_single_turn_columns_only_instruction_and_an_empty_instruction_fails_its_row(server):
    log: list[str] = []
    server.configure(responder=_responder(log))
    with Pipeline(name="magpie-one") as pipeline:
        load = LoadDataFromDicts(data=[{"system_prompt": "ok"}, {"system_prompt": "[[empty]]"}])
        one = Magpie(name="one", llm=_llm(server))
        only = Magpie(name="only", llm=_llm(server), only_instruction=True, n_turns=3)
        load >> [one, only]
    result = pipeline.run()
    one_rows = result["one"]["train"].to_list()
    assert [(r["instruction"], r["response"]) for r in one_rows] == [("question 1?", "answer to question 1?")]
    assert [r["instruction"] for r in result["only"]["train"].to_list()] == ["question 1?"]
    failed = [f for f in result.failed_rows if f["step"] == "one"]
    assert len(failed) == 1 and "no instruction" in failed[0]["message"]
    server.configure(responder=None)


def test_magpie_generator_end_with_user(server):
    server.configure(responder=_responder([]))
    with Pipeline(name="magpie-gen") as pipeline:
        MagpieGenerator(name="gen", llm=_llm(server), num_rows=5, batch_size=2, n_turns=2, end_with_user=True)
    rows = pipeline.run()["default"]["train"].to_list()
    assert len(rows) == 5
    assert [m["role"] for m in rows[0]["conversation"]] == ["user", "assistant", "user"]
    assert rows[0]["model_name"] == "test-model"
    server.configure(responder=None)


def test_backends_that_cannot_are_refused_before_anything_runs(server, tmp_path):
    from synthpipe.models.anthropic import AnthropicLLM

    with pytest.raises(ValueError, match="Magpie: AnthropicLLM cannot generate from a raw prompt"):
        Magpie(llm=AnthropicLLM(model="claude", api_key="k"))
    plain = OpenAILLM(model="m", base_url=server.base_url, api_key="k")
    with pytest.raises(ValueError, match="MagpieGenerator: OpenAILLM cannot.*magpie_pre_query_template"):
        MagpieGenerator(llm=plain, num_rows=1)
    from synthpipe.models.transformers import TransformersLLM

    with pytest.raises(ValueError, match="needs magpie_pre_query_template"):
        Magpie(llm=TransformersLLM(model=str(tmp_path)))
    with pytest.raises(ValueError, match="use_magpie_template=True needs a magpie_pre_query_template"):
        TransformersLLM(model=str(tmp_path), use_magpie_template=True)
    # a custom chat template also opens /completions, with literal pre-query tokens
    custom = OpenAILLM(model="m", base_url=server.base_url, api_key="k", magpie_pre_query_template="<|user|>\n",
                       chat_template="{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}")
    assert custom.supports_raw_prompts()
    assert custom.magpie_prompt([{"role": "system", "content": "S"}]) == "<|system|>\nS\n<|user|>\n"


@pytest.mark.timeout(300)
def test_magpie_on_tiny_transformers(tiny_llama_dir):
    from synthpipe.models.transformers import TransformersLLM

    llm = TransformersLLM(model=str(tiny_llama_dir), device="cpu", magpie_pre_query_template="<|user|>\n")
    with Pipeline(name="magpie-tiny") as pipeline:
        MagpieGenerator(name="gen", llm=llm, num_rows=2, n_turns=2, system_prompt="You are kind.",
                        include_system_prompt=True)
    try:
        result = pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_new_tokens": 8,
                                                                                  "do_sample": False}}}})
    except Exception as exc:  # a random model can write only whitespace: then the error must say so
        assert "no instruction" in str(exc)
        return
    rows = result["default"]["train"].to_list()
    assert len(rows) == 2 and [m["role"] for m in rows[0]["conversation"]] == [
        "system", "user", "assistant", "user", "assistant"]


@pytest.mark.timeout(300)
def test_magpie_on_tiny_llama_cpp(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from synthpipe.models.llamacpp import LlamaCppLLM

    llm = LlamaCppLLM(model_path=str(tiny_gguf), n_ctx=1024, magpie_pre_query_template="<|user|>\n")
    with Pipeline(name="magpie-gguf") as pipeline:
        LoadDataFromDicts(data=[{"id": i} for i in range(3)]) >> Magpie(name="m", llm=llm)
    result = pipeline.run(parameters={"m": {"llm": {"generation_kwargs": {"max_new_tokens": 8}}}})
    rows = result["default"]["train"].to_list()
    assert len(rows) + len({f["row"] for f in result.failed_rows}) == 3
    for row in rows:
        assert row["instruction"] and isinstance(row["response"], str)
    for failed in result.failed_rows:  # only a whitespace instruction may fail, and it says so
        assert "no instruction" in failed["message"]


def test_an_empty_instruction_is_asked_again_by_retry_failed_and_answers_come_from_the_cache(server):
    state = {"empty": True, "raw": 0}

    def respond(body):
        if "prompt" in body:
            state["raw"] += 1
            return "  " if state["empty"] and "retry me" in body["prompt"] else "question?"
        return "answer"

    server.configure(responder=respond)
    with Pipeline(name="magpie-retry") as pipeline:
        load = LoadDataFromDicts(data=[{"system_prompt": "fine"}, {"system_prompt": "retry me"}])
        load >> Magpie(name="m", llm=_llm(server))
    first = pipeline.run()
    assert len(first.failed_rows) == 1 and state["raw"] == 2
    state["empty"] = False
    retried = pipeline.run(retry_failed=True)
    assert retried.failed_rows == []
    assert sorted(r["system_prompt"] for r in retried["default"]["train"].to_list()) == ["fine", "retry me"]
    assert state["raw"] == 3  # only the failed row's instruction was asked again
    server.configure(responder=None)
