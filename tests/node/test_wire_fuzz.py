"""What a stranger can put on the wire: whatever the bytes, parsing a hop (a frame, an HTTP body and its
envelope, a hand-off, a transcript a validator fetches, a model manifest) ends in the typed error of its
layer, which the node answers as a 4xx, and never in another exception (a 500, or a dead connection
thread). Deeply nested JSON is the classic case: it exhausts the parser's stack as a RecursionError."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitup.node.frames import MAGIC, PREFIX, Frame, FrameError, pack, read_prefix, unpack
from splitup.node.wire import (
    HANDOFF_META,
    META_KEY,
    Envelope,
    Hop,
    WireError,
    decode,
    encode,
    envelope_of,
    handoff_of,
)
from splitup.sdk.catalog import CatalogError, ModelManifest
from splitup.verify.transcript import FORMAT, VERSION, BadTranscript, Transcript

DEEP = "[" * 100_000 + "]" * 100_000  # far deeper than the interpreter's recursion limit
HUGE = "[" + "7" * 5000 + "]"  # more digits than Python converts to an int (a ValueError, not a JSONDecodeError)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def _route() -> Envelope:
    return Envelope("job", 0, [Hop(["http://a:1"], "t0", ["h"], "s0", 3), Hop(["http://b:2"], "t1", ["logits"], "s1", 3)])


def _frame() -> bytes:
    tensors = {"h": np.arange(12, dtype=np.float32).reshape(1, 3, 4), "ids": np.array([[5]], np.int64)}
    frame = Frame("exec", tensors, _route(), hops=[{"hop": 0, "ms": 1.5}], reply={"to": "tok", "id": "r1"})
    return b"".join(bytes(memoryview(b)) for b in pack(frame))


def _parse_frame(raw: bytes) -> None:
    """What a node's connection thread does with the bytes it reads (``FrameSocket._read``, ``serve``)."""
    if len(raw) < PREFIX.size:
        raise FrameError("truncated")
    header_len, stable_len, payload_len = read_prefix(raw[: PREFIX.size], 1 << 20)
    header = raw[PREFIX.size : PREFIX.size + header_len]
    payload = raw[PREFIX.size + header_len :]
    if len(header) < header_len or len(payload) < payload_len:
        raise FrameError("truncated")
    frame = unpack(header, stable_len, payload[:payload_len], max_tensor_bytes=1 << 20)[0]
    if frame.envelope is not None:
        Envelope.from_wire(frame.envelope)


def _frame_of(stable: Any, rest: Any, payload: bytes = b"") -> bytes:
    first, second = json.dumps(stable).encode(), json.dumps(rest).encode()
    return PREFIX.pack(MAGIC, len(first) + len(second), len(first), len(payload)) + first + second + payload


def _header_parts() -> tuple[list, list, bytes]:
    raw = _frame()
    header_len, stable_len, _ = read_prefix(raw[: PREFIX.size], 1 << 20)
    header = raw[PREFIX.size : PREFIX.size + header_len]
    return json.loads(header[:stable_len]), json.loads(header[stable_len:]), raw[PREFIX.size + header_len :]


def test_the_fuzzed_frame_parses_as_it_is():
    _parse_frame(_frame())


@FUZZ
@given(st.data())
def test_a_frame_with_any_bytes_changed_is_a_frame_error_or_a_frame(data):
    raw = bytearray(_frame())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(PREFIX.size, len(raw)))
    try:
        _parse_frame(bytes(raw[:cut]))
    except WireError:  # FrameError and the envelope's WireError: both answered as a 400
        pass


@FUZZ
@given(part=st.sampled_from(["stable", "rest", "stable field", "rest field", "route"]), value=json_values,
       where=st.integers(0, 6))
def test_a_frame_with_any_json_in_any_place_is_a_frame_error_or_a_frame(part, value, where):
    stable, rest, payload = _header_parts()
    if part == "stable":
        stable = value
    elif part == "rest":
        rest = value
    elif part == "stable field":
        stable[where % len(stable)] = value
    elif part == "rest field":
        rest[where % len(rest)] = value
    else:  # the route text a node parses once per job (``Envelope.from_wire``)
        route = json.loads(stable[2])
        route["route"][where % 2][["urls", "task", "send", "session", "last"][where % 5]] = value
        stable[2] = json.dumps(route)
    try:
        _parse_frame(_frame_of(stable, rest, payload))
    except WireError:
        pass


