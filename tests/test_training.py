"""Training jobs end to end on the local backend: real scikit-learn subprocesses."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from runtime.app import create_app
from runtime.config import Config
from runtime.keys import STORAGE
from tests.conftest import Client, auth

AppClient = TestClient[web.Request, web.Application]


def churn_csv(rows: int = 400, seed: int = 7) -> bytes:
    """A learnable binary problem with a categorical column and some nulls."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    plan = rng.choice(["basic", "pro", "team"], size=rows)
    label = ((x1 + 0.5 * x2 + (plan == "pro")) > 0.3).astype(int)
    out = io.StringIO()
    out.write("x1,x2,plan,churned\n")
    for i in range(rows):
        a = "" if i % 37 == 0 else f"{x1[i]:.4f}"
        out.write(f"{a},{x2[i]:.4f},{plan[i]},{label[i]}\n")
    return out.getvalue().encode()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def make_dataset(app: AppClient, database_url: str, data: bytes, owner: str = "alice") -> str:
    """A dataset with one version holding `data` as train.csv, written through storage."""
    dataset_id = uuid.uuid4()
    key = f"datasets/{dataset_id}/uploads/test/train.csv"
    stored = await app.app[STORAGE].write(key, _chunks(data), "text/csv")
    files = [
        {
            "name": "train.csv",
            "storage_key": key,
            "uri": stored.uri,
            "size_bytes": stored.size_bytes,
            "sha256": stored.sha256,
        }
    ]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO datasets (id, owner_id, name, created_by) VALUES ($1, $2, 'churn', $2)",
            dataset_id,
            owner,
        )
        await conn.execute(
            "INSERT INTO dataset_versions (dataset_id, version, files, total_digest, size_bytes,"
            " created_by) VALUES ($1, 1, $2::jsonb, $3, $4, $5)",
            dataset_id,
            json.dumps(files),
            stored.sha256,
            stored.size_bytes,
            owner,
        )
    finally:
        await conn.close()
    return str(dataset_id)


async def make_model(app: AppClient, model_type: str = "classification") -> str:
    body = {"name": "churn", "model_type": model_type, "framework": "scikit-learn"}
    resp = await app.post("/api/v1/models", json=body, headers=auth())
    assert resp.status == 201, await resp.text()
    model_id: str = (await resp.json())["data"]["id"]
    return model_id


async def submit(app: AppClient, model: str, dataset: str, **config: Any) -> dict[str, Any]:
    body = {
        "model_id": model,
        "dataset_id": dataset,
        "experiment_id": "exp-1",
        "config": {"target_column": "churned", **config},
    }
    resp = await app.post("/api/v1/training-jobs", json=body, headers=auth())
    assert resp.status == 202, await resp.text()
    job: dict[str, Any] = (await resp.json())["data"]
    return job


async def wait_job(
    app: AppClient,
    job_id: str,
    statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled", "timed_out"),
    within_s: float = 60,
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        resp = await app.get(f"/api/v1/training-jobs/{job_id}", headers=auth())
        job: dict[str, Any] = (await resp.json())["data"]
        if job["status"] in statuses:
            return job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.1)


async def test_train_stream_logs_metrics_and_register_a_version(
    client: Client, database_url: str
) -> None:
    dataset = await make_dataset(client, database_url, churn_csv())
    model = await make_model(client)
    job = await submit(
        client, model, dataset, algorithm="gradient_boosting", hyperparameters={"n_estimators": 30}
    )
    assert job["status"] == "queued" and job["backend"] == "local"

    resp = await client.get(f"/api/v1/training-jobs/{job['id']}/logs", headers=auth())
    stream = await resp.text()
    lines = [json.loads(x[6:]) for x in stream.splitlines() if x.startswith('data: {"seq')]
    assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1))
    assert any("registered model version 1" in x["message"] for x in lines)
    assert "event: end" in stream

    done = await wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["metrics"]["accuracy"] > 0.7
    resp = await client.get(f"/api/v1/training-jobs/{job['id']}/metrics", headers=auth())
    history = (await resp.json())["data"]["history"]
    assert len(history["accuracy"]) > 1, "gradient boosting reports a curve"

    resp = await client.get(f"/api/v1/models/{model}/versions", headers=auth())
    versions = (await resp.json())["data"]
    assert len(versions) == 1
    version = versions[0]
    assert version["training_job_id"] == job["id"] and version["dataset_version"] == 1
    assert version["artifact_uri"].startswith("file://") and version["metrics"]["accuracy"] > 0.7
    resp = await client.get(f"/api/v1/datasets/{dataset}/versions/1/model-versions", headers=auth())
    assert [v["id"] for v in (await resp.json())["data"]] == [version["id"]]

    resp = await client.get(
        f"/api/v1/training-jobs/{job['id']}/logs",
        headers={**auth(), "Last-Event-ID": str(len(lines) - 1)},
    )
    tail = [x for x in (await resp.text()).splitlines() if x.startswith("id: ")]
    assert tail == [f"id: {len(lines)}"]


