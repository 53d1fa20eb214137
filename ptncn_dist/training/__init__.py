"""The trainer's parts beside its loop (`ptncn_dist/train.py`): checkpoints and the recovery loop."""
