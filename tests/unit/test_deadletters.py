"""Dead letters stay within what a broker accepts, and "too large" is recognised as permanent."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from streams.deadletters import MAX_VALUE_BYTES, DeadLetter, ProducerDeadLetters, too_large


def letter(value: bytes) -> DeadLetter:
    return DeadLetter(
        value=value,
        key=b"k",
        reason="invalid_json",
        field=None,
        detail="x" * 5000,
        topic="t",
        partition=0,
        offset=7,
        index=None,
        timestamp=1.5,
    )


def test_a_small_letter_is_kept_as_it_is() -> None:
    small = letter(b"{}")
    assert small.bounded() is small
    assert "dlq.truncated" not in dict(small.headers())


def test_a_large_value_is_cut_and_says_its_original_size() -> None:
    big = letter(b"y" * 1_500_000).bounded()
    assert big.value == b"y" * MAX_VALUE_BYTES
    headers = dict(big.headers())
    assert headers["dlq.truncated"] == b"1500000"
    assert len(headers["dlq.detail"]) == 1000
    assert sum(len(k) + len(v) for k, v in big.headers()) + len(big.value) < 300 * 1024


def test_too_large_is_found_through_the_wrapping() -> None:
    wrapped = ProducerSendError("Error while sending")
    wrapped.__cause__ = MessageSizeTooLargeError("record is 1.5 MB")
    assert too_large(wrapped)
    assert not too_large(KafkaConnectionError("broker down"))
    assert not too_large(None)


class RefusingProducer:
    """Refuses any record whose value is longer than ``limit`` as too large, the way faust's
    producer reports aiokafka's client-side size check; records the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[bytes, dict[str, bytes]]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, *rest: Any) -> Any:
        if len(value) > self.limit:
            error = ProducerSendError("Error while sending")
            error.__cause__ = MessageSizeTooLargeError("too large")
            raise error
        self.sent.append((value, dict(rest[2])))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_a_letter_the_producer_refuses_as_too_large_goes_without_its_value() -> None:
    producer = RefusingProducer(limit=1000)
    sink = ProducerDeadLetters(cast(Any, producer), "t.dlq")
    asyncio.run(sink.send([letter(b"z" * 5000), letter(b"{}")]))
    (empty, headers), (small, _) = producer.sent
    assert empty == b"" and headers["dlq.truncated"] == b"5000"
    assert small == b"{}"
