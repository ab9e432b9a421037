"""Classification tasks (TextClassification, TextClustering, GenerateSentencePair) in real
pipelines against the OpenAI-compatible test server, in structured (JSON) and text modes, with
malformed answers failing their rows alone."""

from __future__ import annotations

import json

import pytest

from synthpipe.errors import PipelineValidationError, StepFailed
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import GenerateSentencePair, TextClassification, TextClustering

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


@pytest.fixture(autouse=True)
def _no_scripted_answers(server):
    server.configure(answers=[], responder=None)
    yield
    server.configure(answers=[], responder=None)


def _llm(server) -> OpenAILLM:
    return OpenAILLM(model="clf-model", base_url=server.base_url, api_key="sk-test", max_retries=1,
                     retry_base_delay=0.01)


def run_task(server, task_cls, rows, name="clf", **task_kw):
    with Pipeline(name=name) as pipeline:
        LoadDataFromDicts(data=rows) >> task_cls(name="task", llm=_llm(server), **task_kw)
    distiset = pipeline.run()
    good = distiset["default"]["train"].to_list() if "default" in distiset else []
    return good, distiset.failed_rows


def last_prompt(server) -> str:
    return "\n".join(m["content"] for m in server.state.recent_requests()[-1]["body"]["messages"])


def last_schema(server):
    fmt = server.state.recent_requests()[-1]["body"].get("response_format")
    return fmt["json_schema"]["schema"] if fmt else None


# -- TextClassification -----------------------------------------------------------------------


def test_single_label_structured_with_available_labels_and_default(server):
    server.configure(answers=[(r"refund", '{"labels": ["complaint"]}'), (r"weather", '{"labels": ["Unclassified"]}'),
                              (r"gibberish", '{"labels": ["sports"]}')])
    rows = [{"text": "I want a refund"}, {"text": "nice weather"}, {"text": "gibberish"}]
    good, failed = run_task(server, TextClassification, rows,
                            available_labels={"complaint": "the writer is unhappy", "praise": "the writer is happy"})
    assert [(r["text"], r["labels"]) for r in good] == [("I want a refund", "complaint"),
                                                        ("nice weather", "Unclassified")]
    assert last_schema(server)["properties"]["labels"]["items"]["enum"] == ["complaint", "praise", "Unclassified"]
    prompt = last_prompt(server)
    assert "- complaint: the writer is unhappy" in prompt and "User Query:" in prompt
    (bad,) = failed  # "sports" is outside the enum: the schema check fails the row
    assert bad["data"]["text"] == "gibberish" and bad["error_type"].endswith("InvalidStructuredOutput")


def test_multi_label_text_mode_with_examples_and_malformed(server):
    server.configure(answers=[(r"shoes", "Labels: fashion, sport"), (r"cake", "Labels: cooking, Gardening"),
                              (r"nothing", "I cannot tell.")])
    rows = [{"text": "running shoes"}, {"text": "a cake recipe"}, {"text": "nothing here"}]
    good, failed = run_task(server, TextClassification, rows, n=3, use_default_structured_output=False,
                            available_labels=["fashion", "sport", "cooking", "gardening"],
                            examples=["Text: a tennis racket\nLabels: sport"], context="Tag shop items.")
    assert [r["labels"] for r in good] == [["fashion", "sport"], ["cooking", "gardening"]]
    prompt = last_prompt(server)
    assert "Tag shop items." in prompt and "Text: a tennis racket" in prompt and "up to 3 labels" in prompt
    (bad,) = failed
    assert bad["data"]["text"] == "nothing here" and "I cannot tell." in bad["message"]
    assert bad["error_type"].endswith("UnparsableAnswer")


def test_free_labels_text_mode_rejects_a_label_outside_the_set_and_checks_columns(server):
    server.configure(answers=[(r"hello", "Labels: greeting"), (r"bye", "Labels: farewell")])
    good, _ = run_task(server, TextClassification, [{"text": "hello"}], use_default_structured_output=False)
    assert good[0]["labels"] == "greeting" and good[0]["model_name"] == "clf-model"
    good, failed = run_task(server, TextClassification, [{"text": "hello"}, {"text": "bye"}], name="clf2",
                            use_default_structured_output=False, available_labels=["greeting"])
    assert [r["text"] for r in good] == ["hello"] and "farewell" in failed[0]["message"]
    with Pipeline(name="missing") as pipeline:
        LoadDataFromDicts(data=[{"prompt": "x"}]) >> TextClassification(name="tc", llm=_llm(server))
    with pytest.raises(PipelineValidationError, match="step 'tc' needs column 'text'"):
        pipeline.run()


# -- TextClustering ---------------------------------------------------------------------------


