"""`python -m bench.predict`: online prediction latency and throughput of a local model.

The real app (every middleware, embedded PostgreSQL on a fresh database) serves on loopback. A
classifier is trained through the API by the local trainer (`--algorithm`, by default the
trainer's, on churn-like data: two numbers and a category), deployed locally, then asked
single-row questions over HTTP by an aiohttp client in the same process: one request at a time,
then `--concurrency` clients for `--duration` seconds; last, requests of `--batch-rows` rows.
Every request is a full POST /api/v1/predictions: token check, row checks, inference in a
worker thread, and the prediction recorded in PostgreSQL.

The peer, in the same run and process: the very model the server loaded, called directly (no
HTTP, no database): the scikit-learn pipeline's `predict` on a ready one-row DataFrame, and
`LoadedModel.predict` (row checks and typing, then the pipeline). The gaps are the overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import numpy as np
import pandas as pd
from aiohttp import web

from actors.batch_predictions import batch_jobs_ctx
from actors.model_cache import model_cache_of
from bench.runs import postgres_server
from bench.stepwell_runner import (
    JWT_SECRET,
    USER,
    BenchError,
    StepwellClient,
    percentile,
    recreate_database,
    serve,
)
from handlers import deployments, predictions
from runtime.app import create_app
from runtime.auth import mint_token
from runtime.compute.model_file import LoadedModel, to_frame
from runtime.compute.protocol import ALGORITHMS
from runtime.config import Config
from runtime.keys import DB_POOL
from runtime.sql import queries

DATABASE = "stepwell_bench_predict"
PLANS = ("basic", "pro", "team")
PREDICT = "/api/v1/predictions"
ENSEMBLES = ("random_forest", "gradient_boosting")


@dataclass(frozen=True, slots=True)
class Figures:
    """One way of asking for predictions: per-call latencies and calls per second."""

    label: str
    latencies_ms: list[float]
    per_s: float

    def cells(self) -> list[str]:
        p50, p99 = percentile(self.latencies_ms, 0.5), percentile(self.latencies_ms, 0.99)
        return [self.label, f"{p50:.3f}", f"{p99:.3f}", f"{self.per_s:,.0f}"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.predict", description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="sequential requests (500)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--duration", type=float, default=10.0, help="concurrent phase s (10)")
    parser.add_argument(
        "--algorithm",
        choices=ALGORITHMS["classification"],
        default=ALGORITHMS["classification"][0],
        help="the trainer's algorithm (its default: %(default)s)",
    )
    parser.add_argument("--trees", type=int, default=100, help="trees for forests/boosting (100)")
    parser.add_argument("--peer-calls", type=int, default=2000, help="in-process calls (2000)")
    parser.add_argument(
        "--batch-rows", type=int, default=100, help="rows per request in the last phase (100)"
    )
    args = parser.parse_args(argv)
    counts = (args.requests, args.concurrency, args.trees, args.peer_calls, args.batch_rows)
    if min(counts) < 1 or args.batch_rows > 1000 or args.duration <= 0:
        parser.error("counts and --duration must be positive, --batch-rows at most 1000")
    return args


def rows(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """Rows like the training data's (features only)."""
    rng = np.random.default_rng(seed)
    x1, x2, plan = rng.normal(size=count), rng.normal(size=count), rng.choice(PLANS, size=count)
    return [{"x1": float(x1[i]), "x2": float(x2[i]), "plan": str(plan[i])} for i in range(count)]


def training_csv(count: int = 2000) -> bytes:
    lines = ["x1,x2,plan,churned"]
    for row in rows(count, seed=7):
        label = int(row["x1"] + 0.5 * row["x2"] + (row["plan"] == "pro") > 0.3)
        lines.append(f"{row['x1']:.4f},{row['x2']:.4f},{row['plan']},{label}")
    return ("\n".join(lines) + "\n").encode()


async def train_and_deploy(client: StepwellClient, args: argparse.Namespace) -> str:
    """Upload the data, train, deploy; the model version id."""
    dataset = await client.call("POST", "/api/v1/datasets", 201, {"name": "bench-churn"})
    form = aiohttp.FormData()
    form.add_field("file", training_csv(), filename="train.csv", content_type="text/csv")
    url = f"{client.base_url}/api/v1/datasets/{dataset['id']}/upload"
    async with client.session.post(url, data=form, headers=client.headers) as resp:
        if resp.status != 201:
            raise BenchError(f"upload: {resp.status} {await resp.text()}")
        upload = (await resp.json())["data"]
    path = f"/api/v1/datasets/{dataset['id']}/versions"
    await client.call("POST", path, 201, {"upload_id": upload["upload_id"]})
    body = {"name": "bench-churn", "model_type": "classification", "framework": "scikit-learn"}
    model = await client.call("POST", "/api/v1/models", 201, body)
    trees = {"n_estimators": args.trees} if args.algorithm in ENSEMBLES else {}
    config = {"target_column": "churned", "algorithm": args.algorithm, "hyperparameters": trees}
    job_body = {"model_id": model["id"], "dataset_id": dataset["id"], "config": config}
    job = await client.call("POST", "/api/v1/training-jobs", 202, job_body)
    while job["status"] not in ("succeeded", "failed", "cancelled", "timed_out"):
        await asyncio.sleep(0.2)
        job = await client.call("GET", f"/api/v1/training-jobs/{job['id']}", 200)
    if job["status"] != "succeeded":
        raise BenchError(f"training ended {job['status']}: {job.get('error')}")
    await client.call("POST", f"/api/v1/models/{model['id']}/versions/1/deploy", 201, {})
    return str(job["model_version_id"])


