"""The local training worker: `python -m runtime.compute.trainer <spec.json | ->`.

It reads a `TrainSpec` (from a file, or stdin for `-`), trains a scikit-learn pipeline on the
spec's tabular files, evaluates it on held-out rows and saves it with joblib, telling the
supervisor what it does as protocol messages on stdout, one JSON line each. Anything else that
writes to stdout (an estimator's `verbose` output, a C library) is sent to stderr so it cannot
corrupt the protocol. Exit code 0 after a `result`, 1 after an `error`.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
from sklearn import metrics as skm  # type: ignore[import-untyped]
from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]
from sklearn.ensemble import (  # type: ignore[import-untyped]
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer  # type: ignore[import-untyped]
from sklearn.linear_model import (  # type: ignore[import-untyped]
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # type: ignore[import-untyped]

from runtime.compute.model_file import Feature, describe_features, save_model, to_frame
from runtime.compute.protocol import (
    ArtifactMessage,
    ErrorMessage,
    LogLevel,
    LogMessage,
    Message,
    MetricMessage,
    ProtocolError,
    ResultMessage,
    TrainSpec,
    encode,
)

MIN_ROWS = 10
MAX_CLASSES = 100
HISTORY_POINTS = 50  # at most this many boosting stages are scored
PROGRESS_EVERY_S = 2.0
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = {".gz", ".bz2", ".xz", ".zst", ".zip"}

# Our defaults, applied before the user's hyperparameters: probabilities from SGD, and room for
# logistic regression to converge on one-hot columns.
ESTIMATORS: dict[tuple[str, str], tuple[type[Any], dict[str, Any]]] = {
    ("classification", "logistic_regression"): (LogisticRegression, {"max_iter": 1000}),
    ("classification", "random_forest"): (RandomForestClassifier, {}),
    ("classification", "gradient_boosting"): (GradientBoostingClassifier, {}),
    ("classification", "sgd"): (SGDClassifier, {"loss": "log_loss"}),
    ("regression", "ridge"): (Ridge, {}),
    ("regression", "linear_regression"): (LinearRegression, {}),
    ("regression", "random_forest"): (RandomForestRegressor, {}),
    ("regression", "gradient_boosting"): (GradientBoostingRegressor, {}),
    ("regression", "sgd"): (SGDRegressor, {}),
}


class TrainingError(Exception):
    """Training cannot go on; the message says why in the user's terms."""


class Reporter:
    """Writes protocol messages, one JSON line each, flushed at once."""

    def __init__(self, stream: TextIO, copy: TextIO | None = None) -> None:
        self._stream = stream
        self._copy = copy

    def send(self, message: Message) -> None:
        line = encode(message) + "\n"
        self._stream.write(line)
        self._stream.flush()
        if self._copy is not None:
            self._copy.write(line)
            self._copy.flush()

    def log(self, text: str, level: LogLevel = "info") -> None:
        self.send(LogMessage(level=level, message=text))

    def metric(self, step: int, name: str, value: float | None) -> None:
        """One point of history; a missing, NaN or infinite value is left out."""
        if value is not None and np.isfinite(value):
            self.send(MetricMessage(step=step, name=name, value=float(value)))


@dataclass(frozen=True, slots=True)
class Dataset:
    """The features (typed by `to_frame`) and the target of every usable row."""

    x: pd.DataFrame
    y: np.ndarray[Any, Any]
    features: list[Feature]
    classes: list[Any] | None


def build_estimator(spec: TrainSpec) -> Any:
    """The spec's estimator with our defaults, its seed and the user's hyperparameters."""
    cls, defaults = ESTIMATORS[(spec.task, spec.algorithm_name)]
    estimator = cls(**defaults)
    valid = estimator.get_params(deep=False)
    unknown = sorted(set(spec.hyperparameters) - set(valid))
    if unknown:
        raise TrainingError(
            f"unknown hyperparameter(s) for {spec.algorithm_name}: {', '.join(unknown)} "
            f"(valid: {', '.join(sorted(valid))})"
        )
    if "random_state" in valid and "random_state" not in spec.hyperparameters:
        estimator.set_params(random_state=spec.random_seed)
    return estimator.set_params(**spec.hyperparameters)


