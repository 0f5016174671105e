"""Lean hops: tensors as length-prefixed binary frames over kept-open TCP connections.

Every generated token crosses every hop, so the per-hop cost of HTTP (request line, headers, a JSON
error protocol, safetensors' copy into fresh arrays) is paid many times a second. A frame is::

    b"SUF1" | u32 header length | u64 payload length | header (JSON) | payload (raw tensor bytes)

The header lists each tensor as ``[name, dtype, shape, offset]`` into the payload (offsets 8-aligned)
and carries the routing envelope, the hop timing records and, in replies, an error or a parked-result
URL, and in a route whose last node answers the client directly, the reply address. Tensors are ``np.frombuffer`` views of the received payload (no per-tensor copy); sending writes
the arrays' own buffers (``sendmsg`` / ``writelines``) behind one small header. A connection carries one request
and its reply at a time; a node keeps a few open per next hop, a client a few per thread and node.

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

import asyncio
import json
import secrets
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitup.graph.meta import NUMPY_DTYPES
from splitup.node.wire import ENCODE_JSON, MAX_ROUTE, MAX_TENSORS, Envelope, WireError

MAGIC = b"SUF1"
PREFIX = struct.Struct("<4sIQ")
MAX_HEADER_BYTES = 1 << 20
MAX_TOKEN = 64  # characters of a direct-answer token or reply id
ALIGN = 8
# Every type a task can carry (bfloat16 and float8 as ml_dtypes arrays): the raw bytes travel as they are.
DTYPES = NUMPY_DTYPES
_PAD = bytes(ALIGN)
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


def pack(frame: Frame) -> list[bytes | memoryview]:
    """The frame as buffers to write in order; tensor data is referenced, not copied."""
    entries, buffers, offset = [], [], 0
    for name, value in frame.tensors.items():
        arr, dtype = _sendable(name, value)
        entries.append([name, dtype, list(arr.shape), offset])
        if dtype in _BUFFERS and arr.size:
            view = memoryview(arr).cast("B")
        else:  # the buffer protocol cannot name ml_dtypes' bfloat16 / float8 formats: as bytes
            view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        buffers.append(view)
        offset += view.nbytes
        pad = -offset % ALIGN
        if pad:
            buffers.append(_PAD[:pad])
            offset += pad
    head: dict[str, Any] = {"k": frame.kind, "t": entries}
    if frame.envelope is not None:
        head["e"] = frame.envelope.to_wire() if isinstance(frame.envelope, Envelope) else frame.envelope
    if frame.hops:
        head["h"] = frame.hops
    if frame.error is not None:
        head["x"] = frame.error
    if frame.parked is not None:
        head["p"] = frame.parked
    if frame.handoff is not None:
        head["s"] = frame.handoff
    if frame.reply is not None:
        head["r"] = frame.reply
    header = "".join(ENCODE_JSON(head, 0)).encode()
    # padded with JSON whitespace to a multiple of ALIGN: a receiver reading header and payload into one
    # buffer finds the payload (and so every tensor) aligned in it
    header += b" " * (-len(header) % ALIGN)
    return [PREFIX.pack(MAGIC, len(header), offset), header, *buffers]


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


def read_prefix(prefix: bytes, max_payload: int) -> tuple[int, int]:
    """(header length, payload length) of a frame prefix, both checked against the limits."""
    magic, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError(f"not a SplitUp frame (magic {magic!r})")
    if header_len > MAX_HEADER_BYTES:
        raise FrameError(f"frame header of {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    if payload_len > max_payload:
        raise FrameTooLarge(f"frame payload of {payload_len} bytes exceeds the {max_payload}-byte limit")
    return header_len, payload_len


def unpack(header: bytes | memoryview, payload: bytes | bytearray | memoryview, *, max_tensor_bytes: int | None = None) -> Frame:
    """A frame from its header and payload; tensors are read-only views of ``payload``."""
    head = _json_object(header)
    if not isinstance(head, dict) or not isinstance(head.get("k"), str) or not isinstance(head.get("t"), list):
        raise FrameError("frame header must be an object with a kind 'k' and a tensor list 't'")
    entries = head["t"]
    if len(entries) > MAX_TENSORS:
        raise FrameError(f"{len(entries)} tensors; at most {MAX_TENSORS}")
    tensors: dict[str, np.ndarray] = {}
    end = 0
    for entry in entries:
        name, arr, end = _tensor(entry, payload, end, max_tensor_bytes)
        if name in tensors:
            raise FrameError(f"tensor {name!r} appears twice")
        tensors[name] = arr
    envelope, hops, error, parked = head.get("e"), head.get("h", []), head.get("x"), head.get("p")
    handoff, reply = head.get("s"), head.get("r")
    if envelope is not None and not isinstance(envelope, list):
        raise FrameError("frame envelope must be a JSON array (its wire form)")
    if not isinstance(hops, list) or (error is not None and not isinstance(error, dict)) \
            or (parked is not None and not isinstance(parked, str)) \
            or (handoff is not None and not isinstance(handoff, dict)):
        raise FrameError("frame hop records, error, parked URL or signed hand-off are malformed")
    if len(hops) > MAX_ROUTE:
        raise FrameError(f"{len(hops)} hop records; at most {MAX_ROUTE}")
    if reply is not None and not (isinstance(reply, dict) and set(reply) <= {"to", "id"} and all(
            isinstance(v, str) and 0 < len(v) <= MAX_TOKEN for v in reply.values())):
        raise FrameError(f"frame reply address must be {{'to', 'id'}} strings of 1..{MAX_TOKEN} characters")
    return Frame(head["k"], tensors, envelope, hops, error, parked, handoff=handoff, reply=reply)


def _json_object(header: bytes | bytearray | memoryview) -> Any:
    """The header's JSON value: the whole of it, as ``json.loads`` would (no trailing data)."""
    try:
        text = bytes(header).decode().strip(" \t\n\r")  # JSON's whitespace, as json.loads allows
        head, end = _SCAN(text, 0)
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except StopIteration as exc:
        raise FrameError(f"frame header is not JSON: expecting a value at {exc.value}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    return head


def _tensor(entry: Any, payload: bytes | bytearray | memoryview, start: int,
            max_tensor_bytes: int | None) -> tuple[str, np.ndarray, int]:
    if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)):
        raise FrameError(f"malformed tensor entry {str(entry)[:80]!r}")
    name, dtype, shape, offset = entry
    if dtype not in DTYPES:
        raise FrameError(f"tensor {name!r}: dtype {dtype!r} is not accepted ({', '.join(DTYPES)})")
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 2**31 for d in shape):
        raise FrameError(f"tensor {name!r}: shape {shape!r} is not a list of at most 8 dims in [0, 2^31)")
    count = 1
    for d in shape:
        count *= d
    size = count * DTYPES[dtype].itemsize
    # In order and non-overlapping: a frame cannot make two tensors alias the same bytes.
    if type(offset) is not int or offset < start or offset % ALIGN or offset + size > len(payload):
        raise FrameError(f"tensor {name!r}: offset {offset!r} does not hold {size} bytes inside the payload")
    if max_tensor_bytes is not None and size > max_tensor_bytes:
        raise FrameError(f"tensor {name!r}: {size} bytes exceeds the {max_tensor_bytes}-byte limit")
    arr = np.ndarray(shape, DTYPES[dtype], payload, offset)  # a view of the payload
    return name, arr, offset + size


