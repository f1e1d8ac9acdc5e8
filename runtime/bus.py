"""Wake-ups between processes: LISTEN/NOTIFY, used as a doorbell, never as the data.

Events and commands live in PostgreSQL. The bus only says "run X has news": local watchers are
woken at once, other processes through one NOTIFY per short batch. A lost notification costs
latency, not data: watchers also poll, and owners sweep pending commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from typing import Any
from uuid import UUID

import asyncpg

from runtime.sql import queries

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "stepwell_events"
COMMANDS_CHANNEL = "stepwell_commands"
SCHEDULES_CHANNEL = "stepwell_schedules"
BATCH_DELAY_S = 0.01
MAX_PAYLOAD = 7800  # NOTIFY payloads must stay under 8000 bytes
RECONNECT_DELAY_S = 1.0


class Subscription:
    """A doorbell for one watcher of one run."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, max_wait_s: float) -> None:
        """Return when woken or after `max_wait_s` seconds, whichever is first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait_s):
                await self._event.wait()
        self._event.clear()


# (kind, id): kind is "run" or "job", the aggregate whose owner should look at its commands.
CommandHandler = Callable[[str, UUID], Coroutine[Any, Any, None]]


class EventBus:
    """Local watchers plus LISTEN/NOTIFY to the other processes sharing the database."""

    def __init__(self, database_url: str, node_id: str) -> None:
        self.database_url = database_url
        self.node_id = node_id
        self.on_command: CommandHandler | None = None
        self.on_schedules_changed: Callable[[], None] | None = None
        self._watchers: dict[UUID, set[Subscription]] = defaultdict(set)
        self._outbox: set[UUID] = set()
        self._outbox_ready = asyncio.Event()
        self._conn: asyncpg.Connection[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        await self._connect()
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="bus:flush"),
            asyncio.create_task(self._watch_connection(), name="bus:watch"),
        ]

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        await conn.add_listener(EVENTS_CHANNEL, self._on_events)
        await conn.add_listener(COMMANDS_CHANNEL, self._on_commands)
        await conn.add_listener(SCHEDULES_CHANNEL, self._on_schedules)
        self._conn = conn

    async def _watch_connection(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_DELAY_S)
            if self._conn is not None and not self._conn.is_closed():
                continue
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError):
                log.warning("bus reconnect failed; retrying")

    @contextlib.contextmanager
    def subscribe(self, run_id: UUID) -> Iterator[Subscription]:
        """Watch one run for as long as the `with` block lasts."""
        sub = Subscription()
        self._watchers[run_id].add(sub)
        try:
            yield sub
        finally:
            watchers = self._watchers.get(run_id)
            if watchers is not None:
                watchers.discard(sub)
                if not watchers:
                    del self._watchers[run_id]

    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def published(self, run_id: UUID) -> None:
        """A run's new events are committed: wake local watchers, tell the other processes."""
        self._wake(run_id)
        self._outbox.add(run_id)
        self._outbox_ready.set()

    async def command_written(self, key: UUID, kind: str = "run") -> None:
        """A command for a run (or job) another process owns is committed: ring its owner."""
        await self._notify(COMMANDS_CHANNEL, f"{self.node_id}|{kind}|{key}")

    async def schedules_changed(self) -> None:
        """A schedule was created or changed: every process's cron actor looks again."""
        await self._notify(SCHEDULES_CHANNEL, self.node_id)

    def _on_schedules(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if self.on_schedules_changed is not None and str(payload) != self.node_id:
            self.on_schedules_changed()

    def _wake(self, run_id: UUID) -> None:
        for sub in self._watchers.get(run_id, ()):
            sub.wake()

    async def _flush_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            await asyncio.sleep(BATCH_DELAY_S)
            self._outbox_ready.clear()
            run_ids, self._outbox = self._outbox, set()
            for payload in _batches(self.node_id, run_ids):
                await self._notify(EVENTS_CHANNEL, payload)

    async def _notify(self, channel: str, payload: str) -> None:
        conn = self._conn
        if conn is None or conn.is_closed() or self._closing:
            return  # watchers poll; nothing is lost
        try:
            await conn.execute(queries["notify"], channel, payload)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("NOTIFY failed", extra={"channel": channel})

    def _on_events(self, conn: object, pid: int, channel: str, payload: object) -> None:
        sender, _, ids = str(payload).partition("|")
        if sender == self.node_id:
            return
        for text in ids.split(","):
            with contextlib.suppress(ValueError):
                self._wake(UUID(text))

    def _on_commands(self, conn: object, pid: int, channel: str, payload: object) -> None:
        _, _, rest = str(payload).partition("|")
        kind, _, text = rest.partition("|")
        handler = self.on_command
        if handler is None:
            return
        with contextlib.suppress(ValueError):
            key = UUID(text)

            async def deliver() -> None:
                await handler(kind, key)

            task = asyncio.get_running_loop().create_task(deliver())
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()


def _batches(node_id: str, run_ids: set[UUID]) -> Iterator[str]:
    head = f"{node_id}|"
    batch: list[str] = []
    size = len(head)
    for run_id in run_ids:
        text = str(run_id)
        if batch and size + len(text) + 1 > MAX_PAYLOAD:
            yield head + ",".join(batch)
            batch, size = [], len(head)
        batch.append(text)
        size += len(text) + 1
    if batch:
        yield head + ",".join(batch)
