"""`kpi alerts backtest`: a history replayed through the real rules in a real Prometheus
(DESIGN section 9). ``run`` orchestrates; ``stepper`` replays and samples, ``openmetrics``
writes the samples, ``prometheus`` runs the server and promtool, ``rules`` reads the rule
files, ``alert_state`` applies ``for``/``keep_firing_for`` (pure)."""
