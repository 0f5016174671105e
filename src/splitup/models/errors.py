"""Errors of the real-model path: a model that is not installed, a damaged file, an unknown name."""

from splitup.errors import SplitUpError


class ModelError(SplitUpError):
    """A real model cannot be found, read or used as asked."""


class ChatTemplateError(ModelError):
    """A model's chat template refused the messages (``raise_exception``) or could not render them."""


class MissingExtraError(ModelError):
    """A route needs an optional extra that is not installed; ``extra`` names it (``pip install 'splitup[extra]'``)."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra
