"""Vertex AI endpoints: a model version uploaded as a Vertex Model and deployed on an Endpoint.

`deploy` makes three things, and looks for each before making it, so deploying a version again
(a retry after a failure, or after the server stopped halfway) neither uploads it twice nor
piles up endpoints:

- the Model, labelled `stepwell-model-version-id=<version id>` and served by Vertex's prebuilt
  scikit-learn container, which loads `model.joblib` from the artifact directory;
- the Endpoint, one per Stepwell model, labelled `stepwell-model-id=<model id>`;
- the DeployedModel: reused when that Model is already deployed there with the same machine and
  replicas and all the traffic, else deployed with 100 % of the traffic.

The lookups rely on one deploy of a model at a time (the caller serialises them in-process);
two processes deploying the same version at once could still both upload.

Uploading, creating an endpoint and deploying are long-running operations: each call answers
an Operation, which is polled, backing off, until it is done. `google.cloud.aiplatform_v1` takes
most of a second to import, so it is imported only inside the functions that talk to Vertex.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from runtime.compute.vertex import CALL_TIMEOUT_S, DEFAULT_LOCATION
from runtime.config import ConfigError

if TYPE_CHECKING:
    from google.api_core.operation_async import AsyncOperation
    from google.cloud.aiplatform_v1 import (
        Endpoint,
        EndpointServiceAsyncClient,
        ModelServiceAsyncClient,
    )

log = logging.getLogger(__name__)

VERSION_LABEL = "stepwell-model-version-id"
MODEL_LABEL = "stepwell-model-id"
SKLEARN_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-3:latest"
DEFAULT_MACHINE = "n1-standard-4"
DISPLAY_NAME_MAX = 128


@dataclass(frozen=True, slots=True)
class DeployedEndpoint:
    """Where a version serves: the Endpoint, the Vertex Model and its DeployedModel id."""

    endpoint: str  # projects/{p}/locations/{l}/endpoints/{id}
    model: str  # projects/{p}/locations/{l}/models/{id}
    deployed_model_id: str


@dataclass(frozen=True, slots=True)
class Resources:
    """Dedicated serving resources of a DeployedModel."""

    machine_type: str
    min_replicas: int
    max_replicas: int


def build_clients(
    location: str, api_endpoint: str | None = None
) -> tuple[ModelServiceAsyncClient, EndpointServiceAsyncClient]:
    """Model and Endpoint clients for one region, built like `vertex.build_client`.

    An `http://host:port` endpoint (a test server) gets the REST transport with anonymous
    credentials; otherwise the regional (or given) host, default credentials and the default
    (gRPC) transport, whose channel needs a running event loop.
    """
    from google.api_core.client_options import ClientOptions
    from google.cloud.aiplatform_v1 import EndpointServiceAsyncClient, ModelServiceAsyncClient

    if api_endpoint and api_endpoint.startswith("http://"):
        from google.auth.aio.credentials import AnonymousCredentials
        from google.cloud.aiplatform_v1.services.endpoint_service.transports import rest_asyncio
        from google.cloud.aiplatform_v1.services.model_service.transports.rest_asyncio import (
            AsyncModelServiceRestTransport,
        )

        host = api_endpoint.removeprefix("http://").rstrip("/")
        rest: dict[str, Any] = {"host": host, "url_scheme": "http"}
        models = AsyncModelServiceRestTransport(
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            **rest,
        )
        endpoints = rest_asyncio.AsyncEndpointServiceRestTransport(
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            **rest,
        )
        return (
            ModelServiceAsyncClient(transport=models),
            EndpointServiceAsyncClient(transport=endpoints),
        )
    options = ClientOptions(api_endpoint=api_endpoint or f"{location}-aiplatform.googleapis.com")
    return (
        ModelServiceAsyncClient(client_options=options),
        EndpointServiceAsyncClient(client_options=options),
    )


async def _close_transport(transport: Any) -> None:
    await transport.close()
    # The async REST transport polls operations through a client with an HTTP session of its
    # own, which transport.close() leaves open and google-api-core offers no way to close.
    operations = getattr(transport, "_operations_client", None)
    session = getattr(getattr(operations, "transport", None), "_session", None)
    if session is not None and hasattr(session, "close"):
        await session.close()


class VertexEndpoints:
    """Uploads model versions and deploys them on endpoints in one project and region.

    Without clients, they are built for the region with default credentials (inside a running
    event loop). Call `close()` when done.
    """

    def __init__(
        self,
        project: str,
        location: str,
        clients: tuple[ModelServiceAsyncClient, EndpointServiceAsyncClient] | None = None,
        *,
        image_uri: str = SKLEARN_IMAGE,
        poll_s: float = 5.0,
        max_poll_s: float = 60.0,
        operation_timeout_s: float = 3600.0,
    ) -> None:
        self.parent = f"projects/{project}/locations/{location}"
        self.models, self.endpoints = clients if clients is not None else build_clients(location)
        self.image_uri = image_uri
        self.poll_s, self.max_poll_s = poll_s, max_poll_s
        self.operation_timeout_s = operation_timeout_s

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VertexEndpoints:
        """From GOOGLE_CLOUD_PROJECT, STEPWELL_VERTEX_LOCATION and STEPWELL_VERTEX_ENDPOINT."""
        project = env.get("GOOGLE_CLOUD_PROJECT")
        if not project:
            raise ConfigError("Vertex AI endpoints need GOOGLE_CLOUD_PROJECT")
        location = env.get("STEPWELL_VERTEX_LOCATION") or DEFAULT_LOCATION
        clients = build_clients(location, env.get("STEPWELL_VERTEX_ENDPOINT") or None)
        return cls(project, location, clients)

    async def close(self) -> None:
        """Close both clients' transports."""
        await _close_transport(self.models.transport)
        await _close_transport(self.endpoints.transport)

    async def deploy(
        self,
        version_id: UUID,
        model_id: UUID,
        artifact_dir: str,
        machine_type: str,
        min_replicas: int,
        max_replicas: int,
        *,
        display_name: str = "",
    ) -> DeployedEndpoint:
        """Serve the model in `artifact_dir` (gs://, holding model.joblib) on the model's
        endpoint, reusing whatever an earlier deploy of the same version made."""
        name = (display_name or f"stepwell-{version_id}")[:DISPLAY_NAME_MAX]
        model = await self.find_model(version_id)
        if model is None:
            model = await self.upload(version_id, model_id, artifact_dir, name)
        endpoint = await self.find_endpoint(model_id)
        if endpoint is None:
            endpoint = await self.create_endpoint(model_id, name)
        resources = Resources(machine_type, min_replicas, max_replicas)
        deployed_id = _serving(endpoint, model, resources)
        if deployed_id is None:
            deployed_id = await self.deploy_model(endpoint.name, model, resources, name)
        else:
            log.info("%s already serves %s on %s", endpoint.name, model, deployed_id)
        return DeployedEndpoint(endpoint.name, model, deployed_id)

    async def find_model(self, version_id: UUID) -> str | None:
        """The newest Vertex Model uploaded for this version, or None."""
        from google.cloud.aiplatform_v1 import ListModelsRequest

        value = str(version_id)
        request = ListModelsRequest(parent=self.parent, filter=_label_filter(VERSION_LABEL, value))
        pager = await self.models.list_models(request=request, timeout=CALL_TIMEOUT_S)
        found = [m async for m in pager if m.labels.get(VERSION_LABEL) == value]
        if not found:
            return None
        newest = max(found, key=lambda m: m.create_time.timestamp() if m.create_time else 0.0)
        log.info("reusing Vertex model %s for model version %s", newest.name, version_id)
        return str(newest.name)

    async def upload(
        self, version_id: UUID, model_id: UUID, artifact_dir: str, display_name: str
    ) -> str:
        """Upload the version as a Vertex Model; its resource name."""
        from google.cloud.aiplatform_v1 import Model, ModelContainerSpec

        model = Model(
            display_name=display_name,
            artifact_uri=artifact_dir,
            container_spec=ModelContainerSpec(image_uri=self.image_uri),
            labels={VERSION_LABEL: str(version_id), MODEL_LABEL: str(model_id)},
        )
        operation = await self.models.upload_model(
            parent=self.parent, model=model, timeout=CALL_TIMEOUT_S
        )
        response = await self._wait(operation)
        log.info("uploaded model version %s as %s", version_id, response.model)
        return str(response.model)

    async def find_endpoint(self, model_id: UUID) -> Endpoint | None:
        """The newest Endpoint made for this Stepwell model, or None."""
        from google.cloud.aiplatform_v1 import ListEndpointsRequest

        value = str(model_id)
        request = ListEndpointsRequest(parent=self.parent, filter=_label_filter(MODEL_LABEL, value))
        pager = await self.endpoints.list_endpoints(request=request, timeout=CALL_TIMEOUT_S)
        found = [e async for e in pager if e.labels.get(MODEL_LABEL) == value]
        if not found:
            return None
        return max(found, key=lambda e: e.create_time.timestamp() if e.create_time else 0.0)

    async def create_endpoint(self, model_id: UUID, display_name: str) -> Endpoint:
        """A new Endpoint for a Stepwell model."""
        from google.cloud.aiplatform_v1 import Endpoint

        endpoint = Endpoint(display_name=display_name, labels={MODEL_LABEL: str(model_id)})
        operation = await self.endpoints.create_endpoint(
            parent=self.parent, endpoint=endpoint, timeout=CALL_TIMEOUT_S
        )
        created: Endpoint = await self._wait(operation)
        log.info("created endpoint %s for model %s", created.name, model_id)
        return created

    async def deploy_model(
        self, endpoint: str, model: str, resources: Resources, display_name: str
    ) -> str:
        """Deploy `model` on `endpoint` with all its traffic; the DeployedModel's id."""
        from google.cloud.aiplatform_v1 import DedicatedResources, DeployedModel, MachineSpec

        deployed = DeployedModel(
            model=model,
            display_name=display_name,
            dedicated_resources=DedicatedResources(
                machine_spec=MachineSpec(machine_type=resources.machine_type),
                min_replica_count=resources.min_replicas,
                max_replica_count=resources.max_replicas,
            ),
        )
        operation = await self.endpoints.deploy_model(
            endpoint=endpoint,
            deployed_model=deployed,
            traffic_split={"0": 100},  # "0" is the model being deployed
            timeout=CALL_TIMEOUT_S,
        )
        response = await self._wait(operation)
        log.info("deployed %s on %s as %s", model, endpoint, response.deployed_model.id)
        return str(response.deployed_model.id)

    async def _wait(self, operation: AsyncOperation) -> Any:
        """The operation's result once it is done (its error raised as GoogleAPICallError).

        Polls from `poll_s`, growing by half up to `max_poll_s`: deploying takes minutes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.operation_timeout_s
        interval = self.poll_s
        while not await operation.done():  # type: ignore[no-untyped-call]
            if loop.time() >= deadline:
                name = operation.operation.name
                raise TimeoutError(
                    f"Vertex AI operation {name} did not finish within "
                    f"{self.operation_timeout_s:.0f} s; it may still finish on Vertex"
                )
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_s)
        return await operation.result()  # type: ignore[no-untyped-call]


def _label_filter(key: str, value: str) -> str:
    return f'labels.{key}="{value}"'


def _serving(endpoint: Endpoint, model: str, resources: Resources) -> str | None:
    """The id of a DeployedModel of `model` on `endpoint` with these resources and all the
    traffic, or None."""
    for deployed in endpoint.deployed_models:
        dedicated = deployed.dedicated_resources
        same = Resources(
            dedicated.machine_spec.machine_type,
            dedicated.min_replica_count,
            dedicated.max_replica_count,
        )
        # A DeployedModel may name a Model version as "<model>@<version id>".
        mine = deployed.model.partition("@")[0] == model
        if mine and same == resources and endpoint.traffic_split.get(deployed.id) == 100:
            return str(deployed.id)
    return None
