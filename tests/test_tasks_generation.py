"""The generation tasks inside real pipelines: against the OpenAI-compatible test server (scripted
answers, structured and text modes, malformed answers) and on the tiny local models."""

from __future__ import annotations

import json

import pytest

from synthpipe.errors import PipelineValidationError
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import (
    URIAL,
    EvolComplexity,
    EvolComplexityGenerator,
    EvolInstruct,
    EvolInstructGenerator,
    EvolQuality,
    Genstruct,
    SelfInstruct,
    StructuredGeneration,
    TextGenerationWithImage,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


def _llm(server, **kw) -> OpenAILLM:
    return OpenAILLM(model="test-model", base_url=server.base_url, api_key="k", max_retries=0, **kw)


def _run(task, data, name="t", **run):
    with Pipeline(name=name) as pipeline:
        LoadDataFromDicts(data=data, batch_size=4) >> task()
    return pipeline.run(**run)


def _rows(result):
    return result["default"]["train"].to_list()


def _last_user(body):
    return body["messages"][-1]["content"] if "messages" in body else body["prompt"]


# -- TextGenerationWithImage ------------------------------------------------------------------


def test_image_generation_sends_url_and_base64_parts(server):
    seen = []

    def responder(body):
        seen.append(body["messages"][-1]["content"])
        return "a cat"

    server.configure(responder=responder)
    def task():
        return TextGenerationWithImage(name="vision", llm=_llm(server), image_type="base64", system_prompt="Be brief.")
    result = _run(task, [{"instruction": "What is it?", "image": "QUJD"}], "img")
    assert _rows(result)[0]["generation"] == "a cat"
    assert seen[0][0] == {"type": "text", "text": "What is it?"}
    assert seen[0][1] == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}
    server.configure(responder=None)


def test_image_generation_url_and_pil_images(server):
    from PIL import Image

    seen = []
    server.configure(responder=lambda body: seen.append(body["messages"][-1]["content"][1]) or "ok")
    url = _rows(_run(lambda: TextGenerationWithImage(name="v", llm=_llm(server), template="Q: {{ instruction }}"),
                     [{"instruction": "what", "image": "https://example.org/cat.png"}], "img-url"))[0]
    assert url["generation"] == "ok" and seen[0]["image_url"]["url"] == "https://example.org/cat.png"
    image = Image.new("RGB", (4, 4), "red")
    task = TextGenerationWithImage(name="v", llm=_llm(server), image_type="PIL")
    chat = task.format_input({"instruction": "what", "image": image})
    assert chat[0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")
    server.configure(responder=None)


def test_image_generation_is_refused_on_a_backend_without_images(tmp_path):
    from synthpipe.models.llamacpp import LlamaCppLLM

    with pytest.raises(ValueError, match="TextGenerationWithImage: LlamaCppLLM does not take images"):
        TextGenerationWithImage(llm=LlamaCppLLM(model_path=str(tmp_path / "none.gguf")))


def test_image_generation_checks_its_columns_before_running(server):
    with Pipeline(name="img-missing") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "x"}]) >> TextGenerationWithImage(name="vision", llm=_llm(server))
    with pytest.raises(PipelineValidationError, match="image"):
        pipeline.run()


# -- StructuredGeneration ---------------------------------------------------------------------

PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CITY = {"type": "object", "properties": {"city": {"type": "string"}, "pop": {"type": "integer"}},
        "required": ["city", "pop"]}


def test_structured_generation_uses_each_rows_schema_and_fails_a_mismatch(server):
    formats = []

    def responder(body):
        schema = body["response_format"]["json_schema"]["schema"]
        formats.append(schema)
        if "broken" in _last_user(body):
            return '{"city": "Oslo"}'
        return json.dumps({"name": "Ada"}) if "name" in schema["properties"] else json.dumps({"city": "Oslo", "pop": 1})

    server.configure(responder=responder)
    data = [{"instruction": "a person", "structured_output": {"format": "json", "schema": PERSON}},
            {"instruction": "a city", "structured_output": {"format": "json", "schema": CITY}},
            {"instruction": "a broken city", "structured_output": {"format": "json", "schema": CITY}},
            {"instruction": "another person", "structured_output": {"format": "json", "schema": PERSON}}]
    result = _run(lambda: StructuredGeneration(name="sg", llm=_llm(server)), data, "sg")
    rows = {r["instruction"]: json.loads(r["generation"]) for r in _rows(result)}
    assert rows == {"a person": {"name": "Ada"}, "a city": {"city": "Oslo", "pop": 1},
                    "another person": {"name": "Ada"}}
    assert len(result.failed_rows) == 1 and result.failed_rows[0]["data"]["instruction"] == "a broken city"
    assert "pop" in result.failed_rows[0]["message"] and '{"city": "Oslo"}' in result.failed_rows[0]["message"]
    assert PERSON in formats and CITY in formats
    server.configure(responder=None)


