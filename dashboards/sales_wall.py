"""The Sales wall (uid ``sales-wall``): the KPIs on a wall screen, opened with ``?kiosk``.

Rows, top to bottom: six headline KPIs, six more, the conversion trend beside the
funnel, the leaderboard beside pipeline and CAC breakdowns, the calendar period row,
and the targets. ``$window`` picks the rolling window of every KPI except the
conversion trend (fixed 24h against the 30d baseline the SalesConversionDropped alert
compares); ``$period`` picks the calendar period of the period row (DESIGN sections 3-4).
Several copies of a series (kpi-serve and workers) are collapsed with ``max``.
"""

from __future__ import annotations

from typing import NamedTuple

from grafana_foundation_sdk.builders import common, table
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.metrics import IN_PERIOD, IN_WINDOW, Metric, sel, window
from dashboards.panels import (
    AMBER,
    DATASOURCE,
    Look,
    Panel,
    Query,
    at,
    bar_gauge_panel,
    base_dashboard,
    colour,
    custom_variable,
    dashboard_link,
    stat_panel,
    steps,
    targets,
    time_series_panel,
)

UID = "sales-wall"
FILE = "sales-wall.json"
WINDOWS = ["24h", "7d", "30d", "90d"]
PERIODS = ["today", "mtd", "qtd", "ytd"]
TARGET_LEGEND = "{{kpi}} · {{scope}} · {{period}}"
BASELINE_LINE = "30-day baseline"


class Headline(NamedTuple):
    title: str
    description: str
    query: Query
    look: Look
    per_currency: bool = False  # one value per currency, each named by it


def _money(metric: Metric, *matchers: str) -> Query:
    return Query(f"max by (currency) ({sel(metric, *matchers)})", "{{currency}}")


def _in_window(metric: Metric, legend: str) -> Query:
    return Query(f"max({sel(metric, IN_WINDOW)})", legend)


# Satisfaction and unit economics turn red, amber, green (tests/unit/test_dashboards.py pins LTV:CAC's).
LTV_CAC_HEALTH = steps("red", (1, AMBER), (3, "green"))
NPS_HEALTH = steps("red", (0, AMBER), (30, "green"))
CSAT_HEALTH = steps("red", (0.7, AMBER), (0.85, "green"))

# Two rows of six, left to right; the first row is taller (the numbers the wall is for).
HEADLINES = [
    Headline("Revenue won", "Sum of won deal amounts in the window, in the reporting currency.",
             _money(Metric.REVENUE_WON, IN_WINDOW), Look("short", 1), per_currency=True),
    Headline("New customers", "Customers whose first won deal falls in the window.",
             _in_window(Metric.NEW_CUSTOMERS, "new customers"), Look("none", 0)),
    Headline("Lead conversion",
             "Leads whose first won deal falls in the window / leads created in the window.",
             _in_window(Metric.CONVERSION_RATIO, "conversion"), Look("percentunit", 1)),
    Headline("Win rate", "Deals won / (won + lost) in the window.",
             _in_window(Metric.WIN_RATIO, "win rate"), Look("percentunit", 1)),
    Headline("LTV : CAC", "Customer lifetime value / customer acquisition cost. 3 or more is healthy, "
             "under 1 loses money on every customer.",
             _in_window(Metric.LTV_CAC_RATIO, "LTV:CAC"), Look("none", 1, LTV_CAC_HEALTH)),
    Headline("CAC", "(Marketing + sales spend) / new customers in the window.",
             _money(Metric.CAC, IN_WINDOW), Look("short", 0), per_currency=True),
    Headline("Average deal size", "Revenue won / deals won in the window.",
             _money(Metric.AVG_DEAL_SIZE, IN_WINDOW), Look("short", 0), per_currency=True),
    Headline("Sales cycle", "Mean time from deal created to deal won, over deals won in the window.",
             _in_window(Metric.CYCLE_SECONDS, "cycle"), Look("s", 1)),
    Headline("Weighted pipeline", "Open deal value x stage win probability, now.",
             _money(Metric.PIPELINE_WEIGHTED_VALUE), Look("short", 1), per_currency=True),
    Headline("Active customers", "Customers with a won deal, minus those churned, now.",
             Query(f"max({sel(Metric.ACTIVE_CUSTOMERS)})", "active"), Look("none", 0)),
    Headline("NPS", "Net promoter score (-100..100): % promoters (9-10) - % detractors (0-6).",
             _in_window(Metric.NPS, "NPS"), Look("none", 0, NPS_HEALTH)),
    Headline("CSAT", "Share of CSAT answers scored 4 or 5.",
             _in_window(Metric.CSAT_RATIO, "CSAT"), Look("percentunit", 0, CSAT_HEALTH)),
]  # fmt: skip


