"""The Stepwell side of the benchmark: a 10-step no-op workflow driven over real HTTP.

The real application (`stepwell serve`: every middleware and background task) serves on loopback
in its own process (or, with `--server inline`, in this one); an aiohttp client starts runs with
``POST /api/v1/workflows/{id}/run`` and learns that they ended from ``/ws/runs/{id}`` (or by
polling ``GET /api/v1/runs/{id}``), exactly as an outside caller would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from runtime.app import create_app
from runtime.auth import mint_token
from runtime.config import Config
from runtime.db import apply_migrations, database_url_for

STEPS_PER_RUN = 10
WARMUP_RUNS = 5
DATABASE = "stepwell_bench"
# 64 bytes; signs tokens for a loopback server that lives only as long as the benchmark.
JWT_SECRET = "stepwell-bench-secret-not-for-production-use-0123456789abcdefghij"  # noqa: S105
USER = "bench"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
WATCH_MODES = ("wait", "ws", "poll")
# Polling interval of the `poll` watch mode: short, so a finished run is noticed promptly.
POLL_S = 0.005


class BenchError(Exception):
    """The server answered something the benchmark cannot go on from."""


@dataclass(frozen=True, slots=True)
class StepwellFigures:
    """What one Stepwell run measured."""

    single_p50_ms: float  # POST /run sent -> WebSocket closed on a finished run, one at a time
    single_p95_ms: float
    server_p50_ms: float  # the same runs' completed_at - created_at, as the server recorded them
    server_p95_ms: float
    steps_per_s: float  # finished runs x 10 / elapsed, `concurrency` runs in flight
    runs_per_s: float
    runs: int  # runs the throughput phase finished
    total_runs: int  # every run this phase started: warm-ups, single runs and throughput
    watch: str  # how the throughput phase learnt a run had ended: "ws" or "poll"


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples` (fraction in 0..1), as the DBOS peer uses."""
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def chain_definition(steps: int = STEPS_PER_RUN, step_type: str = "transform") -> dict[str, Any]:
    """`steps` nodes in a chain s0 -> s1 -> ... ; each a no-op returning a small object."""
    nodes = [
        {"id": f"s{i}", "type": step_type, "data": _node_config(step_type, i)} for i in range(steps)
    ]
    edges = [{"source": f"s{i}", "target": f"s{i + 1}"} for i in range(steps - 1)]
    return {"nodes": nodes, "edges": edges}


def _node_config(step_type: str, index: int) -> dict[str, Any]:
    """The `data` of node `index` for a step type that does nothing."""
    if step_type == "transform":
        return {"output": {"i": index}}  # a small dict, like the one DBOS's no-op step returns
    if step_type == "delay":
        return {"seconds": 0}  # an executed (not inline) step that finishes at once
    raise ValueError(f"no no-op config for step type {step_type!r}")


