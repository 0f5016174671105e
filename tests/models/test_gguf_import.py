"""The GGUF importer's layout fix-ups, independent of any model file."""

import numpy as np

from splitup.models.gguf_import import unpermute


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute``: rotate-half rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(0)
    for heads, head_dim in ((9, 64), (3, 64), (4, 8)):
        w = rng.normal(size=(heads * head_dim, 12)).astype(np.float32)
        permuted = llama_cpp_permute(w, heads)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(unpermute(permuted, heads), w)


def test_unpermute_pairs_rows_within_each_head():
    # Row r of head h in Hugging Face's layout: first half are the "real" parts, second the "imaginary".
    w = np.arange(8, dtype=np.float32)[:, None]  # one head of dim 8, rows numbered
    interleaved = np.array([0, 4, 1, 5, 2, 6, 3, 7], np.float32)[:, None]
    np.testing.assert_array_equal(unpermute(interleaved, 1), w)