def _headline_panels() -> list[Panel]:
    panels: list[Panel] = []
    for i, kpi in enumerate(HEADLINES):
        row, column = divmod(i, 6)
        pos = at(column * 4, 0, 4, 5) if row == 0 else at(column * 4, 5, 4, 4)
        text_mode = cm.BigValueTextMode.VALUE_AND_NAME if kpi.per_currency else cm.BigValueTextMode.AUTO
        panels.append(
            stat_panel(i + 1, kpi.title, kpi.description, pos, kpi.query, kpi.look, text_mode=text_mode)
        )
    return panels


def _conversion_trend() -> Panel:
    baseline = f"max({sel(Metric.CONVERSION_RATIO, window('30d'))})"
    return time_series_panel(
        13,
        "Lead conversion: last 24h vs 30-day baseline",
        "Lead conversion over the last day against the month. The drop alerts compare counts "
        "instead (a binomial z-score against each rate's own baseline, in total and per source "
        "and segment): see docs/alerts.md.",
        at(0, 9, 12, 9),
        [
            Query(f"max({sel(Metric.CONVERSION_RATIO, window('24h'))})", "last 24h"),
            Query(baseline, BASELINE_LINE),
        ],
        unit="percentunit",
        decimals=1,
    ).override_by_name(
        BASELINE_LINE,
        [
            dm.DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
            dm.DynamicConfigValue("custom.fillOpacity", 0),
            dm.DynamicConfigValue("custom.lineWidth", 1),
            dm.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "text"}),
        ],
    )


def _funnel() -> Panel:
    return bar_gauge_panel(
        14,
        "Funnel",
        "Leads created, leads qualified, deals created and deals won in the window.",
        at(12, 9, 12, 9),
        [
            _in_window(Metric.LEADS, "Leads"),
            _in_window(Metric.QUALIFIED_LEADS, "Qualified"),
            _in_window(Metric.DEALS_CREATED, "Deals created"),
            _in_window(Metric.DEALS_WON, "Won"),
        ],
        Look("none", 0),
    )


def _leaderboard() -> Panel:
    """Four per-rep instant tables merged on ``rep``, sorted by revenue, top 10."""
    per_rep = [
        Metric.REVENUE_WON_BY_REP,
        Metric.NEW_CUSTOMERS_BY_REP,
        Metric.DEALS_WON_BY_REP,
        Metric.WIN_RATIO_BY_REP,
    ]
    columns = ["Revenue won", "New customers", "Deals won", "Win rate"]
    values = [f"Value #{ref}" for ref in "ABCD"]
    organize = {
        "excludeByName": {"Time": True},
        "indexByName": {"rep": 0, **{v: i for i, v in enumerate(values, start=1)}},
        "renameByName": {"rep": "Rep", **dict(zip(values, columns, strict=True))},
    }
    transformations = [
        dm.DataTransformerConfig(id_val="merge", options={}),
        dm.DataTransformerConfig(id_val="organize", options=organize),
        dm.DataTransformerConfig(
            id_val="sortBy", options={"fields": {}, "sort": [{"field": columns[0], "desc": True}]}
        ),
        dm.DataTransformerConfig(id_val="limit", options={"limitField": 10}),
    ]
    revenue_bar = cm.TableBarGaugeCellOptions(
        mode=cm.BarGaugeDisplayMode.GRADIENT, value_display_mode=cm.BarGaugeValueMode.TEXT
    )
    return (
        table.Panel()
        .id(15)
        .title("Leaderboard")
        .description("Sales reps by revenue won in the window (top 10).")
        .datasource(DATASOURCE)
        .grid_pos(at(0, 18, 10, 11))
        .targets(
            targets([Query(f"max by (rep) ({sel(m, IN_WINDOW)})") for m in per_rep], instant=True, table=True)
        )
        .transformations(transformations)
        .unit("none")
        .decimals(0)
        .color_scheme(colour(dm.FieldColorModeId.THRESHOLDS))
        .thresholds(steps("text"))
        .mappings([])
        .no_value("-")
        .align(cm.FieldTextAlignment.AUTO)
        .cell_options(cm.TableAutoCellOptions())
        .inspect(False)
        .override_by_name(
            "Revenue won",
            [
                dm.DynamicConfigValue("unit", "short"),
                dm.DynamicConfigValue("decimals", 1),
                dm.DynamicConfigValue("color", {"mode": "continuous-BlPu"}),
                dm.DynamicConfigValue("custom.cellOptions", revenue_bar),
            ],
        )
        .override_by_name(
            "Win rate", [dm.DynamicConfigValue("unit", "percentunit"), dm.DynamicConfigValue("decimals", 0)]
        )
        .override_by_name("Rep", [dm.DynamicConfigValue("custom.width", 140)])
        .show_header(True)
        .cell_height(cm.TableCellHeight.MD)
        .sort_by([common.TableSortByFieldState().display_name(columns[0]).desc(True)])
        .footer(common.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False))
    )


