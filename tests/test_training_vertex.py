"""Training jobs on Vertex AI end to end: the API, the TrainingJobActor and the real Vertex
client (REST transport) against the fake in tests/vertex_fake.py, with GCS storage on the
emulator. The fake's job states are scripted; nothing trains."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud.aiplatform_v1 import AcceleratorType
from pytest_aiohttp import AiohttpClient, AiohttpServer

from actors.training_vertex import VertexTrainingBackend
from runtime.app import create_app
from runtime.compute.vertex import LABEL
from runtime.config import Config
from runtime.keys import STORAGE
from tests.conftest import Client, auth
from tests.gcs import emulator, service_account_info, use_emulator
from tests.test_datasets import body_of, make_dataset, upload
from tests.test_training import churn_csv, make_model, submit, wait_job
from tests.vertex_fake import FakeVertex

BUCKET = "bucket"
STORAGE_URL = f"gs://{BUCKET}/stepwell"
PROJECT, LOCATION = "test-project", "europe-west4"  # use_emulator sets GOOGLE_CLOUD_PROJECT
StartApp = Callable[[str], Awaitable[Client]]


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[tuple[str, Any]]:
    with emulator(BUCKET) as running:
        yield running


@pytest.fixture(scope="module")
def signer() -> tuple[dict[str, str], rsa.RSAPublicKey]:
    return service_account_info()


@pytest.fixture
def fake() -> FakeVertex:
    return FakeVertex()


@pytest.fixture
async def vertex_env(
    fake: FakeVertex,
    aiohttp_server: AiohttpServer,
    gcs_server: tuple[str, Any],
    signer: tuple[dict[str, str], rsa.RSAPublicKey],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> AsyncIterator[None]:
    """What `STEPWELL_COMPUTE=vertex` reads: the fake as the Vertex endpoint, GCS on the
    emulator (emptied after the test), and polling fast enough for a test."""
    server = await aiohttp_server(fake.app())
    url, gcs = gcs_server
    use_emulator(monkeypatch, url, signer[0], tmp_path / "signer.json")
    monkeypatch.setenv("STEPWELL_VERTEX_ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("STEPWELL_VERTEX_LOCATION", LOCATION)
    monkeypatch.setattr(VertexTrainingBackend, "poll_s", 0.02)
    monkeypatch.setattr(VertexTrainingBackend, "max_poll_s", 0.1)
    yield
    gcs.wipe(keep_buckets=True)


@pytest.fixture
def start_app(vertex_env: None, config: Config, aiohttp_client: AiohttpClient) -> StartApp:
    """Start an app (a process) on the test's database with Vertex compute, as node `node`."""

    async def start(node: str) -> Client:
        cfg = Config(
            database_url=config.database_url,
            jwt_secret=config.jwt_secret,
            data_dir=config.data_dir,
            node_id=node,
            compute="vertex",
            storage_url=STORAGE_URL,
        )
        return await aiohttp_client(create_app(cfg))

    return start


@pytest.fixture
async def client(start_app: StartApp) -> Client:
    """One Vertex-configured app (replaces conftest's client)."""
    return await start_app("vertex-1")


async def model_and_dataset(client: Client) -> tuple[str, str]:
    """A model, and a dataset with one version uploaded through the API to GCS."""
    dataset = await make_dataset(client)
    uploaded = await body_of(await upload(client, dataset["id"], {"churn.csv": churn_csv()}), 201)
    resp = await client.post(
        f"/api/v1/datasets/{dataset['id']}/versions",
        json={"upload_id": uploaded["data"]["upload_id"]},
        headers=auth(),
    )
    await body_of(resp, 201)
    return await make_model(client), dataset["id"]


