"""Deployments: a model version, by number or alias, made ready to serve.

A local deployment loads the model into this process's cache (so the first prediction does not
pay for it) and records where to call it. A Vertex AI deployment (with STEPWELL_COMPUTE=vertex and
gs:// storage) is recorded `deploying` and carried on in the background of the process that
accepted it, since Vertex takes minutes: the version's model file is uploaded as a Vertex Model,
the model's Endpoint is found or created, and the Model is deployed there; the row then becomes
`deployed` (with the endpoint's resource name) or `failed` (with Vertex's message). Predictions
through Stepwell's API keep using the local model cache either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

from actors import models as mdl
from actors.model_cache import ModelCache, per_app
from actors.predictions import servable_version
from runtime.audit import AuditContext, record_audit
from runtime.compute.vertex_endpoints import DEFAULT_MACHINE, VertexEndpoints
from runtime.config import Config
from runtime.db import Conn
from runtime.errors import ValidationFailed
from runtime.keys import CONFIG, DB_POOL
from runtime.periodic import every
from runtime.sql import queries

log = logging.getLogger(__name__)
LOCAL_ENDPOINT = "/api/v1/predictions"
TARGETS = ("local", "vertex")
# What Vertex AI's prebuilt scikit-learn container loads from the artifact directory.
SKLEARN_FILES = ("model.joblib", "model.pkl")
INTERRUPTED = (
    "interrupted: the server shut down before Vertex AI finished; deploy again to carry on "
    "(the uploaded model and its endpoint are reused)"
)
ABANDONED = (
    "interrupted: the process carrying it on stopped before Vertex AI finished; deploy again "
    "to carry on (the uploaded model and its endpoint are reused)"
)
SWEEP_EVERY_S = 30.0


class DeploymentStatus(StrEnum):
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    FAILED = "failed"
    UNDEPLOYED = "undeployed"


@dataclass(frozen=True, slots=True)
class VertexRequest:
    """One version to serve on Vertex AI, as `VertexEndpoints.deploy` takes it."""

    version_id: UUID
    model_id: UUID
    artifact_dir: str
    machine_type: str
    min_replicas: int
    max_replicas: int
    display_name: str

    def config(self) -> dict[str, Any]:
        """What the deployment row records of the request."""
        return {
            "machine_type": self.machine_type,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "artifact_dir": self.artifact_dir,
        }


def vertex_artifact_dir(version: asyncpg.Record | Mapping[str, Any]) -> str:
    """The gs:// directory holding the version's model file; 422 saying why there is none."""
    uri: str = version["artifact_uri"]
    name = f"model version {version['version']}"
    if not uri.startswith("gs://") or len(uri.removeprefix("gs://").strip("/")) == 0:
        raise ValidationFailed(
            f"{name}'s artifact {uri!r} is not on Google Cloud Storage: Vertex AI loads models "
            "from gs://bucket/path/model.joblib",
            {"fields": {"artifact_uri": ["must be a gs:// URI for target 'vertex'"]}},
        )
    if uri.endswith("/"):
        return uri.rstrip("/")
    directory, _, file = uri.rpartition("/")
    if file not in SKLEARN_FILES or directory == "gs:/":
        raise ValidationFailed(
            f"{name}'s artifact {uri!r} is not a file Vertex AI's scikit-learn container "
            f"loads: it loads {' or '.join(SKLEARN_FILES)} from a gs:// directory",
            {"fields": {"artifact_uri": [f"must end in /{SKLEARN_FILES[0]} or /"]}},
        )
    return directory


def vertex_request(
    model: asyncpg.Record | Mapping[str, Any],
    version: asyncpg.Record | Mapping[str, Any],
    body: Mapping[str, Any],
) -> VertexRequest:
    """The request for Vertex, or a 422 for a version Vertex's sklearn container cannot serve."""
    if version["framework"] != "scikit-learn":
        raise ValidationFailed(
            f"model version {version['version']} is a {version['framework']} model: Stepwell "
            "deploys scikit-learn models to Vertex AI (its prebuilt scikit-learn container)"
        )
    low = body.get("min_replicas", 1)
    return VertexRequest(
        version_id=version["id"],
        model_id=model["id"],
        artifact_dir=vertex_artifact_dir(version),
        machine_type=body.get("machine_type") or DEFAULT_MACHINE,
        min_replicas=low,
        max_replicas=body.get("max_replicas", low),
        display_name=f"{model['name']} v{version['version']}",
    )


