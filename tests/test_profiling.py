"""Profiles of dataset versions: made in the background after a version is created, checked
value by value against data generated here."""

from __future__ import annotations

import asyncio
import io
import json
import statistics
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pytest_aiohttp import AiohttpClient

from actors import profile_jobs, profiling
from runtime.app import create_app
from runtime.config import Config
from runtime.keys import DB_POOL, STORAGE
from runtime.storage.base import Storage
from tests.conftest import Client, auth
from tests.test_datasets import (
    BASE,
    body_of,
    digest,
    make_dataset,
    make_version,
    upload,
    wait_profile,
)

ROWS = 40


@pytest.fixture
async def client(config: Config, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_app(config))


def people_csv() -> bytes:
    """ids, ints, floats with nulls, a categorical, a constant, a mostly empty column, dates
    and booleans."""
    lines = ["id,age,score,city,constant,comment,signup,flag"]
    for i in range(1, ROWS + 1):
        score = "" if i % 4 == 0 else f"{i * 0.5 + 0.25}"
        city = "Paris" if i <= 20 else "Lyon" if i <= 32 else "Nice"
        comment = ("a" if i % 2 else "b") if i <= 10 else ""
        signup = date(2024, 1, 1) + timedelta(days=i)
        flag = "true" if i % 3 == 0 else "false"
        lines.append(f"{i},{20 + i % 7},{score},{city},x,{comment},{signup},{flag}")
    return ("\n".join(lines) + "\n").encode()


def columns_of(profile: dict[str, Any], file: int = 0) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in profile["profile"]["files"][file]["columns"]}


async def test_csv_profile_value_by_value(client: Client) -> None:
    dataset = await make_dataset(client)
    version = await make_version(client, dataset["id"], {"people.csv": people_csv()})
    profile = await wait_profile(client, dataset["id"], version["version"])
    assert profile["status"] == "succeeded" and profile["error"] is None
    file = profile["profile"]["files"][0]
    assert (file["name"], file["format"], file["sampled"]) == ("people.csv", "csv", False)
    assert file["row_count"] == file["profiled_rows"] == ROWS
    cols = columns_of(profile)
    header = people_csv().decode().split("\n", 1)[0]
    assert [c["name"] for c in file["columns"]] == header.split(",")
    types = {name: c["type"] for name, c in cols.items()}
    assert types == {
        "id": "integer",
        "age": "integer",
        "score": "float",
        "city": "categorical",
        "constant": "categorical",
        "comment": "categorical",
        "signup": "datetime",
        "flag": "boolean",
    }

    assert_numeric_columns(cols)
    assert_other_columns(cols)
    assert (cols["id"]["distinct_count"], cols["id"]["min"], cols["id"]["max"]) == (ROWS, 1, ROWS)
    assert {(w["column"], w["code"]) for w in file["warnings"]} == {
        ("id", "likely_id"),
        ("constant", "constant"),
        ("comment", "high_null_share"),
    }
    resp = await client.get(f"{BASE}/{dataset['id']}/versions/1", headers=auth())
    got = (await body_of(resp, 200))["data"]
    assert (got["profile_status"], got["row_count"]) == ("succeeded", ROWS)


def assert_numeric_columns(cols: dict[str, dict[str, Any]]) -> None:
    """Integers and floats of people.csv: nulls, distinct values, statistics, histograms."""
    ages = [20 + i % 7 for i in range(1, ROWS + 1)]
    age = cols["age"]
    assert (age["null_count"], age["nullable"], age["distinct_count"]) == (0, False, 7)
    assert (age["min"], age["max"]) == (20, 26)
    assert age["mean"] == pytest.approx(statistics.mean(ages))
    assert age["std"] == pytest.approx(statistics.stdev(ages))
    assert len(age["histogram"]["edges"]) == 11 and sum(age["histogram"]["counts"]) == ROWS

    scores = [i * 0.5 + 0.25 for i in range(1, ROWS + 1) if i % 4]
    score = cols["score"]
    assert (score["null_count"], score["null_fraction"], score["nullable"]) == (10, 0.25, True)
    assert score["distinct_count"] == 30
    assert (score["min"], score["max"]) == (min(scores), max(scores))
    assert score["mean"] == pytest.approx(statistics.mean(scores))
    assert score["histogram"]["edges"][0] == min(scores)
    assert sum(score["histogram"]["counts"]) == 30


