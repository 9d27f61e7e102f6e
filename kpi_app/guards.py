"""Credentials and quotas of the HTTP app: bearer tokens, timestamped HMAC signatures, read
access (tokens and wall-screen view keys) and per-credential token buckets. Pure: no I/O.

Every secret comparison is constant time (``hmac.compare_digest``) and runs against every
configured secret without an early exit, so timing says nothing about which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A signature timestamp is Unix seconds, at most 12 digits (no sign, no fraction).
_MAX_TIMESTAMP_DIGITS = 12


def secret_matches(presented: bytes, secrets: Sequence[str]) -> bool:
    """``presented`` equals one of ``secrets`` (UTF-8), compared in constant time against all of them."""
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(presented, secret.encode())
    return ok


def header_bytes(value: str) -> bytes:
    """A header value as received (the ASGI server decoded its bytes as Latin-1)."""
    return value.encode("latin-1", "replace")


def bearer(header: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``; None if absent or another scheme."""
    if header is None:
        return None
    scheme, _, presented = header.strip().partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else None


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 with ``secret`` over ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signature_error(
    signature: str, timestamp: str | None, secret: str, body: bytes, *, now: float, tolerance: float
) -> str | None:
    """Why a signed request is refused, or None when it is authentic and fresh.

    The signature covers the timestamp, so a captured request cannot be re-dated, and a
    timestamp more than ``tolerance`` seconds from ``now`` is refused: a captured request
    can be replayed only within that window (and the worker de-duplicates by ``event_id``).
    """
    if timestamp is None:
        return "missing X-Signature-Timestamp (Unix seconds, signed together with the body)"
    stamp = timestamp.strip()
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > _MAX_TIMESTAMP_DIGITS:
        return "X-Signature-Timestamp must be Unix seconds"
    if abs(now - int(stamp)) > tolerance:
        return f"X-Signature-Timestamp is more than {tolerance:g} s from the server's clock"
    scheme, _, given = signature.strip().partition("=")
    presented = header_bytes(f"{scheme.lower()}={given.strip().lower()}")
    if not hmac.compare_digest(presented, expected_signature(secret, stamp, body).encode()):
        return "X-Signature-256 does not match the timestamp and body"
    return None


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """One token bucket per key: ``rate`` tokens a second, up to ``burst``; ``rate`` 0: unlimited.

    Keys must come from configuration (a token's position, ``"hmac"``), never from the
    request, so the table stays as small as the configuration.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        if self._rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class ReadGuard:
    """Who may read KPIs. Open when neither read tokens nor view keys are configured.

    A read token (``Authorization: Bearer``) opens every read endpoint; a view key (``?key=``)
    only the wall page and ``/api/kpis`` (what a wall screen needs), not ``/metrics``.
    """

    def __init__(self, tokens: Sequence[str], view_keys: Sequence[str]) -> None:
        self._tokens = tuple(tokens)
        self._keys = tuple(view_keys)

    @property
    def open(self) -> bool:
        return not self._tokens and not self._keys

    def allows(self, authorization: str | None, key: str | None, *, key_ok: bool) -> bool:
        if self.open:
            return True
        token = bearer(authorization)
        if token is not None and self._tokens and secret_matches(header_bytes(token), self._tokens):
            return True
        # Query parameters arrive percent-decoded as UTF-8.
        return key_ok and key is not None and bool(self._keys) and secret_matches(key.encode(), self._keys)
