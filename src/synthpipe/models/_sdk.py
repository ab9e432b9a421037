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
