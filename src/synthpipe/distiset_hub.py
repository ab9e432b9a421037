"""Publishing a Distiset to the Hugging Face Hub: one config per leaf, a dataset card saying how
the data was made, and the pipeline file and log beside the data.

The rows go up through ``datasets``' own ``push_to_hub`` of each leaf's memory-mapped dataset,
which writes and uploads one Parquet shard at a time (``max_shard_size``), so publishing holds
at most a shard in memory, never the whole result. The token is handed to the Hub client only:
it is never printed, logged, or written into the card or the pipeline file (the pipeline file
leaves secret fields out).
"""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthpipe.errors import SynthpipeError

if TYPE_CHECKING:
    from synthpipe.distiset import Distiset

logger = logging.getLogger("synthpipe.hub")
_ARXIV = re.compile(r"arXiv:\s?(\d{4}\.\d{4,5})")


class HubPushError(SynthpipeError):
    """The Hub refused or failed an upload; the message says which repo and what the Hub said."""


def _explain(exc: BaseException, repo_id: str, what: str, token: str | None) -> HubPushError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        reason = "the Hub refused the token (401): check that it is valid and has write access"
    elif status == 403:
        reason = "the token may not write to this repo (403)"
    elif status == 404:
        reason = "the Hub does not know this repo or revision (404)"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if token:
        reason = reason.replace(token, "***")
    return HubPushError(f"push_to_hub('{repo_id}'): {what} failed: {reason}")


