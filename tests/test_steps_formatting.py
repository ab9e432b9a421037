"""The formatting steps (SFT, DPO, conversations), each inside a real pipeline."""

from __future__ import annotations

import hashlib

import pytest

from synthpipe.errors import StepFailed
from synthpipe.pipeline import Pipeline
from synthpipe.steps import (
    ConversationTemplate,
    FormatChatGenerationDPO,
    FormatChatGenerationSFT,
    FormatTextGenerationDPO,
    FormatTextGenerationSFT,
    LoadDataFromDicts,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _run(data, step_cls, **kwargs):
    with Pipeline(name="fmt") as pipeline:
        LoadDataFromDicts(data=data, batch_size=2) >> step_cls(**kwargs)
    return pipeline.run()["default"]["train"].to_list()


def test_text_generation_sft_with_and_without_system_prompt():
    data = [{"instruction": "Say hi", "generation": "hi", "system_prompt": "Be brief"},
            {"instruction": "Count", "generation": "1 2 3", "system_prompt": ""}]
    out = _run(data, FormatTextGenerationSFT)
    assert out[0]["prompt"] == "Say hi" and out[0]["prompt_id"] == _sha("Say hi")
    assert out[0]["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Say hi"},
                                  {"role": "assistant", "content": "hi"}]
    assert out[1]["messages"] == [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1 2 3"}]


def test_chat_generation_sft_appends_the_answer():
    conv = [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "second"}]
    out = _run([{"messages": conv, "generation": "b"}], FormatChatGenerationSFT)
    assert out[0]["prompt"] == "first" and out[0]["prompt_id"] == _sha("first")
    assert out[0]["messages"] == conv + [{"role": "assistant", "content": "b"}]


def test_text_generation_dpo_picks_best_and_worst():
    data = [{"instruction": "Q", "generations": ["g0", "g1", "g2"], "ratings": [3, 5, 1],
             "generation_models": ["m0", "m1", "m2"]},
            {"instruction": "R", "generations": ["x", "y"], "ratings": [None, 2], "generation_models": ["a", "b"]}]
    out = _run(data, FormatTextGenerationDPO)
    first = out[0]
    assert first["prompt"] == "Q" and first["prompt_id"] == _sha("Q")
    assert first["chosen"] == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "g1"}]
    assert first["rejected"][-1] == {"role": "assistant", "content": "g2"}
    assert (first["chosen_rating"], first["rejected_rating"]) == (5, 1)
    assert (first["chosen_model"], first["rejected_model"]) == ("m1", "m2")
    # an unparsable (None) rating is never chosen or rejected
    assert out[1]["chosen"][-1]["content"] == "y" and out[1]["rejected"][-1]["content"] == "y"


def test_chat_generation_dpo():
    conv = [{"role": "user", "content": "hello"}]
    out = _run([{"messages": conv, "generations": ["a", "b"], "ratings": [1.0, 7.5]}], FormatChatGenerationDPO)
    assert out[0]["prompt"] == "hello"
    assert out[0]["chosen"] == conv + [{"role": "assistant", "content": "b"}]
    assert out[0]["rejected"] == conv + [{"role": "assistant", "content": "a"}]
    assert out[0]["chosen_rating"] == 7.5


def test_dpo_with_mismatched_ratings_names_step_and_row():
    data = [{"instruction": "ok", "generations": ["a"], "ratings": [1]},
            {"instruction": "Q", "generations": ["a", "b"], "ratings": [1]}]
    with Pipeline(name="fmt-bad") as pipeline:
        LoadDataFromDicts(data=data, batch_size=2) >> FormatTextGenerationDPO(name="dpo")
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert info.value.step == "dpo"
    assert "row 1 has 2 generations but 1 ratings" in str(info.value)


def test_conversation_template_and_its_type_check():
    out = _run([{"instruction": "hi", "response": "hello"}], ConversationTemplate)
    assert out[0]["conversation"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with Pipeline(name="conv-bad") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "hi", "response": 5}]) >> ConversationTemplate(name="conv")
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert "column 'response' must hold strings; row 0 holds int" in str(info.value)
