"""Configuration read once from the environment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path


class ConfigError(Exception):
    """The configuration is incomplete or inconsistent."""


DEV_SECRET_FILE = "dev-jwt-secret"  # noqa: S105 - a file name, not a secret
MIN_SECRET_BYTES = 32


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or allowed[0]
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting Stepwell reads, with the defaults the design names."""

    database_url: str | None = None
    data_dir: Path = Path("var")
    jwt_secret: str | None = None
    jwt_audience: str = "authenticated"
    jwt_issuer: str | None = None
    jwks_url: str | None = None
    port: int = 8080
    node_id: str = field(default_factory=lambda: f"node-{secrets.token_hex(4)}")
    log_format: str = "json"
    log_level: str = "info"
    cors_origins: tuple[str, ...] = ()
    dev: bool = False
    lease_ttl_s: float = 15.0
    db_pool_max: int = 20
    compute: str = "local"  # "local" (scikit-learn subprocesses) or "vertex"
    storage_url: str | None = None  # None: file storage under data_dir/storage
    public_url: str | None = None  # how clients reach this server (for local signed URLs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build the configuration from environment variables (see README)."""
        env = os.environ if env is None else env
        log_format = env.get("STEPWELL_LOG_FORMAT", "json")
        if log_format not in ("json", "text"):
            raise ConfigError("STEPWELL_LOG_FORMAT must be 'json' or 'text'")
        log_level = _choice(env, "STEPWELL_LOG_LEVEL", ("info", "warning", "error", "debug"))
        port_text = env.get("PORT", "8080")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"PORT must be a TCP port number, not {port_text!r}")
        origins = tuple(o.strip() for o in env.get("STEPWELL_CORS_ORIGINS", "").split(",") if o)
        defaults = cls()
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env.get("STEPWELL_DATA_DIR") or "var"),
            log_level=log_level,
            jwt_secret=env.get("STEPWELL_JWT_SECRET") or None,
            jwt_audience=env.get("STEPWELL_JWT_AUDIENCE") or "authenticated",
            jwt_issuer=env.get("STEPWELL_JWT_ISSUER") or None,
            jwks_url=env.get("STEPWELL_JWKS_URL") or None,
            port=int(port_text),
            node_id=env.get("STEPWELL_NODE_ID") or defaults.node_id,
            log_format=log_format,
            cors_origins=origins,
            dev=env.get("STEPWELL_DEV", "") in ("1", "true", "yes"),
            lease_ttl_s=_positive(env, "STEPWELL_LEASE_TTL_S", 15.0),
            db_pool_max=int(_positive(env, "STEPWELL_DB_POOL_MAX", 20)),
            compute=_choice(env, "STEPWELL_COMPUTE", ("local", "vertex")),
            storage_url=env.get("STEPWELL_STORAGE") or None,
            public_url=env.get("STEPWELL_PUBLIC_URL") or None,
        )

    def with_dev_secret(self) -> tuple[Config, bool]:
        """In dev mode, fill a missing JWT secret from (or into) the data directory.

        The secret is kept on disk so tokens printed by one `make run` keep working after a
        restart. Returns the new config and whether a secret was generated just now.
        """
        if self.jwt_secret or not self.dev:
            return self, False
        path = self.data_dir / DEV_SECRET_FILE
        if path.exists():
            return replace(self, jwt_secret=path.read_text().strip()), False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        path.write_text(secret)
        path.chmod(0o600)
        return replace(self, jwt_secret=secret), True

    def check_auth(self) -> None:
        """Refuse to start without any way to verify tokens."""
        if not self.jwt_secret and not self.jwks_url:
            raise ConfigError(
                "no token verification configured: set STEPWELL_JWT_SECRET (HS256) or "
                "STEPWELL_JWKS_URL (RS256/ES256), or run `make run` for development mode"
            )
        if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"STEPWELL_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 3.2)"
            )
