"""Fixtures of the marketplace tests (helpers live in market_world.py, importable by name)."""

from market_world import always_verify, never_verify, world  # noqa: F401 - pytest fixtures
