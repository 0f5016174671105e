"""Red-team of the comparison rule on a plan's own tasks: honest engines against each other, and cheats
built from the task graphs, each judged call by call as a validator would.

For every precision a task may state, the plan's tasks run on every honest engine of that class
(``precision.HONEST`` x onnxruntime settings, onnx.reference for float32); every ordered pair is an
(executor, validator) pair and must agree on every call. Then each cheat replaces one task's work:

* ``layer skipped``: a decoder layer of the task graph bypassed (its residual stream passed through);
* weights / arithmetic below the stated precision (``precision.BELOW``);
* ``attention window``: every attention in the task sees only the last ``window`` keys (its causal
  mask ``key <= query`` narrowed to ``query - window < key``);
* ``another input's outputs``: the outputs this task gave another prompt at the same call;
* ``top-token flip`` / ``steer`` (the task emitting logits): at a near-tie the old rule excused
  (gap within ``atol + 1e-3 rms + 1e-3 |max|``) the top two logits swapped, or the runner-up lifted
  just above the winner.

A call *matters* when the cheat moves the final next-token distribution by total variation >= 0.01
or changes the canonical greedy token (both measured against the honest run through the rest of the
pipeline). ``bench/redteam.py`` prints the full table; ``tests/verify/test_redteam.py`` runs a short form.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from splitup.decoding import GREEDY, Decoding, admissible, choose
from splitup.partition.task import GRAPH_FILE, Plan, TaskDefinition, task_dir
from splitup.runtime import Runner, run_stateful
from splitup.verify.compare import FLOAT32_CLASSES, Tolerance, chooses_tokens, compare_outputs, tolerance_for
from splitup.verify.engines import ort_session, tinygrad_session
from splitup.verify.precision import BELOW, HONEST, emulate, stated_weights
from splitup.verify.replay import LOGITS, call_positions

TV_MATTERS = 0.01
Feeds = dict[str, np.ndarray]
#: (sequence, call, feeds, honest outputs) -> reported outputs
OutputCheat = Callable[[int, int, Mapping[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]]


class ModelRunner(Runner):
    """A task graph held in memory (emulated or cheating) behind the engine interface."""

    def __init__(self, task: TaskDefinition, model: onnx.ModelProto, engine: str = "ort", *, level: str = "all",
                 threads: int = 1) -> None:
        super().__init__(task, engine if engine != "ort" else f"ort-{level}-t{threads}", "cpu")
        self._names = [o.name for o in model.graph.output]
        if engine == "reference":
            from onnx.reference import ReferenceEvaluator

            ev = ReferenceEvaluator(model)
            self._run = lambda feeds: ev.run(None, dict(feeds))
            return
        if engine == "tinygrad":
            tg = tinygrad_session(model)

            def run_tinygrad(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
                out = tg(feeds)
                return [out[n] for n in self._names]

            self._run = run_tinygrad
            return
        sess = ort_session(model, level=level, threads=threads)
        self._run = lambda feeds: sess.run(self._names, dict(feeds))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = dict(zip(self._names, self._run(feeds), strict=True))
        return {s.name: np.asarray(got[s.name], dtype=s.dtype) for s in self.task.outputs}


def load_plan_models(plan_dir: Path) -> list[tuple[TaskDefinition, onnx.ModelProto]]:
    plan = Plan.load(plan_dir)
    return [(t, onnx.load(str(task_dir(plan_dir, t) / GRAPH_FILE))) for t in plan.tasks]


# --- cheats built from the task graph -------------------------------------------------------------------

def whole_layers(model: onnx.ModelProto) -> list[str]:
    """Decoder layers (``layers.N`` name prefixes) whose residual stream enters and leaves in this graph."""
    return [p for p in _layer_prefixes(model) if _layer_bypass(model, p) is not None]


def skip_layer(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """The layer's last residual Add replaced by the stream that entered the layer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = _layer_bypass(out, prefix)
    if found is None:
        raise ValueError(f"{prefix} is not a whole layer of this graph")
    node, stream = found
    node.op_type = "Identity"
    node.input[:] = [stream]
    return out


