"""What a bench worker's ``/metrics`` says it did: event counts and its freshness histogram."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.worker_processes import WorkerProcess


@dataclass
class WorkerCounts:
    processed: float = 0.0
    duplicate: float = 0.0
    redelivered: float = 0.0
    rejected: float = 0.0
    buckets: dict[float, float] | None = None  # le -> cumulative count of kpi_event_to_state_seconds

    @property
    def accounted(self) -> float:
        return self.processed + self.duplicate + self.rejected

    def add(self, other: WorkerCounts) -> WorkerCounts:
        return WorkerCounts(
            self.processed + other.processed,
            self.duplicate + other.duplicate,
            self.redelivered + other.redelivered,
            self.rejected + other.rejected,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "processed": round(self.processed),
            "duplicate": round(self.duplicate),
            "redelivered": round(self.redelivered),
            "rejected": round(self.rejected),
        }


async def scrape(http: httpx.AsyncClient, worker: WorkerProcess) -> WorkerCounts:
    response = await http.get(f"{worker.url}/metrics", timeout=30.0)
    response.raise_for_status()
    counts = WorkerCounts(buckets={})
    assert counts.buckets is not None
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            name = sample.name
            if name == "kpi_events_processed_total":
                counts.processed += sample.value
            elif name == "kpi_events_duplicate_total":
                counts.duplicate += sample.value
            elif name == "kpi_events_redelivered_total":
                counts.redelivered += sample.value
            elif name == "kpi_events_rejected_total":
                counts.rejected += sample.value
            elif name == "kpi_event_to_state_seconds_bucket":
                counts.buckets[float(sample.labels["le"])] = sample.value
    return counts
