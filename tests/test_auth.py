"""The auth matrix: JWTs (HS256 and JWKS), API keys, ownership and public paths."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pytest_aiohttp import AiohttpClient, AiohttpServer

from runtime.app import create_app
from runtime.config import Config
from tests.conftest import TEST_SECRET, Client, MakeWorkflow, auth, token_for


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "aud": "authenticated", "iat": now, "exp": now + 600, **extra}


async def _status(client: Client, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/api/v1/workflows", headers=headers)
    return resp.status, await resp.json()


async def test_valid_token_is_accepted(client: Client) -> None:
    status, body = await _status(client, auth())
    assert status == 200
    assert body["data"] == []


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "authentication required"),
        ({"Authorization": "Bearer"}, "Bearer <token>"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "Bearer <token>"),
        ({"Authorization": "Bearer not-a-jwt"}, "malformed"),
        ({"Authorization": "Bearer a.b.c"}, "malformed"),
    ],
)
async def test_missing_or_malformed_credentials(
    client: Client, headers: dict[str, str], fragment: str
) -> None:
    status, body = await _status(client, headers)
    assert status == 401
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert fragment in body["error"]["message"]
    assert body["error"]["request_id"]


@pytest.mark.parametrize(
    ("claims", "fragment"),
    [
        (_claims(exp=int(time.time()) - 10), "expired"),
        (_claims(aud="someone-else"), "Audience"),
        ({k: v for k, v in _claims().items() if k != "exp"}, "exp"),
        ({k: v for k, v in _claims().items() if k != "sub"}, "sub"),
        (_claims(sub=""), "subject"),
    ],
)
async def test_bad_claims_are_rejected(
    client: Client, claims: dict[str, Any], fragment: str
) -> None:
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256")
    status, body = await _status(client, {"Authorization": f"Bearer {token}"})
    assert status == 401
    assert fragment in body["error"]["message"]


async def test_wrong_secret_is_rejected(client: Client) -> None:
    token = jwt.encode(_claims(), "another-secret-another-secret-another-secret", algorithm="HS256")
    status, _ = await _status(client, {"Authorization": f"Bearer {token}"})
    assert status == 401


@pytest.mark.parametrize("alg", ["none", "HS384", "HS512"])
async def test_unpinned_algorithms_are_rejected(client: Client, alg: str) -> None:
    token = jwt.encode(_claims(), "" if alg == "none" else TEST_SECRET, algorithm=alg)
    status, body = await _status(client, {"Authorization": f"Bearer {token}"})
    assert status == 401
    assert "algorithm" in body["error"]["message"]


def _hs256_with_key(claims: dict[str, Any], key: bytes, kid: str | None = None) -> str:
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class Jwks:
    """A JWKS endpoint standing in for the identity provider, with RSA and EC keys."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.requests = 0

    def document(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        return {"keys": [{**rsa_jwk, "kid": "rsa-1"}, {**ec_jwk, "kid": "ec-1"}]}

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response(self.document())

    def rsa_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
async def jwks(aiohttp_server: AiohttpServer) -> tuple[Jwks, TestServer]:
    provider = Jwks()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", provider.handle)
    return provider, await aiohttp_server(app)


@pytest.fixture
async def jwks_client(
    config: Config, jwks: tuple[Jwks, TestServer], aiohttp_client: AiohttpClient
) -> Client:
    _, server = jwks
    url = str(server.make_url("/.well-known/jwks.json"))
    cfg = Config(
        database_url=config.database_url,
        jwt_secret=TEST_SECRET,
        jwks_url=url,
        jwt_issuer="https://issuer.test",
    )
    return await aiohttp_client(create_app(cfg))


async def test_jwks_rs256_and_es256_tokens(
    jwks_client: Client, jwks: tuple[Jwks, TestServer]
) -> None:
    provider, _ = jwks
    claims = _claims(iss="https://issuer.test")
    rs = jwt.encode(claims, provider.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims, provider.ec, algorithm="ES256", headers={"kid": "ec-1"})
    for token in (rs, es):
        status, _ = await _status(jwks_client, {"Authorization": f"Bearer {token}"})
        assert status == 200
    assert provider.requests == 1, "the key set is cached"


async def test_jwks_wrong_issuer_unknown_kid_and_key_type(
    jwks_client: Client, jwks: tuple[Jwks, TestServer]
) -> None:
    provider, _ = jwks
    cases = [
        jwt.encode(_claims(iss="https://evil.test"), provider.rsa, "RS256", {"kid": "rsa-1"}),
        jwt.encode(_claims(iss="https://issuer.test"), provider.rsa, "RS256", {"kid": "nope"}),
        jwt.encode(_claims(iss="https://issuer.test"), provider.rsa, "RS256"),
        # an RS256 token naming the EC key: the key type pins the algorithm
        jwt.encode(_claims(iss="https://issuer.test"), provider.rsa, "RS256", {"kid": "ec-1"}),
    ]
    for token in cases:
        status, body = await _status(jwks_client, {"Authorization": f"Bearer {token}"})
        assert status == 401, body


async def test_hs_rs_confusion_is_rejected(
    jwks_client: Client, jwks: tuple[Jwks, TestServer]
) -> None:
    provider, _ = jwks
    # The classic attack: sign HS256 with the provider's *public* key as the HMAC secret.
    forged = _hs256_with_key(_claims(iss="https://issuer.test"), provider.rsa_pem(), "rsa-1")
    status, _ = await _status(jwks_client, {"Authorization": f"Bearer {forged}"})
    assert status == 401


async def test_rs256_refused_when_no_jwks_configured(client: Client) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k"})
    status, body = await _status(client, {"Authorization": f"Bearer {token}"})
    assert status == 401
    assert "algorithm" in body["error"]["message"]


async def test_other_users_resource_is_404_and_admin_sees_all(
    client: Client, make_workflow: MakeWorkflow
) -> None:
    wf = await make_workflow("alice")
    url = f"/api/v1/workflows/{wf['id']}"
    resp = await client.get(url, headers=auth("bob"))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    resp = await client.put(url, json={"name": "stolen"}, headers=auth("bob"))
    assert resp.status == 404
    resp = await client.get("/api/v1/workflows", headers=auth("bob"))
    assert (await resp.json())["pagination"]["total"] == 0
    resp = await client.get(url, headers=auth("root", role="admin"))
    assert resp.status == 200
    resp = await client.get("/api/v1/workflows", headers=auth("root", role="admin"))
    assert (await resp.json())["pagination"]["total"] == 1


async def test_public_paths_need_no_auth(client: Client) -> None:
    for path in ("/health", "/health/ready", "/api/docs/openapi.json", "/api/docs"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.headers["X-Request-ID"]


async def test_api_keys_lifecycle(client: Client) -> None:
    resp = await client.post("/api/v1/api-keys", json={"name": "ci"}, headers=auth("alice"))
    assert resp.status == 201
    created = (await resp.json())["data"]
    key = created["key"]
    assert key.startswith("sw_") and created["prefix"] == key[:10]

    resp = await client.get("/api/v1/workflows", headers={"X-API-Key": key})
    assert resp.status == 200
    resp = await client.post(
        "/api/v1/workflows", json={"name": "via-key"}, headers={"X-API-Key": key}
    )
    assert (await resp.json())["data"]["owner_id"] == "alice"

    resp = await client.get("/api/v1/api-keys", headers=auth("alice"))
    listed = (await resp.json())["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and "key_hash" not in listed[0]
    assert listed[0]["last_used_at"] is not None

    resp = await client.get("/api/v1/api-keys", headers=auth("bob"))
    assert (await resp.json())["data"] == []
    resp = await client.delete(f"/api/v1/api-keys/{created['id']}", headers=auth("bob"))
    assert resp.status == 404

    resp = await client.delete(f"/api/v1/api-keys/{created['id']}", headers=auth("alice"))
    assert resp.status == 204
    resp = await client.get("/api/v1/workflows", headers={"X-API-Key": key})
    assert resp.status == 401
    assert (await resp.json())["error"]["message"] == "invalid API key"


async def test_api_key_validation(client: Client) -> None:
    for body in ({}, {"name": ""}, {"name": "x", "expires_at": "2001-01-01T00:00:00+00:00"}):
        resp = await client.post("/api/v1/api-keys", json=body, headers=auth())
        assert resp.status == 422, body
        assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"
    resp = await client.delete("/api/v1/api-keys/not-a-uuid", headers=auth())
    assert resp.status == 422


async def test_token_helper_matches_verifier(client: Client) -> None:
    status, _ = await _status(client, {"Authorization": f"Bearer {token_for('carol', 'admin')}"})
    assert status == 200