def _breakdowns() -> list[Panel]:
    return [
        bar_gauge_panel(
            16,
            "Open pipeline by stage",
            "Value of the open deals in each stage, now (reporting currency).",
            at(10, 18, 7, 11),
            [Query(f"sort_desc(max by (stage) ({sel(Metric.PIPELINE_VALUE)}))", "{{stage}}")],
            Look("short", 0),
        ),
        bar_gauge_panel(
            17,
            "CAC by source",
            "Spend on a channel / new customers from its leads, in the window; cheapest first.",
            at(17, 18, 7, 11),
            [Query(f"sort(max by (source) ({sel(Metric.CAC_BY_SOURCE, IN_WINDOW)}))", "{{source}}")],
            Look("short", 0),
        ),
    ]


def _against_previous(metric: Metric) -> str:
    """This period to date / the like-for-like previous period - 1. ``today_prev`` does not
    exist: today falls back to the same series a day ago (yesterday at this time)."""
    keep = "max without (instance, job, window)"
    now, prev = sel(metric, IN_PERIOD), sel(metric, window("${period}_prev"))
    return f"{keep} ({now}) / ({keep} ({prev}) or {keep} ({now} offset 1d)) - 1"


def _period_stat(
    panel_id: int, title: str, description: str, pos: dm.GridPos, query: Query, look: Look
) -> Panel:
    """The period row reads as bare coloured values: no series name, Grafana's own alignment."""
    return stat_panel(
        panel_id,
        title,
        description,
        pos,
        query,
        look,
        text_mode=cm.BigValueTextMode.VALUE,
        justify=cm.BigValueJustifyMode.AUTO,
        color_mode=cm.BigValueColorMode.VALUE,
    )


def _period_panels() -> list[Panel]:
    change = Look("percentunit", 1, steps("red", (0, "green")))
    return [
        _period_stat(
            19,
            "Revenue won ($period)",
            "Revenue of deals won in the calendar period to date.",
            at(0, 29, 6, 5),
            Query(f"max without (instance, job) ({sel(Metric.REVENUE_WON, IN_PERIOD)})", ""),
            Look("currencyEUR", 0, steps("blue")),
        ),
        _period_stat(
            20,
            "Revenue vs previous period",
            "Change against the like-for-like previous period (the same number of days from its start: "
            "window <period>_prev); today against yesterday.",
            at(6, 29, 6, 5),
            Query(_against_previous(Metric.REVENUE_WON), ""),
            change,
        ),
        _period_stat(
            21,
            "Deals won ($period)",
            "Deals won in the calendar period to date.",
            at(12, 29, 6, 5),
            Query(f"max without (instance, job) ({sel(Metric.DEALS_WON, IN_PERIOD)})", ""),
            Look("short", 0, steps("blue")),
        ),
        _period_stat(
            22,
            "Leads vs previous period",
            "Leads against the like-for-like previous period; today against yesterday.",
            at(18, 29, 6, 5),
            Query(_against_previous(Metric.LEADS), ""),
            change,
        ),
    ]


def _target_panels() -> list[Panel]:
    return [
        bar_gauge_panel(
            23,
            "Targets: attainment",
            "Period-to-date actual / target, for the targets whose period contains now "
            "(kpi targets load, PUT /api/targets); coloured by pace status.",
            at(0, 34, 12, 9),
            [
                Query(
                    f"sort_desc(max without (instance, job) ({sel(Metric.TARGET_ATTAINMENT_RATIO)}))",
                    TARGET_LEGEND,
                )
            ],
            Look("percentunit", 2, steps("red", (0.9, "blue"), (1, "green")), no_value="no targets"),
            max_value=1.5,
        ),
        bar_gauge_panel(
            24,
            "Targets: pace",
            "Attainment / fraction of the period elapsed: behind < 0.9 (red), on track 0.9-1.1 (blue), "
            "ahead >= 1.1 (green); SalesTargetBehindPace alerts once a third of the period is gone.",
            at(12, 34, 12, 9),
            [Query(f"sort({sel(Metric.TARGET_PACE_RATIO_MAX)})", TARGET_LEGEND)],
            Look("short", 2, steps("red", (0.9, "blue"), (1.1, "green")), no_value="no targets"),
            max_value=2,
        ),
    ]


def build() -> dash.Dashboard:
    wall = (
        base_dashboard(
            UID,
            "Sales wall",
            "Sales KPIs for a wall screen: open with ?kiosk. Numbers are rolling windows in event time.",
            ["sales", "kpi", "wall"],
            time_from="7d",
        )
        .link(
            dashboard_link(
                "Operations", "/d/kpi-operations/operations", "Event pipeline health", keep_time=True
            )
        )
        .with_variable(
            custom_variable(
                "window", "Window", "Rolling window of the KPIs (DESIGN section 3)", WINDOWS, "30d"
            )
        )
        .with_variable(
            custom_variable(
                "period",
                "Period",
                "Calendar period to date of the period row (DESIGN section 3): fiscal year from "
                "KPI_FISCAL_YEAR_START_MONTH",
                PERIODS,
                "mtd",
            )
        )
    )
    panels = [
        *_headline_panels(),
        _conversion_trend(),
        _funnel(),
        _leaderboard(),
        *_breakdowns(),
        *_period_panels(),
        *_target_panels(),
    ]
    for panel in panels:
        wall = wall.with_panel(panel)
    return wall
