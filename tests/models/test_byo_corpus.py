"""Bring your own model: real exports from PyTorch / Hugging Face, split and run like our own zoo.

Every model is a tiny ``transformers`` config with random weights (or a small torch CNN), exported in
the test. Each is validated, planned at a budget forcing the asked number of tasks, written (make_plan
validates every task; here each bundle is validated again from disk), run through ``LocalPipeline``
and compared with onnxruntime on the whole model, at a small input and at the declared maxima.
Full-vocabulary models split in 2 only: their lm_head MatMul is one node larger than any smaller
budget until operator splitting (issue 19) lands.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from splitup.graph.limits import Limits
from splitup.graph.shapes import read_dim_max
from splitup.graph.validate import validate_model
from splitup.runtime.local import LocalPipeline

from .splits import plan_with_tasks

torch = pytest.importorskip("torch", reason="the export path needs the torch extra")
transformers = pytest.importorskip("transformers", reason="transformers comes with the torch extra")

from splitup.models.onnx_import import export_torch, export_transformers  # noqa: E402

SMALL_VOCAB = 97
MAX = {"batch": 2, "seq": 12, "past": 16}


def _gpt2(vocab: int = SMALL_VOCAB):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=SMALL_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32))


def _bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=SMALL_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32))


class _T5(torch.nn.Module):
    """Encoder-decoder in one pass: source ids and target ids in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.m = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=SMALL_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))

    def forward(self, input_ids, decoder_input_ids):
        return self.m(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False).logits


class _CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


def _export(name: str) -> onnx.ModelProto:
    torch.manual_seed(0)
    if name == "gpt2":
        return export_transformers(_gpt2().eval(), max_batch=2, max_seq=12, attention_mask=False)
    if name == "gpt2-mask-kv":
        return export_transformers(_gpt2().eval(), max_batch=1, max_seq=12, max_past=16, kv_cache=True)
    if name == "gpt2-full-vocab":
        return export_transformers(_gpt2(50257).eval(), max_batch=1, max_seq=8, attention_mask=True)
    if name == "llama-mask":
        return export_transformers(_llama().eval(), max_batch=2, max_seq=12, attention_mask=True)
    if name == "llama-kv":
        return export_transformers(_llama().eval(), max_batch=1, max_seq=12, max_past=16, attention_mask=False,
                                   kv_cache=True)
    if name == "bert":
        return export_transformers(_bert().eval(), max_batch=2, max_seq=12, attention_mask=False)
    if name == "bert-mask":
        return export_transformers(_bert().eval(), max_batch=2, max_seq=12, attention_mask=True)
    if name == "t5":
        ids = torch.randint(2, SMALL_VOCAB, (1, 5))
        axes = {0: "batch", 1: "seq"}
        return export_torch(_T5(), (ids, ids[:, :3]), input_names=["input_ids", "decoder_input_ids"],
                            output_names=["logits"], dim_max={"batch": 2, "seq": 12, "target": 12},
                            dynamic_axes={"input_ids": axes, "decoder_input_ids": {0: "batch", 1: "target"},
                                          "logits": {0: "batch", 1: "target"}})
    if name == "cnn":
        net = _CNN()
        with torch.no_grad():
            net.body[3].running_mean.uniform_(-0.5, 0.5)
            net.body[3].running_var.uniform_(0.5, 2.0)
        return export_torch(net, (torch.randn(1, 3, 16, 16),), input_names=["x"], output_names=["y"],
                            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dim_max={"batch": 4})
    raise AssertionError(name)


_MODELS: dict[str, onnx.ModelProto] = {}


def corpus_model(name: str) -> onnx.ModelProto:
    if name not in _MODELS:
        _MODELS[name] = _export(name)
    return _MODELS[name]