def _layer_prefixes(model: onnx.ModelProto) -> list[str]:
    seen: dict[str, None] = {}
    for n in model.graph.node:
        parts = n.name.split(".")
        if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit():
            seen.setdefault(f"layers.{parts[1]}.", None)
    return list(seen)


def _layer_bypass(model: onnx.ModelProto, prefix: str) -> tuple[onnx.NodeProto, str] | None:
    producer = {o: n for n in model.graph.node for o in n.output}
    adds = [n for n in model.graph.node if n.name.startswith(prefix) and n.op_type == "Add"
            and ".mlp." in n.name]
    if not adds:
        return None
    last = adds[-1]
    for inp in last.input:
        mid = producer.get(inp)
        if mid is None or mid.op_type != "Add" or not mid.name.startswith(prefix):
            continue
        for x in mid.input:
            src = producer.get(x)
            if src is None or not src.name.startswith(prefix):
                # the post-attention stream h = x + attn(x), and x came from outside the layer
                attn_side = [i for i in mid.input if i != x]
                if attn_side and producer.get(attn_side[0]) is not None:
                    return last, x
    return None


def truncate_attention(model: onnx.ModelProto, window: int) -> onnx.ModelProto:
    """Every causal mask (``key position <= query position``) narrowed to the last ``window`` keys."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.initializer.append(numpy_helper.from_array(np.array(window, np.int64), "__window"))
    nodes: list[onnx.NodeProto] = []
    renames: dict[str, str] = {}
    for n in g.node:
        n.input[:] = [renames.get(i, i) for i in n.input]
        nodes.append(n)
        if n.op_type == "LessOrEqual" and ".attn." in n.name:
            keys, queries = n.input
            far, near, cut = (f"{n.output[0]}__{x}" for x in ("far", "near", "window"))
            nodes += [helper.make_node("Sub", [queries, "__window"], [far]),
                      helper.make_node("Greater", [keys, far], [near]),
                      helper.make_node("And", [n.output[0], near], [cut])]
            renames[n.output[0]] = cut
    if not renames:
        raise ValueError("no causal mask to narrow in this graph")
    del g.node[:]
    g.node.extend(nodes)
    return out


def old_tie_slack(row: np.ndarray, rms: float) -> float:
    """The near-tie slack of the rule before canonical tokens: what a flip could hide in."""
    return 1e-6 + 1e-3 * rms + 1e-3 * float(np.abs(row).max())


def near_tie_cheat(kind: str) -> OutputCheat:
    """``flip``: swap the top two logits of the last row where their gap is inside the old slack;
    ``steer``: lift the runner-up just above the winner there. Elsewhere the honest outputs."""

    def cheat(seq: int, call: int, feeds: Mapping[str, np.ndarray], outs: dict[str, np.ndarray]) -> dict:
        logits = outs[LOGITS].copy()
        row = logits.reshape(-1, logits.shape[-1])[-1]
        rms = float(np.sqrt(np.mean(np.square(logits, dtype=np.float64))))
        a, b = np.argsort(-row.astype(np.float64), kind="stable")[:2]
        gap, slack = float(row[a] - row[b]), old_tie_slack(row, rms)
        if gap > slack:
            return outs
        if kind == "flip":
            row[a], row[b] = row[b], row[a]
        else:
            row[b] = row[a] + (slack - gap) / 2
        return {**outs, LOGITS: logits}

    return cheat


# --- running a plan ---------------------------------------------------------------------------------------

@dataclass
class Run:
    """Per sequence, per call, per task: the inputs the task received and the boundary outputs it gave."""

    inputs: list[list[list[Feeds]]]
    outputs: list[list[list[Feeds]]]

    def final_rows(self) -> list[list[np.ndarray]]:
        return [[call[-1][LOGITS].reshape(-1, call[-1][LOGITS].shape[-1])[-1] for call in seq]
                for seq in self.outputs]


def run_plan(runners: Sequence[Runner], sequences: Sequence[Sequence[Feeds]],
             cheats: Mapping[int, OutputCheat] | None = None, upstream: Run | None = None,
             start: int = 0) -> Run:
    """Every sequence through the tasks, fresh KV caches per sequence; ``cheats[k]`` rewrites task k's
    outputs. With ``upstream`` the tasks before ``start`` are not run: their recorded outputs are used."""
    cheats = cheats or {}
    ins: list[list[list[Feeds]]] = []
    outs: list[list[list[Feeds]]] = []
    for s, calls in enumerate(sequences):
        states: list[dict[str, np.ndarray]] = [{} for _ in runners]
        ins.append([])
        outs.append([])
        for c, feeds in enumerate(calls):
            env: Feeds = dict(feeds)
            call_in, call_out = [], []
            for k, runner in enumerate(runners):
                task = runner.task
                if upstream is not None and k < start:
                    call_in.append(upstream.inputs[s][c][k])
                    call_out.append(upstream.outputs[s][c][k])
                    env.update(upstream.outputs[s][c][k])
                    continue
                given = {n.name: env[n.name] for n in task.inputs if n.name in env and n.name not in task.state}
                result, states[k] = run_stateful(runner, given, states[k])
                held = set(task.state.values())
                boundary = {n: v for n, v in result.items() if n not in held}
                if k in cheats:
                    boundary = cheats[k](s, c, given, boundary)
                call_in.append(given)
                call_out.append(boundary)
                env.update(boundary)
            ins[-1].append(call_in)
            outs[-1].append(call_out)
    return Run(ins, outs)


def replay_task(runner: Runner, run: Run, k: int) -> list[list[Feeds]]:
    """What a validator's engine gives for task k on the inputs recorded in ``run``, call by call."""
    held = set(runner.task.state.values())
    out: list[list[Feeds]] = []
    for seq in run.inputs:
        state: dict[str, np.ndarray] = {}
        out.append([])
        for call in seq:
            result, state = run_stateful(runner, call[k], state)
            out[-1].append({n: v for n, v in result.items() if n not in held})
    return out


