"""The datasets API against the real database and local storage: CRUD and ownership, uploads
by multipart and by signed URL, versions and their digests."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import asyncpg

from runtime.config import Config
from tests.conftest import Client, auth

BASE = "/api/v1/datasets"
BIG = 3 * 1024 * 1024  # over the app's 2 MB body limit, which must not apply to uploads


async def body_of(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def make_dataset(client: Client, user: str = "alice", **fields: Any) -> dict[str, Any]:
    resp = await client.post(BASE, json={"name": "churn", **fields}, headers=auth(user))
    data: dict[str, Any] = (await body_of(resp, 201))["data"]
    return data


def form(files: dict[str, bytes], content_type: str = "text/csv") -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, content in files.items():
        data.add_field("file", io.BytesIO(content), filename=name, content_type=content_type)
    return data


async def upload(
    client: Client, dataset_id: str, files: dict[str, bytes], user: str = "alice"
) -> aiohttp.ClientResponse:
    return await client.post(f"{BASE}/{dataset_id}/upload", data=form(files), headers=auth(user))


async def make_version(
    client: Client, dataset_id: str, files: dict[str, bytes], user: str = "alice"
) -> dict[str, Any]:
    """Upload files by multipart and make a version of them."""
    uploaded = (await body_of(await upload(client, dataset_id, files, user), 201))["data"]
    resp = await client.post(
        f"{BASE}/{dataset_id}/versions",
        json={"upload_id": uploaded["upload_id"], "description": "made in a test"},
        headers=auth(user),
    )
    data: dict[str, Any] = (await body_of(resp, 201))["data"]
    return data


async def wait_profile(
    client: Client, dataset_id: str, version: int, user: str = "alice", within_s: float = 30.0
) -> dict[str, Any]:
    """Poll the profile endpoint until the background job has finished."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        resp = await client.get(
            f"{BASE}/{dataset_id}/versions/{version}/profile", headers=auth(user)
        )
        data: dict[str, Any] = (await body_of(resp, 200))["data"]
        if data["status"] in ("succeeded", "failed"):
            return data
        assert asyncio.get_running_loop().time() < deadline, f"profile stayed {data['status']}"
        await asyncio.sleep(0.05)


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def stored_files(config: Config) -> list[Path]:
    return [p for p in (config.data_dir / "storage").rglob("*") if p.is_file()]


async def test_create_list_get_and_soft_delete(client: Client) -> None:
    first = await make_dataset(client, description="monthly", dataset_type="time-series")
    assert first["owner_id"] == first["created_by"] == "alice" and first["status"] == "active"
    second = await make_dataset(client, name="Images of cats", dataset_type="image")
    await make_dataset(client, user="bob", name="bob's")
    assert (await make_dataset(client, name="plain"))["dataset_type"] == "tabular"

    resp = await client.get(BASE, headers=auth())
    assert (await body_of(resp, 200))["pagination"] == {"page": 1, "limit": 20, "total": 3}
    resp = await client.get(f"{BASE}?name=CATS", headers=auth())
    assert [d["id"] for d in (await body_of(resp, 200))["data"]] == [second["id"]]
    resp = await client.get(f"{BASE}?dataset_type=time-series&limit=1", headers=auth())
    assert [d["id"] for d in (await body_of(resp, 200))["data"]] == [first["id"]]
    resp = await client.get(f"{BASE}/{first['id']}", headers=auth())
    assert (await body_of(resp, 200))["data"]["description"] == "monthly"

    resp = await client.delete(f"{BASE}/{first['id']}", headers=auth())
    assert resp.status == 204
    for resp in (
        await client.get(f"{BASE}/{first['id']}", headers=auth()),
        await client.delete(f"{BASE}/{first['id']}", headers=auth()),
        await client.get(f"{BASE}/{first['id']}/versions", headers=auth()),
        await upload(client, first["id"], {"a.csv": b"x\n1\n"}),
    ):
        assert (await body_of(resp, 404))["error"]["code"] == "NOT_FOUND"
    resp = await client.get(BASE, headers=auth())
    assert first["id"] not in [d["id"] for d in (await body_of(resp, 200))["data"]]

    resp = await client.get(f"/api/v1/audit-logs?entity_id={first['id']}", headers=auth())
    actions = {e["action"] for e in (await body_of(resp, 200))["data"]}
    assert actions == {"create", "delete"}


