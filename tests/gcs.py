"""GCS test helpers: the in-process emulator, a generated service account, a V4 URL checker.

The emulator (gcp-storage-emulator) serves the JSON and XML APIs well enough for the real
client, but it never checks signatures: any URL under `/<bucket>/<object>` is accepted. So
`verify_v4_url` checks a signed URL the way GCS does, against the service account's public key.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from gcp_storage_emulator.server import create_server  # type: ignore[import-untyped]

SIGNER_EMAIL = "stepwell-signer@test-project.iam.gserviceaccount.com"


@contextmanager
def emulator(bucket: str) -> Iterator[tuple[str, Any]]:
    """An in-memory emulator with one bucket on a free loopback port: (its URL, the server).

    Stopping takes up to half a second (its serve_forever polls), so share one and
    `server.wipe(keep_buckets=True)` between tests.
    """
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
    server.start()
    # Port 0 lets the OS pick a free port; the emulator only exposes it on its HTTP server.
    port = server._api._httpd.server_address[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()
        # Server.stop() shuts the HTTP server down but its thread's join() does not wait.
        threading.Thread.join(server._api, timeout=5)


def service_account_info(email: str = SIGNER_EMAIL) -> tuple[dict[str, str], rsa.RSAPublicKey]:
    """A service-account key file's contents with a fresh RSA key, and its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "test-key-1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return info, key.public_key()


def use_emulator(
    monkeypatch: pytest.MonkeyPatch, url: str, account: dict[str, str], key_file: Path
) -> None:
    """Set the environment `STEPWELL_STORAGE=gs://...` reads so that it talks to the emulator
    at `url` and signs URLs with `account` (a key file's contents, written to `key_file`)."""
    key_file.write_text(json.dumps(account))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setenv("STEPWELL_GCS_SIGNING_KEY_FILE", str(key_file))


def query_of(url: str) -> dict[str, str]:
    """The decoded query parameters of a URL."""
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def verify_v4_url(
    url: str,
    method: str,
    public_key: rsa.RSAPublicKey,
    headers: dict[str, str] | None = None,
    now: datetime | None = None,
) -> None:
    """Check a V4 signed URL as GCS would; raises InvalidSignature or AssertionError.

    Rebuilds the canonical request from the URL as sent (method, encoded path, sorted
    query without the signature, signed headers) and verifies the RSA-SHA256 signature.
    """
    parts = urlsplit(url)
    params = query_of(url)
    assert params["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    signed = dict(pair.split("=", 1) for pair in parts.query.split("&"))
    signature = bytes.fromhex(signed.pop("X-Goog-Signature"))
    canonical_query = "&".join(sorted(f"{k}={v}" for k, v in signed.items()))
    values = {"host": parts.netloc, **{k.lower(): v for k, v in (headers or {}).items()}}
    signed_headers = params["X-Goog-SignedHeaders"]
    unsent = set(signed_headers.split(";")) - values.keys()
    assert not unsent, f"the URL signs headers the request does not send: {sorted(unsent)}"
    canonical_headers = "".join(f"{h}:{values[h].strip()}\n" for h in signed_headers.split(";"))
    request = "\n".join(
        [method, parts.path, canonical_query, canonical_headers, signed_headers, "UNSIGNED-PAYLOAD"]
    )
    scope = params["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            params["X-Goog-Date"],
            scope,
            hashlib.sha256(request.encode()).hexdigest(),
        ]
    )
    public_key.verify(signature, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    signed_at = datetime.strptime(params["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    expires_at = signed_at + timedelta(seconds=int(params["X-Goog-Expires"]))
    assert expires_at > (now or datetime.now(UTC)), "the signed URL has expired"


def object_names(client: Any, bucket: str = "bucket") -> list[str]:
    """Every object name in the emulator's bucket."""
    return sorted(blob.name for blob in client.list_blobs(bucket))
