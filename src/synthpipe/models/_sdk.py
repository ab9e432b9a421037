"""Small pieces the SDK-based backends share: keys from the environment, clients that close
with their event loop, gathering that cancels the rest on the first failure, redaction."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Optional, TypeVar

from pydantic import SecretStr

from synthpipe.models.http.redaction import redact  # noqa: F401 (its old home)

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


class OneRequestPerGeneration:
    """For SDK clients that answer one generation per request: ``num_generations`` requests go
    out at once. The backend gives ``_new_client()``, ``request_params()`` and ``_one()`` (one
    request: text, input tokens, output tokens), and private ``_client``, ``_semaphore``,
    ``_loop`` and ``_closer`` attributes."""

    async def _open(self) -> tuple[Any, asyncio.Semaphore]:
        """The client and the limiter of the running loop, made on first use in that loop;
        the client closes with that loop."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._client is not None and self._semaphore is not None:  # type: ignore
            return self._client, self._semaphore  # type: ignore[attr-defined]
        client = self._new_client()  # type: ignore[attr-defined]
        closer = close_at_loop_shutdown(client)
        await closer.__anext__()
        semaphore = asyncio.Semaphore(self.concurrency())  # type: ignore[attr-defined]
        self._client, self._semaphore, self._loop, self._closer = client, semaphore, loop, closer  # type: ignore
        return client, semaphore

    def unload(self) -> None:
        self._client = self._semaphore = self._loop = self._closer = None  # type: ignore[attr-defined]

    def requests_per_row(self, num_generations: int) -> int:
        return num_generations

    async def agenerate(self, input: Any, num_generations: int = 1, **kwargs: Any) -> Any:
        from synthpipe.models.base import generations_of_answers

        client, semaphore = await self._open()  # type: ignore[attr-defined]
        params = self.request_params(input, **kwargs)  # type: ignore[attr-defined]
        answers = await gather_or_cancel([self._one(client, semaphore, params)  # type: ignore[attr-defined]
                                          for _ in range(num_generations)])
        return generations_of_answers(answers)