def test_structured_generation_needs_its_schema_column(server):
    with Pipeline(name="sg-missing") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "x"}]) >> StructuredGeneration(name="sg", llm=_llm(server))
    with pytest.raises(PipelineValidationError, match="structured_output"):
        pipeline.run()


# -- SelfInstruct -----------------------------------------------------------------------------


def test_self_instruct_structured_mode(server):
    server.configure(answers=[(r"broken", '{"instructions": []}'),
                              (r"", json.dumps({"instructions": ["Q one?", "Q two?"]}))])
    result = _run(lambda: SelfInstruct(name="si", llm=_llm(server), num_instructions=2),
                  [{"input": "tides"}, {"input": "broken input"}], "si-json")
    rows = _rows(result)
    assert [r["instructions"] for r in rows] == [["Q one?", "Q two?"]]
    assert result.failed_rows[0]["data"]["input"] == "broken input"
    assert "no instruction" in result.failed_rows[0]["message"]
    assert "JSON object" in rows[0]["synthpipe_metadata"]["raw_input_si"][0]["content"]
    server.configure(answers=[])


def test_self_instruct_text_mode_parses_lines(server):
    server.configure(answers=[(r"", "1. First request\n\n- Second request\nThird request")])
    def task():
        return SelfInstruct(name="si", llm=_llm(server), num_instructions=3, use_default_structured_output=False)
    result = _run(task, [{"input": "bees"}], "si-text")
    row = _rows(result)[0]
    assert row["instructions"] == ["First request", "Second request", "Third request"]
    assert "one request per line" in row["synthpipe_metadata"]["raw_input_si"][0]["content"]
    server.configure(answers=[])


def test_self_instruct_checks_its_input_column(server):
    with Pipeline(name="si-missing") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "x"}]) >> SelfInstruct(name="si", llm=_llm(server))
    with pytest.raises(PipelineValidationError, match="si.*input|input.*si"):
        pipeline.run()


# -- Evol-Instruct family ---------------------------------------------------------------------


def _evolver(body):
    text = _last_user(body)
    if "#Rewritten response#" in text:
        return "better response"
    if "#Original prompt#" in text or "#Given prompt#" in text:
        original = text.split("prompt#:\n", 1)[1].split("\n\n#", 1)[0]
        return f"#Rewritten prompt#: {original}+"
    return f"answer to {text}"


def test_evol_instruct_evolves_stores_and_answers(server):
    server.configure(responder=_evolver)
    def task():
        return EvolInstruct(name="evol", llm=_llm(server), num_evolutions=3, store_evolutions=True,
                            generate_answers=True, include_original_instruction=True)
    result = _run(task, [{"instruction": "sum 2 numbers"}, {"instruction": "name a bird"}], "evol")
    rows = _rows(result)
    assert rows[0]["evolved_instructions"] == ["sum 2 numbers", "sum 2 numbers+", "sum 2 numbers++",
                                               "sum 2 numbers+++"]
    assert rows[0]["answers"][-1] == "answer to sum 2 numbers+++"
    assert len(rows[1]["answers"]) == 4 and rows[1]["model_name"] == "test-model"
    meta = rows[0]["synthpipe_metadata"]
    assert meta["statistics_evol"]["output_tokens"][0] > 0
    assert meta["raw_output_evol"] == "#Rewritten prompt#: sum 2 numbers+++"
    assert "sum 2 numbers++" in meta["raw_input_evol"][0]["content"]
    server.configure(responder=None)


