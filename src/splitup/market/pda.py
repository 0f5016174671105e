"""Program-derived addresses of the marketplace's accounts (the same seeds the program checks)."""

from __future__ import annotations

import struct

from solders.pubkey import Pubkey

from splitup.market.constants import SEED_CONFIG, SEED_ESCROW, SEED_JOB, SEED_MODEL, SEED_NODE


def config_pda(program_id: Pubkey) -> Pubkey:
    return Pubkey.find_program_address([SEED_CONFIG], program_id)[0]


def model_pda(program_id: Pubkey, owner: Pubkey, model_hash: bytes) -> Pubkey:
    return Pubkey.find_program_address([SEED_MODEL, bytes(owner), model_hash], program_id)[0]


def node_pda(program_id: Pubkey, owner: Pubkey) -> Pubkey:
    return Pubkey.find_program_address([SEED_NODE, bytes(owner)], program_id)[0]


def job_pda(program_id: Pubkey, client: Pubkey, nonce: int) -> Pubkey:
    return Pubkey.find_program_address([SEED_JOB, bytes(client), struct.pack("<Q", nonce)], program_id)[0]


def escrow_pda(program_id: Pubkey, job: Pubkey) -> Pubkey:
    return Pubkey.find_program_address([SEED_ESCROW, bytes(job)], program_id)[0]