@pytest.mark.parametrize("text", [DEEP, HUGE], ids=["deep", "huge"])
@pytest.mark.parametrize("part", ["stable", "rest", "route", "steps"])
def test_json_python_cannot_parse_anywhere_in_a_frame_is_a_frame_error(part, text):
    stable, rest, payload = _header_parts()
    nested = json.loads("[" * 50 + "]" * 50)
    if part == "route":
        stable[2] = text
    elif part == "steps":
        rest[1] = nested
    first, second = json.dumps(stable).encode(), json.dumps(rest).encode()
    if part == "stable":
        first = text.encode()
    elif part == "rest":
        second = text.encode()
    raw = PREFIX.pack(MAGIC, len(first) + len(second), len(first), len(payload)) + first + second + payload
    with pytest.raises(WireError):
        _parse_frame(raw)


def _body(header: dict[str, Any] | str, data: bytes = b"") -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + data


def _parse_http(body: bytes) -> None:
    """What a node's /execute does with a body before any engine runs."""
    _, meta = decode(body, max_tensor_bytes=1 << 20)
    envelope_of(meta)
    handoff_of(meta)


@FUZZ
@given(st.data())
def test_an_http_hop_body_with_any_bytes_changed_is_a_wire_error_or_a_hop(data):
    raw = bytearray(encode({"h": np.ones((1, 2, 4), np.float32)}, _route()))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        _parse_http(bytes(raw[: data.draw(st.integers(0, len(raw)))]))
    except WireError:
        pass


@FUZZ
@given(envelope=json_values, handoff=json_values)
def test_any_json_as_an_envelope_or_a_hand_off_is_a_wire_error_or_one(envelope, handoff):
    meta = {META_KEY: json.dumps(envelope)}
    for parse in (lambda: envelope_of(meta), lambda: handoff_of({HANDOFF_META: json.dumps(handoff)})):
        try:
            parse()
        except WireError:
            pass


@pytest.mark.parametrize("text", [DEEP, HUGE], ids=["deep", "huge"])
@pytest.mark.parametrize("where", ["header", "envelope"])
def test_json_python_cannot_parse_in_an_http_hop_is_a_wire_error(where, text):
    # (a hand-off is refused above 1 KiB, too short to nest past the parser's stack)
    body = _body(text) if where == "header" else _body({"__metadata__": {META_KEY: text}})
    with pytest.raises(WireError):
        _parse_http(body)


def test_deeply_nested_json_in_a_transcript_or_a_manifest_is_their_typed_error():
    # a validator parses the transcript a node announced: a hostile one must be "malformed", a disagreement
    with pytest.raises(BadTranscript):
        Transcript.from_bytes(_body(DEEP))
    meta = {"format": FORMAT, "version": str(VERSION), "index": "0", "steps": "1", "salt": "00" * 16,
            "job": "j", "task_id": "t", "handoff": DEEP}
    with pytest.raises(BadTranscript):
        Transcript.from_bytes(_body({"__metadata__": meta}))
    with pytest.raises(CatalogError):
        ModelManifest.parse(DEEP.encode())


def _transcript() -> bytes:
    t = Transcript("job", 1, "t" * 64)
    t.add({"h": np.ones((1, 2, 4), np.float32)}, {"y": np.arange(8, dtype=np.float32).reshape(1, 2, 4)})
    t.add({"h": np.zeros((1, 1, 4), np.float32)}, {"y": np.ones((1, 1, 4), np.float32)})
    return t.to_bytes()


@FUZZ
@given(st.data())
def test_a_transcript_with_any_bytes_changed_is_a_bad_transcript_or_one(data):
    """A validator parses the transcript a node announced before judging it: whatever a node put there is
    "malformed" (the node's fault, a disagreement), never an error that stops the validator's check."""
    raw = bytearray(_transcript())
    Transcript.from_bytes(bytes(raw))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        Transcript.from_bytes(bytes(raw[: data.draw(st.integers(0, len(raw)))]))
    except BadTranscript:
        pass
