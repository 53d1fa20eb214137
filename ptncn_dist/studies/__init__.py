"""The studies a user runs from the command line, apart from the library: `ptncn bench` (speed
side by side, `bench.py`), `ptncn bench scaling` (the layer-parallel scaling study,
`scaling.py` with `cost_model.py` and `scaling_report.py`) and `ptncn chaos` (the fault drill,
`chaos.py`). `harness.py` holds what they share, including the one place that starts Ray for
them."""
