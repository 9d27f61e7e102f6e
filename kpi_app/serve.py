"""`kpi serve`: the stateless read side (/metrics, JSON API, wall page) and, with a
Kafka URL, the HTTP ingest. Run as many as you like; they all read the same Redis."""

from __future__ import annotations

import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from kpi_app.bootstrap import build_runtime
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
    publisher: Publisher | None = None
    probe: BrokerProbe | None = None
    try:
        if settings.kafka_url:
            bootstrap = bootstrap_servers(settings.kafka_url)
            topics = {settings.topic: settings.topic_partitions, settings.dlq_topic: settings.dlq_partitions}
            await ensure_topics(bootstrap, topics)
            producer = EventProducer(bootstrap, settings.topic, client_id="kpi-serve")
            await producer.start()
            publisher = ProducerPublisher(producer)
            probe = broker_probe(bootstrap)
        app = create_app(
            runtime, publisher=publisher, ops=ops, metrics_include=[registry], broker_probe=probe
        )
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        log.info("serve.listening", url=f"http://{host}:{port}/", ingest=publisher is not None)
        await uvicorn.Server(config).serve()
    finally:
        if producer is not None:
            await producer.close()
        await runtime.aclose()