async def ask(client: StepwellClient, version_id: str, row: Any) -> tuple[float, float]:
    """One prediction (a row, or a list of rows): (client ms, the server's latency_ms)."""
    started = time.perf_counter()
    data = await client.call(
        "POST", PREDICT, 201, {"model_version_id": version_id, "input_data": row}
    )
    return (time.perf_counter() - started) * 1000, float(data["latency_ms"])


async def sequential(
    client: StepwellClient, version_id: str, sample: list[dict[str, Any]]
) -> tuple[Figures, Figures]:
    """One request at a time; the client's view and the server's `latency_ms` of each."""
    for row in sample[:20]:  # warm-up: connections, code paths
        await ask(client, version_id, row)
    started = time.perf_counter()
    timed = [await ask(client, version_id, row) for row in sample]
    per_s = len(sample) / (time.perf_counter() - started)
    return (
        Figures("HTTP, one request at a time", [t[0] for t in timed], per_s),
        Figures("  of which server latency_ms", [t[1] for t in timed], per_s),
    )


async def concurrent(
    client: StepwellClient, version_id: str, sample: list[dict[str, Any]], args: argparse.Namespace
) -> Figures:
    """`concurrency` clients, each asking in a loop until the deadline."""
    latencies: list[float] = []
    deadline = time.perf_counter() + args.duration

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            latencies.append((await ask(client, version_id, sample[i % len(sample)]))[0])
            i += args.concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    per_s = len(latencies) / (time.perf_counter() - started)
    return Figures(f"HTTP, {args.concurrency} concurrent clients", latencies, per_s)


async def many_rows(
    client: StepwellClient, version_id: str, sample: list[dict[str, Any]], size: int
) -> Figures:
    """Sequential requests of `size` rows each: what a row costs when requests are shared."""
    batches = [sample[i : i + size] for i in range(0, len(sample) - size + 1, size)] * 2
    started = time.perf_counter()
    latencies = [(await ask(client, version_id, batch))[0] for batch in batches]
    per_s = len(batches) * size / (time.perf_counter() - started)
    return Figures(f"HTTP, {size} rows per request, one at a time", latencies, per_s)


def in_process(label: str, call: Callable[[int], object], calls: int) -> Figures:
    """Time `call(i)` for i in range(calls), after a few warm-up calls."""
    for i in range(min(50, calls)):
        call(i)
    latencies = []
    started = time.perf_counter()
    for i in range(calls):
        t = time.perf_counter()
        call(i)
        latencies.append((time.perf_counter() - t) * 1000)
    return Figures(label, latencies, calls / (time.perf_counter() - started))


def peers(model: LoadedModel, sample: list[dict[str, Any]], calls: int) -> list[Figures]:
    names = [f.name for f in model.features]
    frames = [
        to_frame(pd.DataFrame([[row[n] for n in names]], columns=names), model.features)
        for row in sample
    ]
    pipeline = "peer: pipeline.predict, in-process"
    checked = "LoadedModel.predict (checks), in-process"
    return [
        in_process(pipeline, lambda i: model.pipeline.predict(frames[i % len(frames)]), calls),
        in_process(checked, lambda i: model.predict([sample[i % len(sample)]]), calls),
    ]


def with_prediction_routes(app: web.Application) -> web.Application:
    """Add the prediction and deployment routes unless the app factory already has them."""
    known = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    if PREDICT not in known:
        app.router.add_routes([*predictions.routes(), *deployments.routes()])
        app.cleanup_ctx.append(batch_jobs_ctx)
    return app


async def measure(database_url: str, data_dir: Path, args: argparse.Namespace) -> list[Figures]:
    config = Config(
        database_url=database_url, data_dir=data_dir, jwt_secret=JWT_SECRET, node_id="bench"
    )
    app = with_prediction_routes(create_app(config))
    token = mint_token(JWT_SECRET, USER)
    limits = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with serve(app) as base, aiohttp.ClientSession(connector=limits) as session:
        client = StepwellClient(session, base, token)
        version_id = await train_and_deploy(client, args)
        sample = rows(max(args.requests, 1000))
        seq, server = await sequential(client, version_id, sample[: args.requests])
        conc = await concurrent(client, version_id, sample, args)
        batched = await many_rows(client, version_id, sample, args.batch_rows)
        row = await app[DB_POOL].fetchrow(
            queries["get_servable_model_version"], UUID(version_id), None
        )
        if row is None:
            raise BenchError(f"model version {version_id} vanished")
        model = await model_cache_of(app).get(row)
    return [*peers(model, sample, args.peer_calls), seq, server, conc, batched]


def render(figures: list[Figures]) -> str:
    table = [["path", "p50 ms", "p99 ms", "predictions/s"], *(f.cells() for f in figures)]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = [
        " | ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in table
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    with (
        postgres_server() as server_url,
        tempfile.TemporaryDirectory(prefix="stepwell-bench-predict-") as tmp,
    ):
        database_url = asyncio.run(recreate_database(server_url, DATABASE))
        figures = asyncio.run(measure(database_url, Path(tmp), args))
    model = args.algorithm + (f" ({args.trees} trees)" if args.algorithm in ENSEMBLES else "")
    header = (
        f"{model} on 3 features (2 numeric, 1 categorical), single-row requests; client and "
        f"server in one process; {args.requests} sequential requests, then "
        f"{args.concurrency} clients for {args.duration:g} s; {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.2f}. 'server latency_ms' is the API's own figure "
        "(model lookup, row checks, inference; not the recording); its predictions/s is the "
        "sequential rate. Latencies are per call (per request for the multi-row phase); "
        "predictions/s counts rows."
    )
    return f"{header}\n\n{render(figures)}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        report = run(args)
    except (BenchError, RuntimeError, OSError, aiohttp.ClientError) as exc:
        print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
