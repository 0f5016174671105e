"""Red-team the comparison rule on a model's own tasks: every honest engine and precision against each
other, every cheat against every honest validator, and planted near-tie flips.

    .venv/bin/python bench/redteam.py [--model tiny-llama|smollm2-135m] [--prompts 6] [--tokens 16]
                                      [--precisions fp32,fp16,bf16,int8,int4] [--full] [--reference] [--tinygrad]

Honest engines per precision class are ``splitup.verify.precision.HONEST`` (emulated fp16/bf16/TF32
arithmetic on onnxruntime) with onnxruntime's optimisation levels and thread counts (``--full``: all of
them for float32 as well), and ``--reference`` adds onnx.reference (float32 class; slow on real models).
``--tinygrad`` adds tinygrad's ONNX runner to the float32-arithmetic classes (its CPU backend needs a
clang; it compiles kernels per shape, so it is slow, and left out of CI).
Prints the calibration table (honest maximum beside each cheat's minimum, per class), the red-team
table (per task and cheat: calls changed, calls that matter, detection) and the near-tie table: per
class, how often its honest engines emit different tokens, how often the rule leaves a choice, and
planted near-tie flips and steers caught beside the most any sound rule could catch (the share of them
whose token no honest engine of the class emits itself). Exit status 1 on any honest failure, or a
detection below 99 % except where that bound itself is below 99 %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from splitup.partition import analyze, budget_for_tasks
from splitup.partition.plan import make_plan
from splitup.verify import redteam as rt
from splitup.verify.compare import PRECISION_CLASSES, tolerance_for
from splitup.verify.sandbox import write_plan

NEAR_TIE = {"top-token flip at near-ties", "top-token steer at near-ties"}
FP32_ARITHMETIC = {"fp32", "int8", "int4"}  # classes whose honest engines compute in float32


def build_plan(model: str, out: Path) -> int:
    """Write a 3-task plan; returns the vocabulary size."""
    if model == "tiny-llama":
        write_plan(out)
        return 512
    from splitup.models.real import load_real_model

    real = load_real_model(model, max_seq=64)
    make_plan(real.model, model, budget_for_tasks(analyze(real.model), 3), workspace_bytes=0, out_dir=out)
    return real.config.vocab_size


def honest_rows(calib: Table, precision: str, where: str, pairs: dict) -> int:
    """One calibration row for the worst of a class's honest pairs; returns their failures."""
    worst = rt.Honest()
    for h in pairs.values():
        worst.calls += h.calls
        worst.failures += h.failures
        worst.rel_l2, worst.bad_fraction = max(worst.rel_l2, h.rel_l2), max(worst.bad_fraction, h.bad_fraction)
        worst.logit_gap = max(worst.logit_gap, h.logit_gap)
    engines = sorted({e for pair in pairs for e in pair})
    calib.add_row(precision, f"honest, {len(pairs)} pairs {where}of {', '.join(engines)}", str(worst.calls),
                  f"{worst.rel_l2:.3g}", f"{worst.bad_fraction:.3g}", f"{worst.logit_gap:.3g}", str(worst.failures))
    return worst.failures


