"""Panel shapes both dashboards share, on grafana-foundation-sdk builders.

Every panel and every query reads the provisioned Prometheus datasource (uid
``kpi-prometheus``, grafana/provisioning/datasources/prometheus.yml). Panels carry
explicit ids and grid positions: ids stay stable for links and the wall's layout is
fixed by hand, not by the SDK's left-to-right placement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from string import ascii_uppercase

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

DATASOURCE_UID = "kpi-prometheus"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
NO_VALUE = "n/a"
REFRESH_INTERVALS = ["15s", "30s", "1m", "5m"]

# What a dashboard takes as a panel: any panel builder of the SDK.
Panel = Builder[dm.Panel]

# Threshold colours: Grafana's palette names, and its amber for "watch".
AMBER = "#EAB839"


@dataclass(frozen=True)
class Query:
    """One target: ``expr`` with its legend (None: no legendFormat key)."""

    expr: str
    legend: str | None = None


def at(x: int, y: int, w: int, h: int) -> dm.GridPos:
    return dm.GridPos(x=x, y=y, w=w, h=h)


def steps(base: str, *above: tuple[float, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds: ``base`` below the first step, then (value, colour) upwards."""
    first = dm.Threshold(value=None, color=base)
    rest = [dm.Threshold(value=value, color=color) for value, color in above]
    return dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([first, *rest])


def colour(mode: dm.FieldColorModeId) -> dash.FieldColor:
    return dash.FieldColor().mode(mode)


def targets(
    queries: Sequence[Query], *, instant: bool, table: bool = False
) -> list[Builder[variants.Dataquery]]:
    """Queries with refIds A, B, ...: instant (the value now) or range (a time series)."""
    if len(queries) > len(ascii_uppercase):
        raise ValueError(f"a panel takes at most {len(ascii_uppercase)} queries")
    out: list[Builder[variants.Dataquery]] = []
    for ref_id, query in zip(ascii_uppercase, queries, strict=False):
        target = (
            prometheus.Dataquery()
            .datasource(DATASOURCE)
            .ref_id(ref_id)
            .editor_mode(pm.QueryEditorMode.CODE)
            .expr(query.expr)
            .format(pm.PromQueryFormat.TABLE if table else pm.PromQueryFormat.TIME_SERIES)
        )
        target = target.instant() if instant else target.range()
        if query.legend is not None:
            target = target.legend_format(query.legend)
        out.append(target)
    return out


def last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


@dataclass(frozen=True)
class Look:
    """How a single value reads: unit, decimals (None: Grafana's choice), colouring."""

    unit: str
    decimals: int | None = None
    thresholds: dash.ThresholdsConfig | None = None  # None: plain text colour
    no_value: str = NO_VALUE


def stat_panel(
    panel_id: int,
    title: str,
    description: str,
    pos: dm.GridPos,
    query: Query,
    look: Look,
    *,
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO,
    justify: cm.BigValueJustifyMode = cm.BigValueJustifyMode.CENTER,
    mappings: Sequence[dm.ValueMap] = (),
    color_mode: cm.BigValueColorMode | None = None,
) -> stat.Panel:
    """A big number. With thresholds the background takes their colour (unless ``color_mode``
    says otherwise), without them the value is plain text."""
    if color_mode is None:
        coloured = look.thresholds is not None
        color_mode = cm.BigValueColorMode.BACKGROUND if coloured else cm.BigValueColorMode.VALUE
    panel = (
        stat.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .grid_pos(pos)
        .targets(targets([query], instant=True))
        .unit(look.unit)
        .color_scheme(colour(dm.FieldColorModeId.THRESHOLDS))
        .thresholds(look.thresholds or steps("text"))
        .mappings(list(mappings))
        .no_value(look.no_value)
        .reduce_options(last_value())
        .orientation(cm.VizOrientation.AUTO)
        .text_mode(text_mode)
        .color_mode(color_mode)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .justify_mode(justify)
        .wide_layout(True)
        .show_percent_change(False)
    )
    if look.decimals is not None:
        panel = panel.decimals(look.decimals)
    return panel