def test_text_clustering_labels_each_cluster_once(server):
    server.configure(answers=[(r"apple", '{"labels": ["fruit"]}'), (r"python", '{"labels": ["programming"]}'),
                              (r"galaxy", '{"labels": ["space"]}')])
    rows = ([{"text": f"apple {i}", "cluster_label": 0} for i in range(15)]
            + [{"text": f"python {i}", "cluster_label": 1} for i in range(3)]
            + [{"text": f"galaxy {i}", "cluster_label": 2} for i in range(2)]
            + [{"text": "stray", "cluster_label": -1}])
    good, failed = run_task(server, TextClustering, rows, samples_per_cluster=5)
    labels = {r["text"]: json.loads(r["summary_label"]) for r in good}  # JSON-encoded, as distilabel's
    assert all(labels[f"apple {i}"] == "fruit" for i in range(15))
    assert all(labels[f"python {i}"] == "programming" for i in range(3))
    assert labels["stray"] == "Unclassified" and labels["galaxy 1"] == "space"
    assert failed == []
    chat_requests = [r for r in server.state.recent_requests() if "messages" in r["body"]]
    assert len(chat_requests) == 3  # one per named cluster, none for noise
    apple_prompt = next("\n".join(m["content"] for m in r["body"]["messages"]) for r in chat_requests
                        if "apple" in str(r["body"]))
    assert apple_prompt.count("- apple") == 5  # samples_per_cluster


def test_text_clustering_text_mode(server):
    server.configure(answers=[(r"apple", "Labels: fruit, food")])
    rows = [{"text": f"apple {i}", "cluster_label": 0, "projection": [0.1 * i, 0.2]} for i in range(4)]
    good, failed = run_task(server, TextClustering, rows, n=2, use_default_structured_output=False)
    assert failed == [] and [json.loads(r["summary_label"]) for r in good] == [["fruit", "food"]] * 4


def test_text_clustering_an_unusable_cluster_answer_stops_the_run_with_the_raw_text(server):
    server.configure(answers=[(r"apple", '{"labels": ["fruit"]}'), (r"galaxy", "Labels: space")])  # not JSON
    rows = [{"text": "apple", "cluster_label": 0}, {"text": "galaxy", "cluster_label": 1}]
    with pytest.raises(StepFailed, match="cluster 1") as info:
        run_task(server, TextClustering, rows)
    assert "Labels: space" in str(info.value)


# -- GenerateSentencePair ---------------------------------------------------------------------


@pytest.mark.parametrize("action", ["paraphrase", "semantically-similar", "query", "answer"])
def test_sentence_pair_each_action_text_mode(server, action):
    server.configure(answers=[(r"cats", "## Positive\nFelines sleep a lot.\n## Negative\nDogs bark at night.")])
    good, failed = run_task(server, GenerateSentencePair, [{"anchor": "cats sleep much"}], name=f"sp-{action}",
                            action=action, triplet=True, use_default_structured_output=False)
    assert failed == []
    assert (good[0]["positive"], good[0]["negative"]) == ("Felines sleep a lot.", "Dogs bark at night.")
    prompt = last_prompt(server)
    assert {"paraphrase": "paraphrase", "semantically-similar": "same thing", "query": "query",
            "answer": "an answer"}[action] in prompt
    assert "hard one" not in prompt


def test_sentence_pair_structured_hard_negative_context_and_malformed(server):
    server.configure(answers=[(r"broken", '{"positive": "only this"}'),
                              (r"anchor", '{"positive": "p text", "negative": "n text"}')])
    rows = [{"anchor": "anchor one"}, {"anchor": "anchor broken"}]
    good, failed = run_task(server, GenerateSentencePair, rows, action="query", triplet=True, hard_negative=True,
                            context="questions about a bike shop")
    assert [(r["positive"], r["negative"]) for r in good] == [("p text", "n text")]
    assert last_schema(server)["required"] == ["positive", "negative"]
    prompt = last_prompt(server)
    assert "hard one" in prompt and "questions about a bike shop" in prompt
    assert failed[0]["data"]["anchor"] == "anchor broken"  # the schema requires a negative

    server.configure(answers=[(r"nothing", "no idea"), (r"anchor", "Positive: a paraphrase")])
    good, failed = run_task(server, GenerateSentencePair, [{"anchor": "anchor"}, {"anchor": "nothing"}],
                            name="pairs", action="paraphrase", use_default_structured_output=False)
    assert [r["positive"] for r in good] == ["a paraphrase"] and "negative" not in good[0]
    assert failed[0]["error_type"].endswith("UnparsableAnswer") and "no idea" in failed[0]["message"]
