"""``splitup demo``: the whole marketplace on this machine with a real model, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from splitup.units import DTYPE_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole marketplace locally: ledger, store, 4 nodes, one paid and verified job",
        description="Starts the local ledger, a blob store and 4 node processes (own wallets, stakes and memory "
        "sizes), registers SmolLM2-135M split into tasks, generates text through the nodes with PoSP, prints "
        "who ran and verified what and who was paid, checks the text against a single-process run, and "
        "stops every process it started.",
        epilog="examples:\n  splitup demo\n  splitup demo --prompt 'Write a haiku about GPUs' --max-tokens 48\n"
        "  splitup demo --smaller            # the same flow with a tiny random model (seconds)\n"
        "  splitup demo --serve              # then keep it running with the web console\n"
        "  splitup demo --cheat node-a       # one dishonest node: watch PoSP catch and slash it",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smaller", action="store_true", help="a tiny zoo model with random weights instead")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES,
                   help="weights: fp32 (default), fp16, int8 (round-to-nearest per block) or int4 (SmolLM2's "
                        "own 4-bit GGUF blocks, as shipped)")
    p.add_argument("--prompt", default=None, help="the user message (the model's chat template wraps it)")
    p.add_argument("--max-tokens", type=int, default=40)
    p.add_argument("--tasks", type=int, default=3, choices=(2, 3, 4), help="tasks to split the model into")
    p.add_argument("--verify-rate-bps", type=int, default=None,
                   help="PoSP sampling rate for this demo's market (default 5000 = 50%%, so that a verification "
                   "shows, and 10000 with --cheat, so that the cheat is caught; the chain default is 800 = 8%%)")
    p.add_argument("--dir", type=Path, default=Path(".splitup/demo"), help="working directory (wiped first)")
    p.add_argument("--cheat", metavar="NODE", default=None, choices=("node-a", "node-b", "node-c", "node-d"),
                   help="make NODE dishonest (it forwards perturbed outputs) to watch PoSP catch and slash it")
    p.add_argument("--serve", action="store_true", help="afterwards keep everything running with the gateway and "
                   "web console until Ctrl-C")
    p.add_argument("--gateway-port", type=int, default=8000)
    p.set_defaults(func=run)


def _interrupt(signum: int, frame: object) -> None:
    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the demo still stops every process it started.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal

    from splitup.demo.flow import DemoOptions, Ui, run_demo
    from splitup.demo.summary import print_summary

    signal.signal(signal.SIGTERM, _interrupt)

    opts = DemoOptions(smaller=args.smaller, workdir=args.dir, max_tokens=args.max_tokens, tasks=args.tasks,
                       verify_rate_bps=args.verify_rate_bps if args.verify_rate_bps is not None else
                       10_000 if args.cheat else 5_000, serve_console=args.serve, gateway_port=args.gateway_port,
                       cheater=args.cheat, dtype=args.dtype)
    if args.prompt:
        opts.prompt = args.prompt
    ui = Ui(True)
    if args.serve:
        # The summary comes before the console starts: run_demo then serves until Ctrl-C.
        summary = run_demo(opts, ui, inspect=lambda s, _env: print_summary(s, ui.console, stopping=False))
    else:
        summary = run_demo(opts, ui)
        print_summary(summary, ui.console)
    # With a cheater the text may differ from the single-process run: that is the point, not a failure.
    return 0 if summary.identical or args.cheat else 1
