"""The `stepwell` command line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import uvloop

from runtime.cli import _event_loop, main
from runtime.config import Config, ConfigError


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() points logging at the (captured) stderr; later log calls must not write to it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_openapi_prints_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["openapi"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["openapi"] == "3.0.3"
    assert "/api/v1/workflows/{id}/publish" in spec["paths"]


def test_token_uses_the_configured_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s" * 40
    monkeypatch.setenv("STEPWELL_JWT_SECRET", secret)
    assert main(["token", "--sub", "alice", "--role", "admin", "--ttl", "60"]) == 0
    claims = jwt.decode(
        capsys.readouterr().out.strip(), secret, algorithms=["HS256"], audience="authenticated"
    )
    assert (claims["sub"], claims["role"]) == ("alice", "admin")
    assert claims["exp"] - claims["iat"] == 60


def test_dev_token_matches_the_dev_server_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STEPWELL_JWT_SECRET", raising=False)
    monkeypatch.setenv("STEPWELL_DATA_DIR", str(tmp_path))
    assert main(["token", "--sub", "dev"]) == 0
    token = capsys.readouterr().out.strip()
    config, generated = Config(data_dir=tmp_path, dev=True).with_dev_secret()
    assert not generated, "the secret written by `token` is reused"
    assert config.jwt_secret is not None
    assert jwt.decode(token, config.jwt_secret, algorithms=["HS256"], audience="authenticated")


def test_serve_without_a_secret_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("STEPWELL_JWT_SECRET", "STEPWELL_JWKS_URL", "STEPWELL_DEV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STEPWELL_DATA_DIR", str(tmp_path))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "STEPWELL_JWT_SECRET" in err and "make run" in err


def test_serve_runs_on_uvloop_where_installed() -> None:
    loop = _event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        if loop is not None:
            loop.close()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="PORT"):
        Config.from_env({"PORT": "http"})
    with pytest.raises(ConfigError, match="STEPWELL_LOG_FORMAT"):
        Config.from_env({"STEPWELL_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="STEPWELL_LOG_LEVEL"):
        Config.from_env({"STEPWELL_LOG_LEVEL": "loud"})
    assert Config.from_env({"STEPWELL_LOG_LEVEL": "warning"}).log_level == "warning"
    with pytest.raises(ConfigError, match="32 bytes"):
        Config(jwt_secret="short").check_auth()
    config = Config.from_env({"STEPWELL_CORS_ORIGINS": "https://a.test, https://b.test"})
    assert config.cors_origins == ("https://a.test", "https://b.test")
