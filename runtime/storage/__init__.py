"""Storage backends chosen by `STEPWELL_STORAGE`: local files (default) or `gs://bucket/prefix`."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from runtime.keys import CONFIG, STORAGE
from runtime.storage.base import Storage
from runtime.storage.local import LocalStorage


def build_storage(url: str | None, data_dir: str, secret: str, public_url: str) -> Storage:
    """The backend for a storage URL (None or file://path: local files)."""
    signing_key = hashlib.sha256(b"stepwell-storage:" + secret.encode()).digest()
    if url is None or url.startswith("file://"):
        root = Path(url[len("file://") :]) if url else Path(data_dir) / "storage"
        return LocalStorage(root, signing_key, public_url)
    raise ValueError(f"unsupported STEPWELL_STORAGE {url!r}: use file://path or gs://bucket/prefix")


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the configured storage backend."""
    config = app[CONFIG]
    public = config.public_url or f"http://localhost:{config.port}"
    app[STORAGE] = build_storage(
        config.storage_url, str(config.data_dir), config.jwt_secret or config.node_id, public
    )
    yield
