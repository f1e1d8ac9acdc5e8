"""Chores repeated on a fixed period in the background of a process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)


def every(seconds: float, chore: Callable[[], Awaitable[object]], name: str) -> asyncio.Task[None]:
    """Run `chore` every `seconds` until the returned task is cancelled. A round that fails
    on the database or the network is logged, and the next one comes all the same."""

    async def rounds() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await chore()
            except (OSError, asyncpg.PostgresError):
                log.warning("%s failed; trying again in %s s", name, seconds)

    return asyncio.create_task(rounds(), name=name)
