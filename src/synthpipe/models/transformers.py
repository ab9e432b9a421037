"""A local Hugging Face ``transformers`` model: chat templates, left-padded batches."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import Field, PrivateAttr, SecretStr

from synthpipe.models.base import BatchLLM, ChatType, GenerateOutput
from synthpipe.models.raw_prompts import MagpieChatTemplateMixin
from synthpipe.steps.base import RuntimeParameter


class TransformersLLM(MagpieChatTemplateMixin, BatchLLM):
    """``model`` (a local folder, or a hub id where a hub is reachable) run in-process.

    Prompts go through the tokenizer's chat template (or ``chat_template``); a batch is
    generated in one ``model.generate`` call. ``device`` ("cpu", "cuda", "cuda:1"...) or
    ``device_map`` places it. Structured output needs the ``outlines`` package.
    Generation kwargs: max_new_tokens, temperature, top_p, top_k, repetition_penalty,
    do_sample, seed.
    """

    model: str
    revision: str = "main"
    torch_dtype: str = "auto"
    trust_remote_code: bool = False
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    tokenizer: Optional[str] = None
    chat_template: Optional[str] = None
    device: RuntimeParameter[str] = None
    device_map: RuntimeParameter[Union[str, dict[str, Any]]] = None
    token: RuntimeParameter[SecretStr] = None

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset({"device", "device_map", "token"})

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        token = self.token.get_secret_value() if self.token else None
        self._tokenizer = AutoTokenizer.from_pretrained(
            self.tokenizer or self.model, revision=self.revision, trust_remote_code=self.trust_remote_code,
            token=token)
        self._tokenizer.padding_side = "left"  # generation continues at the right end of each prompt
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if self.chat_template is not None:
            self._tokenizer.chat_template = self.chat_template
        dtype = self.torch_dtype if self.torch_dtype == "auto" else getattr(torch, self.torch_dtype)
        self._model = AutoModelForCausalLM.from_pretrained(
            self.model, revision=self.revision, dtype=dtype, trust_remote_code=self.trust_remote_code,
            device_map=self.device_map, token=token, **self.model_kwargs)
        if self.device is not None and self.device_map is None:
            self._model.to(self.device)
        self._model.eval()
        if self.structured_output is not None:
            self._check_outlines()

    def unload(self) -> None:
        self._model = self._tokenizer = None

    def supports_structured_output(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("outlines") is not None

    def _check_outlines(self) -> None:
        try:
            import outlines  # noqa: F401
        except ImportError:
            raise ImportError(
                "structured output with TransformersLLM needs the 'outlines' package: pip install outlines"
            ) from None

    def prompt(self, chat: ChatType) -> str:
        return self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def get_last_hidden_states(self, inputs: list[ChatType]) -> list[Any]:
        """Per input, the last layer's hidden state of each prompt token (a tokens x hidden numpy
        array), for ``GenerateEmbeddings``. One prompt at a time, so no padding enters a state."""
        if self._model is None:
            self.load()
        import torch

        states = []
        with torch.no_grad():
            for chat in inputs:
                encoded = self._tokenizer(self.prompt(chat), return_tensors="pt", add_special_tokens=False)
                output = self._model(**encoded.to(self._model.device), output_hidden_states=True)
                states.append(output.hidden_states[-1][0].float().cpu().numpy())
        return states

    def generate_batch(self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        if self._model is None:
            self.load()
        if self.structured_output is not None:
            return [self._generate_structured(chat, num_generations, **kwargs) for chat in inputs]
        return self._generate_prompts([self.prompt(chat) for chat in inputs], num_generations, **kwargs)

    def supports_raw_prompts(self) -> bool:
        return True

    def render_chat(self, chat: ChatType) -> str:
        if self._tokenizer is None:
            self.load()
        return self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)

    def generate_raw_batch(self, prompts: list[str], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        """Continues each prompt string as it is (its special tokens included)."""
        if self._model is None:
            self.load()
        return self._generate_prompts(list(prompts), num_generations, **kwargs)

    def _generate_prompts(self, prompts: list[str], num_generations: int, **kwargs: Any) -> list[GenerateOutput]:
        import torch

        inputs = prompts
        encoded = self._tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(self._model.device)
        seed = kwargs.pop("seed", None)
        if seed is not None:
            torch.manual_seed(int(seed))
        options = {"max_new_tokens": 128, "do_sample": True, **kwargs}
        if not options.get("do_sample"):
            for sampling_only in ("temperature", "top_p", "top_k"):
                options.pop(sampling_only, None)
        with torch.inference_mode():
            output = self._model.generate(
                **encoded, num_return_sequences=num_generations, pad_token_id=self._tokenizer.pad_token_id,
                **options)
        prompt_length = encoded["input_ids"].shape[1]
        new_tokens = output[:, prompt_length:]
        input_tokens = encoded["attention_mask"].sum(dim=1).tolist()
        eos = self._tokenizer.eos_token_id
        results: list[GenerateOutput] = []
        for i in range(len(inputs)):
            rows = new_tokens[i * num_generations:(i + 1) * num_generations]
            texts, counts = [], []
            for row in rows:
                ids = row.tolist()
                used = [t for t in ids if t != self._tokenizer.pad_token_id or t == eos]
                if eos in used:
                    used = used[: used.index(eos) + 1]
                counts.append(len(used))
                texts.append(self._tokenizer.decode(used, skip_special_tokens=True))
            results.append({"generations": texts, "statistics": {
                "input_tokens": [int(input_tokens[i])] * num_generations, "output_tokens": counts}})
        return results

    def _generate_structured(self, chat: ChatType, num_generations: int, **kwargs: Any) -> GenerateOutput:
        """JSON constrained to the schema by outlines (its transformers integration)."""
        import json

        import outlines
        import torch
        from outlines.types import JsonSchema

        assert self.structured_output is not None
        model = outlines.from_transformers(self._model, self._tokenizer)
        generator = outlines.Generator(model, JsonSchema(json.dumps(self.structured_output.json_schema)))
        prompt = self.prompt(chat)
        max_new_tokens = int(kwargs.get("max_new_tokens", 256))
        # outlines masks logits through torch.compile: seconds of compiling for nothing here
        with torch._dynamo.config.patch(disable=True):
            texts = [generator(prompt, max_new_tokens=max_new_tokens) for _ in range(num_generations)]
        prompt_tokens = len(self._tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return {"generations": texts, "statistics": {
            "input_tokens": [prompt_tokens] * num_generations,
            "output_tokens": [len(self._tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]}}
