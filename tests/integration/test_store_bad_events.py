"""A validated event whose preparation still raises is refused on its own; its batch is applied."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kpi_state.events import LeadCreated
from kpi_state.report import KpiReader
from kpi_state.store import Outcome
from tests.conftest import SettingsFactory, StoreOpener

pytestmark = pytest.mark.integration


def test_an_event_that_breaks_the_fact_is_unprocessable_and_the_rest_applies(
    make_settings: SettingsFactory, open_store: StoreOpener
) -> None:
    settings = make_settings(timezone="America/Los_Angeles")
    now = datetime.now(UTC).replace(microsecond=0)
    good = LeadCreated.model_validate(
        {
            "type": "lead.created",
            "event_id": "ok",
            "occurred_at": now.isoformat(),
            "lead_id": "L1",
            "source": "web",
        }
    )
    # Built past validation (as a bug or a looser validator would let through): local time of
    # year 1 in Los Angeles is out of Python's range, so computing its day bucket raises.
    year_one = datetime(1, 1, 1, tzinfo=timezone(timedelta(0)))
    broken = LeadCreated.model_construct(
        type="lead.created", event_id="bad", occurred_at=year_one, lead_id="L2", source="ads"
    )

    async def scenario() -> None:
        async with open_store(settings) as store:
            result = await store.apply([good, broken])
            assert result.outcomes == [Outcome.APPLIED, Outcome.REJECTED]
            [(pos, rejection)] = result.rejected
            assert pos == 1 and rejection.reason == "unprocessable"
            doc = await KpiReader(store, settings).document(now)
            assert doc["windows"]["all"]["total"]["leads"] == 1
            assert set(doc["windows"]["all"]["by_source"]) == {"web"}

    asyncio.run(scenario())
