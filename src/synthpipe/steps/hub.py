"""``PushToHub``: a global step that publishes the rows it receives as a Hub dataset.

A global step because a dataset push is one commit of the whole data; the rows pass through
unchanged, so the step can end a pipeline and the Distiset still holds what was pushed.
"""

from __future__ import annotations

from typing import Optional

from pydantic import SecretStr

from synthpipe.steps.base import GlobalStep, RuntimeParameter, StepInput, StepOutput


class PushToHub(GlobalStep):
    """Pushes its input rows to the dataset repo ``repo_id`` as ``split`` (distilabel's
    parameters). ``token`` (else ``HF_TOKEN``/the saved login) is a secret: never written into
    the pipeline file, the log or an error message."""

    repo_id: RuntimeParameter[str] = None
    split: RuntimeParameter[str] = "train"
    private: RuntimeParameter[bool] = False
    token: RuntimeParameter[Optional[SecretStr]] = None

    def process(self, inputs: StepInput) -> StepOutput:
        from datasets import Dataset, DatasetDict
        from huggingface_hub.errors import HfHubHTTPError

        if not self.repo_id:
            raise ValueError(f"step '{self.name}': repo_id is not set (the dataset repo to push to)")
        token = self.token.get_secret_value() if self.token is not None else None
        rows = list(inputs)
        try:
            DatasetDict({self.split: Dataset.from_list(rows)}).push_to_hub(
                self.repo_id, private=self.private, token=token)
        except (HfHubHTTPError, OSError, ValueError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            reason = (f"the Hub answered {status}" + (": the token was refused" if status == 401 else "")
                      if status else f"{type(exc).__name__}: {exc}")
            if token:
                reason = reason.replace(token, "***")
            raise RuntimeError(f"step '{self.name}': pushing {len(rows)} rows to dataset repo "
                               f"'{self.repo_id}' failed: {reason}") from None
        yield rows
