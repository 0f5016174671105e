"""Errors of the real-model path: a model that is not installed, a damaged file, an unknown name."""

from splitup.errors import SplitUpError


class ModelError(SplitUpError):
    """A real model cannot be found, read or used as asked."""
