"""Local file storage under the data directory, with HMAC-signed URLs to Stepwell's own
`/storage/...` endpoint so clients upload and download the same way as on GCS."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from urllib.parse import quote, urlencode

from runtime.storage.base import CHUNK_BYTES, Method, ObjectMissing, StorageError, StoredObject

# Control characters would make the signed message ("method\nkey\nexpires") ambiguous.
_CONTROL = frozenset(chr(c) for c in (*range(32), 127))


def check_key(key: str) -> str:
    """The key, if it is a relative path of plain segments; StorageError otherwise.

    Both backends apply the same rule, so a key that works locally works on GCS.
    """
    segments = key.split("/")
    if (
        not key
        or "\\" in key
        or any(seg in ("", ".", "..") for seg in segments)
        or not _CONTROL.isdisjoint(key)
    ):
        raise StorageError(f"invalid storage key {key!r}: use a relative path like 'a/b.csv'")
    return key


class LocalStorage:
    """Files under `root`; writes go to a temporary name and are renamed when complete."""

    scheme = "file"

    def __init__(self, root: Path, signing_key: bytes, public_url: str) -> None:
        self.root = root.resolve()
        self.signing_key = signing_key
        self.public_url = public_url.rstrip("/")

    def path(self, key: str) -> Path:
        """The file for a key; keys never leave the root."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink under the root pointing out
            raise StorageError(f"invalid storage key {key!r}")
        return path

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], content_type: str | None = None
    ) -> StoredObject:
        path = self.path(key)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            handle = await open_in_thread(partial, "wb")
        except (FileExistsError, NotADirectoryError) as exc:
            raise _clash(key) from exc
        try:
            async for chunk in chunks:
                size += len(chunk)
                await asyncio.to_thread(_digest_and_write, digest, handle, chunk)
            await asyncio.to_thread(_durable_replace, handle, partial, path)
        except BaseException as exc:
            handle.close()
            partial.unlink(missing_ok=True)
            if isinstance(exc, IsADirectoryError):
                raise _clash(key) from exc
            raise
        return StoredObject(key, self.uri(key), size, digest.hexdigest(), content_type)

    async def read(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            handle = await open_in_thread(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
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
        # isascii: str.isdigit() accepts digits such as "²" that int() rejects.
        if not (expires.isascii() and expires.isdigit()) or int(expires) < time.time():
            raise StorageError("the signed URL has expired")
        expected = self.signature(key, method, int(expires))
        # Bytes: compare_digest refuses non-ASCII str, and a forged URL may carry any.
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise StorageError("the URL signature does not match")


async def open_in_thread(path: Path, mode: str) -> BinaryIO:
    """`path.open(mode)` in a worker thread, binary modes only.

    A cancelled await does not stop the thread: a file it opens after its caller has gone is
    closed there (and one created for writing is removed), not leaked.
    """
    opened = asyncio.ensure_future(asyncio.to_thread(path.open, mode))
    try:
        return cast(BinaryIO, await asyncio.shield(opened))
    except asyncio.CancelledError:
        opened.add_done_callback(functools.partial(_discard, path, mode))
        raise


def _discard(path: Path, mode: str, opened: asyncio.Future[IO[Any]]) -> None:
    if opened.cancelled() or opened.exception() is not None:
        return
    opened.result().close()
    if "w" in mode:
        path.unlink(missing_ok=True)


def _digest_and_write(digest: hashlib._Hash, handle: BinaryIO, chunk: bytes) -> None:
    # In the worker thread: hashlib releases the GIL, so hashing overlaps the event loop.
    digest.update(chunk)
    handle.write(chunk)


def _durable_replace(handle: BinaryIO, partial: Path, path: Path) -> None:
    """Flush the file to disk, rename it over the key and persist the rename.

    Callers record an upload in the database once this returns; without the fsyncs a crash
    could leave an empty or missing file behind a committed row.
    """
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    partial.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _clash(key: str) -> StorageError:
    return StorageError(f"storage key {key!r} clashes with an existing object or folder")
