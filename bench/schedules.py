"""`python -m bench.schedules`: how late schedules fire.

Two figures, each beside the floor a Python process cannot beat (the same number of asyncio
timers due at the same instant, and the lateness of their callbacks):

- burst: 1,000 schedules due in the same second (a 6-field cron naming one second of the
  minute); lateness = when the fire was recorded minus its due time, for every one of them.
- idle: one schedule firing every second for `--idle-seconds`; the target is p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from bench.runs import postgres_server
from bench.stepwell_runner import percentile, recreate_database, serve
from runtime.app import create_app
from runtime.auth import mint_token
from runtime.config import Config

SECRET = "bench-schedules-secret-not-for-production-0123456789abcdefghijklmn"  # noqa: S105
TRANSFORM = {
    "nodes": [{"id": "t", "type": "transform", "data": {"output": {"ok": True}}}],
    "edges": [],
}


async def timer_floor(count: int) -> list[float]:
    """Lateness (ms) of `count` asyncio timers all due at one instant: the process's floor."""
    loop = asyncio.get_running_loop()
    due = loop.time() + 0.5
    late: list[float] = []
    done = asyncio.Event()

    def fire() -> None:
        late.append((loop.time() - due) * 1000)
        if len(late) == count:
            done.set()

    for _ in range(count):
        loop.call_at(due, fire)
    await done.wait()
    return late


async def _post(session: aiohttp.ClientSession, url: str, body: Any, status: int = 201) -> Any:
    async with session.post(url, json=body) as resp:
        if resp.status != status:
            raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
        return (await resp.json())["data"]


async def _workflow(session: aiohttp.ClientSession, base: str) -> str:
    wf = await _post(session, f"{base}/api/v1/workflows", {"name": "tick", "definition": TRANSFORM})
    await _post(session, f"{base}/api/v1/workflows/{wf['id']}/publish", None, 200)
    return str(wf["id"])


async def _lateness(url: str, fire_time: datetime | None = None) -> list[float]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT lateness_ms FROM schedule_fires WHERE outcome = 'started'"
            " AND ($1::timestamptz IS NULL OR fire_time = $1)",
            fire_time,
        )
    finally:
        await conn.close()
    return [float(r["lateness_ms"]) for r in rows]


async def burst(session: aiohttp.ClientSession, base: str, url: str, count: int) -> list[float]:
    """`count` schedules due in the same second; returns each fire's lateness (ms)."""
    wf = await _workflow(session, base)
    due = (datetime.now(UTC) + timedelta(seconds=25)).replace(microsecond=0)
    cron = f"{due.second} {due.minute} * * * *"
    limit = asyncio.Semaphore(16)

    async def create() -> None:
        async with limit:
            await _post(
                session,
                f"{base}/api/v1/triggers/schedule",
                {"workflow_id": wf, "cron": cron, "overlap_policy": "allow"},
            )

    await asyncio.gather(*(create() for _ in range(count)))
    if datetime.now(UTC) >= due - timedelta(seconds=1):
        raise RuntimeError("creating the schedules took too long; lower --count")
    await asyncio.sleep((due - datetime.now(UTC)).total_seconds() + 5)
    for _ in range(60):
        late = await _lateness(url, due)
        if len(late) >= count:
            return late
        await asyncio.sleep(1)
    raise RuntimeError(f"only {len(late)} of {count} schedules fired")


async def idle(session: aiohttp.ClientSession, base: str, url: str, seconds: int) -> list[float]:
    """One per-second schedule on an idle server; returns its fires' lateness (ms)."""
    wf = await _workflow(session, base)
    s = await _post(
        session,
        f"{base}/api/v1/triggers/schedule",
        {"workflow_id": wf, "cron": "* * * * * *", "overlap_policy": "allow"},
    )
    await asyncio.sleep(seconds)
    await _post(session, f"{base}/api/v1/triggers/schedules/{s['id']}/pause", None, 200)
    return await _lateness(url)


def row(name: str, ours: list[float], floor: list[float]) -> str:
    def fig(xs: list[float], q: float) -> str:
        return f"{percentile(xs, q):8.1f}"

    return (
        f"{name:<34}| {fig(ours, 0.5)} | {fig(ours, 0.99)} | {max(ours):8.1f} | "
        f"{fig(floor, 0.5)} | {fig(floor, 0.99)}"
    )


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    with postgres_server() as server_url:
        results: list[str] = []
        for phase in ("idle", "burst"):
            url = await recreate_database(server_url, f"stepwell_sched_{phase}")
            app = create_app(Config(database_url=url, jwt_secret=SECRET, node_id="bench"))
            token = mint_token(SECRET, "bench")
            async with (
                serve(app) as base,
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
            ):
                if phase == "idle":
                    late = await idle(session, base, url, args.idle_seconds)
                    name = f"idle: 1 schedule x {len(late)} fires"
                    results.append(row(name, late, await timer_floor(1)))
                else:
                    late = await burst(session, base, url, args.count)
                    name = f"burst: {args.count} due in one second"
                    results.append(row(name, late, await timer_floor(args.count)))
        print("fire lateness in ms (fire recorded - due time); floor: asyncio timers due at once")
        print(f"{'':<34}| {'p50':>8} | {'p99':>8} | {'max':>8} | {'floor50':>8} | {'floor99':>8}")
        print("\n".join(results))
        print("target: idle p99 <= 100 ms")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.schedules", description=__doc__)
    parser.add_argument("--count", type=int, default=1000, help="schedules in the burst (1000)")
    parser.add_argument("--idle-seconds", type=int, default=20, help="idle phase length (20)")
    return parser.parse_args()


if __name__ == "__main__":
    started = time.perf_counter()
    asyncio.run(main(parse_args()))
    print(f"({time.perf_counter() - started:.0f} s)")
