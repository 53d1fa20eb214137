"""MODEL.md written plainly (`model.py`) and the golden-run reader (`golden.py`): test oracles,
never used by training."""
