"""Lean hops: tensors as length-prefixed binary frames over kept-open TCP connections.

Every generated token crosses every hop, so the per-hop cost of HTTP (request line, headers, a JSON
error protocol, safetensors' copy into fresh arrays) is paid many times a second. A frame is::

    b"SUF3" | u32 header length | u32 stable length | u32 payload length | header | payload (raw tensor bytes)

The header is two JSON arrays, back to back. The first (``stable length`` bytes) is what stays the same
from one decode step of a job to the next: ``[kind, tensors, route text, listen token, via]``, each tensor
as ``[name, dtype, shape, offset]`` into the payload (offsets 8-aligned), ``via`` which of its hop's URLs
the sender reached the receiver at (where a stand-in parks its result for the client to fetch). A
connection keeps the last one it parsed and checked and takes it again when the next frame's bytes are the
same, so a steady generation's frames cost one comparison there. The second is what changes: ``[hop index,
steps, reply id, hop records, signed hand-off, error, parked-result URL]`` (``null`` where absent), padded
with spaces so that the payload stays aligned. Tensors are views of the received payload (no per-tensor
copy); sending writes the arrays' own buffers (``sendmsg``) behind one small header. A connection carries
one request and its reply at a time; a node keeps a few open per next hop, a client a few per thread and
node.

Direct answers: a client opens one more connection, to the route's last node, and sends a ``listen`` frame
naming a secret token on it. An ``exec`` frame carrying ``reply = {"to": token, "id": nonce}`` is computed
hop by hop as usual, each node adding its hop record to the frame it forwards; the last node writes the
result (with every hop's record) to that listening connection, so a decode step takes tasks + 1 one-way
messages and its logits cross one link. A step that succeeds is not answered along the chain at all;
errors are (each carrying the step's reply id), and so is the result when the last node has no listener
for the token.

Everything is bounded before it is allocated: the prefix's lengths against the header limit and the
receiver's body limit, each tensor's dtype, rank, dims and byte range against the payload. Violations
raise :class:`FrameError` (a :class:`WireError`, so the node answers them as a bad request, 400).
"""

from __future__ import annotations

import itertools
import json
import secrets
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitup.graph.meta import NUMPY_DTYPES
from splitup.node.wire import ENCODE_JSON, MAX_ROUTE, MAX_TENSORS, MAX_URLS, Envelope, WireError

MAGIC = b"SUF3"
PREFIX = struct.Struct("<4sIII")
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = (1 << 32) - 1  # what the prefix can say
MAX_TOKEN = 64  # characters of a direct-answer token or reply id
ALIGN = 8
SMALL_BUFFER = 64 << 10
SOCKET_BUFFER = 2 << 20
# Every type a task can carry (bfloat16 and float8 as ml_dtypes arrays): the raw bytes travel as they are.
DTYPES = NUMPY_DTYPES
_PAD = bytes(ALIGN)
_SPACES = b" " * ALIGN
# dtype -> its wire name, looked up instead of ``dtype.name`` (a Python-level property in numpy: every hop
# pays it with cold caches, after the engine's compute has streamed the weights through them)
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def _has_buffer_format(dtype: np.dtype) -> bool:
    try:
        memoryview(np.zeros(1, dtype)).cast("B")
    except (ValueError, TypeError):
        return False
    return True


_BUFFERS = {name for name, dtype in DTYPES.items() if _has_buffer_format(dtype)}
# The JSON scanner built once, as the encoder (``wire.ENCODE_JSON``): ``json.loads`` goes through Python
# wrappers per call, which cost more than a small header's parse when the caches are cold.
_SCAN = json.JSONDecoder().scan_once


class FrameError(WireError):
    """A frame that is malformed, too large, or names a tensor the payload does not hold."""


class FrameTooLarge(FrameError):
    """A frame whose declared size exceeds the receiver's limit (the node answers 413)."""


