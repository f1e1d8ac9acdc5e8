"""The datasets API on GCS storage (the in-process emulator): multipart and signed-URL uploads,
versions with `gs://` URIs and digests, and profiles read back from the bucket."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpClient
from yarl import URL

from runtime.app import create_app
from runtime.config import Config
from runtime.keys import STORAGE
from runtime.storage.gcs import GcsStorage
from tests.conftest import Client, auth
from tests.gcs import (
    emulator,
    object_names,
    query_of,
    service_account_info,
    use_emulator,
    verify_v4_url,
)
from tests.test_datasets import BASE, body_of, digest, make_dataset, upload, wait_profile

BUCKET = "bucket"
STORAGE_URL = f"gs://{BUCKET}/stepwell"
Signer = tuple[dict[str, str], rsa.RSAPublicKey]


def csv_rows(rows: int) -> bytes:
    return b"id,score\n" + b"".join(b"%d,%d\n" % (i, i % 97) for i in range(rows))


BIG_ROWS = 300_000
BIG_CSV = csv_rows(BIG_ROWS)  # about 3 MB: over the app's 2 MB body limit


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[tuple[str, Any]]:
    with emulator(BUCKET) as running:
        yield running


@pytest.fixture(scope="module")
def signer() -> Signer:
    return service_account_info()


@pytest.fixture
def gcs_url(
    gcs_server: tuple[str, Any], signer: Signer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[str]:
    """The emulator, empty after the test, and the environment that points Stepwell at it."""
    url, server = gcs_server
    use_emulator(monkeypatch, url, signer[0], tmp_path / "signer.json")
    yield url
    server.wipe(keep_buckets=True)


@pytest.fixture
async def client(gcs_url: str, config: Config, aiohttp_client: AiohttpClient) -> Client:
    """The app with `STEPWELL_STORAGE=gs://bucket/stepwell` (replaces conftest's client)."""
    return await aiohttp_client(create_app(replace(config, storage_url=STORAGE_URL)))


def gcs_of(client: Client) -> GcsStorage:
    storage = client.app[STORAGE]
    assert isinstance(storage, GcsStorage)
    return storage


async def stored_bytes(client: Client, key: str) -> bytes:
    return b"".join([chunk async for chunk in gcs_of(client).read(key)])


async def bucket_names(client: Client) -> list[str]:
    return await asyncio.to_thread(object_names, gcs_of(client).client, BUCKET)


async def make_version(client: Client, dataset_id: str, upload_id: str) -> aiohttp.ClientResponse:
    return await client.post(
        f"{BASE}/{dataset_id}/versions", json={"upload_id": upload_id}, headers=auth()
    )


async def test_multipart_upload_streams_to_gcs_and_versions_name_gs_uris(client: Client) -> None:
    assert len(BIG_CSV) > 2 * 1024 * 1024
    dataset = await make_dataset(client)
    small = csv_rows(3)
    resp = await upload(client, dataset["id"], {"big.csv": BIG_CSV, "small.csv": small})
    uploaded = (await body_of(resp, 201))["data"]
    by_name = {f["name"]: f for f in uploaded["files"]}
    assert by_name["big.csv"]["size_bytes"] == len(BIG_CSV)
    assert by_name["big.csv"]["sha256"] == digest(BIG_CSV)
    assert by_name["small.csv"]["sha256"] == digest(small)

    prefix = f"datasets/{dataset['id']}/uploads/{uploaded['upload_id']}"
    assert await bucket_names(client) == [
        f"stepwell/{prefix}/big.csv",
        f"stepwell/{prefix}/small.csv",
    ]
    assert await stored_bytes(client, f"{prefix}/big.csv") == BIG_CSV

    version = (
        await body_of(await make_version(client, dataset["id"], uploaded["upload_id"]), 201)
    )["data"]
    assert [(f["name"], f["uri"], f["size_bytes"], f["sha256"]) for f in version["files"]] == [
        ("big.csv", f"gs://{BUCKET}/stepwell/{prefix}/big.csv", len(BIG_CSV), digest(BIG_CSV)),
        ("small.csv", f"gs://{BUCKET}/stepwell/{prefix}/small.csv", len(small), digest(small)),
    ]
    assert version["size_bytes"] == len(BIG_CSV) + len(small)
    lines = f"big.csv {digest(BIG_CSV)}\nsmall.csv {digest(small)}\n"
    assert version["total_digest"] == digest(lines.encode())

    # The background profile reads both files back from the bucket.
    profile = await wait_profile(client, dataset["id"], 1)
    assert profile["status"] == "succeeded", profile
    assert profile["profile"]["row_count"] == BIG_ROWS + 3
    resp = await client.get(f"{BASE}/{dataset['id']}/versions/1", headers=auth())
    assert (await body_of(resp, 200))["data"]["row_count"] == BIG_ROWS + 3


async def signed_upload(client: Client, dataset_id: str, *names: str) -> dict[str, Any]:
    files = [{"name": name, "content_type": "text/csv"} for name in names]
    resp = await client.post(f"{BASE}/{dataset_id}/upload", json={"files": files}, headers=auth())
    data: dict[str, Any] = (await body_of(resp, 201))["data"]
    return data


async def put_signed(entry: dict[str, Any], content: bytes) -> None:
    """PUT the bytes straight to the bucket through the signed URL, as a browser would.

    Under STORAGE_EMULATOR_HOST the client signs for the endpoint it talks to, so the URL
    already names the emulator: no host rewriting. `encoded=True` keeps the signed query
    exactly as signed.
    """
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            URL(entry["upload_url"], encoded=True),
            data=io.BytesIO(content),
            headers=entry["headers"],
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_signed_url_upload_goes_straight_to_gcs_and_is_digested_for_the_version(
    client: Client, gcs_url: str, signer: Signer
) -> None:
    dataset = await make_dataset(client)
    uploaded = await signed_upload(client, dataset["id"], "train.csv", "test.csv")
    contents = {"train.csv": BIG_CSV, "test.csv": csv_rows(5)}
    prefix = f"datasets/{dataset['id']}/uploads/{uploaded['upload_id']}"
    for entry in uploaded["files"]:
        url = entry["upload_url"]
        assert entry["method"] == "PUT" and entry["headers"] == {"Content-Type": "text/csv"}
        assert url.startswith(f"{gcs_url}/{BUCKET}/stepwell/{prefix}/{entry['name']}?")
        # A V4 URL signed by the STEPWELL_GCS_SIGNING_KEY_FILE account, covering the content
        # type (the emulator ignores signatures, so this is what proves GCS would accept it).
        verify_v4_url(url, "PUT", signer[1], entry["headers"])
        assert query_of(url)["X-Goog-Expires"] == "3600"  # the upload's hour
        await put_signed(entry, contents[entry["name"]])
    assert await bucket_names(client) == [
        f"stepwell/{prefix}/test.csv",
        f"stepwell/{prefix}/train.csv",
    ]

    resp = await make_version(client, dataset["id"], uploaded["upload_id"])
    version = (await body_of(resp, 201))["data"]
    assert {f["name"]: (f["uri"], f["size_bytes"], f["sha256"]) for f in version["files"]} == {
        name: (f"gs://{BUCKET}/stepwell/{prefix}/{name}", len(content), digest(content))
        for name, content in contents.items()
    }
    lines = "".join(sorted(f"{n} {digest(c)}\n" for n, c in contents.items()))
    assert version["total_digest"] == digest(lines.encode())
    assert version["size_bytes"] == sum(len(c) for c in contents.values())

    profile = await wait_profile(client, dataset["id"], 1)
    assert profile["status"] == "succeeded", profile
    assert profile["profile"]["row_count"] == BIG_ROWS + 5
    files = {f["name"]: f for f in profile["profile"]["files"]}
    assert [c["name"] for c in files["train.csv"]["columns"]] == ["id", "score"]


async def test_a_version_whose_signed_file_never_arrived_is_422_until_it_does(
    client: Client,
) -> None:
    dataset = await make_dataset(client)
    uploaded = await signed_upload(client, dataset["id"], "here.csv", "never.csv")
    entries = {e["name"]: e for e in uploaded["files"]}
    await put_signed(entries["here.csv"], csv_rows(2))

    resp = await make_version(client, dataset["id"], uploaded["upload_id"])
    error = (await body_of(resp, 422))["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "'never.csv'" in error["message"] and "here.csv" not in error["message"]
    assert error["details"]["missing_files"] == ["never.csv"]
    resp = await client.get(f"{BASE}/{dataset['id']}/versions", headers=auth())
    assert (await body_of(resp, 200))["data"] == []

    # The upload stays open: once the last file is in, it makes the version.
    await put_signed(entries["never.csv"], csv_rows(4))
    resp = await make_version(client, dataset["id"], uploaded["upload_id"])
    version = (await body_of(resp, 201))["data"]
    assert [(f["name"], f["size_bytes"]) for f in version["files"]] == [
        ("here.csv", len(csv_rows(2))),
        ("never.csv", len(csv_rows(4))),
    ]
