/* Blame with evidence: statements signed by a node owner's ed25519 key (its Solana wallet key), verified
   by the runtime's Ed25519 precompile in the instruction just before ours and read back through the
   Instructions sysvar. A receipt (the receiver of a task's input says it got it) makes a missed deadline
   the node's liveness fault; a hand-off (the sender of one call's output says what it sent) that
   contradicts what the sender's commitment binds for that call is provable cheating. Messages:
   splitup.market.evidence; the commitment's call tree: splitup.market.calls. */
#include "market.h"

/* Sysvar1nstructions1111111111111111111111111 */
static const SolPubkey INSTRUCTIONS = {{6, 167, 213, 23, 24, 123, 209, 102, 53, 218, 212, 4, 85, 253, 194, 192,
                                        193, 36, 198, 143, 33, 86, 117, 165, 219, 186, 203, 95, 8, 0, 0, 0}};
/* Ed25519SigVerify111111111111111111111111111 */
static const SolPubkey ED25519 = {{3, 125, 70, 214, 124, 147, 251, 190, 18, 249, 66, 143, 131, 141, 64, 255,
                                   5, 112, 116, 73, 39, 244, 138, 100, 252, 202, 112, 68, 128, 0, 0, 0}};
/* the precompile's "in this instruction's own data" */
#define SELF_IX 0xFFFF
#define STATEMENT_LEN (RECEIPT_DOMAIN_LEN + 32 + 32 + 8 + 32) /* a hand-off adds the call (u64) */
_Static_assert(RECEIPT_DOMAIN_LEN == HANDOFF_DOMAIN_LEN, "statement domains");

static uint64_t rd16(const uint8_t *p) { return (uint64_t)p[0] | ((uint64_t)p[1] << 8); }

static bool bytes_eq(const uint8_t *a, const uint8_t *b, uint64_t n) {
  int r = 0;
  sol_memcmp_(a, b, n, &r);
  return r == 0;
}

/* Program id and data of the instruction before the current one, from the Instructions sysvar:
   u16 count, u16 offsets[count], each instruction (u16 accounts, 33 bytes each, program id, u16 length,
   data), and last the u16 index of the instruction executing. Every length is checked against the
   account, so a short or lying sysvar reads as no evidence. */
static uint64_t previous_instruction(const SolAccountInfo *sv, const uint8_t **program, const uint8_t **data,
                                     uint64_t *len) {
  if (!pubkey_eq(sv->key, &INSTRUCTIONS)) return E_BAD_SYSVAR;
  const uint8_t *d = sv->data;
  uint64_t n = sv->data_len;
  if (n < 4) return E_BAD_SYSVAR;
  uint64_t count = rd16(d), current = rd16(d + n - 2);
  if (current == 0 || current >= count || 2 + 2 * count > n) return E_BAD_EVIDENCE;
  uint64_t off = rd16(d + 2 + 2 * (current - 1));
  if (off + 2 > n) return E_BAD_SYSVAR;
  off += 2 + rd16(d + off) * 33;
  if (off + 34 > n) return E_BAD_SYSVAR;
  *program = d + off;
  *len = rd16(d + off + 32);
  off += 34;
  if (off + *len > n) return E_BAD_SYSVAR;
  *data = d + off;
  return 0;
}

/* The precompile verified exactly one signature, by `signer`, over exactly `msg`, all read from its own
   data (offsets into other instructions could make it verify something other than what we read). */
