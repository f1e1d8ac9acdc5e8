"""Deploying model versions to Vertex AI endpoints: the app over HTTP, the real Vertex client's
REST transport against the fake Vertex API, gs:// storage on the GCS emulator."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from actors import deployments, ml_operations
from actors.model_cache import model_cache_of
from runtime.app import create_app
from runtime.compute.vertex_endpoints import (
    MODEL_LABEL,
    SKLEARN_IMAGE,
    VERSION_LABEL,
    VertexEndpoints,
)
from runtime.config import Config
from runtime.keys import DB_POOL
from tests.conftest import Client, auth
from tests.gcs import emulator
from tests.vertex_fake import FakeVertexServing

ROOT = Path(__file__).resolve().parents[1]
PROJECT, LOCATION = "proj", "europe-west4"
MODELS = "/api/v1/models"
WORKFLOWS = "/api/v1/workflows"
ARTIFACT = "gs://bucket/models/x/model.joblib"


@pytest.fixture(scope="module")
def gcs_url() -> Iterator[str]:
    with emulator("bucket") as (url, _):
        yield url


@pytest.fixture
def fake() -> FakeVertexServing:
    return FakeVertexServing()


@pytest.fixture
async def vertex_config(
    config: Config,
    fake: FakeVertexServing,
    gcs_url: str,
    aiohttp_server: AiohttpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Config:
    """The configuration of an installation on Vertex AI, whose API is the fake."""
    server = await aiohttp_server(fake.app())
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("STEPWELL_VERTEX_LOCATION", LOCATION)
    monkeypatch.setenv("STEPWELL_VERTEX_ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_url)
    return replace(config, compute="vertex", storage_url="gs://bucket/prefix")


@pytest.fixture
async def vertex(vertex_config: Config, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_app(vertex_config))


async def json_of(resp: Any, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def make_version(
    client: Client, artifact_uri: str = ARTIFACT, framework: str = "scikit-learn", **fields: Any
) -> dict[str, Any]:
    """Version 1 of a new model, registered by hand with its artifact on `artifact_uri`."""
    body = {"name": "churn", "model_type": "classification", "framework": framework}
    model = (await json_of(await client.post(MODELS, json=body, headers=auth()), 201))["data"]
    resp = await client.post(
        f"{MODELS}/{model['id']}/versions",
        json={"artifact_uri": artifact_uri, **fields},
        headers=auth(),
    )
    version: dict[str, Any] = (await json_of(resp, 201))["data"]
    return version


async def deploy(client: Client, version: dict[str, Any], ref: str = "1", **body: Any) -> Any:
    url = f"{MODELS}/{version['model_id']}/versions/{ref}/deploy"
    return await client.post(url, json={"target": "vertex", **body}, headers=auth())


async def deployments_of(client: Client, model_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"{MODELS}/{model_id}/deployments?limit=100", headers=auth())
    found: list[dict[str, Any]] = (await json_of(resp, 200))["data"]
    return found


async def settled(client: Client, deployment: dict[str, Any]) -> dict[str, Any]:
    """The deployment once it is no longer `deploying`."""
    for _ in range(500):
        rows = await deployments_of(client, deployment["model_id"])
        row = next(r for r in rows if r["id"] == deployment["id"])
        if row["status"] != "deploying":
            return row
        await asyncio.sleep(0.01)
    raise AssertionError(f"deployment {deployment['id']} is still deploying")


async def deployed(client: Client, version: dict[str, Any], **body: Any) -> dict[str, Any]:
    started = (await json_of(await deploy(client, version, **body), 202))["data"]
    return await settled(client, started)


async def test_deploying_an_alias_to_vertex_ends_deployed_on_its_endpoint(
    vertex: Client, fake: FakeVertexServing
) -> None:
    version = await make_version(vertex, aliases=["champion"])
    body = {"machine_type": "n1-highmem-2", "min_replicas": 2, "max_replicas": 5}

    resp = await deploy(vertex, version, "champion", **body)

    started = (await json_of(resp, 202))["data"]
    assert started["status"] == "deploying" and started["endpoint"] is None
    assert started["target"] == "vertex" and started["alias"] == "champion"
    assert started["version"] == 1 and started["model_version_id"] == version["id"]
    assert started["config"] == {**body, "artifact_dir": "gs://bucket/models/x"}
    done = await settled(vertex, started)
    assert done["status"] == "deployed" and done["error"] is None, done
    [endpoint] = fake.endpoints
    [model] = fake.models
    [placed] = fake.endpoints[endpoint]["deployedModels"]
    assert done["endpoint"] == endpoint
    assert endpoint.startswith(f"projects/{PROJECT}/locations/{LOCATION}/endpoints/")
    assert done["config"] == {
        **started["config"],
        "vertex_model": model,
        "deployed_model_id": placed["id"],
    }

    [upload] = fake.uploads
    labels = {VERSION_LABEL: version["id"], MODEL_LABEL: version["model_id"]}
    assert upload["model"] == {
        "displayName": "churn v1",
        "artifactUri": "gs://bucket/models/x",  # the directory: Vertex loads model.joblib in it
        "containerSpec": {"imageUri": SKLEARN_IMAGE},
        "labels": labels,
    }
    [created] = fake.endpoint_creates
    assert created["labels"] == {MODEL_LABEL: version["model_id"]}
    [request] = fake.deploys
    assert request["endpoint"] == endpoint and request["trafficSplit"] == {"0": 100}
    assert request["deployedModel"]["model"] == model
    assert request["deployedModel"]["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-highmem-2"},
        "minReplicaCount": 2,
        "maxReplicaCount": 5,
    }
    assert fake.endpoints[endpoint]["trafficSplit"] == {placed["id"]: 100}

    audit = f"/api/v1/audit-logs?entity_type=model&entity_id={version['model_id']}"
    entries = (await json_of(await vertex.get(audit, headers=auth()), 200))["data"]
    [entry] = [e["changes"] for e in entries if e["action"] == "deploy"]
    assert entry["deployment_id"] == started["id"] and entry["target"] == "vertex"
    assert entry["alias"] == "champion" and entry["status"] == "deploying"
    assert uuid.UUID(version["id"]) not in model_cache_of(vertex.app), "Vertex serves the file"


async def test_deploying_again_reuses_the_uploaded_model_and_the_endpoint(
    vertex: Client, fake: FakeVertexServing
) -> None:
    version = await make_version(vertex)
    first = await deployed(vertex, version)
    assert first["config"]["machine_type"] == "n1-standard-4", "the default machine"
    assert (first["config"]["min_replicas"], first["config"]["max_replicas"]) == (1, 1)

    again = await deployed(vertex, version)

    assert again["status"] == "deployed" and again["id"] != first["id"]
    assert again["endpoint"] == first["endpoint"]
    assert again["config"]["vertex_model"] == first["config"]["vertex_model"]
    assert again["config"]["deployed_model_id"] == first["config"]["deployed_model_id"]
    assert (fake.calls["upload"], fake.calls["create_endpoint"], fake.calls["deploy"]) == (1, 1, 1)
    label = f'labels.{VERSION_LABEL}="{version["id"]}"'
    assert fake.filters.count(label) == 2, "each deploy looked for the version's model"

    # Other resources: the same model is deployed again there, and takes all the traffic.
    bigger = await deployed(vertex, version, machine_type="n1-standard-8")
    assert bigger["endpoint"] == first["endpoint"]
    assert bigger["config"]["deployed_model_id"] != first["config"]["deployed_model_id"]
    assert (fake.calls["upload"], fake.calls["deploy"]) == (1, 2)
    split = fake.endpoints[first["endpoint"]]["trafficSplit"]
    assert split == {bigger["config"]["deployed_model_id"]: 100}

    # Another version of the model: uploaded, and served on the model's one endpoint.
    resp = await vertex.post(
        f"{MODELS}/{version['model_id']}/versions",
        json={"artifact_uri": "gs://bucket/models/y/"},
        headers=auth(),
    )
    second = (await json_of(resp, 201))["data"]
    other = await deployed(vertex, second, ref="2")
    assert other["status"] == "deployed" and other["endpoint"] == first["endpoint"]
    assert (fake.calls["upload"], fake.calls["create_endpoint"]) == (2, 1)
    assert fake.uploads[-1]["model"]["artifactUri"] == "gs://bucket/models/y"


async def test_a_deploy_vertex_refuses_ends_failed_with_its_message_and_can_be_retried(
    vertex: Client, fake: FakeVertexServing
) -> None:
    version = await make_version(vertex)
    fake.fail["deploy"] = "Machine type n1-bogus-9 is not supported."

    failed = await deployed(vertex, version, machine_type="n1-bogus-9")

    assert failed["status"] == "failed" and failed["endpoint"] is None
    assert failed["error"] == "Vertex AI: Machine type n1-bogus-9 is not supported."
    assert "vertex_model" not in failed["config"]

    retried = await deployed(vertex, version)
    assert retried["status"] == "deployed"
    assert (fake.calls["upload"], fake.calls["create_endpoint"], fake.calls["deploy"]) == (1, 1, 2)
    rows = await deployments_of(vertex, version["model_id"])
    assert [r["status"] for r in rows] == ["deployed", "failed"], "the failure stays recorded"


async def test_vertex_needs_vertex_compute_and_gcs_storage(client: Client) -> None:
    version = await make_version(client)

    message = (await json_of(await deploy(client, version), 422))["error"]["message"]

    assert "(STEPWELL_COMPUTE=local)" in message
    assert "set STEPWELL_COMPUTE=vertex, STEPWELL_STORAGE=gs://bucket/prefix" in message
    assert await deployments_of(client, version["model_id"]) == []


@pytest.mark.parametrize(
    ("artifact_uri", "framework", "problem"),
    [
        ("file:///srv/models/model.joblib", "scikit-learn", "is not on Google Cloud Storage"),
        ("gs://bucket/models/x/weights.h5", "scikit-learn", "loads model.joblib or model.pkl"),
        (ARTIFACT, "tensorflow", "is a tensorflow model"),
    ],
)
async def test_a_version_vertex_cannot_serve_is_refused(
    vertex: Client, fake: FakeVertexServing, artifact_uri: str, framework: str, problem: str
) -> None:
    version = await make_version(vertex, artifact_uri, framework)

    message = (await json_of(await deploy(vertex, version), 422))["error"]["message"]

    assert problem in message and "model version 1" in message
    assert await deployments_of(vertex, version["model_id"]) == []
    assert sum(fake.calls.values()) == 0, "nothing was asked of Vertex"


async def test_a_deploy_still_running_at_shutdown_ends_failed(
    vertex_config: Config, fake: FakeVertexServing
) -> None:
    fake.operation_polls = 1_000_000  # the upload never finishes
    client: Client = TestClient(TestServer(create_app(vertex_config)))
    await client.start_server()
    try:
        version = await make_version(client)
        started = (await json_of(await deploy(client, version), 202))["data"]
        for _ in range(500):
            if fake.calls["get_operation"]:
                break
            await asyncio.sleep(0.01)
        assert fake.calls["upload"] == 1 and fake.calls["get_operation"] == 1
    finally:
        await client.close()

    assert vertex_config.database_url is not None
    conn = await asyncpg.connect(vertex_config.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT status, error FROM deployments WHERE id = $1", uuid.UUID(started["id"])
        )
    finally:
        await conn.close()
    assert row is not None and row["status"] == "failed"
    assert row["error"].startswith("interrupted: the server shut down before Vertex AI finished")


async def test_deploys_a_process_that_died_was_carrying_on_end_failed(
    vertex_config: Config, fake: FakeVertexServing
) -> None:
    fake.operation_polls = 1_000_000  # the uploads never finish
    client: Client = TestClient(TestServer(create_app(vertex_config)))
    await client.start_server()
    try:
        version = await make_version(client)
        ids = [
            uuid.UUID((await json_of(await deploy(client, version), 202))["data"]["id"])
            for _ in range(2)
        ]
        pool = client.app[DB_POOL]
        state = "SELECT status, error FROM deployments WHERE id = $1"
        # What a process killed mid-deploy leaves: the row deploying, on its node.
        await pool.execute("UPDATE deployments SET node_id = 'node-gone' WHERE id = $1", ids[0])
        assert await deployments.vertex_deployer_of(client.app).sweep() == 1
        gone = await pool.fetchrow(state, ids[0])
        assert gone is not None and gone["status"] == "failed"
        assert gone["error"].startswith("interrupted: the process carrying it on stopped")
        still = await pool.fetchrow(state, ids[1])
        assert still is not None and still["status"] == "deploying"  # its node is alive
        # A process starting with this node id: what the node had deploying was left behind.
        restarted: Client = TestClient(TestServer(create_app(vertex_config)))
        await restarted.start_server()
        await restarted.close()
        left = await pool.fetchrow(state, ids[1])
        assert left is not None and left["status"] == "failed"
        assert left["error"].startswith("interrupted: the process carrying it on stopped")
    finally:
        await client.close()


async def test_a_workflow_deploy_step_deploys_to_vertex_and_waits_until_it_serves(
    vertex: Client, fake: FakeVertexServing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ml_operations, "DEPLOY_POLL_S", 0.02)
    version = await make_version(vertex)
    fake.fail["deploy"] = "Machine type n1-bogus-9 is not supported."

    async def run_deploy(machine_type: str) -> dict[str, Any]:
        data = {"model_id": version["model_id"], "version": 1, "target": "vertex"}
        node = {"id": "serve", "type": "deploy", "data": {**data, "machine_type": machine_type}}
        body = {"name": "serve", "definition": {"nodes": [node], "edges": []}}
        wf = (await json_of(await vertex.post(WORKFLOWS, json=body, headers=auth()), 201))["data"]
        await json_of(await vertex.post(f"{WORKFLOWS}/{wf['id']}/publish", headers=auth()), 200)
        url = f"{WORKFLOWS}/{wf['id']}/run?wait_s=30"
        run: dict[str, Any] = (await json_of(await vertex.post(url, json={}, headers=auth()), 200))[
            "data"
        ]
        return run

    failed = await run_deploy("n1-bogus-9")
    assert failed["status"] == "failed", failed
    assert "Machine type n1-bogus-9 is not supported" in failed["error"]["message"]

    served = await run_deploy("n1-highmem-2")  # the fake refuses once
    assert served["status"] == "succeeded", served
    output = served["output"]["serve"]
    [endpoint] = fake.endpoints
    assert output["endpoint"] == endpoint and output["model_version_id"] == version["id"]
    rows = await deployments_of(vertex, version["model_id"])
    assert [(r["status"], r["config"]["machine_type"]) for r in rows] == [
        ("deployed", "n1-highmem-2"),
        ("failed", "n1-bogus-9"),
    ]
    assert (fake.calls["upload"], fake.calls["deploy"]) == (1, 2), "the model is uploaded once"


def test_importing_the_app_does_not_import_the_vertex_client() -> None:
    code = (
        "import sys, runtime.app, runtime.compute.vertex_endpoints; "
        "print('google.cloud.aiplatform_v1' in sys.modules)"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


async def test_closing_the_endpoints_client_leaves_no_open_session(
    fake: FakeVertexServing, aiohttp_server: AiohttpServer
) -> None:
    server = await aiohttp_server(fake.app())
    env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "STEPWELL_VERTEX_ENDPOINT": f"http://{server.host}:{server.port}",
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        endpoints = VertexEndpoints.from_env(env)
        version_id, model_id = uuid.uuid4(), uuid.uuid4()
        served = await endpoints.deploy(version_id, model_id, "gs://b/m", "n1-standard-2", 1, 2)
        await endpoints.close()
        del endpoints
        gc.collect()  # an unclosed aiohttp session says "Unclosed client session" here

    assert served.endpoint.startswith(f"projects/{PROJECT}/locations/us-central1/endpoints/")
    assert fake.calls["get_operation"] == 3, "upload, endpoint and deploy were each polled"
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
