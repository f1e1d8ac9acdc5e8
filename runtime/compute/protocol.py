"""What the local training worker is given, what it says back, and how a job ends.

The supervisor (`runtime.compute.local`) hands the worker (`runtime.compute.trainer`) a
`TrainSpec` as JSON. The worker answers on stdout with one JSON object per line: `log` and
`metric` messages while it works, then `artifact` and `result` on success, or `error` when it
gives up. The supervisor adds a `started` message of its own when the worker process starts, and
ends every job with an `Outcome`. Nothing here imports scikit-learn, so the API can check a spec
without loading it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, get_args

Task = Literal["classification", "regression"]
LogLevel = Literal["debug", "info", "warning", "error"]

# The first name of each task is its default.
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "classification": ("logistic_regression", "random_forest", "gradient_boosting", "sgd"),
    "regression": ("ridge", "linear_regression", "random_forest", "gradient_boosting", "sgd"),
}


class ProtocolError(ValueError):
    """A spec or message does not follow the training protocol."""


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSpec:
    """One training job, as the worker receives it. `data_files` are local paths."""

    job_id: str
    data_files: list[str]
    target_column: str
    task: Task
    artifact_path: str
    algorithm: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    test_fraction: float = 0.2
    random_seed: int = 42

    def __post_init__(self) -> None:
        problem = _spec_problem(self)
        if problem:
            raise ProtocolError(f"invalid training spec: {problem}")

    @property
    def algorithm_name(self) -> str:
        """The algorithm to use: the one asked for, else the task's default."""
        return self.algorithm or ALGORITHMS[self.task][0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainSpec:
        data = _object(text, "training spec")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ProtocolError(f"invalid training spec: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            raise ProtocolError(f"invalid training spec: {exc}") from None


def _spec_problem(spec: TrainSpec) -> str | None:
    """What is wrong with a spec, in one phrase, or None."""
    for name in ("job_id", "target_column", "artifact_path"):
        value = getattr(spec, name)
        if not isinstance(value, str) or not value:
            return f"{name} must be a non-empty string"
    files = spec.data_files
    if not isinstance(files, list) or not files or not all(isinstance(p, str) and p for p in files):
        return "data_files must be a non-empty list of paths"
    if spec.task not in get_args(Task):
        return f"task must be one of {', '.join(get_args(Task))}, not {spec.task!r}"
    known = ALGORITHMS[spec.task]
    if spec.algorithm is not None and spec.algorithm not in known:
        return f"algorithm {spec.algorithm!r} is not one of {', '.join(known)} for {spec.task}"
    return _values_problem(spec.hyperparameters, spec.test_fraction, spec.random_seed)


def _values_problem(hyperparameters: object, fraction: object, seed: object) -> str | None:
    # Typed `object`: a spec decoded from JSON may hold anything until it is checked.
    if not isinstance(hyperparameters, dict):
        return "hyperparameters must be an object"
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        return f"test_fraction must be between 0 and 1 (exclusive), not {fraction!r}"
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        return f"random_seed must be an integer in [0, 2**32), not {seed!r}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMessage:
    """A line for the job's log."""

    type: ClassVar[str] = "log"
    level: LogLevel
    message: str
    at: str = field(default_factory=now_iso)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricMessage:
    """One point of a metric's history: `step` is an epoch, a boosting stage, or 1."""

    type: ClassVar[str] = "metric"
    step: int
    name: str
    value: float
    at: str = field(default_factory=now_iso)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactMessage:
    """The saved model file."""

    type: ClassVar[str] = "artifact"
    path: str
    size_bytes: int
    sha256: str
    format: Literal["joblib"] = "joblib"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultMessage:
    """What was trained and how well it does on the held-out rows.

    `features` are `{"name", "kind" ("numeric" | "categorical"), "dtype"}` objects; `classes`
    is None for regression; `parameters` are the estimator's effective parameters.
    """

    type: ClassVar[str] = "result"
    metrics: dict[str, float]
    features: list[dict[str, str]]
    classes: list[Any] | None
    algorithm: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorMessage:
    """Why the worker gave up; it exits with code 1 right after."""

    type: ClassVar[str] = "error"
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedMessage:
    """Sent by the supervisor, not the worker: the job left the queue and its process runs."""

    type: ClassVar[str] = "started"
    pid: int
    at: str = field(default_factory=now_iso)


Message = (
    LogMessage | MetricMessage | ArtifactMessage | ResultMessage | ErrorMessage | StartedMessage
)
_CLASSES: dict[str, type[Message]] = {
    "log": LogMessage,
    "metric": MetricMessage,
    "artifact": ArtifactMessage,
    "result": ResultMessage,
    "error": ErrorMessage,
    "started": StartedMessage,
}
_NUMBER = (int, float)
# The JSON types each field must have; checked when a line is decoded.
_SHAPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "log": {"level": str, "message": str, "at": str},
    "metric": {"step": int, "name": str, "value": _NUMBER, "at": str},
    "artifact": {"path": str, "size_bytes": int, "sha256": str, "format": str},
    "result": {
        "metrics": dict,
        "features": list,
        "classes": (list, type(None)),
        "algorithm": str,
        "parameters": dict,
    },
    "error": {"message": str},
    "started": {"pid": int, "at": str},
}


def to_dict(message: Message) -> dict[str, Any]:
    """The message as a JSON-ready dict, `type` first."""
    return {"type": message.type, **asdict(message)}


def encode(message: Message) -> str:
    """One line of JSON (no newline). Non-finite floats are refused: JSON has none."""
    return json.dumps(to_dict(message), allow_nan=False, separators=(",", ":"))


def decode(line: str | bytes) -> Message:
    """Parse and check one line the worker wrote."""
    data = _object(line, "message")
    kind = data.pop("type", None)
    if not isinstance(kind, str) or kind not in _CLASSES:
        raise ProtocolError(f"unknown message type {kind!r}")
    for name, expected in _SHAPES[kind].items():
        if name not in data:
            if name in ("at", "format"):
                continue
            raise ProtocolError(f"{kind} message without {name!r}")
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ProtocolError(f"{kind} message: {name!r} has the wrong type")
    if kind == "metric" and not math.isfinite(data["value"]):
        raise ProtocolError("metric message: value is not finite")
    if kind == "log" and data["level"] not in get_args(LogLevel):
        raise ProtocolError(f"log message: unknown level {data['level']!r}")
    known = {name: data[name] for name in _SHAPES[kind] if name in data}
    if kind == "metric":
        known["value"] = float(known["value"])
    return _CLASSES[kind](**known)


def _object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return data


class OutcomeStatus(StrEnum):
    """How a job ended; the values are training-job statuses."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of a job. A success carries the result and the artifact; the rest a message."""

    status: OutcomeStatus
    result: ResultMessage | None = None
    artifact: ArtifactMessage | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        complete = self.result is not None and self.artifact is not None
        if complete != (self.status is OutcomeStatus.SUCCEEDED):
            raise ValueError("an outcome has a result and an artifact exactly when it succeeded")