static uint64_t check_signed(const SolAccountInfo *sv, const uint8_t *signer, const uint8_t *msg, uint64_t msg_len) {
  const uint8_t *program, *data;
  uint64_t len;
  TRY(previous_instruction(sv, &program, &data, &len));
  if (!bytes_eq(program, ED25519.x, 32)) return E_BAD_EVIDENCE;
  if (len < 16 || data[0] != 1) return E_BAD_EVIDENCE;
  const uint8_t *o = data + 2; /* signature, its ix, pubkey, its ix, message, its size, its ix */
  if (rd16(o + 2) != SELF_IX || rd16(o + 6) != SELF_IX || rd16(o + 12) != SELF_IX) return E_BAD_EVIDENCE;
  uint64_t pk = rd16(o + 4), m = rd16(o + 8), m_len = rd16(o + 10);
  if (pk + 32 > len || m + m_len > len || m_len != msg_len) return E_BAD_EVIDENCE;
  if (!bytes_eq(data + pk, signer, 32) || !bytes_eq(data + m, msg, msg_len)) return E_BAD_EVIDENCE;
  return 0;
}

/* domain || program id || job || task index (u64 LE) || [call index (u64 LE), hand-offs] || sha256 of the
   bytes: bound to this deployment, this job, this task (and call), so it cannot be replayed elsewhere. */
typedef struct {
  const char *domain;
  const SolPubkey *job;
  uint64_t index;
  const uint64_t *call; /* NULL for a receipt */
  const uint8_t *hash;
  const uint8_t *signer;
} Statement;

static uint64_t check_statement(const Ctx *c, const SolAccountInfo *sv, const Statement *s) {
  uint8_t msg[STATEMENT_LEN + 8];
  uint64_t n = RECEIPT_DOMAIN_LEN;
  sol_memcpy_(msg, s->domain, n);
  sol_memcpy_(msg + n, c->p->program_id, 32);
  sol_memcpy_(msg + n + 32, s->job, 32);
  wr64(msg + n + 64, s->index);
  n += 72;
  if (s->call) {
    wr64(msg + n, *s->call);
    n += 8;
  }
  sol_memcpy_(msg + n, s->hash, 32);
  return check_signed(sv, s->signer, msg, n + 32);
}

/* ---- the commitment's call tree (splitup.market.calls). sol_sha256 reads every part before it writes the
   result, so a hash may be folded into itself. */
/* H(0x00 || CALL_DOMAIN || u64 call || digest) */
static void call_leaf(uint64_t call, const uint8_t *digest, uint8_t *out) {
  static const uint8_t LEAF = 0;
  uint8_t le[8];
  wr64(le, call);
  SolBytes parts[] = {{&LEAF, 1}, {(const uint8_t *)CALL_DOMAIN, CALL_DOMAIN_LEN}, {le, 8}, {digest, 32}};
  sol_sha256(parts, 4, out);
}

/* The commitment the opening in `a` (and the `path_len` siblings at `path`, leaf first) opens:
   H(COMMIT_DOMAIN || u64 count || root || body). A committed call needs exactly depth(count) siblings; a
   call at or beyond the count gives the root itself and none. */
static uint64_t opened_commitment(const HandoffArgs *a, const uint8_t *path, uint64_t path_len, uint8_t *out) {
  if (a->count == 0 || a->count > MAX_CALLS || path_len % 32) return E_BAD_OPENING;
  uint64_t depth = 0;
  while ((1ULL << depth) < a->count) depth++;
  uint8_t h[32];
  if (a->call >= a->count) {
    if (path_len) return E_BAD_OPENING;
    sol_memcpy_(h, a->committed, 32);
  } else {
    if (path_len != depth * 32) return E_BAD_OPENING;
    static const uint8_t NODE = 1;
    call_leaf(a->call, a->committed, h);
    uint64_t index = a->call;
    for (uint64_t i = 0; i < depth; i++, index >>= 1) {
      const uint8_t *sibling = path + 32 * i;
      SolBytes parts[] = {{&NODE, 1}, {index & 1 ? sibling : h, 32}, {index & 1 ? h : sibling, 32}};
      sol_sha256(parts, 3, h);
    }
  }
  uint8_t count[8];
  wr64(count, a->count);
  SolBytes parts[] = {{(const uint8_t *)COMMIT_DOMAIN, COMMIT_DOMAIN_LEN}, {count, 8}, {h, 32}, {a->body, 32}};
  sol_sha256(parts, 4, out);
  return 0;
}