def greedy_sequences(runners: Sequence[Runner], prompts: Sequence[Sequence[int]], new_tokens: int,
                     decoding: Decoding = GREEDY) -> list[list[Feeds]]:
    """The calls of generating ``new_tokens`` after each prompt (prefill, then one token per call)."""
    seqs = []
    for prompt in prompts:
        calls: list[Feeds] = [{"input_ids": np.asarray([prompt], np.int64)}]
        for n in range(new_tokens):
            row = run_plan(runners, [calls]).final_rows()[0][-1]
            calls.append({"input_ids": np.asarray([[choose(row, decoding, len(prompt) + n)]], np.int64)})
        seqs.append(calls)
    return seqs


# --- the red-team --------------------------------------------------------------------------------------

@dataclass
class Honest:
    """Worst agreement seen between two honest engines of one precision class."""

    calls: int = 0
    failures: int = 0
    rel_l2: float = 0.0
    bad_fraction: float = 0.0
    # max over tokens of |(a_i - max a) - (b_i - max b)| / scale(b): what token_slack must cover
    logit_gap: float = 0.0
    reasons: list[str] = field(default_factory=list)


@dataclass
class CheatStats:
    calls: int = 0  # calls the cheat changed the outputs of
    matter: int = 0  # of those, calls whose final distribution moved by TV >= 0.01 or greedy token changed
    caught_matter: int = 0
    caught: int = 0
    min_rel_l2: float = float("inf")

    @property
    def detection(self) -> float:
        return self.caught_matter / self.matter if self.matter else 1.0


