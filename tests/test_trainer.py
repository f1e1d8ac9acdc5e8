"""The local trainer: real worker subprocesses training scikit-learn on real files, under the async
supervisor that queues, cancels and times them out, and the model file predictions will load."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from runtime.compute.local import JobAlreadyRunning, JobState, LocalTrainer
from runtime.compute.model_file import InvalidRows, LoadedModel, load_model
from runtime.compute.protocol import (
    ErrorMessage,
    LogMessage,
    MetricMessage,
    Outcome,
    OutcomeStatus,
    ProtocolError,
    TrainSpec,
    decode,
    encode,
)

Message = dict[str, Any]
LONG_JOB = {"algorithm": "gradient_boosting", "hyperparameters": {"n_estimators": 1_000_000}}


def write_dataset(directory: Path, target: str, rows: int = 240, seed: int = 0) -> list[str]:
    """A learnable table split over CSV, Parquet and JSONL files, with a categorical column and
    missing values. Its target is `label` (yes/no) or `amount` (a number): the other is left out."""
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(size=(3, rows))
    x3[rng.random(rows) < 0.1] = np.nan
    color = rng.choice(np.array(["red", "green", "blue"], dtype=object), size=rows)
    red = color == "red"
    color[rng.random(rows) < 0.1] = None
    logit = 2.5 * x1 - 2.0 * x2 + 1.5 * red + rng.logistic(scale=0.5, size=rows)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "color": color,
            "label": np.where(logit > 0, "yes", "no"),
            "amount": 3 * x1 + 2 * x2**2 + 2 * red + rng.normal(scale=0.3, size=rows),
        }
    )
    frame = frame.drop(columns=[c for c in ("label", "amount") if c != target])
    directory.mkdir(parents=True, exist_ok=True)
    third = rows // 3
    paths = [directory / "part.csv", directory / "part.parquet", directory / "part.jsonl"]
    frame.iloc[:third].to_csv(paths[0], index=False)
    frame.iloc[third : 2 * third].to_parquet(paths[1])
    frame.iloc[2 * third :].to_json(paths[2], orient="records", lines=True)
    return [str(p) for p in paths]


def spec_for(data_dir: Path, job_id: str, **fields: Any) -> TrainSpec:
    """A job on its own files in `data_dir`; by default, classification of `label`."""
    target = fields.setdefault("target_column", "label")
    base: dict[str, Any] = {
        "job_id": job_id,
        "data_files": write_dataset(data_dir / job_id, target, rows=fields.pop("rows", 240)),
        "task": "classification",
        "artifact_path": str(data_dir / "models" / f"{job_id}.joblib"),
    }
    return TrainSpec(**(base | fields))


class Recorder:
    """Collects each job's messages, with the monotonic time each arrived."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = defaultdict(list)
        self.arrived: dict[str, list[float]] = defaultdict(list)

    def handler(self, job_id: str) -> Callable[[Message], Awaitable[None]]:
        async def on_message(message: Message) -> None:
            self.messages[job_id].append(message)
            self.arrived[job_id].append(time.monotonic())

        return on_message

    def of_type(self, job_id: str, kind: str) -> list[Message]:
        return [m for m in self.messages[job_id] if m["type"] == kind]

    def pid(self, job_id: str) -> int:
        pid: int = self.of_type(job_id, "started")[0]["pid"]
        return pid

    def logged(self, job_id: str, prefix: str) -> bool:
        return any(m["message"].startswith(prefix) for m in self.of_type(job_id, "log"))


async def until(predicate: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
async def trainer() -> AsyncIterator[LocalTrainer]:
    async with LocalTrainer(max_concurrent=3) as local:
        yield local


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, list[Message]]:
    """One logistic-regression job, run once through the supervisor for the tests that read it."""
    spec = spec_for(tmp_path_factory.mktemp("classified"), "churn")
    recorder = Recorder()

    async def train() -> Outcome:
        async with LocalTrainer() as local:
            return await local.run(spec, recorder.handler("churn"), max_runtime_s=60)

    return asyncio.run(train()), recorder.messages["churn"]


@pytest.fixture(scope="module")
def model(classified: tuple[Outcome, list[Message]]) -> LoadedModel:
    artifact = classified[0].artifact
    assert artifact is not None
    return load_model(artifact.path, expected_sha256=artifact.sha256)


