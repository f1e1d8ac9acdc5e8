"""Vertex AI compute backend (`STEPWELL_COMPUTE=vertex`): training jobs as Vertex CustomJobs.

A job is submitted with the label `stepwell-job-id=<Stepwell job id>`. Before creating anything,
`submit` looks for a job carrying that label and re-attaches to it, so an actor recovered after a
crash (or a submit whose response was lost) never starts a second job on Vertex. This relies on
one owner per job (the shard lease): two concurrent submits of one id could still both create.

Vertex has no stream of state changes, so `watch` polls, backing off while nothing changes, and
reports each change it sees. Changes between two polls are not seen.

`google.cloud.aiplatform_v1` takes most of a second to import, so this module imports it only
inside the functions that talk to Vertex; importing the module itself stays cheap.
"""

from __future__ import annotations

import enum
import logging
import re
from asyncio import sleep
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from runtime.config import ConfigError

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1 import CustomJob, JobServiceAsyncClient

log = logging.getLogger(__name__)

LABEL = "stepwell-job-id"
DEFAULT_IMAGE = "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-3:latest"
DEFAULT_MACHINE = "n1-standard-4"
DEFAULT_LOCATION = "us-central1"
CALL_TIMEOUT_S = 60.0  # per request; the REST transport has none by default
# Label values: lowercase letters, digits, '_' and '-', at most 63 characters.
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{1,63}$")
_EPOCH = datetime.fromtimestamp(0, UTC)


class JobStatus(enum.StrEnum):
    """Stepwell's training-job statuses (the provider's raw state is kept beside them)."""

    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)

# Every `aiplatform_v1.JobState` (a test fails when the library grows a new one). The SDK's own
# wait loop counts PAUSED as finished and ignores EXPIRED and PARTIALLY_SUCCEEDED; Stepwell must
# not stop watching a paused job, nor leave an expired one looking alive.
STATUSES: Mapping[str, JobStatus] = {
    "JOB_STATE_UNSPECIFIED": JobStatus.PENDING,  # nothing known yet: keep watching
    "JOB_STATE_QUEUED": JobStatus.QUEUED,
    "JOB_STATE_PENDING": JobStatus.PENDING,
    "JOB_STATE_RUNNING": JobStatus.RUNNING,
    "JOB_STATE_SUCCEEDED": JobStatus.SUCCEEDED,
    "JOB_STATE_FAILED": JobStatus.FAILED,
    "JOB_STATE_CANCELLING": JobStatus.CANCELLING,
    "JOB_STATE_CANCELLED": JobStatus.CANCELLED,
    # Paused: not running, not finished, and it may resume. "pending" is the one status that
    # says "alive but not running"; the raw state beside it says why.
    "JOB_STATE_PAUSED": JobStatus.PENDING,
    # Expired: Vertex gave up on the job because its time ran out.
    "JOB_STATE_EXPIRED": JobStatus.TIMED_OUT,
    # Updating: a live job whose settings are being changed; it keeps running.
    "JOB_STATE_UPDATING": JobStatus.RUNNING,
    # Partially succeeded: some workers of the CustomJob failed. Its output cannot be trusted
    # as a trained model, so it is a failure, with a message saying so.
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobStatus.FAILED,
}

# Messages for terminal states Vertex may report without an error of its own.
_DEFAULT_ERRORS = {
    "JOB_STATE_FAILED": "Vertex AI reported the job failed",
    "JOB_STATE_EXPIRED": "Vertex AI expired the job: it ran out of time",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "Vertex AI reported the job partially succeeded: "
    "some workers failed, so its output is incomplete",
}


def map_state(raw: str) -> JobStatus:
    """Stepwell's status for a Vertex `JobState` name such as "JOB_STATE_RUNNING".

    A state newer than this table maps to pending: Stepwell keeps watching rather than guess
    that the job ended.
    """
    return STATUSES.get(raw, JobStatus.PENDING)


@dataclass(frozen=True)
class VertexSpec:
    """What to run on Vertex for one Stepwell training job (one worker pool, one replica).

    `command`/`args` are the trainer invocation, e.g. `("python", "-m", "runtime.compute.trainer")`
    and the spec's URI (Vertex mounts `gs://bucket/...` at `/gcs/bucket/...` for the container);
    empty means the image's own entrypoint.
    `accelerator_type` is an `aiplatform_v1.AcceleratorType` name such as "NVIDIA_TESLA_T4".
    """

    job_id: str
    display_name: str
    image_uri: str = DEFAULT_IMAGE
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    machine_type: str = DEFAULT_MACHINE
    accelerator_type: str | None = None
    accelerator_count: int = 0
    max_runtime_seconds: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    base_output_directory: str | None = None
    service_account: str | None = None

    def __post_init__(self) -> None:
        if not _LABEL_VALUE.match(self.job_id):
            raise ValueError(
                f"job_id {self.job_id!r} cannot be a Vertex label value: use at most 63 "
                "lowercase letters, digits, '_' or '-'"
            )
        if not self.display_name:
            raise ValueError("display_name must not be empty")
        self._check_accelerator()
        if self.max_runtime_seconds is not None and self.max_runtime_seconds <= 0:
            raise ValueError("max_runtime_seconds must be positive")
        if self.base_output_directory is not None and not self.base_output_directory.startswith(
            "gs://"
        ):
            raise ValueError("base_output_directory must be a gs:// URI")

    def _check_accelerator(self) -> None:
        if self.accelerator_type is None:
            if self.accelerator_count:
                raise ValueError("accelerator_count needs an accelerator_type")
            return
        from google.cloud.aiplatform_v1 import AcceleratorType

        # proto-plus enums are untyped for mypy; `__members__` is the plain Enum view.
        allowed = [name for name, a in AcceleratorType.__members__.items() if a.value]
        if self.accelerator_type not in allowed:
            raise ValueError(
                f"unknown accelerator_type {self.accelerator_type!r}; allowed: {', '.join(allowed)}"
            )
        if self.accelerator_count < 1:
            raise ValueError("accelerator_count must be at least 1 with an accelerator_type")


