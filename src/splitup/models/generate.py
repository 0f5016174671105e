"""Text generation over any engine that can run a decoder step with a KV cache.

The engine is a ``step`` function: given the next token ids (1-D, at most ``chunk`` of them) it
appends them to its own cache and returns the logits of the last position. ``OrtDecoder`` is that
over one onnxruntime session, ``pipeline_step`` over a ``LocalPipeline``; a node pipeline or a
remote client only needs to provide the same callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from splitup.decoding import Decoding, DecodingError, choose
from splitup.graph.limits import Limits
from splitup.graph.meta import read_state
from splitup.graph.shapes import read_dim_max
from splitup.models.errors import ModelError
from splitup.partition.task import TensorSpec
from splitup.runtime.kv import KvLayout

StepFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Sampling:
    """``temperature == 0`` is greedy decoding; the choice is :mod:`splitup.decoding`'s canonical one
    (greedy: the lowest id within a narrow window of the maximum; sampled: a draw keyed by the seed and
    the token's position, so an unseeded sampled run uses seed 0 and is reproducible)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        try:
            self.decoding()
        except DecodingError:
            raise ModelError(f"bad sampling parameters {self}") from None

    def decoding(self) -> Decoding:
        return Decoding(float(self.temperature), int(self.top_k), float(self.top_p), int(self.seed or 0))


GREEDY = Sampling()


def stream(
    step: StepFn,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    sampling: Sampling = GREEDY,
    chunk: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one by one; stops after an eos id (which is yielded) or ``max_new_tokens``.

    The prompt is fed in chunks of at most ``chunk`` tokens (the graph's ``max_seq``), then one
    token per step. ``step`` must start from an empty cache.
    """
    ids = np.asarray(list(prompt_ids), dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ModelError("the prompt must be a non-empty list of token ids")
    chunk = chunk or ids.size
    decoding = sampling.decoding()
    logits = np.empty(0)
    for start in range(0, ids.size, chunk):
        logits = step(ids[start : start + chunk])
    stop = set(int(e) for e in eos_ids)
    for n in range(max_new_tokens):
        token = choose(np.asarray(logits).reshape(-1), decoding, ids.size + n)
        yield token
        if token in stop or n == max_new_tokens - 1:
            return
        logits = step(np.array([token], dtype=np.int64))


def generate(
    step: StepFn,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    sampling: Sampling = GREEDY,
    chunk: int | None = None,
) -> list[int]:
    """The new token ids (the prompt not included); see ``stream``."""
    return list(stream(step, prompt_ids, max_new_tokens, eos_ids, sampling, chunk))


# onnxruntime's input type names -> numpy types of the caches it takes (fp16 activations included).
_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(float16)": np.float16, "tensor(float)": np.float32}


class OrtDecoder:
    """One onnxruntime session of a decoder graph built by the zoo, holding its KV cache."""

    def __init__(self, model: onnx.ModelProto, threads: int = 0, *, fast_quantised: bool = False) -> None:
        import onnxruntime as ort

        from splitup.runtime.ort import session_options

        self.pairs: dict[str, str] = read_state(model)
        if not self.pairs:
            raise ModelError("the graph has no KV-cache state (build it with kv_cache=True)")
        dims = read_dim_max(model, Limits())
        self.max_seq, self.context = dims.get("seq", 0), dims.get("past", 0)
        opts = session_options(ort, threads=threads, fast_quantised=fast_quantised)
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self._empty = {}
        for i in self.session.get_inputs():
            if i.name in self.pairs:
                shape = [d if isinstance(d, int) else 0 for d in i.shape]
                self._empty[i.name] = np.zeros(shape, _ORT_TYPES.get(i.type, np.float32))
        dim_max = {"past": self.context, "seq": self.max_seq}
        self.layout = KvLayout.of([TensorSpec(i.name, np.dtype(_ORT_TYPES.get(i.type, np.float32)).name, list(i.shape),
                                              [d if isinstance(d, int) else dim_max.get(d, 0) for d in i.shape])
                                   for i in self.session.get_inputs()], self.pairs)
        self.state: dict[str, np.ndarray] = {}
        self.length = 0

    def reset(self) -> None:
        self.state.clear()
        self.length = 0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] > self.max_seq:
            raise ModelError(f"{ids.shape[1]} tokens in one step, the graph takes at most {self.max_seq}")
        if self.length + ids.shape[1] > self.context:
            raise ModelError(f"the context of {self.context} tokens is full")
        feeds = {"input_ids": ids, **{k: self.state.get(k, v) for k, v in self._empty.items()}}
        if self.layout is not None:  # the growing form: caches hold exactly the tokens there are
            feeds = self.layout.ensure_capacity(feeds, "growing")
        names = ["logits", *self.pairs.values()]
        out = dict(zip(names, self.session.run(names, feeds), strict=True))
        self.state = {past: out[present] for past, present in self.pairs.items()}
        self.length += ids.shape[1]
        return out["logits"][0, -1]


def pipeline_step(pipeline) -> StepFn:  # noqa: ANN001 - splitup.runtime.local.LocalPipeline
    """A step over a plan's tasks run in sequence; the pipeline keeps the KV cache per task."""

    def step(ids: np.ndarray) -> np.ndarray:
        return pipeline.run({"input_ids": np.asarray(ids, dtype=np.int64).reshape(1, -1)})["logits"][0, -1]

    return step