def test_a_spec_is_checked_and_survives_json() -> None:
    spec = TrainSpec(
        job_id="j",
        data_files=["a.csv"],
        target_column="y",
        task="regression",
        artifact_path="m.joblib",
        hyperparameters={"alpha": 0.5},
    )
    assert TrainSpec.from_json(spec.to_json()) == spec
    assert spec.algorithm_name == "ridge"
    fields = json.loads(spec.to_json())
    bad = {
        "test_fraction must be between 0 and 1": {"test_fraction": 1.5},
        "algorithm 'svm' is not one of ridge, linear_regression": {"algorithm": "svm"},
        "unknown field": {"tsak": "regression"},
        "data_files must be a non-empty list": {"data_files": []},
    }
    for expected, change in bad.items():
        with pytest.raises(ProtocolError, match=expected):
            TrainSpec.from_json(json.dumps(fields | change))


def test_messages_are_checked_when_decoded() -> None:
    line = encode(MetricMessage(step=3, name="rmse", value=0.5))
    assert decode(line) == MetricMessage(step=3, name="rmse", value=0.5, at=json.loads(line)["at"])
    for bad in ("not json", '{"type": "gossip"}', '{"type": "metric", "step": 1, "name": "x"}'):
        with pytest.raises(ProtocolError):
            decode(bad)
    with pytest.raises(ProtocolError, match="wrong type"):
        decode('{"type": "metric", "step": 1, "name": "x", "value": "high"}')
    with pytest.raises(ValueError):
        encode(MetricMessage(step=1, name="x", value=float("nan")))
    assert isinstance(decode('{"type": "log", "level": "info", "message": "hi"}'), LogMessage)


def test_classification_reports_held_out_metrics_history_and_result(
    classified: tuple[Outcome, list[Message]],
) -> None:
    outcome, messages = classified
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome.message
    assert outcome.result is not None
    metrics = outcome.result.metrics
    assert metrics["accuracy"] > 0.8
    assert set(metrics) == {"accuracy", "f1", "precision", "recall", "roc_auc", "log_loss"}
    assert outcome.result.classes == ["no", "yes"]
    assert outcome.result.algorithm == "logistic_regression"
    assert outcome.result.parameters["random_state"] == 42
    kinds = {f["name"]: f["kind"] for f in outcome.result.features}
    assert kinds == {"x1": "numeric", "x2": "numeric", "x3": "numeric", "color": "categorical"}
    assert messages[0]["type"] == "started"
    assert [m["type"] for m in messages[-2:]] == ["artifact", "result"]
    history = {m["name"]: m["value"] for m in messages if m["type"] == "metric"}
    assert history["accuracy"] == pytest.approx(metrics["accuracy"])
    logs = " | ".join(m["message"] for m in messages if m["type"] == "log")
    assert "loaded 240 rows and 5 columns from 3 file(s)" in logs
    assert "192 training and 48 held-out rows" in logs


def test_the_artifact_loads_and_predicts_labels_and_probabilities(
    classified: tuple[Outcome, list[Message]], model: LoadedModel
) -> None:
    artifact = classified[0].artifact
    assert artifact is not None
    content = Path(artifact.path).read_bytes()
    assert (len(content), hashlib.sha256(content).hexdigest()) == (
        artifact.size_bytes,
        artifact.sha256,
    )
    rows: list[dict[str, Any]] = [
        {"x1": 2.0, "x2": -2.0, "x3": None, "color": "red"},
        {"x1": -2.0, "x2": 2.0, "x3": 0.1, "color": None},
        {"x1": 0.1, "x2": 0, "x3": 1, "color": "a colour never seen"},
    ]
    assert model.predict(rows)[:2] == ["yes", "no"]
    probabilities = model.predict_proba(rows)
    assert probabilities is not None
    assert [set(p) for p in probabilities] == [{"no", "yes"}] * 3
    assert all(sum(p.values()) == pytest.approx(1.0) for p in probabilities)
    assert probabilities[0]["yes"] > 0.9 and probabilities[1]["no"] > 0.9


