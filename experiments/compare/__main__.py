"""`python -m experiments.compare ...`: see experiments.compare.cli."""
import sys

from .cli import main

sys.exit(1 if main().failed else 0)
