"""Google Cloud Storage: objects under `gs://bucket/prefix`, with V4 signed URLs.

google-cloud-storage is synchronous, so every call runs in a worker thread and the event loop
never waits on the network. Data moves in bounded pieces: writes are resumable uploads sent one
chunk at a time, reads are ranged downloads. Importing this module imports the Google client
(slow), so `runtime.storage.build_storage` imports it only for `gs://` URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypeVar

import google.auth.transport.requests
import google.cloud.storage as storage  # type: ignore[import-untyped]
from google.api_core import exceptions as google_errors
from google.auth.credentials import Credentials, Signing
from google.cloud.storage.fileio import BlobWriter  # type: ignore[import-untyped]

from runtime.storage.base import CHUNK_BYTES, Method, ObjectMissing, StorageError, StoredObject
from runtime.storage.local import check_key

log = logging.getLogger(__name__)
T = TypeVar("T")

# Resumable uploads take chunks in multiples of 256 KiB; each chunk is one request, so the
# size trades memory per upload against round trips. Ranged reads use the same size.
TRANSFER_CHUNK_BYTES = 8 * 1024 * 1024
MAX_SIGNED_URL_S = 7 * 24 * 3600  # the V4 limit; longer expiries are clamped to it
MAX_NAME_BYTES = 1024  # GCS object names, prefix included


class GcsStorage:
    """Objects in one bucket under a prefix. Call `aclose()` when done: it closes the client."""

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: storage.Client | None = None,
        signing_credentials: Credentials | None = None,
        transfer_chunk_bytes: int = TRANSFER_CHUNK_BYTES,
    ) -> None:
        self.client = client if client is not None else storage.Client()
        self.bucket = self.client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.signing_credentials = signing_credentials
        self.transfer_chunk_bytes = transfer_chunk_bytes

    def name(self, key: str) -> str:
        """The object name for a key: the prefix joined to a checked key."""
        check_key(key)
        name = f"{self.prefix}/{key}" if self.prefix else key
        if len(name.encode()) > MAX_NAME_BYTES:
            raise StorageError(f"storage key {key[:40]!r}... is too long for GCS")
        return name

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self.name(key)}"

    def _blob(self, key: str) -> Any:
        return self.bucket.blob(self.name(key))

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], content_type: str | None = None
    ) -> StoredObject:
        """Upload chunk by chunk; the object appears only once the last chunk is in."""
        writer = _Upload(
            self._blob(key), chunk_size=self.transfer_chunk_bytes, content_type=content_type
        )
        digest = hashlib.sha256()
        size = 0
        step: asyncio.Task[Any] | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                step = _in_thread(_digest_and_write, digest, writer, chunk)
                await asyncio.shield(step)
            step = _in_thread(writer.close)
            await asyncio.shield(step)
        except BaseException:
            await _abandon(writer, step)
            raise
        return StoredObject(key, self.uri(key), size, digest.hexdigest(), content_type)

    async def _metadata(self, key: str) -> Any:
        """The blob with its size, generation and content type; ObjectMissing if absent."""
        blob = await asyncio.to_thread(self.bucket.get_blob, self.name(key))
        if blob is None:
            raise ObjectMissing(f"no object {key!r}")
        return blob

    async def _chunks(self, blob: Any, chunk_bytes: int) -> AsyncIterator[bytes]:
        # Pinning the generation makes a read that races an overwrite fail instead of
        # splicing two versions; raw_download returns the bytes as stored (no transcoding),
        # which are the bytes that were digested.
        reader = blob.open(
            "rb",
            chunk_size=max(chunk_bytes, self.transfer_chunk_bytes),
            raw_download=True,
            if_generation_match=blob.generation,
        )
        try:
            while chunk := await asyncio.to_thread(reader.read, chunk_bytes):
                yield chunk
        except (google_errors.NotFound, google_errors.PreconditionFailed) as exc:
            raise StorageError(f"object {blob.name!r} changed while it was read") from exc
        finally:
            reader.close()

    async def read(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        blob = await self._metadata(key)
        async for chunk in self._chunks(blob, chunk_bytes):
            yield chunk

    async def describe(self, key: str) -> StoredObject:
        blob = await self._metadata(key)
        digest = hashlib.sha256()
        size = 0
        async for chunk in self._chunks(blob, CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
        return StoredObject(key, self.uri(key), size, digest.hexdigest(), blob.content_type)

    async def exists(self, key: str) -> bool:
        return bool(await asyncio.to_thread(self._blob(key).exists))

    async def delete(self, key: str) -> None:
        """Delete the object; deleting a missing one is not an error (as on local files)."""
        with contextlib.suppress(google_errors.NotFound):
            await asyncio.to_thread(self._blob(key).delete)

    async def signed_url(
        self, key: str, method: Method, expires_s: int, content_type: str | None = None
    ) -> str:
        """A V4 signed URL (the library defaults to V2), valid for at most 7 days.

        With `content_type`, the client must send exactly that Content-Type: it is signed.
        """
        blob = self._blob(key)
        expiration = timedelta(seconds=max(1, min(expires_s, MAX_SIGNED_URL_S)))

        def sign() -> str:
            url: str = blob.generate_signed_url(
                version="v4",
                expiration=expiration,
                method=method,
                content_type=content_type,
                **self._signer(),
            )
            return url

        # Signing may refresh a token or call the IAM API: not on the event loop.
        return await asyncio.to_thread(sign)

    def _signer(self) -> dict[str, Any]:
        """How to sign: a private key when the credentials hold one (service-account keys),
        else IAM signBlob with an access token (Cloud Run and GCE credentials, which need
        roles/iam.serviceAccountTokenCreator on their own service account)."""
        credentials = self.signing_credentials or self.client._credentials
        if isinstance(credentials, Signing):
            return {"credentials": credentials}
        if hasattr(credentials, "service_account_email"):
            if not credentials.valid:
                credentials.refresh(google.auth.transport.requests.Request())
            return {
                "service_account_email": credentials.service_account_email,
                "access_token": credentials.token,
            }
        raise StorageError(
            "the GCS credentials cannot sign URLs: use a service account, or set "
            "STEPWELL_GCS_SIGNING_KEY_FILE to a service-account JSON key"
        )

    async def aclose(self) -> None:
        """Close the client's HTTP session."""
        await asyncio.to_thread(self.client.close)


