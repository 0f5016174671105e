"""Tensors on the wire: safetensors bytes whose metadata carries the JSON routing envelope.

Never pickle. The safetensors header is parsed and bounded here, before the library allocates anything:
header size, tensor count, dtypes, dims and each tensor's byte range must all be consistent with the body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import numpy as np
from safetensors.numpy import save

from splitup import jsonparse
from splitup.errors import SplitUpError
from splitup.graph.meta import NUMPY_DTYPES, SAFETENSORS_DTYPES

META_KEY = "splitup"
#: Envelope meta key under which a client sends the job's token rule (``splitup.decoding.Decoding`` JSON),
#: so that the node emitting logits records it with its transcript.
DECODING_META = "decoding"
#: Metadata key (HTTP hops) of the sender's signed hand-off of the tensors (``splitup.market.evidence``):
#: ``{"by": signer, "index": task index, "call": call index, "sig": digest || signature as hex}``; frames
#: carry the same object in their header, a final HTTP reply in the ``x-splitup-handoff`` header.
HANDOFF_META = "handoff"
HANDOFF_HEADER = "x-splitup-handoff"
MAX_HANDOFF_BYTES = 1024
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 4096
MAX_ROUTE = 64
MAX_URLS = 8
# Routes a node keeps parsed, by their wire text (``Envelope.from_wire``): a few per live job; texts longer
# than ROUTE_CACHE_CHARS are parsed every time rather than kept.
ROUTE_CACHE = 256
ROUTE_CACHE_CHARS = 16 << 10
# The C encoder built once: ``json.dumps`` builds it again (in Python) per call, which is most of a small
# message's cost when the caches are cold (as they are after each engine call). Writes what ``json.dumps(value,
# separators=(",", ":"))`` writes (non-finite floats as JSON's extensions too).
ENCODE_JSON = c_make_encoder(None, None, encode_basestring_ascii, None, ":", ",", False, False, True)
_DTYPES = {code: NUMPY_DTYPES[name] for code, name in SAFETENSORS_DTYPES.items()}


class WireError(SplitUpError):
    """A body that is not a well-formed, bounded safetensors message with a valid envelope."""


@dataclass(frozen=True)
class Hop:
    """One task of a route: where to run it (first URL first, the others as stand-ins), its session and step,
    and which tensors to send on to the next hop (or back, from the last hop)."""

    urls: list[str]
    task: str
    send: list[str]
    session: str | None = None
    step: int | None = None
    # Tensors of ``send`` cut to their last position on axis 1 (a decoder's next-token logits): a prefill
    # then carries one row of logits back along the chain instead of one per prompt token.
    last: list[str] = field(default_factory=list)

    def at_step(self, step: int) -> Hop:
        """This hop at ``step``. Its fields copied as they are: the frozen constructor sets them one by one
        through ``object.__setattr__``, and this runs for every hop of every frame a node reads."""
        hop = object.__new__(Hop)
        hop.__dict__.update(self.__dict__, step=step)
        return hop


@dataclass(frozen=True)
class Envelope:
    job: str
    hop: int
    route: list[Hop]
    hop_timeout: float = 30.0
    meta: dict[str, str] = field(default_factory=dict)
    # The route's wire text (``to_wire``) once known: a node forwards the text it received as it is.
    wire: str | None = field(default=None, compare=False, repr=False)
    # The hops' steps as a frame carried them (``from_wire``, ``at_steps``): forwarded without collecting them again.
    steps: list[int | None] | None = field(default=None, compare=False, repr=False)

    @property
    def current(self) -> Hop:
        return self.route[self.hop]

    def to_dict(self) -> dict[str, Any]:
        # vars(), not asdict(): asdict deep-copies every field, and this runs at every hop of every token.
        return {"job": self.job, "hop": self.hop, "route": [vars(h) for h in self.route],
                "hop_timeout": self.hop_timeout, "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def next(self) -> Envelope:
        return self._with(hop=self.hop + 1)

    def at_steps(self, steps: Sequence[int | None]) -> Envelope:
        """This route with its hops at ``steps`` (a generation's next token; None: a hop's step as it is);
        the route text, which has no steps in it, is kept."""
        if len(steps) != len(self.route):
            raise ValueError(f"{len(steps)} steps for a route of {len(self.route)} hops")
        if set(map(type, steps)) == _INT:
            return self._with(route=list(map(Hop.at_step, self.route, steps)), steps=list(steps))
        route = [h if s is None else h.at_step(s) for h, s in zip(self.route, steps, strict=True)]
        return self._with(route=route, steps=[h.step for h in route])

    def _with(self, **changes: Any) -> Envelope:
        """A copy with ``changes`` (fields already checked), without the frozen constructor (``Hop.at_step``)."""
        env = object.__new__(Envelope)
        env.__dict__.update(self.__dict__, **changes)
        return env

    def to_wire(self, like: Envelope | None = None) -> list[Any]:
        """The envelope as frames carry it: ``[text, hop, steps]``, ``text`` the JSON of everything but the
        hop index and the hops' steps. Those two change at every hop and token; the text does not while a
        job runs, so a node parses it once per job (``from_wire``) and forwards it unchanged. ``like``: an
        envelope sent before (the previous token's), whose text is taken if only steps and hop differ."""
        text = self.wire
        if text is None and like is not None and like.wire is not None and self.same_route(like):
            text = like.wire
            object.__setattr__(self, "wire", text)
        if text is None:
            text = "".join(ENCODE_JSON({"job": self.job, "route": [{f: getattr(h, f) for f in _ROUTE_FIELDS}
                                                                   for h in self.route],
                                        "hop_timeout": self.hop_timeout, "meta": self.meta}, 0))
            object.__setattr__(self, "wire", text)  # frozen: a cache of a function of the fields
        return [text, self.hop, self.steps if self.steps is not None else [h.step for h in self.route]]

    def same_route(self, other: Envelope) -> bool:
        """Whether the two differ in their hop index and steps at most."""
        return (self.job == other.job and self.hop_timeout == other.hop_timeout and self.meta == other.meta
                and len(self.route) == len(other.route)
                and all(getattr(a, f) == getattr(b, f) for a, b in zip(self.route, other.route, strict=True)
                        for f in _ROUTE_FIELDS))

    @staticmethod
    def from_wire(value: Any) -> Envelope:
        """The envelope of ``to_wire``'s form, as checked as ``from_dict``'s; the text's parse is kept. Runs for
        every frame a node reads, with the caches cold after the engine's compute: kept to few steps."""
        if type(value) is not list or len(value) != 3:
            raise WireError("malformed routing envelope: expected [text, hop index, steps]")
        text, hop, steps = value
        if type(text) is not str or type(hop) is not int or type(steps) is not list:
            raise WireError("malformed routing envelope: expected [text, hop index, steps]")
        base = _ROUTES.get(text) or _parse_route(text)
        hops = base.route
        if len(steps) != len(hops) or not 0 <= hop < len(hops):
            raise WireError(f"route of {len(hops)} hops with hop index {hop} and {len(steps)} steps is invalid")
        if set(map(type, steps)) == _INT:  # a generation's frames: every hop at a step (one pass, in C)
            route = list(map(Hop.at_step, hops, steps))
        else:
            route = []
            for h, step in zip(hops, steps, strict=True):
                if type(step) is int:
                    route.append(h.at_step(step))
                elif step is None and h.session is None:
                    route.append(h)
                elif step is None:
                    raise WireError("malformed routing envelope: a hop with a session needs an integer step")
                else:
                    raise WireError(f"malformed routing envelope: step {step!r} is not an integer")
        return base._with(hop=hop, route=route, steps=steps)

    @staticmethod
    def from_json(text: str) -> Envelope:
        try:
            d = jsonparse.loads(text)
        except (TypeError, ValueError) as exc:
            raise WireError(f"malformed routing envelope: {exc!r}") from None
        return Envelope.from_dict(d)

    @staticmethod
    def from_dict(d: Any) -> Envelope:
        try:
            route = [_hop(h) for h in d["route"]]
            env = Envelope(str(d["job"])[:128], int(d["hop"]), route, float(d.get("hop_timeout", 30.0)),
                           {str(k): str(v) for k, v in dict(d.get("meta", {})).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WireError(f"malformed routing envelope: {exc!r}") from None
        if not 0 < len(route) <= MAX_ROUTE or not 0 <= env.hop < len(route):
            raise WireError(f"route of {len(route)} hops with hop index {env.hop} is invalid")
        if not 0 < env.hop_timeout <= 3600:
            raise WireError("hop_timeout must be in (0, 3600] seconds")
        return env


# A hop's fields in a route's wire text: all but its step, which changes at every token
_ROUTE_FIELDS = tuple(f.name for f in fields(Hop) if f.name != "step")
_INT = {int}
_ROUTES: dict[str, Envelope] = {}  # wire text -> its envelope at hop 0 with no steps (``from_wire``)
_ROUTES_LOCK = threading.Lock()


def _parse_route(text: str) -> Envelope:
    try:
        d = jsonparse.loads(text)
    except ValueError as exc:
        raise WireError(f"malformed routing envelope: {exc!r}") from None
    if not isinstance(d, dict) or not isinstance(d.get("route"), list):
        raise WireError("malformed routing envelope: expected an object with a route")
    # checked as any envelope is (sessions' steps are checked per frame, in from_wire)
    route = d["route"]
    base = Envelope.from_dict({**d, "hop": 0, "route": [{**h, "step": 0} if isinstance(h, dict) else h for h in route]})
    base = Envelope(base.job, 0, [replace(h, step=None) for h in base.route], base.hop_timeout, base.meta, text)
    if len(text) <= ROUTE_CACHE_CHARS:
        with _ROUTES_LOCK:
            if len(_ROUTES) >= ROUTE_CACHE:
                del _ROUTES[next(iter(_ROUTES))]  # the oldest: routes of jobs long done
            _ROUTES[text] = base
    return base


def _hop(d: dict[str, Any]) -> Hop:
    urls = [str(u) for u in d["urls"]]
    if not 0 < len(urls) <= MAX_URLS or not all(u.startswith(("http://", "https://")) for u in urls):
        raise ValueError(f"hop urls must be 1..{MAX_URLS} http(s) URLs")
    step = d.get("step")
    session = d.get("session")
    if session is not None and not isinstance(step, int):
        raise ValueError("a hop with a session needs an integer step")
    return Hop(urls, str(d["task"]), [str(s) for s in d["send"]], None if session is None else str(session),
               None if step is None else int(step), [str(s) for s in d.get("last", [])])


def encode(tensors: Mapping[str, np.ndarray], envelope: Envelope | None = None,
           handoff: Mapping[str, Any] | None = None) -> bytes:
    meta = {META_KEY: envelope.to_json()} if envelope is not None else {}
    if handoff is not None:
        meta[HANDOFF_META] = json.dumps(handoff, separators=(",", ":"))
    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta or None)


def handoff_of(meta: Mapping[str, str]) -> dict[str, Any] | None:
    """The signed hand-off a hop's metadata (or a reply header's text) carries; None when there is none."""
    raw = meta.get(HANDOFF_META)
    if raw is None:
        return None
    if len(raw) > MAX_HANDOFF_BYTES:
        raise WireError(f"signed hand-off of {len(raw)} bytes exceeds {MAX_HANDOFF_BYTES}")
    try:
        value = jsonparse.loads(raw)
    except ValueError as exc:
        raise WireError(f"signed hand-off is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WireError("signed hand-off must be a JSON object")
    return value


def decode(body: bytes, *, max_tensor_bytes: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a message; every size is checked against the body before loading."""
    if len(body) < 8:
        raise WireError("body is shorter than a safetensors header")
    n = int.from_bytes(body[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(body):
        raise WireError(f"safetensors header of {n} bytes does not fit the body or the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = jsonparse.loads(body[8 : 8 + n])
    except ValueError as exc:
        raise WireError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("safetensors header is not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WireError("safetensors metadata must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise WireError(f"{len(header)} tensors; at most {MAX_TENSORS}")
    data_len = len(body) - 8 - n
    ranges = sorted((*_check_entry(name, info, data_len, max_tensor_bytes), name) for name, info in header.items())
    # Read here rather than by safetensors.numpy.load, which cannot make bfloat16 or float8 arrays.
    base, end, tensors = 8 + n, 0, {}
    for begin, stop, name in ranges:
        if begin < end:
            raise WireError(f"tensor {name!r}: data offsets overlap another tensor's")
        end = stop
        info = header[name]
        dtype = _DTYPES[info["dtype"]]
        tensors[name] = np.frombuffer(body, dtype, (stop - begin) // dtype.itemsize, base + begin) \
            .reshape(info["shape"]).copy()
    return tensors, meta


def _check_entry(name: str, info: Any, data_len: int, max_tensor_bytes: int | None) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise WireError(f"tensor {name!r}: malformed header entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _DTYPES:
        raise WireError(f"tensor {name!r}: dtype {dtype!r} is not accepted ({', '.join(_DTYPES)})")
    if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(d, int) and 0 <= d < 2**31 for d in shape):
        raise WireError(f"tensor {name!r}: shape {shape!r} is not a list of at most 8 dims in [0, 2^31)")
    size = int(np.prod(shape, dtype=object)) * _DTYPES[dtype].itemsize if shape else _DTYPES[dtype].itemsize
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len and offsets[1] - offsets[0] == size):
        raise WireError(f"tensor {name!r}: data offsets {offsets!r} do not hold {size} bytes inside the body")
    if max_tensor_bytes is not None and size > max_tensor_bytes:
        raise WireError(f"tensor {name!r}: {size} bytes exceeds the {max_tensor_bytes}-byte limit")
    return offsets[0], offsets[1]


def envelope_of(meta: Mapping[str, str]) -> Envelope:
    if META_KEY not in meta:
        raise WireError(f"no routing envelope (safetensors metadata key {META_KEY!r})")
    return Envelope.from_json(meta[META_KEY])
