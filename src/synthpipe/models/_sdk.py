"""Small pieces the SDK-based backends share: keys from the environment, clients that close
with their event loop, gathering that cancels the rest on the first failure, redaction."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Optional, TypeVar

from pydantic import SecretStr

T = TypeVar("T")


def env_secret(*names: str) -> Optional[SecretStr]:
    """The first of these environment variables that is set, as a secret."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return SecretStr(value)
    return None


async def close_at_loop_shutdown(client: Any) -> AsyncGenerator[None, None]:
    """Suspended in its ``try`` until the loop's ``shutdown_asyncgens()`` (``asyncio.run`` calls
    it) closes it, and with it the client, while that loop still runs."""
    try:
        yield
    finally:
        await client.close()


async def gather_or_cancel(awaitables: list[Awaitable[T]]) -> list[T]:
    """All results in order; on the first failure the others are cancelled, then it is raised."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def redact(text: str, secret: Optional[str]) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


class OneRequestPerGeneration:
    """For APIs that answer one generation per request: ``num_generations`` requests go out
    at once through the backend's ``_open()`` (client, limiter), ``request_params()`` and
    ``_one()`` (one request: text, input tokens, output tokens)."""

    def requests_per_row(self, num_generations: int) -> int:
        return num_generations

    async def agenerate(self, input: Any, num_generations: int = 1, **kwargs: Any) -> Any:
        from synthpipe.models.base import generations_of_answers

        client, semaphore = await self._open()  # type: ignore[attr-defined]
        params = self.request_params(input, **kwargs)  # type: ignore[attr-defined]
        answers = await gather_or_cancel([self._one(client, semaphore, params)  # type: ignore[attr-defined]
                                          for _ in range(num_generations)])
        return generations_of_answers(answers)
