"""The storage interface: where dataset files and model artifacts live.

Two backends implement it: local files under the data directory (the default) and Google Cloud
Storage (`gs://bucket/prefix`). Keys are relative paths like `datasets/<id>/<upload>/train.csv`;
a backend maps them to its own URIs. Everything streams: no call holds a whole file in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

CHUNK_BYTES = 1024 * 1024
Method = Literal["GET", "PUT"]


class StorageError(Exception):
    """A storage operation failed (missing object, refused signature, backend error)."""


class ObjectMissing(StorageError):
    """No object is stored under that key."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What is stored under a key: its size, SHA-256 (hex) and content type."""

    key: str
    uri: str
    size_bytes: int
    sha256: str
    content_type: str | None = None


class Storage(Protocol):
    """A place to keep files by key."""

    scheme: str  # "file" or "gs"

    def uri(self, key: str) -> str:
        """The backend's URI for a key (file:///..., gs://bucket/prefix/key)."""
        ...

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], content_type: str | None = None
    ) -> StoredObject:
        """Store a stream of chunks under `key`, digesting as it goes."""
        ...

    def read(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The object's bytes, chunk by chunk; ObjectMissing if there is none."""
        ...

    async def describe(self, key: str) -> StoredObject:
        """Size, SHA-256 and content type of a stored object (reads it to digest it)."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...

    async def signed_url(
        self, key: str, method: Method, expires_s: int, content_type: str | None = None
    ) -> str:
        """A URL that lets a client GET or PUT the object directly until it expires."""
        ...