@dataclass
class Engine:
    name: str
    spec: dict
    kind: str = "ort"
    level: str = "all"
    threads: int = 1


def class_engines(precision: str, *, full: bool, reference: bool, tinygrad: bool = False) -> list[Engine]:
    """The honest engines of a class: each emulated arithmetic on onnxruntime, plus (float32) other
    onnxruntime settings, onnx.reference and tinygrad's ONNX runner (float32 arithmetic)."""
    engines = [Engine(f"{name}/ort-all-t1", spec) for name, spec in HONEST[precision].items()]
    settings = [("disable", 1), ("basic", 2), ("all", 2)] if full else [("disable", 1), ("all", 2)]
    lowest = list(HONEST[precision].items())[-1]
    # The short form varies the settings of the coarsest arithmetic only, the full one of float32 too.
    for name, spec in ({"fp32": {}, lowest[0]: lowest[1]} if full else dict([lowest])).items():
        engines += [Engine(f"{name}/ort-{lv}-t{th}", spec, "ort", lv, th) for lv, th in settings]
    if reference:
        engines.append(Engine("fp32/onnx.reference", {}, "reference"))
    if tinygrad:
        engines.insert(1, Engine("fp32/tinygrad", {}, "tinygrad"))
    return engines


def task_class(precision: str, task: TaskDefinition) -> str:
    """The class one task of a plan at ``precision`` is judged under: the task that chooses tokens computes
    its logits in float32 in every plan (docs/posp.md, "Precision of the token-choosing task"), the others
    at the plan's precision. Here the whole token task runs in float32 (the plans are float32 ones, their
    precision emulated): its logits come from a hidden state honest float32 engines agree on to ~1e-7, as
    a float32 head's come from the very bits its executor committed."""
    if precision not in FLOAT32_CLASSES and chooses_tokens([o.name for o in task.outputs]):
        return "fp32"
    return precision


def runners_for(models: Sequence[tuple[TaskDefinition, onnx.ModelProto]], e: Engine,
                replace: Mapping[int, onnx.ModelProto] | None = None, precision: str | None = None) -> list[Runner]:
    """The engine's runners for every task; with ``precision`` (the plan's), a task judged under a float32
    class while the plan's is half computes in float32 on this engine (no emulated rounding, no TF32)."""
    replace = replace or {}
    return [ModelRunner(t, replace.get(k, emulate(m, **_spec(e, precision, t))), e.kind, level=e.level,
                        threads=e.threads) for k, (t, m) in enumerate(models)]


def _spec(e: Engine, precision: str | None, task: TaskDefinition) -> dict:
    return {} if precision is not None and task_class(precision, task) != precision else e.spec


def judge_calls(task: TaskDefinition, asserted: Sequence[Sequence[Feeds]], reference: Sequence[Sequence[Feeds]],
                calls: Sequence[Sequence[Feeds]], tol: Tolerance, decoding: Decoding = GREEDY):
    """Per sequence and call: the comparison rule's verdict on the asserted outputs of one task."""
    for s, (seq_a, seq_b) in enumerate(zip(asserted, reference, strict=True)):
        pos = call_positions(task, calls[s])
        for c, (a, b) in enumerate(zip(seq_a, seq_b, strict=True)):
            yield s, c, compare_outputs(a, b, tol, logits=[LOGITS] if LOGITS in b else (), decoding=decoding,
                                        position=pos[c])


def honest_runs(models, precision: str, sequences, *, full: bool = False, reference: bool = False,
                tinygrad: bool = False) -> dict[str, Run]:
    """The plan run on every honest engine of the class (the task's stated weights), by engine name."""
    models = [(t, stated_weights(m, precision)) for t, m in models]
    return {e.name: run_plan(runners_for(models, e, precision=precision), sequences)
            for e in class_engines(precision, full=full, reference=reference, tinygrad=tinygrad)}