def file_format(path: Path) -> str:
    """csv, jsonl or parquet: by extension (past a compression suffix), else by the first bytes."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    known = FORMATS.get(suffixes[-1]) if suffixes else None
    if known:
        return known
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def load_frame(paths: list[str], reporter: Reporter) -> pd.DataFrame:
    """All files as one frame; they must share their columns."""
    frames: list[pd.DataFrame] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise TrainingError(f"data file not found: {name}")
        fmt = file_format(path)
        try:
            if fmt == "parquet":
                frame = pd.read_parquet(path)
            elif fmt == "jsonl":
                frame = pd.read_json(path, lines=True, dtype=False)  # JSON is typed
            else:
                frame = pd.read_csv(path)
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise TrainingError(f"cannot read {path.name} as {fmt}: {exc}") from exc
        if frames and list(frame.columns) != list(frames[0].columns):
            raise TrainingError(
                f"{path.name} has columns {list(map(str, frame.columns))}, "
                f"but {Path(paths[0]).name} has {list(map(str, frames[0].columns))}"
            )
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    reporter.log(f"loaded {len(frame)} rows and {frame.shape[1]} columns from {len(paths)} file(s)")
    return frame


def prepare(frame: pd.DataFrame, spec: TrainSpec, reporter: Reporter) -> Dataset:
    """Check the target against the task and split off the features."""
    target = spec.target_column
    if target not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        raise TrainingError(f"target column {target!r} is not in the data (columns: {columns})")
    unlabelled = int(frame[target].isna().sum())
    if unlabelled:
        reporter.log(f"dropped {unlabelled} row(s) with no {target!r} value", "warning")
        frame = frame[frame[target].notna()]
    if len(frame) < MIN_ROWS:
        raise TrainingError(f"need at least {MIN_ROWS} rows with a target, got {len(frame)}")
    x_raw = frame.drop(columns=[target])
    if x_raw.shape[1] == 0:
        raise TrainingError(f"no feature columns: the data holds only {target!r}")
    features = describe_features(x_raw)
    if spec.task == "classification":
        y = _labels(frame[target], target)
        classes = np.unique(y).tolist()
        reporter.log(f"classification into {len(classes)} classes")
    else:
        y, classes = _numbers(frame[target], target), None
    return Dataset(to_frame(x_raw, features), y, features, classes)


def _labels(column: pd.Series[Any], name: str) -> np.ndarray[Any, Any]:
    if pd.api.types.is_float_dtype(column):
        if not np.all(np.mod(column.to_numpy(), 1) == 0):
            raise TrainingError(
                f"target {name!r} holds fractional numbers; use the regression task for it"
            )
        column = column.astype("int64")
    count = column.nunique()
    if count < 2:
        raise TrainingError(f"target {name!r} has a single class; classification needs two")
    if count > MAX_CLASSES:
        raise TrainingError(
            f"target {name!r} has {count} distinct values, more than the {MAX_CLASSES} classes "
            "classification supports; is it a regression target?"
        )
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy()
    return column.astype(object).to_numpy()


def _numbers(column: pd.Series[Any], name: str) -> np.ndarray[Any, Any]:
    if pd.api.types.is_bool_dtype(column):
        raise TrainingError(f"target {name!r} is boolean; use the classification task for it")
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[numbers.isna()]
    if len(bad):
        raise TrainingError(
            f"target {name!r} is not numeric (for example {bad.iloc[0]!r}); "
            "regression needs numbers, use the classification task for labels"
        )
    return numbers.astype("float64").to_numpy()


def split(data: Dataset, spec: TrainSpec, reporter: Reporter) -> tuple[Any, Any, Any, Any]:
    """Train and test rows; stratified by class when every class has enough rows for it."""
    options = {"test_size": spec.test_fraction, "random_state": spec.random_seed}
    parts: list[Any]
    if data.classes is not None:
        try:
            parts = train_test_split(data.x, data.y, stratify=data.y, **options)
        except ValueError:
            reporter.log("too few rows in some class to stratify; splitting at random", "warning")
            parts = train_test_split(data.x, data.y, **options)
    else:
        parts = train_test_split(data.x, data.y, **options)
    x_train, x_test, y_train, y_test = parts
    reporter.log(f"split {len(x_train)} training and {len(x_test)} held-out rows")
    return x_train, x_test, y_train, y_test


def build_pipeline(features: list[Feature], estimator: Any) -> Any:
    """Impute and scale numbers, impute and one-hot encode categories, then the estimator."""
    numeric = [f.name for f in features if f.kind == "numeric"]
    categorical = [f.name for f in features if f.kind == "categorical"]
    transformers = []
    if numeric:
        steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
        transformers.append(("numeric", Pipeline([*steps, ("scale", StandardScaler())]), numeric))
    if categorical:
        impute = SimpleImputer(strategy="most_frequent", keep_empty_features=True)
        encode_ = OneHotEncoder(handle_unknown="ignore")
        steps = [("impute", impute), ("encode", encode_)]
        transformers.append(("categorical", Pipeline(steps), categorical))
    return Pipeline([("features", ColumnTransformer(transformers)), ("model", estimator)])


def evaluate(pipeline: Any, x_test: Any, y_test: Any, classes: list[Any] | None) -> dict[str, Any]:
    """Held-out metrics; one that cannot be computed on these rows is left out."""
    predicted = pipeline.predict(x_test)
    if classes is None:
        return {
            "rmse": skm.root_mean_squared_error(y_test, predicted),
            "mae": skm.mean_absolute_error(y_test, predicted),
            "r2": skm.r2_score(y_test, predicted) if len(y_test) > 1 else None,
        }
    scores: dict[str, Any] = {
        "accuracy": skm.accuracy_score(y_test, predicted),
        "f1": skm.f1_score(y_test, predicted, average="macro", zero_division=0),
        "precision": skm.precision_score(y_test, predicted, average="macro", zero_division=0),
        "recall": skm.recall_score(y_test, predicted, average="macro", zero_division=0),
    }
    if hasattr(pipeline, "predict_proba"):
        proba = pipeline.predict_proba(x_test)
        labels = pipeline.classes_
        if len(labels) == 2 and len(set(y_test.tolist())) == 2:
            scores["roc_auc"] = skm.roc_auc_score(y_test == labels[1], proba[:, 1])
        scores["log_loss"] = _log_loss(y_test, proba, labels)
    return scores


@dataclass(frozen=True, slots=True)
class Split:
    """Training and held-out rows; `labels` are every class in the data (None for regression)."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: np.ndarray[Any, Any]
    y_test: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any] | None


