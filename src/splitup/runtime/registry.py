"""Engines by name, and which of them this machine can run."""

from __future__ import annotations

from splitup.runtime.engine import Engine, EngineError, EngineUnavailable

ENGINES = ("onnxruntime", "tinygrad")


def get_engine(name: str = "onnxruntime", *, threads: int | None = None) -> Engine:
    if name == "onnxruntime":
        from splitup.runtime.ort import OnnxruntimeEngine

        return OnnxruntimeEngine(threads=threads)
    if name == "tinygrad":
        from splitup.runtime.tiny import TinygradEngine

        return TinygradEngine()
    raise EngineError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")


def available_engines() -> dict[str, str]:
    """``{engine: "ok" or the reason it cannot run here}``, for capability reports and test skips."""
    found: dict[str, str] = {}
    for name in ENGINES:
        try:
            get_engine(name)
            found[name] = "ok"
        except EngineUnavailable as exc:
            found[name] = str(exc)
    return found
