"""External-data locations must stay inside the task's bundle directory."""

from __future__ import annotations

import ntpath
import posixpath
from pathlib import Path

from onnx import TensorProto

from splitup.graph.errors import ExternalDataEscape, MalformedGraph


def is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def external_entries(tensor: TensorProto, *, where: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in entries:
            raise MalformedGraph(f"external data key {entry.key!r} given twice", where=where)
        entries[entry.key] = entry.value
    return entries


def check_location(location: str, bundle_dir: Path | None, *, where: str) -> None:
    """Refuse absolute paths, ``..`` and anything resolving (also through symlinks) outside the bundle.

    Both POSIX and Windows spellings are refused: bundles travel between nodes on any OS.
    """
    if not location:
        raise ExternalDataEscape("external data without a location", where=where)
    if "\x00" in location:
        raise ExternalDataEscape("external data location contains a NUL byte", where=where)
    if posixpath.isabs(location) or ntpath.isabs(location) or ntpath.splitdrive(location)[0]:
        raise ExternalDataEscape(f"external data location {location!r} is absolute", where=where)
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise ExternalDataEscape(f"external data location {location!r} contains '..'", where=where)
    if bundle_dir is None:
        return
    root = Path(bundle_dir).resolve()
    try:
        # resolve() follows every symlink on the way, so a link pointing out of the bundle is caught.
        target = (root / location).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise ExternalDataEscape(f"external data location {location!r} cannot be resolved: {exc}", where=where) from None
    if not target.is_relative_to(root):
        raise ExternalDataEscape(
            f"external data location {location!r} resolves outside the bundle directory", where=where
        )


def check_external_tensor(tensor: TensorProto, nbytes: int, bundle_dir: Path | None, *, where: str) -> None:
    """Check one initializer stored outside the proto. Its bytes are never read here."""
    entries = external_entries(tensor, where=where)
    check_location(entries.get("location", ""), bundle_dir, where=where)
    for key in ("offset", "length"):
        if key in entries and not (entries[key].isascii() and entries[key].isdigit()):
            raise MalformedGraph(f"external data {key} {entries[key]!r} is not a non-negative integer", where=where)
    if "length" in entries and int(entries["length"]) != nbytes:
        raise MalformedGraph(
            f"external data length {entries['length']} does not match the {nbytes} bytes its shape needs",
            where=where,
        )
    if tensor.raw_data or _has_typed_data(tensor):
        raise MalformedGraph("tensor is marked external but also carries inline data", where=where)


def _has_typed_data(tensor: TensorProto) -> bool:
    return any(
        len(getattr(tensor, field))
        for field in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
    )
