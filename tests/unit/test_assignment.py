"""Every branch of the worker's assignment decision (``streams.assignment``): no broker, no Redis."""

from __future__ import annotations

import pytest

from streams.assignment import Restart, Resume, Rewind, check_identity, check_watermarks, decide_resume

FIELDS = {0: "crm-events/id-1/0", 1: "crm-events/id-1/1"}


def test_first_assignment_of_a_process_takes_any_identity() -> None:
    assert check_identity(None, "id-1") is None


def test_same_identity_goes_on() -> None:
    assert check_identity("id-1", "id-1") is None


def test_new_identity_restarts() -> None:
    assert check_identity("id-1", "id-2") == Restart(
        "worker.topic_identity_changed", {"old": "id-1", "new": "id-2"}
    )


def test_watermarks_at_or_above_what_was_known_go_on() -> None:
    known = {FIELDS[0]: 10}
    assert check_watermarks(known, {FIELDS[0]: 10, FIELDS[1]: None}) is None
    assert check_watermarks(known, {FIELDS[0]: 12}) is None
    assert check_watermarks({}, {FIELDS[0]: None}) is None  # a new process knows nothing yet


@pytest.mark.parametrize("stored", [9, None])
def test_a_watermark_below_what_was_known_restarts(stored: int | None) -> None:
    restart = check_watermarks({FIELDS[0]: 10}, {FIELDS[0]: stored, FIELDS[1]: 3})
    assert restart == Restart(
        "worker.watermarks_lost", {"lost": {FIELDS[0]: (10, -1 if stored is None else 9)}}
    )


def test_resume_when_no_committed_offset_is_past_redis() -> None:
    stored = {FIELDS[0]: 99, FIELDS[1]: None}
    # partition 0: Redis and Kafka agree; 1: no committed offset and nothing in Redis.
    decision = decide_resume(FIELDS, stored, {0: 100, 1: None})
    assert decision == Resume(FIELDS, stored)


def test_resume_when_kafka_commits_lag_behind_redis() -> None:
    stored = {FIELDS[0]: 149, FIELDS[1]: 5}
    assert decide_resume(FIELDS, stored, {0: 100}) == Resume(FIELDS, stored)  # 1 has no entry: none committed


def test_rewind_only_the_partitions_redis_is_behind_on() -> None:
    stored = {FIELDS[0]: 49, FIELDS[1]: 99}
    assert decide_resume(FIELDS, stored, {0: 100, 1: 100}) == Rewind({0: 50})


def test_rewind_to_zero_when_redis_has_nothing_of_a_committed_partition() -> None:
    stored = {FIELDS[0]: None, FIELDS[1]: None}
    assert decide_resume(FIELDS, stored, {0: 120, 1: 7}) == Rewind({0: 0, 1: 0})


def test_resume_with_no_partitions() -> None:
    assert decide_resume({}, {}, {}) == Resume({}, {})
