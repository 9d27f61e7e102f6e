"""`kpi serve`: the stateless read side (/metrics, JSON API, wall page) and, with a
Kafka URL, the HTTP ingest. Run as many as you like; they all read the same Redis."""

from __future__ import annotations

import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from kpi_app.bootstrap import build_runtime
from kpi_app.hooks_web import RawPublisher
from kpi_app.publishing import ProducerPublisher, broker_probe
from kpi_app.web import BrokerProbe, Publisher, create_app
from kpi_state.opmetrics import OpMetrics
from kpi_state.settings import Settings
from streams.broker import bootstrap_servers
from streams.producer import EventProducer
from streams.topics import ensure_topics

log = structlog.get_logger(__name__)


async def serve(settings: Settings, host: str, port: int) -> None:
    runtime = build_runtime(settings)
    registry = CollectorRegistry()
    ops = OpMetrics(registry)
    producer: EventProducer | None = None
    hooks_producer: EventProducer | None = None
    hooks_publish: RawPublisher | None = None
    publisher: Publisher | None = None
    probe: BrokerProbe | None = None
    try:
        if settings.kafka_url:
            bootstrap = bootstrap_servers(settings.kafka_url)
            topics = {
                settings.topic: settings.topic_partitions,
                settings.dlq_topic: settings.dlq_partitions,
                settings.hooks_topic: settings.hooks_partitions,
            }
            await ensure_topics(bootstrap, topics)
            producer = EventProducer(bootstrap, settings.topic, client_id="kpi-serve")
            await producer.start()
            publisher = ProducerPublisher(producer)
            probe = broker_probe(bootstrap)
            hooks_producer = EventProducer(bootstrap, settings.hooks_topic, client_id="kpi-serve-hooks")
            await hooks_producer.start()
            hooks_publish = _raw_publisher(hooks_producer)
        app = create_app(
            runtime,
            publisher=publisher,
            ops=ops,
            metrics_include=[registry],
            broker_probe=probe,
            hooks_publish=hooks_publish,
        )
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        log.info("serve.listening", url=f"http://{host}:{port}/", ingest=publisher is not None)
        await uvicorn.Server(config).serve()
    finally:
        for opened in (producer, hooks_producer):
            if opened is not None:
                await opened.close()
        await runtime.aclose()


def _raw_publisher(producer: EventProducer) -> RawPublisher:
    """Stores one webhook envelope; returns once the broker acknowledged it (unkeyed: any partition)."""

    async def publish(value: bytes) -> None:
        await producer.send_raw(None, value, wait=True)

    return publish