async def vertex_job_of(fake: FakeVertex, job_id: str, within_s: float = 10) -> str:
    """The name of the CustomJob labelled with the Stepwell job id, once it exists."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        names = [n for n, j in fake.jobs.items() if j.get("labels", {}).get(LABEL) == job_id]
        if names:
            [name] = names
            return name
        assert asyncio.get_running_loop().time() < deadline, "no CustomJob was created"
        await asyncio.sleep(0.02)


async def log_messages(client: Client, job_id: str) -> list[str]:
    """Every log line of a job, from its SSE stream (which ends when the job has ended)."""
    resp = await client.get(f"/api/v1/training-jobs/{job_id}/logs", headers=auth())
    assert resp.status == 200
    lines = (await resp.text()).splitlines()
    return [json.loads(x.removeprefix("data: "))["message"] for x in lines if '"seq"' in x]


def in_order(messages: list[str], *wanted: str) -> bool:
    """Whether each wanted text appears in some message, in this order."""
    rest = iter(messages)
    return all(any(w in m for m in rest) for w in wanted)


async def versions_of(client: Client, model_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/models/{model_id}/versions", headers=auth())
    versions: list[dict[str, Any]] = (await body_of(resp, 200))["data"]
    return versions


async def test_a_job_runs_as_one_custom_job_and_registers_the_model_it_wrote(
    client: Client, fake: FakeVertex
) -> None:
    model, dataset = await model_and_dataset(client)
    job = await submit(
        client,
        model,
        dataset,
        machine_type="n1-highmem-8",
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=1,
        max_runtime_seconds=3600,
    )
    assert (job["status"], job["backend"]) == ("queued", "vertex")
    name = await vertex_job_of(fake, job["id"])
    assert name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/customJobs/")

    [body] = fake.created
    out = f"{STORAGE_URL}/training-jobs/{job['id']}"
    assert body["labels"] == {LABEL: job["id"]}
    assert body["displayName"] == f"stepwell-{job['id']}"
    [pool] = body["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "n1-highmem-8",
        "acceleratorType": AcceleratorType.NVIDIA_TESLA_T4,
        "acceleratorCount": 1,
    }
    assert body["jobSpec"]["scheduling"] == {"timeout": "3600s"}
    assert body["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": out}
    container = pool["containerSpec"]
    mount = f"/gcs/{BUCKET}/stepwell/training-jobs/{job['id']}"
    assert container["args"] == [f"{mount}/spec.json"]
    assert {"name": "STEPWELL_TRAINER_REPORT", "value": f"{mount}/report.jsonl"} in container["env"]
    storage = client.app[STORAGE]
    spec = json.loads(b"".join([c async for c in storage.read(
        f"training-jobs/{job['id']}/spec.json")]))  # fmt: skip
    assert spec["artifact_path"] == f"{mount}/model/model.joblib"
    assert all(f.startswith(f"/gcs/{BUCKET}/stepwell/datasets/") for f in spec["data_files"])

    # What the trainer in the container leaves beside the model.
    at = "2026-11-23T00:00:00+00:00"
    report = [
        {"type": "metric", "step": 1, "name": "accuracy", "value": 0.91, "at": at},
        {"type": "artifact", "path": spec["artifact_path"], "size_bytes": 10,
         "sha256": "ab" * 32, "format": "joblib"},
        {"type": "result", "metrics": {"accuracy": 0.91}, "features": [{"name": "x1"}],
         "classes": [0, 1], "algorithm": "logistic_regression", "parameters": {"C": 1.0}},
    ]  # fmt: skip
    lines = "".join(json.dumps(m) + "\n" for m in report).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield lines

    await storage.write(f"training-jobs/{job['id']}/report.jsonl", chunks())
    fake.script(name, ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"])
    done = await wait_job(client, job["id"], within_s=10)

    assert done["status"] == "succeeded", done
    assert done["raw_state"] == "JOB_STATE_SUCCEEDED" and done["error"] is None
    assert done["external_id"] == name, "the job shows which CustomJob ran it"
    assert done["model_version_id"] is not None
    number = name.rsplit("/", 1)[-1]
    messages = await log_messages(client, job["id"])
    assert in_order(
        messages,
        f"Vertex AI job {number}: JOB_STATE_PENDING (pending)",
        f"Vertex AI job {number}: JOB_STATE_RUNNING (running)",
        f"Vertex AI job {number}: JOB_STATE_SUCCEEDED (succeeded)",
        "registered model version 1",
    ), messages

    [version] = await versions_of(client, model)
    assert version["id"] == done["model_version_id"]
    assert version["artifact_uri"] == f"{out}/model/model.joblib"
    assert version["training_job_id"] == job["id"] and version["dataset_version"] == 1
    assert version["metadata"]["vertex_job"] == name
    assert version["metadata"]["sha256"] == "ab" * 32
    assert version["metrics"] == {"accuracy": 0.91}
    assert version["parameters"] == {"algorithm": "logistic_regression", "C": 1.0}
    resp = await client.get(f"/api/v1/training-jobs/{job['id']}/metrics", headers=auth())
    assert (await body_of(resp, 200))["data"]["history"]["accuracy"][0]["value"] == 0.91
    resp = await client.get(f"/api/v1/datasets/{dataset}/versions/1/model-versions", headers=auth())
    assert [v["id"] for v in (await body_of(resp, 200))["data"]] == [version["id"]]
    assert fake.calls["create"] == 1


async def test_the_job_succeeds_only_once_its_model_version_is_registered(
    client: Client, fake: FakeVertex, database_url: str
) -> None:
    model, dataset = await model_and_dataset(client)
    job = await submit(client, model, dataset)
    name = await vertex_job_of(fake, job["id"])
    # A concurrent registration of the same model holds its version-numbering lock, so the
    # job's own registration waits.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended($1::text, 0))", model)
        fake.script(name, ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"])
        for _ in range(500):
            resp = await client.get(f"/api/v1/training-jobs/{job['id']}", headers=auth())
            seen = (await body_of(resp, 200))["data"]
            if seen["raw_state"] == "JOB_STATE_SUCCEEDED":
                break
            await asyncio.sleep(0.02)

        # Vertex is done, Stepwell is not: the job is not `succeeded` without its model.
        assert seen["raw_state"] == "JOB_STATE_SUCCEEDED"
        assert (seen["status"], seen["model_version_id"]) == ("running", None), seen
    finally:
        await conn.close()  # releases the lock

    done = await wait_job(client, job["id"], within_s=10)
    assert done["status"] == "succeeded" and done["model_version_id"] is not None


@pytest.mark.parametrize(
    ("state", "vertex_error", "status", "error"),
    [
        ("JOB_STATE_FAILED", "The replica workerpool0-0 exited with a non-zero status of 1.",
         "failed", "The replica workerpool0-0 exited with a non-zero status of 1."),
        ("JOB_STATE_EXPIRED", None, "timed_out", "Vertex AI expired the job: it ran out of time"),
    ],
)  # fmt: skip
async def test_a_job_vertex_ends_badly_ends_so_with_its_message_and_no_model(
    client: Client, fake: FakeVertex, state: str, vertex_error: str | None, status: str, error: str
) -> None:
    model, dataset = await model_and_dataset(client)
    job = await submit(client, model, dataset)
    name = await vertex_job_of(fake, job["id"])
    fake.script(name, ["JOB_STATE_RUNNING", state], error=vertex_error)

    done = await wait_job(client, job["id"], within_s=10)

    assert (done["status"], done["raw_state"], done["error"]) == (status, state, error)
    assert done["model_version_id"] is None
    messages = await log_messages(client, job["id"])
    assert in_order(messages, f"{state} ({status}): {error}", f"job {status}: {error}"), messages
    assert await versions_of(client, model) == []


async def test_cancel_is_forwarded_to_vertex_and_the_job_ends_cancelled(
    client: Client, fake: FakeVertex
) -> None:
    model, dataset = await model_and_dataset(client)
    job = await submit(client, model, dataset)
    name = await vertex_job_of(fake, job["id"])
    fake.script(name, ["JOB_STATE_RUNNING"])  # and running it stays
    await wait_job(client, job["id"], ("running",), within_s=10)

    resp = await client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=auth())
    assert (await body_of(resp, 202))["data"]["status"] == "cancelling"
    done = await wait_job(client, job["id"], within_s=10)

    assert fake.calls["cancel"] == 1
    assert fake.jobs[name]["state"] == "JOB_STATE_CANCELLED"
    assert (done["status"], done["raw_state"]) == ("cancelled", "JOB_STATE_CANCELLED")
    assert done["model_version_id"] is None
    messages = await log_messages(client, job["id"])
    assert in_order(
        messages, "cancel requested", "JOB_STATE_CANCELLING (cancelling)", "job cancelled"
    ), messages
    assert await versions_of(client, model) == []


async def test_a_restarted_process_reattaches_to_the_running_custom_job(
    start_app: StartApp, fake: FakeVertex
) -> None:
    first = await start_app("vertex-1")
    model, dataset = await model_and_dataset(first)
    job = await submit(first, model, dataset)
    name = await vertex_job_of(fake, job["id"])
    fake.script(name, ["JOB_STATE_RUNNING"])
    await wait_job(first, job["id"], ("running",), within_s=10)
    await first.close()  # the process stops while Vertex keeps running the job
    lists = fake.calls["list"]

    second = await start_app("vertex-2")
    for _ in range(500):  # the recovered actor looks the job up by its label
        if fake.calls["list"] > lists:
            break
        await asyncio.sleep(0.02)
    fake.script(name, ["JOB_STATE_SUCCEEDED"])
    done = await wait_job(second, job["id"], within_s=10)

    assert done["status"] == "succeeded", done
    assert fake.calls["create"] == 1 and len(fake.jobs) == 1
    assert fake.filters[-1] == f'labels.{LABEL}="{job["id"]}"'
    messages = await log_messages(second, job["id"])
    assert in_order(
        messages,
        "JOB_STATE_RUNNING (running)",
        "resuming after a restart (was running)",
        f"Vertex AI job {name} (JOB_STATE_RUNNING)",
        "JOB_STATE_SUCCEEDED (succeeded)",
        "registered model version 1",
    ), messages
    # The state recorded before the restart is not reported again.
    assert sum("JOB_STATE_RUNNING (running)" in m for m in messages) == 1, messages
    [version] = await versions_of(second, model)
    assert version["training_job_id"] == job["id"]
