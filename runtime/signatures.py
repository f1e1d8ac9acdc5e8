"""Signed webhook requests: `X-Stepwell-Signature: t=<unix seconds>,v1=<hex>`.

`v1` is the hex HMAC-SHA256, keyed with the workflow's webhook secret, of `<t>.<raw body>`.
Signing the timestamp with the body lets the receiver refuse a captured request replayed later.
A sender may put several `v1` values in one header (one per secret it knows, while a secret is
being rotated); any one that matches is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from runtime.errors import Unauthorized

SIGNATURE_HEADER = "X-Stepwell-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a public marker, not a secret
TOLERANCE_S = 300
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_FORMAT = f"expected '{SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex HMAC-SHA256>'"


def new_webhook_secret() -> str:
    """A fresh secret. It is stored as given: verifying an HMAC needs the key itself."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    """The parts of a signature header: the timestamp as sent and every v1 digest."""

    timestamp: str
    digests: tuple[str, ...]


def _unauthorized(reason: str, message: str) -> Unauthorized:
    # `reason` lets a sender's logs (and tests) tell the failures apart without parsing text.
    return Unauthorized(message, {"reason": reason, "header": SIGNATURE_HEADER})


def parse_signature(header: str) -> ParsedSignature:
    """Split a signature header; Unauthorized ("malformed") when it cannot be read.

    Unknown parts (a future `v2=`) are ignored so senders can add schemes before we check them.
    """
    timestamps: list[str] = []
    digests: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise _unauthorized(
                "malformed", f"malformed signature part {part.strip()!r}: {_FORMAT}"
            )
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            digests.append(value)
    if len(timestamps) != 1 or not _TIMESTAMP.match(timestamps[0]):
        raise _unauthorized("malformed", f"signature needs exactly one numeric t=: {_FORMAT}")
    if not digests or not all(_HEX_DIGEST.match(d) for d in digests):
        raise _unauthorized("malformed", f"signature needs v1= with 64 hex digits: {_FORMAT}")
    return ParsedSignature(timestamps[0], tuple(d.lower() for d in digests))


def compute_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>`."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """A complete header value, as a sender builds it."""
    t = str(int(time.time()) if timestamp is None else timestamp)
    return f"t={t},v1={compute_signature(secret, t, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> None:
    """Return if `header` signs `body` with `secret` recently enough; else Unauthorized."""
    if not header:
        raise _unauthorized(
            "missing", f"{SIGNATURE_HEADER} is required: this workflow's webhook has a secret"
        )
    parsed = parse_signature(header)
    age = (time.time() if now is None else now) - int(parsed.timestamp)
    if age > tolerance_s:
        raise _unauthorized(
            "stale", f"signature is stale: signed {int(age)} s ago (the limit is {tolerance_s} s)"
        )
    if age < -tolerance_s:
        raise _unauthorized(
            "future", f"signature timestamp is {int(-age)} s in the future; check the clock"
        )
    expected = compute_signature(secret, parsed.timestamp, body)
    # Every candidate is compared, in constant time, so timing says nothing about which failed.
    matched = False
    for digest in parsed.digests:
        matched |= hmac.compare_digest(expected, digest)
    if not matched:
        raise _unauthorized(
            "mismatch",
            "signature does not match: sign '<t>.<raw body>' with HMAC-SHA256 and the "
            "workflow's current webhook secret",
        )
