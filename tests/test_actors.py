"""The actor kernel: ordering, tell and ask, failures, mailbox bounds, stopping, the registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from actors.base import Actor, ActorStopped, MailboxFull
from actors.registry import ActorRegistry, RegistryClosed


@dataclass(frozen=True, slots=True)
class Echo:
    value: int


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Handled by signalling `entered`, then waiting for `release`."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class AwaitCancelled:
    """Handled by awaiting a future someone else cancelled: a bug, not a shutdown."""


class Probe(Actor):
    """Records what it handled and which hooks ran, in order."""

    def __init__(
        self,
        key: str,
        mailbox_size: int = 1000,
        *,
        fail_start: bool = False,
        idle: bool = True,
        stop_gate: asyncio.Event | None = None,
        journal: list[str] | None = None,
    ) -> None:
        super().__init__(key, mailbox_size)
        self.fail_start = fail_start
        self.idle = idle
        self.stop_gate = stop_gate
        self.journal = journal if journal is not None else []
        self.seen: list[int] = []
        self.in_receive = 0
        self.max_in_receive = 0

    async def on_start(self) -> None:
        self.journal.append(f"{self.key}:start")
        if self.fail_start:
            raise RuntimeError("cannot load state")

    async def on_stop(self) -> None:
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.journal.append(f"{self.key}:stop")

    async def on_failure(self, exc: BaseException) -> None:
        self.journal.append(f"{self.key}:failure:{type(exc).__name__}")

    def is_idle(self) -> bool:
        return self.idle

    async def receive(self, message: object) -> Any:
        self.in_receive += 1
        self.max_in_receive = max(self.max_in_receive, self.in_receive)
        try:
            await asyncio.sleep(0)  # give a broken kernel the chance to interleave messages
            return await self._handle(message)
        finally:
            self.in_receive -= 1

    async def _handle(self, message: object) -> Any:
        match message:
            case Echo(value):
                self.seen.append(value)
                return value * 10
            case Fail(reason):
                raise ValueError(reason)
            case Hold(entered, release):
                entered.set()
                await release.wait()
                return "released"
            case AwaitCancelled():
                doomed = asyncio.get_running_loop().create_future()
                doomed.cancel()
                return await doomed
        raise TypeError(f"unexpected message {message!r}")


class Crashes:
    """An on_crash handler that remembers what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, BaseException]] = []
        self.reported = asyncio.Event()

    async def __call__(self, key: str, exc: BaseException) -> None:
        self.seen.append((key, exc))
        self.reported.set()


@pytest.fixture
def crashes() -> Crashes:
    return Crashes()


@pytest.fixture
async def registry(crashes: Crashes) -> AsyncIterator[ActorRegistry]:
    actors = ActorRegistry(on_crash=crashes)
    yield actors
    await actors.close(timeout=1)


def spawn(registry: ActorRegistry, actor: Probe) -> Probe:
    assert registry.get_or_spawn(actor.key, lambda: actor) is actor
    return actor


async def test_messages_are_handled_one_at_a_time_in_order(registry: ActorRegistry) -> None:
    probe = spawn(registry, Probe("p"))
    for value in range(50):
        probe.tell(Echo(value))
    assert await probe.ask(Echo(50)) == 500
    assert probe.seen == list(range(51))
    assert probe.max_in_receive == 1


async def test_tell_returns_at_once_and_ask_waits_for_the_reply(registry: ActorRegistry) -> None:
    probe = spawn(registry, Probe("p"))
    hold = Hold()
    probe.tell(hold)  # returns before the message is even looked at
    assert not hold.entered.is_set()
    answer = asyncio.create_task(probe.ask(Echo(7)))
    await hold.entered.wait()
    await asyncio.sleep(0.02)
    assert not answer.done()  # queued behind the held message
    hold.release.set()
    assert await answer == 70


async def test_ask_error_goes_back_to_the_asker_and_the_actor_keeps_working(
    registry: ActorRegistry, crashes: Crashes
) -> None:
    probe = spawn(registry, Probe("p"))
    with pytest.raises(ValueError, match="bad input"):
        await probe.ask(Fail("bad input"))
    assert await probe.ask(Echo(2)) == 20
    assert probe.is_alive
    assert probe.failure is None
    assert probe.journal == ["p:start"]
    assert crashes.seen == []


