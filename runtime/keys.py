"""Every application key, typed, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from runtime.clock import Clock
from runtime.config import Config

if TYPE_CHECKING:
    from actors.dispatch import RunDispatcher
    from runtime.auth import TokenVerifier
    from runtime.metrics import Metrics
    from runtime.storage.base import Storage

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("verifier")
DISPATCHER: web.AppKey[RunDispatcher] = web.AppKey("dispatcher")
STORAGE: web.AppKey[Storage] = web.AppKey("storage")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
