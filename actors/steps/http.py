"""``http``: call an HTTP(S) endpoint."""

from __future__ import annotations

from actors.steps.base import HTTP_URL_PATTERN, StepType, config_object, output_object

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
