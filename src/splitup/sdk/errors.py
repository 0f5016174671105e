"""The SDK's errors, by whose fault they are: the request's (``RequestError``: an API answers 400 and
nothing was posted), the market's momentary lack of room (``MarketBusy``: 429 with a time to retry,
nothing was posted), or the job's (``JobError``: placed, but not run or settled as asked)."""

from __future__ import annotations

from splitup.errors import SplitUpError


class JobError(SplitUpError):
    """A job could not be placed, run or settled."""


class RequestError(JobError):
    """The request itself is invalid or beyond a limit; refused before any money moved.

    ``param`` names the field at fault, ``code`` a machine-readable reason (OpenAI's codes where one exists).
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


class MarketBusy(JobError):
    """No node holding some task of the model can take another job now; nothing was posted.

    ``retry_after`` is the seconds after which a retry may find room.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
