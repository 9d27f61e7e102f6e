"""kpi_app.guards: token buckets, timestamped signatures and read access (pure)."""

from __future__ import annotations

import hashlib
import hmac

from kpi_app.guards import RateLimiter, ReadGuard, expected_signature, retry_after, signature_error


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == 0.5  # one token every 0.5 s
    assert limiter.acquire("b") == 0.0  # buckets are per key
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    clock.now += 100  # refills up to the burst, not beyond
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0
    assert retry_after(0.01) == "1" and retry_after(2.2) == "3"


def test_rate_zero_is_unlimited() -> None:
    limiter = RateLimiter(rate=0.0, burst=1, clock=FakeClock())
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))


def test_signature_is_over_timestamp_and_body_within_the_tolerance() -> None:
    body = b'{"a": 1}'
    good = "sha256=" + hmac.new(b"s", b"1000." + body, hashlib.sha256).hexdigest()
    assert expected_signature("s", "1000", body) == good

    def check(signature: str, stamp: str | None, now: float = 1000.0) -> str | None:
        return signature_error(signature, stamp, "s", body, now=now, tolerance=300)

    assert check(good, "1000") is None
    assert check(good.upper().replace("SHA256", "sha256"), "1000") is None  # hex case does not matter
    assert check(good, "1000", now=1300) is None
    assert "from the server's clock" in (check(good, "1000", now=1301) or "")
    assert "from the server's clock" in (check(good, "1000", now=699) or "")
    assert "missing" in (check(good, None) or "")
    assert check(good, "1001") is not None  # the timestamp is signed
    assert check(good, " 1000 ") is None
    for bad in ("", "+1000", "1e3", "10.0", "x", "9" * 13):
        assert check(good, bad) is not None, bad
    untimed = "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()
    assert check(untimed, "1000") is not None


def test_read_guard_is_open_without_configuration() -> None:
    guard = ReadGuard((), ())
    assert guard.open
    assert guard.allows(None, None, key_ok=False)


def test_read_guard_tokens_and_view_keys() -> None:
    guard = ReadGuard(("r1", "r2"), ("tv",))
    assert not guard.open
    assert guard.allows("Bearer r2", None, key_ok=False)
    assert guard.allows("bearer r1", None, key_ok=True)
    assert not guard.allows("Bearer tv", None, key_ok=True)  # a view key is not a bearer token
    assert not guard.allows(None, None, key_ok=True)
    assert guard.allows(None, "tv", key_ok=True)
    assert not guard.allows(None, "tv", key_ok=False)  # e.g. /metrics
    assert not guard.allows(None, "r1", key_ok=True)  # a read token is not a view key
    assert not guard.allows("Basic cjE=", "", key_ok=True)
    keys_only = ReadGuard((), ("tv",))
    assert not keys_only.open
    assert not keys_only.allows("Bearer tv", None, key_ok=False)