def near_ties(models: list, precision: str, runs: dict, engines: list, seeds: int, team: Table,
              ties: Table) -> tuple[int, bool]:
    """Planted near-tie flips and steers, and how often the honest engines differ on the emitted tokens,
    at the task that chooses tokens (float32 in every plan): the coarsest engine's rows against the others'
    re-execution of that task from its committed inputs. Returns the failures and whether 99 % is within
    what a sound rule can catch."""
    slack = tolerance_for(rt.task_class(precision, models[-1][0])).token_slack
    # the executor: the class's coarsest engine (its hidden states as committed), the others validate
    *validators, executor = engines
    first = runs[executor.name]
    rows = [rt.logit_rows(first), *rt.replayed_rows(models, precision, first, validators)]
    emitted = [[r for seq in first.final_rows() for r in seq],
               *rt.replayed_rows(models, precision, first, validators, emitted=True)]
    planted: dict[str, rt.PlantedStats] = {}
    failures = 0
    for kind in ("flip", "steer"):
        p = planted[kind] = rt.PlantedStats()
        for seed in range(seeds):  # each seed plants a fresh gap in every row
            p.add(rt.planted_near_ties(rows[0], rows[-1], slack, kind, np.random.default_rng(seed), rows[1:-1]))
        ok = p.honest_failures == 0 and (p.detection >= 0.99 or p.bound < 0.99)
        failures += not ok
        team.add_row(precision, "last", f"planted near-tie {kind} ({p.rows} rows, honest failed "
                     f"{p.honest_failures})", str(p.matter), str(p.matter),
                     f"{p.caught}/{p.matter} ({p.detection:.1%})" + ("" if ok else " !"), "", "")
    amb = rt.ambiguity({e.name: r for e, r in zip([executor, *validators], emitted, strict=True)}, slack)
    ties.add_row(precision, str(len(runs)), str(amb.rows), f"{amb.split_rate:.2%}", f"{amb.choice_rate:.2%}",
                 *(x for p in planted.values() for x in (f"{p.caught}/{p.matter} ({p.detection:.1%})",
                                                         f"{p.bound:.1%}")))
    return failures, min(p.bound for p in planted.values()) >= 0.99


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama", choices=["tiny-llama", "smollm2-135m"])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--precisions", default=",".join(PRECISION_CLASSES))
    ap.add_argument("--plant-seeds", type=int, default=3, help="planted near-ties per row of logits")
    ap.add_argument("--full", action="store_true", help="every onnxruntime setting for every arithmetic")
    ap.add_argument("--reference", action="store_true", help="onnx.reference as a float32-arithmetic engine")
    ap.add_argument("--near-ties-only", action="store_true", help="only the near-tie table (e.g. on SmolLM2)")
    ap.add_argument("--tinygrad", action="store_true", help="tinygrad's ONNX runner as a float32-arithmetic engine")
    args = ap.parse_args(argv)
    console = Console(width=160)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        vocab = build_plan(args.model, Path(tmp))
        models = rt.load_plan_models(Path(tmp))
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, vocab, args.prompt_len)) for _ in range(args.prompts)]
    sequences = rt.greedy_sequences([rt.ModelRunner(t, m) for t, m in models], prompts, args.tokens)
    calls = sum(len(s) for s in sequences)
    console.print(f"{args.model}: {len(models)} tasks, {args.prompts} prompts x (prefill of {args.prompt_len} + "
                  f"{args.tokens} tokens) = {calls} calls per task")
    calib = Table(title="Calibration: honest maximum beside each cheat's minimum (relative L2 of the task's outputs)")
    for col in ("precision", "who", "calls", "rel L2", "frac out of tol", "logit gap / range", "failed"):
        calib.add_column(col, justify="left" if col in ("precision", "who") else "right")
    team = Table(title="Red team: calls the cheat changed, calls where it changed the text (TV >= 0.01 or "
                       "greedy token), caught by every honest validator")
    for col in ("precision", "task", "cheat", "changed", "matter", "caught / matter", "caught / changed",
                "min rel L2"):
        team.add_column(col, justify="left" if col in ("precision", "cheat") else "right")
    ties = Table(title="Near-ties: emitted tokens on which the class's honest engines differ, on which the rule "
                       "leaves a choice; planted flips / steers caught, and the most a sound rule could catch")
    for col in ("precision", "engines", "emitted rows", "honest engines differ", "rule leaves a choice",
                "flips caught", "flip bound", "steers caught", "steer bound"):
        ties.add_column(col, justify="left" if col == "precision" else "right")
    failures = 0
    for precision in args.precisions.split(","):
        tol = tolerance_for(precision)
        extra = {"reference": args.reference and precision in FP32_ARITHMETIC,
                 "tinygrad": args.tinygrad and precision in FP32_ARITHMETIC}
        runs = rt.honest_runs(models, precision, sequences, full=args.full, **extra)
        engines = rt.class_engines(precision, full=args.full, **extra)
        fails, reachable = near_ties(models, precision, runs, engines, args.plant_seeds, team, ties)
        failures += fails
        if args.near_ties_only:
            console.print(f"[dim]{precision} done, {time.perf_counter() - start:.0f} s[/dim]")
            continue
        pairs = rt.honest_pairs(models, precision, sequences, full=args.full, runs=runs, **extra)
        failures += honest_rows(calib, precision, "", pairs)
        calib.add_row("", "limit", "", f"{tol.max_rel_l2:g}", f"{tol.max_bad_fraction:g}", f"{tol.token_slack:g}", "")
        stats = rt.red_team(models, precision, sequences)
        mildest: dict[str, float] = {}
        for (k, name), s in stats.items():
            kind = name.split(" (")[0]
            mildest[kind] = min(mildest.get(kind, float("inf")), s.min_rel_l2)
            ok = s.detection >= 0.99 or (name in NEAR_TIE and not reachable)
            failures += not ok
            team.add_row(precision, str(k), name, str(s.calls), str(s.matter),
                         f"{s.caught_matter}/{s.matter} ({s.detection:.1%})" + ("" if ok else " !"),
                         f"{s.caught}/{s.calls}", f"{s.min_rel_l2:.3g}")
        for kind, v in mildest.items():
            if np.isfinite(v):
                calib.add_row("", f"cheat: {kind}", "", f"{v:.3g}", "", "", "")
        if precision in ("int8", "int4") and args.model == "tiny-llama":
            # The task as a quantised bundle stores it (DequantizeLinear; onnxruntime fuses MatMulNBits)
            with tempfile.TemporaryDirectory() as tmp:
                write_plan(Path(tmp), dtype=precision)
                bundle = rt.load_plan_models(Path(tmp))
            failures += honest_rows(calib, "", "on the quantised bundle ",
                                    rt.honest_pairs(bundle, precision, sequences, full=args.full, **extra))
        console.print(f"[dim]{precision} done, {time.perf_counter() - start:.0f} s[/dim]")
    console.print(calib)
    console.print(team)
    console.print(ties)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    console.print(f"{time.perf_counter() - start:.0f} s, load average {' '.join(load)}; "
                  f"{'all honest runs passed and every cheat was caught as required' if not failures else f'{failures} failures'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
