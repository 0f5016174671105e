"""The committed program deploys through the real upgradeable loader and then works."""

from __future__ import annotations

from market_world import SOL, h
from solders.keypair import Keypair
from solders.litesvm import LiteSVM

from splitup.market.deploy import deploy_upgradeable
from splitup.market.layout import ModelTask
from splitup.market.market import Market
from splitup.market.transport import LiteSvmTransport, program_bytes


def test_deploy_through_upgradeable_loader() -> None:
    svm = LiteSVM()
    payer = Keypair()
    svm.airdrop(payer.pubkey(), 100 * SOL)
    t = LiteSvmTransport(svm=svm)  # nothing pre-deployed
    pid = deploy_upgradeable(t, payer, program_bytes())
    t.program_id = pid
    t.advance(1)  # a program deployed in a slot is usable from the next
    m = Market(t, pid, payer)
    m.init_config(payer)
    m.register_node(payer, 2 * SOL, vram=1 << 30)
    model = m.register_model(payer, h("m"), [ModelTask(task_id=h("t"), vram=1, price=1_000)]).address
    assert model is not None and m.model(model).complete
    assert m.node(payer.pubkey()).stake == 2 * SOL
