"""``RewardModelScore``: a reward model's score for each response or conversation.

A reward model (Ouyang et al., 2022, arXiv:2203.02155: a language model with a scalar head,
trained on human preferences) reads the whole exchange and gives one number: higher is
better. Loaded with ``transformers``' ``AutoModelForSequenceClassification``; the exchange is
rendered with the tokenizer's own chat template, as the model was trained.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from pydantic import Field, PrivateAttr, SecretStr

from synthpipe.steps.base import Step, StepInput, StepOutput


def _token_from_env() -> Optional[SecretStr]:
    token = os.environ.get("HF_TOKEN")
    return SecretStr(token) if token else None


class RewardModelScore(Step):
    """Scores each row with the reward model ``model`` (a local folder, or a hub id where a hub
    is reachable) into ``score`` (a float; a list of floats for a model with several outputs).

    A row gives either ``instruction`` and ``response`` (scored as a user turn and an
    assistant turn) or ``conversation`` (a list of ``{"role", "content"}`` turns, scored as
    it is). A batch is checked whole before the model sees it: a row with neither, or with a
    value of the wrong type, stops the batch with an error naming the step, the row and the
    column. ``truncation``/``max_length`` cut long exchanges (off by default: a cut exchange
    is scored on its beginning only). ``torch_dtype`` is "auto" or a torch dtype name
    ("float16"...); ``device_map`` places the model ("auto", "cuda", a dict); ``token``
    defaults to ``HF_TOKEN``.
    """

    model: str
    revision: str = "main"
    torch_dtype: str = "auto"
    trust_remote_code: bool = False
    device_map: Union[str, dict[str, Any], None] = None
    token: Optional[SecretStr] = Field(default_factory=_token_from_env)
    truncation: bool = False
    max_length: Optional[int] = Field(default=None, ge=1)

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)

    @property
    def inputs(self) -> dict[str, bool]:
        return {"instruction": False, "response": False, "conversation": False}

    @property
    def outputs(self) -> list[str]:
        return ["score"]

    def input_problems(self, available: set[str]) -> list[str]:
        named = {c: self.input_mappings.get(c, c) for c in ("instruction", "response", "conversation")}
        if {named["instruction"], named["response"]} <= available or named["conversation"] in available:
            return []
        return [f"step '{self.name}' needs columns '{named['instruction']}' and '{named['response']}', or "
                f"'{named['conversation']}', which no step before it produces; available: "
                f"{', '.join(sorted(available)) or 'none'}"]

    def load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise ImportError(f"step '{self.name}' (RewardModelScore) needs 'torch' and 'transformers': pip install "
                              f"'synthpipe[transformers]' ({exc})") from exc
        token = self.token.get_secret_value() if self.token else None
        self._tokenizer = AutoTokenizer.from_pretrained(self.model, revision=self.revision,
                                                        trust_remote_code=self.trust_remote_code, token=token)
        if self._tokenizer.chat_template is None:
            raise ValueError(f"step '{self.name}': the tokenizer of {self.model!r} has no chat template, so the "
                             "exchange cannot be rendered as the reward model was trained on")
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        dtype = self.torch_dtype if self.torch_dtype == "auto" else getattr(torch, self.torch_dtype)
        self._model = AutoModelForSequenceClassification.from_pretrained(
            self.model, revision=self.revision, dtype=dtype, trust_remote_code=self.trust_remote_code,
            device_map=self.device_map, token=token)
        if self._model.config.pad_token_id is None:  # else a padded batch of more than one row is refused
            self._model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model.eval()

    def unload(self) -> None:
        self._model = self._tokenizer = None

    def _conversation(self, row: dict[str, Any], index: int) -> list[dict[str, Any]]:
        """The exchange of one row, checked."""
        instruction, response = row.get("instruction"), row.get("response")
        if instruction is not None or response is not None:
            for column, value in (("instruction", instruction), ("response", response)):
                if not isinstance(value, str):
                    raise TypeError(f"step '{self.name}': row {index} needs a str '{column}' with its "
                                    f"{'response' if column == 'instruction' else 'instruction'} (or a "
                                    f"'conversation' instead); it holds {type(value).__name__} {value!r:.80}")
            return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
        turns = row.get("conversation")
        if turns is None:
            raise KeyError(f"step '{self.name}': row {index} has neither 'instruction' and 'response' nor "
                           f"'conversation' (it has {sorted(row)})")
        if (not isinstance(turns, list) or not turns
                or not all(isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
                           for t in turns)):
            raise TypeError(f"step '{self.name}': column 'conversation' must hold a non-empty list of "
                            f"{{'role': str, 'content': str}} turns; row {index} holds {turns!r:.80}")
        return turns

    def process(self, inputs: StepInput) -> StepOutput:
        chats = [self._conversation(row, i) for i, row in enumerate(inputs)]
        if not chats:
            yield inputs
            return
        if self._model is None:
            self.load()
        for row, score in zip(inputs, self._scores(chats), strict=True):
            row["score"] = score
        yield inputs

    def _scores(self, chats: list[list[dict[str, Any]]]) -> list[Any]:
        import torch

        texts = [self._tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
        # The template writes the special tokens itself; the attention mask keeps padding out.
        encoded = self._tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                                  truncation=self.truncation, max_length=self.max_length)
        with torch.inference_mode():
            logits = self._model(**encoded.to(self._model.device)).logits.float().cpu()
        if logits.shape[-1] == 1:
            return [float(x) for x in logits[:, 0].tolist()]
        return [[float(x) for x in row] for row in logits.tolist()]
