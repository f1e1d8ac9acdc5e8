"""The model file: a fitted scikit-learn pipeline plus what a prediction must know of its inputs.

The trainer writes it with `save_model`; predictions read it with `load_model`. Both sides pass
their rows through `to_frame`, so a value is typed the same way when the model learns from it
and when it is asked about it: numeric features as float64, categorical ones as text.

A joblib file is a pickle: load only files this service wrote, and pass the SHA-256 the training
job reported so a file changed in storage is refused before it is unpickled.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import joblib  # type: ignore[import-untyped]
import numpy as np
import pandas as pd

FORMAT_VERSION = 1
FeatureKind = Literal["numeric", "categorical"]
_SHOWN_PROBLEMS = 10


class InvalidRows(ValueError):
    """The rows do not fit the model's features."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column: its name, how the model treats it, and its dtype in the training data."""

    name: str
    kind: FeatureKind
    dtype: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "dtype": self.dtype}


def describe_features(frame: pd.DataFrame) -> list[Feature]:
    """Numbers are numeric features; everything else (text, booleans, dates) is categorical."""
    features = []
    for name in frame.columns:
        column = frame[name]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        features.append(
            Feature(str(name), "numeric" if numeric else "categorical", str(column.dtype))
        )
    return features


def to_frame(data: pd.DataFrame, features: Sequence[Feature]) -> pd.DataFrame:
    """The feature columns of `data` in the dtypes the pipeline expects, missing values as NaN."""
    columns: dict[str, pd.Series[Any]] = {}
    for feature in features:
        column = data[feature.name]
        if feature.kind == "numeric":
            columns[feature.name] = pd.to_numeric(column).astype("float64")
        else:
            text = column.astype(object).map(_as_text, na_action="ignore")
            columns[feature.name] = text.where(text.notna(), np.nan).astype(object)
    return pd.DataFrame(columns, index=data.index)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def save_model(path: Path, pipeline: Any, **metadata: Any) -> tuple[int, str]:
    """Write the pipeline and its metadata (task, target, features, classes, algorithm) under
    a temporary name, then rename it into place; return the file's size and SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    payload = {"format_version": FORMAT_VERSION, "pipeline": pipeline, **metadata}
    try:
        joblib.dump(payload, partial, compress=3)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path.stat().st_size, file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | Path, expected_sha256: str | None = None) -> LoadedModel:
    """Read a model file; with `expected_sha256`, refuse a file whose digest differs."""
    path = Path(path)
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise ValueError(f"model file {path} does not match its recorded SHA-256")
    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a model file this version can read")
    return LoadedModel(
        payload["pipeline"],
        task=payload["task"],
        target=payload["target"],
        features=[Feature(f["name"], f["kind"], f["dtype"]) for f in payload["features"]],
        classes=payload["classes"],
        algorithm=payload["algorithm"],
    )


class LoadedModel:
    """A trained model ready to answer; rows are dicts of feature name to JSON value."""

    def __init__(
        self,
        pipeline: Any,
        *,
        task: str,
        target: str,
        features: list[Feature],
        classes: list[Any] | None,
        algorithm: str,
    ) -> None:
        self.pipeline = pipeline
        self.task = task
        self.target = target
        self.features = features
        self.classes = classes
        self.algorithm = algorithm
        self._kinds = {f.name: f.kind for f in features}

    def row_problem(self, row: object) -> str | None:
        """What is wrong with one row, or None (a missing value may be null: it is imputed)."""
        if not isinstance(row, Mapping):
            return f"expected an object of feature values, got {type(row).__name__}"
        problems = []
        missing = [name for name in self._kinds if name not in row]
        if missing:
            problems.append(f"missing feature(s) {', '.join(map(repr, missing))}")
        unknown = [str(name) for name in row if name not in self._kinds]
        if unknown:
            extra = f" ({self.target!r} is the target)" if self.target in unknown else ""
            problems.append(f"unknown feature(s) {', '.join(map(repr, unknown))}{extra}")
        for name, kind in self._kinds.items():
            if name in row:
                problem = _value_problem(kind, row[name])
                if problem:
                    problems.append(f"feature {name!r} {problem}")
        return "; ".join(problems) or None

    def check_rows(self, rows: object) -> None:
        """Raise InvalidRows naming every problem (up to ten rows' worth) in `rows`."""
        if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
            raise InvalidRows("rows must be a list of objects")
        problems = [f"row {i}: {p}" for i, row in enumerate(rows) if (p := self.row_problem(row))]
        if problems:
            more = len(problems) - _SHOWN_PROBLEMS
            tail = f"; and {more} more row(s)" if more > 0 else ""
            raise InvalidRows("; ".join(problems[:_SHOWN_PROBLEMS]) + tail)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """A label (classification) or a number (regression) per row."""
        frame = self._frame(rows)
        if frame is None:
            return []
        predicted: list[Any] = self.pipeline.predict(frame).tolist()
        return predicted

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[Any, float]] | None:
        """Each class's probability per row; None when the model gives no probabilities."""
        if self.classes is None or not hasattr(self.pipeline, "predict_proba"):
            return None
        frame = self._frame(rows)
        if frame is None:
            return []
        classes = self.pipeline.classes_.tolist()
        proba = self.pipeline.predict_proba(frame)
        return [dict(zip(classes, map(float, row), strict=True)) for row in proba]

    def _frame(self, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame | None:
        self.check_rows(rows)
        if not rows:
            return None
        names = list(self._kinds)
        return to_frame(
            pd.DataFrame([[row[n] for n in names] for row in rows], columns=names), self.features
        )


def _value_problem(kind: FeatureKind, value: Any) -> str | None:
    if value is None:
        return None
    if kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"must be a number, got {type(value).__name__} {value!r}"
        if math.isinf(value):
            return "must be finite"
        return None
    if not isinstance(value, str | numbers.Real):  # bool is a Real too
        return f"must be a string, number or boolean, got {type(value).__name__}"
    return None
