"""A new run's insert as its actor sees it: on its way, or to be sent with its first rounds.

A run started through the API on a shard this process holds gets its actor before its row is
committed. The actor plans from the row the insert will return, and writes, starts or tells
nothing before that insert has committed. When the caller waits for the run's end, the actor
sends the insert itself, in the call that commits its first rounds (`RunWriter.submit_start`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from actors.run_store import Transition
from actors.run_writer import RunWriter
from runtime.shards import Lease


class RunNotCreated(Exception):
    """The insert an actor was planning ahead of failed: there is no run to carry on."""


class StartNotSent(Exception):
    """The actor that was to insert its run with its first rounds stopped before it sent them."""


@dataclass(slots=True)
class PendingInsert:
    """The insert of a run whose actor started from the row it will return."""

    # The inserted row once committed (None: nothing was inserted).
    inserted: asyncio.Future[asyncpg.Record | None]
    # insert_run's arguments while the actor is still to send the insert itself, with its
    # first rounds (the writer then settles `inserted`).
    args: tuple[Any, ...] | None = None

    @property
    def to_send(self) -> bool:
        """Whether the actor is still to send the insert itself (see `send`)."""
        return self.args is not None

    def send(
        self,
        writer: RunWriter,
        run_id: UUID,
        lease: Lease,
        rounds: list[Transition],
        after: list[int | None],
    ) -> list[asyncio.Future[int | None]]:
        """Send the insert with `rounds`; only while it is the actor's to send (`to_send`)."""
        if self.args is None:
            raise RuntimeError("this insert is not the actor's to send")
        args, self.args = self.args, None
        return writer.submit_start(run_id, lease, args, rounds, after, self.inserted)

    async def row(self) -> asyncpg.Record:
        """The inserted row, once committed. Raises RunNotCreated when there is none."""
        if self.args is not None:
            # Never sent (there was nothing to commit with it): its caller inserts it alone.
            self.not_sent()
            raise RunNotCreated("the start goes back to its caller")
        try:
            # Shielded: only the caller decides whether its insert goes on.
            row = await asyncio.shield(self.inserted)
        except asyncio.CancelledError:
            if self.inserted.cancelled():  # the caller went away before its insert was done
                raise RunNotCreated("the start was cancelled") from None
            raise  # the actor is being stopped
        except Exception as exc:
            raise RunNotCreated(str(exc)) from exc
        if row is None:
            raise RunNotCreated("the start was refused")
        return row

    def not_sent(self) -> None:
        """Give an insert the actor was to send, and did not, back to its caller (who inserts
        it alone). Called when the actor's task ends, too."""
        if self.args is not None and not self.inserted.done():
            self.inserted.set_exception(StartNotSent("the run's actor stopped before its start"))