def feeds_for(model: onnx.ModelProto, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at ``sizes`` (symbol -> value; unnamed symbols at their maxima)."""
    rng = np.random.default_rng(seed)
    dim_max = read_dim_max(model, Limits())
    at = {**dim_max, **sizes}
    if "total" in dim_max:
        at["total"] = at["seq"] + at["past"]
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else at[d.dim_param] for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            if "mask" in vi.name:
                mask = np.ones(shape, np.int64)
                mask[-1, : shape[1] // 3] = 0  # left padding in one row: the mask really matters
                feeds[vi.name] = mask
            else:
                feeds[vi.name] = rng.integers(2, SMALL_VOCAB, shape).astype(np.int64)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def check_split(model: onnx.ModelProto, name: str, tasks: int, out) -> float:
    plan_with_tasks(model, name, tasks, out)  # make_plan validates every task it writes
    whole = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pipe = LocalPipeline(out)  # loading validates each bundle again, from disk, as a node does
    worst = 0.0
    small = {"batch": 1, "seq": 5, "past": 3, "target": 4}
    for sizes in (small, {}):  # a small call, then everything at its declared maximum
        feeds = feeds_for(model, sizes)
        ref = dict(zip([o.name for o in model.graph.output], whole.run(None, feeds), strict=True))
        pipe.reset()
        got = pipe.run(feeds)
        for key, value in ref.items():
            assert got[key].shape == value.shape, key
            worst = max(worst, float(np.abs(got[key] - value).max()))
    assert worst <= 1e-4, f"{name}: max diff {worst}"
    return worst


@pytest.mark.parametrize(("name", "tasks"), [
    ("gpt2", 4), ("gpt2-mask-kv", 3), ("llama-mask", 3), ("llama-kv", 2), ("bert", 2), ("bert-mask", 4), ("t5", 3),
    ("cnn", 3), ("gpt2-full-vocab", 3),  # 3+: the lm_head and embedding split by columns (partition.refine)
])
def test_corpus_model_splits_and_matches(name, tasks, tmp_path):
    model = corpus_model(name)
    validate_model(model)
    check_split(model, name, tasks, tmp_path)


def test_exported_decoder_matches_transformers():
    """The export itself is right: ONNX logits equal transformers' with the cache and mask it was given."""
    torch.manual_seed(0)
    hf = _llama().eval()
    model = export_transformers(hf, max_batch=1, max_seq=12, max_past=16, attention_mask=True, kv_cache=True)
    feeds = feeds_for(model, {"batch": 1, "seq": 4, "past": 3})
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    cache = transformers.DynamicCache(config=hf.config)
    for i in range(hf.config.num_hidden_layers):
        cache.update(torch.from_numpy(feeds[f"past.{i}.key"]), torch.from_numpy(feeds[f"past.{i}.value"]), i)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"]),
                 use_cache=True, **{_cache_arg(hf): cache})
    np.testing.assert_allclose(got[0], ref.logits.numpy(), atol=1e-5, rtol=0)
    present = getattr(ref, "cache", None) or ref.past_key_values
    np.testing.assert_allclose(got[1], present.layers[0].keys.numpy(), atol=1e-6, rtol=0)


def _cache_arg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def test_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (torch extra)")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 32), torch.nn.GELU(),
                              torch.nn.Linear(32, 4))
    model = export_torch(net, (torch.randn(2, 8),), input_names=["x"], output_names=["y"], dynamo=True,
                         dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dim_max={"batch": 8})
    assert model.opset_import[0].version >= 18
    check_split(model, "dynamo-mlp", 2, tmp_path)


@pytest.mark.parametrize("form", ["head", "task"])
def test_a_half_precision_export_chooses_its_tokens_in_float32(form, tmp_path):
    """A model exported in fp16 with its KV cache (the cache in the model's own precision) splits into three
    tasks whose token task computes its head, or all of it, in float32, and runs as the model does."""
    from splitup.partition import analyze, budget_for_tasks
    from splitup.partition.plan import make_plan

    torch.manual_seed(0)
    hf = _llama().eval().half()
    model = export_transformers(hf, max_batch=1, max_seq=8, max_past=16, attention_mask=False, kv_cache=True)
    plan = make_plan(model, "llama-fp16", budget_for_tasks(analyze(model), 3), workspace_bytes=0, out_dir=tmp_path,
                     token_fp32=form).plan
    last = plan.tasks[-1]
    assert (last.head is not None) == (form == "head")
    assert last.precision == ("fp16/fp16" if form == "head" else "fp32/fp32")
    ids = np.array([[5, 17, 3, 40]], np.int64)
    got = LocalPipeline(tmp_path).run({"input_ids": ids})["logits"]
    with torch.no_grad():
        want = hf.float()(torch.tensor(ids)).logits.numpy()
    assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).all()
