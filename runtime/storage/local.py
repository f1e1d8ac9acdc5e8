"""Local file storage under the data directory, with HMAC-signed URLs to Stepwell's own
`/storage/...` endpoint so clients upload and download the same way as on GCS."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

from runtime.storage.base import CHUNK_BYTES, Method, ObjectMissing, StorageError, StoredObject


class LocalStorage:
    """Files under `root`; writes go to a temporary name and are renamed when complete."""

    scheme = "file"

    def __init__(self, root: Path, signing_key: bytes, public_url: str) -> None:
        self.root = root.resolve()
        self.signing_key = signing_key
        self.public_url = public_url.rstrip("/")

    def path(self, key: str) -> Path:
        """The file for a key; keys never leave the root."""
        path = (self.root / key).resolve()
        if not key or key.startswith("/") or not path.is_relative_to(self.root):
            raise StorageError(f"invalid storage key {key!r}")
        return path

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], content_type: str | None = None
    ) -> StoredObject:
        path = self.path(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.part")
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
        handle.close()
        await asyncio.to_thread(partial.replace, path)
        return StoredObject(key, self.uri(key), size, digest.hexdigest(), content_type)

    async def read(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(f"no object {key!r}") from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_bytes):
                yield chunk
        finally:
            handle.close()

    async def describe(self, key: str) -> StoredObject:
        digest = hashlib.sha256()
        size = 0
        async for chunk in self.read(key):
            digest.update(chunk)
            size += len(chunk)
        return StoredObject(key, self.uri(key), size, digest.hexdigest())

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)

    def signature(self, key: str, method: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self.signing_key, message, hashlib.sha256).hexdigest()

    async def signed_url(
        self, key: str, method: Method, expires_s: int, content_type: str | None = None
    ) -> str:
        self.path(key)  # refuse bad keys before handing out a URL
        expires = int(time.time()) + expires_s
        query = urlencode(
            {
                "method": method,
                "expires": expires,
                "signature": self.signature(key, method, expires),
            }
        )
        return f"{self.public_url}/storage/{quote(key)}?{query}"

    def check_signature(self, key: str, method: str, expires: str, signature: str) -> None:
        """Raise StorageError unless the URL was signed by us for this key and method and
        has not expired."""
        if not expires.isdigit() or int(expires) < time.time():
            raise StorageError("the signed URL has expired")
        expected = self.signature(key, method, int(expires))
        if not hmac.compare_digest(expected, signature):
            raise StorageError("the URL signature does not match")