/* accounts: 0 job (w), 1 the task's node, 2 Instructions sysvar; instruction before: the Ed25519 check of
   the node owner's receipt. Permissionless (the client, or the sender of the input, holds the receipt).
   From now on the node cannot say it was never fed: the client cannot release the task from under it,
   and a missed deadline costs the node the liveness penalty. */
uint64_t ix_prove_receipt(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  HashArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  JobHeader *j;
  TaskSlot *t;
  Node *n;
  TRY(load_task(c, &ka[0], a.index, &j, &t));
  TRY(load_node(c, &ka[1], false, &n));
  if (t->status != ST_ACCEPTED) return E_WRONG_TASK_STATE;
  if (!pubkey_eq(ka[1].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
  if (t->received) return E_INPUT_RECEIVED;
  Statement st = {RECEIPT_DOMAIN, ka[0].key, a.index, NULL, a.hash, n->owner};
  TRY(check_statement(c, &ka[2], &st));
  t->received = 1;
  return 0;
}

/* accounts: 0 job (w), 1 the sender's node (w), 2 config (w), 3 Instructions sysvar, 4 the task's validator
   node (w; the sender's node again when none); instruction before: the Ed25519 check of the sender
   owner's hand-off of call `a.call`; data: HandoffArgs, then the Merkle path. Permissionless, within
   handoff_slots of the commitment (settle waits that long). The opening shows what the sender committed
   for that call: a digest other than the one it signed, or no such call at all, is a lie. The sender is
   slashed handoff_slash_bps of its collateral (to the treasury), unpaid, and its task fails (the client is
   refunded); a validator already on the task is released unslashed. The receiver is not touched. An
   honest sender signs, for each call, exactly the digest it commits: nothing opens to anything else. */
uint64_t ix_prove_handoff(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  HandoffArgs a;
  const uint8_t *path;
  uint64_t path_len;
  TRY(read_args(c, &a, sizeof(a), &path, &path_len));
  JobHeader *j;
  TaskSlot *t;
  Node *n;
  Config *cfg;
  TRY(load_task(c, &ka[0], a.index, &j, &t));
  TRY(load_node(c, &ka[1], true, &n));
  TRY(load_config(c, &ka[2], true, &cfg));
  if (t->status < ST_COMMITTED || t->status > ST_RESOLVED) return E_WRONG_TASK_STATE;
  if (!pubkey_eq(ka[1].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
  uint64_t until;
  TRY(add64(t->committed_slot, j->handoff_slots, &until));
  if (c->slot > until) return E_TOO_LATE;
  Statement st = {HANDOFF_DOMAIN, ka[0].key, a.index, &a.call, a.digest, n->owner};
  TRY(check_statement(c, &ka[3], &st));
  uint8_t opened[32];
  TRY(opened_commitment(&a, path, path_len, opened));
  if (!bytes_eq(opened, t->commitment, 32)) return E_BAD_OPENING;
  if (a.call < a.count && bytes_eq(a.digest, a.committed, 32)) return E_NO_MISMATCH;
  static const SolPubkey NONE = {{0}};
  if (!pubkey_eq((const SolPubkey *)t->validator, &NONE)) {
    Node *v;
    TRY(load_node(c, &ka[4], true, &v));
    if (!pubkey_eq(ka[4].key, (const SolPubkey *)t->validator)) return E_WRONG_NODE;
    TRY(unlock(v, t->validator_collateral));
  }
  Slash sl = {&ka[1], n, &ka[2], t->collateral, cfg->handoff_slash_bps, 0};
  TRY(slash(&sl));
  TRY(add64(cfg->treasury, sl.amount, &cfg->treasury));
  TRY(add64(n->failed, 1, &n->failed));
  n->ever_failed = 1;
  n->since_failure = 0;
  t->status = ST_FAILED;
  return add64(j->closed_tasks, 1, &j->closed_tasks);
}
