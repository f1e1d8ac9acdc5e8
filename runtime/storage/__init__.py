"""Storage backends chosen by `STEPWELL_STORAGE`: local files (default) or `gs://bucket/prefix`.

GCS settings read from the environment:

- `STORAGE_EMULATOR_HOST` (`http://host:port`): talk to an emulator with anonymous credentials,
  project `GOOGLE_CLOUD_PROJECT` (default `local`). Otherwise Application Default Credentials.
- `STEPWELL_GCS_SIGNING_KEY_FILE`: a service-account JSON key used only to sign URLs. Needed
  under the emulator (anonymous credentials cannot sign); in production the client's own
  credentials sign (a key, or IAM signBlob on Cloud Run/GCE).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from runtime.config import ConfigError
from runtime.keys import CONFIG, STORAGE
from runtime.storage.base import Storage, StorageError
from runtime.storage.local import LocalStorage, check_key

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

    from runtime.storage.gcs import GcsStorage

# Lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def build_storage(
    url: str | None,
    data_dir: str,
    secret: str,
    public_url: str,
) -> Storage:
    """The backend for a storage URL (None or file://path: local files; gs://bucket/prefix)."""
    if url is None or url.startswith("file://"):
        signing_key = hashlib.sha256(b"stepwell-storage:" + secret.encode()).digest()
        root = Path(url[len("file://") :]) if url else Path(data_dir) / "storage"
        return LocalStorage(root, signing_key, public_url)
    if url.startswith("gs://"):
        bucket, prefix = parse_gs_url(url)
        return build_gcs(bucket, prefix, os.environ)
    raise ConfigError(
        f"unsupported STEPWELL_STORAGE {url!r}: use file://path or gs://bucket/prefix"
    )


def parse_gs_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `gs://bucket/prefix`; ConfigError saying what is wrong."""
    bucket, _, prefix = url[len("gs://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"STEPWELL_STORAGE {url!r} names no valid bucket: expected gs://bucket/prefix with "
            "a bucket of 3-222 lowercase letters, digits, '-', '_' or '.'"
        )
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except StorageError as exc:
            raise ConfigError(f"STEPWELL_STORAGE {url!r} has an invalid prefix: {exc}") from exc
    return bucket, prefix


def build_gcs(bucket: str, prefix: str, env: Mapping[str, str]) -> GcsStorage:
    """A GCS backend; imports google-cloud-storage (slow) only now."""
    import google.cloud.storage as storage  # type: ignore[import-untyped]
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError

    from runtime.storage.gcs import GcsStorage

    signer = signing_credentials(env)  # before the client: nothing to close if it fails
    project = env.get("GOOGLE_CLOUD_PROJECT") or None
    if env.get("STORAGE_EMULATOR_HOST"):
        # The client reads STORAGE_EMULATOR_HOST itself to find the emulator.
        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        client = storage.Client(project=project or "local", credentials=anonymous)
    else:
        try:
            client = storage.Client(project=project)
        except DefaultCredentialsError as exc:
            raise ConfigError(
                f"STEPWELL_STORAGE is gs://{bucket} but no Google credentials were found: set "
                "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`"
            ) from exc
    return GcsStorage(bucket, prefix, client, signer)


def signing_credentials(env: Mapping[str, str]) -> Credentials | None:
    """Credentials from `STEPWELL_GCS_SIGNING_KEY_FILE`, or None to sign with the client's."""
    path = env.get("STEPWELL_GCS_SIGNING_KEY_FILE")
    if not path:
        return None
    from google.oauth2 import service_account

    from_file = service_account.Credentials.from_service_account_file
    try:
        key: Credentials = from_file(path)  # type: ignore[no-untyped-call]
        return key
    except (OSError, ValueError) as exc:
        raise ConfigError(f"STEPWELL_GCS_SIGNING_KEY_FILE {path!r} is unusable: {exc}") from exc


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the configured storage backend, closed on shutdown."""
    config = app[CONFIG]
    public = config.public_url or f"http://localhost:{config.port}"
    # A GCS client looks up default credentials, which may ask the metadata server.
    storage = await asyncio.to_thread(
        build_storage,
        config.storage_url,
        str(config.data_dir),
        config.jwt_secret or config.node_id,
        public,
    )
    app[STORAGE] = storage
    yield
    close = getattr(storage, "aclose", None)
    if close is not None:
        await close()
