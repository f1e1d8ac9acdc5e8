"""When a cron schedule fires, in its own time zone, across daylight-saving changes.

Cron expressions describe wall-clock times, so they are iterated on the zone's local clock and
each local time is then placed on the UTC timeline:

- A local time the clock skips (02:30 on a spring-forward night) fires at the same distance
  after the change: 02:30 becomes 03:30. A daily 02:30 job still runs once that day.
- A local time the clock repeats (01:30 on a fall-back night) fires once, at its first
  occurrence. An hourly job therefore fires once for the repeated hour.

Five fields are minute precision (`m h dom mon dow`); six fields add seconds in front
(`s m h dom mon dow`, as in Quartz and Spring).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_HOUR = timedelta(hours=1)
_TICK = timedelta(microseconds=1)
# No schedule fires more often than this many times in one call, whatever the expression.
MAX_ITERATIONS = 100_000


class ScheduleError(ValueError):
    """A cron expression or time zone that cannot be used."""


def check_cron(expression: str) -> str:
    """The expression, normalised; ScheduleError saying what is wrong otherwise."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(
            f"cron needs 5 fields (minute hour day month weekday) or 6 (seconds first), "
            f"got {len(fields)}"
        )
    normalised = " ".join(fields)
    if not croniter.is_valid(normalised, second_at_beginning=len(fields) == 6):
        raise ScheduleError(f"invalid cron expression {expression!r}")
    return normalised


def zone(name: str) -> ZoneInfo:
    """The IANA time zone called `name`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Paris)"
        ) from exc


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """Place a naive local wall-clock time on the UTC timeline (see the module docstring)."""
    # fold=0 picks the first of two repeated times; for a skipped time it applies the offset
    # in force before the change, which lands the same distance after it.
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def fire_times(expression: str, tz_name: str, after: datetime) -> Iterator[datetime]:
    """UTC fire times strictly after `after` (aware), in order, without duplicates."""
    tz = zone(tz_name)
    seconds = len(expression.split()) == 6
    local_start = after.astimezone(tz).replace(tzinfo=None, microsecond=0)
    # Right after a spring-forward change, a skipped local time just before `after`'s local
    # time still fires after the change: start an hour back then, and only then (a per-second
    # schedule would otherwise walk 3,600 steps on every call).
    if (after - _HOUR).astimezone(tz).utcoffset() != after.astimezone(tz).utcoffset():
        local_start -= _HOUR
    it = croniter(expression, local_start, second_at_beginning=seconds)
    last = after
    for _ in range(MAX_ITERATIONS):
        instant = to_utc(it.get_next(datetime), tz)
        if instant > last:
            last = instant
            yield instant


def next_fires(
    expression: str,
    tz_name: str,
    after: datetime,
    count: int,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> list[datetime]:
    """Up to `count` fire times after `after`, inside [start_at, end_at]."""
    begin = max(after, start_at - _TICK) if start_at else after
    result: list[datetime] = []
    for instant in fire_times(expression, tz_name, begin):
        if end_at is not None and instant > end_at:
            break
        result.append(instant)
        if len(result) == count:
            break
    return result


def due_fires(
    expression: str,
    tz_name: str,
    first_due: datetime,
    now: datetime,
    limit: int,
) -> list[datetime]:
    """Fire times from `first_due` (inclusive) up to `now`, oldest first, at most `limit`."""
    result: list[datetime] = []
    for instant in fire_times(expression, tz_name, first_due - _TICK):
        if instant > now or len(result) == limit:
            break
        result.append(instant)
    return result
