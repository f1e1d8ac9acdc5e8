"""Time, injectable: the cron actor asks a clock, so tests can set the time."""

from __future__ import annotations

from datetime import UTC, datetime


class Clock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
