// Drives the local ledger with @solana/web3.js 1.x and @solana/kit, method by method; prints one JSON
// line per check ({client, method, ok, detail}). Usage: node compat.mjs RPC_URL WS_URL
import * as w3 from "@solana/web3.js";
import * as kit from "@solana/kit";

const [rpcUrl, wsUrl] = process.argv.slice(2);
const SOL = 1_000_000_000;
const results = [];

async function check(client, method, fn) {
  const t0 = Date.now();
  try {
    const detail = await Promise.race([fn(), new Promise((_, rej) => setTimeout(() => rej(new Error("timeout 20 s")), 20000))]);
    results.push({ client, method, ok: true, ms: Date.now() - t0, detail: String(detail ?? "") });
  } catch (e) {
    results.push({ client, method, ok: false, ms: Date.now() - t0, detail: String(e?.stack ?? e).slice(0, 600) });
  }
}
function expect(cond, what) { if (!cond) throw new Error(`expected ${what}`); }

async function web3() {
  const c = new w3.Connection(rpcUrl, { commitment: "confirmed", wsEndpoint: wsUrl });
  const payer = w3.Keypair.generate();
  const dest = w3.Keypair.generate().publicKey;
  let sig, slot;
  await check("web3.js", "requestAirdrop + confirmTransaction", async () => {
    const s = await c.requestAirdrop(payer.publicKey, 10 * SOL);
    const bh = await c.getLatestBlockhash();
    const r = await c.confirmTransaction({ signature: s, ...bh }, "confirmed");
    expect(r.value.err === null, "no error");
  });
  await check("web3.js", "sendAndConfirmTransaction", async () => {
    const t0 = Date.now();
    const tx = new w3.Transaction().add(
      w3.ComputeBudgetProgram.setComputeUnitPrice({ microLamports: 1000 }),
      w3.SystemProgram.transfer({ fromPubkey: payer.publicKey, toPubkey: dest, lamports: SOL }));
    sig = await w3.sendAndConfirmTransaction(c, tx, [payer]);
    const ms = Date.now() - t0;
    expect(ms < 2000, `confirmed in under 2 s (took ${ms} ms)`);
    return `${ms} ms`;
  });
  await check("web3.js", "getTransaction", async () => {
    const t = await c.getTransaction(sig, { maxSupportedTransactionVersion: 0, commitment: "confirmed" });
    expect(t && t.meta.fee === 5000 + 6, `fee 5006: 2 builtin instructions x 3,000 units x 1,000 micro-lamports (got ${t?.meta?.fee})`);
    expect(t.meta.logMessages.length > 0 && t.meta.computeUnitsConsumed > 0, "logs and units");
    expect(t.meta.postBalances[1] === SOL, "post balance of the receiver");
    slot = t.slot;
    const p = await c.getParsedTransaction(sig, { maxSupportedTransactionVersion: 0, commitment: "confirmed" });
    expect(p.transaction.message.accountKeys[0].signer === true, "parsed account keys");
  });
  await check("web3.js", "getSignaturesForAddress", async () => {
    const s = await c.getSignaturesForAddress(payer.publicKey, { limit: 10 });
    expect(s[0].signature === sig && s.length === 2, "newest first, with the airdrop");
  });
  await check("web3.js", "getBlock", async () => {
    const b = await c.getBlock(slot, { maxSupportedTransactionVersion: 0, commitment: "confirmed" });
    expect(b.transactions.some((t) => t.transaction.signatures[0] === sig), "the transaction in its block");
  });
  await check("web3.js", "getBlockTime", async () => expect((await c.getBlockTime(slot)) > 1.6e9, "a unix time"));
  await check("web3.js", "getEpochInfo", async () => expect((await c.getEpochInfo()).absoluteSlot >= slot, "slot"));
  await check("web3.js", "getEpochSchedule", async () => expect((await c.getEpochSchedule()).slotsPerEpoch > 0, "slots per epoch"));
  await check("web3.js", "getRecentPrioritizationFees", async () => {
    const f = await c.getRecentPrioritizationFees({ lockedWritableAccounts: [dest] });
    expect(f.some((x) => x.prioritizationFee === 1000), "the price paid");
  });
  await check("web3.js", "getFeeForMessage (v0 + priority)", async () => {
    const { blockhash } = await c.getLatestBlockhash();
    const msg = new w3.TransactionMessage({ payerKey: payer.publicKey, recentBlockhash: blockhash, instructions: [
      w3.ComputeBudgetProgram.setComputeUnitLimit({ units: 100000 }),
      w3.ComputeBudgetProgram.setComputeUnitPrice({ microLamports: 50000 }),
      w3.SystemProgram.transfer({ fromPubkey: payer.publicKey, toPubkey: dest, lamports: 1 })] }).compileToV0Message();
    const fee = await c.getFeeForMessage(msg);
    expect(fee.value === 5000 + 5000, `fee 10000 (got ${fee.value})`);
  });
  await check("web3.js", "simulateTransaction", async () => {
    const msg = new w3.TransactionMessage({ payerKey: payer.publicKey, recentBlockhash: "11111111111111111111111111111111",
      instructions: [w3.SystemProgram.transfer({ fromPubkey: payer.publicKey, toPubkey: dest, lamports: 1 })] }).compileToV0Message();
    const r = await c.simulateTransaction(new w3.VersionedTransaction(msg), { sigVerify: false, replaceRecentBlockhash: true });
    expect(r.value.err === null && r.value.unitsConsumed > 0 && r.value.logs.length > 0, "logs and units");
  });
  await check("web3.js", "getAccountInfo dataSlice", async () => {
    const a = await c.getAccountInfo(payer.publicKey, { dataSlice: { offset: 0, length: 0 } });
    expect(a.lamports > 0 && a.data.length === 0, "sliced");
  });
  await check("web3.js", "getGenesisHash", async () => expect(w3.PublicKey.isOnCurve || (await c.getGenesisHash()).length >= 43, "32-byte hash"));
  await check("web3.js", "send error shape", async () => {
    const tx = new w3.Transaction().add(w3.SystemProgram.transfer({ fromPubkey: payer.publicKey, toPubkey: dest, lamports: 1000 * SOL }));
    try { await w3.sendAndConfirmTransaction(c, tx, [payer]); } catch (e) {
      expect(e instanceof w3.SendTransactionError, "SendTransactionError");
      expect(String(e.message).includes("custom program error: 0x1"), `validator wording (${e.message})`);
      return;
    }
    throw new Error("a transfer beyond the balance succeeded");
  });
  await check("web3.js", "onAccountChange / onLogs / onSlotChange / onProgramAccountChange", async () => {
    const got = new Set();
    const ids = [
      c.onAccountChange(dest, () => got.add("account"), { commitment: "confirmed" }),
      c.onLogs(dest, () => got.add("logs"), "confirmed"),
      c.onProgramAccountChange(w3.SystemProgram.programId, () => got.add("program"), { commitment: "confirmed" }),
    ];
    const slotId = c.onSlotChange(() => got.add("slot"));
    await new Promise((r) => setTimeout(r, 500));
    await w3.sendAndConfirmTransaction(c, new w3.Transaction().add(
      w3.SystemProgram.transfer({ fromPubkey: payer.publicKey, toPubkey: dest, lamports: 5 })), [payer]);
    for (let i = 0; i < 50 && got.size < 4; i++) await new Promise((r) => setTimeout(r, 100));
    await c.removeAccountChangeListener(ids[0]);
    await c.removeOnLogsListener(ids[1]);
    await c.removeProgramAccountChangeListener(ids[2]);
    await c.removeSlotChangeListener(slotId);
    expect(got.size === 4, `all four notifications (got ${[...got]})`);
  });
}