@dataclass(frozen=True, slots=True)
class VertexJob:
    """A CustomJob as Stepwell sees it: the raw Vertex state and Stepwell's status beside it."""

    name: str  # projects/{p}/locations/{l}/customJobs/{id}
    raw_state: str  # e.g. "JOB_STATE_RUNNING"
    status: JobStatus
    error: str | None
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None

    @property
    def finished(self) -> bool:
        """True once the job can change no more."""
        return self.status in TERMINAL

    def log_line(self) -> str:
        """One line for the job's log, e.g. "Vertex AI job 123: JOB_STATE_FAILED (failed): ..."."""
        line = f"Vertex AI job {self.name.rsplit('/', 1)[-1]}: {self.raw_state} ({self.status})"
        return f"{line}: {self.error}" if self.error else line


def build_client(location: str, api_endpoint: str | None = None) -> JobServiceAsyncClient:
    """A Vertex job client for one region.

    Without `api_endpoint`: the regional endpoint, Application Default Credentials, and the
    client's default transport. An `http://host:port` endpoint (a test server, as
    STEPWELL_VERTEX_ENDPOINT) gets the REST transport with anonymous credentials; any other
    endpoint is used as the host with default credentials.
    """
    from google.api_core.client_options import ClientOptions
    from google.cloud.aiplatform_v1 import JobServiceAsyncClient

    if api_endpoint and api_endpoint.startswith("http://"):
        from google.auth.aio.credentials import AnonymousCredentials
        from google.cloud.aiplatform_v1.services.job_service.transports.rest_asyncio import (
            AsyncJobServiceRestTransport,
        )

        transport = AsyncJobServiceRestTransport(
            host=api_endpoint.removeprefix("http://").rstrip("/"),
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            url_scheme="http",
        )
        return JobServiceAsyncClient(transport=transport)
    endpoint = api_endpoint or f"{location}-aiplatform.googleapis.com"
    return JobServiceAsyncClient(client_options=ClientOptions(api_endpoint=endpoint))


def _job_from(job: CustomJob) -> VertexJob:
    state = job.state
    # An enum value newer than the installed library arrives as a bare int.
    raw = state.name if isinstance(state, enum.Enum) else f"JOB_STATE_{int(state)}"
    status = map_state(raw)
    error = job.error.message if "error" in job and job.error.message else None
    if error is None and status in TERMINAL:
        error = _DEFAULT_ERRORS.get(raw)
    return VertexJob(
        name=job.name,
        raw_state=raw,
        status=status,
        error=error,
        # proto-plus gives None for a timestamp Vertex has not set yet.
        create_time=job.create_time,
        start_time=job.start_time,
        end_time=job.end_time,
    )


def _custom_job(spec: VertexSpec) -> CustomJob:
    from google.cloud import aiplatform_v1 as v1

    accelerator: dict[str, str | int] = {}
    if spec.accelerator_type is not None:  # by name: proto-plus sends the enum's number
        accelerator = {
            "accelerator_type": spec.accelerator_type,
            "accelerator_count": spec.accelerator_count,
        }
    machine = v1.MachineSpec(machine_type=spec.machine_type, **accelerator)
    container = v1.ContainerSpec(
        image_uri=spec.image_uri,
        command=list(spec.command),
        args=list(spec.args),
        env=[v1.EnvVar(name=k, value=v) for k, v in spec.env.items()],
    )
    job_spec = v1.CustomJobSpec(
        worker_pool_specs=[
            v1.WorkerPoolSpec(machine_spec=machine, replica_count=1, container_spec=container)
        ]
    )
    if spec.max_runtime_seconds is not None:
        job_spec.scheduling = v1.Scheduling(timeout={"seconds": spec.max_runtime_seconds})
    if spec.base_output_directory is not None:
        job_spec.base_output_directory = v1.GcsDestination(
            output_uri_prefix=spec.base_output_directory
        )
    if spec.service_account is not None:
        job_spec.service_account = spec.service_account
    return v1.CustomJob(
        display_name=spec.display_name, job_spec=job_spec, labels={LABEL: spec.job_id}
    )


