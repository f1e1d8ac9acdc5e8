"""Deployments: serve a model version (by number or alias) and list a model's deployments."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import (
    docs,
    match_info_schema,
    querystring_schema,
    request_schema,
    response_schema,
)
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from actors import models as mdl
from actors.deployments import (
    LOCAL_ENDPOINT,
    TARGETS,
    DeploymentStatus,
    deploy,
    vertex_deployer_of,
)
from actors.model_cache import model_cache_of
from handlers.common import (
    audit_ctx,
    envelope,
    error_responses,
    list_envelope,
    ok,
    page_answer,
    principal_of,
    record_json,
    validated,
)
from handlers.models import ModelPathSchema, ModelVersionPathSchema
from runtime.keys import CONFIG, DB_POOL
from runtime.pagination import PageQuerySchema, fetch_page
from runtime.sql import queries

TAGS = ["deployments"]
EXAMPLE_ID = "6f1c3c8e-8a7b-4c1e-9d2a-0a4c4f3b2e11"
MAX_REPLICAS = 100


class DeployRequestSchema(Schema):
    target = fields.String(
        load_default="local",
        validate=validate.OneOf(TARGETS),
        metadata={
            "description": "'local' serves the model in this installation; 'vertex' on a "
            "Vertex AI endpoint (needs STEPWELL_COMPUTE=vertex and gs:// storage)",
            "example": "local",
        },
    )
    machine_type = fields.String(
        validate=validate.Length(min=1, max=100),
        metadata={
            "description": "Vertex AI serving machine (default n1-standard-4)",
            "example": "n1-standard-4",
        },
    )
    min_replicas = fields.Integer(
        validate=validate.Range(min=1, max=MAX_REPLICAS),
        metadata={"description": "Fewest Vertex AI replicas (default 1)", "example": 1},
    )
    max_replicas = fields.Integer(
        validate=validate.Range(min=1, max=MAX_REPLICAS),
        metadata={"description": "Most Vertex AI replicas (default min_replicas)", "example": 3},
    )

    @validates_schema
    def replicas_in_order(self, data: dict[str, Any], **_: Any) -> None:
        low, high = data.get("min_replicas", 1), data.get("max_replicas")
        if high is not None and high < low:
            raise ValidationError("must not be below min_replicas", "max_replicas")


class DeploymentSchema(Schema):
    id = fields.UUID()
    model_id = fields.UUID(metadata={"example": EXAMPLE_ID})
    model_version_id = fields.UUID()
    version = fields.Integer(metadata={"example": 3})
    alias = fields.String(
        allow_none=True,
        metadata={
            "description": "The alias deployed, when deployed by alias",
            "example": "champion",
        },
    )
    target = fields.String(validate=validate.OneOf(TARGETS), metadata={"example": "local"})
    status = fields.String(
        validate=validate.OneOf([s.value for s in DeploymentStatus]),
        metadata={"example": "deployed"},
    )
    endpoint = fields.String(
        allow_none=True,
        metadata={
            "description": f"'{LOCAL_ENDPOINT}' for local deployments; the Vertex AI endpoint's "
            "resource name once a Vertex deployment is deployed",
            "example": LOCAL_ENDPOINT,
        },
    )
    config = fields.Dict(metadata={"example": {"machine_type": "n1-standard-4"}})
    error = fields.String(allow_none=True)
    owner_id = fields.String(metadata={"example": "user-42"})
    created_by = fields.String(metadata={"example": "user-42"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


DEPLOYMENT_RESPONSE = envelope(DeploymentSchema, "DeploymentResponse")


@docs(
    tags=TAGS,
    summary="Deploy a model version (by number or alias, e.g. /versions/champion/deploy)",
    description="An alias is resolved now: the deployment keeps the version it pointed at. "
    "'local' loads the model into this installation's model cache and answers 201 with the "
    f"deployment `deployed`; predictions are made with `POST {LOCAL_ENDPOINT}`. A version not "
    "trained by Stepwell's trainer answers 422 for 'local'.\n\n"
    "'vertex' (with STEPWELL_COMPUTE=vertex and gs:// storage; otherwise 422) answers 202 with "
    "the deployment `deploying`: in the background the version's model file (its gs:// "
    "`artifact_uri`, model.joblib, a scikit-learn model) is uploaded as a Vertex AI Model, the "
    "model's Vertex endpoint is found or created, and the Model is deployed there with "
    "`machine_type` and `min_replicas`..`max_replicas` and all the traffic. The deployment then "
    "becomes `deployed`, its `endpoint` the Vertex endpoint's resource name and its `config` "
    "naming the Vertex model and deployed model, or `failed` with Vertex's message; follow it "
    "with `GET /models/{id}/deployments`. Deploying the same version again reuses the uploaded "
    f"model and the endpoint. `POST {LOCAL_ENDPOINT}` keeps answering from this installation's "
    "model cache (the same model file), whichever the target. An archived model answers 409.",
    responses=error_responses(401, 404, 409, 422),
)
@match_info_schema(ModelVersionPathSchema, put_into="path")
@request_schema(DeployRequestSchema, example={"target": "local"})
@response_schema(DEPLOYMENT_RESPONSE, 201, description="Deployed locally")
@response_schema(DEPLOYMENT_RESPONSE, 202, description="Deploying to Vertex AI")
async def deploy_version(request: web.Request) -> web.Response:
    path = validated(request, "path")
    row = await deploy(
        request.app[DB_POOL],
        model_cache_of(request.app),
        audit_ctx(request),
        path["id"],
        path["v"],
        validated(request),
        request.app[CONFIG].compute,
        vertex_deployer_of(request.app),
    )
    status = 202 if row["status"] == DeploymentStatus.DEPLOYING else 201
    return ok(record_json(row), status=status)


@docs(
    tags=TAGS,
    summary="List a model's deployments, newest first",
    responses=error_responses(401, 404, 422),
)
@match_info_schema(ModelPathSchema, put_into="path")
@querystring_schema(PageQuerySchema, put_into="query")
@response_schema(list_envelope(DeploymentSchema, "DeploymentListResponse"), 200)
async def list_deployments(request: web.Request) -> web.Response:
    model_id, q = validated(request, "path")["id"], validated(request, "query")
    async with request.app[DB_POOL].acquire() as conn:
        await mdl.get_model(conn, model_id, principal_of(request).owner_filter)
        page = await fetch_page(
            conn, queries["list_model_deployments"], model_id, page=q["page"], limit=q["limit"]
        )
    return page_answer(page)


def routes() -> list[web.RouteDef]:
    base = "/api/v1/models/{id}"
    return [
        web.post(base + "/versions/{v}/deploy", deploy_version),
        web.get(base + "/deployments", list_deployments, allow_head=False),
    ]
