"""A local GGUF model run by llama.cpp (``llama-cpp-python``), for text and embeddings."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import Field, PrivateAttr

from synthpipe.models.base import BatchLLM, ChatType, Embeddings, GenerateOutput
from synthpipe.models.raw_prompts import MagpieChatTemplateMixin, render_jinja_chat
from synthpipe.steps.base import RuntimeParameter

# distilabel's names for generation kwargs, and llama.cpp's
_RENAMED = {"max_new_tokens": "max_tokens"}
_KNOWN = {"max_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
          "repeat_penalty", "stop", "seed", "logit_bias"}


class LlamaCppLLM(MagpieChatTemplateMixin, BatchLLM):
    """``model_path`` (a GGUF file) in this process. ``chat_format`` overrides the template
    stored in the file. Structured output is native: llama.cpp turns the JSON schema into a
    grammar, so the text cannot leave it (keep string fields bounded, or a long string can
    run into ``max_new_tokens``). ``n_gpu_layers=-1`` puts every layer on the GPU where
    llama.cpp was built with one."""

    model_path: str
    chat_format: Optional[str] = None
    n_ctx: int = 2048
    n_batch: int = 512
    seed: int = 4294967295
    n_gpu_layers: RuntimeParameter[int] = 0
    n_threads: RuntimeParameter[int] = None
    verbose: bool = False
    extra_kwargs: dict[str, Any] = Field(default_factory=dict)

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset({"n_gpu_layers", "n_threads", "verbose", "n_batch"})

    _llm: Any = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return self.model_path

    def load(self) -> None:
        from llama_cpp import Llama

        self._llm = Llama(model_path=self.model_path, chat_format=self.chat_format, n_ctx=self.n_ctx,
                          n_batch=self.n_batch, seed=self.seed, n_gpu_layers=self.n_gpu_layers or 0,
                          n_threads=self.n_threads, verbose=self.verbose, **self.extra_kwargs)

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()  # else its __del__ complains at interpreter exit
            self._llm = None

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        options = {_RENAMED.get(k, k): v for k, v in kwargs.items() if v is not None}
        unknown = sorted(set(options) - _KNOWN)
        if unknown:
            raise ValueError(f"LlamaCppLLM: unknown generation kwargs {unknown}; known: {sorted(_KNOWN)}")
        options.setdefault("max_tokens", 128)
        return options

    def generate_batch(self, inputs: list[ChatType], num_generations: int = 1,
                       **kwargs: Any) -> list[Union[GenerateOutput, BaseException]]:
        if self._llm is None:
            self.load()
        options = self._options(kwargs)
        if self.structured_output is not None:
            options["response_format"] = {"type": "json_object", "schema": self.structured_output.json_schema}
        results: list[Union[GenerateOutput, BaseException]] = []
        for chat in inputs:
            try:
                texts, prompt_tokens, output_tokens = [], [], []
                for _ in range(num_generations):
                    answer = self._llm.create_chat_completion(messages=chat, **options)
                    texts.append(answer["choices"][0]["message"]["content"])
                    prompt_tokens.append(answer["usage"]["prompt_tokens"])
                    output_tokens.append(answer["usage"]["completion_tokens"])
                results.append({"generations": texts,
                                "statistics": {"input_tokens": prompt_tokens, "output_tokens": output_tokens}})
            except Exception as exc:  # e.g. a prompt longer than n_ctx: that row fails, not the batch
                results.append(exc)
        return results


    def supports_raw_prompts(self) -> bool:
        return True

    def render_chat(self, chat: ChatType) -> str:
        """Through the chat template stored in the GGUF file (with its BOS/EOS tokens)."""
        if self._llm is None:
            self.load()
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"LlamaCppLLM: {self.model_path} stores no chat template to render a raw prompt with")

        def token_text(token: int) -> str:
            return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

        return render_jinja_chat(template, chat, bos_token=token_text(self._llm.token_bos()),
                                 eos_token=token_text(self._llm.token_eos()))

    def generate_raw_batch(self, prompts: list[str], num_generations: int = 1,
                           **kwargs: Any) -> list[Union[GenerateOutput, BaseException]]:
        if self._llm is None:
            self.load()
        options = self._options(kwargs)
        results: list[Union[GenerateOutput, BaseException]] = []
        for prompt in prompts:
            try:
                tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
                texts, prompt_tokens, output_tokens = [], [], []
                for _ in range(num_generations):
                    answer = self._llm.create_completion(prompt=tokens, **options)
                    texts.append(answer["choices"][0]["text"])
                    prompt_tokens.append(answer["usage"]["prompt_tokens"])
                    output_tokens.append(answer["usage"]["completion_tokens"])
                results.append({"generations": texts,
                                "statistics": {"input_tokens": prompt_tokens, "output_tokens": output_tokens}})
            except Exception as exc:
                results.append(exc)
        return results


class LlamaCppEmbeddings(Embeddings):
    """Embeddings from a GGUF model through llama.cpp (mean pooling unless the file says otherwise)."""

    model_path: str
    n_ctx: int = 512
    normalize_embeddings: bool = False
    n_gpu_layers: RuntimeParameter[int] = 0
    n_threads: RuntimeParameter[int] = None
    extra_kwargs: dict[str, Any] = Field(default_factory=dict)

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset({"n_gpu_layers", "n_threads"})

    _llm: Any = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return self.model_path

    def load(self) -> None:
        from llama_cpp import Llama

        self._llm = Llama(model_path=self.model_path, embedding=True, n_ctx=self.n_ctx,
                          n_gpu_layers=self.n_gpu_layers or 0, n_threads=self.n_threads, verbose=False,
                          **self.extra_kwargs)

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def encode(self, inputs: list[str]) -> list[list[float]]:
        if self._llm is None:
            self.load()
        vectors = [list(map(float, v)) for v in self._llm.embed(inputs)]
        if self.normalize_embeddings:
            vectors = [_unit(v) for v in vectors]
        return vectors


def _unit(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]