def fit_once(pipeline: Any, data: Split, reporter: Reporter) -> None:
    """Estimators without a history: one fit, and the final metrics stand as step 1."""
    pipeline.fit(data.x_train, data.y_train)


def fit_boosting(pipeline: Any, data: Split, reporter: Reporter) -> None:
    """Fit, logging progress, then score stages on the held-out rows (at most HISTORY_POINTS)."""
    last_log = time.monotonic()

    def monitor(stage: int, model: Any, _locals: Any) -> bool:
        nonlocal last_log
        if time.monotonic() - last_log >= PROGRESS_EVERY_S:
            reporter.log(f"boosting stage {stage + 1} of {model.n_estimators}")
            last_log = time.monotonic()
        return False

    pipeline.fit(data.x_train, data.y_train, model__monitor=monitor)
    model = pipeline[-1]
    x_test = pipeline[:-1].transform(data.x_test)
    stages = model.n_estimators_
    scored = set(np.linspace(0, stages - 1, min(HISTORY_POINTS, stages)).round().astype(int))
    if data.labels is None:
        staged = model.staged_predict(x_test)
    else:
        staged = model.staged_predict_proba(x_test)
    for stage, output in enumerate(staged):
        if stage in scored:
            reporter.metric(stage + 1, "train_loss", model.train_score_[stage])
            if data.labels is None:
                scores = _step_scores(data, output, None)
            else:
                scores = _step_scores(data, model.classes_[output.argmax(axis=1)], output)
            for name, value in scores.items():
                reporter.metric(stage + 1, name, value)


def fit_sgd(pipeline: Any, data: Split, reporter: Reporter) -> None:
    """One `partial_fit` per epoch, stopping as SGD's own `fit` would: once the training loss
    has not improved by `tol` for `n_iter_no_change` epochs, or after `max_iter` epochs."""
    model = pipeline[-1]
    x_train = pipeline[:-1].fit_transform(data.x_train, data.y_train)
    x_test = pipeline[:-1].transform(data.x_test)
    extra = {} if data.labels is None else {"classes": data.labels}
    best, stale = np.inf, 0
    for epoch in itertools.count(1):
        model.partial_fit(x_train, data.y_train, **extra)  # checks the hyperparameters first
        loss = _sgd_loss(model, x_train, data.y_train, data.labels)
        reporter.metric(epoch, "train_loss", loss)
        proba = model.predict_proba(x_test) if hasattr(model, "predict_proba") else None
        for name, value in _step_scores(data, model.predict(x_test), proba).items():
            reporter.metric(epoch, name, value)
        if model.tol is not None:
            stale = stale + 1 if loss > best - model.tol else 0
            best = min(best, loss)
        if epoch >= model.max_iter or stale >= model.n_iter_no_change:
            reporter.log(f"sgd stopped after {epoch} epoch(s)")
            return


FITTERS = {"gradient_boosting": fit_boosting, "sgd": fit_sgd}


def _sgd_loss(model: Any, x: Any, y: Any, labels: Any) -> float:
    if labels is None:
        return float(skm.mean_squared_error(y, model.predict(x)))
    if hasattr(model, "predict_proba"):
        return float(skm.log_loss(y, model.predict_proba(x), labels=labels))
    return float(skm.hinge_loss(y, model.decision_function(x), labels=labels))


