"""The root of SplitUp's typed errors: every failure a user can cause is a subclass with a clear message."""


class SplitUpError(Exception):
    """Base class for every error SplitUp raises on purpose."""