def test_rows_that_do_not_fit_the_features_are_refused_by_name(model: LoadedModel) -> None:
    good: dict[str, Any] = {"x1": 1, "x2": 2.5, "x3": None, "color": "blue"}
    model.check_rows([good])
    with pytest.raises(InvalidRows, match=r"row 0: missing feature\(s\) 'x2'"):
        model.check_rows([{k: v for k, v in good.items() if k != "x2"}])
    with pytest.raises(InvalidRows, match="row 1: feature 'x1' must be a number, got str 'abc'"):
        model.predict([good, good | {"x1": "abc"}])
    with pytest.raises(InvalidRows, match=r"unknown feature\(s\) 'label' \('label' is the target"):
        model.predict_proba([good | {"label": "yes"}])


def test_a_model_file_that_changed_is_refused(
    classified: tuple[Outcome, list[Message]], tmp_path: Path
) -> None:
    artifact = classified[0].artifact
    assert artifact is not None
    copy = tmp_path / "model.joblib"
    copy.write_bytes(Path(artifact.path).read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match its recorded SHA-256"):
        load_model(copy, expected_sha256=artifact.sha256)


async def test_regression_with_gradient_boosting_reports_staged_history(
    trainer: LocalTrainer, tmp_path: Path
) -> None:
    spec = spec_for(
        tmp_path,
        "boost",
        task="regression",
        target_column="amount",
        algorithm="gradient_boosting",
        hyperparameters={"verbose": 1},  # prints to stdout: it must not corrupt the protocol
    )
    recorder = Recorder()
    outcome = await trainer.run(spec, recorder.handler("boost"))
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome.message
    assert outcome.result is not None and outcome.result.classes is None
    assert outcome.result.metrics["r2"] > 0.5
    assert set(outcome.result.metrics) == {"rmse", "mae", "r2"}
    rmse = [m for m in recorder.of_type("boost", "metric") if m["name"] == "rmse"]
    steps = [m["step"] for m in rmse]
    assert 10 < len(steps) <= 50 and steps == sorted(steps) and steps[-1] == 100
    assert rmse[-1]["value"] < rmse[0]["value"]
    assert rmse[-1]["value"] == pytest.approx(outcome.result.metrics["rmse"])
    assert recorder.logged("boost", "      Iter       Train Loss")
    assert not recorder.logged("boost", "unparsed")
    prediction = load_model(spec.artifact_path).predict(
        [{"x1": 1.0, "x2": 0.0, "x3": None, "color": "green"}]
    )
    assert prediction == [pytest.approx(3.0, abs=1.5)]


async def test_bad_jobs_fail_with_a_message_naming_the_problem(
    trainer: LocalTrainer, tmp_path: Path
) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "typo": ({"hyperparameters": {"C": 1.0, "max_iterations": 5}}, "max_iterations"),
        "text": ({"task": "regression"}, "target 'label' is not numeric"),
        "floats": ({"target_column": "amount"}, "holds fractional numbers"),
    }
    specs = {name: spec_for(tmp_path, name, **fields) for name, (fields, _) in cases.items()}
    recorder = Recorder()
    outcomes = await asyncio.gather(
        *(trainer.run(spec, recorder.handler(name)) for name, spec in specs.items())
    )
    for (name, (_, expected)), outcome in zip(cases.items(), outcomes, strict=True):
        assert outcome.status is OutcomeStatus.FAILED, name
        assert outcome.message is not None and expected in outcome.message, outcome.message
        assert recorder.of_type(name, "error")[0]["message"] == outcome.message
        assert not recorder.of_type(name, "artifact")
        assert not await asyncio.to_thread(os.path.exists, specs[name].artifact_path)


