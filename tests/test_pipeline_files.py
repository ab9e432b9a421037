"""Pipeline files: what is saved comes back with the same signatures (so the same cached
results), secrets never reach the file, and a file from someone else loads only what the
caller allows, failing with a clear message otherwise."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

import synthpipe.models
import synthpipe.steps
import synthpipe.steps.tasks
from conftest import python_path
from steps_lib import Counting, CountingGenerator, CrashOnce, Join, Measure, Upper
from synthpipe import _compat
from synthpipe.errors import PipelineFileError
from synthpipe.models import LLM, Embeddings, OpenAILLM
from synthpipe.pipeline import Pipeline, serialization
from synthpipe.steps import LoadDataFromDicts, Step, StepInput, step
from synthpipe.steps.base import _Step
from synthpipe.steps.embeddings import EmbeddingGeneration
from synthpipe.steps.tasks import TextGeneration
from synthpipe.store.signature import plan_signatures

ABSTRACT = {"Step", "GlobalStep", "GeneratorStep", "Task", "LLM", "AsyncLLM", "BatchLLM", "RemoteLLM", "Embeddings"}


def _signatures(pipeline: Pipeline) -> dict[str, str]:
    dag = pipeline.dag
    return plan_signatures(dag.topological_order(), dag.nodes, {n: dag.predecessors(n) for n in dag})


def _round_trip(pipeline: Pipeline, tmp_path: Path, fmt: str = "yaml", **load: Any) -> Pipeline:
    path = pipeline.save(tmp_path / f"pipeline.{fmt}", format=fmt)
    loaded = Pipeline.from_file(path, **load)
    assert loaded.dump() == pipeline.dump()
    assert _signatures(loaded) == _signatures(pipeline)
    assert loaded.dag.edges() == pipeline.dag.edges()
    return loaded


def _fields(model: BaseModel) -> dict[str, Any]:
    """A model's fields, models inside as (class, fields), secrets out."""
    out = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            continue
        out[name] = (type(value), _fields(value)) if isinstance(value, BaseModel) else value
    return out


# -- every built-in class --------------------------------------------------------------


def _exported(module: Any, base: type) -> list[type]:
    """What a module exports: its ``__all__`` and the distilabel names it resolves (_compat)."""
    found = []
    for name in dict.fromkeys([*module.__all__, *_compat.available(module.__name__)]):
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, base) and name not in ABSTRACT and obj not in found:
            found.append(obj)
    return found


# required fields whose value a plain one of its type does not satisfy: one of the task's own rubrics,
# columns to act on, rows enough for a sample
KNOWN_VALUES = {"rubric": "helpfulness", "columns": ["x"], "data": [{"x": 1}, {"x": 2}]}


def _simple_value(annotation: Any, field: str) -> Any:
    """A plain value for a required field, by its type (how a new class gets covered)."""
    if field in KNOWN_VALUES:
        return KNOWN_VALUES[field]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)[0]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _simple_value(args[0], field)
    if isinstance(annotation, type):
        if issubclass(annotation, LLM):
            # a pre-query template, so tasks that need raw prompts (Magpie) accept it too
            return OpenAILLM(model="test-model", base_url="http://127.0.0.1:9/v1", magpie_pre_query_template="llama3")
        if issubclass(annotation, Embeddings):
            return synthpipe.models.SentenceTransformerEmbeddings(model="some/embedder")
        for kind, value in ((bool, True), (str, "x"), (int, 1), (float, 1.0)):
            if issubclass(annotation, kind):
                return value
    if origin in (list, tuple) or annotation in (list, tuple):
        items = typing.get_args(annotation)
        if items and isinstance(items[0], type) and issubclass(items[0], LLM):  # proposers_llms, say
            return [_simple_value(items[0], field)]
        return []
    if origin is dict or annotation is dict:
        return {}
    raise TypeError(f"no simple value for field {field!r} of type {annotation!r}")


def _build(cls: type) -> Any:
    required = {name: _simple_value(info.annotation, name)
                for name, info in cls.model_fields.items() if info.is_required()}
    return cls(**required)


BUILT_IN = (
    [(c, "step") for c in _exported(synthpipe.steps, _Step)]
    + [(c, "step") for c in _exported(synthpipe.steps.tasks, _Step)]
    + [(c, "llm") for c in _exported(synthpipe.models, LLM)]
    + [(c, "embeddings") for c in _exported(synthpipe.models, Embeddings)]
)