def test_evol_complexity_has_no_breadth_and_a_failed_request_fails_its_row(server):
    assert "BREADTH" not in EvolComplexity(llm=_llm(server)).mutation_templates
    server.configure(responder=lambda body: _evolver(body),
                     answers=[])
    def task():
        return EvolComplexity(name="cx", llm=_llm(server), num_evolutions=2)
    result = _run(task, [{"instruction": "ok"}, {"instruction": "bad [[500:always]]"}], "cx")
    assert [r["evolved_instruction"] for r in _rows(result)] == ["ok++"]
    assert [f["data"]["instruction"] for f in result.failed_rows] == ["bad [[500:always]]"]
    server.configure(responder=None)


def test_evol_quality_evolves_the_response(server):
    server.configure(responder=_evolver)
    def task():
        return EvolQuality(name="q", llm=_llm(server), num_evolutions=2, store_evolutions=True,
                           include_original_response=True)
    result = _run(task, [{"instruction": "hi", "response": "hello"}], "quality")
    assert _rows(result)[0]["evolved_responses"] == ["hello", "better response", "better response"]
    with Pipeline(name="q-missing") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "x"}]) >> EvolQuality(name="q", llm=_llm(server))
    with pytest.raises(PipelineValidationError, match="response"):
        pipeline.run()
    server.configure(responder=None)


def test_evol_instruct_generator_is_a_first_step(server):
    server.configure(responder=lambda body: "#Created prompt#: Plan a trip across three rivers on a budget.")
    with Pipeline(name="evol-gen") as pipeline:
        EvolInstructGenerator(name="gen", llm=_llm(server), num_instructions=5, batch_size=2, min_length=10,
                              max_length=200, generate_answers=True)
    rows = _rows(pipeline.run())
    assert len(rows) == 5 and rows[0]["instruction"] == "Plan a trip across three rivers on a budget."
    assert all(r["answer"] and r["model_name"] == "test-model" for r in rows)
    server.configure(responder=lambda body: "too short")
    with Pipeline(name="evol-gen-short") as pipeline:
        EvolComplexityGenerator(name="gen", llm=_llm(server), num_instructions=2, min_length=50,
                                max_attempts_factor=2)
    with pytest.raises(Exception, match="outside"):
        pipeline.run()
    server.configure(responder=None)


# -- Genstruct, URIAL -------------------------------------------------------------------------


def test_genstruct_parses_user_and_assistant_and_fails_a_malformed_answer(server):
    server.configure(answers=[(r"Broken", "just some text"),
                              (r"", "What do tides follow?[[[Assistant]]] The moon's pull.")])
    result = _run(lambda: Genstruct(name="gs", llm=_llm(server)),
                  [{"title": "Tides", "content": "The moon pulls the sea."},
                   {"title": "Broken", "content": "x"}], "genstruct")
    assert [(r["user"], r["assistant"]) for r in _rows(result)] == [("What do tides follow?", "The moon's pull.")]
    failed = result.failed_rows[0]
    assert failed["data"]["title"] == "Broken" and "just some text" in failed["message"]
    prompt = _rows(result)[0]["synthpipe_metadata"]["raw_input_gs"][0]["content"]
    assert prompt.startswith("[[[Title]]] Tides\n[[[Content]]] The moon pulls the sea.") and \
        prompt.endswith("[[[User]]] ")
    server.configure(answers=[])


def test_urial_renders_instruction_or_conversation_and_cuts_the_answer(server):
    server.configure(answers=[(r"", "Paris.\n```\n\n# Query:\n```\nmore")])
    data = [{"instruction": "Capital of France?", "conversation": None},
            {"instruction": None, "conversation": [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello"},
                                                   {"role": "user", "content": "Capital?"}]}]
    result = _run(lambda: URIAL(name="u", llm=_llm(server)), data, "urial")
    rows = _rows(result)
    assert [r["generation"] for r in rows] == ["Paris.", "Paris."]
    prompt = rows[1]["synthpipe_metadata"]["raw_input_u"][0]["content"]
    assert "# Query:\n```\nHi\n```" in prompt and "# Answer:\n```\nHello\n```" in prompt
    assert prompt.endswith("# Answer:\n```")
    server.configure(answers=[])


