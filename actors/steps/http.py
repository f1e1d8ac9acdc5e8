"""``http``: call an HTTP(S) endpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from actors.steps.base import HTTP_URL_PATTERN, StepType, config_object, output_object
from actors.steps.context import StepContext, StepFailed

_SCALAR = {"type": ["string", "number", "boolean"]}

STEP = StepType(
    type="http",
    name="HTTP request",
    description=(
        "Call an HTTP(S) endpoint and capture the response. The step fails when the "
        "response status is not one of expected_statuses (any 2xx by default). Every "
        "request carries an 'Idempotency-Key: <run_id>:<step_id>' header, stable across "
        "retries, so the receiver can de-duplicate repeated attempts."
    ),
    category="integration",
    config_schema=config_object(
        {
            "method": {
                "type": "string",
                "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
                "default": "GET",
                "description": "HTTP method.",
            },
            "url": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2048,
                "pattern": HTTP_URL_PATTERN,
                "description": "Absolute http:// or https:// URL; may contain templates.",
            },
            "headers": {
                "type": "object",
                "maxProperties": 100,
                "additionalProperties": {"type": "string", "maxLength": 8192},
                "description": "Extra request headers (name to value).",
            },
            "query": {
                "type": "object",
                "maxProperties": 100,
                "additionalProperties": {
                    "anyOf": [_SCALAR, {"type": "array", "items": _SCALAR, "maxItems": 100}]
                },
                "description": ("Query-string parameters; an array value repeats the parameter."),
            },
            "body": {
                "description": "JSON request body (any JSON value); omitted when absent.",
            },
            "expected_statuses": {
                "type": "array",
                "items": {"type": "integer", "minimum": 100, "maximum": 599},
                "minItems": 1,
                "maxItems": 100,
                "uniqueItems": True,
                "description": "Response statuses that count as success; default any 2xx.",
            },
            "response": {
                "type": "string",
                "enum": ["json", "text"],
                "default": "json",
                "description": "Parse the response body as JSON, or keep it as text.",
            },
        },
        required=["url"],
    ),
    output_schema=output_object(
        {
            "status": {"type": "integer", "description": "Response status code."},
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Response headers (lower-cased names).",
            },
            "body": {"description": "Parsed JSON body, or text when response is 'text'."},
        }
    ),
    example={
        "method": "POST",
        "url": "https://hooks.example.com/ml/model-ready",
        "headers": {"X-Team": "ml-platform"},
        "query": {"notify": True},
        "body": {
            "model_version_id": "{{ steps.train.output.model_version_id }}",
            "message": "accuracy {{ steps.train.output.metrics.accuracy }}",
        },
        "expected_statuses": [200, 201, 202],
        "response": "json",
    },
)


MAX_RESPONSE_BYTES = 10 * 1024 * 1024
# Statuses that say "try again later" rather than "this request is wrong".
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def _query(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in (config.get("query") or {}).items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, json.dumps(item) if isinstance(item, bool) else str(item)))
    return pairs


async def execute(ctx: StepContext, config: Mapping[str, Any]) -> Any:
    """Send the request with `Idempotency-Key: <run_id>:<step_id>` and check the status."""
    headers = {**(config.get("headers") or {}), "Idempotency-Key": ctx.idempotency_key}
    kwargs: dict[str, Any] = {"headers": headers, "params": _query(config)}
    if "body" in config:
        kwargs["json"] = config["body"]
    method = config.get("method", "GET")
    try:
        async with ctx.http.request(method, str(config["url"]), **kwargs) as resp:
            raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
            status, resp_headers = resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except (aiohttp.ClientError, ValueError) as exc:
        raise StepFailed(f"{method} {config['url']} failed: {exc or type(exc).__name__}") from exc
    if len(raw) > MAX_RESPONSE_BYTES:
        raise StepFailed(f"response larger than {MAX_RESPONSE_BYTES} bytes", retryable=False)
    expected = config.get("expected_statuses")
    if (status not in expected) if expected else not 200 <= status < 300:
        raise StepFailed(
            f"{method} {config['url']} answered {status}",
            retryable=status in _RETRYABLE_STATUSES,
            details={"status": status, "body": raw[:2000].decode(errors="replace")},
        )
    return {"status": status, "headers": resp_headers, "body": _body(raw, config)}


def _body(raw: bytes, config: Mapping[str, Any]) -> Any:
    text = raw.decode(errors="replace")
    if config.get("response", "json") == "text" or not text:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