@dataclass
class Frame:
    """One message: ``kind`` is ``exec`` (a hop request), ``ok`` or ``error`` (its reply), or ``listen`` (a
    client waiting for direct answers: ``reply = {"to": token}``)."""

    kind: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    # The routing envelope: to send, an Envelope; as received, its wire form (``Envelope.to_wire``/``from_wire``,
    # parsed by the node that serves the hop, so that a malformed one is answered like any refused hop).
    envelope: Envelope | list[Any] | None = None
    hops: list[Any] = field(default_factory=list)
    error: dict[str, Any] | None = None
    parked: str | None = None
    handoff: dict[str, Any] | None = None  # the sender's signed hand-off of the tensors (``wire.HANDOFF_META``)
    reply: dict[str, str] | None = None  # direct answers: {"to": token, "id": nonce}; results: {"id": nonce}
    # an exec frame's: which of its hop's URLs the sender reached the receiver at (None: the first), the one a
    # stand-in, reached at another than the first, names for the result it parks
    via: int | None = None


class Stable:
    """A frame's first header part, parsed and checked: kind, tensor layout, route text, listen token, via. The
    tensors are ``(name, dtype, shape, offset, size)``; ``end`` is where the last one ends in the payload."""

    __slots__ = ("raw", "kind", "tensors", "text", "to", "via", "end", "largest")

    def __init__(self, raw: bytes, kind: str, tensors: list[tuple[str, np.dtype, tuple[int, ...], int, int]],
                 text: str | None, to: str | None, via: int | None) -> None:
        self.raw, self.kind, self.tensors, self.text, self.to, self.via = raw, kind, tensors, text, to, via
        self.end = tensors[-1][3] + tensors[-1][4] if tensors else 0
        self.largest = max((t[4] for t in tensors), default=0)

    @classmethod
    def parse(cls, raw: bytes) -> Stable:
        value = _json(raw, "stable")
        if not (type(value) is list and len(value) == 5 and type(value[0]) is str and type(value[1]) is list):
            raise FrameError("frame header must start with [kind, tensors, route text, listen token, via]")
        kind, entries, text, to, via = value
        if len(entries) > MAX_TENSORS:
            raise FrameError(f"{len(entries)} tensors; at most {MAX_TENSORS}")
        if text is not None and type(text) is not str:
            raise FrameError("frame envelope's route text must be a string")
        if to is not None and not (type(to) is str and 0 < len(to) <= MAX_TOKEN):
            raise FrameError(f"frame reply address must be {{'to', 'id'}} strings of 1..{MAX_TOKEN} characters")
        if via is not None and not (type(via) is int and 0 <= via < MAX_URLS):
            raise FrameError(f"frame's via must be the index of a hop's URL, 0..{MAX_URLS - 1}, not {via!r}")
        tensors, names, end = [], set(), 0
        for entry in entries:
            tensor = _entry(entry, end)
            if tensor[0] in names:
                raise FrameError(f"tensor {tensor[0]!r} appears twice")
            names.add(tensor[0])
            tensors.append(tensor)
            end = tensor[3] + tensor[4]
        return cls(raw, kind, tensors, text, to, via)


def _entry(entry: Any, start: int) -> tuple[str, np.dtype, tuple[int, ...], int, int]:
    if not (type(entry) is list and len(entry) == 4 and type(entry[0]) is str):
        raise FrameError(f"malformed tensor entry {str(entry)[:80]!r}")
    name, dtype, shape, offset = entry
    if dtype not in DTYPES:
        raise FrameError(f"tensor {name!r}: dtype {dtype!r} is not accepted ({', '.join(DTYPES)})")
    if type(shape) is not list or len(shape) > 8 or not all(type(d) is int and 0 <= d < 2**31 for d in shape):
        raise FrameError(f"tensor {name!r}: shape {shape!r} is not a list of at most 8 dims in [0, 2^31)")
    count = 1
    for d in shape:
        count *= d
    size = count * DTYPES[dtype].itemsize
    # In order and non-overlapping: a frame cannot make two tensors alias the same bytes.
    if type(offset) is not int or offset < start or offset % ALIGN or offset + size > MAX_PAYLOAD_BYTES:
        raise FrameError(f"tensor {name!r}: offset {offset!r} does not hold {size} bytes inside the payload")
    return name, DTYPES[dtype], tuple(shape), offset, size