async def test_ask_timeout_leaves_the_actor_running(registry: ActorRegistry) -> None:
    probe = spawn(registry, Probe("p"))
    hold = Hold()
    with pytest.raises(TimeoutError):
        await probe.ask(hold, timeout=0.05)
    hold.release.set()
    assert await probe.ask(Echo(3)) == 30


async def test_tell_error_stops_the_actor_and_is_reported_as_a_crash(
    registry: ActorRegistry, crashes: Crashes
) -> None:
    probe = spawn(registry, Probe("run-1"))
    probe.tell(Fail("disk on fire"))
    probe.tell(Echo(1))
    behind = asyncio.create_task(probe.ask(Echo(2)))
    with pytest.raises(ActorStopped) as stopped:
        await behind
    assert isinstance(stopped.value.__cause__, ValueError)
    await probe.stopped.wait()
    assert isinstance(probe.failure, ValueError)
    assert probe.seen == []
    assert probe.journal == ["run-1:start", "run-1:failure:ValueError", "run-1:stop"]
    with pytest.raises(ActorStopped):
        probe.tell(Echo(3))
    await asyncio.wait_for(crashes.reported.wait(), 1)
    assert crashes.seen == [("run-1", probe.failure)]
    assert registry.get("run-1") is None
    assert len(registry) == 0
    fresh = spawn(registry, Probe("run-1"))
    assert await fresh.ask(Echo(4)) == 40


async def test_cancelled_error_from_inside_receive_is_a_crash_not_a_quiet_exit(
    registry: ActorRegistry, crashes: Crashes
) -> None:
    probe = spawn(registry, Probe("p"))
    probe.tell(AwaitCancelled())
    await probe.stopped.wait()
    assert isinstance(probe.failure, asyncio.CancelledError)
    await asyncio.wait_for(crashes.reported.wait(), 1)
    assert [key for key, _ in crashes.seen] == ["p"]


async def test_on_start_failure_stops_the_actor_and_fails_pending_asks(
    registry: ActorRegistry, crashes: Crashes
) -> None:
    probe = Probe("p", fail_start=True)
    waiting = asyncio.create_task(probe.ask(Echo(1)))
    await asyncio.sleep(0)  # the ask is in the mailbox before the actor starts
    assert registry.get_or_spawn("p", lambda: probe) is probe
    with pytest.raises(ActorStopped) as stopped:
        await waiting
    assert isinstance(stopped.value.__cause__, RuntimeError)
    await probe.stopped.wait()
    assert isinstance(probe.failure, RuntimeError)
    # on_stop still runs, to clean up whatever on_start set up before it raised
    assert probe.journal == ["p:start", "p:failure:RuntimeError", "p:stop"]
    assert probe.seen == []
    await asyncio.wait_for(crashes.reported.wait(), 1)
    assert crashes.seen == [("p", probe.failure)]


async def test_a_full_mailbox_refuses_messages_until_it_drains(registry: ActorRegistry) -> None:
    probe = spawn(registry, Probe("p", mailbox_size=2))
    hold = Hold()
    probe.tell(hold)
    await hold.entered.wait()  # the message being handled no longer takes a mailbox slot
    probe.tell(Echo(1))
    second = asyncio.create_task(probe.ask(Echo(2)))
    await asyncio.sleep(0)
    with pytest.raises(MailboxFull, match="try again"):
        probe.tell(Echo(3))
    with pytest.raises(MailboxFull):
        await probe.ask(Echo(3))
    hold.release.set()
    assert await second == 20  # the mailbox has drained
    assert await probe.ask(Echo(4)) == 40
    assert probe.seen == [1, 2, 4]


async def test_stop_finishes_the_current_message_fails_pending_asks_and_runs_on_stop(
    registry: ActorRegistry, crashes: Crashes
) -> None:
    probe = spawn(registry, Probe("p"))
    hold = Hold()
    current = asyncio.create_task(probe.ask(hold))
    await hold.entered.wait()
    pending = asyncio.create_task(probe.ask(Echo(1)))
    probe.tell(Echo(2))
    await asyncio.sleep(0)
    probe.stop()
    with pytest.raises(ActorStopped):
        probe.tell(Echo(3))
    hold.release.set()
    assert await current == "released"
    with pytest.raises(ActorStopped) as stopped:
        await pending
    assert stopped.value.__cause__ is None
    await probe.stopped.wait()
    assert probe.seen == []
    assert probe.journal == ["p:start", "p:stop"]
    assert probe.failure is None
    assert registry.get("p") is None
    assert crashes.seen == []


