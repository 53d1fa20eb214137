"""The trainer's parts beside its loop (`ptncn_dist/trainer.py`): checkpoints and the recovery loop."""