async def recreate_database(server_url: str, database: str = DATABASE) -> str:
    """Drop and create `database` on the server, migrate it, and return its URI."""
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    url = database_url_for(server_url, database)
    # yoyo is synchronous; nothing else runs on the loop yet, so blocking here costs nothing.
    apply_migrations(url)
    return url


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port as `stepwell serve` does; yield its base URL."""
    # No access log: formatting one line per request would be measured too.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class StepwellClient:
    """An outside caller of one Stepwell server: starts runs and waits for them to end."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str) -> None:
        """Call the server at `base_url` through `session` as the holder of `token`."""
        self.session = session
        self.base_url = base_url
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, expect: int, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One API call; returns its `data`, or raises BenchError on an unexpected status."""
        url = self.base_url + path
        async with self.session.request(method, url, json=body, headers=self.headers) as resp:
            if resp.status != expect:
                raise BenchError(f"{method} {path}: {resp.status} {await resp.text()}")
            data: dict[str, Any] = (await resp.json())["data"]
            return data

    async def publish_workflow(self, definition: dict[str, Any]) -> str:
        """Create the workflow as a draft, publish it, and return its id."""
        body = {"name": "bench-noop-chain", "workflow_type": "general", "definition": definition}
        workflow = await self.call("POST", "/api/v1/workflows", 201, body)
        await self.call("POST", f"/api/v1/workflows/{workflow['id']}/publish", 200)
        return str(workflow["id"])

    async def start_run(self, workflow_id: str) -> str:
        """Start a run with an empty input; return its id."""
        run = await self.call("POST", f"/api/v1/workflows/{workflow_id}/run", 202, {"input": {}})
        return str(run["id"])

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run as GET /api/v1/runs/{id} shows it."""
        return await self.call("GET", f"/api/v1/runs/{run_id}", 200)

    async def watch_ws(self, run_id: str) -> str:
        """Follow the run's WebSocket until the server closes it; return the last run status."""
        status = "unknown"
        url = f"{self.base_url}/ws/runs/{run_id}"
        async with self.session.ws_connect(url, params={"token": self.token}) as ws:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = msg.json()
                if data.get("type") == "snapshot":
                    status = data["run"]["status"]
                elif str(data.get("event", "")).startswith("run."):
                    status = data["event"].removeprefix("run.")
            if ws.close_code != 1000:
                raise BenchError(f"run {run_id}: socket closed with {ws.close_code}")
        return status

    async def watch_poll(self, run_id: str) -> str:
        """Read the run every POLL_S seconds until it has ended; return its status."""
        while True:
            run = await self.get_run(run_id)
            if run["status"] in TERMINAL:
                return str(run["status"])
            await asyncio.sleep(POLL_S)

    async def start_and_wait(self, workflow_id: str) -> tuple[str, str]:
        """One request: start the run and have the server answer when it has ended."""
        path = f"/api/v1/workflows/{workflow_id}/run?wait_s=30"
        run = await self.call("POST", path, 200, {"input": {}})
        return str(run["id"]), str(run["status"])

    async def run_once(self, workflow_id: str, watch: str = "wait") -> str:
        """Start a run and wait for its end; return its id (BenchError unless it succeeded)."""
        if watch == "wait":
            run_id, status = await self.start_and_wait(workflow_id)
            if status != "succeeded":
                raise BenchError(f"run {run_id} ended {status}, not succeeded")
            return run_id
        run_id = await self.start_run(workflow_id)
        waiter = self.watch_ws if watch == "ws" else self.watch_poll
        status = await waiter(run_id)
        if status != "succeeded":
            raise BenchError(f"run {run_id} ended {status}, not succeeded")
        return run_id


def server_latency_ms(run: dict[str, Any]) -> float:
    """completed_at - created_at of a finished run, in ms (the server's own clock)."""
    created = datetime.fromisoformat(run["created_at"])
    completed = datetime.fromisoformat(run["completed_at"])
    return (completed - created).total_seconds() * 1000.0


async def measure_single(
    client: StepwellClient, workflow_id: str, runs: int
) -> tuple[list[float], list[float]]:
    """Warm up, then run `runs` runs one after another; return client and server ms of each."""
    for _ in range(WARMUP_RUNS):
        await client.run_once(workflow_id)
    return await time_runs(client, workflow_id, runs)


async def time_runs(
    client: StepwellClient, workflow_id: str, runs: int
) -> tuple[list[float], list[float]]:
    """Run `runs` runs one after another; return the client and server ms of each."""
    wall: list[float] = []
    server: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        run_id = await client.run_once(workflow_id)
        wall.append((time.perf_counter() - started) * 1000.0)
        # Read after the clock stopped, so this request is not part of the wall time.
        server.append(server_latency_ms(await client.get_run(run_id)))
    return wall, server


