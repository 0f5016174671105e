"""The engine decides at load what a task computes in: fp16 where the bundle allows it and the device has
fp16 kernels, float32 otherwise (onnxruntime's CPU provider converts the bundle); validators judge by the
class the task states and the arithmetic the executor declares. No GPU here: the GPU side is the selection
logic with injected provider lists and device names, and a forced-fp16 load on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splitup.partition.task import Plan, task_dir
from splitup.runtime import arithmetic, get_engine, run_stateful
from splitup.runtime import ort as ort_engine
from splitup.verify.replay import judge, replay
from splitup.verify.sandbox import write_plan
from splitup.verify.transcript import Transcript

PROMPT = np.array([[5, 17, 3, 250, 9, 44]], np.int64)


@pytest.fixture(scope="module")
def fp16_plan(tmp_path_factory) -> tuple[Path, Plan]:
    out = tmp_path_factory.mktemp("fp16plan")
    return out, write_plan(out, dtype="fp16", token_fp32="head")  # the token task's layers in fp16 too


def test_the_device_decides_where_the_bundle_allows_half(fp16_plan):
    _, plan = fp16_plan
    hidden, last = plan.tasks[0], plan.tasks[-1]
    for providers, device in ((["CUDAExecutionProvider", "CPUExecutionProvider"], "fp16"),
                              (["DmlExecutionProvider", "CPUExecutionProvider"], "fp16"),
                              (["ROCMExecutionProvider", "CPUExecutionProvider"], "fp16"),
                              (["OpenVINOExecutionProvider", "CPUExecutionProvider"], "fp32"),
                              (["CPUExecutionProvider"], "fp32")):
        assert arithmetic.ort_device_arithmetic(providers) == device, providers
    for name, device in (("CUDA", "fp16"), ("METAL", "fp16"), ("AMD", "fp16"), ("CPU", "fp32"), ("CLANG", "fp32"),
                         ("LLVM", "fp32")):
        assert arithmetic.tinygrad_device_arithmetic(name) == device, name
    assert arithmetic.arithmetic_for(hidden, "fp16") == "fp16"
    assert arithmetic.arithmetic_for(hidden, "fp32") == "fp32"
    # the token-choosing task's layers run in half too: its head is float32 in the graph, whatever the device
    assert last.head is not None and arithmetic.arithmetic_for(last, "fp16") == "fp16"


def _run(runners, feeds):
    env = dict(feeds)
    for r in runners:
        result, _ = run_stateful(r, {s.name: env[s.name] for s in r.task.inputs
                                     if s.name in env and s.name not in r.task.state}, None)
        env.update(result)
    return env


def test_cpu_converts_an_fp16_bundle_and_keeps_its_interface(fp16_plan, monkeypatch):
    out, plan = fp16_plan
    cpu = [get_engine("onnxruntime", threads=1).load(task_dir(out, t)) for t in plan.tasks]
    assert [r.arithmetic for r in cpu] == ["fp32", "fp32", "fp32"]
    env = _run(cpu, {"input_ids": PROMPT})
    hidden = plan.tasks[0]
    # the interface the bundle declares, so the next task gets what it expects
    assert all(env[s.name].dtype == np.dtype(s.dtype) for s in hidden.outputs)
    assert any(s.dtype == "float16" for s in hidden.outputs)
    # forced fp16 (what a CUDA/DirectML node does): the bundle as it is
    monkeypatch.setattr(ort_engine, "ort_device_arithmetic", lambda providers: "fp16")
    half = [get_engine("onnxruntime", threads=1).load(task_dir(out, t)) for t in plan.tasks]
    assert [r.arithmetic for r in half] == ["fp16", "fp16", "fp16"]
    forced = _run(half, {"input_ids": PROMPT})
    a, b = env["logits"].astype(np.float64), forced["logits"].astype(np.float64)
    assert 0 < np.abs(a - b).max() < 0.05 * np.abs(b).max()  # the same model, different arithmetic


def test_an_fp32_validator_judges_an_fp16_executor_by_the_fp16_rule(fp16_plan, monkeypatch):
    out, plan = fp16_plan
    validator = get_engine("onnxruntime", threads=2).load(task_dir(out, plan.tasks[0]))
    judge_last = get_engine("onnxruntime", threads=2).load(task_dir(out, plan.tasks[-1]))
    monkeypatch.setattr(ort_engine, "ort_device_arithmetic", lambda providers: "fp16")
    executor = get_engine("onnxruntime", threads=1).load(task_dir(out, plan.tasks[0]))
    outs, _ = run_stateful(executor, {"input_ids": PROMPT}, None)
    held = set(executor.task.state.values())
    t = Transcript("job", 0, executor.task.task_id, arithmetic=executor.arithmetic)
    t.add({"input_ids": PROMPT}, {k: v for k, v in outs.items() if k not in held})
    t = Transcript.from_bytes(t.to_bytes())
    assert t.arithmetic == "fp16"
    assert judge(t, replay(validator, t), task=validator.task, arithmetic=validator.arithmetic).match
    # the token-choosing task: its layers judged by the fp16 rule, its logits by float32's from the head
    # run on the executor's own hidden state (which its fp16 layers made)
    half = [get_engine("onnxruntime", threads=1).load(task_dir(out, task)) for task in plan.tasks]
    env = _run(half[:-1], {"input_ids": PROMPT})
    last = half[-1]
    feeds = {s.name: env[s.name] for s in last.task.inputs if s.name in env and s.name not in last.task.state}
    outs, _ = run_stateful(last, feeds, None)
    held = set(last.task.state.values())
    t = Transcript("job", last.task.index, last.task.task_id, arithmetic=last.arithmetic)
    t.add(feeds, {k: v for k, v in outs.items() if k not in held})
    assert t.arithmetic == "fp16" and judge_last.arithmetic == "fp32"
    assert judge(t, replay(judge_last, t), task=last.task, arithmetic=judge_last.arithmetic).match
