import numpy as np
import onnx
import onnxruntime as ort

from splitup.partition import analyze, partition


def whole_vram(model: onnx.ModelProto) -> int:
    return partition(analyze(model), 2**40, workspace_bytes=0).segments[0].vram_bytes


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def random_feeds(model: onnx.ModelProto, seq: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        # A KV cache (capacity ``past``) starts empty: length 0, room for this call's seq positions.
        dims = [d.dim_value if d.HasField("dim_value") else seq for d in i.type.tensor_type.shape.dim]
        if i.name.endswith(".length"):
            feeds[i.name] = np.zeros(dims, np.int64)
        elif i.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[i.name] = rng.integers(0, 50, dims) if i.name != "attention_mask" else np.ones(dims, np.int64)
        else:
            feeds[i.name] = rng.normal(size=dims).astype(np.float32)
    return feeds
