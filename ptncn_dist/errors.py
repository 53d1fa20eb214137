"""The exceptions a user sees: each says what is wrong and where."""


class PtncnError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(PtncnError, ValueError):
    """A config key, value or type is wrong."""


class DataError(PtncnError, ValueError):
    """A data file is missing or not in the expected format."""


class CheckpointError(PtncnError, ValueError):
    """A checkpoint is missing, truncated, altered or from another config."""


class DivergenceError(PtncnError, FloatingPointError):
    """A NaN or Inf appeared in a layer; the message names the layer and step."""


class RunStopped(PtncnError):
    """A run stopped on request (SIGINT or SIGTERM) after writing its checkpoint; the message
    says where it stopped and how to continue it."""