def test_the_built_in_classes_are_found():
    names = {c.__name__ for c, _ in BUILT_IN}
    assert {"LoadDataFromDicts", "EmbeddingGeneration", "TextGeneration", "ChatGeneration", "OpenAILLM",
            "TransformersLLM", "SentenceTransformerEmbeddings"} <= names


@pytest.mark.parametrize(("cls", "kind"), BUILT_IN, ids=[c.__name__ for c, _ in BUILT_IN])
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_every_built_in_class_round_trips(cls, kind, fmt, tmp_path):
    with Pipeline(name="every") as pipeline:
        if kind == "step":
            built = _build(cls)
        elif kind == "llm":
            built = TextGeneration(name="carrier", llm=_build(cls))
        else:
            built = EmbeddingGeneration(name="carrier", embeddings=_build(cls))
    loaded = _round_trip(pipeline, tmp_path, fmt)
    again = loaded.steps[built.name]
    assert type(again) is type(built) and _fields(again) == _fields(built)


# -- parameters, mappings, resources, policies, connections, data ----------------------


def _rich(calls: str = "") -> Pipeline:
    rows = [{"instruction": f"q{i}", "n": i, "nested": {"a": [1, 2.5, None], "__model__": "not a class"},
             "text": "ünï ✓ \"quoted\" 'x'\n"} for i in range(7)]
    with Pipeline(name="rich", description="all kinds of fields", max_rows_in_flight=500,
                  stop_grace_seconds=3.0) as pipeline:
        data = LoadDataFromDicts(name="data", data=rows, batch_size=3, output_mappings={"n": "number"})
        gen = CountingGenerator(name="gen", total=9, batch_size=4, calls=calls)
        upper = Upper(name="upper", input_batch_size=2, retries=2, retry_delay=0.0, timeout=30.0,
                      on_error="skip", max_failed_rows=5, max_failure_rate=None, resources={"replicas": 2})
        measure = Measure(name="measure", factor=3, input_mappings={"instruction": "instruction"}, use_cache=False)
        join = Join(name="join")
        task = TextGeneration(
            name="task", template="Say {{ instruction }}", system_prompt="be brief", num_generations=2,
            group_generations=True, llm=OpenAILLM(model="m", base_url="http://127.0.0.1:9/v1", max_concurrency=7,
                                                  generation_kwargs={"temperature": 0.25, "max_new_tokens": 12},
                                                  structured_output={"type": "object"}))
        [measure, upper] >> join  # predecessor order is not creation order
        gen >> upper
        gen >> measure
        data >> task
    return pipeline


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_parameters_mappings_resources_policies_and_data_round_trip(fmt, tmp_path):
    pipeline = _rich()
    loaded = _round_trip(pipeline, tmp_path, fmt, allow_custom=["steps_lib"])
    assert loaded.dag.predecessors("join") == ["measure", "upper"]
    for name, step_ in pipeline.steps.items():
        assert type(loaded.steps[name]) is type(step_) and _fields(loaded.steps[name]) == _fields(step_), name
    assert loaded.steps["data"].data == pipeline.steps["data"].data
    assert loaded.steps["upper"].resources.replicas == 2 and loaded.steps["measure"].factor == 3
    assert loaded.steps["task"].llm.structured_output.json_schema == {"type": "object"}
    assert (loaded.name, loaded.description, loaded.max_rows_in_flight, loaded.stop_grace_seconds) == (
        "rich", "all kinds of fields", 500, 3.0)
    assert Pipeline.from_dict(pipeline.dump(), allow_custom=True).dump() == pipeline.dump()


class Answer(BaseModel):
    verdict: str


class WithSchema(Step):
    """A step whose parameter is a class (as a task's answer schema may be)."""

    schema_class: type[BaseModel] = Answer
    options: dict[str, Any] = {}


def test_classes_as_parameters_round_trip_and_marker_keys_stay_data(tmp_path):
    with Pipeline(name="classes") as pipeline:
        WithSchema(name="s", options={"__class__": "os:system", "__model__": {"__dict__": 1}, "n": [1]})
    with pytest.raises(PipelineFileError, match="test_pipeline_files:WithSchema comes from outside synthpipe"):
        Pipeline.from_dict(pipeline.dump())
    loaded = _round_trip(pipeline, tmp_path, allow_custom=["test_pipeline_files"])
    assert loaded.steps["s"].schema_class is Answer
    assert loaded.steps["s"].options == {"__class__": "os:system", "__model__": {"__dict__": 1}, "n": [1]}