def honest_pairs(models, precision: str, sequences, *, full: bool = False, reference: bool = False,
                 tinygrad: bool = False, runs: Mapping[str, Run] | None = None) -> dict[tuple[str, str], Honest]:
    """Every ordered pair of the class's honest engines as (executor, validator), judged call by call
    (``runs``: ``honest_runs`` already made)."""
    engines = class_engines(precision, full=full, reference=reference, tinygrad=tinygrad)
    runs = runs or honest_runs(models, precision, sequences, full=full, reference=reference, tinygrad=tinygrad)
    models = [(t, stated_weights(m, precision)) for t, m in models]
    by_engine = {e.name: runners_for(models, e, precision=precision) for e in engines}
    out: dict[tuple[str, str], Honest] = {}
    for ex, va in itertools.permutations(engines, 2):
        h = out.setdefault((ex.name, va.name), Honest())
        run = runs[ex.name]
        for k, (task, _) in enumerate(models):
            mine = replay_task(by_engine[va.name][k], run, k)
            theirs = [[call[k] for call in seq] for seq in run.outputs]
            tol = tolerance_for(task_class(precision, task))
            for _s, _c, v in judge_calls(task, theirs, mine, sequences, tol):
                h.calls += 1
                h.failures += not v.match
                if not v.match and len(h.reasons) < 3:
                    h.reasons.append(f"task {k}: {v.reason}")
                for tv in v.tensors:
                    h.rel_l2 = max(h.rel_l2, tv.rel_l2)
                    h.bad_fraction = max(h.bad_fraction, tv.bad_fraction)
            if LOGITS in theirs[0][0]:
                for seq_a, seq_b in zip(theirs, mine, strict=True):
                    for a, b in zip(seq_a, seq_b, strict=True):
                        h.logit_gap = max(h.logit_gap, logit_gap(a[LOGITS], b[LOGITS]))
    return out


def logit_gap(asserted: np.ndarray, reference: np.ndarray) -> float:
    """Largest difference of logits taken relative to their row's maximum, over the reference's scale."""
    a = asserted.reshape(-1, asserted.shape[-1]).astype(np.float64)
    b = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    rel = np.abs((a - a.max(axis=1, keepdims=True)) - (b - b.max(axis=1, keepdims=True))).max(axis=1)
    return float((rel / np.maximum(1.0, b.max(axis=1) - b.min(axis=1))).max())


def tv_distance(a: np.ndarray, b: np.ndarray) -> float:
    pa = np.exp(a.astype(np.float64) - a.max())
    pb = np.exp(b.astype(np.float64) - b.max())
    return 0.5 * float(np.abs(pa / pa.sum() - pb / pb.sum()).sum())


def cheats_for(models, precision: str, task_index: int, sequences, base: Run,
               window: int) -> dict[str, tuple[dict[int, onnx.ModelProto], dict[int, OutputCheat]]]:
    """Name -> (replaced task graphs, output rewrites) of every cheat that applies to this task."""
    k = task_index
    task, model = models[k]
    out: dict[str, tuple[dict, dict]] = {}
    layers = whole_layers(model)
    if layers:
        out[f"layer skipped ({layers[0].rstrip('.')})"] = ({k: skip_layer(model, layers[0])}, {})
    for name, spec in BELOW[task_class(precision, task)].items():
        out[name] = ({k: emulate(model, **spec)}, {})
    try:
        out[f"attention window {window}"] = ({k: truncate_attention(model, window)}, {})
    except ValueError:
        pass
    n = len(sequences)
    out["another input's outputs"] = ({}, {k: lambda s, c, f, o: dict(base.outputs[(s + 1) % n][c][k])})
    if any(o.name == LOGITS for o in task.outputs):
        out["top-token flip at near-ties"] = ({}, {k: near_tie_cheat("flip")})
        out["top-token steer at near-ties"] = ({}, {k: near_tie_cheat("steer")})
    return out


