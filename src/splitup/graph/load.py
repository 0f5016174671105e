"""Read an ONNX model from a stranger: size first, then parse, never follow external data."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from splitup.graph.errors import MalformedGraph, ProtoTooLarge, UnreadableModel
from splitup.graph.limits import Limits


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ProtoTooLarge(f"model file is {size} bytes, more than the limit of {limit}", where=str(path))
        with path.open("rb") as fh:
            # Read one byte past the limit: a FIFO or device reports size 0 but may never end.
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise UnreadableModel("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise UnreadableModel("is a directory, not an ONNX file", where=str(path)) from None
    except OSError as exc:
        raise UnreadableModel(f"cannot read model: {exc.strerror or exc}", where=str(path)) from None
    if len(data) > limit:
        raise ProtoTooLarge(f"model is more than the limit of {limit} bytes", where=str(path))
    return data


def load_model(source: str | os.PathLike[str] | bytes, limits: Limits | None = None) -> onnx.ModelProto:
    """Parse a model from a path or from serialized bytes, checking the byte size before parsing.

    External data is never loaded: weights stay on disk and are sized from their declared dims.
    Raises ``ProtoTooLarge``, ``UnreadableModel`` or ``MalformedGraph``; validate the result with
    :func:`splitup.graph.validate.validate_model` before using it.
    """
    limits = limits or Limits()
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        where = "<bytes>"
        if len(data) > limits.max_proto_bytes:
            raise ProtoTooLarge(
                f"model is {len(data)} bytes, more than the limit of {limits.max_proto_bytes}", where=where
            )
    else:
        path = Path(source)
        where = str(path)
        data = _read_bounded(path, limits.max_proto_bytes)
    if not data:
        raise MalformedGraph("empty input, not an ONNX model", where=where)
    model = onnx.ModelProto()
    try:
        # Same parser as onnx.load_model(..., load_external_data=False), without touching the disk again.
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError depending on backend
        raise MalformedGraph(f"not a parsable ONNX model ({type(exc).__name__}: {exc})", where=where) from None
    return model
