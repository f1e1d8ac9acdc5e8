"""One live actor per key: spawned on demand, reaped when idle, crashes reported."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from actors.base import Actor

log = logging.getLogger(__name__)

CrashHandler = Callable[[str, BaseException], Awaitable[None]]


class RegistryClosed(RuntimeError):
    """The registry is shut down and spawns no more actors."""


class ActorRegistry:
    """Owns the actors of one process by key and supervises them.

    An actor that stops is forgotten; one that stopped because of a failure is also reported
    to `on_crash(key, exc)`, so the layer above can make the failure visible instead of leaving
    its work silently stuck.
    """

    def __init__(self, on_crash: CrashHandler | None = None) -> None:
        self._on_crash = on_crash
        self._actors: dict[str, Actor] = {}
        # Every actor whose task has not finished, including ones already replaced under
        # their key, so that shutdown waits for (or kills) all of them.
        self._running: set[Actor] = set()
        self._reports: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        """Keys with a live actor (a stopped one is forgotten a loop tick after `stopped`)."""
        return [key for key, actor in self._actors.items() if actor.is_alive]

    def get(self, key: str) -> Actor | None:
        """The live actor for `key`, or None (an actor that is stopping counts as gone)."""
        actor = self._actors.get(key)
        return actor if actor is not None and actor.is_alive else None

    def get_or_spawn(self, key: str, factory: Callable[[], Actor]) -> Actor:
        """The live actor for `key`, spawned and started with `factory` when there is none.

        Synchronous on purpose: with no await between the lookup and the registration, tasks
        calling this concurrently all get the same actor.
        """
        current = self._actors.get(key)
        if current is not None and current.is_alive:
            return current
        if self._closed:
            raise RegistryClosed(f"cannot spawn actor {key!r}: the registry is shut down")
        actor = factory()
        if actor.key != key:
            raise ValueError(f"factory for key {key!r} made an actor keyed {actor.key!r}")
        self._actors[key] = actor
        self._running.add(actor)
        # A predecessor still stopping (flushing state in on_stop) finishes before this starts.
        task = actor.start(after=current)
        task.add_done_callback(partial(self._on_actor_done, actor))
        return actor

    def tell(self, key: str, message: object, factory: Callable[[], Actor]) -> None:
        """Tell the actor for `key`, spawning it first if needed."""
        self.get_or_spawn(key, factory).tell(message)

    async def ask(
        self,
        key: str,
        message: object,
        factory: Callable[[], Actor],
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Ask the actor for `key`, spawning it first if needed."""
        return await self.get_or_spawn(key, factory).ask(message, timeout)

    async def stop(self, key: str) -> None:
        """Stop the actor for `key`, if any, and wait until it has stopped."""
        actor = self._actors.get(key)
        if actor is not None:
            await actor.stop_and_wait()

    async def stop_all(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop every actor and refuse new spawns; kill those not stopped within `timeout`."""
        self._closed = True
        actors = list(self._running)
        for actor in actors:
            actor.stop()
        tasks = [actor.task for actor in actors if actor.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            log.warning("actor task %s did not stop within %.1fs; cancelling", task, timeout)
            task.cancel()
        if late:
            _, stuck = await asyncio.wait(late, timeout=timeout)
            for task in stuck:
                log.error("actor task %s ignored cancellation", task)

    # -- idle reaping --------------------------------------------------------------------------

    async def reap_idle(self, max_idle_s: float) -> int:
        """Stop quiet actors that say they are idle and had no message for `max_idle_s`.

        Returns how many were stopped, after they have stopped.
        """
        now = time.monotonic()
        quiet = [
            actor
            for actor in self._actors.values()
            if actor.is_alive and not actor.busy and now - actor.last_activity > max_idle_s
        ]
        # is_idle() is the subclass's word, so it is asked last and only of quiet actors.
        idle = [actor for actor in quiet if actor.is_idle()]
        for actor in idle:
            actor.stop()
        await asyncio.gather(*(actor.stopped.wait() for actor in idle))
        return len(idle)

    def start_reaper(self, interval_s: float, max_idle_s: float) -> None:
        """Run `reap_idle(max_idle_s)` every `interval_s` seconds until `close()`."""
        if self._reaper is not None:
            raise RuntimeError("cannot start the reaper: already started")
        self._reaper = asyncio.create_task(
            self._reap_forever(interval_s, max_idle_s), name="actor-reaper"
        )

    async def _reap_forever(self, interval_s: float, max_idle_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reap_idle(max_idle_s)
            except Exception:
                # One bad is_idle() must not end reaping for every other actor.
                log.exception("reaping idle actors failed")

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Shut down: stop the reaper, stop every actor, wait for crash reports to finish."""
        if self._reaper is not None:
            self._reaper.cancel()
            # asyncio.wait, not await: a cancellation of close() itself must still propagate.
            await asyncio.wait([self._reaper])
            self._reaper = None
        await self.stop_all(timeout)
        if self._reports:
            await asyncio.wait(list(self._reports))

    # -- supervision ---------------------------------------------------------------------------

    def _on_actor_done(self, actor: Actor, task: asyncio.Task[None]) -> None:
        self._running.discard(actor)
        if self._actors.get(actor.key) is actor:
            del self._actors[actor.key]
        failure = actor.failure
        if failure is None and not task.cancelled():
            failure = task.exception()  # a kernel bug; report it like any crash
        if failure is None or self._on_crash is None:
            return
        report = asyncio.create_task(
            self._report_crash(self._on_crash, actor.key, failure),
            name=f"actor-crash:{actor.key}",
        )
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)

    @staticmethod
    async def _report_crash(on_crash: CrashHandler, key: str, failure: BaseException) -> None:
        try:
            await on_crash(key, failure)
        except Exception:
            log.exception("on_crash for actor %r failed", key)
