"""Must-show: CRM opportunities from a CSV (tests/data/README.md), replayed with `kpi replay`,
answer today, mtd, qtd, ytd and the _prev windows at several --as-of times exactly as counted
straight from the CSV, for a calendar fiscal year and one that starts in February."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SettingsFactory
from tests.crm_pipeline import check as check_csv
from tests.crm_pipeline import events, read_rows

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "crm_pipeline_sample.csv"
AS_OFS = (
    "2017-01-01T00:00:00Z",  # a year's first second: ytd is one day, ytd_prev the same day of 2016
    "2017-03-01T12:00:00Z",  # from February, the fiscal year's second month
    "2017-03-31T23:59:59Z",  # a quarter's last second; mtd_prev capped at February's end
    "2017-11-15T12:00:00Z",
    "2018-01-15T12:00:00Z",  # ytd_prev is 2017 to Jan 15; from February, Q4 is Nov-Jan
)


def test_calendar_windows_equal_the_csv_counts(make_settings: SettingsFactory, tmp_path: Path) -> None:
    rows = read_rows(SAMPLE.read_text(encoding="utf-8"))
    assert len(rows) == 160 and len(events(rows)) > 200
    lines = check_csv(make_settings(), rows, AS_OFS, (1, 2), tmp_path)
    assert len(lines) == len(AS_OFS) * 2
    print("\n".join(lines))


PUBLIC = Path(__file__).resolve().parents[1] / "data" / "crm_sales_pipeline_sample.csv"
PUBLIC_AS_OFS = (
    "2017-02-01T00:00:00Z",  # a month's first second
    "2017-06-30T23:59:59Z",  # a quarter's and (calendar) half year's last second
    "2017-10-15T12:00:00Z",
    "2017-12-31T23:59:59Z",  # the data set's last day: ytd is the whole of 2017
)


def test_calendar_windows_on_the_public_data_set_sample(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The same check on real rows: 400 of Maven Analytics' sales_pipeline.csv (tests/data)."""
    rows = read_rows(PUBLIC.read_text(encoding="utf-8"))
    assert len(rows) == 400
    lines = check_csv(make_settings(), rows, PUBLIC_AS_OFS, (1, 2), tmp_path)
    assert len(lines) == len(PUBLIC_AS_OFS) * 2
    print("\n".join(lines))