async def test_concurrent_get_or_spawn_makes_one_actor(registry: ActorRegistry) -> None:
    made: list[Probe] = []

    def factory() -> Probe:
        made.append(Probe("shared"))
        return made[-1]

    async def caller(value: int) -> Actor:
        await asyncio.sleep(0)
        actor = registry.get_or_spawn("shared", factory)
        actor.tell(Echo(value))
        return actor

    actors = await asyncio.gather(*(caller(value) for value in range(100)))
    assert len(made) == 1
    assert all(actor is made[0] for actor in actors)
    assert await made[0].ask(Echo(100)) == 1000
    assert made[0].journal == ["shared:start"]
    assert sorted(made[0].seen) == list(range(101))
    assert len(registry) == 1
    assert registry.keys() == ["shared"]


async def test_a_replacement_starts_only_after_its_predecessor_stopped(
    registry: ActorRegistry,
) -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    old = spawn(registry, Probe("k", stop_gate=gate, journal=journal))
    await old.ask(Echo(1))
    old.stop()  # on_stop now waits on the gate
    new = spawn(registry, Probe("k", journal=journal))
    assert new is not old
    new.tell(Echo(2))
    await asyncio.sleep(0.02)
    assert journal == ["k:start"]  # the new actor waits, its message kept in the mailbox
    gate.set()
    assert await new.ask(Echo(3)) == 30
    assert journal == ["k:start", "k:stop", "k:start"]
    assert new.seen == [2, 3]
    assert registry.get("k") is new


async def test_reap_idle_stops_only_quiet_actors_that_say_they_are_idle(
    registry: ActorRegistry,
) -> None:
    idle = spawn(registry, Probe("idle"))
    armed = spawn(registry, Probe("armed", idle=False))  # e.g. a run with timers set
    busy = spawn(registry, Probe("busy"))
    hold = Hold()
    busy.tell(hold)
    await hold.entered.wait()
    await asyncio.sleep(0.1)
    recent = spawn(registry, Probe("recent"))
    assert await registry.reap_idle(max_idle_s=0.05) == 1
    assert idle.stopped.is_set()
    assert idle.journal == ["idle:start", "idle:stop"]
    assert [actor.is_alive for actor in (armed, busy, recent)] == [True, True, True]
    assert sorted(registry.keys()) == ["armed", "busy", "recent"]
    hold.release.set()


async def test_the_reaper_runs_in_the_background_until_close(crashes: Crashes) -> None:
    registry = ActorRegistry(on_crash=crashes)
    registry.start_reaper(interval_s=0.02, max_idle_s=0.05)
    quiet = spawn(registry, Probe("quiet"))
    await asyncio.wait_for(quiet.stopped.wait(), 1)
    assert len(registry) == 0
    await registry.close(timeout=1)
    with pytest.raises(RegistryClosed):
        registry.get_or_spawn("late", lambda: Probe("late"))


async def test_stop_all_stops_everything_and_kills_what_will_not_stop(
    registry: ActorRegistry, crashes: Crashes
) -> None:
    calm = [spawn(registry, Probe(f"calm-{n}")) for n in range(3)]
    stuck = spawn(registry, Probe("stuck"))
    hold = Hold()
    in_flight = asyncio.create_task(stuck.ask(hold))
    await hold.entered.wait()
    await registry.stop_all(timeout=0.1)
    for actor in calm:
        assert actor.stopped.is_set()
        assert actor.journal == [f"{actor.key}:start", f"{actor.key}:stop"]
    assert stuck.stopped.is_set()
    assert stuck.journal == ["stuck:start"]  # killed: no on_stop
    with pytest.raises(ActorStopped):
        await in_flight
    assert len(registry) == 0
    assert crashes.seen == []  # a shutdown is not a crash
    with pytest.raises(RegistryClosed):
        registry.tell("calm-0", Echo(1), lambda: Probe("calm-0"))
