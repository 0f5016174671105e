"""SmolLM2-135M with its 4-bit GGUF weights as shipped: no float copy of the matrices, split and unsplit agree."""

import numpy as np
import pytest
from onnx import TensorProto

from splitup.models.generate import OrtDecoder, generate, pipeline_step
from splitup.partition import analyze
from splitup.runtime.local import LocalPipeline

from .conftest import CONTINUATION, PROMPT_IDS, need
from .splits import plan_with_tasks


@pytest.fixture(scope="module")
def smollm_int4(model_cache):
    need("smollm2-135m")
    from splitup.models.real import load_real_model

    return load_real_model("smollm2-135m", max_seq=64, dtype="int4")


def test_gguf_blocks_are_read_bit_exactly():
    need("smollm2-135m")
    import gguf
    from gguf.quants import dequantize

    from splitup.models.gguf_import import blocks_of
    from splitup.models.registry import spec

    reader = gguf.GGUFReader(str(spec("smollm2-135m").require_path()))
    seen = set()
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind in seen or kind not in ("Q4_1", "Q8_0"):
            continue
        seen.add(kind)
        shape = tuple(int(d) for d in reversed(t.shape))
        qa = blocks_of(t.data, kind, shape)
        assert qa.bits == (4 if kind == "Q4_1" else 8) and (qa.minimum is not None) == (kind == "Q4_1")
        np.testing.assert_array_equal(qa.dequantize(), dequantize(t.data, t.tensor_type).reshape(shape))
    assert seen == {"Q4_1", "Q8_0"}


def test_shipped_int4_graph_holds_the_4bit_blocks(smollm_int4):
    g = smollm_int4.model.graph
    kinds = {t.name: t.data_type for t in g.initializer}
    assert kinds["layers.0.mlp.down.weight"] == TensorProto.UINT4 and kinds["embed.weight"] == TensorProto.INT8
    assert "layers.0.mlp.down.weight_min" in kinds  # Q4_1's per-block minimum, not folded into a float copy
    big_floats = [t.name for t in g.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2
                  and not t.name.endswith(("_scale", "_min")) and not t.name.startswith("rope.")]
    assert big_floats == []
    # 4 bits per weight + float32 scale and minimum per 32 (embeddings: 8 bits + scale), vs 538 MB in float32.
    assert analyze(smollm_int4.model).weight_bytes < 160e6


def test_int4_greedy_equals_fp32_prefix_and_three_task_split_equals_whole(smollm_int4, tmp_path):
    whole = generate(OrtDecoder(smollm_int4.model), PROMPT_IDS, 12, smollm_int4.eos_ids, chunk=64)
    # Same weights as the dequantised float32 model (only the summation order differs).
    assert whole == CONTINUATION[:12]
    plan_with_tasks(smollm_int4.model, "smollm2-135m", 3, tmp_path)
    pipe = LocalPipeline(tmp_path)
    assert generate(pipeline_step(pipe), PROMPT_IDS, 12, smollm_int4.eos_ids, chunk=64) == whole