class VertexBackend:
    """Submits, finds, watches and cancels CustomJobs in one project and region.

    Without a `client`, one is built for the region with default credentials (its gRPC
    channel needs a running event loop: build the backend inside one, e.g. in a cleanup_ctx).
    Call `close()` when done: it closes the client's transport.
    """

    def __init__(
        self, project: str, location: str, client: JobServiceAsyncClient | None = None
    ) -> None:
        self.parent = f"projects/{project}/locations/{location}"
        self.client = client if client is not None else build_client(location)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VertexBackend:
        """From GOOGLE_CLOUD_PROJECT, STEPWELL_VERTEX_LOCATION and STEPWELL_VERTEX_ENDPOINT."""
        project = env.get("GOOGLE_CLOUD_PROJECT")
        if not project:
            raise ConfigError("STEPWELL_COMPUTE=vertex needs GOOGLE_CLOUD_PROJECT")
        location = env.get("STEPWELL_VERTEX_LOCATION") or DEFAULT_LOCATION
        client = build_client(location, env.get("STEPWELL_VERTEX_ENDPOINT") or None)
        return cls(project, location, client)

    async def close(self) -> None:
        """Close the transport (its HTTP session or gRPC channel)."""
        await self.client.transport.close()  # type: ignore[no-untyped-call]

    async def submit(self, spec: VertexSpec) -> VertexJob:
        """Start the job, or re-attach to the one already labelled with `spec.job_id`."""
        existing = await self.find(spec.job_id)
        if existing is not None:
            log.info("re-attaching Stepwell job %s to %s", spec.job_id, existing.name)
            return existing
        created = await self.client.create_custom_job(
            parent=self.parent, custom_job=_custom_job(spec), timeout=CALL_TIMEOUT_S
        )
        log.info("submitted Stepwell job %s as %s", spec.job_id, created.name)
        return _job_from(created)

    async def find(self, job_id: str) -> VertexJob | None:
        """The newest job labelled with this Stepwell job id, or None."""
        from google.cloud.aiplatform_v1 import ListCustomJobsRequest

        request = ListCustomJobsRequest(parent=self.parent, filter=f'labels.{LABEL}="{job_id}"')
        pager = await self.client.list_custom_jobs(request=request, timeout=CALL_TIMEOUT_S)
        # The filter is the server's job; checking the label again costs nothing.
        found = [_job_from(j) async for j in pager if j.labels.get(LABEL) == job_id]
        if not found:
            return None
        if len(found) > 1:
            log.warning("%d Vertex jobs carry %s=%s", len(found), LABEL, job_id)
        return max(found, key=lambda j: j.create_time or _EPOCH)

    async def get(self, name: str) -> VertexJob:
        """The job's current state."""
        return _job_from(await self.client.get_custom_job(name=name, timeout=CALL_TIMEOUT_S))

    async def cancel(self, name: str) -> None:
        """Ask Vertex to cancel the job; it moves through "cancelling" to "cancelled".

        Cancelling a job that has already finished does nothing: Vertex refuses (a precondition
        failure, HTTP 400) and the job keeps its final state.
        """
        from google.api_core.exceptions import BadRequest

        try:
            await self.client.cancel_custom_job(name=name, timeout=CALL_TIMEOUT_S)
        except BadRequest:
            if not (await self.get(name)).finished:
                raise

    async def watch(
        self,
        name: str,
        on_change: Callable[[VertexJob], Awaitable[None]],
        *,
        last_state: str | None = None,
        poll_s: float = 1.0,
        max_poll_s: float = 30.0,
        max_errors: int = 8,
    ) -> VertexJob:
        """Poll until the job finishes; await `on_change` whenever its raw state differs.

        `last_state` is the raw state already reported (a re-attached actor passes the one it
        recorded, so nothing is reported twice). The interval starts at `poll_s`, grows by half
        while nothing changes, up to `max_poll_s`, and starts over after a change. Up to
        `max_errors` consecutive transient errors (5xx, throttling, network) are waited out.
        """
        from google.api_core.exceptions import ServerError, TooManyRequests
        from google.auth import exceptions as auth_errors

        # ServerError covers 5xx and, over gRPC, UNAVAILABLE and DEADLINE_EXCEEDED; the REST
        # transport reports network failures and timeouts as google.auth errors.
        transient = (
            ServerError,
            TooManyRequests,
            auth_errors.TransportError,
            auth_errors.TimeoutError,
        )
        interval, errors = poll_s, 0
        while True:
            try:
                job = await self.get(name)
            except transient as exc:
                errors += 1
                if errors >= max_errors:
                    raise
                log.warning("polling %s failed (%d in a row): %s", name, errors, exc)
            else:
                errors = 0
                if job.raw_state != last_state:
                    last_state = job.raw_state
                    interval = poll_s
                    await on_change(job)
                if job.finished:
                    return job
            await sleep(interval)
            interval = min(interval * 1.5, max_poll_s)