def bar_gauge_panel(
    panel_id: int,
    title: str,
    description: str,
    pos: dm.GridPos,
    queries: Sequence[Query],
    look: Look,
    *,
    max_value: float | None = None,
) -> bargauge.Panel:
    """Horizontal gradient bars, one per series. Without thresholds the bars shade blue to
    purple by value; with them each bar takes its threshold's colour."""
    coloured = look.thresholds is not None
    scheme = dm.FieldColorModeId.THRESHOLDS if coloured else dm.FieldColorModeId.CONTINUOUS_BL_PU
    panel = (
        bargauge.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .grid_pos(pos)
        .targets(targets(queries, instant=True))
        .unit(look.unit)
        .min(0)
        .color_scheme(colour(scheme))
        .thresholds(look.thresholds or steps("blue"))
        .mappings([])
        .no_value(look.no_value)
        .reduce_options(last_value())
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .value_mode(cm.BarGaugeValueMode.COLOR)
        .name_placement(cm.BarGaugeNamePlacement.LEFT)
        .show_unfilled(True)
        .sizing(cm.BarGaugeSizing.AUTO)
        .min_viz_width(8)
        .min_viz_height(16)
        .max_viz_height(300)
    )
    if look.decimals is not None:
        panel = panel.decimals(look.decimals)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def time_series_panel(
    panel_id: int,
    title: str,
    description: str,
    pos: dm.GridPos,
    queries: Sequence[Query],
    *,
    unit: str,
    decimals: int | None = None,
    fill_opacity: int = 10,
    stacked: bool = False,
    thresholds: dash.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    """Smooth lines from 0 up, one colour per series. ``thresholds`` draws them as line and
    area (e.g. a latency target); without, none are drawn."""
    panel = (
        timeseries.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .grid_pos(pos)
        .targets(targets(queries, instant=False))
        .unit(unit)
        .min(0)
        .color_scheme(colour(dm.FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(thresholds or steps("green"))
        .mappings([])
        .draw_style(cm.GraphDrawStyle.LINE)
        .line_width(2)
        .line_interpolation(cm.LineInterpolation.SMOOTH)
        .fill_opacity(fill_opacity)
        .gradient_mode(cm.GraphGradientMode.OPACITY)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(True)
        .axis_placement(cm.AxisPlacement.AUTO)
        .axis_soft_min(0)
        .stacking(
            common.StackingConfig()
            .mode(cm.StackingMode.NORMAL if stacked else cm.StackingMode.NONE)
            .group("A")
        )
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(
                cm.GraphThresholdsStyleMode.LINE_AND_AREA if thresholds else cm.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            common.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs([])
        )
        .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def custom_variable(
    name: str, label: str, description: str, values: list[str], current: str
) -> dash.CustomVariable:
    """A single-value dropdown over ``values``, ``current`` selected; Grafana's URL carries it."""

    def option(value: str) -> dm.VariableOption:
        return dm.VariableOption(selected=value == current, text=value, value=value)

    return (
        dash.CustomVariable(name)
        .label(label)
        .description(description)
        .values(",".join(values))
        .multi(False)
        .include_all(False)
        .hide(dm.VariableHide.DONT_HIDE)
        .current(option(current))
        .options([option(v) for v in values])
    )


def dashboard_link(title: str, url: str, tooltip: str, *, keep_time: bool) -> dash.DashboardLink:
    return (
        dash.DashboardLink(title)
        .type(dm.DashboardLinkType.LINK)
        .url(url)
        .icon("dashboard")
        .tooltip(tooltip)
        .as_dropdown(False)
        .include_vars(False)
        .keep_time(keep_time)
        .target_blank(False)
        .tags([])
    )


def base_dashboard(uid: str, title: str, description: str, tags: list[str], time_from: str) -> dash.Dashboard:
    """Read-only (provisioned), shared crosshair, refreshed every 30 s, in the browser's zone."""
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(tags)
        .version(1)
        .readonly()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .fiscal_year_start_month(0)
        .live_now(False)
        .refresh("30s")
        .time(f"now-{time_from}", "now")
        .timepicker(dash.TimePicker().refresh_intervals(REFRESH_INTERVALS))
        .timezone("browser")
        .week_start("")
        .annotations([])
        .variables([])
    )
