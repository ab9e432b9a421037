"""What each runtime parameter does, for ``synthpipe pipeline info`` where a field carries no
description of its own (a field's ``Field(description=...)`` always wins). Keyed by field name:
the same name means the same thing across synthpipe's steps and models."""

from __future__ import annotations

DOCS: dict[str, str] = {
    "input_batch_size": "Rows the step receives in one batch.",
    "batch_size": "Rows in each batch this step produces (a loader), or texts encoded at once (an embedding model).",
    "generation_kwargs": "Keyword arguments for each generation (temperature, max_new_tokens, top_p, ...; "
                         "the names the backend takes).",
    "api_key": "The key sent to the API (read from the provider's environment variable when not given); "
               "never shown.",
    "base_url": "The URL of the API endpoint.",
    "api_base": "The URL of the API endpoint.",
    "timeout": "Seconds one request may take before it is retried.",
    "max_retries": "Retries of a request that failed for a reason worth retrying (429, 5xx, a timeout).",
    "num_retries": "Retries of a request that failed for a reason worth retrying (429, 5xx, a timeout).",
    "max_concurrency": "Requests in flight at once (shared among the step's replicas).",
    "requests_per_minute": "At most this many requests a minute (none: no limit but the server's 429s).",
    "tokens_per_minute": "At most this many tokens a minute (none: no limit but the server's 429s).",
    "endpoint_name": "The name of a dedicated Inference Endpoint to call.",
    "endpoint_namespace": "The namespace (user or organisation) of the Inference Endpoint.",
    "device": "The device the model runs on (cpu, cuda, cuda:1, mps; none: the best there is).",
    "device_map": "How the model's layers are spread over devices (transformers' device_map).",
    "token": "The Hugging Face token used to read or write the Hub; never shown.",
    "n_gpu_layers": "Layers put on the GPU (-1: all of them).",
    "n_threads": "CPU threads llama.cpp uses (none: its default).",
    "gpu_memory_utilization": "The share of GPU memory vLLM may take.",
    "tensor_parallel_size": "GPUs the model is split over.",
    "max_model_len": "The longest context, in tokens, the engine accepts (none: the model's).",
    "repo_id": "The Hub dataset repository (owner/name).",
    "split": "Which split of the dataset to read.",
    "config": "Which configuration (subset) of the dataset to read.",
    "revision": "The branch, tag or commit of the repository to read.",
    "streaming": "Read the dataset as it downloads instead of all of it first.",
    "num_examples": "Read only this many rows (none: all).",
    "private": "Create the repository as private.",
    "dataset_path": "The path of the dataset file or folder to read.",
    "data_files": "The data files to read (a path, a glob, or a list of them).",
    "filetype": "The format of the files (csv, json, parquet...; none: from the file names).",
}


def doc_of(name: str, given: str | None) -> str:
    """The field's own description, else the shared one, else nothing."""
    return (given or "").strip() or DOCS.get(name, "")