async def test_the_worker_command_reports_an_error_line_and_exits_1(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "cli", target_column="churned")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.compute.trainer",
        str(spec_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await worker.communicate()
    assert worker.returncode == 1
    messages = [decode(line) for line in stdout.decode().splitlines()]
    last = messages[-1]
    assert last == ErrorMessage(
        message="target column 'churned' is not in the data (columns: x1, x2, x3, color)"
    )
    assert b"Traceback" not in stderr


async def test_jobs_beyond_the_limit_queue_and_run_one_at_a_time(tmp_path: Path) -> None:
    specs = [spec_for(tmp_path, name, rows=60) for name in ("first", "second", "third")]
    recorder = Recorder()
    seen = {"running": 0, "queued": 0}
    async with LocalTrainer(max_concurrent=1) as local:

        async def watch() -> None:
            while True:
                seen["running"] = max(seen["running"], local.running_count)
                seen["queued"] = max(seen["queued"], local.queued_count)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        outcomes = await asyncio.gather(
            *(local.run(spec, recorder.handler(spec.job_id)) for spec in specs)
        )
        watcher.cancel()
    assert [o.status for o in outcomes] == [OutcomeStatus.SUCCEEDED] * 3
    assert seen == {"running": 1, "queued": 2}
    spans = sorted((times[0], times[-1]) for times in recorder.arrived.values())
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


async def test_cancel_stops_a_running_job_and_a_queued_one_never_starts(tmp_path: Path) -> None:
    recorder = Recorder()
    async with LocalTrainer(max_concurrent=1) as local:
        running = asyncio.create_task(
            local.run(spec_for(tmp_path, "long", **LONG_JOB), recorder.handler("long"))
        )
        queued = [
            asyncio.create_task(local.run(spec_for(tmp_path, name), recorder.handler(name)))
            for name in ("next", "later")
        ]
        await until(lambda: recorder.logged("long", "fitting"))
        assert (local.running_count, local.queued_count) == (1, 2)

        assert local.cancel("next")
        assert (await queued[0]).status is OutcomeStatus.CANCELLED
        await asyncio.sleep(0.2)  # long enough for a wrongly freed slot to be taken
        info = local.describe("later")
        assert info is not None and info.state is JobState.QUEUED
        assert local.running_count == 1

        local.cancel("later")
        started = time.monotonic()
        assert local.cancel("long")
        assert (await running).status is OutcomeStatus.CANCELLED
        assert time.monotonic() - started < 5  # SIGTERM sufficed
        assert (await queued[1]).status is OutcomeStatus.CANCELLED
        assert not local.cancel("long")
    assert gone(recorder.pid("long"))
    assert not recorder.messages["next"] and not recorder.messages["later"]
    assert not await asyncio.to_thread(os.path.exists, tmp_path / "models" / "long.joblib")


async def test_max_runtime_ends_a_long_job_as_timed_out(
    trainer: LocalTrainer, tmp_path: Path
) -> None:
    recorder = Recorder()
    started = time.monotonic()
    outcome = await trainer.run(
        spec_for(tmp_path, "slow", **LONG_JOB), recorder.handler("slow"), max_runtime_s=1
    )
    assert outcome.status is OutcomeStatus.TIMED_OUT
    assert 1 <= time.monotonic() - started < 5
    assert gone(recorder.pid("slow"))
    assert trainer.running_count == 0


async def test_close_stops_every_job_and_ids_are_unique_while_live(tmp_path: Path) -> None:
    recorder = Recorder()
    local = LocalTrainer()
    spec = spec_for(tmp_path, "open", **LONG_JOB)
    job = asyncio.create_task(local.run(spec, recorder.handler("open")))
    await until(lambda: bool(recorder.messages["open"]))
    with pytest.raises(JobAlreadyRunning):
        await local.run(spec, recorder.handler("open"))
    await local.close()
    assert (await job).status is OutcomeStatus.CANCELLED
    assert gone(recorder.pid("open"))


async def test_an_error_in_the_message_handler_stops_the_worker_and_reaches_the_caller(
    trainer: LocalTrainer, tmp_path: Path
) -> None:
    pids = []

    async def broken(message: Message) -> None:
        pids.append(message["pid"])
        raise RuntimeError("the log store is down")

    with pytest.raises(RuntimeError, match="the log store is down"):
        await trainer.run(spec_for(tmp_path, "handler", **LONG_JOB), broken)
    assert gone(pids[0])
    assert trainer.running_count == 0


async def test_the_worker_copies_its_messages_to_a_report_file(tmp_path: Path) -> None:
    """Where nobody reads stdout (a Vertex AI job), the same lines land in a file."""
    spec = spec_for(tmp_path, "report", target_column="churned")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    report = tmp_path / "report.jsonl"
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.compute.trainer",
        str(spec_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "STEPWELL_TRAINER_REPORT": str(report)},
    )
    stdout, _ = await worker.communicate()
    assert report.read_text().splitlines() == stdout.decode().splitlines()