def test_a_custom_template_replaces_the_prompt(server):
    server.configure(answers=[(r"", "u?[[[Assistant]]] a.")])
    def task():
        return Genstruct(name="gs", llm=_llm(server), template="T={{ title }} C={{ content }}")
    row = _rows(_run(task, [{"title": "a", "content": "b"}], "tmpl"))[0]
    assert row["synthpipe_metadata"]["raw_input_gs"][0]["content"] == "T=a C=b"
    with pytest.raises(ValueError, match="does not compile"):
        Genstruct(llm=_llm(server), template="{% if %}")
    server.configure(answers=[])


# -- the tiny local models --------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_evol_instruct_and_self_instruct_on_tiny_transformers(tiny_llama_dir):
    from synthpipe.models.transformers import TransformersLLM

    llm = TransformersLLM(model=str(tiny_llama_dir), device="cpu")
    with Pipeline(name="tiny-evol") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": "Explain tides.", "input": "tides"}])
        load >> EvolInstruct(name="evol", llm=llm, num_evolutions=2, generate_answers=True) >> SelfInstruct(
            name="si", llm=llm, use_default_structured_output=False)
    kwargs = {"generation_kwargs": {"max_new_tokens": 8}}
    result = pipeline.run(parameters={"evol": {"llm": kwargs}, "si": {"llm": kwargs}})
    rows, failed = _rows(result), result.failed_rows
    assert len(rows) + len(failed) == 1  # noise text can have no line left, which fails the row visibly
    if rows:
        assert isinstance(rows[0]["evolved_instruction"], str) and isinstance(rows[0]["answer"], str)
        assert rows[0]["instructions"]


@pytest.mark.timeout(300)
def test_structured_generation_on_tiny_llama_cpp_grammar(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from synthpipe.models.llamacpp import LlamaCppLLM

    color = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}}, "required": ["color"],
             "additionalProperties": False}
    flag = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
            "additionalProperties": False}
    data = [{"instruction": "a color", "structured_output": {"format": "json", "schema": color}},
            {"instruction": "a flag", "structured_output": {"format": "json", "schema": flag}}]
    with Pipeline(name="tiny-sg") as pipeline:
        LoadDataFromDicts(data=data) >> StructuredGeneration(name="sg", llm=LlamaCppLLM(model_path=str(tiny_gguf)))
    result = pipeline.run(parameters={"sg": {"llm": {"generation_kwargs": {"max_new_tokens": 40}}}})
    rows = {r["instruction"]: json.loads(r["generation"]) for r in _rows(result)}
    assert result.failed_rows == []
    assert rows["a color"]["color"] in ("red", "green") and isinstance(rows["a flag"]["ok"], bool)


@pytest.mark.timeout(300)
def test_genstruct_and_urial_on_tiny_llama_cpp(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from synthpipe.models.llamacpp import LlamaCppLLM

    llm = LlamaCppLLM(model_path=str(tiny_gguf), n_ctx=1024)
    with Pipeline(name="tiny-urial") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": "Say hi.", "title": "T", "content": "C"}])
        load >> [URIAL(name="u", llm=llm), EvolComplexity(name="cx", llm=llm)]
    kwargs = {"generation_kwargs": {"max_new_tokens": 8}}
    result = pipeline.run(parameters={"u": {"llm": kwargs}, "cx": {"llm": kwargs}})
    assert result.failed_rows == []
    assert isinstance(result["u"]["train"][0]["generation"], (str, type(None)))
    assert isinstance(result["cx"]["train"][0]["evolved_instruction"], str)


def test_a_malformed_genstruct_answer_is_asked_again_by_retry_failed(server):
    server.configure(answers=[(r"", "no markers at all")])
    with Pipeline(name="gs-retry") as pipeline:
        LoadDataFromDicts(data=[{"title": "t", "content": "c"}]) >> Genstruct(name="gs", llm=_llm(server))
    assert len(pipeline.run().failed_rows) == 1
    server.configure(answers=[(r"", "q?[[[Assistant]]] a.")])
    retried = pipeline.run(retry_failed=True)
    assert retried.failed_rows == [] and _rows(retried)[0]["assistant"] == "a."
    server.configure(answers=[])
