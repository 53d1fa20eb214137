"""Engines: who computes which layer where, and who sends what to whom. Never the arithmetic."""
from .base import Engine
from .local import LocalEngine

__all__ = ["Engine", "LocalEngine"]