def pack(frame: Frame, known: list[Any] | None = None) -> list[Any]:
    """The frame as buffers to write in order (bytes and the tensors' own arrays: nothing is copied). ``known``: the
    sending connection's last stable part, ``[key, bytes]``, reused when this frame's is the same."""
    env = frame.envelope
    wire = (env.to_wire() if type(env) is Envelope else env) if env is not None else _NO_ENVELOPE
    to, rid = _address(frame.reply)
    return pack_fields(frame.kind, frame.tensors, wire, to, frame.via, rid, frame.hops, frame.handoff, frame.error,
                       frame.parked, known)


def pack_fields(kind: str, tensors: Mapping[str, Any], wire: Sequence[Any], to: str | None, via: int | None,
                rid: str | None, hops: list[Any], handoff: dict[str, Any] | None, error: dict[str, Any] | None,
                parked: str | None, known: list[Any] | None) -> list[Any]:
    """``pack`` of a frame given as its fields, ``wire`` the envelope's wire form (``[text, hop, steps]``): a
    node sends each hop on this way, without building a Frame and an Envelope for the next hop first. Every
    hop packs a frame with the caches cold after the engine's compute: the usual frame takes few steps."""
    layout: list[tuple[str, str, tuple[int, ...], int]] = []
    buffers: list[Any] = []
    offset = 0
    for name, value in tensors.items():
        # an engine's output: a C-contiguous array of a wire type as it is (anything else through _sendable)
        dtype = _NAMES.get(value.dtype) if type(value) is np.ndarray and value.flags.c_contiguous else None
        if dtype is None:
            value, dtype = _sendable(name, value)
        layout.append((name, dtype, value.shape, offset))
        size = value.nbytes
        if size:
            # the array itself where the buffer protocol can name its type; ml_dtypes' bfloat16 / float8 as bytes
            buffers.append(value if dtype in _BUFFERS else value.reshape(-1).view(np.uint8))
            offset += size + (-size % ALIGN)
            if size % ALIGN:
                buffers.append(_PAD[: -size % ALIGN])
    if offset > MAX_PAYLOAD_BYTES:
        raise FrameError(f"a frame's payload is at most {MAX_PAYLOAD_BYTES} bytes, not {offset}")
    text, hop, steps = wire
    key = (kind, text, to, via, layout)
    if known is not None and known[0] == key:
        stable = known[1]
    else:
        entries = [[name, dtype, list(shape), at] for name, dtype, shape, at in layout]
        stable = "".join(ENCODE_JSON([kind, entries, text, to, via], 0)).encode()
        if known is not None:
            known[:] = [key, stable]
    rest = "".join(ENCODE_JSON([hop, steps, rid, hops, handoff, error, parked], 0)).encode()
    # padded with JSON whitespace to a multiple of ALIGN: a receiver reading header and payload into one
    # buffer finds the payload (and so every tensor) aligned in it
    rest += _SPACES[: -(len(stable) + len(rest)) % ALIGN]
    return [PREFIX.pack(MAGIC, len(stable) + len(rest), len(stable), offset), stable, rest, *buffers]


_NO_ENVELOPE = (None, None, None)


def _address(reply: dict[str, str] | None) -> tuple[str | None, str | None]:
    """(listen token, reply id) of a frame's reply address, either absent."""
    return (None, None) if reply is None else (reply.get("to"), reply.get("id"))


def _sendable(name: str, value: Any) -> tuple[np.ndarray, str]:
    """``value`` as a C-contiguous array of native byte order, and its dtype's name on the wire."""
    arr = value if type(value) is np.ndarray else np.asarray(value)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)  # (not for all: it turns a 0-d array into a 1-d one)
    dtype = _NAMES.get(arr.dtype)
    if dtype is None:
        if arr.dtype.name not in DTYPES:
            raise FrameError(f"tensor {name!r}: dtype {arr.dtype} cannot be sent ({', '.join(DTYPES)})")
        dtype = arr.dtype.name  # the same type in the other byte order: the wire's is the native one
        arr = arr.astype(DTYPES[dtype])
    return arr, dtype


