"""Batch prediction jobs: a model version scores every row of a stored CSV or JSON lines file.

Jobs run in the background of the process that accepted them. The input is copied to a temporary
file and read in chunks; each chunk is scored row by row (a bad row fails alone, keeping its input
and an `error`) and streamed to storage. Non-feature columns pass through, so rows keep their ids.
If the input turns unreadable halfway, the output so far is kept and the job fails saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import pandas as pd
from aiohttp import web

from actors.model_cache import ModelCache, fetch_to_temp, model_cache_of, per_app
from actors.predictions import (
    BatchPaths,
    Scored,
    Tally,
    batch_paths,
    probability_classes,
    record_batch_job,
    score_rows,
    servable_version,
)
from runtime.audit import AuditContext
from runtime.compute.model_file import LoadedModel
from runtime.errors import ApiError
from runtime.keys import CONFIG, DB_POOL, STORAGE
from runtime.periodic import every
from runtime.sql import queries
from runtime.storage.base import Storage, StorageError

T = TypeVar("T")
log = logging.getLogger(__name__)
CHUNK_ROWS = 1000
SWEEP_EVERY_S = 30.0
INTERRUPTED = "interrupted: the server shut down; the output was not stored"
CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


class Unreadable(Exception):
    """The input cannot be read in its format."""


@dataclass(slots=True)
class Chunk:
    """Rows read together: 1-based row numbers, raw records, and what the model is asked."""

    numbers: list[int]
    records: Any  # a DataFrame of text (CSV) or a list of parsed lines (JSON lines)
    rows: list[object]
    problems: dict[int, str] = field(default_factory=dict)  # index -> a problem found reading


class InputFile:
    """An input file read chunk by chunk; scoring a chunk gives its output."""

    def __init__(self, model: LoadedModel, classes: list[str] | None) -> None:
        self.model, self.classes = model, classes

    def render(self, chunk: Chunk, columns: dict[str, list[Any]], first: bool) -> str:
        raise NotImplementedError

    def score(self, chunk: Chunk, first: bool) -> tuple[bytes, list[Scored]]:
        """The chunk's output (its input plus prediction, probability_<class>..., error)."""
        scored = score_rows(self.model, chunk.rows, self.classes is not None)
        for index, problem in chunk.problems.items():
            scored[index] = (None, None, problem)
        columns: dict[str, list[Any]] = {"prediction": [s[0] for s in scored]}
        for name in self.classes or ():
            columns[f"probability_{name}"] = [s[1] and s[1].get(name) for s in scored]
        columns["error"] = [s[2] for s in scored]
        return self.render(chunk, columns, first).encode(), scored


class CsvInput(InputFile):
    """A CSV file read as text (features converted as the trainer typed them), CHUNK_ROWS rows
    at a time. Every feature must be a column; a row number counts data rows from 1."""

    def __init__(self, path: Path, model: LoadedModel, classes: list[str] | None) -> None:
        super().__init__(model, classes)
        self.features = model.features
        try:
            self._frames = pd.read_csv(path, dtype=str, chunksize=CHUNK_ROWS, encoding="utf-8")
        except ValueError as exc:  # also the parser's and UTF-8 decoding errors
            raise Unreadable(f"the input cannot be read as CSV: {exc}") from exc
        self._done = 0

    def close(self) -> None:
        self._frames.close()

    def next_chunk(self) -> Chunk | None:
        try:
            frame = next(self._frames, None)
        except ValueError as exc:
            raise Unreadable(f"CSV unreadable after row {self._done}: {exc}") from exc
        if frame is None:
            return None
        missing = [f.name for f in self.features if f.name not in frame.columns]
        if missing:
            raise Unreadable(f"the input has no column(s) {', '.join(map(repr, missing))}")
        numbers = list(range(self._done + 1, self._done + len(frame) + 1))
        self._done += len(frame)
        rows: list[object] = [
            {f.name: _cell(v, f.kind) for f, v in zip(self.features, values, strict=True)}
            for values in frame[[f.name for f in self.features]].itertuples(index=False, name=None)
        ]
        return Chunk(numbers, frame, rows)

    def render(self, chunk: Chunk, columns: dict[str, list[Any]], first: bool) -> str:
        frame = chunk.records
        for name, values in columns.items():
            frame[name] = pd.Series(values, index=frame.index, dtype=object)
        return str(frame.to_csv(index=False, header=first, lineterminator="\n"))


