"""`ptncn tune`: hyper-parameter studies as Ray Tune trials with ASHA (`study.py`), over search
spaces read from TOML (`space.py`)."""
from .study import main, study

__all__ = ["main", "study"]
