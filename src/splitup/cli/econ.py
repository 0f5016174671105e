"""``splitup econ``: is honesty a strict Nash equilibrium for these stakes, and from which sampling rate?"""

from __future__ import annotations

import argparse
import json
import math

from splitup.verify import econ
from splitup.verify.errors import BadGameParameters


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "econ",
        help="PoSP game calculator: minimal sampling rate, honest and cheating profit",
        description="Evaluate the Proof-of-Sampling game per task (docs/posp.md).",
    )
    p.add_argument("--price", type=int, default=None,
                   help="a task price in lamports: print the rule the program applies to it at the default "
                        "config (collateral, stake at risk, the sound rate floor), instead of the game")
    p.add_argument("--reward", "-R", help="asserter reward R per task")
    p.add_argument("--cost", "-C", help="asserter compute cost C per task")
    p.add_argument("--slash", "-S", help="stake slashed S when caught")
    p.add_argument("--collusion", "-r", default=0.0, help="share r of colluding nodes [0, 1)")
    p.add_argument("--validators", "-n", default=1, help="validators per sampled task")
    p.add_argument("--rate", "-p", default=econ.DEFAULT_RATE, help="sampling rate p")
    p.add_argument("--false-positive", "-e", default=0.0,
                   help="rate e at which a sampled honest result is wrongly slashed")
    p.add_argument("--validator-reward", default=None, help="validator reward V (default R)")
    p.add_argument("--validator-cost", default=None, help="validator compute cost (default C)")
    p.add_argument("--validator-slash", default=None, help="validator slash (default S)")
    p.add_argument("--trap-rate", default=econ.DEFAULT_TRAP_RATE,
                   help="share of validator checks given a planted wrong output")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _number(flag: str, text: object) -> float:
    # argparse's own type errors print the usage block too; a bad number is one line like any bad input.
    if isinstance(text, int | float):
        return float(text)
    try:
        return float(str(text))
    except ValueError:
        raise BadGameParameters(f"{flag} must be a number, got {text!r}") from None


def _integer(flag: str, text: object) -> int:
    try:
        return int(str(text))
    except ValueError:
        raise BadGameParameters(f"{flag} must be an integer, got {text!r}") from None


def _optional(flag: str, text: object) -> float | None:
    return None if text is None else _number(flag, text)


def program_rule(price: int) -> dict[str, object]:
    """The program's rule for one task of ``price`` lamports at the default config (MarketParams())."""
    from splitup.market.market import MarketParams, task_terms

    params = MarketParams()
    terms = task_terms(params, price)
    p = terms.sound_rate_bps / 10_000
    r = params.collusion_bps / 10_000
    return {
        "price": price, "collateral": terms.collateral, "at_risk": terms.at_risk,
        "collusion": r, "sound_rate_bps": terms.sound_rate_bps,
        "new_node_rate_bps": max(terms.sound_rate_bps, params.new_node_bps),
        "base_rate_bps": max(terms.sound_rate_bps, params.verify_rate_bps),
        "validator_reward": terms.validator_reward,
        # a cheat saves at most the whole price; at the floor it is caught often enough to lose money
        "cheat_profit_at_floor": (1 - p * (1 - r)) * price - p * (1 - r) * terms.at_risk,
        "rule": "p (1 - r)(R + S) > R, S = max(task_collateral, R x collateral_bps) x slash_bps",
    }


def run(args: argparse.Namespace) -> int:
    if args.price is not None:
        if args.price <= 0:
            raise BadGameParameters(f"--price must be a positive number of lamports, got {args.price}")
        rule = program_rule(args.price)
        if args.json:
            print(json.dumps(rule, sort_keys=True))
        else:
            _print_rule(rule)
        return 0
    for flag, value in (("--reward", args.reward), ("--cost", args.cost), ("--slash", args.slash)):
        if value is None:
            raise BadGameParameters(f"{flag} is required (or give --price for the program's rule)")
    game = econ.Game(
        reward=_number("--reward", args.reward),
        cost=_number("--cost", args.cost),
        slash=_number("--slash", args.slash),
        collusion=_number("--collusion", args.collusion),
        validators=_integer("--validators", args.validators),
        rate=_number("--rate", args.rate),
        false_positive=_number("--false-positive", args.false_positive),
        validator_reward=_optional("--validator-reward", args.validator_reward),
        validator_cost=_optional("--validator-cost", args.validator_cost),
        validator_slash=_optional("--validator-slash", args.validator_slash),
        trap_rate=_number("--trap-rate", args.trap_rate),
    )
    result = econ.summary(game)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_table(game, result)
    return 0


def _print_rule(rule: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    def sol(v: object) -> str:
        return f"{float(v) / 1e9:.6f} SOL"  # type: ignore[arg-type]

    t = Table(title=f"The rule the program applies at the default config, task price {sol(rule['price'])}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("rule", str(rule["rule"]))
    t.add_row("least collateral locked", sol(rule["collateral"]))
    t.add_row("stake at risk S when caught", sol(rule["at_risk"]))
    t.add_row("collusion allowance r", f"{float(rule['collusion']):.0%}")  # type: ignore[arg-type]
    t.add_row("sound rate floor", f"{int(rule['sound_rate_bps']) / 100:g} %")  # type: ignore[call-overload]
    t.add_row("rate of an established node", f"{int(rule['base_rate_bps']) / 100:g} %")  # type: ignore[call-overload]
    t.add_row("rate of a new node", f"{int(rule['new_node_rate_bps']) / 100:g} %")  # type: ignore[call-overload]
    t.add_row("validator reward per check", sol(rule["validator_reward"]))
    t.add_row("cheat profit at the floor (C = R saved)", sol(rule["cheat_profit_at_floor"]))
    Console().print(t)


def _print_table(game: econ.Game, result: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    pm = econ.p_min(game)
    if math.isinf(pm):
        pm_text = "none (false positives outweigh the penalty)"
    else:
        pm_text = f"{pm:.4%}" + ("" if pm <= 1 else "  (above 1: raise the slash)")
    yes = "[green]yes[/]"
    no = "[red]no[/]"
    t = Table(title="Proof-of-Sampling game, per task", show_header=True)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_column("formula")
    t.add_row("minimal sampling rate p_min", pm_text, "C / [(1-r^n)(R+S) - eS]")
    t.add_row("sampling rate p", f"{game.rate:.4%}", "")
    t.add_row("honest profit", f"{econ.honest_profit(game):.6g}", "R - C - peS")
    t.add_row("cheat profit", f"{econ.cheat_profit(game):.6g}", "R - p(1-r^n)(R+S)")
    t.add_row("honesty strict Nash", yes if result["nash"] else no, "honest > cheat")
    t.add_row("cheat detection probability", f"{econ.detection_probability(game):.4%}", "p(1-r^n)")
    t.add_row("honest validator profit", f"{econ.honest_validator_profit(game):.6g}", "V - Cv")
    t.add_row("lazy validator profit", f"{econ.lazy_validator_profit(game):.6g}", "(1-t)V - tSv")
    t.add_row("lazy validator loses money", yes if result["lazy_validator_loses"] else no,
              f"t > {econ.trap_rate_min(game):.4%}")
    t.add_row("verification overhead", f"{econ.verification_overhead(game):.4%}", "pnCv / C")
    Console().print(t)
