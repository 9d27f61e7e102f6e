"""The worker's pure parts: where a partition resumes, watermark loss detection, dead-letter records."""

from __future__ import annotations

import pytest

from streams.deadletters import DeadLetter, read_headers
from streams.offsets import NO_WATERMARK, WatermarkLedger, resume_offset, rewind_target, watermark_field


def test_watermark_field_names_topic_identity_and_partition() -> None:
    assert watermark_field("crm-events", "01a2-uuid", 3) == "crm-events/01a2-uuid/3"


@pytest.mark.parametrize(
    ("stored", "committed", "resume", "rewind"),
    [
        (None, None, 0, None),  # new namespace, new group: faust starts at the earliest offset
        (None, 0, 0, None),
        (None, 120, 0, 0),  # Redis has nothing of this log (new namespace, or lost it all)
        (99, 100, 100, None),  # the usual case: Redis and Kafka agree
        (149, 100, 100, None),  # Kafka commits lag behind Redis: the watermark skips the rest
        (49, 100, 50, 50),  # Redis lost its last writes: rewind
        (99, None, 100, None),  # group offsets expired: faust starts at the earliest, skipped cheaply
    ],
)
def test_resume_at_the_lower_of_redis_and_kafka(
    stored: int | None, committed: int | None, resume: int, rewind: int | None
) -> None:
    assert resume_offset(stored, committed) == resume
    assert rewind_target(stored, committed) == rewind


def test_ledger_reports_only_fields_that_went_down() -> None:
    ledger = WatermarkLedger()
    ledger.reset({"a": None, "b": 10, "c": 5})
    ledger.raise_to({"a": 7, "b": 8})  # never lowers
    known = ledger.snapshot()
    assert known == {"a": 7, "b": 10, "c": 5}
    assert WatermarkLedger.lost(known, {"a": 7, "b": 12, "c": 5}) == {}
    assert WatermarkLedger.lost(known, {"a": None, "b": 9, "c": 5, "d": None}) == {
        "a": (7, NO_WATERMARK),
        "b": (10, 9),
    }


def test_dead_letter_headers_round_trip() -> None:
    letter = DeadLetter(
        value=b'{"event_id":"e1"}',
        key=b"deal-1",
        reason="missing_field",
        field="deal_id",
        detail="x" * 5000,
        topic="crm-events",
        partition=3,
        offset=42,
        index=7,
        timestamp=1_700_000_000.1234,
    )
    headers = read_headers(letter.headers())
    assert headers == {
        "dlq.reason": "missing_field",
        "dlq.field": "deal_id",
        "dlq.detail": "x" * 1000,
        "dlq.topic": "crm-events",
        "dlq.partition": "3",
        "dlq.offset": "42",
        "dlq.index": "7",
        "dlq.timestamp": "1700000000123",
    }
    single = DeadLetter(b"oops", None, "invalid_json", None, "bad", "t", 0, 1, None, None)
    assert set(read_headers(single.headers())) == {
        "dlq.reason",
        "dlq.detail",
        "dlq.topic",
        "dlq.partition",
        "dlq.offset",
    }
