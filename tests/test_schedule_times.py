"""Fire times across daylight-saving changes, in two zones on each side of the Atlantic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actors.schedule_times import ScheduleError, check_cron, due_fires, next_fires, zone


def local(times: list[datetime], tz: str) -> list[str]:
    return [t.astimezone(zone(tz)).isoformat() for t in times]


@pytest.mark.parametrize(
    ("tz", "after", "expected"),
    [
        (
            "America/New_York",
            datetime(2026, 3, 7, 12, tzinfo=UTC),
            ["2026-03-08T03:30:00-04:00", "2026-03-09T02:30:00-04:00"],
        ),
        (
            "Europe/Berlin",
            datetime(2026, 3, 28, 12, tzinfo=UTC),
            ["2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
    ],
)
def test_a_skipped_local_time_fires_once_after_the_change(
    tz: str, after: datetime, expected: list[str]
) -> None:
    assert local(next_fires("30 2 * * *", tz, after, 2), tz) == expected


@pytest.mark.parametrize(
    ("tz", "after", "first"),
    [
        ("America/New_York", datetime(2026, 10, 31, 12, tzinfo=UTC), "2026-11-01T01:30:00-04:00"),
        ("Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=UTC), "2026-10-25T02:30:00+02:00"),
    ],
)
def test_a_repeated_local_time_fires_once(tz: str, after: datetime, first: str) -> None:
    daily = "30 1 * * *" if tz.startswith("America") else "30 2 * * *"
    fires = local(next_fires(daily, tz, after, 2), tz)
    assert fires[0] == first
    assert fires[1][:10] != fires[0][:10], "the second fire is on the next day"


def test_hourly_jobs_over_both_changes() -> None:
    tz = "America/New_York"
    spring = local(next_fires("0 * * * *", tz, datetime(2026, 3, 8, 5, tzinfo=UTC), 3), tz)
    assert spring == [
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T04:00:00-04:00",
    ]
    fall = next_fires("0 * * * *", tz, datetime(2026, 11, 1, 4, tzinfo=UTC), 4)
    assert local(fall, tz) == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T03:00:00-05:00",
        "2026-11-01T04:00:00-05:00",
    ]
    assert len(set(fall)) == len(fall)


def test_six_fields_are_seconds_first() -> None:
    fires = next_fires("*/20 * * * * *", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 3)
    assert [t.second for t in fires] == [20, 40, 0]


def test_start_end_and_due_fires() -> None:
    start = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    end = datetime(2026, 1, 1, 10, 3, tzinfo=UTC)
    fires = next_fires("* * * * *", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 10, start, end)
    assert [t.minute for t in fires] == [0, 1, 2, 3]
    due = due_fires("* * * * *", "UTC", start, datetime(2026, 1, 1, 10, 2, 30, tzinfo=UTC), 10)
    assert [t.minute for t in due] == [0, 1, 2]


@pytest.mark.parametrize(
    ("cron", "fragment"),
    [
        ("* * * *", "5 fields"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "invalid"),
        ("a b c d e", "invalid"),
    ],
)
def test_bad_cron_is_explained(cron: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        check_cron(cron)


def test_unknown_zone_is_explained() -> None:
    with pytest.raises(ScheduleError, match="IANA"):
        zone("Mars/Olympus_Mons")
    with pytest.raises(ScheduleError):
        zone("../etc/passwd")


def test_a_shifted_fire_just_after_the_change_is_not_lost() -> None:
    tz = "America/New_York"
    after = datetime(2026, 3, 8, 7, 10, tzinfo=UTC)  # 03:10 EDT, ten minutes after the change
    assert local(next_fires("30 2 * * *", tz, after, 1), tz) == ["2026-03-08T03:30:00-04:00"]
