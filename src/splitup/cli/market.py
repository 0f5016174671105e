"""``splitup market ...``: the on-chain marketplace from the command line."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from splitup.cli._market_opts import add_network, amount_of, lamports_of, market_from, sol
from splitup.errors import SplitUpError
from splitup.market.accounts import node_endpoint
from splitup.market.constants import TaskStatus
from splitup.market.market import MarketParams, heartbeat_fresh
from splitup.market.transport import program_bytes
from splitup.market.wallet import default_keypair_path, load_keypair, save_keypair

if TYPE_CHECKING:
    from splitup.storage import BlobStore


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("market", help="the on-chain marketplace (config, nodes, jobs)",
                              description="Operate the SplitUp Solana program over JSON-RPC.")
    sub = p.add_subparsers(dest="market_cmd", metavar="ACTION", required=True)

    prog = sub.add_parser("program", help="the shipped program: size and sha256")
    prog.set_defaults(func=cmd_program)

    dep = sub.add_parser("deploy", help="deploy the shipped program through the upgradeable loader "
                         "(your wallet pays and becomes the upgrade authority)")
    add_network(dep)
    dep.add_argument("--program-keypair", type=Path, default=None,
                     help="keypair JSON of the program address (default: a new one, saved next to your wallet)")
    dep.set_defaults(func=cmd_deploy)

    init = sub.add_parser("init", help="create the market config; your wallet becomes its authority/arbiter")
    add_network(init)
    d = MarketParams()
    init.add_argument("--verify-rate-bps", type=int, default=d.verify_rate_bps)
    init.add_argument("--min-stake", type=lamports_of, default=d.min_stake, help="SOL")
    init.add_argument("--task-collateral", type=lamports_of, default=d.task_collateral, help="SOL")
    init.add_argument("--slash-bps", type=int, default=d.slash_bps)
    init.add_argument("--validator-reward", type=lamports_of, default=d.validator_reward, help="SOL")
    init.add_argument("--protocol-fee-bps", type=int, default=d.protocol_fee_bps)
    init.add_argument("--unbonding-slots", type=int, default=d.unbonding_slots)
    init.add_argument("--validator-timeout-slots", type=int, default=d.validator_timeout_slots)
    init.add_argument("--new-node-bps", type=int, default=d.new_node_bps, help="rate for new nodes")
    init.add_argument("--new-node-half-life", type=int, default=d.new_node_half_life, help="honest tasks")
    init.add_argument("--failed-bps", type=int, default=d.failed_bps, help="rate after a failed verdict")
    init.add_argument("--failed-half-life", type=int, default=d.failed_half_life, help="honest tasks")
    init.add_argument("--heartbeat-window-slots", type=int, default=d.heartbeat_window_slots,
                      help="nodes silent on chain longer are not routed to nor drawn as validators (0: off)")
    init.set_defaults(func=cmd_init)

    cfg = sub.add_parser("config", help="show the market config")
    add_network(cfg)
    cfg.set_defaults(func=cmd_config)

    nodes = sub.add_parser("nodes", help="list registered nodes")
    add_network(nodes)
    nodes.set_defaults(func=cmd_nodes)

    reg = sub.add_parser("register-node", help="register your wallet as a node and stake")
    add_network(reg)
    reg.add_argument("--stake", type=lamports_of, required=True, help="SOL")
    reg.add_argument("--vram-gib", type=int, required=True)
    reg.add_argument("--endpoint", default="")
    reg.set_defaults(func=cmd_register_node)

    pub = sub.add_parser("publish", help="publish a written plan: bundles, tokenizer and manifest into a store, "
                         "the model and its task prices on chain (your wallet owns it)")
    add_network(pub)
    pub.add_argument("plan", type=Path, metavar="PLAN_DIR", help="a plan written by `splitup plan --out`")
    pub.add_argument("--store", required=True, metavar="URL|DIR",
                     help="a writable store server (`splitup store serve --writable`) or a local store directory")
    pub.add_argument("--price", type=amount_of, default=None, metavar="AMOUNT",
                     help="one price per task (2SOL, 0.001sol or lamports; default: a base plus its compute)")
    pub.add_argument("--model", default=None, metavar="NAME",
                     help="take tokenizer, chat template and bos/eos ids from a shipped model (`splitup models`)")
    pub.add_argument("--tokenizer", type=Path, default=None, metavar="FILE", help="a tokenizer.json instead")
    pub.add_argument("--chat-template", type=Path, default=None, metavar="FILE", help="a Jinja chat template")
    pub.add_argument("--tokenizer-config", type=Path, default=None, metavar="FILE",
                     help="a tokenizer_config.json: the special tokens chat templates write (bos_token, eos_token, "
                     "unk_token, pad_token), and its chat template unless --chat-template gives one")
    pub.add_argument("--eos-ids", default=None, metavar="IDS", help="comma-separated end-of-sequence token ids")
    pub.add_argument("--bos-id", type=int, default=None)
    pub.add_argument("--kind", choices=("decoder", "graph"), default=None,
                     help="decoder: text generation with a KV cache; graph: one pass (default: decoder when "
                     "there is a tokenizer)")
    pub.add_argument("--description", default=None)
    pub.set_defaults(func=cmd_publish)

    job = sub.add_parser("job", help="show a job and its tasks")
    add_network(job)
    job.add_argument("address", type=Pubkey.from_string)
    job.set_defaults(func=cmd_job)


def cmd_program(args: argparse.Namespace) -> int:
    so = program_bytes()
    print(f"splitup_market.so: {len(so)} bytes, sha256 {hashlib.sha256(so).hexdigest()}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from splitup.market.deploy import deploy_upgradeable

    m = market_from(args)
    if args.program_keypair is not None and args.program_keypair.exists():
        program = load_keypair(args.program_keypair)
    else:
        program = Keypair()
        path = args.program_keypair or (args.keypair or default_keypair_path()).with_name(
            f"splitup-market-{program.pubkey()}.json")
        save_keypair(program, path)
        print(f"program keypair saved to {path}")
    pid = deploy_upgradeable(m.t, m.payer, program_bytes(), program)
    print(f"deployed splitup_market.so as {pid}; use --program-id {pid} (or SPLITUP_PROGRAM_ID)")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    m = market_from(args)
    params = MarketParams(
        verify_rate_bps=args.verify_rate_bps, min_stake=args.min_stake, task_collateral=args.task_collateral,
        slash_bps=args.slash_bps, validator_reward=args.validator_reward, protocol_fee_bps=args.protocol_fee_bps,
        unbonding_slots=args.unbonding_slots, validator_timeout_slots=args.validator_timeout_slots,
        new_node_bps=args.new_node_bps, new_node_half_life=args.new_node_half_life, failed_bps=args.failed_bps,
        failed_half_life=args.failed_half_life, heartbeat_window_slots=args.heartbeat_window_slots)
    res = m.init_config(m.payer, params)
    print(f"market config {m.config_address} created ({res.signature})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    c = market_from(args).config()
    print(f"authority          {c.authority}\nverify rate        {c.verify_rate_bps / 100:.2f}%\n"
          f"min stake          {sol(c.min_stake)}\ntask collateral    {sol(c.task_collateral)}\n"
          f"slash              {c.slash_bps / 100:.2f}% of collateral\nvalidator reward   {sol(c.validator_reward)}\n"
          f"protocol fee       {c.protocol_fee_bps / 100:.2f}%\nunbonding          {c.unbonding_slots} slots\n"
          f"validator timeout  {c.validator_timeout_slots} slots\ntreasury           {sol(c.treasury)}\n"
          f"new nodes          {c.new_node_bps / 100:.2f}%, halving every {c.new_node_half_life} credits\n"
          f"after a failure    {c.failed_bps / 100:.2f}%, halving every {c.failed_half_life} credits\n"
          f"reputation credit  {sol(c.rep_min_price)} of verified work paid by another party\n"
          f"collateral         max({sol(c.task_collateral)}, {c.collateral_bps / 100:.0f}% of the price)\n"
          f"rate floor         p (1 - {c.collusion_bps / 100:.0f}%)(R + S) > R at every task\n"
          f"liveness penalty   {c.liveness_slash_bps / 100:.2f}% of collateral (only with a receipted input)\n"
          f"validator reward   max({sol(c.validator_reward)}, {c.validator_reward_bps / 100:.0f}% of the price), "
          f"only with proof of re-execution\n"
          f"windows            job <= {c.max_deadline_slots}, task <= {c.max_task_timeout_slots}, arbiter "
          f"{c.arbiter_timeout_slots}, reveal {c.reveal_slots}, validator lottery {c.validator_ramp_slots} slots\n"
          f"heartbeat window   {c.heartbeat_window_slots or 'off'}{' slots' if c.heartbeat_window_slots else ''}")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    m = market_from(args)
    cfg, slot = m.config(), m.t.slot()
    for address, n in m.nodes():
        beat = "fresh" if heartbeat_fresh(n, cfg, slot) else "stale"
        print(f"{address} owner {n.owner} stake {sol(n.stake)} locked {sol(n.locked)} vram {n.vram >> 30} GiB "
              f"done {n.tasks_done} verified {n.verified} failed {n.failed} liveness faults {n.liveness_faults} "
              f"reputation {n.reputation} heartbeat {slot - n.last_heartbeat} slots ago ({beat}) {node_endpoint(n)}")
    return 0


def cmd_register_node(args: argparse.Namespace) -> int:
    m = market_from(args)
    res = m.register_node(m.payer, args.stake, args.vram_gib << 30, 1, args.endpoint)
    print(f"node {res.address} registered with {sol(args.stake)} staked")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    import tempfile

    from splitup.partition.task import Plan
    from splitup.sdk.catalog import publish_model
    from splitup.storage import BlobStore

    plan = Plan.load(args.plan)  # before touching the chain or the store: a wrong directory fails first
    tokenizer, template, bos, eos, description = None, None, None, (), ""
    special: dict[str, str] = {}
    if args.model is not None:
        if args.model != plan.model:
            # Another model's tokenizer would decode this plan's token ids into nonsense, silently.
            raise SplitUpError(f"--model {args.model}: the plan in {args.plan} is of {plan.model}")
        from splitup.models.real import import_weights
        from splitup.models.registry import spec

        imported = import_weights(args.model)  # cached after the first import; no graph is built
        tokenizer, template, bos, eos = (imported.tokenizer_json, imported.chat_template, imported.bos_id,
                                         imported.eos_ids)
        special = imported.special_tokens
        description = spec(args.model).description
    if args.tokenizer is not None:
        tokenizer = _read_text(args.tokenizer, "tokenizer")
    if args.tokenizer_config is not None:
        from splitup.chat.tokenizer_config import read_tokenizer_config

        config = read_tokenizer_config(args.tokenizer_config)
        special = config.special_tokens
        template = config.chat_template or template
    if args.chat_template is not None:
        template = _read_text(args.chat_template, "chat template")
    if args.bos_id is not None:
        bos = args.bos_id
    if args.eos_ids is not None:
        try:
            eos = tuple(int(x) for x in args.eos_ids.split(",") if x)
        except ValueError:
            raise SplitUpError(f"--eos-ids: not a list of token ids: {args.eos_ids!r}") from None
    kind = args.kind or ("decoder" if tokenizer is not None else "graph")
    if kind == "decoder" and tokenizer is None:
        raise SplitUpError("a decoder needs a tokenizer: --model NAME or --tokenizer tokenizer.json")
    pricing = {} if args.price is None else {"base_price": args.price, "lamports_per_gflop": 0}
    m = market_from(args)
    remote = args.store.startswith(("http://", "https://"))
    with tempfile.TemporaryDirectory(prefix="splitup-publish-") as tmp:
        # publish_model writes into a local store; for a server it is staged here and uploaded after the
        # chain registration. Should an upload fail, running the same command again completes it (the
        # registration is skipped when the model exists, and every blob is named by its hash).
        store = BlobStore(Path(tmp) if remote else Path(args.store))
        published = publish_model(m, m.payer, args.plan, store, kind=kind, tokenizer_json=tokenizer,
                                  chat_template=template, bos_id=bos, eos_ids=eos, special_tokens=special,
                                  description=args.description if args.description is not None else description,
                                  **pricing)
        if remote:
            _upload_all(store, args.store)
    print(f"model {plan.model} ({kind}) at {published.address}")
    print(f"model hash {published.manifest_sha256} (sha256 of its manifest in the store)")
    for t, price in zip(published.plan.tasks, published.prices, strict=True):
        print(f"  task {t.index}: {t.task_id}  vram {t.vram_bytes >> 20} MiB  price {sol(price)}")
    return 0


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitUpError(f"cannot read the {what} {path}: {exc}") from None


def _upload_all(store: BlobStore, url: str) -> None:
    from splitup.storage import BlobClient

    with BlobClient(url) as client:
        for blob in sorted((store.root / "blobs").glob("*/*")):
            client.put(blob)


def cmd_job(args: argparse.Namespace) -> int:
    info = market_from(args).job(args.address)
    h = info.header
    print(f"job {args.address}: client {h.client} model {h.model}\n"
          f"deposit {sol(h.deposit)} paid {sol(h.paid)} deadline slot {h.deadline}")
    for i, t in enumerate(info.tasks):
        print(f"  task {i}: {TaskStatus(t.status).name.lower():10} price {sol(t.price)} node {t.node}")
    return 0