def test_a_script_that_saves_a_step_of_its_own_is_told_how_to_fix_it(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "from synthpipe.pipeline import Pipeline\n"
        "from synthpipe.steps import StepInput, step\n"
        "@step(inputs=['x'], outputs=['x'])\n"
        "def Shout(inputs: StepInput):\n"
        "    yield inputs\n"
        "with Pipeline(name='script') as pipeline:\n"
        "    Shout()\n"
        "pipeline.save('out.yaml')\n")
    env = {**os.environ, "PYTHONPATH": python_path()}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 1
    assert ("PipelineFileError: step 'shout_0': class Shout is defined in __main__ (a script run directly, or a "
            "notebook)") in out.stderr and "move it into a module of its own" in out.stderr
    assert not (tmp_path / "out.yaml").exists()


# -- the loaded pipeline finds the original's results ----------------------------------


def _calls(path: Path) -> collections.Counter:
    return collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_leftover_workers")
def test_a_loaded_pipeline_resumes_the_original_and_returns_its_result(tmp_path, server):
    """The original run stops when a worker dies; the pipeline loaded from its file resumes
    it (no row computed twice, no request sent twice), then returns the stored result."""
    calls = tmp_path / "calls"
    with Pipeline(name="reuse") as pipeline:
        gen = CountingGenerator(name="gen", total=12, batch_size=4, calls=str(calls))
        a = Counting(name="a", calls=str(calls), tag="t", input_batch_size=3)
        crash = CrashOnce(name="crash", marker=str(tmp_path / "crashed"), at="q7", max_restarts=0,
                          input_batch_size=2)
        task = TextGeneration(name="task", llm=OpenAILLM(model="test-model", base_url=server.base_url,
                                                         api_key="sk-not-in-the-file"))
        gen >> a >> crash >> task
    path = pipeline.save(tmp_path / "reuse.yaml")
    with pytest.raises(Exception, match="crash"):
        pipeline.run()
    assert (tmp_path / "crashed").exists()

    loaded = Pipeline.from_yaml(path, allow_custom=["steps_lib"])
    assert _signatures(loaded) == _signatures(pipeline)
    result = loaded.run()["default"]["train"].to_list()
    seen = _calls(calls)
    assert len(seen) == 24 and set(seen.values()) == {1}  # gen and a: every row once, over both runs
    assert server.stats()["total_requests"] == 12
    assert sorted(row["a"] for row in result) == sorted(f"t{i}" for i in range(12))

    again = Pipeline.from_file(path, allow_custom=True).run()["default"]["train"].to_list()
    assert again == result and _calls(calls) == seen and server.stats()["total_requests"] == 12


# -- secrets ---------------------------------------------------------------------------


def test_secrets_never_reach_the_file_and_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    secrets = ["sk-openai-123456", "hunter2", "Bearer tok-987", "sk-ant-abcdef", "hf_token_555", "hf_kw_777"]
    with Pipeline(name="secret") as pipeline:
        data = LoadDataFromDicts(data=[{"instruction": "hi"}])
        task = TextGeneration(name="task", llm=OpenAILLM(
            model="m", api_key=secrets[0], base_url="http://me:hunter2@127.0.0.1:9/v1",
            default_headers={"Authorization": secrets[2], "X-Trace": "keep"}))
        claude = TextGeneration(name="claude", llm=synthpipe.models.AnthropicLLM(model="c", api_key=secrets[3]))
        local = TextGeneration(name="local", llm=synthpipe.models.TransformersLLM(
            model="tiny", token=secrets[4], model_kwargs={"token": secrets[5], "low_cpu_mem_usage": True}))
        data >> [task, claude, local]
    for fmt in ("yaml", "json"):
        text = pipeline.save(tmp_path / f"p.{fmt}", format=fmt).read_text()
        for secret in secrets:
            assert secret not in text
        assert "X-Trace" in text and "low_cpu_mem_usage" in text
    entry = next(s for s in pipeline.dump()["pipeline"]["steps"] if s["name"] == "task")
    assert entry["secrets_left_out"] == ["llm.api_key", "llm.base_url", "llm.default_headers.Authorization"]

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    loaded = Pipeline.from_json(tmp_path / "p.json")
    llm = loaded.steps["task"].llm
    assert llm.api_key.get_secret_value() == "sk-from-the-environment"
    assert llm.base_url == "http://127.0.0.1:9/v1" and llm.default_headers == {"X-Trace": "keep"}


