"""Deploying model versions, and the model cache behind predictions, on real trained models.

One app and database serve the whole module, with a classifier and a regressor trained once by
the local trainer: each test leaves the shared models as it found them.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.cloud import storage as gcs  # type: ignore[import-untyped, unused-ignore]

from actors.batch_predictions import batch_jobs_ctx
from actors.model_cache import ModelCache, model_cache_of, storage_key
from handlers import deployments, predictions
from runtime.app import create_app, setup_docs
from runtime.config import Config
from runtime.db import database_url_for
from runtime.keys import DB_POOL, STORAGE
from runtime.sql import queries
from runtime.storage.gcs import GcsStorage
from runtime.storage.local import LocalStorage
from tests.conftest import TEMPLATE_DB, TEST_SECRET, auth
from tests.test_training import churn_csv, make_dataset, make_model, submit, wait_job

pytestmark = pytest.mark.asyncio(loop_scope="module")
AppClient = TestClient[web.Request, web.Application]
MODELS = "/api/v1/models"


@dataclass(frozen=True, slots=True)
class Trained:
    """The module's app, and a version of each trained model as the registry shows it."""

    client: AppClient
    database_url: str
    classifier: dict[str, Any]
    regressor: dict[str, Any]

    @property
    def app(self) -> web.Application:
        return self.client.app


def spend_csv(rows: int = 200, seed: int = 3) -> bytes:
    """A regression problem with the churn data's features and a numeric target `spend`."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    plan = rng.choice(["basic", "pro", "team"], size=rows)
    spend = 10 + 3 * x1 - 2 * x2 + 5 * (plan == "pro") + rng.normal(scale=0.1, size=rows)
    out = io.StringIO()
    out.write("x1,x2,plan,spend\n")
    for i in range(rows):
        out.write(f"{x1[i]:.4f},{x2[i]:.4f},{plan[i]},{spend[i]:.3f}\n")
    return out.getvalue().encode()


@asynccontextmanager
async def served_app(server_url: str, data_dir: Path) -> AsyncIterator[tuple[AppClient, str]]:
    """The app with the prediction and deployment routes, on a fresh migrated database."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    url = database_url_for(server_url, name)
    app = create_app(Config(database_url=url, data_dir=data_dir, jwt_secret=TEST_SECRET))
    app.router.add_routes(predictions.routes())
    app.router.add_routes(deployments.routes())
    app.cleanup_ctx.append(batch_jobs_ctx)
    client: AppClient = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, url
    finally:
        await client.close()
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def train_version(
    client: AppClient, database_url: str, data: bytes, model_type: str, **config: Any
) -> dict[str, Any]:
    """Version 1 of a new model, trained by the local trainer on `data`."""
    dataset = await make_dataset(client, database_url, data)
    model = await make_model(client, model_type)
    done = await wait_job(client, (await submit(client, model, dataset, **config))["id"])
    assert done["status"] == "succeeded", done
    resp = await client.get(f"{MODELS}/{model}/versions/1", headers=auth())
    version: dict[str, Any] = (await resp.json())["data"]
    return version


@asynccontextmanager
async def trained_models(server_url: str, data_dir: Path) -> AsyncIterator[Trained]:
    """An app with a classifier and a regressor trained side by side."""
    async with served_app(server_url, data_dir) as (client, url):
        classifier, regressor = await asyncio.gather(
            train_version(
                client,
                url,
                churn_csv(300),
                "classification",
                algorithm="random_forest",
                hyperparameters={"n_estimators": 20},
            ),
            train_version(
                client, url, spend_csv(), "regression", target_column="spend", algorithm="ridge"
            ),
        )
        yield Trained(client, url, classifier, regressor)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trained(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Trained]:
    async with trained_models(server_url, tmp_path_factory.mktemp("served")) as models:
        yield models