function transferIx(from, to, amount) {
  const data = new Uint8Array(12);
  const v = new DataView(data.buffer);
  v.setUint32(0, 2, true);
  v.setBigUint64(4, BigInt(amount), true);
  return { programAddress: kit.address("11111111111111111111111111111111"), data,
    accounts: [{ address: from.address, role: kit.AccountRole.WRITABLE_SIGNER, signer: from },
               { address: to, role: kit.AccountRole.WRITABLE }] };
}

async function transferMessage(rpc, payer, dest, amount) {
  const { value: bh } = await rpc.getLatestBlockhash().send();
  return kit.pipe(kit.createTransactionMessage({ version: 0 }),
    (m) => kit.setTransactionMessageFeePayerSigner(payer, m),
    (m) => kit.setTransactionMessageLifetimeUsingBlockhash(bh, m),
    (m) => kit.appendTransactionMessageInstruction(transferIx(payer, dest, amount), m));
}

async function kitChecks() {
  const rpc = kit.createSolanaRpc(rpcUrl);
  const subs = kit.createSolanaRpcSubscriptions(wsUrl);
  const payer = await kit.generateKeyPairSigner();
  const dest = (await kit.generateKeyPairSigner()).address;
  let sig, slot;
  await check("kit", "airdrop (requestAirdrop + signatureNotifications)", async () => {
    await kit.airdropFactory({ rpc, rpcSubscriptions: subs })({ recipientAddress: payer.address,
      lamports: kit.lamports(10n * BigInt(SOL)), commitment: "confirmed" });
  });
  const ac = new AbortController();
  const seen = new Set();
  await check("kit", "account/logs/program/slot notifications", async () => {
    const streams = [
      ["account", await subs.accountNotifications(dest, { commitment: "confirmed" }).subscribe({ abortSignal: ac.signal })],
      ["logs", await subs.logsNotifications({ mentions: [dest] }, { commitment: "confirmed" }).subscribe({ abortSignal: ac.signal })],
      ["program", await subs.programNotifications(kit.address("11111111111111111111111111111111"), { commitment: "confirmed", encoding: "base64" }).subscribe({ abortSignal: ac.signal })],
      ["slot", await subs.slotNotifications().subscribe({ abortSignal: ac.signal })],
    ];
    for (const [name, it] of streams) (async () => { for await (const _ of it) { seen.add(name); break; } })().catch(() => {});
  });
  await check("kit", "sendAndConfirmTransaction", async () => {
    const msg = await transferMessage(rpc, payer, dest, SOL);
    const tx = await kit.signTransactionMessageWithSigners(msg);
    const t0 = Date.now();
    await kit.sendAndConfirmTransactionFactory({ rpc, rpcSubscriptions: subs })(tx, { commitment: "confirmed" });
    sig = kit.getSignatureFromTransaction(tx);
    const ms = Date.now() - t0;
    expect(ms < 2000, `confirmed in under 2 s (took ${ms} ms)`);
    return `${ms} ms`;
  });
  await check("kit", "notifications arrived", async () => {
    for (let i = 0; i < 50 && seen.size < 4; i++) await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    expect(seen.size === 4, `all four (got ${[...seen]})`);
  });
  await check("kit", "getTransaction", async () => {
    const t = await rpc.getTransaction(sig, { maxSupportedTransactionVersion: 0, commitment: "confirmed", encoding: "json" }).send();
    expect(t && t.meta.fee === 5000n && t.version === 0, "fee and version");
    slot = t.slot;
    const b = await rpc.getTransaction(sig, { maxSupportedTransactionVersion: 0, commitment: "confirmed", encoding: "base64" }).send();
    expect(b.transaction[1] === "base64", "base64");
  });
  await check("kit", "getSignaturesForAddress", async () => {
    const s = await rpc.getSignaturesForAddress(payer.address, { limit: 5 }).send();
    expect(s[0].signature === sig, "newest first");
  });
  await check("kit", "getBlock", async () => {
    const b = await rpc.getBlock(slot, { maxSupportedTransactionVersion: 0, transactionDetails: "signatures", rewards: false }).send();
    expect(b.signatures.includes(sig), "signature in block");
  });
  await check("kit", "getBlockTime", async () => expect((await rpc.getBlockTime(slot).send()) > 1600000000n, "a unix time"));
  await check("kit", "getEpochInfo", async () => expect((await rpc.getEpochInfo().send()).absoluteSlot >= slot, "slot"));
  await check("kit", "getEpochSchedule", async () => expect((await rpc.getEpochSchedule().send()).slotsPerEpoch > 0n, "schedule"));
  await check("kit", "getIdentity", async () => expect(kit.isAddress((await rpc.getIdentity().send()).identity), "an address"));
  await check("kit", "getRecentPrioritizationFees", async () => expect(Array.isArray(await rpc.getRecentPrioritizationFees([dest]).send()), "a list"));
  await check("kit", "getFeeForMessage", async () => {
    const msg = await transferMessage(rpc, payer, dest, 1);
    const bytes = kit.getCompiledTransactionMessageEncoder().encode(kit.compileTransactionMessage(msg));
    const fee = await rpc.getFeeForMessage(kit.getBase64Decoder().decode(bytes)).send();
    expect(fee.value === 5000n, `5000 (got ${fee.value})`);
  });
  await check("kit", "simulateTransaction", async () => {
    const msg = await transferMessage(rpc, payer, dest, 1);
    const tx = await kit.signTransactionMessageWithSigners(msg);
    const r = await rpc.simulateTransaction(kit.getBase64EncodedWireTransaction(tx),
      { encoding: "base64", sigVerify: true, accounts: { encoding: "base64", addresses: [dest] } }).send();
    expect(r.value.err === null && r.value.unitsConsumed > 0n && r.value.accounts[0].lamports === BigInt(SOL) + 1n, "units and post state");
  });
  await check("kit", "getAccountInfo base64+zstd / dataSlice", async () => {
    const z = await rpc.getAccountInfo(payer.address, { encoding: "base64+zstd" }).send();
    expect(z.value.data[1] === "base64+zstd", "zstd");
    const s = await rpc.getAccountInfo(payer.address, { encoding: "base64", dataSlice: { offset: 0, length: 0 } }).send();
    expect(s.value.data[0] === "", "sliced");
  });
  await check("kit", "error shape", async () => {
    const msg = await transferMessage(rpc, payer, dest, 1000 * SOL);
    const tx = await kit.signTransactionMessageWithSigners(msg);
    try { await rpc.sendTransaction(kit.getBase64EncodedWireTransaction(tx), { encoding: "base64" }).send(); } catch (e) {
      expect(kit.isSolanaError(e, kit.SOLANA_ERROR__JSON_RPC__SERVER_ERROR_SEND_TRANSACTION_PREFLIGHT_FAILURE), `preflight failure (${e.message})`);
      const cause = e.cause;
      expect(kit.isSolanaError(cause, kit.SOLANA_ERROR__INSTRUCTION_ERROR__CUSTOM), `custom program error cause (${cause?.message})`);
      return;
    }
    throw new Error("a transfer beyond the balance succeeded");
  });
}

await web3();
await kitChecks();
for (const r of results) console.log(JSON.stringify(r));
process.exit(0);