# --- asyncio streams (the node's side) -----------------------------------------------------------------------
async def read_frame(reader: asyncio.StreamReader, max_payload: int, *,
                     max_tensor_bytes: int | None = None) -> Frame | None:
    """The next frame, or None at a clean end of stream between frames."""
    try:
        prefix = await reader.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("connection closed inside a frame prefix") from None
    header_len, payload_len = read_prefix(prefix, max_payload)
    # header and payload in one read: usually already buffered, so one call and one copy out of the stream
    body = memoryview(await reader.readexactly(header_len + payload_len))
    return unpack(body[:header_len], _payload(body, header_len), max_tensor_bytes=max_tensor_bytes)


def _payload(body: memoryview, header_len: int) -> memoryview | bytes:
    """The payload part of a frame read with its header: a view when the header kept it aligned (``pack``
    pads it), else a copy (from a sender that does not pad), so that no tensor is handed on misaligned."""
    return body[header_len:] if header_len % ALIGN == 0 else bytes(body[header_len:])


async def write_frame(writer: asyncio.StreamWriter, frame: Frame) -> None:
    writer.writelines(pack(frame))
    # drain waits only while the transport holds more than its high-water mark, or reports a closed one:
    # skip the call (a chain of coroutines) when the socket took everything, as after almost every hop
    if writer.transport.get_write_buffer_size() or writer.transport.is_closing():
        await writer.drain()


# --- blocking sockets (the client's side) --------------------------------------------------------------------
class FrameSocket:
    """One kept-open connection to a node's frame port; one request at a time."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def request(self, frame: Frame, timeout: float, max_payload: int) -> Frame:
        """Send ``frame`` and return the reply; ``OSError`` (``TimeoutError`` included) on transport failure."""
        self.send(frame, timeout)
        return self.receive(timeout, max_payload)

    def send(self, frame: Frame, timeout: float) -> None:
        self.sock.settimeout(timeout)
        send_all(self.sock, pack(frame))

    def receive(self, timeout: float, max_payload: int) -> Frame:
        self.sock.settimeout(timeout)
        header_len, payload_len = read_prefix(self._exactly(PREFIX.size), max_payload)
        body = memoryview(self._exactly(header_len + payload_len))
        return unpack(body[:header_len], _payload(body, header_len))

    def _exactly(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise ConnectionError("the node closed the connection")
            got += k
        return buf


def send_all(sock: socket.socket, buffers: Sequence[bytes | memoryview]) -> None:
    """Gathered writes of ``buffers`` (no joining copy); a call may write part of them, so loop."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        sent = sock.sendmsg(views[:512])  # below every platform's IOV_MAX
        while sent:
            if sent >= views[0].nbytes:
                sent -= views.pop(0).nbytes
            else:
                views[0], sent = views[0][sent:], 0
        while views and not views[0].nbytes:
            views.pop(0)


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
            conn = FrameSocket(addr[0], addr[1], timeout)
            self._keep(conn)
            try:
                ok = conn.request(Frame("listen", reply={"to": token}), timeout, self.max_payload).kind == "ok"
            except (OSError, FrameError):
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