async def test_create_rejects_bad_input(client: Client) -> None:
    for body in ({}, {"name": ""}, {"name": "x" * 201}, {"name": "x", "dataset_type": "audio"}):
        resp = await client.post(BASE, json=body, headers=auth())
        assert (await body_of(resp, 422))["error"]["code"] == "VALIDATION_ERROR", body
    resp = await client.get(f"{BASE}?dataset_type=audio", headers=auth())
    assert resp.status == 422


async def test_another_users_dataset_is_not_found_but_admins_see_it(client: Client) -> None:
    dataset = await make_dataset(client)
    version = await make_version(client, dataset["id"], {"a.csv": b"x\n1\n"})
    path = f"{BASE}/{dataset['id']}"
    for method, url in (
        ("GET", path),
        ("DELETE", path),
        ("GET", f"{path}/versions"),
        ("GET", f"{path}/versions/1"),
        ("GET", f"{path}/versions/1/profile"),
    ):
        resp = await client.request(method, url, headers=auth("bob"))
        assert resp.status == 404, (method, url)
    resp = await upload(client, dataset["id"], {"b.csv": b"x\n1\n"}, user="bob")
    assert resp.status == 404
    resp = await client.post(
        f"{path}/versions", json={"upload_id": version["id"]}, headers=auth("bob")
    )
    assert resp.status == 404
    resp = await client.get(BASE, headers=auth("bob"))
    assert (await body_of(resp, 200))["data"] == []

    admin = auth("root", "admin")
    assert (await client.get(path, headers=admin)).status == 200
    resp = await client.get(BASE, headers=admin)
    assert [d["id"] for d in (await body_of(resp, 200))["data"]] == [dataset["id"]]


async def test_multipart_upload_streams_large_files_and_versions_digest_them(
    client: Client, config: Config
) -> None:
    dataset = await make_dataset(client)
    big, small = os.urandom(BIG), b"a,b\n1,2\n"
    resp = await upload(client, dataset["id"], {"train.bin": big, "labels.csv": small})
    uploaded = (await body_of(resp, 201))["data"]
    by_name = {f["name"]: f for f in uploaded["files"]}
    assert by_name["train.bin"]["size_bytes"] == BIG
    assert by_name["train.bin"]["sha256"] == digest(big)
    assert by_name["labels.csv"]["sha256"] == digest(small)
    key = by_name["train.bin"]["storage_key"]
    assert key == f"datasets/{dataset['id']}/uploads/{uploaded['upload_id']}/train.bin"
    assert (config.data_dir / "storage" / key).read_bytes() == big

    resp = await client.post(
        f"{BASE}/{dataset['id']}/versions",
        json={"upload_id": uploaded["upload_id"], "description": "first"},
        headers=auth(),
    )
    version = (await body_of(resp, 201))["data"]
    assert version["version"] == 1 and version["created_by"] == "alice"
    assert version["description"] == "first"
    assert [f["name"] for f in version["files"]] == ["labels.csv", "train.bin"]
    assert version["files"][1]["size_bytes"] == BIG
    assert version["files"][1]["sha256"] == digest(big)
    assert version["files"][1]["uri"] == (config.data_dir / "storage" / key).resolve().as_uri()
    assert version["size_bytes"] == BIG + len(small)
    lines = f"labels.csv {digest(small)}\ntrain.bin {digest(big)}\n"
    assert version["total_digest"] == digest(lines.encode())

    # The same upload cannot make a second version.
    resp = await client.post(
        f"{BASE}/{dataset['id']}/versions",
        json={"upload_id": uploaded["upload_id"]},
        headers=auth(),
    )
    assert (await body_of(resp, 409))["error"]["code"] == "CONFLICT"