def _step_scores(data: Split, predicted: Any, proba: Any) -> dict[str, float | None]:
    """The held-out metrics a history tracks: rmse, or accuracy and log loss."""
    if data.labels is None:
        return {"rmse": skm.root_mean_squared_error(data.y_test, predicted)}
    scores = {"accuracy": skm.accuracy_score(data.y_test, predicted)}
    if proba is not None:
        scores["log_loss"] = _log_loss(data.y_test, proba, data.labels)
    return scores


def _log_loss(y_true: Any, proba: Any, labels: Any) -> float | None:
    """None when the held-out rows hold a class the training rows did not."""
    try:
        return float(skm.log_loss(y_true, proba, labels=labels))
    except ValueError:
        return None


def train(spec: TrainSpec, reporter: Reporter) -> None:
    """The whole job: load, check, split, fit, evaluate, save, report."""
    started = time.monotonic()
    algorithm = spec.algorithm_name
    estimator = build_estimator(spec)
    data = prepare(load_frame(spec.data_files, reporter), spec, reporter)
    x_train, x_test, y_train, y_test = split(data, spec, reporter)
    pipeline = build_pipeline(data.features, estimator)
    reporter.log(f"fitting {algorithm} on {len(data.features)} feature(s)")
    labels = None if data.classes is None else np.unique(data.y)
    fit = FITTERS.get(algorithm, fit_once)
    fit(pipeline, Split(x_train, x_test, y_train, y_test, labels), reporter)
    scores = evaluate(pipeline, x_test, y_test, data.classes)
    measured = {k: float(v) for k, v in scores.items() if v is not None and np.isfinite(v)}
    if algorithm not in FITTERS:
        for name, value in measured.items():
            reporter.metric(1, name, value)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in measured.items())
    reporter.log(f"trained in {time.monotonic() - started:.1f}s; held-out {summary}")
    path = Path(spec.artifact_path)
    features = [f.to_dict() for f in data.features]
    size, sha256 = save_model(
        path,
        pipeline,
        task=spec.task,
        target=spec.target_column,
        features=features,
        classes=data.classes,
        algorithm=algorithm,
    )
    reporter.send(ArtifactMessage(path=str(path), size_bytes=size, sha256=sha256))
    parameters = {k: _jsonable(v) for k, v in estimator.get_params(deep=False).items()}
    reporter.send(
        ResultMessage(
            metrics=measured,
            features=features,
            classes=data.classes,
            algorithm=algorithm,
            parameters=parameters,
        )
    )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return repr(value)


REPORT_ENV = "STEPWELL_TRAINER_REPORT"


def main(argv: list[str], out: TextIO) -> int:
    """Run the job named by `argv` (a spec path, or `-` for stdin); report on `out`."""
    # Where no supervisor reads stdout (a Vertex AI CustomJob), the messages also go to a file
    # the job's owner reads back afterwards (on Vertex, a /gcs/... path: the bucket, mounted).
    report_path = os.environ.get(REPORT_ENV)
    copy = Path(report_path).open("a", encoding="utf-8") if report_path else None  # noqa: SIM115
    reporter = Reporter(out, copy)
    # Warnings (a ConvergenceWarning, say) belong in the job's log, not on stderr.
    warnings.showwarning = lambda message, category, *_args, **_kw: reporter.log(
        f"{category.__name__}: {message}", "warning"
    )
    try:
        if len(argv) != 1:
            raise TrainingError("usage: python -m runtime.compute.trainer <spec.json | ->")
        text = sys.stdin.read() if argv[0] == "-" else Path(argv[0]).read_text()
        train(TrainSpec.from_json(text), reporter)
    except BrokenPipeError:
        raise  # the supervisor is gone: there is no one left to tell
    except (TrainingError, ProtocolError) as exc:
        reporter.send(ErrorMessage(message=str(exc)))
        return 1
    except (ValueError, TypeError, OSError) as exc:  # sklearn's parameter checks among them
        reporter.send(ErrorMessage(message=f"training failed: {exc}"))
        return 1
    except Exception as exc:
        reporter.send(ErrorMessage(message=f"unexpected {type(exc).__name__}: {exc}"))
        traceback.print_exc()
        return 1
    return 0


def _claim_stdout() -> TextIO:
    """A private handle on stdout for the protocol; fd 1 itself then points at stderr."""
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return protocol


if __name__ == "__main__":
    protocol_out = _claim_stdout()
    try:
        code = main(sys.argv[1:], protocol_out)
        protocol_out.close()
    except BrokenPipeError:
        # As the Python docs advise: point the dead pipe at devnull so exiting stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), protocol_out.fileno())
        code = 1
    sys.exit(code)
