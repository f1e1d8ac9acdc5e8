"""Who is calling: JWT (HS256 secret or RS256/ES256 through JWKS) or an API key."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from aiohttp.typedefs import Handler

from runtime.errors import Unauthorized
from runtime.keys import DB_POOL, VERIFIER
from runtime.sql import queries

API_KEY_PREFIX = "sw_"
PUBLIC_PREFIXES = ("/health", "/metrics", "/api/docs", "/static/swagger", "/storage/")
# Machines calling webhooks prove themselves with a signature, checked by the handler; a
# caller that sends credentials anyway is still authenticated.
OPTIONAL_AUTH_PREFIXES = ("/api/v1/triggers/webhook/",)
# Each algorithm is pinned to the kind of key that may verify it, so a token cannot choose
# its own verification method (alg=none, or HS256 signed with a public RSA key).
_JWKS_ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
_JWKS_TTL_S = 300.0
_JWKS_MIN_REFRESH_S = 30.0
_VERIFIED_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    role: str = "user"
    via: str = "jwt"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner_filter(self) -> str | None:
        """The owner to filter rows by; None means every owner (admins)."""
        return None if self.is_admin else self.user_id


PRINCIPAL = web.RequestKey("principal", Principal)


def mint_token(
    secret: str,
    sub: str,
    *,
    role: str = "user",
    audience: str = "authenticated",
    ttl_s: int = 86400,
) -> str:
    """An HS256 token, as `stepwell token` and the dev mode hand out."""
    now = int(time.time())
    claims = {"sub": sub, "role": role, "aud": audience, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


def new_api_key() -> tuple[str, str, str]:
    """A fresh API key: (the key shown once, its display prefix, its stored hash)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:10], hash_api_key(key)


def hash_api_key(key: str) -> str:
    # The keys carry 256 bits of entropy, so a fast hash is enough to make a leaked table useless.
    return hashlib.sha256(key.encode()).hexdigest()


class TokenVerifier:
    """Verifies bearer tokens against the configured secret and JWKS."""

    def __init__(
        self,
        *,
        secret: str | None,
        audience: str,
        issuer: str | None = None,
        jwks_url: str | None = None,
    ) -> None:
        self.secret = secret
        self.audience = audience
        self.issuer = issuer
        self.jwks_url = jwks_url
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._jwks_fetched_at = -1e9

    async def verify(self, token: str) -> Principal:
        """The principal a token names, or Unauthorized saying why not.

        A verified token is remembered until it expires (bounded): a client making many calls
        with one token pays for the signature check once.
        """
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        principal, expires = await self._verify(token)
        if len(self._verified) >= _VERIFIED_CACHE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (principal, expires)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self.secret:
            key = self.secret
        elif alg in _JWKS_ALGORITHMS and self.jwks_url:
            key = await self._jwks_key(header.get("kid"), str(alg))
        else:
            raise Unauthorized(f"token algorithm {alg!r} is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= 200:
            raise Unauthorized("token subject must be a non-empty string")
        role = "admin" if claims.get("role") == "admin" else "user"
        return Principal(user_id=sub, role=role, via="jwt"), float(claims["exp"])

    async def _jwks_key(self, kid: object, alg: str) -> Any:
        if not isinstance(kid, str):
            raise Unauthorized("token has no key id (kid)")
        if kid not in self._jwks or self._stale():
            await self._refresh_jwks()
        jwk = self._jwks.get(kid)
        if jwk is None:
            raise Unauthorized(f"unknown signing key {kid!r}")
        if jwk.key_type != _JWKS_ALGORITHMS[alg]:
            raise Unauthorized(f"key {kid!r} cannot verify {alg} tokens")
        return jwk.key

    def _stale(self) -> bool:
        return time.monotonic() - self._jwks_fetched_at > _JWKS_TTL_S

    async def _refresh_jwks(self) -> None:
        # Unknown kids must not turn every bad token into a request to the identity provider.
        if time.monotonic() - self._jwks_fetched_at < _JWKS_MIN_REFRESH_S and self._jwks:
            return
        assert self.jwks_url is not None  # noqa: S101 - callers check
        timeout = aiohttp.ClientTimeout(total=5)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.jwks_url) as resp,
            ):
                resp.raise_for_status()
                data = await resp.json(content_type=None)
            keyset = jwt.PyJWKSet.from_dict(data)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            raise Unauthorized("signing keys are unavailable; try again") from exc
        self._jwks = {k.key_id: k for k in keyset.keys if k.key_id}
        self._jwks_fetched_at = time.monotonic()


async def _principal_from_api_key(request: web.Request, key: str) -> Principal:
    async with request.app[DB_POOL].acquire() as conn:
        row = await conn.fetchrow(queries["get_api_key_by_hash"], hash_api_key(key))
        if row is None:
            raise Unauthorized("invalid API key")
        await conn.execute(queries["touch_api_key"], row["id"])
    return Principal(user_id=row["owner_id"], role=row["role"], via="api_key")


async def authenticate(request: web.Request) -> Principal:
    """The caller of a request, from `Authorization: Bearer`, `X-API-Key` or `?token=`."""
    header = request.headers.get("Authorization")
    api_key = request.headers.get("X-API-Key")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        return await request.app[VERIFIER].verify(token.strip())
    if api_key:
        return await _principal_from_api_key(request, api_key)
    # Browsers cannot set headers on a WebSocket handshake, so it may carry ?token=.
    query_token = request.query.get("token")
    if query_token and request.path.startswith("/ws/"):
        return await request.app[VERIFIER].verify(query_token)
    raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request except public paths and unknown routes (they 404)."""
    if request.path.startswith(PUBLIC_PREFIXES) or request.match_info.http_exception:
        return await handler(request)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return await handler(request)  # a CORS preflight carries no credentials by design
    optional = request.path.startswith(OPTIONAL_AUTH_PREFIXES)
    if optional and not ("Authorization" in request.headers or "X-API-Key" in request.headers):
        return await handler(request)
    request[PRINCIPAL] = await authenticate(request)
    return await handler(request)
