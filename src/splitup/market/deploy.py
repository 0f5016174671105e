"""Deploy the program through the real BPF upgradeable loader, over any transport.

The loader runs its deploy-time checks (ELF validation, verifier, syscall resolution), which
``LiteSVM.add_program`` skips, so this is also how a test proves the program is deployable as is.
"""

from __future__ import annotations

import struct

from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM
from solders.system_program import CreateAccountParams, create_account
from solders.sysvar import CLOCK, RENT

from splitup.market.transport import Transport

UPGRADEABLE_LOADER = Pubkey.from_string("BPFLoaderUpgradeab1e11111111111111111111111")
BUFFER_HEADER = 37  # UpgradeableLoaderState::Buffer: tag u32 + Option<authority>
PROGRAM_SIZE = 36  # UpgradeableLoaderState::Program: tag u32 + programdata address
CHUNK = 900  # bytes of program per Write transaction (fits the 1232-byte limit with signatures)


def deploy_upgradeable(transport: Transport, payer: Keypair, so: bytes, program: Keypair | None = None) -> Pubkey:
    """Write ``so`` to a buffer and deploy it as ``program`` (default: a new keypair); returns the program id.
    ``payer`` pays and becomes the upgrade authority."""
    rent = transport.rent_exempt
    buf, program = Keypair(), program or Keypair()
    me = payer.pubkey()
    transport.send([
        create_account(CreateAccountParams(from_pubkey=me, to_pubkey=buf.pubkey(), lamports=rent(BUFFER_HEADER + len(so)),
                                           space=BUFFER_HEADER + len(so), owner=UPGRADEABLE_LOADER)),
        Instruction(UPGRADEABLE_LOADER, struct.pack("<I", 0),  # InitializeBuffer
                    [AccountMeta(buf.pubkey(), False, True), AccountMeta(me, False, False)]),
    ], [payer, buf])
    for off in range(0, len(so), CHUNK):
        chunk = so[off : off + CHUNK]
        transport.send([Instruction(UPGRADEABLE_LOADER, struct.pack("<IIQ", 1, off, len(chunk)) + chunk,  # Write
                                    [AccountMeta(buf.pubkey(), False, True), AccountMeta(me, True, False)])],
                       [payer])
    programdata, _ = Pubkey.find_program_address([bytes(program.pubkey())], UPGRADEABLE_LOADER)
    transport.send([
        create_account(CreateAccountParams(from_pubkey=me, to_pubkey=program.pubkey(), lamports=rent(PROGRAM_SIZE),
                                           space=PROGRAM_SIZE, owner=UPGRADEABLE_LOADER)),
        Instruction(UPGRADEABLE_LOADER, struct.pack("<IQ", 2, len(so) * 2), [  # DeployWithMaxDataLen
            AccountMeta(me, True, True), AccountMeta(programdata, False, True),
            AccountMeta(program.pubkey(), False, True), AccountMeta(buf.pubkey(), False, True),
            AccountMeta(RENT, False, False), AccountMeta(CLOCK, False, False),
            AccountMeta(SYSTEM_PROGRAM, False, False), AccountMeta(me, True, False)]),
    ], [payer, program])
    return program.pubkey()
