"""ML steps inside workflows: train (waiting without a worker), evaluate gates, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Client, Publish, auth, start_run, wait_run
from tests.test_datasets import form
from tests.test_training import churn_csv, make_dataset, make_model, wait_job


def chain(model: str, dataset: str, threshold: float, **train: Any) -> tuple[list[Any], list[Any]]:
    nodes = [
        {
            "id": "train",
            "type": "train",
            "data": {"model_id": model, "dataset_id": dataset, "target_column": "churned", **train},
        },
        {
            "id": "gate",
            "type": "evaluate",
            "data": {
                "metric": "accuracy",
                "threshold": threshold,
                "metrics": "{{ steps.train.output.metrics }}",
            },
        },
        {
            "id": "report",
            "type": "transform",
            "data": {
                "output": {
                    "version": "{{ steps.train.output.model_version_id }}",
                    "accuracy": "{{ steps.gate.output.value }}",
                }
            },
        },
    ]
    edges = [{"source": "train", "target": "gate"}, {"source": "gate", "target": "report"}]
    return nodes, edges


async def test_train_then_gate_then_report(
    client: Client, publish: Publish, database_url: str
) -> None:
    dataset = await make_dataset(client, database_url, churn_csv())
    model = await make_model(client)
    wf = await publish(*chain(model, dataset, 0.6), workflow_type="training")
    run = await start_run(client, wf["id"])
    done = await wait_run(client, run["id"], within_s=90)
    assert done["status"] == "succeeded", done
    train_out = done["context"]["steps"]["train"]["output"]
    assert train_out["status"] == "succeeded" and train_out["metrics"]["accuracy"] > 0.6
    assert done["output"]["report"]["version"] == train_out["model_version_id"]
    resp = await client.get(f"/api/v1/training-jobs/{train_out['training_job_id']}", headers=auth())
    job = (await resp.json())["data"]
    assert job["run_id"] == run["id"] and job["model_version_id"] == train_out["model_version_id"]


async def test_a_gate_that_is_not_met_fails_the_run(
    client: Client, publish: Publish, database_url: str
) -> None:
    dataset = await make_dataset(client, database_url, churn_csv())
    model = await make_model(client)
    wf = await publish(*chain(model, dataset, 0.999))
    done = await wait_run(client, (await start_run(client, wf["id"]))["id"], within_s=90)
    assert done["status"] == "failed"
    assert done["error"]["step_id"] == "gate" and "gate not met" in done["error"]["message"]
    assert "report" not in done["step_statuses"]


async def test_cancelling_the_run_cancels_its_training_job(
    client: Client, publish: Publish, database_url: str
) -> None:
    dataset = await make_dataset(client, database_url, churn_csv(3000))
    model = await make_model(client)
    nodes, edges = chain(
        model, dataset, 0.5, algorithm="random_forest", hyperparameters={"n_estimators": 5000}
    )
    wf = await publish(nodes, edges)
    run = await start_run(client, wf["id"])
    await wait_run(client, run["id"], ("running",))
    job_id = None
    for _ in range(200):
        resp = await client.get("/api/v1/training-jobs", headers=auth())
        jobs = (await resp.json())["data"]
        if jobs and jobs[0]["status"] == "running":
            job_id = jobs[0]["id"]
            break
        await asyncio.sleep(0.1)
    assert job_id is not None
    resp = await client.post(f"/api/v1/runs/{run['id']}/cancel", headers=auth())
    assert resp.status == 202
    assert (await wait_run(client, run["id"]))["status"] == "cancelled"
    assert (await wait_job(client, job_id))["status"] == "cancelled"


async def uploaded_dataset(client: Client, data: bytes) -> str:
    """A dataset made the way users make one: create, multipart upload, version."""
    resp = await client.post("/api/v1/datasets", json={"name": "churn"}, headers=auth())
    dataset_id: str = (await resp.json())["data"]["id"]
    resp = await client.post(
        f"/api/v1/datasets/{dataset_id}/upload", data=form({"train.csv": data}), headers=auth()
    )
    assert resp.status == 201, await resp.text()
    upload_id = (await resp.json())["data"]["upload_id"]
    resp = await client.post(
        f"/api/v1/datasets/{dataset_id}/versions", json={"upload_id": upload_id}, headers=auth()
    )
    assert resp.status == 201, await resp.text()
    return dataset_id


async def test_profile_then_train(client: Client, publish: Publish) -> None:
    dataset = await uploaded_dataset(client, churn_csv())
    model = await make_model(client)
    nodes, edges = chain(model, dataset, 0.6)
    nodes.insert(0, {"id": "profile", "type": "dataset_profile", "data": {"dataset_id": dataset}})
    edges.insert(0, {"source": "profile", "target": "train"})
    wf = await publish(nodes, edges)
    done = await wait_run(client, (await start_run(client, wf["id"]))["id"], within_s=90)
    assert done["status"] == "succeeded", done
    profile = done["context"]["steps"]["profile"]["output"]
    assert profile["row_count"] == 400 and profile["version"] == 1
    assert {c["name"] for c in profile["columns"]} == {"x1", "x2", "plan", "churned"}


async def test_the_whole_chain(client: Client, publish: Publish) -> None:
    """profile -> train -> evaluate gate -> deploy -> predict -> batch predict, in one run."""
    dataset = await uploaded_dataset(client, churn_csv())
    resp = await client.get(f"/api/v1/datasets/{dataset}/versions/1", headers=auth())
    train_file = (await resp.json())["data"]["files"][0]["uri"]
    model = await make_model(client)
    nodes, edges = chain(model, dataset, 0.6)
    version = "{{ steps.train.output.model_version_id }}"
    nodes[2:] = [
        {"id": "profile", "type": "dataset_profile", "data": {"dataset_id": dataset}},
        {
            "id": "deploy",
            "type": "deploy",
            "data": {"model_id": model, "version": 1},
        },
        {
            "id": "predict",
            "type": "predict",
            "data": {
                "model_version_id": version,
                "return_confidence": True,
                "input_data": [
                    {"x1": 1.5, "x2": 1.0, "plan": "pro"},
                    {"x1": -2.0, "x2": -1.0, "plan": "basic"},
                ],
            },
        },
        {
            "id": "score",
            "type": "batch_predict",
            "data": {
                "model_version_id": version,
                "input_path": "{{ input.file }}",
                "output_path": "{{ input.out }}",
            },
        },
    ]
    edges = [
        {"source": "profile", "target": "train"},
        edges[0],
        {"source": "gate", "target": "deploy"},
        {"source": "deploy", "target": "predict"},
        {"source": "deploy", "target": "score"},
    ]
    wf = await publish(nodes, edges, workflow_type="training")
    out = train_file.split("/datasets/")[0] + "/scoring/churn-scores.csv"
    run = await start_run(client, wf["id"], {"file": train_file, "out": out})
    done = await wait_run(client, run["id"], within_s=120)
    assert done["status"] == "succeeded", done
    steps = done["context"]["steps"]
    assert steps["deploy"]["output"]["endpoint"] == "/api/v1/predictions"
    predicted = steps["predict"]["output"]
    assert predicted["predictions"] == [1, 0]
    assert all(abs(sum(p.values()) - 1) < 1e-6 for p in predicted["probabilities"])
    score = steps["score"]["output"]
    assert score["rows"] == 400 and score["failed_rows"] == 0
    resp = await client.get(f"/api/v1/models/{model}/deployments", headers=auth())
    assert len((await resp.json())["data"]) == 1