def push_to_hub(distiset: Distiset, repo_id: str, private: bool = False, token: str | None = None,
                generate_card: bool = True, include_script: bool = False, **kwargs: Any) -> None:
    """Each leaf as its own config (``load_dataset(repo_id, leaf)``), then the card,
    ``pipeline.yaml``, ``pipeline.log`` (and the running script with ``include_script``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not distiset:
        raise HubPushError(f"push_to_hub('{repo_id}'): the Distiset has no leaf to push")
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token).repo_id
    except (HfHubHTTPError, OSError) as exc:
        raise _explain(exc, repo_id, "creating the dataset repo", token) from None
    kwargs.setdefault("max_shard_size", "200MB")
    for name, dataset_dict in distiset.items():
        try:
            dataset_dict.push_to_hub(repo_id, config_name=name, private=private, token=token, **kwargs)
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise _explain(exc, repo_id, f"uploading config '{name}'", token) from None
        logger.info("pushed config '%s' to dataset repo %s", name, repo_id)
    if generate_card:
        _upload_extras(api, distiset, repo_id, token, include_script)


def _upload_extras(api: Any, distiset: Distiset, repo_id: str, token: str | None, include_script: bool) -> None:
    from huggingface_hub import CommitOperationAdd, DatasetCard
    from huggingface_hub.errors import HfHubHTTPError

    pipeline_yaml = _pipeline_yaml(distiset)
    try:
        card = DatasetCard.load(repo_id, repo_type="dataset", token=token)  # keeps the configs datasets wrote
        metadata = card.data.to_dict()
    except (HfHubHTTPError, OSError) as exc:
        raise _explain(exc, repo_id, "reading back the dataset card", token) from None
    metadata["tags"] = sorted(set(metadata.get("tags") or []) | {"synthetic", "synthpipe"})
    card = DatasetCard(_front_matter(metadata) + render_card(distiset, repo_id, pipeline_yaml))
    ops = [CommitOperationAdd("README.md", io.BytesIO(str(card).encode("utf-8")))]
    if pipeline_yaml is not None:
        ops.append(CommitOperationAdd("pipeline.yaml", io.BytesIO(pipeline_yaml.encode("utf-8"))))
    log = distiset.log_path
    if log is not None and log.is_file():
        ops.append(CommitOperationAdd("pipeline.log", log.read_bytes()))
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if include_script and script is not None and script.is_file():
        ops.append(CommitOperationAdd(script.name, script.read_bytes()))
    try:
        api.create_commit(repo_id, ops, repo_type="dataset", token=token,
                          commit_message="synthpipe: dataset card, pipeline.yaml and pipeline.log")
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise _explain(exc, repo_id, "uploading the card, pipeline.yaml and pipeline.log", token) from None


def _front_matter(metadata: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n"


def _pipeline_yaml(distiset: Distiset) -> str | None:
    """The pipeline file's text; None (with a warning) where the pipeline cannot be written as a
    file, e.g. a step class defined in ``__main__``: the data and the card still go up."""
    from synthpipe.errors import PipelineFileError

    pipeline = getattr(distiset, "pipeline", None)
    if pipeline is not None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="synthpipe-card-") as tmp:
            try:
                return pipeline.save(Path(tmp) / "pipeline.yaml").read_text(encoding="utf-8")
            except PipelineFileError as exc:
                logger.warning("push_to_hub: no pipeline.yaml in the repo: %s", exc)
                return None
    saved = distiset.run_dir / "pipeline.yaml" if distiset.run_dir else None
    return saved.read_text(encoding="utf-8") if saved is not None and saved.is_file() else None


def _models(step: Any) -> list[str]:
    """``Class (model name)`` of each model a step holds in a field (tasks hold one in ``llm``)."""
    found = []
    for name in type(step).model_fields:
        value = getattr(step, name, None)
        values = value if isinstance(value, list) else [value]
        for item in values:
            try:
                model = getattr(item, "model_name", None) if hasattr(type(item), "model_name") else None
            except Exception:  # noqa: BLE001  (a model that cannot name itself is listed by class)
                model = None
            if model is not None or type(item).__name__.endswith(("LLM", "Embeddings")):
                found.append(f"{type(item).__name__} ({model})" if model else type(item).__name__)
    return found


def _papers(step: Any) -> list[str]:
    """arXiv ids the step's class (and its synthpipe bases and their modules) cite in docstrings:
    steps carry no structured citation attribute, so the docstrings are the record."""
    ids: list[str] = []
    for cls in type(step).__mro__:
        if not cls.__module__.startswith("synthpipe."):
            continue
        texts = [cls.__doc__ or "", getattr(sys.modules.get(cls.__module__), "__doc__", None) or ""]
        for text in texts:
            ids.extend(i for i in _ARXIV.findall(text) if i not in ids)
    return ids


def render_card(distiset: Distiset, repo_id: str, pipeline_yaml: str | None) -> str:
    """The card's text: what is in the repo and how it was made (no secrets: the pipeline YAML
    leaves secret fields out, and nothing else here comes from a field's value)."""
    from synthpipe import __version__

    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"Synthetic data made with [synthpipe](https://pypi.org/project/synthpipe/) {__version__}.", "",
             "## Subsets", "", "| config | split | rows | columns |", "|---|---|---|---|"]
    for name, dataset_dict in distiset.items():
        for split, dataset in dataset_dict.items():
            columns = ", ".join(f"`{c}`" for c in dataset.column_names)
            lines.append(f"| {name} | {split} | {dataset.num_rows} | {columns} |")
    first = next(iter(distiset))
    lines += ["", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset("{repo_id}", "{first}")', "```", ""]
    failed: dict[str, int] = {}
    for entry in distiset.failed_rows:
        failed[str(entry.get("step"))] = failed.get(str(entry.get("step")), 0) + 1
    lines += ["## Failed rows", "", f"{len(distiset.failed_rows)} row(s) failed and are not in the data.", ""]
    lines += [f"- step `{step}`: {count}" for step, count in sorted(failed.items())]
    pipeline = getattr(distiset, "pipeline", None)
    papers: list[str] = []
    if pipeline is not None:
        lines += ["", "## Steps", "", "| step | class | models |", "|---|---|---|"]
        for name, step in pipeline.dag.nodes.items():
            lines.append(f"| {name} | `{type(step).__name__}` | {', '.join(_models(step)) or '-'} |")
            papers.extend(p for p in _papers(step) if p not in papers)
    if pipeline_yaml is not None:
        lines += ["", "## Pipeline", "", "`pipeline.yaml` in this repo rebuilds the pipeline "
                  "(`Pipeline.from_yaml`); `pipeline.log` is the run's log.", "", "```yaml",
                  pipeline_yaml.rstrip(), "```"]
    if papers:
        lines += ["", "## References", "", "Papers the steps of this pipeline implement:", ""]
        lines += [f"- [arXiv:{p}](https://arxiv.org/abs/{p})" for p in papers]
    return "\n".join(lines) + "\n"


def train_test_split(distiset: Distiset, train_size: float, shuffle: bool = True,
                     seed: int | None = None) -> Distiset:
    """Every leaf's ``train`` split becomes ``train`` and ``test`` (``train_size`` a fraction in
    (0, 1)), in place, as distilabel's does; returns the Distiset."""
    if not 0 < train_size < 1:
        raise ValueError(f"train_test_split: train_size must be a fraction between 0 and 1, not {train_size!r}")
    for name, dataset_dict in list(distiset.items()):
        distiset[name] = dataset_dict["train"].train_test_split(train_size=train_size, shuffle=shuffle, seed=seed)
    return distiset
