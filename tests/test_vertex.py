"""The Vertex AI backend, through the real client's REST transport, against a local fake."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypedDict

import pytest
from google.api_core.exceptions import BadGateway, NotFound
from google.cloud.aiplatform_v1 import AcceleratorType, JobState
from pytest_aiohttp import AiohttpServer

from runtime.compute import vertex
from runtime.compute.vertex import (
    LABEL,
    JobStatus,
    VertexBackend,
    VertexJob,
    VertexSpec,
    build_client,
    map_state,
)
from runtime.config import ConfigError
from tests.vertex_fake import FakeVertex

ROOT = Path(__file__).resolve().parents[1]
PROJECT, LOCATION = "proj", "europe-west4"


class Polling(TypedDict):
    poll_s: float
    max_poll_s: float


FAST = Polling(poll_s=0.001, max_poll_s=0.005)

Changes = list[VertexJob]
Recorder = Callable[[VertexJob], Awaitable[None]]


@pytest.fixture
def fake() -> FakeVertex:
    return FakeVertex(page_size=2)


@pytest.fixture
async def endpoint(fake: FakeVertex, aiohttp_server: AiohttpServer) -> str:
    server = await aiohttp_server(fake.app())
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def backend(endpoint: str) -> AsyncIterator[VertexBackend]:
    b = VertexBackend(PROJECT, LOCATION, build_client(LOCATION, endpoint))
    yield b
    await b.close()


def make_spec(**overrides: Any) -> VertexSpec:
    fields: dict[str, Any] = {"job_id": str(uuid.uuid4()), "display_name": "train churn"}
    return VertexSpec(**(fields | overrides))


def recorder() -> tuple[Changes, Recorder]:
    seen: Changes = []

    async def on_change(job: VertexJob) -> None:
        seen.append(job)

    return seen, on_change


async def test_submit_sends_machine_accelerator_timeout_labels_and_image(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    spec = make_spec(
        image_uri="europe-docker.pkg.dev/p/r/trainer:1",
        command=("python", "-m", "stepwell_trainer"),
        args=("--spec", "gs://bucket/jobs/1/spec.json"),
        machine_type="n1-highmem-8",
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=2,
        max_runtime_seconds=3600,
        env={"STEPWELL_JOB_ID": "1"},
        base_output_directory="gs://bucket/jobs/1/out",
        service_account="trainer@proj.iam.gserviceaccount.com",
    )
    job = await backend.submit(spec)

    assert job.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/customJobs/")
    assert (job.raw_state, job.status, job.error) == ("JOB_STATE_QUEUED", "queued", None)
    assert job.create_time is not None and job.start_time is None
    [body] = fake.created
    assert body["displayName"] == "train churn"
    assert body["labels"] == {LABEL: spec.job_id}
    [pool] = body["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "n1-highmem-8",
        "acceleratorType": AcceleratorType.NVIDIA_TESLA_T4,  # the transport sends enum numbers
        "acceleratorCount": 2,
    }
    assert int(pool["replicaCount"]) == 1
    assert pool["containerSpec"] == {
        "imageUri": "europe-docker.pkg.dev/p/r/trainer:1",
        "command": ["python", "-m", "stepwell_trainer"],
        "args": ["--spec", "gs://bucket/jobs/1/spec.json"],
        "env": [{"name": "STEPWELL_JOB_ID", "value": "1"}],
    }
    assert body["jobSpec"]["scheduling"] == {"timeout": "3600s"}
    assert body["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://bucket/jobs/1/out"}
    assert body["jobSpec"]["serviceAccount"] == "trainer@proj.iam.gserviceaccount.com"


async def test_submit_defaults_to_the_sklearn_image_on_a_cpu_machine(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    await backend.submit(make_spec())

    [body] = fake.created
    [pool] = body["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "n1-standard-4"}
    assert pool["containerSpec"] == {"imageUri": vertex.DEFAULT_IMAGE}
    assert "scheduling" not in body["jobSpec"]


def test_every_vertex_job_state_has_a_stepwell_status() -> None:
    expected = {
        "JOB_STATE_UNSPECIFIED": "pending",
        "JOB_STATE_QUEUED": "queued",
        "JOB_STATE_PENDING": "pending",
        "JOB_STATE_RUNNING": "running",
        "JOB_STATE_SUCCEEDED": "succeeded",
        "JOB_STATE_FAILED": "failed",
        "JOB_STATE_CANCELLING": "cancelling",
        "JOB_STATE_CANCELLED": "cancelled",
        "JOB_STATE_PAUSED": "pending",
        "JOB_STATE_EXPIRED": "timed_out",
        "JOB_STATE_UPDATING": "running",
        "JOB_STATE_PARTIALLY_SUCCEEDED": "failed",
    }
    # A state added by a newer library must be given a status on purpose, not by default.
    names = set(JobState.__members__)  # proto-plus enums are not iterable for mypy
    assert names == set(vertex.STATUSES) == set(expected)
    assert {name: map_state(name) for name in names} == expected
    assert set(JobStatus) >= set(expected.values())


async def test_watch_reports_each_change_and_ends_on_success(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    job = await backend.submit(make_spec())
    states = ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    fake.script(job.name, states)
    seen, on_change = recorder()

    final = await backend.watch(job.name, on_change, last_state=job.raw_state, **FAST)

    assert [j.raw_state for j in seen] == [
        "JOB_STATE_PENDING",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]
    assert [j.status for j in seen] == ["pending", "running", "succeeded"]
    job_number = job.name.rsplit("/", 1)[-1]
    assert seen[1].log_line() == f"Vertex AI job {job_number}: JOB_STATE_RUNNING (running)"
    assert final == seen[-1]
    assert final.finished and final.error is None
    assert final.start_time is not None and final.end_time is not None
    assert final.start_time <= final.end_time
    assert fake.calls["get"] == 4


@pytest.mark.parametrize(
    ("state", "vertex_error", "status", "error"),
    [
        ("JOB_STATE_FAILED", "The replica workerpool0-0 exited with a non-zero status of 1.",
         "failed", "The replica workerpool0-0 exited with a non-zero status of 1."),
        ("JOB_STATE_FAILED", None, "failed", "Vertex AI reported the job failed"),
        ("JOB_STATE_EXPIRED", None, "timed_out", "Vertex AI expired the job: it ran out of time"),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", None, "failed", "partially succeeded: some workers"),
        ("JOB_STATE_CANCELLED", None, "cancelled", None),
    ],
)  # fmt: skip
async def test_watch_ends_on_every_terminal_state_with_a_message(
    backend: VertexBackend,
    fake: FakeVertex,
    state: str,
    vertex_error: str | None,
    status: str,
    error: str | None,
) -> None:
    job = await backend.submit(make_spec())
    fake.script(job.name, ["JOB_STATE_RUNNING", state], error=vertex_error)
    seen, on_change = recorder()

    final = await backend.watch(job.name, on_change, **FAST)

    assert [j.status for j in seen] == ["running", status]
    assert final.finished and final.raw_state == state
    if error is None:
        assert final.error is None
    else:
        assert final.error is not None and error in final.error
        assert final.log_line().endswith(f"{state} ({status}): {final.error}")


async def test_a_paused_job_is_pending_and_watched_until_it_finishes(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    job = await backend.submit(make_spec())
    paused = ["JOB_STATE_PAUSED"] * 3
    fake.script(
        job.name, ["JOB_STATE_RUNNING", *paused, "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    )
    seen, on_change = recorder()

    final = await backend.watch(job.name, on_change, **FAST)

    assert [(j.raw_state, j.status) for j in seen] == [
        ("JOB_STATE_RUNNING", "running"),
        ("JOB_STATE_PAUSED", "pending"),
        ("JOB_STATE_RUNNING", "running"),
        ("JOB_STATE_SUCCEEDED", "succeeded"),
    ]
    assert final.status == "succeeded"


async def test_cancel_is_forwarded_and_the_watch_ends_cancelled(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    job = await backend.submit(make_spec())
    fake.script(job.name, ["JOB_STATE_RUNNING"])  # and running it stays
    running = asyncio.Event()
    seen: Changes = []

    async def on_change(job: VertexJob) -> None:
        seen.append(job)
        if job.status == "running":
            running.set()

    watching = asyncio.create_task(backend.watch(job.name, on_change, **FAST))
    await asyncio.wait_for(running.wait(), 5)
    await backend.cancel(job.name)
    final = await asyncio.wait_for(watching, 5)

    assert fake.calls["cancel"] == 1
    assert [j.status for j in seen] == ["running", "cancelling", "cancelled"]
    assert final.status == "cancelled" and final.raw_state == "JOB_STATE_CANCELLED"


async def test_cancelling_a_finished_job_changes_nothing(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    job = await backend.submit(make_spec())
    fake.script(job.name, ["JOB_STATE_SUCCEEDED"])
    await backend.get(job.name)

    await backend.cancel(job.name)  # Vertex refuses with 400; the job has nothing to cancel

    assert fake.calls["cancel"] == 1
    assert (await backend.get(job.name)).status == "succeeded"


async def test_cancelling_or_getting_an_unknown_job_raises_not_found(
    backend: VertexBackend,
) -> None:
    name = f"projects/{PROJECT}/locations/{LOCATION}/customJobs/42"
    with pytest.raises(NotFound):
        await backend.cancel(name)
    with pytest.raises(NotFound):
        await backend.get(name)


async def test_a_second_submit_of_the_same_job_reattaches_instead_of_creating(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    spec = make_spec()
    first = await backend.submit(spec)
    fake.script(first.name, ["JOB_STATE_RUNNING"])
    await backend.get(first.name)

    again = await backend.submit(spec)

    assert fake.calls["create"] == 1
    assert again.name == first.name
    assert again.status == "running"  # its state now, not a fresh queued job
    assert fake.filters[-1] == f'labels.{LABEL}="{spec.job_id}"'


async def test_reattach_finds_its_own_job_among_many_across_pages(
    endpoint: str, fake: FakeVertex
) -> None:
    spec = make_spec()
    for n in range(5):  # other jobs first, so the one sought is on the third page
        fake.add_job(PROJECT, LOCATION, {"displayName": f"other {n}", "labels": {LABEL: str(n)}})
    fake.add_job("elsewhere", LOCATION, {"displayName": "x", "labels": {LABEL: spec.job_id}})
    name = fake.add_job(PROJECT, LOCATION, {"displayName": "mine", "labels": {LABEL: spec.job_id}})
    # A recovered process builds a new backend; nothing of the first one survives.
    recovered = VertexBackend.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "STEPWELL_VERTEX_LOCATION": LOCATION,
            "STEPWELL_VERTEX_ENDPOINT": endpoint,
        }
    )
    try:
        found = await recovered.find(spec.job_id)
        attached = await recovered.submit(spec)
        other = await recovered.submit(make_spec())
    finally:
        await recovered.close()

    assert found is not None and found.name == name
    assert attached.name == name
    assert other.name != name
    assert fake.calls["create"] == 1  # only for the other job id


async def test_find_returns_none_for_a_job_never_submitted(backend: VertexBackend) -> None:
    assert await backend.find(str(uuid.uuid4())) is None


def test_an_unknown_accelerator_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown accelerator_type 'NVIDIA_GTX_1080'") as caught:
        make_spec(accelerator_type="NVIDIA_GTX_1080", accelerator_count=1)
    assert "NVIDIA_TESLA_T4" in str(caught.value) and "TPU_V3" in str(caught.value)
    assert "ACCELERATOR_TYPE_UNSPECIFIED" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"accelerator_type": "NVIDIA_TESLA_T4"}, "accelerator_count must be at least 1"),
        ({"accelerator_count": 2}, "accelerator_count needs an accelerator_type"),
        ({"job_id": "Job:1"}, "cannot be a Vertex label value"),
        ({"job_id": "x" * 64}, "cannot be a Vertex label value"),
        ({"max_runtime_seconds": 0}, "max_runtime_seconds must be positive"),
        ({"base_output_directory": "out/dir"}, "must be a gs:// URI"),
    ],
)
def test_a_spec_vertex_would_refuse_is_refused_up_front(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(**overrides)


async def test_watch_waits_out_transient_errors(backend: VertexBackend, fake: FakeVertex) -> None:
    job = await backend.submit(make_spec())
    fake.script(job.name, ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"])
    fake.unavailable = 2
    seen, on_change = recorder()

    final = await backend.watch(job.name, on_change, **FAST)

    assert final.status == "succeeded"
    assert [j.status for j in seen] == ["running", "succeeded"]
    assert fake.calls["get"] == 4


async def test_watch_gives_up_after_too_many_errors_in_a_row(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    job = await backend.submit(make_spec())
    fake.unavailable = 3
    seen, on_change = recorder()

    with pytest.raises(BadGateway):
        await backend.watch(job.name, on_change, max_errors=3, **FAST)
    assert seen == []


async def test_watch_backs_off_while_nothing_changes(
    backend: VertexBackend, fake: FakeVertex, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await backend.submit(make_spec())
    running = ["JOB_STATE_RUNNING"] * 6
    fake.script(job.name, ["JOB_STATE_PENDING", *running, "JOB_STATE_SUCCEEDED"])
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("runtime.compute.vertex.sleep", sleep)
    _, on_change = recorder()

    await backend.watch(job.name, on_change, poll_s=1.0, max_poll_s=4.0)

    # pending; running (a change: start over); then running unchanged five times
    assert slept == [1.0, 1.0, 1.5, 2.25, 3.375, 4.0, 4.0]


@pytest.mark.filterwarnings("ignore:Unrecognized JobState enum value:UserWarning")
async def test_a_state_newer_than_the_library_keeps_the_watch_going(
    backend: VertexBackend, fake: FakeVertex
) -> None:
    job = await backend.submit(make_spec())
    fake.script(job.name, [42, "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"])
    seen, on_change = recorder()

    final = await backend.watch(job.name, on_change, **FAST)

    assert [(j.raw_state, j.status) for j in seen] == [
        ("JOB_STATE_42", "pending"),
        ("JOB_STATE_RUNNING", "running"),
        ("JOB_STATE_SUCCEEDED", "succeeded"),
    ]
    assert final.status == "succeeded"


async def test_closing_the_backend_leaves_no_open_session(endpoint: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = VertexBackend(PROJECT, LOCATION, build_client(LOCATION, endpoint))
        assert await backend.find("nothing") is None
        await backend.close()
        del backend
        gc.collect()  # an unclosed aiohttp session says "Unclosed client session" here

    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_from_env_needs_a_project() -> None:
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        VertexBackend.from_env({"STEPWELL_VERTEX_ENDPOINT": "http://127.0.0.1:1"})


def test_importing_the_backend_does_not_import_the_vertex_client() -> None:
    code = "import sys, runtime.compute.vertex; print('google.cloud.aiplatform_v1' in sys.modules)"
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
