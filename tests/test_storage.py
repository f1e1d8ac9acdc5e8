"""Storage: both backends behave alike; local signed URLs over real HTTP; GCS on an emulator."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud.storage.fileio import BlobWriter  # type: ignore[import-untyped]
from pytest_aiohttp import AiohttpClient
from yarl import URL

from runtime.app import create_app
from runtime.config import Config, ConfigError
from runtime.keys import STORAGE
from runtime.storage import build_storage
from runtime.storage.base import ObjectMissing, Storage, StorageError
from runtime.storage.gcs import MAX_SIGNED_URL_S, GcsStorage, _Upload
from runtime.storage.local import LocalStorage, open_in_thread
from tests.conftest import Client
from tests.gcs import emulator, object_names, query_of, service_account_info, verify_v4_url

BUCKET = "bucket"
SMALL_CHUNK = 256 * 1024  # the smallest resumable chunk: multi-chunk uploads with little data
BAD_KEYS = ["", "/abs", "a/../b", "..", "a//b", "a/./b", "dir/", "a\\b", "a\nb"]


async def chunks_of(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing_after(data: bytes) -> AsyncIterator[bytes]:
    """A stream that breaks after sending `data`, like a client that disconnects."""
    async for chunk in chunks_of(data):
        yield chunk
    raise ConnectionResetError("client went away")


async def read_all(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key)])


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def signer() -> tuple[dict[str, str], rsa.RSAPublicKey]:
    return service_account_info()


@pytest.fixture
def signing_key_file(tmp_path: Path, signer: tuple[dict[str, str], Any]) -> str:
    path = tmp_path / "signer.json"
    path.write_text(json.dumps(signer[0]))
    return str(path)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[tuple[str, Any]]:
    with emulator(BUCKET) as running:
        yield running


@pytest.fixture
def gcs_emulator(
    gcs_server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch, signing_key_file: str
) -> Iterator[str]:
    """The emulator, empty, and the environment Stepwell reads to use it."""
    url, server = gcs_server
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setenv("STEPWELL_GCS_SIGNING_KEY_FILE", signing_key_file)
    yield url
    server.wipe(keep_buckets=True)


@pytest.fixture
async def gcs(gcs_emulator: str) -> AsyncIterator[GcsStorage]:
    """GcsStorage as `STEPWELL_STORAGE=gs://bucket/stepwell` builds it, with small chunks."""
    storage = build_storage(f"gs://{BUCKET}/stepwell", "unused", "secret", "http://unused")
    assert isinstance(storage, GcsStorage)
    storage.transfer_chunk_bytes = SMALL_CHUNK
    yield storage
    await storage.aclose()


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    storage = build_storage(None, str(tmp_path), "secret", "http://stepwell.test")
    assert isinstance(storage, LocalStorage)
    return storage


@pytest.fixture(params=["local", "gcs"])
def backend(request: pytest.FixtureRequest) -> Storage:
    """Each backend in turn: the contract must hold on both."""
    storage: Storage = request.getfixturevalue(request.param)
    return storage


# --- the contract, on both backends ---------------------------------------------------------


async def test_write_read_describe_delete_round_trip(backend: Storage) -> None:
    data = os.urandom(3 * SMALL_CHUNK + 12345)  # several resumable chunks and a short tail
    stored = await backend.write("datasets/d1/train.csv", chunks_of(data), "text/csv")

    assert (stored.size_bytes, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert await backend.exists("datasets/d1/train.csv")
    assert await read_all(backend, "datasets/d1/train.csv") == data
    described = await backend.describe("datasets/d1/train.csv")
    assert (described.size_bytes, described.sha256) == (stored.size_bytes, stored.sha256)
    assert described.uri == stored.uri == backend.uri("datasets/d1/train.csv")

    await backend.delete("datasets/d1/train.csv")
    assert not await backend.exists("datasets/d1/train.csv")
    with pytest.raises(ObjectMissing):
        await read_all(backend, "datasets/d1/train.csv")
    await backend.delete("datasets/d1/train.csv")  # deleting again is not an error


async def test_overwrite_replaces_and_empty_objects_work(backend: Storage) -> None:
    await backend.write("k", chunks_of(b"first version, longer"))
    await backend.write("k", chunks_of(b"second"))
    assert await read_all(backend, "k") == b"second"

    empty = await backend.write("empty", chunks_of(b""))
    assert empty.size_bytes == 0
    assert empty.sha256 == hashlib.sha256(b"").hexdigest()
    assert await read_all(backend, "empty") == b""


async def test_a_broken_stream_stores_nothing(backend: Storage) -> None:
    await backend.write("k", chunks_of(b"the good version"))
    # More than one resumable chunk goes out before the stream breaks.
    with pytest.raises(ConnectionResetError):
        await backend.write("k", failing_after(os.urandom(2 * SMALL_CHUNK + 1)))
    with pytest.raises(ConnectionResetError):
        await backend.write("new", failing_after(os.urandom(2 * SMALL_CHUNK + 1)))

    assert await read_all(backend, "k") == b"the good version"
    assert not await backend.exists("new")


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_unsafe_keys_are_refused(backend: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        await backend.write(key, chunks_of(b"x"))
    with pytest.raises(StorageError, match="invalid storage key"):
        await backend.signed_url(key, "GET", 60)


async def test_missing_object_is_object_missing(backend: Storage) -> None:
    with pytest.raises(ObjectMissing):
        await backend.describe("nothing/here")


async def test_uris_name_the_backend(local: LocalStorage, gcs: GcsStorage) -> None:
    assert local.uri("a/b.csv") == (local.root / "a" / "b.csv").as_uri()
    assert gcs.uri("a/b.csv") == "gs://bucket/stepwell/a/b.csv"


async def test_local_key_clashing_with_a_folder_is_a_storage_error(local: LocalStorage) -> None:
    await local.write("a/b", chunks_of(b"x"))
    with pytest.raises(StorageError, match="clashes"):
        await local.write("a", chunks_of(b"y"))
    with pytest.raises(StorageError, match="clashes"):
        await local.write("a/b/c", chunks_of(b"y"))
    with pytest.raises(ObjectMissing):
        await read_all(local, "a")


async def test_cancelling_an_open_leaks_no_file_or_handle(tmp_path: Path) -> None:
    """A cancelled await leaves its thread running: what it opens must still be closed."""
    for attempt in range(20):
        path = tmp_path / f"partial-{attempt}"
        task = asyncio.create_task(open_in_thread(path, "wb"))
        for _ in range(attempt % 3):  # cancel at different points of the open
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Let every open still running in a worker thread finish (and its clean-up callback run)
    # before looking: on a busy machine a thread may open its file after the checks start.
    await asyncio.get_running_loop().shutdown_default_executor()
    assert await eventually(lambda: not list(tmp_path.iterdir()))
    gc.collect()  # a leaked handle would raise its ResourceWarning here


# --- local signed URLs over HTTP ------------------------------------------------------------


def app_storage(client: Client) -> LocalStorage:
    storage = client.app[STORAGE]
    assert isinstance(storage, LocalStorage)
    return storage


def relative(url: str) -> str:
    """A signed URL's path and query, to send to the test server (the host is the public one)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def generated_body(size: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    """A body made chunk by chunk (sent with chunked transfer encoding)."""
    for start in range(0, size, chunk):
        yield bytes([start // chunk % 251]) * min(chunk, size - start)


@pytest.mark.parametrize("body_kind", ["bytesio", "generator"])
async def test_signed_put_then_signed_get_streams_large_bodies(
    client: Client, body_kind: str
) -> None:
    storage = app_storage(client)
    size = 9 * 1024 * 1024 + 7  # well above the app's 2 MB client_max_size
    expected = b"".join([c async for c in generated_body(size)])
    body: Any = io.BytesIO(expected) if body_kind == "bytesio" else generated_body(size)

    put_url = await storage.signed_url("datasets/d1/big.bin", "PUT", 300)
    assert put_url.startswith("http://localhost:8080/storage/datasets/d1/big.bin?")
    resp = await client.put(relative(put_url), data=body)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["data"] == {
        "key": "datasets/d1/big.bin",
        "size_bytes": size,
        "sha256": hashlib.sha256(expected).hexdigest(),
    }

    get_url = await storage.signed_url("datasets/d1/big.bin", "GET", 300)
    resp = await client.get(relative(get_url))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Length"] == str(size)
    assert await resp.read() == expected


async def test_keys_with_spaces_and_unicode_survive_the_url(client: Client) -> None:
    storage = app_storage(client)
    key = "models/m 1/weights é #1?.bin"
    resp = await client.put(relative(await storage.signed_url(key, "PUT", 60)), data=b"w")
    assert resp.status == 200, await resp.text()
    assert await read_all(storage, key) == b"w"
    resp = await client.get(relative(await storage.signed_url(key, "GET", 60)))
    assert await resp.read() == b"w"


def tampered(url: str, **changes: str) -> str:
    """The URL with some query parameters replaced."""
    return str(URL(relative(url)).update_query(changes))


async def assert_forbidden(resp: aiohttp.ClientResponse, message: str) -> None:
    assert resp.status == 403, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "FORBIDDEN"
    assert message in error["message"]
    assert resp.headers["X-Request-ID"] == error["request_id"]


async def test_tampered_wrong_method_expired_and_unsigned_urls_are_403(client: Client) -> None:
    storage = app_storage(client)
    put_url = await storage.signed_url("k.bin", "PUT", 60)
    signature = query_of(put_url)["signature"]
    forged = ("0" if signature[0] != "0" else "1") + signature[1:]
    cases = [
        (tampered(put_url, signature=forged), "does not match"),
        (tampered(put_url, signature="é" * 64), "does not match"),  # not even hex
        (tampered(put_url, expires=str(int(query_of(put_url)["expires"]) + 3600)), "match"),
        (relative(put_url).replace("k.bin", "other.bin"), "does not match"),
        (relative(await storage.signed_url("k.bin", "GET", 60)), "signed for GET"),
        (relative(await storage.signed_url("k.bin", "PUT", -1)), "expired"),
        (tampered(put_url, expires="²"), "expired"),
        ("/storage/k.bin", "needs method, expires and signature"),
    ]
    for url, message in cases:
        await assert_forbidden(await client.put(url, data=b"payload"), message)
    assert not await storage.exists("k.bin")
    assert not await storage.exists("other.bin")

    await storage.write("k.bin", chunks_of(b"secret"))
    await assert_forbidden(await client.get(relative(put_url)), "signed for PUT")
    await assert_forbidden(await client.get("/storage/k.bin"), "needs method")


async def test_dot_dot_keys_never_write_outside(client: Client, tmp_path: Path) -> None:
    storage = app_storage(client)
    escape = "../../escaped.bin"
    expires = int(datetime.now(UTC).timestamp()) + 60
    # A valid HMAC over a bad key (signed_url refuses to make one) still cannot write.
    query = f"method=PUT&expires={expires}&signature={storage.signature(escape, 'PUT', expires)}"
    root = str(client.make_url("/")).rstrip("/")
    for path in (f"/storage/{escape}", "/storage/%2E%2E/%2E%2E/escaped.bin"):
        # An absolute URL with encoded=True: joining a path to the test server's root, as
        # client.put() does, would resolve the dots before anything is sent.
        url = URL(f"{root}{path}?{query}", encoded=True)
        async with client.session.put(url, data=b"x") as resp:
            assert resp.status == 422, await resp.text()
            error = (await resp.json())["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert "invalid storage key" in error["message"]
    assert not list(tmp_path.parent.rglob("escaped.bin"))


async def test_get_of_a_missing_object_is_404(client: Client) -> None:
    storage = app_storage(client)
    resp = await client.get(relative(await storage.signed_url("nope.bin", "GET", 60)))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "NOT_FOUND"


async def send_expecting_continue(client: Client, path_qs: str) -> bytes:
    """Send only the head of a PUT with `Expect: 100-continue`; the first bytes answered."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(
            f"PUT {path_qs} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_expect_continue_refuses_a_bad_url_before_the_body(client: Client) -> None:
    storage = app_storage(client)
    put_url = URL(await storage.signed_url("k.bin", "PUT", 60))

    refused = await send_expecting_continue(client, tampered(str(put_url), expires="1"))
    assert refused.startswith(b"HTTP/1.1 403 ")
    assert b"X-Request-ID: " in refused
    assert (await send_expecting_continue(client, put_url.raw_path_qs)).startswith(
        b"HTTP/1.1 100 Continue"
    )

    # aiohttp's client waits for the 100 before it sends the body.
    resp = await client.put(put_url.raw_path_qs, data=io.BytesIO(b"x" * 1024), expect100=True)
    assert resp.status == 200, await resp.text()
    assert await read_all(storage, "k.bin") == b"x" * 1024
    resp = await client.put(tampered(str(put_url), expires="1"), data=b"x", expect100=True)
    await assert_forbidden(resp, "expired")


async def test_storage_routes_are_public_and_documented(client: Client) -> None:
    spec = await (await client.get("/api/docs/openapi.json")).json()
    path = next(p for p in spec["paths"] if p.startswith("/storage/"))
    for method in ("get", "put"):
        operation = spec["paths"][path][method]
        assert operation["security"] == []
        assert {p["name"] for p in operation["parameters"]} >= {"method", "expires", "signature"}


async def test_storage_routes_are_404_when_storage_is_gcs(
    gcs_emulator: str, config: Config, aiohttp_client: AiohttpClient
) -> None:
    config = replace(config, storage_url="gs://bucket/stepwell")
    client = await aiohttp_client(create_app(config))
    assert isinstance(client.app[STORAGE], GcsStorage)
    resp = await client.put("/storage/k.bin?method=PUT&expires=9999999999&signature=x", data=b"")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "NOT_FOUND"


# --- GCS specifics --------------------------------------------------------------------------


async def test_gcs_objects_live_under_the_prefix(gcs: GcsStorage) -> None:
    await gcs.write("a/b.csv", chunks_of(b"1,2\n"), "text/csv")
    assert object_names(gcs.client) == ["stepwell/a/b.csv"]
    described = await gcs.describe("a/b.csv")
    assert described.content_type == "text/csv"


async def test_gcs_signed_urls_are_v4_and_verify(
    gcs: GcsStorage, signer: tuple[dict[str, str], rsa.RSAPublicKey]
) -> None:
    public_key = signer[1]
    url = await gcs.signed_url("a/b.bin", "PUT", 900, content_type="application/octet-stream")
    params = query_of(url)
    assert params["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert params["X-Goog-Credential"].startswith(signer[0]["client_email"] + "/")
    assert params["X-Goog-Expires"] == "900"
    assert urlsplit(url).path == "/bucket/stepwell/a/b.bin"
    headers = {"Content-Type": "application/octet-stream"}
    verify_v4_url(url, "PUT", public_key, headers)

    # The checker is not a rubber stamp: each change GCS would refuse fails it.
    with pytest.raises(InvalidSignature):
        verify_v4_url(url, "GET", public_key, headers)
    with pytest.raises(InvalidSignature):
        verify_v4_url(url, "PUT", public_key, {"Content-Type": "text/html"})
    with pytest.raises(InvalidSignature):
        verify_v4_url(url.replace("Expires=900", "Expires=901"), "PUT", public_key, headers)
    with pytest.raises(AssertionError, match="content-type"):
        verify_v4_url(url, "PUT", public_key)
    with pytest.raises(AssertionError, match="expired"):
        verify_v4_url(url, "PUT", public_key, headers, now=datetime.now(UTC) + timedelta(hours=1))

    month = await gcs.signed_url("a/b.bin", "GET", 30 * 24 * 3600)
    assert query_of(month)["X-Goog-Expires"] == str(MAX_SIGNED_URL_S)
    verify_v4_url(month, "GET", public_key)


async def test_gcs_signed_put_and_get_through_the_emulator(
    gcs: GcsStorage, signer: tuple[dict[str, str], rsa.RSAPublicKey]
) -> None:
    # The emulator accepts any URL for /<bucket>/<object> without checking the signature,
    # so this proves the URL's shape and host; verify_v4_url proves the signature.
    data = os.urandom(3 * 1024 * 1024)
    put_url = await gcs.signed_url("up/load.bin", "PUT", 60, "application/octet-stream")
    get_url = await gcs.signed_url("up/load.bin", "GET", 60)
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/octet-stream"}
        body = io.BytesIO(data)
        async with session.put(URL(put_url, encoded=True), data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(URL(get_url, encoded=True)) as resp:
            assert resp.status == 200
            assert await resp.read() == data
    described = await gcs.describe("up/load.bin")
    assert described.sha256 == hashlib.sha256(data).hexdigest()


async def test_gcs_without_signing_credentials_says_how_to_fix_it(
    gcs_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STEPWELL_GCS_SIGNING_KEY_FILE")
    storage = build_storage(f"gs://{BUCKET}", "unused", "secret", "http://unused")
    assert isinstance(storage, GcsStorage)
    try:
        with pytest.raises(StorageError, match="STEPWELL_GCS_SIGNING_KEY_FILE"):
            await storage.signed_url("k", "GET", 60)
        await storage.write("k", chunks_of(b"no prefix"))
        assert object_names(storage.client) == ["k"]
    finally:
        await storage.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://", "no valid bucket"),
        ("gs:///prefix", "no valid bucket"),
        ("gs://Upper/prefix", "no valid bucket"),
        ("gs://b", "no valid bucket"),  # too short: 3 characters at least
        ("gs://bucket/a/../b", "invalid prefix"),
        ("s3://bucket/prefix", "unsupported STEPWELL_STORAGE"),
    ],
)
def test_malformed_storage_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_storage(url, "unused", "secret", "http://unused")


def test_an_unreadable_signing_key_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    monkeypatch.setenv("STEPWELL_GCS_SIGNING_KEY_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="STEPWELL_GCS_SIGNING_KEY_FILE"):
        build_storage("gs://bucket", "unused", "secret", "http://unused")


async def test_gcs_cancelled_upload_leaves_no_object(gcs: GcsStorage) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(2 * SMALL_CHUNK)  # two chunks go to the emulator
        started.set()
        await asyncio.sleep(60)
        yield b"never"

    task = asyncio.create_task(gcs.write("cancelled.bin", slow()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert object_names(gcs.client) == []


@pytest.fixture
async def served(config: Config) -> AsyncIterator[tuple[LocalStorage, str, int]]:
    """The app served as `stepwell serve` does (handlers are not cancelled when a client
    disconnects; the test client's server cancels them): (storage, host, port)."""
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        storage = runner.app[STORAGE]
        assert isinstance(storage, LocalStorage)
        host, port = runner.addresses[0][:2]
        yield storage, host, port
    finally:
        await runner.cleanup()


@pytest.fixture(params=["served", "client"])
def upload_target(request: pytest.FixtureRequest) -> tuple[str, LocalStorage, str, int]:
    """Where to upload: (kind, storage, host, port) of the served app or the test client."""
    if request.param == "served":
        served: tuple[LocalStorage, str, int] = request.getfixturevalue("served")
        return ("served", *served)
    test_client: Client = request.getfixturevalue("client")
    assert test_client.port is not None
    return "client", app_storage(test_client), test_client.host, test_client.port


async def test_a_client_that_disconnects_mid_upload_leaves_nothing(
    upload_target: tuple[str, LocalStorage, str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stepwell.access")
    server, storage, host, port = upload_target
    url = URL(await storage.signed_url("cut.bin", "PUT", 60))
    _, writer = await asyncio.open_connection(host, port)
    head = f"PUT {url.raw_path_qs} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**8}\r\n\r\n"
    writer.write(head.encode() + b"x" * 3_000_000)
    await writer.drain()
    assert await eventually(lambda: bool(list(storage.root.rglob(".cut.bin.*.part"))))
    writer.close()
    await writer.wait_closed()

    assert await eventually(lambda: not list(storage.root.rglob("*cut.bin*")))
    if server == "served":  # a cancelled handler logs nothing
        assert await eventually(lambda: "PUT /storage/cut.bin 400" in caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> bool:
    """Whether `condition` becomes true within `within_s`, polling."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.parametrize("writer_class", [BlobWriter, _Upload])
async def test_a_dropped_gcs_upload_publishes_nothing(gcs: GcsStorage, writer_class: Any) -> None:
    """Why `_Upload` exists: the garbage collector closes a plain BlobWriter, and closing
    completes the upload with whatever was sent so far."""
    writer = writer_class(gcs.bucket.blob("stepwell/dropped.bin"), chunk_size=SMALL_CHUNK)
    await asyncio.to_thread(writer.write, os.urandom(SMALL_CHUNK + 10))
    del writer
    await asyncio.to_thread(gc.collect)
    published = object_names(gcs.client) == ["stepwell/dropped.bin"]
    assert published == (writer_class is BlobWriter)


async def test_signed_uploads_are_write_once(client: Client) -> None:
    storage = app_storage(client)
    url = relative(await storage.signed_url("once/data.csv", "PUT", 600))
    resp = await client.put(url, data=b"a,b\n1,2\n")
    assert resp.status == 200
    resp = await client.put(url, data=b"changed\n")
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "CONFLICT"
    assert b"".join([c async for c in storage.read("once/data.csv")]) == b"a,b\n1,2\n"
