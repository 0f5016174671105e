"""``splitup import``: a Hugging Face directory on disk becomes a validated ONNX that plans and runs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from splitup.cli import main
from splitup.graph.validate import validate_file
from splitup.runtime.local import LocalPipeline

from .splits import plan_with_tasks

torch = pytest.importorskip("torch", reason="the reference needs the torch extra")
transformers = pytest.importorskip("transformers", reason="transformers comes with the torch extra")

IDS = np.array([[3, 17, 42, 5, 9, 61]], dtype=np.int64)


def _save(kind: str, directory) -> object:
    torch.manual_seed(0)
    if kind == "llama":
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64))
    elif kind == "gpt2":
        m = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))
    else:
        m = transformers.BertModel(transformers.BertConfig(
            vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64))
    m.eval().save_pretrained(directory)
    return m


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_import_matches_transformers_and_splits(kind, tmp_path, capsys):
    hf = _save(kind, tmp_path / "hf")
    out = tmp_path / "model.onnx"
    assert main(["import", str(tmp_path / "hf"), "--out", str(out), "--max-seq", "16"]) == 0
    assert "next: splitup plan" in capsys.readouterr().out
    model, report = validate_file(out)
    assert report.dim_max["seq"] == 16
    feeds = {"input_ids": IDS}
    for vi in model.graph.input:
        if vi.name.startswith("past."):  # an empty cache (lengths 0) with room for the prompt
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            dims = [d.dim_value if d.HasField("dim_value") else IDS.shape[1] for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = np.zeros(dims, dtype)
        elif vi.name == "attention_mask":
            feeds[vi.name] = np.ones_like(IDS)
    got = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        r = hf(input_ids=torch.from_numpy(IDS))
    ref = (r.logits if kind != "bert" else r.last_hidden_state).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    plan_with_tasks(onnx.load(out), kind, 2, tmp_path / "plan")
    piped = LocalPipeline(tmp_path / "plan").run(feeds)
    np.testing.assert_allclose(piped[model.graph.output[0].name], got, atol=1e-5, rtol=0)


def test_bfloat16_checkpoint_is_widened_exactly(tmp_path):
    hf = _save("llama", tmp_path / "hf").to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "model.onnx"
    assert main(["import", str(tmp_path / "hf"), "--out", str(out)]) == 0
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    expected = hf.model.embed_tokens.weight.float().detach().numpy()
    np.testing.assert_array_equal(weights["embed.weight"], expected)


_HOSTILE_HEADERS = {
    "nested-header": b"[" * 100_000 + b"]" * 100_000,
    "offsets-past-the-end": json.dumps({"w": {"dtype": "BF16", "shape": [400], "data_offsets": [0, 800]}}).encode(),
    "header-not-a-map": b"[1, 2]",
    "float8": json.dumps({"w": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}).encode(),
}


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "is not a directory"),
    ("no-config", "has no config.json"),
    ("t5", "model_type 't5' is not importable"),
    ("no-weights", "has no *.safetensors"),
    ("rope", "rope_parameters"),
    ("nested-header", "model.safetensors is not a valid safetensors file"),
    ("offsets-past-the-end", "model.safetensors is not a valid safetensors file"),
    ("header-not-a-map", "model.safetensors is not a valid safetensors file"),
    ("nested-config", "config.json: JSON nested deeper than the parser can follow"),
    ("float8", "model.safetensors: tensors of a type the importer does not read: w (F8_E4M3)"),
])
def test_import_refusals_say_what_to_do(setup, message, tmp_path, capsys):
    d = tmp_path / "hf"
    if setup != "missing":
        d.mkdir()
    if setup == "t5":
        (d / "config.json").write_text(json.dumps({"model_type": "t5"}))
    if setup == "no-weights":
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    if setup == "rope":
        _save("llama", d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0}
        (d / "config.json").write_text(json.dumps(cfg))
    if setup == "nested-config":
        (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    if setup in _HOSTILE_HEADERS:  # a checkpoint from someone else's tool, damaged or hostile
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
        header = _HOSTILE_HEADERS[setup]
        (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    assert main(["import", str(d), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # save_pretrained's progress bar may come first
    assert last.startswith("error: ") and message in last and "Traceback" not in err


def test_weights_over_the_protobuf_limit_go_to_external_data(tmp_path, monkeypatch, capsys):
    """Over 2 GiB (here: over a limit lowered for the test) the import writes OUT.data beside the graph,
    validates it from disk, and `splitup plan` reads the shards from there; results equal the whole model."""
    import splitup.models.hf_import as hf_import

    monkeypatch.setattr(hf_import, "MAX_EMBEDDED_BYTES", 4096)
    _save("gpt2", tmp_path / "hf")
    out = tmp_path / "model.onnx"
    assert main(["import", str(tmp_path / "hf"), "--out", str(out), "--max-seq", "16"]) == 0
    assert "external data (model.onnx.data" in capsys.readouterr().out
    assert out.stat().st_size < 100_000 < (tmp_path / "model.onnx.data").stat().st_size
    model, _ = validate_file(out)
    assert main(["plan", str(out), "--nodes", "2x1MiB", "--workspace", "0", "--out", str(tmp_path / "plan")]) == 0
    assert "no weights" not in capsys.readouterr().err
    feeds = {"input_ids": IDS}
    for vi in model.graph.input:
        if vi.name.startswith("past."):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            dims = [d.dim_value if d.HasField("dim_value") else IDS.shape[1] for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = np.zeros(dims, dtype)
    want = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = LocalPipeline(tmp_path / "plan").run(feeds)[model.graph.output[0].name]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
