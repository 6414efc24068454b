"""AWS Signature Version 4 for S3 requests, in the header form (``Authorization``).

Written here rather than taken from boto: Krill's HTTP stack is aiohttp, and
the whole of SigV4 for S3 is a canonical request, a string to sign and four
HMACs. It is checked against AWS's published examples (tests/test_s3sign.py)
and against a store that enforces it (SeaweedFS with an identity file, in the
backend conformance suite).

Two S3 particulars shape the API:

* the payload hash is a header (``x-amz-content-sha256``) the store checks
  against the body. For a blob, whose name *is* the sha256 of its bytes, it
  is the digest we already verified, so the store refuses a body that does not
  match: a second, independent check on every upload.
* S3 does not normalise paths, so the canonical URI is the path with each
  segment URI-encoded once (not twice, as other services want).

Credentials have a ``repr`` without the secret, so a log line or traceback
never carries it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "UNSIGNED_PAYLOAD",
    "Credentials",
    "SignedRequest",
    "amz_date",
    "canonical_path",
    "canonical_query",
    "canonical_request",
    "sign_request",
    "signing_key",
    "string_to_sign",
]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# For bodies whose hash we do not know up front; S3 then checks only the signature.
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Credentials:
    """An access key pair (and session token, for temporary credentials)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SignedRequest:
    """The headers to send: the caller's, plus date, payload hash and Authorization."""

    headers: dict[str, str]
    signature: str


def amz_date(when: dt.datetime) -> str:
    """``20130524T000000Z``: the timestamp format SigV4 signs (always UTC)."""
    return when.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    """RFC 3986 percent-encoding as SigV4 wants it: only A-Za-z0-9-._~ stay as they are."""
    return quote(text, safe="/~" if keep_slash else "~")


def canonical_query(query: Mapping[str, str]) -> str:
    """Keys and values encoded, then sorted by encoded key (``uploads=`` for a bare flag)."""
    pairs = sorted(
        (_uri_encode(k, keep_slash=False), _uri_encode(v, keep_slash=False))
        for k, v in query.items()
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_hash: str,
) -> tuple[str, str]:
    """The canonical request and its signed-headers list (every header given is signed)."""
    folded = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    names = sorted(folded)
    lines = [
        method.upper(),
        _uri_encode(path or "/", keep_slash=True),
        canonical_query(query),
        "".join(f"{name}:{folded[name]}\n" for name in names),
        ";".join(names),
        payload_hash,
    ]
    return "\n".join(lines), ";".join(names)


def scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/aws4_request"


def string_to_sign(timestamp: str, credential_scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{credential_scope}\n{digest}"


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The day's key: the secret HMACed with date, region, service and ``aws4_request``."""
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_request(
    credentials: Credentials,
    *,
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    payload_hash: str = EMPTY_SHA256,
    region: str = "us-east-1",
    service: str = "s3",
    now: dt.datetime,
) -> SignedRequest:
    """Sign one request; ``host`` is what the ``Host`` header will say (with a port if not 80/443).

    ``path`` is the unencoded path (``/bucket/key``); the request must be sent
    with that path encoded the same way (``canonical_path``).
    """
    timestamp = amz_date(now)
    signed = {
        **(headers or {}),
        "host": host,
        "x-amz-date": timestamp,
        "x-amz-content-sha256": payload_hash,
    }
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    canonical, signed_names = canonical_request(method, path, query or {}, signed, payload_hash)
    credential_scope = scope(timestamp[:8], region, service)
    to_sign = string_to_sign(timestamp, credential_scope, canonical)
    key = signing_key(credentials.secret_key, timestamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{credential_scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    del signed["host"]  # the HTTP client sends Host itself, from the URL
    return SignedRequest(signed, signature)


def canonical_path(path: str) -> str:
    """The path as it must appear on the wire for the signature to match."""
    return _uri_encode(path or "/", keep_slash=True)
