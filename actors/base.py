"""The actor kernel: one asyncio task per actor, a bounded mailbox, messages one at a time.

Modelled on pykka. `tell` is fire-and-forget and `ask` awaits a reply. An error raised while
answering an `ask` goes back to the asker and the actor carries on; an error raised by a `tell`
has nobody to go to, so it calls `on_failure` and stops the actor, and whoever supervises it
(the registry) hears about it through `failure` and `stopped`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message in a mailbox; `reply` is set for an `ask` and None for a `tell`."""

    message: object
    reply: asyncio.Future[Any] | None


class ActorError(Exception):
    """The actor could not take the message."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class MailboxFull(ActorError):
    """The actor's mailbox is full; try again."""


class ActorStopped(ActorError):
    """The actor has stopped and takes no more messages."""


class ActorState(StrEnum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Actor(ABC):
    """State owned by one asyncio task, changed only by messages handled one at a time, in order.

    Subclasses implement `receive` and may override the hooks. `on_start` runs before the first
    message. `on_stop` runs once for every actor that started, after pending asks have been
    failed, whether it stopped on request or after a failure (then `on_failure` runs first),
    even one whose `on_start` raised half-way: cleanup (timers, tasks) lives in one place and
    must cope with partial state. A hard kill (cancelling the task) skips `on_stop`.

    Never `await self.ask(...)` or `await self.stop_and_wait()` from inside `receive`: the actor
    would wait on itself. `self.tell(...)` and `self.stop()` are fine.
    """

    # The kernel's own attributes and methods are name-mangled (`__x`) so that a subclass's
    # `_state` or `_handle` cannot silently replace them.

    def __init__(self, key: str, mailbox_size: int = 1000) -> None:
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, got {mailbox_size}")
        self.key = key
        self.mailbox_size = mailbox_size
        self.last_activity = time.monotonic()
        self.__state = ActorState.NEW
        self.__mailbox: deque[Envelope] = deque()
        self.__current: Envelope | None = None
        # Set whenever there is something for the loop to look at: a message or a stop request.
        self.__wakeup = asyncio.Event()
        self.__stopped = asyncio.Event()
        self.__failure: BaseException | None = None
        self.__task: asyncio.Task[None] | None = None

    # -- hooks (on_start and on_stop are optional, hence empty rather than abstract) ------------

    async def on_start(self) -> None:  # noqa: B027
        """Runs in the actor's task before the first message; raising stops the actor."""

    async def on_stop(self) -> None:  # noqa: B027
        """Runs as the actor stops (after a failure too: cope with half-built state)."""

    async def on_failure(self, exc: BaseException) -> None:
        """Runs when `on_start` or a told message raised; the actor then stops."""
        log.error("actor %r failed", self.key, exc_info=exc)

    @abstractmethod
    async def receive(self, message: object) -> Any:
        """Handle one message; the return value is the reply to an `ask`."""

    def is_idle(self) -> bool:
        """Whether the actor may be stopped when quiet (say False while timers are armed)."""
        return True

    # -- state seen by supervisors -------------------------------------------------------------

    @property
    def state(self) -> ActorState:
        return self.__state

    @property
    def is_alive(self) -> bool:
        """True until a stop is requested or a failure happens: the actor takes messages."""
        return self.__state in (ActorState.NEW, ActorState.RUNNING)

    @property
    def busy(self) -> bool:
        """A message is being handled or waiting in the mailbox."""
        return self.__current is not None or bool(self.__mailbox)

    @property
    def stopped(self) -> asyncio.Event:
        """Set once the actor has fully stopped (hooks done, pending asks failed)."""
        return self.__stopped

    @property
    def failure(self) -> BaseException | None:
        """The exception that stopped the actor, or None for a requested stop."""
        return self.__failure

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self.__task

    # -- messaging -----------------------------------------------------------------------------

    def tell(self, message: object) -> None:
        """Queue a message without waiting; raise MailboxFull or ActorStopped if it can't be."""
        self.__enqueue(Envelope(message, None))

    async def ask(self, message: object, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Queue a message and await the reply; `receive`'s exception is raised here.

        On timeout the message stays queued and may still be handled: the asker only stops
        waiting, as with any timeout.
        """
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.__enqueue(Envelope(message, reply))
        async with asyncio.timeout(timeout):
            return await reply

    def __enqueue(self, envelope: Envelope) -> None:
        if not self.is_alive:
            raise ActorStopped(f"cannot take a message: actor {self.key!r} is {self.__state}")
        if len(self.__mailbox) >= self.mailbox_size:
            raise MailboxFull(
                f"the mailbox of actor {self.key!r} is full ({self.mailbox_size}); try again"
            )
        self.__mailbox.append(envelope)
        self.last_activity = time.monotonic()
        self.__wakeup.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, *, after: Actor | None = None) -> asyncio.Task[None]:
        """Start the actor's task (or return it if started).

        With `after`, `on_start` waits until that actor has stopped, so a replacement never
        overlaps the actor it replaces; messages told meanwhile wait in the mailbox.
        """
        if self.__task is not None:
            return self.__task
        if self.__state is not ActorState.NEW:
            raise ActorStopped(f"cannot start: actor {self.key!r} is {self.__state}")
        self.__state = ActorState.RUNNING
        self.__task = asyncio.create_task(self.__run(after), name=f"actor:{self.key}")
        return self.__task

    def stop(self) -> None:
        """Ask the actor to stop after the message it is handling; pending asks will fail."""
        if self.__state is ActorState.NEW:
            # Never started, so no hooks ran and none will: just settle the mailbox.
            self.__state = ActorState.STOPPED
            self.__fail_pending()
            self.__stopped.set()
        elif self.__state is ActorState.RUNNING:
            self.__state = ActorState.STOPPING
            self.__wakeup.set()

    async def stop_and_wait(self) -> None:
        """Stop the actor and wait until it has fully stopped."""
        self.stop()
        await self.__stopped.wait()

    # -- the actor's task ----------------------------------------------------------------------

    async def __run(self, after: Actor | None) -> None:
        try:
            if after is not None:
                await after.stopped.wait()
            if self.__state is not ActorState.RUNNING:
                return  # stopped while waiting for its predecessor: on_start never ran
            _, error = await self.__attempt(self.on_start())
            if error is not None:
                # on_stop still runs: on_start may have armed timers or tasks before raising.
                await self.__crash(error)
            else:
                await self.__process_mailbox()
            self.__fail_pending()
            _, error = await self.__attempt(self.on_stop())
            if error is not None:
                log.error("actor %r: on_stop failed", self.key, exc_info=error)
        finally:
            self.__state = ActorState.STOPPED
            self.__fail_pending()
            self.__stopped.set()

    async def __process_mailbox(self) -> None:
        while self.__state is ActorState.RUNNING:
            if not self.__mailbox:
                self.__wakeup.clear()
                await self.__wakeup.wait()
                continue
            envelope = self.__mailbox.popleft()
            # Left set if the task is killed mid-message, so that ask is failed too.
            self.__current = envelope
            await self.__handle(envelope)
            self.__current = None
            self.last_activity = time.monotonic()

    async def __handle(self, envelope: Envelope) -> None:
        result, error = await self.__attempt(self.receive(envelope.message))
        reply = envelope.reply
        if reply is None:
            if error is not None:
                await self.__crash(error)
        elif reply.done():
            # The asker gave up (timeout or cancellation); an error must not vanish with it.
            if error is not None:
                log.warning("actor %r: error for an abandoned ask", self.key, exc_info=error)
        elif error is not None:
            reply.set_exception(error)
        else:
            reply.set_result(result)

    async def __attempt(self, hook: Awaitable[Any]) -> tuple[Any, BaseException | None]:
        """Await a subclass's hook, returning (result, None) or (None, the error it raised)."""
        try:
            return await hook, None
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # A CancelledError nobody asked for (from a future someone else cancelled) is a
            # bug in the hook, not a shutdown; dying quietly would leave the actor's work stuck.
            return None, exc
        except Exception as exc:
            return None, exc

    async def __crash(self, exc: BaseException) -> None:
        self.__failure = exc
        self.__state = ActorState.STOPPING
        _, error = await self.__attempt(self.on_failure(exc))
        if error is not None:
            log.error("actor %r: on_failure failed", self.key, exc_info=error)

    def __fail_pending(self) -> None:
        pending = list(self.__mailbox)
        self.__mailbox.clear()
        if self.__current is not None:
            pending.insert(0, self.__current)
            self.__current = None
        dropped = 0
        for envelope in pending:
            if envelope.reply is None:
                dropped += 1
            elif not envelope.reply.done():
                error = ActorStopped(f"actor {self.key!r} stopped before answering")
                error.__cause__ = self.__failure
                envelope.reply.set_exception(error)
        if dropped:
            # Usually wake-ups racing a stop; whatever they announced is in the database.
            log.debug("actor %r stopped with %d told message(s) unhandled", self.key, dropped)