def assert_other_columns(cols: dict[str, dict[str, Any]]) -> None:
    """Categorical, constant, mostly empty, date and boolean columns of people.csv."""
    assert cols["city"]["top_values"] == [
        {"value": "Paris", "count": 20},
        {"value": "Lyon", "count": 12},
        {"value": "Nice", "count": 8},
    ]
    assert cols["city"]["distinct_count"] == 3
    assert cols["constant"]["top_values"] == [{"value": "x", "count": ROWS}]
    assert (cols["comment"]["null_count"], cols["comment"]["distinct_count"]) == (30, 2)
    assert cols["signup"]["min"] == "2024-01-02T00:00:00"
    assert cols["signup"]["max"] == "2024-02-10T00:00:00"
    assert cols["flag"]["top_values"] == [
        {"value": False, "count": 27},
        {"value": True, "count": 13},
    ]


async def test_json_lines_profile(client: Client) -> None:
    rows: list[dict[str, Any]] = [
        {"user_id": f"u{i}", "premium": i % 4 == 0, "meta": {"tags": ["a"] * (i % 2)}}
        | ({"clicks": i * 10} if i % 5 else {})
        for i in range(1, 21)
    ]
    content = "\n".join(json.dumps(r) for r in rows).encode() + b"\n\n"
    dataset = await make_dataset(client, dataset_type="time-series")
    version = await make_version(client, dataset["id"], {"events.ndjson": content})
    profile = await wait_profile(client, dataset["id"], version["version"])
    assert profile["status"] == "succeeded", profile
    assert profile["profile"]["files"][0]["format"] == "jsonl"
    cols = columns_of(profile)
    assert cols["clicks"]["type"] == "integer"  # the gaps do not turn it into floats
    assert (cols["clicks"]["null_count"], cols["clicks"]["min"], cols["clicks"]["max"]) == (
        4,
        10,
        190,
    )
    assert cols["premium"]["type"] == "boolean"
    assert cols["premium"]["top_values"] == [
        {"value": False, "count": 15},
        {"value": True, "count": 5},
    ]
    assert cols["meta"]["distinct_count"] == 2
    assert {"value": '{"tags": ["a"]}', "count": 10} in cols["meta"]["top_values"]
    warnings = {(w["column"], w["code"]) for w in profile["profile"]["files"][0]["warnings"]}
    assert warnings == {("user_id", "likely_id")}
    assert profile["profile"]["row_count"] == 20


