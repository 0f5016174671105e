"""The generation loop on a small seeded decoder: chunked prefill, KV cache, eos, sampling."""

import numpy as np
import pytest

from splitup.graph import zoo
from splitup.models.errors import ModelError
from splitup.models.generate import GREEDY, OrtDecoder, Sampling, generate, stream


@pytest.fixture(scope="module")
def tiny():
    model = zoo.build("tiny-llama", seed=0, max_seq=8, context=64)
    nocache = zoo.build("tiny-llama", seed=0, kv_cache=False, max_seq=64)
    return OrtDecoder(model), nocache


def _full_logits(model, ids):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString()).run(["logits"], {"input_ids": np.array([ids])})[0][0]


def test_greedy_equals_recomputing_the_whole_sequence(tiny):
    dec, nocache = tiny
    prompt = [5, 17, 200, 3, 9, 44, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]  # 19 tokens: 3 chunks of <= 8
    dec.reset()
    out = generate(dec, prompt, 12, chunk=dec.max_seq)
    seq = list(prompt)
    for _ in range(12):
        seq.append(int(_full_logits(nocache, seq)[-1].argmax()))
    assert out == seq[len(prompt):]
    assert dec.length == len(prompt) + 11  # the last token is never fed back


def test_stops_at_eos_and_yields_it(tiny):
    dec = tiny[0]
    dec.reset()
    first = generate(dec, [1, 2, 3], 5)
    dec.reset()
    assert generate(dec, [1, 2, 3], 5, eos_ids=[first[1]]) == first[:2]


def test_sampling_is_seeded_and_top_k_one_is_greedy(tiny):
    dec = tiny[0]
    runs = []
    for s in (Sampling(temperature=1.0, seed=7), Sampling(temperature=1.0, seed=7), Sampling(temperature=1.0, top_k=1),
              GREEDY, Sampling(temperature=5.0, top_p=0.5, seed=3)):
        dec.reset()
        runs.append(generate(dec, [1, 2, 3], 10, sampling=s))
    assert runs[0] == runs[1]
    assert runs[2] == runs[3]
    assert all(0 <= t < 512 for r in runs for t in r)


def test_limits_are_errors(tiny):
    dec = tiny[0]
    dec.reset()
    with pytest.raises(ModelError, match="at most 8"):
        dec(np.arange(9))
    with pytest.raises(ModelError):
        list(stream(dec, [], 3))
    with pytest.raises(ModelError):
        Sampling(temperature=-1)
    dec.reset()
    with pytest.raises(ModelError, match="context"):
        generate(dec, list(range(60)), 10, chunk=8)
