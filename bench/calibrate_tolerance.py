"""Measure honest engine-to-engine differences and cheat distances, against the comparison rule.

    .venv/bin/python bench/calibrate_tolerance.py [--seeds 20] [--tinygrad]

For each model configuration and seed, every honest engine (onnxruntime at two optimisation levels and
two thread counts, onnx.reference in float32, float64 accumulation, optionally tinygrad) runs the same
input; each output is compared with the float64 result and with onnxruntime's default. The table shows
the worst honest difference seen and the *mildest* cheat seen, i.e. the margins on both sides of the
default tolerance. Markdown output, pasted into docs/posp.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field

import numpy as np
import onnx

from splitup.verify import calib_models as cm
from splitup.verify.compare import DEFAULT_TOLERANCE, compare_outputs
from splitup.verify.engines import honest_engines, run_onnxruntime


@dataclass
class Worst:
    max_abs: float = 0.0
    rel_l2: float = 0.0
    bad_fraction: float = 0.0
    failures: int = 0
    runs: int = 0

    def add_honest(self, t, match: bool) -> None:
        self.max_abs = max(self.max_abs, t.max_abs_diff)
        self.rel_l2 = max(self.rel_l2, t.rel_l2)
        self.bad_fraction = max(self.bad_fraction, t.bad_fraction)
        self.failures += not match
        self.runs += 1


@dataclass
class Mildest:
    rel_l2: float = float("inf")
    bad_fraction: float = float("inf")
    passed: int = 0
    runs: int = 0
    names: set[str] = field(default_factory=set)

    def add_cheat(self, t, match: bool) -> None:
        self.rel_l2 = min(self.rel_l2, t.rel_l2)
        self.bad_fraction = min(self.bad_fraction, t.bad_fraction)
        self.passed += match
        self.runs += 1


def configs() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for hidden, layers in ((64, 2), (256, 4), (512, 8)):
        out.append((f"mlp h={hidden} L={layers}", {"kind": "mlp", "hidden": hidden, "layers": layers}))
    for seq, d_model in ((16, 64), (64, 128)):
        out.append((f"attention T={seq} d={d_model}", {"kind": "attn", "seq": seq, "d_model": d_model}))
    return out


def build(cfg: dict, seed: int, **cheat) -> onnx.ModelProto:
    if cfg["kind"] == "mlp":
        return cm.mlp(seed, hidden=cfg["hidden"], layers=cfg["layers"], **cheat)
    return cm.attention_block(seed, seq=cfg["seq"], d_model=cfg["d_model"], d_ff=2 * cfg["d_model"], **cheat)


def feed_shape(model: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def cheats(cfg: dict, model: onnx.ModelProto, seed: int, x: np.ndarray, honest: dict) -> dict[str, dict]:
    rng = np.random.default_rng(seed + 10_000)
    (name, y), = honest.items()
    scale = float(np.sqrt(np.mean(np.square(y))))
    skip = {"skip_layer": 1} if cfg["kind"] == "mlp" else {"skip": "ffn"}
    other = rng.standard_normal(x.shape).astype(np.float32)
    return {
        "layer skipped": run_onnxruntime(build(cfg, seed, **skip), {"x": x}),
        "int8 weights": run_onnxruntime(cm.quantize_int8(model), {"x": x}),
        "noise of output scale": {name: (scale * rng.standard_normal(y.shape)).astype(np.float32)},
        "zeros": {name: np.zeros_like(y)},
        "stale (other input)": run_onnxruntime(model, {"x": other}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--tinygrad", action="store_true", help="add tinygrad's ONNX runner (slow: compiles)")
    args = ap.parse_args(argv)
    engines = honest_engines(with_tinygrad=args.tinygrad)
    if args.tinygrad and "tinygrad" not in engines:
        print("tinygrad is not usable here; running without it", file=sys.stderr)
    tol = DEFAULT_TOLERANCE
    print(f"tolerance: {tol}\n")
    print("| model | honest engine pair | runs | max abs diff | max rel L2 | max frac out of tol | failed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    cheat_rows: dict[tuple[str, str], Mildest] = {}
    total_honest_failures = 0
    for label, cfg in configs():
        worst: dict[str, Worst] = {}
        seeds = args.seeds if not (args.tinygrad and "tinygrad" in engines) else min(args.seeds, 3)
        for seed in range(seeds):
            model = build(cfg, seed)
            x = np.random.default_rng(seed).standard_normal(feed_shape(model)).astype(np.float32)
            # Inputs of larger magnitude too: the rule's tolerances must be scale-free.
            if seed % 2:
                x *= 10
            outs = {name: run(model, {"x": x}) for name, run in engines.items()}
            logits = [n for n in outs["ort-all-t1"] if n == "logits"]
            for a, b in itertools.permutations(outs, 2):
                v = compare_outputs(outs[a], outs[b], tol, logits=logits)
                key = f"{a} vs {b}" if b in ("onnx-reference-f64", "ort-all-t1") else "any pair"
                for k in {key, "any pair"}:
                    worst.setdefault(k, Worst()).add_honest(v.tensors[0], v.match)
            for cname, cout in cheats(cfg, model, seed, x, outs["ort-all-t1"]).items():
                v = compare_outputs(cout, outs["onnx-reference-f64"], tol, logits=logits)
                cheat_rows.setdefault((label, cname), Mildest()).add_cheat(v.tensors[0], v.match)
        for key in sorted(worst, key=lambda k: (k == "any pair", k)):
            if key != "any pair" and not key.endswith("onnx-reference-f64"):
                continue
            w = worst[key]
            total_honest_failures += w.failures if key == "any pair" else 0
            print(f"| {label} | {key} | {w.runs} | {w.max_abs:.3g} | {w.rel_l2:.3g} | {w.bad_fraction:.3g} "
                  f"| {w.failures} |")
    print("\n| model | cheat | runs | min rel L2 | min frac out of tol | passed (must be 0) |")
    print("|---|---|---:|---:|---:|---:|")
    total_cheat_passes = 0
    for (label, cname), m in cheat_rows.items():
        total_cheat_passes += m.passed
        print(f"| {label} | {cname} | {m.runs} | {m.rel_l2:.3g} | {m.bad_fraction:.3g} | {m.passed} |")
    print(f"\nhonest failures: {total_honest_failures}, cheats accepted: {total_cheat_passes}")
    return 1 if total_honest_failures or total_cheat_passes else 0


if __name__ == "__main__":
    sys.exit(main())
