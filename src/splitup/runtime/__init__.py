"""Execution engines for task bundles: one :class:`Engine` interface, onnxruntime and tinygrad behind it.

An engine loads a bundle only after its hashes and its graph have been checked
(:func:`splitup.runtime.engine.Engine.load`), and gives back a :class:`Runner` that maps input arrays to
output arrays. KV-cache state lives outside the runner, in :mod:`splitup.runtime.sessions`, so one loaded
task serves many generation sessions at once.
"""

from splitup.runtime.engine import Engine, EngineError, EngineUnavailable, Runner, empty_state, run_stateful
from splitup.runtime.interface import ContextLimit, InterfaceError, check_feeds, check_positions
from splitup.runtime.registry import ENGINES, available_engines, get_engine
from splitup.runtime.sessions import Session, SessionError, SessionLimit, SessionStore, StepConflict

__all__ = [
    "Engine", "EngineError", "EngineUnavailable", "Runner", "empty_state", "run_stateful", "InterfaceError",
    "ContextLimit", "check_feeds", "check_positions", "ENGINES", "available_engines", "get_engine", "Session", "SessionError", "SessionLimit",
    "SessionStore", "StepConflict",
]