def _cell(value: Any, kind: str) -> Any:
    """A CSV cell as JSON would carry it: missing is None, a numeric feature's text a number
    (text that is no number stays text, for the row check to name)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if kind == "numeric":
        with contextlib.suppress(ValueError):
            return float(value)
    return value


class JsonlInput(InputFile):
    """One JSON object per line; a line that is not one is a failed row. Row number = line."""

    def __init__(self, path: Path, model: LoadedModel, classes: list[str] | None) -> None:
        super().__init__(model, classes)
        self.names = [f.name for f in model.features]
        self._handle = path.open(encoding="utf-8")
        self._lines = enumerate(self._handle, 1)
        self._number = 0

    def close(self) -> None:
        self._handle.close()

    def next_chunk(self) -> Chunk | None:
        chunk = Chunk([], [], [])
        try:
            for self._number, line in self._lines:  # noqa: B020 - the position is kept on purpose
                if line.strip():
                    self._add(chunk, line)
                if len(chunk.numbers) == CHUNK_ROWS:
                    break
        except UnicodeDecodeError as exc:
            raise Unreadable(f"the input is not UTF-8 text after line {self._number}") from exc
        return chunk if chunk.numbers else None

    def _add(self, chunk: Chunk, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError as exc:
            chunk.problems[len(chunk.numbers)] = f"not a JSON value: {exc}"
            record = line.rstrip("\n")
        chunk.numbers.append(self._number)
        chunk.records.append(record)
        is_row = isinstance(record, dict)
        chunk.rows.append({k: record[k] for k in self.names if k in record} if is_row else record)

    def render(self, chunk: Chunk, columns: dict[str, list[Any]], first: bool) -> str:
        lines = []
        for i, record in enumerate(chunk.records):
            out = dict(record) if isinstance(record, dict) else {"input": record}
            out.update({name: values[i] for name, values in columns.items()})
            lines.append(json.dumps(out) + "\n")
        return "".join(lines)


def open_input(fmt: str, path: Path, model: LoadedModel, classes: Any) -> CsvInput | JsonlInput:
    return (CsvInput if fmt == "csv" else JsonlInput)(path, model, classes)


@dataclass(frozen=True, slots=True)
class BatchJob:
    """What a running job needs: its model version (a `get_servable_model_version` row)."""

    id: UUID
    version: dict[str, Any]
    paths: BatchPaths
    return_confidence: bool


class BatchJobs:
    """This process's batch jobs: at most `max_running` at a time (the others wait, `queued`).

    Each job records the node that runs it. A process that stops ends its jobs `failed`
    (`close`); one that is killed cannot, so every process sweeps for jobs of nodes whose
    heartbeat went stale (and, when starting, for its own node id's, left by the process
    that had it before) and ends those `failed` too: a job is never left running for good.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        storage: Storage,
        cache: ModelCache,
        work_dir: Path,
        node_id: str,
        heartbeat_ttl_s: float = 15.0,
        max_running: int = 2,
    ) -> None:
        self.pool, self.storage, self.cache, self.work_dir = pool, storage, cache, work_dir
        self.node_id, self.heartbeat_ttl_s = node_id, heartbeat_ttl_s
        self._slots = asyncio.Semaphore(max_running)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unfinished: dict[UUID, tuple[BatchJob, Tally]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def sweep(self, *, starting: bool = False) -> int:
        """End `failed` the jobs of nodes that are gone; how many. `starting`: also this node
        id's, so call it before this process starts any job."""
        rows = await self.pool.fetch(
            queries["fail_abandoned_batch_jobs"],
            self.node_id if starting else None,
            self.heartbeat_ttl_s,
        )
        for row in rows:
            log.warning("batch prediction job %s was abandoned by its process", row["id"])
        return len(rows)

    def sweep_every(self, seconds: float = SWEEP_EVERY_S) -> None:
        """Sweep in the background until `close`."""
        self._sweeper = every(seconds, self.sweep, "batch-predictions:sweep")

    async def submit(self, ctx: AuditContext, body: Mapping[str, Any]) -> asyncpg.Record:
        """Check the request, record the job `queued` and start it."""
        owner = ctx.principal.owner_filter
        async with self.pool.acquire() as conn:
            version = await servable_version(conn, body["model_version_id"], owner)
            paths = await batch_paths(conn, self.storage, owner, body)
        await self.cache.get(version)  # a version that cannot serve is a 422, not a failed job
        async with self.pool.acquire() as conn, conn.transaction():
            row = await record_batch_job(conn, ctx, version, self.storage, paths, self.node_id)
        job = BatchJob(row["id"], dict(version), paths, bool(body.get("return_confidence")))
        self._unfinished[job.id] = (job, Tally())
        task = asyncio.create_task(self._run(job), name=f"batch-prediction:{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return row

    async def close(self) -> None:
        """Stop every job; each ends `failed`, saying so (also those cancelled before starting)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job, tally in list(self._unfinished.values()):
            tally.error = INTERRUPTED
            await self._finish(job, tally)

    async def _run(self, job: BatchJob) -> None:
        tally = self._unfinished[job.id][1]
        try:
            async with self._slots:
                await self.pool.execute(queries["start_batch_prediction_job"], job.id)
                await self._predict(job, tally)
        except (Unreadable, ApiError, StorageError) as exc:
            tally.error = str(exc)
        except Exception as exc:
            log.exception("batch prediction job failed", extra={"job_id": str(job.id)})
            tally.error = f"internal error: {type(exc).__name__}: {exc}"
        await self._finish(job, tally)

    async def _finish(self, job: BatchJob, tally: Tally) -> None:
        status = "failed" if tally.error else "succeeded"
        await self.pool.execute(
            queries["finish_batch_prediction_job"], job.id, status, *tally.values(), tally.error
        )
        self._unfinished.pop(job.id, None)

    async def _predict(self, job: BatchJob, tally: Tally) -> None:
        model = await self.cache.get(job.version)
        classes = probability_classes(model) if job.return_confidence else None
        fmt, key = job.paths.data_format, job.paths.output_key
        path = await fetch_to_temp(self.storage, job.paths.input_key, self.work_dir, ".input")
        try:
            reader = await _finished_thread(open_input, fmt, path, model, classes)
            with contextlib.closing(reader):
                first = await _finished_thread(reader.next_chunk)
                output = self._output(job, reader, first, tally)
                await self.storage.write(key, output, CONTENT_TYPES[fmt])
        finally:
            await asyncio.to_thread(path.unlink, True)

    async def _output(
        self, job: BatchJob, reader: CsvInput | JsonlInput, chunk: Chunk | None, tally: Tally
    ) -> AsyncIterator[bytes]:
        first = True
        while chunk is not None:
            data, scored = await _finished_thread(reader.score, chunk, first)
            tally.add(chunk.numbers, scored)
            yield data
            progress = queries["update_batch_prediction_progress"]
            await self.pool.execute(progress, job.id, *tally.values())
            first = False
            try:
                chunk = await _finished_thread(reader.next_chunk)
            except Unreadable as exc:
                # Ending the stream normally stores what was written: the rows done so far.
                tally.error = f"{exc}; the output holds the {tally.rows_total} row(s) before it"
                return


async def _finished_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn` in a worker thread; a cancelled caller still waits for the thread to finish.

    The reader's parser must not be closed (or the input deleted) while a thread is inside
    it: pandas' C parser crashes the process on a use after free.
    """
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


def batch_jobs_of(app: web.Application) -> BatchJobs:
    """The app's batch jobs (see `per_app`)."""
    config = app[CONFIG]
    work_dir = config.data_dir / "work"
    make = partial(
        BatchJobs,
        app[DB_POOL],
        app[STORAGE],
        model_cache_of(app),
        work_dir,
        config.node_id,
        config.lease_ttl_s,
    )
    return per_app(app, "batch_jobs", make)


async def batch_jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx, after runs_ctx: at shutdown, stop running jobs while the database is up."""
    yield
    await batch_jobs_of(app).close()