async def test_versions_are_numbered_and_listed_newest_first(client: Client) -> None:
    dataset = await make_dataset(client)
    one = await make_version(client, dataset["id"], {"a.csv": b"x\n1\n"})
    two = await make_version(client, dataset["id"], {"a.csv": b"x\n2\n"})
    assert (one["version"], two["version"]) == (1, 2)
    assert one["total_digest"] != two["total_digest"]
    resp = await client.get(f"{BASE}/{dataset['id']}/versions", headers=auth())
    listed = await body_of(resp, 200)
    assert [v["version"] for v in listed["data"]] == [2, 1]
    assert listed["pagination"]["total"] == 2
    resp = await client.get(f"{BASE}/{dataset['id']}/versions?limit=1&page=2", headers=auth())
    assert [v["version"] for v in (await body_of(resp, 200))["data"]] == [1]
    resp = await client.get(f"{BASE}/{dataset['id']}/versions/2", headers=auth())
    got = (await body_of(resp, 200))["data"]
    assert got["id"] == two["id"] and got["profile_status"] in ("pending", "running", "succeeded")
    assert (await client.get(f"{BASE}/{dataset['id']}/versions/3", headers=auth())).status == 404
    assert (await client.get(f"{BASE}/{dataset['id']}/versions/x", headers=auth())).status == 422

    resp = await client.get(f"/api/v1/audit-logs?entity_id={dataset['id']}", headers=auth())
    actions = sorted(e["action"] for e in (await body_of(resp, 200))["data"])
    assert actions == ["create", "create_version", "create_version", "upload", "upload"]


async def test_uploads_and_versions_without_files_are_refused(
    client: Client, database_url: str
) -> None:
    dataset = await make_dataset(client)
    url = f"{BASE}/{dataset['id']}/upload"
    empty = aiohttp.MultipartWriter("form-data")
    resp = await client.post(url, data=empty, headers=auth())
    assert "no files" in (await body_of(resp, 422))["error"]["message"]
    resp = await client.post(url, json={"files": []}, headers=auth())
    assert (await body_of(resp, 422))["error"]["details"]["fields"] == {
        "files": ["Length must be between 1 and 1000."]
    }
    fields_only = aiohttp.MultipartWriter("form-data")
    fields_only.append("text, not a file").set_content_disposition("form-data", name="note")
    resp = await client.post(url, data=fields_only, headers=auth())
    assert "must be a file" in (await body_of(resp, 422))["error"]["message"]

    # An upload with no files can only come from outside the API; it still makes no version.
    conn = await asyncpg.connect(database_url)
    try:
        upload_id = await conn.fetchval(
            "INSERT INTO dataset_uploads (dataset_id, method, created_by, expires_at)"
            " VALUES ($1, 'multipart', 'alice', now() + interval '1 hour') RETURNING id",
            dataset["id"],
        )
    finally:
        await conn.close()
    versions = f"{BASE}/{dataset['id']}/versions"
    resp = await client.post(versions, json={"upload_id": str(upload_id)}, headers=auth())
    assert "no files" in (await body_of(resp, 422))["error"]["message"]
    for body in ({}, {"upload_id": "nope"}, {"upload_id": dataset["id"]}):
        resp = await client.post(versions, json=body, headers=auth())
        assert resp.status == 422, body
    resp = await client.get(versions, headers=auth())
    assert (await body_of(resp, 200))["data"] == []


async def test_unsafe_or_repeated_file_names_are_refused_and_nothing_is_kept(
    client: Client, config: Config
) -> None:
    dataset = await make_dataset(client)
    for name in ("../evil.csv", "a/b.csv", "a\\b.csv", "..", ".", ".hidden", "tab\there"):
        resp = await upload(client, dataset["id"], {"good.csv": b"x\n1\n", name: b"x\n"})
        error = (await body_of(resp, 422))["error"]
        assert error["details"]["file"] == name, error
        resp = await client.post(
            f"{BASE}/{dataset['id']}/upload", json={"files": [{"name": name}]}, headers=auth()
        )
        assert resp.status == 422, name
    repeated = form({"a.csv": b"1"})
    repeated.add_field("file", io.BytesIO(b"2"), filename="a.csv")
    resp = await client.post(f"{BASE}/{dataset['id']}/upload", data=repeated, headers=auth())
    assert "twice" in (await body_of(resp, 422))["error"]["message"]
    resp = await client.post(
        f"{BASE}/{dataset['id']}/upload",
        json={"files": [{"name": "a.csv"}, {"name": "a.csv"}]},
        headers=auth(),
    )
    assert resp.status == 422
    assert stored_files(config) == []  # the good files streamed before the bad one are gone


async def test_file_names_keep_spaces_dots_and_accents(client: Client) -> None:
    dataset = await make_dataset(client)
    names = ["données 100%.csv", "my data..v2.csv"]
    resp = await upload(client, dataset["id"], dict.fromkeys(names, b"x\n1\n"))
    assert sorted(f["name"] for f in (await body_of(resp, 201))["data"]["files"]) == names