def vertex_unavailable(reason: str) -> ValidationFailed:
    """The 422 for target 'vertex' in an installation not set up for it, saying what to set."""
    return ValidationFailed(
        f"Vertex AI endpoints are not available yet in this installation ({reason}): set "
        "STEPWELL_COMPUTE=vertex, STEPWELL_STORAGE=gs://bucket/prefix and GOOGLE_CLOUD_PROJECT "
        "(and STEPWELL_VERTEX_LOCATION for the region), or deploy with target 'local', which "
        f"serves the model at POST {LOCAL_ENDPOINT}",
        {"fields": {"target": ["'vertex' needs STEPWELL_COMPUTE=vertex and gs:// storage"]}},
    )


class VertexDeployer:
    """Vertex AI deployments in progress in this process, each a background task.

    `endpoints` is None when this installation cannot deploy to Vertex; `unavailable` says why.
    Deploys of one model run one at a time here, so a second deploy finds what the first made.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        endpoints: VertexEndpoints | None,
        unavailable: str = "",
        node_id: str = "",
        heartbeat_ttl_s: float = 15.0,
    ) -> None:
        self.pool, self.endpoints, self.unavailable = pool, endpoints, unavailable
        # The node recorded with each deploy carried on here; a sweep by any process ends the
        # deploys of a node that is gone (see `sweep`).
        self.node_id, self.heartbeat_ttl_s = node_id, heartbeat_ttl_s
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._locks: weakref.WeakValueDictionary[UUID, asyncio.Lock] = weakref.WeakValueDictionary()
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def for_config(
        cls, pool: asyncpg.Pool[Any], config: Config, env: Mapping[str, str]
    ) -> VertexDeployer:
        """Deploys to Vertex with STEPWELL_COMPUTE=vertex and gs:// storage (run in a loop)."""
        node, ttl = config.node_id, config.lease_ttl_s
        if config.compute != "vertex":
            return cls(pool, None, f"STEPWELL_COMPUTE={config.compute}", node, ttl)
        if not (config.storage_url or "").startswith("gs://"):
            return cls(pool, None, "STEPWELL_STORAGE is not gs://", node, ttl)
        return cls(pool, VertexEndpoints.from_env(env), "", node, ttl)

    async def sweep(self, *, starting: bool = False) -> int:
        """End `failed` the deploys a process that is gone was carrying on; how many.
        `starting`: also this node id's, so call it before this process starts a deploy."""
        rows = await self.pool.fetch(
            queries["fail_abandoned_deployments"],
            self.node_id if starting else None,
            self.heartbeat_ttl_s,
            ABANDONED,
        )
        for row in rows:
            log.warning("Vertex deployment %s was abandoned by its process", row["id"])
        return len(rows)

    def sweep_every(self, seconds: float = SWEEP_EVERY_S) -> None:
        """Sweep in the background until `close`."""
        self._sweeper = every(seconds, self.sweep, "deployments:sweep")

    def refuse_unless_available(self) -> None:
        """422 naming what to configure when this installation cannot deploy to Vertex."""
        if self.endpoints is None:
            raise vertex_unavailable(self.unavailable)

    def start(self, deployment_id: UUID, request: VertexRequest) -> None:
        """Carry the recorded deployment on in the background."""
        task = asyncio.create_task(
            self._run(deployment_id, request), name=f"deploy:{deployment_id}"
        )
        self._tasks[deployment_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(deployment_id, None))

    async def close(self) -> None:
        """Stop every deploy in progress; each ends `failed`, saying so."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        running = dict(self._tasks)
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        for deployment_id in running:  # a deploy that ended first stays as it ended
            await self._finish(deployment_id, DeploymentStatus.FAILED, error=INTERRUPTED)
        if self.endpoints is not None:
            await self.endpoints.close()

    async def _run(self, deployment_id: UUID, request: VertexRequest) -> None:
        from google.api_core.exceptions import GoogleAPICallError
        from google.auth.exceptions import GoogleAuthError

        assert self.endpoints is not None  # noqa: S101 - started only when available
        failed = DeploymentStatus.FAILED
        lock = self._locks.setdefault(request.model_id, asyncio.Lock())
        try:
            async with lock:
                served = await self.endpoints.deploy(
                    request.version_id,
                    request.model_id,
                    request.artifact_dir,
                    request.machine_type,
                    request.min_replicas,
                    request.max_replicas,
                    display_name=request.display_name,
                )
        except GoogleAPICallError as exc:
            # An operation's own error has no HTTP code, so its message is what there is.
            await self._finish(deployment_id, failed, error=f"Vertex AI: {exc.message or exc}")
        except (GoogleAuthError, TimeoutError) as exc:  # network failures, a deploy too slow
            await self._finish(deployment_id, failed, error=f"Vertex AI: {exc}")
        except Exception as exc:
            log.exception("Vertex deployment failed", extra={"deployment_id": str(deployment_id)})
            await self._finish(deployment_id, failed, error=f"internal error: {exc!r}")
        else:
            vertex = {"vertex_model": served.model, "deployed_model_id": served.deployed_model_id}
            await self._finish(deployment_id, DeploymentStatus.DEPLOYED, served.endpoint, vertex)

    async def _finish(
        self,
        deployment_id: UUID,
        status: DeploymentStatus,
        endpoint: str | None = None,
        config: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        await self.pool.execute(
            queries["finish_deployment"], deployment_id, status, endpoint, config or {}, error
        )


def vertex_deployer_of(app: web.Application) -> VertexDeployer:
    """The app's Vertex deployer (see `per_app`); built by `deployments_ctx` at startup."""
    return per_app(
        app,
        "vertex_deployer",
        lambda: VertexDeployer.for_config(app[DB_POOL], app[CONFIG], os.environ),
    )