def red_team(models, precision: str, sequences, *, window: int = 8,
             validators: Sequence[Engine] | None = None) -> dict[tuple[int, str], CheatStats]:
    """Each cheat on each task, against each validator engine (all honest engines of the class by
    default); a call counts as caught only if every validator flags it."""
    models = [(t, stated_weights(m, precision)) for t, m in models]
    base_engine = Engine("fp32/ort-all-t1", {})
    validators = list(validators or class_engines(precision, full=False, reference=False))
    base_runners = runners_for(models, base_engine)
    base = run_plan(base_runners, sequences)
    honest_final = base.final_rows()
    checkers = {e.name: runners_for(models, e, precision=precision) for e in validators}
    stats: dict[tuple[int, str], CheatStats] = {}
    for k, (task, _) in enumerate(models):
        tol = tolerance_for(task_class(precision, task))
        replays = {name: replay_task(rs[k], base, k) for name, rs in checkers.items()}
        for name, (graphs, rewrites) in cheats_for(models, precision, k, sequences, base, window).items():
            runners = list(base_runners)
            for j, g in graphs.items():
                runners[j] = ModelRunner(models[j][0], g)
            run = run_plan(runners, sequences, rewrites, upstream=base, start=k)
            final = run.final_rows()
            st = stats.setdefault((k, name), CheatStats())
            asserted = [[call[k] for call in seq] for seq in run.outputs]
            verdicts = [list(judge_calls(task, asserted, replays[v], sequences, tol)) for v in replays]
            for i, (s, c, _) in enumerate(verdicts[0]):
                honest_out = base.outputs[s][c][k]
                if all(np.array_equal(asserted[s][c][n], honest_out[n]) for n in honest_out):
                    continue
                st.calls += 1
                caught = all(not vs[i][2].match for vs in verdicts)
                st.caught += caught
                st.min_rel_l2 = min(st.min_rel_l2, max(t.rel_l2 for t in verdicts[0][i][2].tensors))
                h, x = honest_final[s][c], final[s][c]
                if tv_distance(h, x) >= TV_MATTERS or choose(h) != choose(x):
                    st.matter += 1
                    st.caught_matter += caught
    return stats


