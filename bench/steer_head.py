"""How far the executor of a token task with a float32 head can steer the token the user reads.

A token task with a float32 head (docs/posp.md, "Precision of the token-choosing task") commits the
half-precision hidden state its head reads; a validator judges that state under the fp16 rule and the
logits under float32's against the head run on it. The executor may therefore move the state anywhere
the fp16 rule admits and let the head honestly emit what follows. This bench builds that attack on
SmolLM2-135M (real weights, fp16, 3 tasks) during greedy generation: at every step it spends the fp16
rule's whole budget (relative L2, and every element inside its own bound) along the direction that lifts
the runner-up over the top token, and counts the steps where the token flips and the forged state still
passes the rule against the honest one (what an fp32 validator recomputes). The plan is written with
``token_fp32="head"``; with ``task`` (what ``auto`` picks where it costs no task) the whole token task is
judged in float32 from the previous task's committed state, and the executor has no such room
(bench/redteam.py measures what is caught there).

    python bench/steer_head.py [--prompts 4] [--tokens 48]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from splitup.decoding import scale  # noqa: E402
from splitup.models.real import build_real, load_real_model  # noqa: E402
from splitup.partition import analyze, budget_for_tasks  # noqa: E402
from splitup.partition.plan import make_plan  # noqa: E402
from splitup.partition.task import task_dir  # noqa: E402
from splitup.runtime import get_engine, run_stateful  # noqa: E402
from splitup.verify.compare import TOLERANCES, Tolerance, compare_tensor  # noqa: E402

PROMPTS = ["The three primary colors are", "Write a haiku about the sea.", "What is the capital of France?",
           "List three uses of a brick.", "Explain photosynthesis in one sentence.", "Name a prime number."]


def head_matrix(head, name: str, width: int, rows: int = 64) -> np.ndarray:  # noqa: ANN001 - Runner
    """The head's matrix, probed row by row with the unit vectors (the head of a LLaMA is linear)."""
    eye = np.eye(width, dtype=np.float16)
    parts = [head.run({name: eye[i:i + rows][None]})["logits"][0] for i in range(0, width, rows)]
    return np.concatenate(parts).astype(np.float64)


def steer(h: np.ndarray, w: np.ndarray, top: int, runner_up: int, tol: Tolerance, margin: float = 0.98) -> np.ndarray:
    """``h`` moved as far as ``tol`` admits along the direction lifting ``runner_up`` over ``top``."""
    x = h.astype(np.float64)
    d = w[:, runner_up] - w[:, top]
    rms = float(np.sqrt(np.mean(np.square(x))))
    bound = margin * (tol.atol + tol.scale_tol * rms + tol.rtol * np.abs(x))  # each element inside its own
    budget = margin * tol.max_rel_l2 * float(np.linalg.norm(x))  # and the whole within the relative L2
    # greedy fill: the elements that lift most per unit of L2 first, each up to its own bound
    order = np.argsort(-np.abs(d))
    delta = np.zeros_like(x)
    left = budget ** 2
    for i in order:
        step = min(bound[i], np.sqrt(left))
        delta[i] = np.sign(d[i]) * step
        left -= step ** 2
        if left <= 0:
            break
    return (x + delta).astype(np.float16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="splitup-steer-"))
    try:
        real = load_real_model("smollm2-135m", max_seq=8)
        model = build_real("smollm2-135m", dtype="fp16", max_seq=64, context=256)
        plan = make_plan(model, "smollm2-135m", budget_for_tasks(analyze(model), 3), workspace_bytes=0,
                         out_dir=work / "plan", token_fp32="head").plan
        last = plan.tasks[-1]
        if last.head is None:
            raise SystemExit("the plan's token task has no float32 head: nothing to steer")
        engine = get_engine("onnxruntime", threads=1)
        runners = [engine.load(task_dir(work / "plan", t)) for t in plan.tasks]
        w = head_matrix(runners[-1].head(), last.head, next(s for s in last.outputs if s.name == last.head).shape[-1])
        tol = TOLERANCES["fp16"]
        steps = flips = 0
        gaps: list[float] = []
        for prompt in PROMPTS[: args.prompts]:
            ids = real.encode(prompt)
            state: list[dict | None] = [None] * len(runners)
            feed = np.asarray([ids], np.int64)
            for _ in range(args.tokens):
                env: dict[str, np.ndarray] = {"input_ids": feed}
                for k, r in enumerate(runners):
                    given = {s.name: env[s.name] for s in r.task.inputs if s.name in env and s.name not in r.task.state}
                    out, state[k] = run_stateful(r, given, state[k])
                    env.update(out)
                h, logits = env[last.head][0, -1], env["logits"][0, -1].astype(np.float64)
                top, runner_up = np.argsort(-logits)[:2]
                forged = steer(h, w, int(top), int(runner_up), tol)
                moved = forged.astype(np.float64) @ w
                passes = compare_tensor(last.head, forged[None, None], h[None, None], tol).match
                steps += 1
                if passes and moved[runner_up] > moved[top]:
                    flips += 1
                    gaps.append(float((logits[top] - logits[runner_up]) / scale(logits)))
                feed = np.asarray([[int(top)]], np.int64)
        lift = [] if not gaps else sorted(gaps)
        print(f"SmolLM2-135M fp16, 3 tasks, {args.prompts} prompts x {args.tokens} greedy tokens, load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"steps where a forged head input passes the fp16 rule and flips the token: {flips} / {steps} "
              f"({100 * flips / max(1, steps):.1f} %)")
        if lift:
            print(f"their top-2 gaps, in units of the row's scale: median {np.median(lift):.2e}, largest {lift[-1]:.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