class _Upload(BlobWriter):  # type: ignore[misc]
    """A resumable upload that only `close()` completes.

    `io.IOBase.__del__` calls `close()`, and `BlobWriter.close()` sends the last chunk: a
    writer dropped after an error would publish a truncated object from the garbage
    collector. This one does nothing when collected.
    """

    def __del__(self) -> None:
        pass


def _digest_and_write(digest: hashlib._Hash, writer: _Upload, chunk: bytes) -> None:
    # In the worker thread: hashlib releases the GIL, so hashing overlaps the event loop.
    digest.update(chunk)
    writer.write(chunk)


def _in_thread(func: Callable[..., T], *args: Any) -> asyncio.Task[T]:
    return asyncio.ensure_future(asyncio.to_thread(func, *args))


async def _abandon(writer: _Upload, step: asyncio.Task[Any] | None) -> None:
    """Cancel a resumable upload so that no truncated object is created.

    A cancelled `await` does not stop its worker thread, so the chunk in flight is waited
    for first: the writer is not safe to use from two threads.
    """
    if step is not None:
        await asyncio.wait({step})
        if not step.cancelled():
            step.exception()  # already reported to the caller; retrieved so asyncio is quiet
    try:
        await asyncio.to_thread(writer.terminate)
    except Exception:
        # Never finalised, so no object exists; GCS discards the session within a week.
        log.warning("could not cancel a resumable upload", exc_info=True)
