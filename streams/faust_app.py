"""The faust app factory shared by the KPI worker and the bare-agent benchmark baseline.

Settings and why (DESIGN section 7, ``docs/kafka-notes.md``):

- ``broker_session_timeout`` 10 s: Tansu holds a JoinGroup for about half the session timeout and
  notices a graceful leave only when the session expires, so the faust default (60 s) makes every
  start and every rebalance take ~30-60 s. Heartbeat every 1 s so members learn of a rebalance fast.
- ``topic_allow_declare=False`` and ``topic_disable_leader=True``: faust creates no topics (Tansu
  would create them with 4 partitions); ``streams.topics.ensure_topics`` creates them first.
- ``value_serializer="raw"``: the agent receives bytes and validates them itself, so a bad message
  becomes a dead letter, not a crash in faust's deserialiser.
- ``store="memory://"`` and no tables: KPI state lives in Redis.
- The ``worker`` command ignores ``web_enabled=False``, so each worker needs its own ``web_port``.
- Fetch wait 100 ms instead of faust's hard-coded 1500 ms: Tansu holds a fetch for much of that
  wait even while data arrives, which put the event-to-state p99 at ~0.9-1.0 s at 1,000 events/s;
  at 100 ms it measured ~0.3 s with no throughput change (``streams.faust_compat.limit_fetch_wait``,
  where every private faust/aiokafka hook lives).
"""

from __future__ import annotations

from typing import Any

import faust

from kpi_state.settings import Settings
from streams.broker import bootstrap_servers
from streams.faust_compat import limit_fetch_wait

SESSION_TIMEOUT_SECONDS = 10.0
HEARTBEAT_INTERVAL_SECONDS = 1.0


def make_app(
    settings: Settings,
    *,
    app_id: str | None = None,
    web_port: int,
    web_host: str = "127.0.0.1",
    broker_url: str | None = None,
    session_timeout: float = SESSION_TIMEOUT_SECONDS,
    heartbeat_interval: float = HEARTBEAT_INTERVAL_SECONDS,
    **overrides: Any,
) -> faust.App:
    """A faust app (no agents yet) for ``settings``; ``app_id`` is the consumer group id.

    Also applies ``streams.faust_compat.limit_fetch_wait`` to this process.

    ``overrides`` are passed to ``faust.App`` last, for the rare setting a caller must change.
    """
    url = broker_url or settings.kafka_url
    if not url:
        raise ValueError("no Kafka URL: set KPI_KAFKA_URL or pass broker_url")
    options: dict[str, Any] = {
        "broker": "kafka://" + bootstrap_servers(url).replace(",", ";kafka://"),
        "broker_session_timeout": session_timeout,
        "broker_heartbeat_interval": heartbeat_interval,
        "consumer_auto_offset_reset": "earliest",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": 1,
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "store": "memory://",
        "table_standby_replicas": 0,
        "web_host": web_host,
        "web_bind": web_host,
        "web_port": web_port,
        "autodiscover": False,
        "producer_acks": -1,
        # Dead letters are bounded (streams.deadletters.MAX_VALUE_BYTES); this is the producer's
        # margin for their headers, matching streams.producer.EventProducer.
        "producer_max_request_size": 4 * 1024 * 1024,
    }
    options.update(overrides)
    limit_fetch_wait()
    return faust.App(app_id or settings.consumer_group, **options)


def _raw_topic(app: faust.App, name: str, partitions: int) -> faust.TopicT:
    """A topic of raw bytes (keys and values): the worker validates values itself."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=False,
    )


def events_topic(app: faust.App, settings: Settings, *, name: str | None = None) -> faust.TopicT:
    """The raw-bytes event topic (``settings.topic``) with its configured partition count."""
    return _raw_topic(app, name or settings.topic, settings.topic_partitions)


def dead_letter_topic(app: faust.App, settings: Settings) -> faust.TopicT:
    return _raw_topic(app, settings.dlq_topic, settings.dlq_partitions)