async def deployments_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx, after the pool: Vertex clients built in the loop, deploys a process that
    died left behind ended (this node id's too: none is running yet), deploys stopped at
    exit."""
    deployer = vertex_deployer_of(app)
    await deployer.sweep(starting=True)
    deployer.sweep_every()
    yield
    await deployer.close()


async def deploy(
    pool: asyncpg.Pool[Any],
    cache: ModelCache,
    ctx: AuditContext,
    model_id: UUID,
    ref: str,
    body: Mapping[str, Any],
    compute: str,
    vertex: VertexDeployer | None = None,
) -> asyncpg.Record:
    """Deploy version `ref` (a number or an alias) of a visible, active model.

    Locally, the model is loaded before anything is written, so a version that cannot serve is
    a 422 with nothing recorded. On Vertex (`vertex` given), the row is recorded `deploying`
    and the deploy goes on in the background. The model is checked again under its lock as the
    row is written.
    """
    owner = ctx.principal.owner_filter
    async with pool.acquire() as conn:
        model = await mdl.get_model(conn, model_id, owner)
        mdl.ensure_active("deploy", model)
        version = await mdl.get_version(conn, model_id, ref, owner)
        servable = await servable_version(conn, version["id"], None)
    alias = None if ref.isdigit() else ref
    if body["target"] == "vertex":
        return await _deploy_vertex(pool, ctx, model, version, alias, body, compute, vertex)
    await cache.get(servable)
    config = {k: body[k] for k in ("machine_type", "min_replicas", "max_replicas") if k in body}
    async with pool.acquire() as conn, conn.transaction():
        return await _record(conn, ctx, version, alias, body, LOCAL_ENDPOINT, config)


async def _deploy_vertex(
    pool: asyncpg.Pool[Any],
    ctx: AuditContext,
    model: asyncpg.Record,
    version: asyncpg.Record,
    alias: str | None,
    body: Mapping[str, Any],
    compute: str,
    vertex: VertexDeployer | None,
) -> asyncpg.Record:
    """Record the deployment `deploying` and start it; Vertex serves the file, not this process,
    so the model is not loaded here."""
    if vertex is None:
        raise vertex_unavailable(f"STEPWELL_COMPUTE={compute}")
    vertex.refuse_unless_available()
    request = vertex_request(model, version, body)
    async with pool.acquire() as conn, conn.transaction():
        row = await _record(conn, ctx, version, alias, body, None, request.config(), vertex.node_id)
    vertex.start(row["id"], request)
    return row


async def _record(
    conn: Conn,
    ctx: AuditContext,
    version: asyncpg.Record,
    alias: str | None,
    body: Mapping[str, Any],
    endpoint: str | None,
    config: Mapping[str, Any],
    node_id: str | None = None,
) -> asyncpg.Record:
    """The row (`deployed` at `endpoint`, or `deploying` on `node_id` without one yet) and its
    audit entry, under the model's lock (archives wait)."""
    model = await conn.fetchrow(
        queries["lock_model_shared"], version["model_id"], ctx.principal.owner_filter
    )
    assert model is not None  # noqa: S101 - models are archived, never deleted
    mdl.ensure_active("deploy", model)
    status = DeploymentStatus.DEPLOYED if endpoint else DeploymentStatus.DEPLOYING
    deployment_id = await conn.fetchval(
        queries["insert_deployment"],
        model["owner_id"],
        model["id"],
        version["id"],
        alias,
        body["target"],
        status,
        endpoint,
        config,
        ctx.principal.user_id,
        node_id,
    )
    await record_audit(
        conn,
        ctx,
        action="deploy",
        entity_type=mdl.ENTITY,
        entity_id=str(model["id"]),
        owner_id=model["owner_id"],
        changes={
            "deployment_id": str(deployment_id),
            "version": version["version"],
            "alias": alias,
            "target": body["target"],
            "status": status,
            "endpoint": endpoint,
        },
    )
    row: asyncpg.Record | None = await conn.fetchrow(queries["get_deployment"], deployment_id)
    assert row is not None  # noqa: S101 - written just above
    return row