async def measure_throughput(
    client: StepwellClient, workflow_id: str, concurrency: int, duration_s: float, watch: str
) -> tuple[int, float]:
    """Keep `concurrency` runs in flight for `duration_s`; return (finished runs, elapsed s).

    Like the DBOS peer: each task starts its next run as soon as the last one ended; runs in
    flight at the deadline are waited for and counted, and so is the time they take.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    completed = [0] * concurrency

    async def worker(slot: int) -> None:
        """One in-flight slot: the next run starts when the last one ended."""
        while loop.time() < deadline:
            await client.run_once(workflow_id, watch)
            completed[slot] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    return sum(completed), time.perf_counter() - started


@asynccontextmanager
async def stepwell_client(
    database_url: str, concurrency: int, server: str = "process"
) -> AsyncIterator[StepwellClient]:
    """A Stepwell server on loopback and a client session for it; both closed on exit.

    `server="process"` runs `stepwell serve` in its own process, as it is deployed (callers
    are other processes); `"inline"` serves the app from this process's event loop, where
    the client's own work competes with the server's.
    """
    config = Config(database_url=database_url, jwt_secret=JWT_SECRET, node_id="bench")
    token = mint_token(JWT_SECRET, USER, audience=config.jwt_audience)
    # Each in-flight run holds a keep-alive connection for its POST and one for its socket.
    connector = aiohttp.TCPConnector(limit=2 * concurrency + 8)
    serving = serve_process(database_url) if server == "process" else serve(create_app(config))
    async with serving as base_url, aiohttp.ClientSession(connector=connector) as session:
        yield StepwellClient(session, base_url, token)


@asynccontextmanager
async def serve_process(database_url: str) -> AsyncIterator[str]:
    """`stepwell serve` on a free loopback port in a child process; yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STEPWELL_JWT_SECRET": JWT_SECRET,
        "STEPWELL_NODE_ID": "bench",
        # As the inline server: no access line per request (it would be measured too).
        "STEPWELL_LOG_LEVEL": "warning",
        "PORT": str(port),
    }
    with tempfile.TemporaryDirectory(prefix="stepwell-bench-serve-") as data_dir:
        env["STEPWELL_DATA_DIR"] = data_dir
        log = Path(data_dir) / "server.log"
        with log.open("wb") as out:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runtime.cli",
                "serve",
                "--host",
                "127.0.0.1",
                env=env,
                stdout=out,
                stderr=out,
            )
        base_url = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(base_url, child, log)
            yield base_url
        finally:
            if child.returncode is None:
                child.send_signal(signal.SIGINT)  # aiohttp's graceful shutdown
                try:
                    await asyncio.wait_for(child.wait(), 30)
                except TimeoutError:
                    child.kill()
                    await child.wait()


async def _wait_ready(base_url: str, child: asyncio.subprocess.Process, log: Path) -> None:
    """Poll /health/ready until the server answers 200 (60 s at most)."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if child.returncode is not None:
                tail = await asyncio.to_thread(log.read_text)
                raise BenchError(f"stepwell serve exited: {tail[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base_url + "/health/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise BenchError("stepwell serve did not become ready within 60 s")


@asynccontextmanager
async def stepwell_session(
    server_url: str, concurrency: int, step_type: str, serve_in: str
) -> AsyncIterator[tuple[StepwellClient, str]]:
    """A fresh database, a server and a client, and the published workflow's id."""
    database_url = await recreate_database(server_url)
    async with stepwell_client(database_url, concurrency, serve_in) as client:
        workflow_id = await client.publish_workflow(chain_definition(step_type=step_type))
        yield client, workflow_id


def figures(
    wall: list[float], server: list[float], runs: int, elapsed: float, total: int, watch: str
) -> StepwellFigures:
    """Single-run timings and a throughput phase's result, as StepwellFigures."""
    return StepwellFigures(
        single_p50_ms=statistics.median(wall),
        single_p95_ms=percentile(wall, 0.95),
        server_p50_ms=statistics.median(server),
        server_p95_ms=percentile(server, 0.95),
        steps_per_s=runs * STEPS_PER_RUN / elapsed,
        runs_per_s=runs / elapsed,
        runs=runs,
        total_runs=total,
        watch=watch,
    )


async def run_stepwell(
    server_url: str,
    *,
    single_runs: int = 50,
    concurrency: int = 64,
    duration_s: float = 10.0,
    watch: str = "wait",
    step_type: str = "transform",
    serve_in: str = "process",
) -> StepwellFigures:
    """Measure Stepwell's single-run latency and throughput on a fresh database."""
    async with stepwell_session(server_url, concurrency, step_type, serve_in) as (client, wf):
        wall, server = await measure_single(client, wf, single_runs)
        runs, elapsed = await measure_throughput(client, wf, concurrency, duration_s, watch)
    total = WARMUP_RUNS + single_runs + runs
    return figures(wall, server, runs, elapsed, total, watch)