async def test_parquet_profile(client: Client) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    table = pa.table(
        {
            "at": pa.array(
                [start + timedelta(hours=i) for i in range(30)], pa.timestamp("us", "UTC")
            ),
            "amount": pa.array([float(i) if i % 3 else None for i in range(30)]),
            "label": pa.array(
                ["spam" if i % 3 == 0 else "ham" for i in range(30)]
            ).dictionary_encode(),
            "count": pa.array([i % 5 for i in range(30)], pa.int32()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    dataset = await make_dataset(client)
    version = await make_version(client, dataset["id"], {"metrics.parquet": sink.getvalue()})
    profile = await wait_profile(client, dataset["id"], version["version"])
    assert profile["status"] == "succeeded", profile
    cols = columns_of(profile)
    assert {n: c["type"] for n, c in cols.items()} == {
        "at": "datetime",
        "amount": "float",
        "label": "categorical",
        "count": "integer",
    }
    assert (cols["at"]["min"], cols["at"]["max"]) == (
        "2024-03-01T00:00:00+00:00",
        "2024-03-02T05:00:00+00:00",
    )
    assert (cols["amount"]["null_count"], cols["amount"]["min"], cols["amount"]["max"]) == (
        10,
        1.0,
        29.0,
    )
    assert cols["label"]["top_values"] == [
        {"value": "ham", "count": 20},
        {"value": "spam", "count": 10},
    ]
    assert cols["count"]["distinct_count"] == 5


async def test_malformed_files_fail_the_profile_with_a_clear_error(client: Client) -> None:
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    files = {
        "garbage.csv": garbage,
        "ragged.csv": b"a,b\n1,2\n3,4,5\n",
        "broken.parquet": b"PAR1 this is not parquet",
        "empty.csv": b"",
        "fine.csv": b"a\n1\n2\n",
    }
    dataset = await make_dataset(client)
    version = await make_version(client, dataset["id"], files)
    profile = await wait_profile(client, dataset["id"], version["version"])
    assert profile["status"] == "failed"
    error = profile["error"]
    assert "garbage.csv: not UTF-8 text, so not readable as CSV" in error
    assert "ragged.csv: malformed CSV: Expected 2 fields in line 3, saw 3" in error
    assert "broken.parquet: not readable as Parquet" in error
    assert "empty.csv: the file is empty" in error
    assert "fine.csv" not in error
    by_name = {f["name"]: f for f in profile["profile"]["files"]}
    assert by_name["fine.csv"]["row_count"] == 2 and "error" in by_name["ragged.csv"]
    resp = await client.get(f"{BASE}/{dataset['id']}/versions/1", headers=auth())
    got = (await body_of(resp, 200))["data"]
    assert (got["profile_status"], got["row_count"], got["profile_error"]) == (
        "failed",
        None,
        error,
    )

    # The job runner is unharmed: the next version profiles normally.
    version = await make_version(client, dataset["id"], {"fine.csv": b"a\n1\n"})
    assert (await wait_profile(client, dataset["id"], version["version"]))["status"] == "succeeded"


async def test_large_files_are_sampled(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiling, "MAX_ROWS", 10)
    csv = ("n\n" + "".join(f"{i}\n" for i in range(25))).encode()
    jsonl = "".join(json.dumps({"n": i}) + "\n" for i in range(25)).encode()
    dataset = await make_dataset(client)
    version = await make_version(client, dataset["id"], {"a.csv": csv, "b.jsonl": jsonl})
    profile = await wait_profile(client, dataset["id"], version["version"])
    assert profile["status"] == "succeeded"
    assert profile["profile"]["sampled"] is True and profile["profile"]["row_count"] == 50
    for file in profile["profile"]["files"]:
        assert (file["row_count"], file["profiled_rows"], file["sampled"]) == (25, 10, True)
        assert file["columns"][0]["max"] == 9


async def test_image_datasets_are_not_profiled(client: Client) -> None:
    dataset = await make_dataset(client, dataset_type="image")
    version = await make_version(client, dataset["id"], {"cat.png": b"\x89PNG\r\n"})
    profile = await wait_profile(client, dataset["id"], version["version"])
    assert profile["status"] == "succeeded" and profile["profile"]["supported"] is False
    assert "image datasets are not profiled" in profile["profile"]["note"]
    assert profile["profile"]["files"] == [{"name": "cat.png", "size_bytes": 6}]


async def pending_version(client: Client, database_url: str) -> tuple[str, str]:
    """A version committed by a process that stopped before it scheduled the profile:
    (dataset id, version id)."""
    dataset = await make_dataset(client)
    resp = await upload(client, dataset["id"], {"a.csv": b"a\n1\n2\n3\n"})
    file = (await body_of(resp, 201))["data"]["files"][0]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        version_id = await conn.fetchval(
            "INSERT INTO dataset_versions (dataset_id, version, files, total_digest, size_bytes,"
            " created_by) VALUES ($1, 1, $2, 'x', 6, 'alice') RETURNING id",
            dataset["id"],
            [{**file, "uri": "unused"}],
        )
    finally:
        await conn.close()
    return dataset["id"], str(version_id)


async def test_a_pending_profile_is_picked_up_when_the_app_starts(
    client: Client, config: Config, database_url: str, aiohttp_client: AiohttpClient
) -> None:
    dataset_id, _ = await pending_version(client, database_url)
    restarted = await aiohttp_client(create_app(config))
    profile = await wait_profile(restarted, dataset_id, 1)
    assert profile["status"] == "succeeded" and profile["profile"]["row_count"] == 3


async def test_a_profile_left_running_by_a_process_that_died_is_computed_again(
    client: Client, config: Config, database_url: str, aiohttp_client: AiohttpClient
) -> None:
    # What a process killed mid-profile leaves: versions claimed, `running`, by its node.
    gone_id, gone_version = await pending_version(client, database_url)
    alive_id, alive_version = await pending_version(client, database_url)
    pool = client.app[DB_POOL]
    await pool.execute("INSERT INTO nodes (node_id) VALUES ('node-alive')")
    claim = (
        "UPDATE dataset_versions SET profile_status = 'running', profile_node = $2 WHERE id = $1"
    )
    await pool.execute(claim, UUID(gone_version), "node-gone")  # never heard from
    await pool.execute(claim, UUID(alive_version), "node-alive")  # still heartbeating
    assert await client.app[profile_jobs.PROFILER].sweep() == 1
    profile = await wait_profile(client, gone_id, 1)
    assert profile["status"] == "succeeded" and profile["profile"]["row_count"] == 3
    resp = await client.get(f"{BASE}/{alive_id}/versions/1/profile", headers=auth())
    assert (await body_of(resp, 200))["data"]["status"] == "running"
    # A process restarting with the node id of one that died takes back that one's claims.
    await pool.execute(claim, UUID(alive_version), config.node_id)
    restarted = await aiohttp_client(create_app(config))
    profile = await wait_profile(restarted, alive_id, 1)
    assert profile["status"] == "succeeded" and profile["profile"]["row_count"] == 3


class StalledStorage:
    """Storage whose reads never deliver: a profile that is still downloading."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()

    async def read(self, key: str) -> AsyncIterator[bytes]:
        self.reading.set()
        await asyncio.Event().wait()
        yield b""


async def test_a_profile_interrupted_by_shutdown_goes_back_to_pending(
    client: Client, database_url: str
) -> None:
    dataset_id, version_id = await pending_version(client, database_url)
    storage = StalledStorage()
    job = asyncio.create_task(
        profile_jobs.run_profile(
            client.app[DB_POOL], cast(Storage, storage), UUID(version_id), "node-test"
        )
    )
    await asyncio.wait_for(storage.reading.wait(), 10)
    resp = await client.get(f"{BASE}/{dataset_id}/versions/1/profile", headers=auth())
    assert (await body_of(resp, 200))["data"]["status"] == "running"
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    resp = await client.get(f"{BASE}/{dataset_id}/versions/1/profile", headers=auth())
    assert (await body_of(resp, 200))["data"] == {
        "status": "pending",
        "profile": None,
        "error": None,
    }


async def test_a_file_changed_in_storage_fails_the_profile(client: Client) -> None:
    storage = client.app[STORAGE]

    async def chunks() -> Any:
        yield b"a\n1\n"

    stored = await storage.write("datasets/x/uploads/y/a.csv", chunks())
    entry = {"name": "a.csv", "storage_key": stored.key, "size_bytes": 4}
    ok = await profiling.profile_files(storage, "tabular", [{**entry, "sha256": stored.sha256}])
    assert ok.status == "succeeded" and ok.row_count == 1
    changed = await profiling.profile_files(storage, "tabular", [{**entry, "sha256": digest(b"")}])
    assert changed.status == "failed"
    assert changed.error == "a.csv: the stored file changed after the version was made"
    missing = {**entry, "storage_key": "datasets/x/gone.csv", "sha256": stored.sha256}
    gone = await profiling.profile_files(storage, "tabular", [missing])
    assert gone.error is not None and gone.error.startswith("a.csv: cannot read the file")


def test_profile_table_edge_cases(tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n")
    profile = profiling.profile_table(header_only)
    assert profile["row_count"] == 0 and profile["warnings"] == []
    assert [c["null_fraction"] for c in profile["columns"]] == [0.0, 0.0]

    infinite = tmp_path / "inf.csv"
    infinite.write_text("x\n1.5\ninf\n-inf\n2.5\n")
    column = profiling.profile_table(infinite)["columns"][0]
    assert (column["min"], column["max"], column["mean"]) == (None, None, None)
    assert sum(column["histogram"]["counts"]) == 2
    json.dumps(column, allow_nan=False)  # PostgreSQL's jsonb refuses NaN and infinities

    unknown = tmp_path / "data"
    unknown.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    assert profiling.profile_table(unknown)["format"] == "jsonl"
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02")
    with pytest.raises(profiling.ProfileError, match="format not supported"):
        profiling.profile_table(binary)
