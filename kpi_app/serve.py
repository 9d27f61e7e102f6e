"""`kpi serve`: the stateless read side (/metrics, JSON API, wall page) and, with a
Kafka URL, the HTTP ingest. Run as many as you like; they all read the same Redis."""

from __future__ import annotations

import structlog
import uvicorn

from kpi_app.bootstrap import build_runtime
from kpi_app.hooks_web import RawPublisher
from kpi_app.publishing import ProducerPublisher, broker_probe
from kpi_app.web import BrokerProbe, Publisher, create_app
from kpi_state.settings import Settings
from streams.producer import EventProducer

log = structlog.get_logger(__name__)


async def serve(settings: Settings, host: str, port: int) -> None:
    runtime = build_runtime(settings)
    producer: EventProducer | None = None
    hooks_producer: EventProducer | None = None
    hooks_publish: RawPublisher | None = None
    publisher: Publisher | None = None
    probe: BrokerProbe | None = None
    try:
        if settings.kafka_url:
            await runtime.ensure_topics(hooks=True)
            producer = runtime.producer(client_id="kpi-serve")
            await producer.start()
            publisher = ProducerPublisher(producer)
            probe = broker_probe(runtime.bootstrap())
            hooks_producer = runtime.producer(settings.hooks_topic, client_id="kpi-serve-hooks")
            await hooks_producer.start()
            hooks_publish = _raw_publisher(hooks_producer)
        app = create_app(
            runtime,
            publisher=publisher,
            ops=runtime.ops,
            metrics_include=[runtime.registry],
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
