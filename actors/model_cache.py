"""Trained models kept in memory for predictions: each version loaded once from storage.

A model file is a pickle, so loading one runs code. Only the file a Stepwell training job stored
for a version is loaded: a version's metadata can be replaced through the registry API, so the
key it names must be the one its training job wrote (`models/<model>/training-jobs/<job>/...`),
and the SHA-256 the job recorded is checked before the file is unpickled.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

import asyncpg
from aiohttp import web

from runtime.compute.model_file import LoadedModel, load_model
from runtime.errors import ValidationFailed
from runtime.keys import CONFIG, DISPATCHER, STORAGE
from runtime.storage.base import ObjectMissing, Storage, StorageError
from runtime.storage.local import check_key

# Where actors/training_local.py stores a job's model (the same f-string there).
TRAINED_KEY = "models/{model_id}/training-jobs/{job_id}/model.joblib"
_PROBE = "_"
T = TypeVar("T")


class ModelUnavailable(ValidationFailed):
    """The model version cannot serve predictions."""


def storage_key(storage: Storage, uri: str) -> str | None:
    """The key `uri` names in `storage` (a bare key, or the backend's URI of one); None when the
    URI points anywhere else or the key is not a plain relative path."""
    if "://" not in uri:
        key: str | None = uri
    else:
        base = storage.uri(_PROBE)[: -len(_PROBE)]  # the backend's URI of its root, with "/"
        if storage.scheme == "file" and uri.startswith("file:"):
            key = _relative_file(uri, base)
        else:
            key = uri[len(base) :] if uri.startswith(base) else None
    if not key:
        return None
    try:
        return check_key(key)
    except StorageError:
        return None


def _relative_file(uri: str, base: str) -> str | None:
    """The path of a file:// URI below the root's, compared as paths (URIs percent-encode)."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        return None
    try:
        relative = PurePosixPath(unquote(parts.path)).relative_to(unquote(urlsplit(base).path))
    except ValueError:
        return None
    return relative.as_posix()


def artifact_key(storage: Storage, version: asyncpg.Record | Mapping[str, Any]) -> str:
    """The storage key of a version's model file; ModelUnavailable saying why there is none."""
    metadata = version["metadata"] if isinstance(version["metadata"], dict) else {}
    name = f"model version {version['id']}"
    if not metadata.get("features"):
        raise ModelUnavailable(
            f"{name} has no Stepwell model file: only versions trained by Stepwell's trainer "
            "can serve predictions here"
        )
    named = metadata.get("storage_key")
    key = named if isinstance(named, str) else storage_key(storage, version["artifact_uri"])
    if key is None:
        raise ModelUnavailable(
            f"artifact not reachable: {name}'s artifact {version['artifact_uri']!r} is not in "
            "this installation's storage"
        )
    job_id = version["trained_by_job_id"]
    if job_id is None or key != TRAINED_KEY.format(model_id=version["model_id"], job_id=job_id):
        raise ModelUnavailable(
            f"{name} does not name the file its training job stored; a model file runs code "
            "when loaded, so only files written by Stepwell's trainer are loaded"
        )
    return key


class ModelCache:
    """Loaded models by version id, least recently used evicted past `max_models`.

    Concurrent first requests for one version share one load. `loads` counts files loaded.
    """

    def __init__(self, storage: Storage, max_models: int = 32, work_dir: Path | None = None):
        self.storage = storage
        self.max_models = max_models
        self.work_dir = work_dir
        self.loads = 0
        self._models: OrderedDict[UUID, LoadedModel] = OrderedDict()
        self._loading: dict[UUID, asyncio.Task[LoadedModel]] = {}

    def __contains__(self, version_id: object) -> bool:
        return version_id in self._models

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        """Forget every loaded model (loads in progress still finish and are kept)."""
        self._models.clear()

    async def get(self, version: asyncpg.Record | Mapping[str, Any]) -> LoadedModel:
        """The loaded model of a version row (`get_servable_model_version`)."""
        version_id: UUID = version["id"]
        model = self._models.get(version_id)
        if model is not None:
            self._models.move_to_end(version_id)
            return model
        task = self._loading.get(version_id)
        if task is None:
            task = asyncio.create_task(self._load(dict(version)), name=f"load:{version_id}")
            self._loading[version_id] = task
            task.add_done_callback(_retrieve)
        # Shielded: a caller that gives up must not cancel the load others are waiting for.
        return await asyncio.shield(task)

    async def _load(self, version: dict[str, Any]) -> LoadedModel:
        version_id: UUID = version["id"]
        try:
            key = artifact_key(self.storage, version)
            sha256 = version["metadata"].get("sha256")
            model = await self._fetch_and_load(key, sha256 if isinstance(sha256, str) else None)
        finally:
            del self._loading[version_id]
        self.loads += 1
        self._models[version_id] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model

    async def _fetch_and_load(self, key: str, sha256: str | None) -> LoadedModel:
        try:
            path = await fetch_to_temp(self.storage, key, self.work_dir, ".joblib")
        except ObjectMissing as exc:
            raise ModelUnavailable(f"artifact not reachable: nothing is stored at {key!r}") from exc
        except StorageError as exc:
            raise ModelUnavailable(f"artifact not reachable: {exc}") from exc
        try:
            return await asyncio.to_thread(load_model, path, sha256)
        except Exception as exc:
            # A changed or corrupt file fails in many ways (digest, unpickling, format).
            raise ModelUnavailable(f"the model file at {key!r} cannot be loaded: {exc}") from exc
        finally:
            await asyncio.to_thread(path.unlink, True)


async def fetch_to_temp(storage: Storage, key: str, work_dir: Path | None, suffix: str) -> Path:
    """Copy a stored object to a new temporary file (the caller removes it)."""
    if work_dir is not None:
        await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
    fd, name = await asyncio.to_thread(tempfile.mkstemp, suffix, "stepwell-", work_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in storage.read(key):
                await asyncio.to_thread(handle.write, chunk)
    except BaseException:
        await asyncio.to_thread(Path(name).unlink, True)
        raise
    return Path(name)


def _retrieve(task: asyncio.Task[LoadedModel]) -> None:
    """Mark a failed load's error as seen: every waiter got it, or none is left to."""
    if not task.cancelled():
        task.exception()


# Until runs_ctx gives the dispatcher these services (`model_cache`, `batch_jobs`), each app
# gets its own here. Not app keys: a started app is frozen, and runtime/keys.py gains keys only
# when this is wired. Weak, so an app that is gone (a test's) releases its models and jobs.
_PER_APP: weakref.WeakKeyDictionary[web.Application, dict[str, Any]] = weakref.WeakKeyDictionary()


def per_app(app: web.Application, name: str, make: Callable[[], T]) -> T:
    """The dispatcher's attribute `name` when it has one, else this app's own, made once."""
    service: T | None = getattr(app.get(DISPATCHER), name, None)
    if service is not None:
        return service
    services = _PER_APP.setdefault(app, {})
    if name not in services:
        services[name] = make()
    found: T = services[name]
    return found


def model_cache_of(app: web.Application) -> ModelCache:
    """The app's model cache (see `per_app`)."""
    return per_app(
        app, "model_cache", lambda: ModelCache(app[STORAGE], work_dir=app[CONFIG].data_dir / "work")
    )