async def test_upload_takes_only_multipart_or_json(client: Client) -> None:
    dataset = await make_dataset(client)
    url = f"{BASE}/{dataset['id']}/upload"
    resp = await client.post(url, data=b"a,b\n", headers={**auth(), "Content-Type": "text/csv"})
    assert (await body_of(resp, 415))["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    headers = {**auth(), "Content-Type": "multipart/form-data"}  # no boundary
    resp = await client.post(url, data=b"--x\r\n", headers=headers)
    assert (await body_of(resp, 400))["error"]["code"] == "BAD_REQUEST"


async def signed_upload(client: Client, dataset_id: str, *names: str) -> dict[str, Any]:
    files = [{"name": name, "content_type": "text/csv"} for name in names]
    resp = await client.post(f"{BASE}/{dataset_id}/upload", json={"files": files}, headers=auth())
    data: dict[str, Any] = (await body_of(resp, 201))["data"]
    return data


def key_of(upload_url: str) -> str:
    """The storage key a local signed URL points at, after checking it is signed for a PUT."""
    parts = urlsplit(upload_url)
    assert parts.path.startswith("/storage/")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["method"] == "PUT"
    return unquote(parts.path.removeprefix("/storage/"))


async def test_signed_url_upload_end_to_end(client: Client) -> None:
    dataset = await make_dataset(client)
    uploaded = await signed_upload(client, dataset["id"], "train.csv", "test.csv")
    expires = datetime.fromisoformat(uploaded["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(expires.tzinfo) <= timedelta(hours=1)
    contents = {"train.csv": b"x,y\n1,2\n3,4\n", "test.csv": b"x,y\n5,6\n" + b"7,8\n" * (BIG // 4)}
    for entry in uploaded["files"]:
        assert entry["method"] == "PUT"
        assert entry["headers"] == {"Content-Type": "text/csv"}
        key = key_of(entry["upload_url"])
        assert key == f"datasets/{dataset['id']}/uploads/{uploaded['upload_id']}/{entry['name']}"
        resp = await put_signed(client, entry, contents[entry["name"]])
        assert (await body_of(resp, 200))["data"]["sha256"] == digest(contents[entry["name"]])

    resp = await client.post(
        f"{BASE}/{dataset['id']}/versions",
        json={"upload_id": uploaded["upload_id"]},
        headers=auth(),
    )
    version = (await body_of(resp, 201))["data"]
    assert {f["name"]: (f["size_bytes"], f["sha256"]) for f in version["files"]} == {
        name: (len(content), digest(content)) for name, content in contents.items()
    }
    profile = await wait_profile(client, dataset["id"], 1)
    assert profile["status"] == "succeeded" and profile["profile"]["row_count"] == 3 + BIG // 4


async def put_signed(
    client: Client, entry: dict[str, Any], content: bytes
) -> aiohttp.ClientResponse:
    """PUT the bytes as a client would, on the signed URL's path (the test server's port
    differs from the public URL the backend signs for)."""
    parts = urlsplit(entry["upload_url"])
    return await client.put(
        f"{parts.path}?{parts.query}", data=io.BytesIO(content), headers=entry["headers"]
    )


async def test_version_from_a_signed_upload_missing_a_file_names_it(client: Client) -> None:
    dataset = await make_dataset(client)
    uploaded = await signed_upload(client, dataset["id"], "here.csv", "never.csv")
    here = next(f for f in uploaded["files"] if f["name"] == "here.csv")
    assert (await put_signed(client, here, b"x\n1\n")).status == 200
    resp = await client.post(
        f"{BASE}/{dataset['id']}/versions",
        json={"upload_id": uploaded["upload_id"]},
        headers=auth(),
    )
    error = (await body_of(resp, 422))["error"]
    assert "'never.csv'" in error["message"] and "here.csv" not in error["message"]
    assert error["details"]["missing_files"] == ["never.csv"]
    resp = await client.get(f"{BASE}/{dataset['id']}/versions", headers=auth())
    assert (await body_of(resp, 200))["data"] == []


async def test_multipart_upload_with_an_idempotency_key(client: Client) -> None:
    dataset = await make_dataset(client)
    headers = {**auth(), "X-Idempotency-Key": "upload-1"}
    resp = await client.post(
        f"{BASE}/{dataset['id']}/upload", data=form({"a.csv": os.urandom(BIG)}), headers=headers
    )
    assert resp.status == 201, await resp.text()