def read_prefix(prefix: bytes | bytearray | memoryview, max_payload: int) -> tuple[int, int, int]:
    """(header length, stable length, payload length) of a frame prefix, checked against the limits."""
    magic, header_len, stable_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        if magic[:3] == MAGIC[:3]:
            raise FrameError(f"frame format {magic.decode('ascii', 'replace')} is not this node's ({MAGIC.decode()}): "
                             "upgrade the sender")
        raise FrameError(f"not a SplitUp frame (magic {magic!r})")
    if header_len > MAX_HEADER_BYTES:
        raise FrameError(f"frame header of {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    if stable_len > header_len:
        raise FrameError(f"frame's stable part of {stable_len} bytes is longer than its {header_len}-byte header")
    if payload_len > max_payload:
        raise FrameTooLarge(f"frame payload of {payload_len} bytes exceeds the {max_payload}-byte limit")
    return header_len, stable_len, payload_len


def unpack(header: bytes | bytearray | memoryview, stable_len: int, payload: bytes | bytearray | memoryview, *,
           max_tensor_bytes: int | None = None, known: Stable | None = None) -> tuple[Frame, Stable]:
    """A frame from its header (of which the first ``stable_len`` bytes are the stable part) and payload,
    and its parsed stable part; tensors are read-only views of ``payload``. ``known``: a stable part parsed
    before, taken again if this frame's bytes are the same."""
    raw = header[:stable_len]
    stable = known if known is not None and known.raw == raw else Stable.parse(bytes(raw))
    if stable.end > len(payload):
        last = stable.tensors[-1]
        raise FrameError(f"tensor {last[0]!r}: offset {last[3]} does not hold {last[4]} bytes inside the payload")
    if max_tensor_bytes is not None and stable.largest > max_tensor_bytes:
        big = max(stable.tensors, key=lambda t: t[4])
        raise FrameError(f"tensor {big[0]!r}: {big[4]} bytes exceeds the {max_tensor_bytes}-byte limit")
    rest = _json(header[stable_len:], "rest")
    # checked in few steps (the fields' types against the allowed ones, in C); _rest_error names what is wrong
    if type(rest) is not list or len(rest) != 7 or tuple(map(type, rest)) not in _REST_TYPES:
        raise _rest_error(rest, stable.text)
    hop, steps, rid, hops, handoff, error, parked = rest
    text, to = stable.text, stable.to
    if (text is not None and (hop is None or steps is None)) or len(hops) > MAX_ROUTE \
            or (rid is not None and not 0 < len(rid) <= MAX_TOKEN):
        raise _rest_error(rest, text)
    if rid is None:
        reply = None if to is None else {"to": to}
    else:
        reply = {"id": rid} if to is None else {"to": to, "id": rid}
    tensors = {}
    for name, dtype, shape, offset, _ in stable.tensors:
        tensors[name] = np.ndarray(shape, dtype, payload, offset)
    return Frame(stable.kind, tensors, None if text is None else [text, hop, steps], hops, error, parked, handoff,
                 reply, stable.via), stable


_NONE = type(None)
# The types each field of a frame's second header part may have: [hop, steps, reply id, hop records, hand-off,
# error, parked]
_REST_TYPES = frozenset(itertools.product((int, _NONE), (list, _NONE), (str, _NONE), (list,), (dict, _NONE),
                                          (dict, _NONE), (str, _NONE)))


def _rest_error(rest: Any, text: str | None) -> FrameError:
    """What is wrong with a frame's second header part, which failed ``unpack``'s quick check."""
    if not (type(rest) is list and len(rest) == 7):
        return FrameError("frame header must end with [hop, steps, reply id, hop records, hand-off, error, parked]")
    hop, steps, rid, hops, handoff, error, parked = rest
    if (text is not None or hop is not None) and type(hop) is not int or \
            (text is not None or steps is not None) and type(steps) is not list:
        return FrameError("frame envelope must be a JSON array (its wire form): a route text, a hop index and steps")
    if type(hops) is not list or not (error is None or type(error) is dict) \
            or not (parked is None or type(parked) is str) or not (handoff is None or type(handoff) is dict):
        return FrameError("frame hop records, error, parked URL or signed hand-off are malformed")
    if len(hops) > MAX_ROUTE:
        return FrameError(f"{len(hops)} hop records; at most {MAX_ROUTE}")
    return FrameError(f"frame reply address must be {{'to', 'id'}} strings of 1..{MAX_TOKEN} characters")


def _json(raw: bytes | bytearray | memoryview, part: str) -> Any:
    """The JSON value of a header part: the whole of it, as ``json.loads`` would (no trailing data)."""
    try:
        text = str(raw, "utf-8")
        value, end = _SCAN(text, 0)
        if end != len(text) and text[end:].strip(" \t\n\r"):
            raise json.JSONDecodeError("Extra data", text, end)
    except StopIteration as exc:
        raise FrameError(f"frame header ({part} part) is not JSON: expecting a value at {exc.value}") from None
    except (ValueError, RecursionError) as exc:
        # ValueError: not JSON, not UTF-8, or an integer of more digits than Python converts; RecursionError:
        # nesting deeper than the parser's stack. Malformed, all of them.
        raise FrameError(f"frame header ({part} part) is not JSON: {exc}") from None
    return value


# --- kept-open connections (node and client) -----------------------------------------------------------------
class FrameSocket:
    """One kept-open frame connection. The socket stays blocking at the OS level and deadlines are kept
    here: a read or write with a deadline first tries without waiting (on a hop the data, or the room to
    write, is almost always there already) and polls only when it must, so a hop costs one system call per
    read or write where a socket timeout costs a poll before each. A frame is usually read whole in one
    call, into a fresh buffer of the size the connection's last frame had (bytes of the next frame read
    with it wait for the next read). Writes hold a lock: frames written by several threads (a node's
    direct answers to one listener) never interleave."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(None)
        self._attach(sock)

    @classmethod
    def over(cls, sock: socket.socket) -> FrameSocket:
        """An accepted (or otherwise connected) socket as a frame connection."""
        conn = cls.__new__(cls)
        sock.settimeout(None)
        conn._attach(sock)
        return conn

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # room for a whole frame (a decode step's logits: 192 KiB for SmolLM2) in the socket's buffers: a
            # frame larger than the default receive window crosses in several rounds of window updates
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                if sock.getsockopt(socket.SOL_SOCKET, option) < SOCKET_BUFFER:
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            # a peer that vanished without closing (a crashed machine, a cut link) is found within ~90 s, so
            # the thread and the connection place it holds on a node are given back
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        self._write = threading.Lock()
        self._sent: list[Any] = [None, b""]  # the last stable part sent: [key, bytes]
        self._seen: Stable | None = None  # the last stable part received
        self._size = 4096  # the buffer a read starts with: the last frame's size
        self._carry = b""  # the start of the next frame, read with the last one
        self._spares: list[np.ndarray] = []  # large buffers read into before (see _buffer)

    def close(self) -> None:
        # shut down first: a thread blocked reading this socket wakes (close alone does not wake it)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def request(self, frame: Frame, timeout: float, max_payload: int) -> Frame:
        """Send ``frame`` and return the reply; ``OSError`` (``TimeoutError`` included) on transport failure."""
        deadline = time.monotonic() + timeout
        self.send(frame, deadline=deadline)
        return self.receive(None, max_payload, deadline=deadline)

    def send(self, frame: Frame, timeout: float | None = None, *, deadline: float | None = None,
             only_if_room: bool = False) -> bool:
        """Write ``frame`` within ``timeout`` seconds (or by ``deadline``; neither: wait as long as it takes).
        ``only_if_room``: write nothing and return False when the socket cannot take any of it now (a peer
        that does not read)."""
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        with self._write:
            return self._send(pack(frame, self._sent), deadline, only_if_room)

    def send_step(self, tensors: Mapping[str, Any], wire: Sequence[Any], reply: dict[str, str] | None,
                  hops: list[Any], handoff: dict[str, Any] | None, deadline: float) -> None:
        """Write an ``exec`` frame given as its fields (``pack_fields``) by ``deadline``; sent to its hop's first
        URL (a session's), so with no ``via``."""
        to, rid = _address(reply)
        with self._write:
            self._send(pack_fields("exec", tensors, wire, to, None, rid, hops, handoff, None, None, self._sent),
                       deadline, False)

    def _send(self, buffers: list[Any], deadline: float | None, only_if_room: bool) -> bool:
        _, header_len, _, payload_len = PREFIX.unpack(buffers[0])
        return send_all(self.sock, buffers, PREFIX.size + header_len + payload_len, deadline,
                        only_if_room=only_if_room)

    def receive(self, timeout: float | None, max_payload: int, *, max_tensor_bytes: int | None = None,
                deadline: float | None = None) -> Frame:
        """The next frame, within ``timeout`` seconds (or by ``deadline``); ``ConnectionError`` at the end
        of the stream."""
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        frame = self._read(max_payload, max_tensor_bytes, deadline)
        if frame is None:
            raise ConnectionError("the node closed the connection")
        return frame

    def read(self, max_payload: int, *, max_tensor_bytes: int | None = None) -> Frame | None:
        """The next frame, waiting as long as it takes; None at a clean end of stream between frames."""
        return self._read(max_payload, max_tensor_bytes, None)

    def _read(self, max_payload: int, max_tensor_bytes: int | None, deadline: float | None) -> Frame | None:
        # Every hop reads a frame with the caches cold after the engine's compute, so the usual case (the whole
        # frame already there, or arriving while this waits) takes one system call and few interpreter steps.
        carry = self._carry
        buf = self._buffer(max(self._size, PREFIX.size, len(carry)))
        got = len(carry)
        if got:
            buf[:got] = carry
            self._carry = b""
        else:
            try:
                got = self.sock.recv_into(buf, 0, 0 if deadline is None else socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass  # nothing there yet (got is 0): waited for below, by the deadline
            else:
                if got == 0:
                    return None
        if got < PREFIX.size:
            got += self._some(buf[got:], PREFIX.size - got, deadline)
            if got == 0:
                return None
            if got < PREFIX.size:
                raise FrameError("connection closed inside a frame prefix")
        magic, header_len, stable_len, payload_len = PREFIX.unpack_from(buf)
        if magic != MAGIC or header_len > MAX_HEADER_BYTES or stable_len > header_len or payload_len > max_payload:
            read_prefix(buf[:PREFIX.size], max_payload)  # raises, naming what is wrong
        size = PREFIX.size + header_len + payload_len
        if size > len(buf):
            bigger = self._buffer(size)
            bigger[:got] = buf[:got]
            buf = bigger
        if got < size:
            got += self._some(buf[got:size], size - got, deadline, exactly=True)
            if got < size:
                raise ConnectionError("the connection closed inside a frame")
        elif got > size:
            self._carry = bytes(buf[size:got])
        self._size = size
        header = buf[PREFIX.size:PREFIX.size + header_len]
        payload = buf[PREFIX.size + header_len:size]
        if header_len % ALIGN:  # a sender that does not pad: its tensors are copied rather than handed on misaligned
            payload = memoryview(bytes(payload))
        frame, self._seen = unpack(header, stable_len, payload, max_tensor_bytes=max_tensor_bytes, known=self._seen)
        return frame

    def _buffer(self, size: int) -> memoryview:
        """A receive buffer nothing else refers to (the tensors read into it are views of it): a small one
        fresh, as a bytearray; a large one unzeroed, and one of the last two again once every view of it is
        gone (a client drops a step's logits by the step after next). A fresh large block costs its page
        faults and zeroing by the kernel at every frame, more than reading the frame into it."""
        if size <= SMALL_BUFFER:
            return memoryview(bytearray(size))
        for spare in self._spares:
            # referred to by the list, the loop and getrefcount's argument only: no array views it any more
            if len(spare) >= size and sys.getrefcount(spare) == 3:
                return memoryview(spare)[:size]
        spare = np.empty(size, np.uint8)
        self._spares = [spare, *self._spares[:1]]
        return memoryview(spare)

    def _some(self, view: memoryview, least: int, deadline: float | None, *, exactly: bool = False) -> int:
        """Read at least ``least`` bytes into ``view`` (all of it when ``exactly``), more if they are there;
        returns how many were read before the end of the stream."""
        got, n = 0, len(view)
        while got < least:
            if deadline is None:
                k = self.sock.recv_into(view[got:], n - got, socket.MSG_WAITALL if exactly else 0)
            else:
                try:
                    k = self.sock.recv_into(view[got:], n - got, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    _wait(self.sock, deadline, select.POLLIN)
                    continue
            if k == 0:
                return got
            got += k
        return got


def _wait(sock: socket.socket, deadline: float, events: int) -> None:
    """Until ``sock`` is ready for ``events``; ``TimeoutError`` at the deadline (poll, not select: a node
    may hold more than select's 1024 descriptors)."""
    left = deadline - time.monotonic()
    poller = select.poll()
    poller.register(sock, events)
    if left <= 0 or not poller.poll(left * 1000):
        raise TimeoutError("the connection did not become ready in time")


def send_all(sock: socket.socket, buffers: Sequence[Any], size: int, deadline: float | None = None, *,
             only_if_room: bool = False) -> bool:
    """Gathered writes of ``buffers`` (``size`` bytes in all; no joining copy) on a blocking socket, by
    ``deadline`` if given. ``only_if_room``: False, nothing written, when the socket takes nothing now. A
    frame usually goes out in one call; one that does not is written on from where the call stopped."""
    flags = 0 if deadline is None and not only_if_room else socket.MSG_DONTWAIT
    views: list[Any] = list(buffers)
    while True:
        try:
            sent = sock.sendmsg(views[:512], (), flags)  # below every platform's IOV_MAX
        except BlockingIOError:
            if only_if_room:
                return False
            _wait(sock, deadline if deadline is not None else time.monotonic() + 1e9, select.POLLOUT)
            continue
        if sent == size:
            return True
        size -= sent
        only_if_room = False  # part of the frame is out: the rest must follow
        if deadline is None:
            flags = 0
        while sent:
            first = memoryview(views[0]).nbytes
            if sent >= first:
                sent -= first
                views.pop(0)
            else:
                views[0], sent = memoryview(views[0]).cast("B")[sent:], 0


class FramePool:
    """Kept-open frame connections per (host, port), kind and thread; a connection that failed is dropped.
    Direct-answer steps have connections of their own (late errors of earlier steps may still arrive on
    them, to be told apart by reply id); and each thread has a listening connection per last node."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._local = threading.local()
        self._all: list[FrameSocket] = []
        self._lock = threading.Lock()

    def get(self, addr: tuple[str, int], timeout: float, *, direct: bool = False) -> tuple[bool, FrameSocket]:
        """(reused, connection)."""
        conns: dict[tuple[str, int, bool], FrameSocket] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((*addr, direct))
        if conn is not None:
            return True, conn
        conn = conns[(*addr, direct)] = FrameSocket(addr[0], addr[1], timeout)
        self._keep(conn)
        return False, conn

    def drop(self, addr: tuple[str, int], *, direct: bool = False) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((*addr, direct), None)
        if conn is not None:
            conn.close()

    def listener(self, addr: tuple[str, int], timeout: float) -> tuple[str, FrameSocket] | None:
        """This thread's connection listening for direct answers from the node at ``addr``: (token,
        connection), registered on first use; None if the node does not take listeners."""
        listeners: dict[tuple[str, int], tuple[str, FrameSocket] | None] = \
            self._local.__dict__.setdefault("listeners", {})
        if addr not in listeners:
            token = secrets.token_hex(16)
            conn = None
            try:
                # connecting is inside: a port that takes no connection is as unreachable as one that hangs up
                conn = FrameSocket(addr[0], addr[1], timeout)
                self._keep(conn)
                ok = conn.request(Frame("listen", reply={"to": token}), timeout, self.max_payload).kind == "ok"
            except (OSError, FrameError):
                if conn is not None:
                    conn.close()
                return None  # unreachable now: the chain's own path will say so; ask again next time
            if not ok:
                conn.close()  # a node that takes no listeners (it answered an error frame): replies come back along the chain
            listeners[addr] = (token, conn) if ok else None
        return listeners[addr]

    def drop_listener(self, addr: tuple[str, int]) -> None:
        entry = self._local.__dict__.get("listeners", {}).pop(addr, None)
        if entry is not None:
            entry[1].close()

    def _keep(self, conn: FrameSocket) -> None:
        with self._lock:
            self._all.append(conn)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def frame_address(health: Mapping[str, Any], url_host: str) -> tuple[str, int] | None:
    """Where a node takes frames, from its ``/health`` answer: the host of its URL, the port it names."""
    port = health.get("frames")
    return (url_host, port) if type(port) is int and 0 < port < 65536 else None
