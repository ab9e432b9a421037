"""vLLM's offline engine in this process (a GPU machine with ``vllm`` installed).

Prompts go through the model's chat template; a batch is one ``LLM.generate`` call, which
vLLM schedules continuously on the GPU. Structured output is vLLM's own guided decoding
(``StructuredOutputsParams(json=...)``, or ``GuidedDecodingParams`` before vLLM 0.12).
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import Field, PrivateAttr

from synthpipe.models.base import BatchLLM, ChatType, GenerateOutput
from synthpipe.models.raw_prompts import MagpieChatTemplateMixin
from synthpipe.steps.base import RuntimeParameter

_RENAMED = {"max_new_tokens": "max_tokens"}


class vLLM(MagpieChatTemplateMixin, BatchLLM):  # noqa: N801 - the name distilabel users know
    model: str
    dtype: str = "auto"
    trust_remote_code: bool = False
    quantization: Optional[str] = None
    revision: Optional[str] = None
    tokenizer: Optional[str] = None
    chat_template: Optional[str] = None
    seed: int = 0
    extra_kwargs: dict[str, Any] = Field(default_factory=dict)
    gpu_memory_utilization: RuntimeParameter[float] = 0.9
    tensor_parallel_size: RuntimeParameter[int] = 1
    max_model_len: RuntimeParameter[int] = None

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset({"gpu_memory_utilization", "tensor_parallel_size"})

    _engine: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> None:
        from vllm import LLM as Engine

        self._engine = Engine(
            model=self.model, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
            quantization=self.quantization, revision=self.revision, tokenizer=self.tokenizer, seed=self.seed,
            gpu_memory_utilization=self.gpu_memory_utilization or 0.9,
            tensor_parallel_size=self.tensor_parallel_size or 1, max_model_len=self.max_model_len,
            **self.extra_kwargs)
        self._tokenizer = self._engine.get_tokenizer()
        if self.chat_template is not None:
            self._tokenizer.chat_template = self.chat_template

    def unload(self) -> None:
        self._engine = self._tokenizer = None

    def sampling_params(self, num_generations: int, **kwargs: Any) -> Any:
        from vllm import SamplingParams

        options = {_RENAMED.get(k, k): v for k, v in kwargs.items() if v is not None}
        options.setdefault("max_tokens", 128)
        if self.structured_output is not None:
            schema = self.structured_output.json_schema
            try:
                from vllm.sampling_params import StructuredOutputsParams

                options["structured_outputs"] = StructuredOutputsParams(json=schema)
            except ImportError:  # vLLM before 0.12
                from vllm.sampling_params import GuidedDecodingParams

                options["guided_decoding"] = GuidedDecodingParams(json=schema)
        return SamplingParams(n=num_generations, **options)

    def generate_batch(self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        if self._engine is None:
            self.load()
        prompts = [self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                   for chat in inputs]
        return self._generate_prompts(prompts, num_generations, **kwargs)

    def supports_raw_prompts(self) -> bool:
        return True

    def render_chat(self, chat: ChatType) -> str:
        if self._engine is None:
            self.load()
        return self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)

    def generate_raw_batch(self, prompts: list[str], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        if self._engine is None:
            self.load()
        return self._generate_prompts(list(prompts), num_generations, **kwargs)

    def _generate_prompts(self, prompts: list[str], num_generations: int, **kwargs: Any) -> list[GenerateOutput]:
        outputs = self._engine.generate(prompts, self.sampling_params(num_generations, **kwargs), use_tqdm=False)
        results: list[GenerateOutput] = []
        for output in outputs:
            texts = [choice.text for choice in output.outputs]
            results.append({"generations": texts, "statistics": {
                "input_tokens": [len(output.prompt_token_ids or [])] * len(texts),
                "output_tokens": [len(choice.token_ids) for choice in output.outputs]}})
        return results
