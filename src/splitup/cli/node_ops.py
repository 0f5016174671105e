"""``splitup node stake|unstake|withdraw|specialize|report|stop``: a seller manages a registered node.

Each command prints what the chain holds afterwards, and refuses in words, before sending anything,
what the program would refuse (collateral locked in open jobs, unbonding not over).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from splitup.cli._market_opts import add_network, amount_of, market_from, sol
from splitup.errors import SplitUpError

SLOT_S_ESTIMATE = 0.4  # Solana's target slot time, to say roughly when unbonding ends


def register(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("stake", help="add stake to your registered node")
    st_sub = st.add_subparsers(dest="stake_cmd", metavar="ACTION", required=True)
    add = st_sub.add_parser("add", help="move AMOUNT from your wallet into the node's stake")
    add.add_argument("amount", type=amount_of, metavar="AMOUNT", help="2SOL, 0.5sol or lamports")
    add_network(add)
    add.set_defaults(func=cmd_stake_add)

    un = sub.add_parser("unstake", help="start unbonding AMOUNT of free stake (withdraw it after the unbonding period)")
    un.add_argument("amount", type=amount_of, metavar="AMOUNT", help="2SOL, 0.5sol or lamports")
    add_network(un)
    un.set_defaults(func=cmd_unstake)

    wd = sub.add_parser("withdraw", help="move unbonded stake back to your wallet")
    add_network(wd)
    wd.set_defaults(func=cmd_withdraw)

    sp = sub.add_parser("specialize", help="change the tasks your node declares it holds (validators are chosen among holders)")
    sp.add_argument("--add", action="append", default=[], metavar="TASK_ID", help="task id to add (repeatable)")
    sp.add_argument("--remove", action="append", default=[], metavar="TASK_ID", help="task id to remove (repeatable)")
    sp.add_argument("--set", default=None, metavar="IDS", help="replace the whole list: comma-separated task ids")
    add_network(sp)
    sp.set_defaults(func=cmd_specialize)

    rp = sub.add_parser("report", help="earnings, verification record, slashes and stake history, from the chain")
    rp.add_argument("--json", action="store_true", help="one JSON object")
    rp.add_argument("--owner", default=None, metavar="ADDRESS", help="another node's owner (default: --keypair's)")
    rp.add_argument("--limit", type=int, default=1000, help="transactions of history to read (at most 1000)")
    add_network(rp)
    rp.set_defaults(func=cmd_report)

    wait = sub.add_parser("wait", help="wait until a node is ready (tasks preloaded; a market node also "
                                       "registered and taking jobs)")
    wait.add_argument("--url", default="http://127.0.0.1:8700")
    wait.add_argument("--timeout", type=float, default=300.0, metavar="S")
    wait.add_argument("--pid", type=int, default=None,
                      help="the node's process id (e.g. $! after starting it with &): stop waiting at once if it exits")
    wait.set_defaults(func=cmd_wait)

    stop = sub.add_parser("stop", help="drain and stop a node started with --pid-file (SIGTERM, then wait)")
    stop.add_argument("--pid-file", type=Path, required=True, help="the file `splitup node start --pid-file` wrote")
    stop.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds to wait for the drain")
    stop.set_defaults(func=cmd_stop)


def _state(m, owner) -> str:  # noqa: ANN001 - Market, Pubkey
    n = m.node(owner)
    line = f"stake {sol(n.stake)}, locked {sol(n.locked)}, free {sol(n.stake - n.locked)}"
    if n.unbonding:
        line += f", unbonding {sol(n.unbonding)} until slot {n.unbond_at}"
    return line


def _registered(m):  # noqa: ANN001, ANN202 - Market -> (owner, Node)
    owner = m.payer.pubkey()
    if m.t.get_account(m.node_address(owner)) is None:
        raise SplitUpError(f"{owner} has no node on this market: register first "
                           "(splitup node start --market ... --stake AMOUNT, or splitup market register-node)")
    return owner, m.node(owner)


def cmd_stake_add(args: argparse.Namespace) -> int:
    m = market_from(args)
    owner, _ = _registered(m)
    if args.amount <= 0:
        raise SplitUpError("the amount must be positive")
    wallet = m.t.balance(owner)
    if wallet < args.amount + 5_000:
        raise SplitUpError(f"your wallet holds {sol(wallet)}; adding {sol(args.amount)} needs that plus the fee")
    m.add_stake(m.payer, args.amount)
    print(f"added {sol(args.amount)}: {_state(m, owner)}")
    return 0


def cmd_unstake(args: argparse.Namespace) -> int:
    m = market_from(args)
    owner, n = _registered(m)
    free = n.stake - n.locked
    if args.amount <= 0:
        raise SplitUpError("the amount must be positive")
    if args.amount > free:
        raise SplitUpError(f"only {sol(free)} of the stake is free: {sol(n.locked)} is locked as collateral for "
                           "tasks in open jobs and is freed when they settle")
    m.begin_unstake(m.payer, args.amount)
    cfg = m.config()
    print(f"unbonding {sol(args.amount)} for {cfg.unbonding_slots} slots: {_state(m, owner)}")
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    m = market_from(args)
    owner, n = _registered(m)
    if n.unbonding == 0:
        raise SplitUpError("nothing is unbonding: start with `splitup node unstake AMOUNT`")
    now = m.t.slot()
    if now < n.unbond_at:
        left = n.unbond_at - now
        raise SplitUpError(f"{sol(n.unbonding)} is still unbonding until slot {n.unbond_at} "
                           f"(now {now}: {left} slots, about {left * SLOT_S_ESTIMATE:.0f} s)")
    before = m.t.balance(owner)
    m.withdraw(m.payer)
    print(f"withdrew {sol(m.t.balance(owner) - before + 5_000)} to {owner}: {_state(m, owner)}")
    return 0


def _task_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise SplitUpError(f"not a task id (64 hex digits): {text!r}")
    return raw


def cmd_specialize(args: argparse.Namespace) -> int:
    from splitup.market.constants import MAX_SPECIALIZED

    m = market_from(args)
    owner, n = _registered(m)
    current = [bytes(n.specialized[i * 32:(i + 1) * 32]) for i in range(n.special_count)]
    wanted = [_task_id(t) for t in args.set.split(",") if t] if args.set is not None else list(current)
    for t in args.add:
        if _task_id(t) not in wanted:
            wanted.append(_task_id(t))
    for t in args.remove:
        if _task_id(t) not in wanted:
            raise SplitUpError(f"task {t[:12]}... is not among the node's specialisations")
        wanted.remove(_task_id(t))
    if len(wanted) > MAX_SPECIALIZED:
        raise SplitUpError(f"a node declares at most {MAX_SPECIALIZED} tasks; this would be {len(wanted)}")
    m.specialize(m.payer, wanted)
    print(f"specialised in {len(wanted)} task(s):" + "".join(f"\n  {t.hex()}" for t in wanted))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from solders.pubkey import Pubkey

    from splitup.node.report import node_report

    m = market_from(args)
    owner = Pubkey.from_string(args.owner) if args.owner else m.payer.pubkey()
    if m.t.get_account(m.node_address(owner)) is None:
        raise SplitUpError(f"{owner} has no node on this market")
    report = node_report(m, owner, min(max(args.limit, 1), 1000))
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
        return 0
    _print_report(report)
    return 0


def _print_report(r) -> None:  # noqa: ANN001 - NodeReport
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]node {r.address}[/] (owner {r.owner}) at slot {r.slot}")
    console.print(f"stake {sol(r.stake)}: locked {sol(r.locked)}, free {sol(r.free)}"
                  + (f", unbonding {sol(r.unbonding)} until slot {r.unbond_at}" if r.unbonding else ""))
    console.print(f"tasks done {r.tasks_done}, verified {r.verified}, failed {r.failed}, liveness faults "
                  f"{r.liveness_faults}; reputation {r.reputation} credits; sampling rate now "
                  f"{r.sampling_rate_bps / 100:.2f}% (a task's rate is at least its price's sound floor); "
                  f"{len(r.specialized)} task(s) held")
    if not r.history_available:
        console.print("(this cluster keeps no transaction history by account: payouts and slashes not shown)")
        return
    totals = r.totals()
    summary = ", ".join(f"{k} {sol(v)}" for k, v in sorted(totals.items()) if v) or "no payouts or slashes yet"
    console.print(f"totals: {summary}")
    t = Table("slot", "event", "lamports", "job", "detail", title="history (oldest first)")
    for e in r.events:
        t.add_row(str(e.slot), e.kind, f"{e.lamports:+,}", e.job[:12], e.detail)
    console.print(t)


def cmd_wait(args: argparse.Namespace) -> int:
    import httpx

    base = args.url.rstrip("/")
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if args.pid is not None and not _alive(args.pid):
            raise SplitUpError(f"{args.url}: the node process {args.pid} exited before it was ready ({last}); "
                               "see its output")
        try:
            r = httpx.get(base + "/market/startup", timeout=5)
            # A node without --market preloads its tasks before it listens: answering is being ready.
            state = {"phase": "ready", "preloaded": len(httpx.get(base + "/health", timeout=5).json()["tasks"])} \
                if r.status_code == 404 else r.json()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            last = f"no answer ({type(exc).__name__})"
        else:
            if state.get("phase") == "ready":
                print(f"{args.url}: ready, {state.get('preloaded')} task(s) loaded")
                return 0
            if state.get("phase") == "failed":
                raise SplitUpError(f"{args.url}: startup failed: {state.get('error')}")
            last = f"{state.get('phase')} ({state.get('preloaded')}/{state.get('tasks')} tasks loaded)"
        time.sleep(0.25)
    raise SplitUpError(f"{args.url} not ready after {args.timeout:.0f} s: {last}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a child that exited but was not reaped yet is a zombie: gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def cmd_stop(args: argparse.Namespace) -> int:
    try:
        pid = int(args.pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise SplitUpError(f"cannot read a process id from {args.pid_file}: {exc}") from None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise SplitUpError(f"no process {pid} (from {args.pid_file}): the node is not running") from None
    print(f"node {pid}: draining (stops taking tasks, finishes or commits what it holds, then exits)")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"node {pid} stopped")
            return 0
        time.sleep(0.2)
    raise SplitUpError(f"node {pid} still running after {args.timeout:.0f} s")
