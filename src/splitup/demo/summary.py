"""The demo's closing report: tasks and who ran them, speed, verification, payments, balances."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from splitup.demo.flow import Summary
from splitup.units import format_bytes

SOL = 1_000_000_000


def sol(lamports: int, signed: bool = False) -> str:
    return f"{lamports / SOL:+.6f}" if signed else f"{lamports / SOL:.6f}"


def print_summary(s: Summary, console: Console | None = None, *, stopping: bool = True) -> None:
    c = console or Console()
    c.print(f"\n[bold]Prompt[/bold]: {s.prompt}\n[bold]Answer[/bold] ({s.model}, {len(s.token_ids)} tokens): {s.text}")
    tasks = Table(title=f"Job {s.job}")
    for col in ("task", "layers", "VRAM", "ran on", "rate", "collateral SOL", "PoSP", "price SOL"):
        tasks.add_column(col, justify="right" if col in ("VRAM", "price SOL", "rate", "collateral SOL") else "left")
    for t in s.tasks:
        proof = ", proved re-execution" if t.proved else (", unproved: no reward" if t.verdict == "agree" else "")
        posp = f"{t.verdict} ({t.validator}{proof})" if t.verdict != "none" else "not drawn"
        if t.arbitration != "none":
            posp += f"; arbiter: {t.arbitration.replace('_', ' ')}"
        if t.node_slashed:
            posp += f"; {t.executor} slashed {sol(t.node_slashed)}"
        tasks.add_row(str(t.index), t.layers, format_bytes(t.vram), t.executor, f"{t.rate_bps / 100:g}%",
                      sol(t.collateral), posp if t.status == "SETTLED" else f"{posp}, {t.status}", sol(t.price))
    c.print(tasks)
    c.print("  [bold]Rules on chain[/bold]: a task locks max(0.1 SOL, 3 x its price); its sampling rate, fixed "
            "when the result is committed, is at least the rate at which cheating loses money, "
            "p (1 - r)(R + S) > R with r = 10 %; the draw mixes the client's secret, revealed after the "
            "commits; the validator is drawn on chain among the holders and paid only when its work digest "
            "proves it re-executed; cheating forfeits the collateral, lateness with a receipted input 10 % of it")
    nodes = Table(title="Nodes on chain after the job")
    for col in ("node", "memory", "tasks", "stake SOL", "earned SOL", "done", "verified", "failed"):
        nodes.add_column(col, justify="left" if col in ("node", "tasks") else "right")
    for n in s.nodes:
        holds = " ".join(f"{i}{'*' if i in n.primary else ''}" for i in n.holds)
        stake = sol(n.stake_after) + ("" if n.stake_after == n.stake_before else f" ({sol(n.stake_after - n.stake_before, True)})")
        nodes.add_row(n.name, format_bytes(n.budget), holds, stake, sol(n.balance_after - n.balance_before, True),
                      str(n.tasks_done), str(n.verified), str(n.failed))
    c.print(nodes)
    c.print("  tasks: * = primary (taken at once); the others held as stand-in and validator.  "
            "earned: balance change, transaction fees included")
    t = s.timings
    c.print(f"[bold]Speed[/bold]: {s.tokens_per_s:.2f} tokens/s through the nodes ({len(s.token_ids)} tokens in "
            f"{s.seconds:.1f} s, prefill included); one process: {s.reference_tokens_per_s:.2f} tokens/s. "
            f"Nodes accepted in {t.get('job.accept', 0):.1f} s; commit {t.get('job.commit', 0):.1f} s; "
            f"verification and settlement {t.get('job.settle', 0):.1f} s")
    c.print(f"[bold]PoSP[/bold]: {s.verified} of {len(s.tasks)} tasks verified (base rate "
            f"{s.verify_rate_bps / 100:.0f}% in this demo, the chain default 8%, never below each task's sound "
            f"rate); {s.rulings} arbitrations; slashed {sol(s.slashed)} SOL")
    c.print(f"[bold]Payments[/bold]: escrow {sol(s.escrow_deposit)} SOL -> nodes {sol(s.node_paid)}, validators "
            f"{sol(s.validator_paid)}, protocol fee {sol(s.fees)} (treasury {sol(s.treasury_before)} -> "
            f"{sol(s.treasury_after)}), refunded {sol(s.refund)}")
    c.print(f"[bold]Client[/bold]: {sol(s.client_before)} -> {sol(s.client_after)} SOL "
            f"({sol(s.client_after - s.client_before, True)}, transaction fees included)")
    for note in s.ruling_notes:
        c.print(f"  arbiter on {note}")
    if s.cheater:
        caught = [t for t in s.tasks if t.executor == s.cheater and t.status == "FAILED"]
        c.print(f"[bold]Cheater[/bold]: {s.cheater} forwarded outputs perturbed by 5% of their RMS; "
                + ("caught and slashed on chain." if caught else "not drawn for verification this time "
                   "(each of its tasks is checked with the sampling probability)."))
    if s.identical:
        c.print("[bold green]The text is identical to the single-process run.[/bold green]")
    else:
        c.print(f"[bold red]The text differs from the single-process run:[/bold red] {s.reference_text!r}")
    ends = " Every process it started is stopped." if stopping else ""
    c.print(f"Logs and wallets: {s.workdir}; {t.get('total', 0):.0f} s in all.{ends}")