@dataclass
class PlantedStats:
    rows: int = 0
    honest_failures: int = 0
    matter: int = 0  # cheats that change the canonical token
    caught: int = 0
    # cheats whose token an honest engine of the class emits itself on that row: no rule that never fails
    # an honest engine can catch those (a cheater may simply hand in that engine's output)
    honest_token: int = 0

    @property
    def detection(self) -> float:
        return self.caught / self.matter if self.matter else 1.0

    @property
    def bound(self) -> float:
        """The most any sound rule can catch: the share of cheats no honest engine's token excuses."""
        return 1 - self.honest_token / self.matter if self.matter else 1.0

    def add(self, other: PlantedStats) -> None:
        for f in ("rows", "honest_failures", "matter", "caught", "honest_token"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


def planted_near_ties(asserted: Sequence[np.ndarray], reference: Sequence[np.ndarray], slack: float, kind: str,
                      rng: np.random.Generator, others: Sequence[Sequence[np.ndarray]] = ()) -> PlantedStats:
    """Near-ties planted in real rows of honest logits, then flipped or steered.

    Natural near-ties are rare (1.6 % of SmolLM2's tokens, almost none in a 512-token vocabulary), so
    for a detection rate with few percent of error each pair of honest rows (the executor's, the
    validator's) gets its runner-up moved to ``g`` below the maximum, ``g`` uniform over the old rule's
    tie slack, keeping the two engines' own difference at that token. The honest row must still pass;
    the cheat (swap the top two, or lift the runner-up above the winner by half the remaining slack)
    counts where it changes the canonical token. ``others``: the same rows from further honest engines
    of the class, planted alike, for ``honest_token`` (which the executor's and validator's tokens count
    towards as well).
    """
    st = PlantedStats()
    for r, (a_row, b_row) in enumerate(zip(asserted, reference, strict=True)):
        a, b = a_row.astype(np.float64).copy(), b_row.astype(np.float64).copy()
        i, j = np.argsort(-b, kind="stable")[:2]
        old = old_tie_slack(b, float(np.sqrt(np.mean(np.square(b)))))
        g = float(rng.uniform(0, old))
        rows = [a] + [o[r].astype(np.float64).copy() for o in others]
        for x in rows:  # each engine keeps its own difference from the validator at the runner-up
            x[j] = x.max() - g + (x[j] - x.max()) - (b[j] - b.max())
        b[j] = b.max() - g
        st.rows += 1
        honest = choose(a)
        st.honest_failures += not admissible(b, honest, slack)
        top = int(np.argmax(a))
        other = j if top != j else i
        cheat = a.copy()
        if kind == "flip":
            cheat[top], cheat[other] = a[other], a[top]
        else:
            cheat[other] = a[top] + (old - (a[top] - a[other])) / 2
        token = choose(cheat)
        if token != honest:
            st.matter += 1
            st.caught += not admissible(b, token, slack)
            st.honest_token += token in {choose(x) for x in (*rows, b)}
    return st


@dataclass
class Ambiguity:
    """On the tokens a plan emitted (last row of each call), across the class's honest engines."""

    rows: int = 0
    split: int = 0  # rows where the honest engines do not all emit the same canonical token
    # (row, validator engine) pairs where the rule admits more than one token: where a cheater could choose
    admits_two: int = 0
    checks: int = 0

    @property
    def split_rate(self) -> float:
        return self.split / self.rows if self.rows else 0.0

    @property
    def choice_rate(self) -> float:
        return self.admits_two / self.checks if self.checks else 0.0


def admissible_tokens(reference: np.ndarray, slack: float, decoding: Decoding = GREEDY) -> list[int]:
    """Every token the validator's rule accepts on this row (greedy: only tokens near the top can be)."""
    v = reference.astype(np.float64)
    near = np.flatnonzero(v >= v.max() - (decoding.window + 3 * slack) * (v.max() - v.min() + 1))
    return [int(t) for t in near if admissible(v, int(t), slack, decoding)]


def ambiguity(rows_by_engine: Mapping[str, Sequence[np.ndarray]], slack: float) -> Ambiguity:
    """How often the class's honest engines disagree on the emitted token, and how often the rule leaves a
    choice; the first is the floor for any sound rule, the second what this rule leaves."""
    out = Ambiguity()
    engines = list(rows_by_engine.values())
    for rows in zip(*engines, strict=True):
        out.rows += 1
        out.split += len({choose(r) for r in rows}) > 1
        for r in rows:
            out.checks += 1
            out.admits_two += len(admissible_tokens(r, slack)) > 1
    return out


def replayed_rows(models, precision: str, executor: Run, engines: Sequence[Engine], *,
                  emitted: bool = False) -> list[list[np.ndarray]]:
    """Per engine, the last task's logit rows as that engine re-executes it from the inputs ``executor``
    committed: what a validator compares the executor's rows with (``emitted``: only each call's last
    row, the one a token is emitted from)."""
    models = [(t, stated_weights(m, precision)) for t, m in models]
    last = len(models) - 1
    out = []
    for e in engines:
        replays = replay_task(runners_for(models, e, precision=precision)[last], executor, last)
        rows = [call[LOGITS].reshape(-1, call[LOGITS].shape[-1]) for seq in replays for call in seq]
        out.append([r[-1] for r in rows] if emitted else [x for r in rows for x in r])
    return out


def logit_rows(run: Run) -> list[np.ndarray]:
    """Every row of the last task's logits, call by call (every row the rule checks)."""
    return [r for seq in run.outputs for call in seq for r in call[-1][LOGITS].reshape(-1, call[-1][LOGITS].shape[-1])]
