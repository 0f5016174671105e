"""A local Hugging Face model directory (``config.json`` + ``*.safetensors``) as a validated ONNX model.

No network and no torch: the config picks a zoo family (Llama, GPT-2, BERT), whose graph is checked
against ``transformers`` in the tests, and the checkpoint's tensors are renamed onto it
(``splitup.models.convert``). Decoders come with their KV cache as state (``past.N.key`` ->
``present.N.key``), and every symbolic dim with its maximum, so the result goes straight to
``splitup plan``. Weights are read with safetensors (memory-mapped, no pickle); bfloat16 ones are
widened bit-exactly to float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitup import jsonparse
from splitup.graph.errors import BuilderError, GraphRejected
from splitup.models.convert import bert_from_hf, gpt2_from_hf, llama_from_hf
from splitup.models.errors import ModelError

# model_type -> (zoo family, checkpoint renamer)
FAMILIES: dict[str, tuple[str, Callable[[Mapping[str, np.ndarray], int], dict[str, np.ndarray]]]] = {
    "llama": ("llama", llama_from_hf),
    "gpt2": ("gpt2", gpt2_from_hf),
    "bert": ("bert", bert_from_hf),
}
# A single ONNX file cannot hold more (protobuf's limit); larger models are planned from the zoo family.
MAX_EMBEDDED_BYTES = 2**31 - 2**24


def _config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = jsonparse.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{directory} has no config.json: give the directory of a Hugging Face model "
                         "(config.json and *.safetensors)") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object")
    return config


def _normalise(model_type: str, config: dict[str, Any]) -> dict[str, Any]:
    """Newer ``transformers`` spellings of keys the zoo knows under their older names."""
    config = dict(config)
    rope = config.pop("rope_parameters", None)
    if rope is not None:
        if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default":
            raise ModelError(f"{model_type}: rope_parameters={rope!r} is not supported (only plain RoPE)")
        if "rope_theta" in rope:
            config["rope_theta"] = rope["rope_theta"]
    for key in ("is_decoder", "add_cross_attention"):
        if model_type == "bert" and key in config:
            if config.pop(key):
                raise ModelError(f"bert: {key}=true is not supported (encoder-only BERT)")
    return config


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of every ``*.safetensors`` file in ``directory``, as numpy (bfloat16 -> float32)."""
    from safetensors import SafetensorError, safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{directory} has no *.safetensors weights (pickled .bin checkpoints are not read: "
                         "convert them with transformers' save_pretrained(safe_serialization=True))")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        try:
            # Opening checks the whole header (its JSON, every tensor's offsets inside the file and its size
            # against dtype and shape), so the header read again below is one safetensors accepted.
            with safe_open(str(path), framework="numpy") as f:
                dtypes = {k: v["dtype"] for k, v in _header(path).items() if k != "__metadata__"}
                unreadable = sorted(f"{k} ({d})" for k, d in dtypes.items() if d not in READABLE_DTYPES)
                if unreadable:
                    raise ModelError(f"{path.name}: tensors of a type the importer does not read: "
                                     f"{', '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''} "
                                     f"(it reads {', '.join(sorted(READABLE_DTYPES))})")
                for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                    if dtypes[key] != "BF16":
                        tensors[key] = f.get_tensor(key)
        except SafetensorError as exc:
            raise ModelError(f"{path.name} is not a valid safetensors file: {exc}") from None
        tensors.update(_read_bf16(path, {k for k, d in dtypes.items() if d == "BF16"}))
    return tensors


# safetensors' dtypes that numpy holds (BF16 widened here); float8 and the like have no numpy type.
READABLE_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"})


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return dict(jsonparse.loads(fh.read(int.from_bytes(fh.read(8), "little"))))


def _read_bf16(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """bfloat16 tensors widened to float32: the 16 bits are the top half of the float32 pattern."""
    if not names:
        return {}
    header = _header(path)
    with open(path, "rb") as fh:
        base = 8 + int.from_bytes(fh.read(8), "little")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name in names:
        begin, end = header[name]["data_offsets"]
        bits = np.frombuffer(raw[base + begin : base + end], dtype="<u2").astype(np.uint32) << 16
        out[name] = bits.view(np.float32).reshape(header[name]["shape"])
    return out


def weights_as_stubs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose initializers above 64 elements are external-data stubs: dims and type, no bytes."""
    stub = onnx.ModelProto()
    graph = model.graph
    for field in ("ir_version", "producer_name", "opset_import", "metadata_props", "domain", "model_version"):
        value = getattr(model, field)
        if hasattr(value, "extend"):
            getattr(stub, field).extend(value)
        else:
            setattr(stub, field, value)
    stub.graph.name = graph.name
    for field in ("node", "input", "output", "value_info"):
        getattr(stub.graph, field).extend(getattr(graph, field))
    for t in graph.initializer:
        if math.prod(t.dims) <= 64:
            stub.graph.initializer.append(t)
            continue
        s = stub.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
        s.data_location = onnx.TensorProto.EXTERNAL
        s.external_data.add(key="location", value="weights.data")
    return stub


def save_imported(model: onnx.ModelProto, out: Path) -> None:
    """Write ``out``: one file when the weights fit a protobuf, else ``out`` + ``out.data`` (external data)."""
    tmp, data = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".data")
    data.unlink(missing_ok=True)  # a previous import's weights must not pass for this one's
    if sum(len(t.raw_data) for t in model.graph.initializer) > MAX_EMBEDDED_BYTES:
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=out.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, tmp)
    tmp.replace(out)


def import_hf(directory: str | Path, *, dtype: str = "float32", max_seq: int | None = None,
              max_batch: int | None = None, name: str | None = None) -> onnx.ModelProto:
    """Build and validate the ONNX model of the Hugging Face model in ``directory``.

    ``max_seq`` is the declared maximum of the sequence dim (default: the family's, at most the model's
    context), ``max_batch`` that of BERT's batch dim (decoders run one sequence per session); the plan
    sizes every task at them.
    """
    from splitup.graph import zoo

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory} is not a directory (give the folder holding config.json)")
    config = _config(directory)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ModelError(f"model_type {model_type!r} is not importable; supported: {', '.join(sorted(FAMILIES))} "
                         "(other architectures: export them with splitup.models.onnx_import.export_torch)")
    family, rename = FAMILIES[model_type]
    config = _normalise(model_type, config)
    overrides: dict[str, Any] = {}
    if max_seq is not None:
        overrides["max_seq"] = max_seq
    if max_batch is not None:
        if family != "bert":
            raise ModelError(f"{model_type}: decoders are imported for one sequence per session; "
                             "--max-batch applies to BERT")
        overrides["max_batch"] = max_batch
    try:
        layers = config.get("n_layer" if family == "gpt2" else "num_hidden_layers")
        if not isinstance(layers, int) or isinstance(layers, bool) or layers <= 0:
            raise ModelError(f"{directory.name}: config.json gives no positive layer count")
        weights = rename(read_safetensors(directory), layers)
        total = sum(w.nbytes for w in weights.values()) // (2 if dtype == "float16" else 1)
        # Over 2 GiB the model cannot be one protobuf: it is validated with its weights sized from their dims
        # and written with external data (``save_imported``).
        big = total > MAX_EMBEDDED_BYTES
        model = zoo.build_from_config(family, {**config, **overrides}, weights=weights, dtype=dtype,
                                      name=name or directory.name, validate=not big)
        if big:
            from splitup.graph.validate import validate_model

            validate_model(weights_as_stubs(model))
        return model
    except (BuilderError, GraphRejected) as exc:
        raise ModelError(f"{directory.name}: {exc}") from None
