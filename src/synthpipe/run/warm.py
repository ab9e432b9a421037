"""Getting the workers' fork server ready while the run is still being set up.

``Pipeline.run`` calls ``warm`` first thing, before even the runner is imported: the fork server's
interpreter start and its imports then overlap with the coordinator's own (the runner, the plan,
the store), instead of coming after them. Light on purpose: it imports nothing heavy itself.
"""

from __future__ import annotations

from typing import Any

from synthpipe.runtime.forkserver import warm_fork_server

LLM_PRELOAD = ("synthpipe.steps.tasks", "synthpipe.models.openai_client", "aiohttp")
"""What a worker of a step with an LLM imports anyway: preloaded only when such a step is there."""


def worker_preload(steps: list[Any]) -> tuple[str, ...]:
    """The modules the local executor's fork server imports once, so workers start fast: what
    every worker needs (the step API), the modules the steps' classes (and their models') come
    from, and the LLM stack only where a step has an LLM. Only synthpipe's own modules: a user's
    module is imported by each worker, where what goes wrong is reported as its load failure."""
    found = ["synthpipe.steps.base", "synthpipe.pipeline"]
    for step in steps:
        found.append(type(step).__module__)
        llm = getattr(step, "llm", None)
        if llm is not None:
            found.extend([type(llm).__module__, *LLM_PRELOAD])
    return tuple(m for m in dict.fromkeys(found) if m == "aiohttp" or m.startswith("synthpipe."))


def warm(pipeline: Any) -> None:
    """Start the fork server for ``pipeline``'s workers now, in a thread (see the module)."""
    try:
        steps = list(pipeline.dag.nodes.values())
    except Exception:  # noqa: BLE001 - validated later, with a proper message
        return
    warm_fork_server(worker_preload(steps))