async def test_bad_requests_and_ownership(client: Client, database_url: str) -> None:
    dataset = await make_dataset(client, database_url, churn_csv(50))
    model = await make_model(client)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"model_id": model, "dataset_id": dataset, "config": {}}, 422),
        (
            {
                "model_id": model,
                "dataset_id": dataset,
                "dataset_version": 9,
                "config": {"target_column": "churned"},
            },
            422,
        ),
        (
            {
                "model_id": str(uuid.uuid4()),
                "dataset_id": dataset,
                "config": {"target_column": "churned"},
            },
            404,
        ),
        (
            {
                "model_id": model,
                "dataset_id": dataset,
                "config": {"target_column": "churned", "max_runtime_seconds": 0},
            },
            422,
        ),
    ]
    for body, status in cases:
        resp = await client.post("/api/v1/training-jobs", json=body, headers=auth())
        assert resp.status == status, (body, await resp.text())
    job = await submit(client, model, dataset, algorithm="no_such_algorithm")
    failed = await wait_job(client, job["id"])
    assert failed["status"] == "failed" and "no_such_algorithm" in failed["error"]
    resp = await client.get(f"/api/v1/training-jobs/{job['id']}", headers=auth("bob"))
    assert resp.status == 404
    resp = await client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=auth())
    assert resp.status == 409, "an ended job cannot be cancelled"


async def test_cancel_and_time_out_a_long_job(client: Client, database_url: str) -> None:
    dataset = await make_dataset(client, database_url, churn_csv(3000))
    model = await make_model(client)
    slow = {"algorithm": "random_forest", "hyperparameters": {"n_estimators": 5000}}
    job = await submit(client, model, dataset, **slow)
    await wait_job(client, job["id"], ("running",))
    resp = await client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=auth())
    assert resp.status == 202 and (await resp.json())["data"]["status"] == "cancelling"
    assert (await wait_job(client, job["id"]))["status"] == "cancelled"

    timed = await submit(client, model, dataset, max_runtime_seconds=1, **slow)
    done = await wait_job(client, timed["id"])
    assert done["status"] == "timed_out" and "max_runtime_seconds=1" in done["error"]
    resp = await client.get(f"/api/v1/models/{model}/versions", headers=auth())
    assert (await resp.json())["data"] == [], "no version from jobs that did not finish"


@pytest.fixture
async def second_app(config: Config, aiohttp_client: AiohttpClient) -> Any:
    async def start(node: str) -> AppClient:
        cfg = Config(
            database_url=config.database_url,
            jwt_secret=config.jwt_secret,
            data_dir=config.data_dir,
            node_id=node,
        )
        return await aiohttp_client(create_app(cfg))

    return start


async def test_a_running_job_is_recovered_after_a_restart(
    second_app: Any, database_url: str
) -> None:
    first: AppClient = await second_app("train-1")
    dataset = await make_dataset(first, database_url, churn_csv(3000))
    model = await make_model(first)
    job = await submit(
        first, model, dataset, algorithm="random_forest", hyperparameters={"n_estimators": 300}
    )
    await wait_job(first, job["id"], ("running",))
    await first.close()  # the worker process dies with it

    second: AppClient = await second_app("train-2")
    done = await wait_job(second, job["id"], within_s=120)
    assert done["status"] == "succeeded", done
    resp = await second.get(f"/api/v1/training-jobs/{job['id']}/logs", headers=auth())
    assert "resuming after a restart" in await resp.text()
