"""``python -m kpi_app`` is the ``kpi`` command (children of ``kpi demo`` use it)."""

from kpi_app.cli import main

main()