async def json_of(resp: Any, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_deploy_by_number_and_by_alias_warms_the_cache(trained: Trained) -> None:
    client, version = trained.client, trained.classifier
    cache = model_cache_of(trained.app)
    cache.clear()
    url = f"{MODELS}/{version['model_id']}/versions/1/deploy"
    by_number = (await json_of(await client.post(url, headers=auth()), 201))["data"]
    assert by_number["status"] == "deployed" and by_number["target"] == "local"
    assert by_number["endpoint"] == "/api/v1/predictions" and by_number["alias"] is None
    assert by_number["model_version_id"] == version["id"] and by_number["version"] == 1
    assert uuid.UUID(version["id"]) in cache, "deploying loads the model"

    resp = await client.put(
        f"{MODELS}/{version['model_id']}/versions/1", json={"aliases": ["champion"]}, headers=auth()
    )
    await json_of(resp, 200)
    body = {"target": "local", "machine_type": "n1-standard-4", "min_replicas": 1}
    resp = await client.post(
        f"{MODELS}/{version['model_id']}/versions/champion/deploy", json=body, headers=auth()
    )
    by_alias = (await json_of(resp, 201))["data"]
    assert by_alias["alias"] == "champion" and by_alias["version"] == 1
    assert by_alias["config"] == {"machine_type": "n1-standard-4", "min_replicas": 1}

    listed = await json_of(
        await client.get(f"{MODELS}/{version['model_id']}/deployments?limit=1", headers=auth()), 200
    )
    assert [d["id"] for d in listed["data"]] == [by_alias["id"]], "newest first"
    assert listed["pagination"]["total"] >= 2
    audit = f"/api/v1/audit-logs?entity_type=model&entity_id={version['model_id']}&limit=100"
    entries = (await json_of(await client.get(audit, headers=auth()), 200))["data"]
    deployed = [e["changes"] for e in entries if e["action"] == "deploy"]
    assert {"deployment_id": by_alias["id"], "alias": "champion"}.items() <= deployed[0].items()


async def test_deploy_refusals(trained: Trained) -> None:
    client, version = trained.client, trained.classifier
    base = f"{MODELS}/{version['model_id']}/versions"
    resp = await client.post(f"{base}/1/deploy", json={"target": "vertex"}, headers=auth())
    assert (
        "Vertex AI endpoints are not available yet"
        in (await json_of(resp, 422))["error"]["message"]
    )
    for url, body, user, status in [
        (f"{base}/9/deploy", {}, "alice", 404),
        (f"{base}/nope/deploy", {}, "alice", 404),
        (f"{base}/1/deploy", {}, "bob", 404),
        (f"{base}/1/deploy", {"min_replicas": 3, "max_replicas": 2}, "alice", 422),
        (f"{base}/1/deploy", {"target": "gke"}, "alice", 422),
    ]:
        await json_of(await client.post(url, json=body, headers=auth(user)), status)
    resp = await client.get(f"{MODELS}/{version['model_id']}/deployments", headers=auth("bob"))
    await json_of(resp, 404)

    # A version registered by hand has no model file Stepwell wrote; an archived model is 409.
    other = await make_model(client)
    resp = await client.post(
        f"{MODELS}/{other}/versions", json={"artifact_uri": "gs://b/m.joblib"}, headers=auth()
    )
    await json_of(resp, 201)
    resp = await client.post(f"{MODELS}/{other}/versions/1/deploy", headers=auth())
    assert "has no Stepwell model file" in (await json_of(resp, 422))["error"]["message"]
    await json_of(await client.delete(f"{MODELS}/{other}", headers=auth()), 200)
    resp = await client.post(f"{MODELS}/{other}/versions/1/deploy", headers=auth())
    await json_of(resp, 409)
    resp = await client.get(f"{MODELS}/{other}/deployments", headers=auth())
    assert (await json_of(resp, 200))["data"] == [], "refused deployments leave no row"


async def test_cache_loads_each_version_once_and_evicts_the_least_recent(trained: Trained) -> None:
    pool, storage = trained.app[DB_POOL], trained.app[STORAGE]
    rows = [
        await pool.fetchrow(queries["get_servable_model_version"], uuid.UUID(v["id"]), None)
        for v in (trained.classifier, trained.regressor)
    ]
    assert rows[0] is not None and rows[1] is not None
    cache = ModelCache(storage, max_models=1)
    models = await asyncio.gather(*(cache.get(rows[0]) for _ in range(8)))
    assert cache.loads == 1 and all(m is models[0] for m in models), "one load, shared"
    await cache.get(rows[1])
    await cache.get(rows[0])
    assert cache.loads == 3 and len(cache) == 1, "the classifier was evicted, then reloaded"

    shared = model_cache_of(trained.app)
    shared.clear()
    before = shared.loads
    body = {"model_version_id": trained.classifier["id"], "input_data": {"x1": 1, "x2": 0}}
    body["input_data"]["plan"] = "pro"
    for _ in range(2):
        await json_of(
            await trained.client.post("/api/v1/predictions", json=body, headers=auth()), 201
        )
    assert shared.loads == before + 1, "the second prediction used the loaded model"


async def test_a_changed_model_file_reference_is_refused(trained: Trained) -> None:
    """A version's metadata can be rewritten through the registry; the file loaded cannot."""
    client, version = trained.client, trained.classifier
    url = f"{MODELS}/{version['model_id']}/versions/1"
    forged = {**version["metadata"], "storage_key": "datasets/x/uploads/u/evil.joblib"}
    try:
        await json_of(await client.put(url, json={"metadata": forged}, headers=auth()), 200)
        model_cache_of(trained.app).clear()
        body = {"model_version_id": version["id"], "input_data": {"x1": 1, "x2": 0, "plan": "a"}}
        resp = await client.post("/api/v1/predictions", json=body, headers=auth())
        message = (await json_of(resp, 422))["error"]["message"]
        assert "does not name the file its training job stored" in message
    finally:
        restore = {"metadata": version["metadata"]}
        await json_of(await client.put(url, json=restore, headers=auth()), 200)


async def test_every_route_is_documented() -> None:
    app = web.Application()
    app.router.add_routes([*predictions.routes(), *deployments.routes()])
    spec = setup_docs(app).swagger_dict()
    count = 0
    for route in app.router.routes():
        path = route.get_info().get("path") or route.get_info().get("formatter") or ""
        if not path.startswith("/api/v1"):
            continue
        operation = spec["paths"][path][route.method.lower()]
        assert operation.get("summary") and operation.get("responses"), (route.method, path)
        count += 1
    assert count == 7
    predict = spec["paths"]["/api/v1/predictions"]["post"]
    assert {"201", "404", "422"} <= set(predict["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["properties"]["input_data"]["example"]
    assert schemas["BatchRequest"]["properties"]["input_gcs_path"]["example"].startswith("gs://")


async def test_storage_uris_map_to_keys_on_gcs_and_local(tmp_path: Path) -> None:
    bucket = GcsStorage("acme-ml", "stepwell", gcs.Client.create_anonymous_client())
    assert storage_key(bucket, "gs://acme-ml/stepwell/scoring/a.csv") == "scoring/a.csv"
    assert storage_key(bucket, "gs://acme-ml/other/a.csv") is None
    assert storage_key(bucket, "gs://acme-ml/stepwell/../a.csv") is None
    local = LocalStorage(tmp_path / "root dir", b"k", "http://localhost")
    assert storage_key(local, local.uri("scoring/a b.csv")) == "scoring/a b.csv", "decoded"
    assert storage_key(local, (tmp_path / "a.csv").as_uri()) is None
    assert storage_key(local, "scoring/a.csv") == "scoring/a.csv"