# -- what a file may load --------------------------------------------------------------


def _document(class_path: str, params: dict | None = None, **top: Any) -> dict:
    return {serialization.FORMAT_KEY: 1, "pipeline": {
        "name": "p", "steps": [{"name": "s", "class": class_path, "params": params or {}}], **top}}


def test_user_steps_round_trip_only_when_allowed(tmp_path):
    with Pipeline(name="custom") as pipeline:
        CountingGenerator(name="gen") >> Measure(name="m", factor=2)
    path = pipeline.save(tmp_path / "custom.yaml")
    with pytest.raises(PipelineFileError, match=r"steps_lib:CountingGenerator comes from outside synthpipe.*"
                                                 r"allow_custom=\['steps_lib'\]"):
        Pipeline.from_file(path)
    for allow in (True, ["steps_lib"], "steps_lib"):
        assert Pipeline.from_file(path, allow_custom=allow).dump() == pipeline.dump()
    with pytest.raises(PipelineFileError, match="outside synthpipe"):
        Pipeline.from_file(path, allow_custom=["steps"])  # a prefix of the name is not its package


def test_a_refused_module_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PipelineFileError, match="outside synthpipe"):
        Pipeline.from_dict(_document("planted_module:Step"))
    assert not marker.exists() and "planted_module" not in sys.modules
    with pytest.raises(PipelineFileError, match="has no class Step"):
        Pipeline.from_dict(_document("planted_module:Step"), allow_custom=["planted_module"])
    assert marker.exists()
    sys.modules.pop("planted_module", None)


@pytest.mark.parametrize(("class_path", "message"), [
    ("os:system", "outside synthpipe"),
    ("synthpipe.pipeline.base:current_pipeline", "is not a step class"),
    ("synthpipe.models.openai:OpenAILLM", "is not a step class"),
    ("synthpipe.steps.nowhere:Step", "cannot be imported"),
    ("synthpipe.steps", "must be written 'package.module:ClassName'"),
    (["a", "list"], "must be written 'package.module:ClassName'"),
])
def test_only_step_classes_by_import_path(class_path, message):
    with pytest.raises(PipelineFileError, match=message):
        Pipeline.from_dict(_document(class_path))


def test_a_nested_model_must_be_a_pydantic_model():
    params = {"llm": {"__model__": "synthpipe.errors:SynthpipeError", "params": {}}}
    with pytest.raises(PipelineFileError, match="is not a pydantic model class"):
        Pipeline.from_dict(_document("synthpipe.steps.tasks.text_generation:TextGeneration", params))


