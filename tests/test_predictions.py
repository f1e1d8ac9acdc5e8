"""Online and batch predictions with real trained models, over HTTP, on a real database.

The models are trained once for the module (see tests.test_deployments.trained_models).
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pandas as pd
import pytest
import pytest_asyncio

from actors import batch_predictions
from runtime.keys import DB_POOL, STORAGE
from tests.conftest import auth
from tests.test_deployments import AppClient, Trained, json_of, trained_models
from tests.test_training import make_dataset, make_model

pytestmark = pytest.mark.asyncio(loop_scope="module")
PREDICT = "/api/v1/predictions"
ROW = {"x1": 0.5, "x2": -1.0, "plan": "pro"}
ROWS = [ROW, {"x1": None, "x2": 0.3, "plan": "basic"}, {"x1": -2.0, "x2": 1.5, "plan": "team"}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Trained]:
    async with trained_models(server_url, tmp_path_factory.mktemp("served")) as models:
        yield models


async def predict(client: AppClient, body: dict[str, Any], role: str = "user") -> Any:
    resp = await client.post(
        PREDICT, json=body, headers=auth("root" if role == "admin" else "alice", role)
    )
    return (await json_of(resp, 201))["data"]


def assert_probabilities(rows: list[dict[str, float]], count: int) -> None:
    assert len(rows) == count
    for row in rows:
        assert set(row) == {"0", "1"} and sum(row.values()) == pytest.approx(1.0)


async def test_predict_one_row_and_several_with_confidence(served: Trained) -> None:
    version_id = served.classifier["id"]
    body = {"model_version_id": version_id, "input_data": ROW, "return_confidence": True}
    one = await predict(served.client, body)
    assert one["model_version_id"] == version_id and one["latency_ms"] > 0
    assert_probabilities(one["probabilities"], 1)
    proba = one["probabilities"][0]
    assert one["predictions"] == [int(max(proba, key=proba.get))], "the likeliest class"

    several = await predict(served.client, {**body, "input_data": ROWS})
    assert len(several["predictions"]) == 3 and set(several["predictions"]) <= {0, 1}
    assert_probabilities(several["probabilities"], 3)
    plain = await predict(served.client, {"model_version_id": version_id, "input_data": ROWS})
    assert plain["predictions"] == several["predictions"] and plain["probabilities"] is None


async def test_regression_answers_numbers_without_probabilities(served: Trained) -> None:
    body = {"model_version_id": served.regressor["id"], "input_data": ROW}
    result = await predict(served.client, {**body, "return_confidence": True})
    assert result["probabilities"] is None
    # spend = 10 + 3 x1 - 2 x2 + 5 (plan == "pro"), learnt by a ridge regression
    assert result["predictions"] == [pytest.approx(18.5, abs=1.0)]


async def test_invalid_input_is_422_naming_the_problem(served: Trained) -> None:
    client, version_id = served.client, served.classifier["id"]
    listed = f"{PREDICT}?model_version_id={version_id}"
    before = (await json_of(await client.get(listed, headers=auth()), 200))["pagination"]["total"]
    cases: list[tuple[Any, str]] = [
        ({"x2": 1, "plan": "pro"}, "row 0: missing feature(s) 'x1'"),
        ({**ROW, "x1": "high"}, "feature 'x1' must be a number, got str 'high'"),
        ({**ROW, "churned": 1}, "unknown feature(s) 'churned' ('churned' is the target)"),
        ([ROW, {**ROW, "colour": "red"}], "row 1: unknown feature(s) 'colour'"),
    ]
    for data, expected in cases:
        body = {"model_version_id": version_id, "input_data": data}
        error = (await json_of(await client.post(PREDICT, json=body, headers=auth()), 422))["error"]
        assert expected in error["message"], error
        assert error["details"]["rows"][0]["problem"] in error["message"]
    for data, expected in [
        (5, "must be an object (one row) or a list of objects"),
        ([], "must hold at least one row"),
        ([ROW] * 1001, "at most 1000 rows per request"),
    ]:
        body = {"model_version_id": version_id, "input_data": data}
        error = (await json_of(await client.post(PREDICT, json=body, headers=auth()), 422))["error"]
        assert expected in error["details"]["fields"]["input_data"][0]
    after = (await json_of(await client.get(listed, headers=auth()), 200))["pagination"]["total"]
    assert after == before, "a refused prediction is not recorded"


async def test_predictions_are_recorded_visible_to_their_owner_only(served: Trained) -> None:
    client, version_id = served.client, served.classifier["id"]
    body = {"model_version_id": version_id, "input_data": ROWS[1]}
    await json_of(await client.post(PREDICT, json=body, headers=auth("bob")), 404)
    unknown = {**body, "model_version_id": str(uuid.uuid4())}
    await json_of(await client.post(PREDICT, json=unknown, headers=auth()), 404)
    first = await predict(client, body)
    by_admin = await predict(client, {**body, "input_data": ROWS}, role="admin")

    page = await json_of(
        await client.get(f"{PREDICT}?model_version_id={version_id}&limit=2", headers=auth()), 200
    )
    assert [p["id"] for p in page["data"]] == [by_admin["id"], first["id"]], "newest first"
    assert page["data"][0]["created_by"] == "root" and page["data"][0]["owner_id"] == "alice"
    got = (await json_of(await client.get(f"{PREDICT}/{first['id']}", headers=auth()), 200))["data"]
    assert got["input_data"] == ROWS[1] and got["predictions"] == first["predictions"]
    await json_of(await client.get(f"{PREDICT}/{first['id']}", headers=auth("bob")), 404)
    theirs = await json_of(await client.get(PREDICT, headers=auth("bob")), 200)
    assert theirs["pagination"]["total"] == 0


# -- batch ------------------------------------------------------------------------------------


async def store(client: AppClient, key: str, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    return (await client.app[STORAGE].write(key, chunks())).uri


async def stored(client: AppClient, key: str) -> bytes:
    return b"".join([chunk async for chunk in client.app[STORAGE].read(key)])


async def run_batch(client: AppClient, body: dict[str, Any]) -> dict[str, Any]:
    """Start a job, check it answers 202 `queued`, and wait for it to end."""
    job = await json_of(await client.post(f"{PREDICT}/batch", json=body, headers=auth()), 202)
    assert job["data"]["status"] == "queued"
    for _ in range(200):
        resp = await client.get(f"{PREDICT}/batch/{job['data']['id']}", headers=auth())
        done: dict[str, Any] = (await json_of(resp, 200))["data"]
        if done["status"] in ("succeeded", "failed"):
            return done
        await asyncio.sleep(0.05)
    raise AssertionError(f"the batch job did not end: {done}")


async def test_batch_csv_with_a_bad_row_succeeds_and_reports_it(served: Trained) -> None:
    client = served.client
    rows = "id,x1,x2,plan\n1,0.5,-1,pro\n2,,0.3,basic\n3,abc,1,team\n4,-2,1.5,team\n"
    uri = await store(client, "scoring/rows.csv", rows.encode())
    assert uri.startswith("file://")
    body = {
        "model_version_id": served.classifier["id"],
        "input_gcs_path": uri,
        "output_gcs_path": "scoring/rows.predictions.csv",
        "return_confidence": True,
    }
    done = await run_batch(client, body)
    assert done["status"] == "succeeded" and done["error"] is None, done
    assert (done["rows_total"], done["rows_failed"]) == (4, 1)
    [failed] = done["failed_rows"]
    assert failed["row"] == 3 and "feature 'x1' must be a number" in failed["error"]
    assert done["output_uri"] == client.app[STORAGE].uri("scoring/rows.predictions.csv")

    out = pd.read_csv(io.BytesIO(await stored(client, "scoring/rows.predictions.csv")), dtype=str)
    assert list(out.columns) == [
        *("id", "x1", "x2", "plan", "prediction"),
        *("probability_0", "probability_1", "error"),
    ]
    assert out["id"].tolist() == ["1", "2", "3", "4"] and out["x1"][2] == "abc"
    good = out.drop(index=2)
    assert set(good["prediction"]) <= {"0", "1"} and good["error"].isna().all()
    total = good["probability_0"].astype(float) + good["probability_1"].astype(float)
    assert total.tolist() == pytest.approx([1.0] * 3)
    assert pd.isna(out["prediction"][2]) and "'x1'" in out["error"][2]


async def test_batch_json_lines_fail_lines_that_are_not_rows(served: Trained) -> None:
    client = served.client
    lines = [json.dumps({"id": "a", **ROW}), "{not json", "[1, 2]", "", json.dumps(ROWS[2])]
    await store(client, "scoring/rows.jsonl", "\n".join(lines).encode())
    body = {
        "model_version_id": served.regressor["id"],
        "input_gcs_path": "scoring/rows.jsonl",
        "output_gcs_path": "scoring/out/rows.jsonl",
    }
    done = await run_batch(client, body)
    assert (done["status"], done["rows_total"], done["rows_failed"]) == ("succeeded", 4, 2)
    assert [f["row"] for f in done["failed_rows"]] == [2, 3], "rows are line numbers"
    out = [json.loads(x) for x in (await stored(client, "scoring/out/rows.jsonl")).splitlines()]
    assert out[0]["id"] == "a" and out[0]["prediction"] == pytest.approx(18.5, abs=1.0)
    assert out[0]["error"] is None and "probability_0" not in out[0]
    assert out[1] == {"input": "{not json", "prediction": None, "error": out[1]["error"]}
    assert out[1]["error"].startswith("not a JSON value")
    assert out[2]["input"] == [1, 2] and "expected an object" in out[2]["error"]
    assert out[3]["x1"] == -2.0 and isinstance(out[3]["prediction"], float)


async def test_unreadable_input_fails_keeping_the_rows_done(
    served: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, version_id = served.client, served.classifier["id"]
    body = {"model_version_id": version_id, "output_gcs_path": "scoring/broken.out.csv"}
    await store(client, "scoring/image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    done = await run_batch(client, {**body, "input_gcs_path": "scoring/image.csv"})
    assert done["status"] == "failed" and "cannot be read as CSV" in done["error"], done
    assert not await client.app[STORAGE].exists("scoring/broken.out.csv")

    await store(client, "scoring/no-plan.csv", b"x1,x2\n1,2\n")
    done = await run_batch(client, {**body, "input_gcs_path": "scoring/no-plan.csv"})
    assert done["status"] == "failed" and "no column(s) 'plan'" in done["error"]

    monkeypatch.setattr(batch_predictions, "CHUNK_ROWS", 10)
    good = "".join(f"{i % 3},{i % 5},basic\n" for i in range(25))
    await store(client, "scoring/ragged.csv", f"x1,x2,plan\n{good}1,2,3,4\n{good}".encode())
    done = await run_batch(client, {**body, "input_gcs_path": "scoring/ragged.csv"})
    assert done["status"] == "failed" and "Expected 3 fields" in done["error"], done
    assert "the output holds the 20 row(s) before it" in done["error"]
    assert done["rows_total"] == 20 and done["rows_failed"] == 0
    out = pd.read_csv(io.BytesIO(await stored(client, "scoring/broken.out.csv")))
    assert len(out) == 20 and out["prediction"].notna().all()


async def test_batch_requests_that_cannot_run_are_422(served: Trained) -> None:
    client = served.client
    await store(client, "scoring/in.csv", b"x1,x2,plan\n1,2,pro\n")
    theirs = await make_dataset(client, served.database_url, b"x1,x2,plan\n1,2,pro\n", "bob")
    ok_in, ok_out = "scoring/in.csv", "scoring/in.out.csv"
    cases = [
        ("s3://bucket/in.csv", ok_out, "input_gcs_path", "must be a URI in this installation"),
        ("gs://elsewhere/in.csv", ok_out, "input_gcs_path", "or a storage key"),
        ("file:///etc/in.csv", ok_out, "input_gcs_path", "must be a URI"),
        ("../in.csv", ok_out, "input_gcs_path", "must be a URI"),
        ("scoring/in.txt", ok_out, "input_gcs_path", "must end in .csv, .jsonl, .ndjson"),
        (ok_in, "models/x/out.csv", "output_gcs_path", "cannot be under datasets/ or models/"),
        (ok_in, ok_in, "output_gcs_path", "must differ from input_gcs_path"),
        (ok_in, "scoring/out.jsonl", "output_gcs_path", "must match the input's format (csv)"),
        ("scoring/missing.csv", ok_out, "input_gcs_path", "names nothing stored"),
        (f"datasets/{theirs}/uploads/test/train.csv", ok_out, "input_gcs_path", "no dataset of"),
    ]
    version_id = served.classifier["id"]
    for source, target, field, expected in cases:
        body = {"model_version_id": version_id, "input_gcs_path": source, "output_gcs_path": target}
        resp = await client.post(f"{PREDICT}/batch", json=body, headers=auth())
        error = (await json_of(resp, 422))["error"]
        assert expected in error["details"]["fields"][field][0], (source, target, error)

    mine = await make_dataset(client, served.database_url, b"x1,x2,plan\n1,2,pro\n")
    body = {
        "model_version_id": version_id,
        "input_gcs_path": f"datasets/{mine}/uploads/test/train.csv",
        "output_gcs_path": ok_out,
    }
    done = await run_batch(client, body)
    assert done["status"] == "succeeded" and done["rows_total"] == 1
    await json_of(await client.get(f"{PREDICT}/batch/{done['id']}", headers=auth("bob")), 404)
    await json_of(await client.post(f"{PREDICT}/batch", json=body, headers=auth("bob")), 404)
    hand_made = await make_model(client)
    resp = await client.post(
        f"/api/v1/models/{hand_made}/versions",
        json={"artifact_uri": "gs://b/m.joblib"},
        headers=auth(),
    )
    other = {**body, "model_version_id": (await json_of(resp, 201))["data"]["id"]}
    resp = await client.post(f"{PREDICT}/batch", json=other, headers=auth())
    assert "has no Stepwell model file" in (await json_of(resp, 422))["error"]["message"]


async def test_jobs_of_a_process_that_died_end_failed(served: Trained) -> None:
    client = served.client
    await store(client, "scoring/few.csv", b"x1,x2,plan\n1,2,pro\n")
    ids = []
    for name in ("gone", "alive", "restarted"):
        body = {
            "model_version_id": served.classifier["id"],
            "input_gcs_path": "scoring/few.csv",
            "output_gcs_path": f"scoring/few.{name}.csv",
        }
        ids.append((await run_batch(client, body))["id"])
    # What a process killed mid-job leaves: its jobs `running` on its node.
    pool = client.app[DB_POOL]
    await pool.execute("INSERT INTO nodes (node_id) VALUES ('node-alive') ON CONFLICT DO NOTHING")
    running = (
        "UPDATE batch_prediction_jobs SET status = 'running', completed_at = NULL, node_id = $2"
        " WHERE id = $1"
    )
    jobs = batch_predictions.batch_jobs_of(served.app)
    for job_id, node in zip(ids, ("node-gone", "node-alive", jobs.node_id), strict=True):
        await pool.execute(running, uuid.UUID(job_id), node)

    async def status(job_id: str) -> dict[str, Any]:
        resp = await client.get(f"{PREDICT}/batch/{job_id}", headers=auth())
        data: dict[str, Any] = (await json_of(resp, 200))["data"]
        return data

    assert await jobs.sweep() == 1  # the node never heard from; this node's job is its own
    gone = await status(ids[0])
    assert gone["status"] == "failed" and "the process running it stopped" in gone["error"]
    assert gone["completed_at"] is not None
    assert [(await status(i))["status"] for i in ids[1:]] == ["running", "running"]
    # A process starting with this node id: the job was left by the one before it.
    assert await jobs.sweep(starting=True) == 1
    assert [(await status(i))["status"] for i in ids[1:]] == ["running", "failed"]


async def test_stopped_jobs_end_failed_even_before_they_start(
    served: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = served.client
    monkeypatch.setattr(batch_predictions, "CHUNK_ROWS", 1)  # slow: a chunk per row
    await store(client, "scoring/long.csv", b"x1,x2,plan\n" + b"1,2,pro\n" * 2000)
    jobs = []
    for i in range(3):  # two run, one waits for a slot
        body = {
            "model_version_id": served.classifier["id"],
            "input_gcs_path": "scoring/long.csv",
            "output_gcs_path": f"scoring/long.{i}.csv",
        }
        resp = await client.post(f"{PREDICT}/batch", json=body, headers=auth())
        jobs.append((await json_of(resp, 202))["data"])
    url = f"{PREDICT}/batch/{jobs[0]['id']}"
    for _ in range(500):  # until the first job has scored a few rows
        if (await json_of(await client.get(url, headers=auth()), 200))["data"]["rows_total"] > 4:
            break
        await asyncio.sleep(0.02)
    await batch_predictions.batch_jobs_of(served.app).close()
    ended = []
    for i, job in enumerate(jobs):
        resp = await client.get(f"{PREDICT}/batch/{job['id']}", headers=auth())
        ended.append((await json_of(resp, 200))["data"])
        assert ended[i]["status"] == "failed" and "interrupted" in ended[i]["error"], ended[i]
        assert not await client.app[STORAGE].exists(f"scoring/long.{i}.csv")
    assert ended[0]["rows_total"] >= 5 and ended[2]["rows_total"] == 0, "progress is kept"
