"""Seeded CRM event histories (DESIGN section 2 format) for the demo, `kpi simulate`, tests and
benchmarks: the model (``model``) and the engine that steps it (``generator``)."""

from kpi_app.simulation.generator import LiveSimulator, scaled_for_rate, simulate_history
from kpi_app.simulation.model import SimConfig

__all__ = ["LiveSimulator", "SimConfig", "scaled_for_rate", "simulate_history"]
