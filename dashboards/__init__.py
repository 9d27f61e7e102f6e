"""The provisioned Grafana dashboards as code (grafana-foundation-sdk builders).

``make dashboards`` (``python -m dashboards``) writes ``grafana/dashboards/*.json`` from
these modules; a unit test fails when the committed files differ from what they build.
Panel queries name metrics only through ``dashboards.metrics.Metric``, the one list
checked against what the collector and the operational metrics export.

The SDK is a development dependency: Grafana reads the committed JSON, nothing at
run time imports this package.
"""
