"""Small MLP and CNN models: quick to build and run, used by tests and examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from splitup.graph.builder import TensorContext
from splitup.graph.zoo.common import ParamSource


@dataclass(frozen=True)
class MLPConfig:
    sizes: Sequence[int] = field(default_factory=lambda: (64, 256, 256, 256, 256, 10))
    max_batch: int = 64


@dataclass(frozen=True)
class CNNConfig:
    channels: Sequence[int] = field(default_factory=lambda: (3, 16, 32, 64))
    image: int = 32
    classes: int = 10
    max_batch: int = 16


def build_mlp(cfg: MLPConfig, params: ParamSource | None = None, *, dtype: str = "float32",
              name: str = "mlp", validate: bool = True) -> onnx.ModelProto:
    p = params or ParamSource(std=0.1)
    ctx = TensorContext(name)
    ctx.declare_dim("batch", cfg.max_batch)
    x = ctx.add_graph_input("x", ("batch", cfg.sizes[0]), dtype)
    last = len(cfg.sizes) - 2
    for i, (din, dout) in enumerate(zip(cfg.sizes[:-1], cfg.sizes[1:], strict=True)):
        with ctx.scope(f"layers.{i}"):
            x = x.linear(p(ctx, "weight", (din, dout), dtype), p(ctx, "bias", (dout,), dtype, "zeros"))
            if i < last:
                x = x.relu()
    p.check_all_used()
    return ctx.compile_to_graph({"y": x}, validate=validate)


def build_cnn(cfg: CNNConfig, params: ParamSource | None = None, *, dtype: str = "float32",
              name: str = "cnn", validate: bool = True) -> onnx.ModelProto:
    p = params or ParamSource(std=0.1)
    ctx = TensorContext(name)
    ctx.declare_dim("batch", cfg.max_batch)
    x = ctx.add_graph_input("image", ("batch", cfg.channels[0], cfg.image, cfg.image), dtype)
    for i, (cin, cout) in enumerate(zip(cfg.channels[:-1], cfg.channels[1:], strict=True)):
        with ctx.scope(f"layers.{i}"):
            x = x.conv2d(p(ctx, "weight", (cout, cin, 3, 3), dtype), p(ctx, "bias", (cout,), dtype, "zeros"),
                         padding=1).relu().max_pool2d(2)
    with ctx.scope("head"):
        x = x.global_avg_pool().flatten(1)
        c = cfg.channels[-1]
        x = x.linear(p(ctx, "weight", (c, cfg.classes), dtype), p(ctx, "bias", (cfg.classes,), dtype, "zeros"))
    p.check_all_used()
    return ctx.compile_to_graph({"logits": x}, validate=validate)