def test_yaml_tags_and_aliases_are_refused(tmp_path):
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(f"{serialization.FORMAT_KEY}: 1\npipeline: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(PipelineFileError, match="not a YAML file synthpipe reads"):
        Pipeline.from_yaml(tagged)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n")
    with pytest.raises(PipelineFileError, match="aliases"):
        Pipeline.from_file(bomb)


# -- classes that no file could find again ---------------------------------------------


def test_a_step_defined_in_main_is_refused_at_save(tmp_path):
    main_step = type("Shout", (Step,), {"__module__": "__main__", "process": lambda self, inputs: iter([inputs])})
    with Pipeline(name="main") as pipeline:
        main_step(name="shout")
    with pytest.raises(PipelineFileError, match=r"step 'shout': class Shout is defined in __main__.*"
                                                r"move it into a module of its own"):
        pipeline.save(tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


def test_a_step_defined_in_a_function_is_refused_at_save(tmp_path):
    @step(inputs=["x"], outputs=["x"])
    def Local(inputs: StepInput):
        yield inputs

    with Pipeline(name="local") as pipeline:
        Local(name="local")
    with pytest.raises(PipelineFileError, match="defined inside a function"):
        pipeline.dump()


def test_a_value_that_is_not_data_is_refused_at_save():
    with Pipeline(name="fn") as pipeline:
        LoadDataFromDicts(name="d", data=[{"f": print}])
    with pytest.raises(PipelineFileError, match=r"step 'd'.data\[0\].f: a builtins.builtin_function_or_method "
                                                r"cannot be written"):
        pipeline.dump()


# -- versions and broken files ---------------------------------------------------------


def test_a_file_from_a_newer_synthpipe_says_to_upgrade():
    data = _rich().dump()
    data[serialization.FORMAT_KEY] = serialization.FORMAT_VERSION + 1
    data["synthpipe_version"] = "9.0.0"
    with pytest.raises(PipelineFileError, match=r"written by synthpipe 9.0.0; this synthpipe reads formats up to 1"
                                                r": upgrade synthpipe"):
        Pipeline.from_dict(data, allow_custom=True)


def test_an_older_format_is_migrated_or_refused(monkeypatch):
    current = _rich().dump()
    monkeypatch.setattr(serialization, "FORMAT_VERSION", 2)
    with pytest.raises(PipelineFileError, match="format 1 .*cannot read any more"):
        Pipeline.from_dict(current, allow_custom=True)

    def rename(document: dict) -> dict:  # what a real migration does: reshape, return the next format
        body = dict(document["pipeline"])
        body["name"] = body["name"] + "-migrated"
        return {**document, serialization.FORMAT_KEY: 2, "pipeline": body}

    monkeypatch.setitem(serialization.MIGRATIONS, 1, rename)
    assert Pipeline.from_dict(current, allow_custom=True).name == "rich-migrated"


@pytest.mark.parametrize(("document", "message"), [
    ([], "is not a synthpipe pipeline file"),
    ({"pipeline": {}}, "is not a synthpipe pipeline file"),
    ({"distilabel": {"version": "1.5.3"}, "pipeline": {}}, "was written by distilabel"),
    ({serialization.FORMAT_KEY: "one", "pipeline": {}}, "must be a whole number"),
    ({serialization.FORMAT_KEY: 1}, "'pipeline' must be a mapping"),
    ({serialization.FORMAT_KEY: 1, "pipeline": {"steps": {}}}, "must be a list of steps"),
    ({serialization.FORMAT_KEY: 1, "pipeline": {"steps": [{"name": "x"}]}}, "step #1 must be a mapping"),
    (_document("synthpipe.steps.generators.data:LoadDataFromDicts", {"nope": 1}),
     r"(?s)step 's' \(synthpipe.steps.generators.data:LoadDataFromDicts\) cannot be built.*nope"),
    (_document("synthpipe.steps.generators.data:LoadDataFromDicts", {"batch_size": -1}), "batch_size"),
    (_document("synthpipe.steps.generators.data:LoadDataFromDicts", connections=[{"from": "s", "to": "t"}]),
     "naming steps of the file"),
    (_document("synthpipe.steps.generators.data:LoadDataFromDicts", connections=[{"from": "s", "to": "s"}]),
     "cannot feed itself"),
    ({**_document("synthpipe.steps.generators.data:LoadDataFromDicts"), "pipeline": {
        "name": "p", "no_such_setting": 1, "steps": []}}, None),
    ({serialization.FORMAT_KEY: 1, "pipeline": {"name": "../../elsewhere", "steps": []}}, "must be a plain name"),
    ({serialization.FORMAT_KEY: 1, "pipeline": {"name": 3, "steps": []}}, "must be a plain name"),
])
def test_a_broken_file_is_a_clear_error(document, message):
    if message is None:  # unknown pipeline settings are ignored, as a newer minor version may add some
        assert Pipeline.from_dict(document).name == "p"
        return
    with pytest.raises(PipelineFileError, match=message):
        Pipeline.from_dict(document)


def test_broken_text_is_a_clear_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n")
    with pytest.raises(PipelineFileError, match="is not valid JSON"):
        Pipeline.from_file(tmp_path / "bad.json")
    with pytest.raises(PipelineFileError, match="is not a YAML file synthpipe reads"):
        Pipeline.from_file(tmp_path / "bad.yaml")


def test_save_infers_the_format_and_from_file_reads_both(tmp_path):
    pipeline = _rich()
    as_json = pipeline.save(tmp_path / "p.json")
    assert json.loads(as_json.read_text())[serialization.FORMAT_KEY] == serialization.FORMAT_VERSION
    as_yaml = pipeline.save(tmp_path / "p.pipeline")
    assert as_yaml.read_text().startswith(f"{serialization.FORMAT_KEY}: ")
    no_suffix = tmp_path / "p"
    no_suffix.write_text(as_json.read_text())
    for path in (as_json, as_yaml, no_suffix):
        assert Pipeline.from_file(path, allow_custom=True).dump() == pipeline.dump()
    with pytest.raises(ValueError, match="format must be 'yaml' or 'json'"):
        pipeline.save(tmp_path / "p.toml", format="toml")
