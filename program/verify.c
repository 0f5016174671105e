/* Proof of Sampling: the task rate fixed at commit, the draw, the on-chain choice of validator, verdicts
   with proof of re-execution, and arbitration. */
#include "market.h"

/* SysvarS1otHashes111111111111111111111111111 */
static const SolPubkey SLOT_HASHES = {{6, 167, 213, 23, 25, 47, 10, 175, 198, 242, 101, 227, 251, 119, 204, 122,
                                       218, 130, 197, 41, 208, 190, 59, 19, 110, 45, 0, 85, 32, 0, 0, 0}};

/* The hash of the first slot after `after`. Using that fixed slot, not the newest one, means whoever
   calls `sample` cannot wait for a favourable hash: the outcome was fixed one slot after the commitment
   and unknowable when it was made. Returns E_TOO_EARLY if no such slot exists yet; *missing is set when
   the sysvar no longer reaches back that far (the caller then verifies, failing safe). */
static uint64_t slot_hash_after(const SolAccountInfo *sysvar, uint64_t after, const uint8_t **hash, bool *missing) {
  if (!pubkey_eq(sysvar->key, &SLOT_HASHES) || sysvar->data_len < 8) return E_BAD_SYSVAR;
  uint64_t n = rd64(sysvar->data);
  if (n > (sysvar->data_len - 8) / 40) return E_BAD_SYSVAR;
  const uint8_t *best = NULL;
  uint64_t i = 0;
  for (; i < n; i++) { /* newest first */
    const uint8_t *e = sysvar->data + 8 + i * 40;
    if (rd64(e) <= after) break;
    best = e + 8;
  }
  if (!best) return E_TOO_EARLY;
  *missing = (i == n && n > 0 && rd64(sysvar->data + 8 + (n - 1) * 40) > after + 1);
  *hash = best;
  return 0;
}

/* extra >> (credits / half_life), 0 once the shift reaches 63: splitup.verify.sampling._decayed */
static uint64_t decayed(uint64_t extra, uint64_t credits, uint64_t half_life) {
  uint64_t shift = credits / half_life;
  return shift >= 63 ? 0 : extra >> shift;
}

/* The node's reputation rate, docs/posp.md "Adaptive rate" (SamplingPolicy.rate_bps), with the job's
   snapshot of the policy: base + max(new-node extra, failed-verdict extra), decaying with reputation
   credits (verified work other parties paid for), never with tasks a node could buy from itself. */
static uint64_t adaptive_rate(const JobHeader *j, const Node *n) {
  uint64_t base = j->verify_rate_bps;
  uint64_t extra = decayed(j->new_node_bps - base, n->reputation, j->new_node_half_life);
  if (n->ever_failed) {
    uint64_t f = decayed(j->failed_bps - base, n->since_failure, j->failed_half_life);
    if (f > extra) extra = f;
  }
  return base + extra;
}

/* The least rate at which cheating on this task loses money (docs/posp.md "The rule the program
   applies"): with R the price, S = collateral * slash_bps the stake at risk and r the collusion
   allowance, a cheat saving at most C = R is caught with probability p (1 - r) and then loses R + S, so
   p (1 - r) (R + S) > R. Rounded so the inequality holds strictly on the integers. */
static uint64_t sound_rate(const JobHeader *j, const TaskSlot *t, uint64_t *out) {
  uint64_t at_risk, total, caught, scaled;
  TRY(bps_of(t->collateral, j->slash_bps, &at_risk));
  TRY(add64(t->price, at_risk, &total));
  TRY(bps_of(total, BPS - j->collusion_bps, &caught)); /* (R + S)(1 - r), rounded down */
  if (caught == 0) { *out = BPS; return 0; }
  /* R * BPS; a price too large for that (over 184 SOL a task) is simply always verified */
  if (bps_of(t->price, BPS * BPS, &scaled)) { *out = BPS; return 0; }
  uint64_t p = scaled / caught + 1;
  *out = p > BPS ? BPS : p;
  return 0;
}

uint64_t task_rate(const JobHeader *j, const Node *n, const TaskSlot *t, uint64_t *out) {
  uint64_t floor;
  TRY(sound_rate(j, t, &floor));
  uint64_t rate = adaptive_rate(j, n);
  *out = rate > floor ? rate : floor;
  return 0;
}

/* accounts: 0 job (w), 1 SlotHashes sysvar. Permissionless. The coin mixes the hash of the first slot
   after the commitment with the client's secret (committed with the job, revealed after the result was
   committed), so neither the executor, nor the client alone, nor the slot's leader can steer it. The
   rate is the one fixed at commit. Without a usable secret (not revealed within reveal_slots, or revealed
   before this result was committed) the task is verified: failing safe. */
uint64_t ix_sample(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TaskArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  JobHeader *j;
  TaskSlot *t;
  TRY(load_job(c, &ka[0], true, &j));
  TRY(job_task(j, a.index, &t));
  if (t->status != ST_COMMITTED) return E_WRONG_TASK_STATE;
  const uint8_t *slot_hash;
  bool missing = false;
  TRY(slot_hash_after(&ka[1], t->committed_slot, &slot_hash, &missing));
  bool secret_ok = j->revealed_slot != 0 && t->committed_slot < j->revealed_slot;
  if (!j->revealed_slot) {
    uint64_t wait_until;
    TRY(add64(t->committed_slot, j->reveal_slots, &wait_until));
    if (c->slot <= wait_until) return E_TOO_EARLY; /* the client may still reveal */
  }
  /* the coin of docs/posp.md ("Sampling rule"): sha256(slot_hash || commitment || secret) */
  uint8_t h[32];
  SolBytes parts[3] = {{slot_hash, 32}, {t->commitment, 32}, {j->secret, 32}};
  sol_sha256(parts, 3, h);
  uint64_t rate = t->rate_bps;
  uint64_t draw = rd64(h) % BPS;
  bool fail_safe = missing || !secret_ok;
  t->draw = draw;
  /* a market that verifies nothing (rate 0) never verifies; otherwise no usable coin means "verify" */
  t->sampled = rate > 0 && (fail_safe || draw < rate);
  t->status = t->sampled ? ST_SAMPLED : ST_READY;
  /* validators have the config's window to take the check up (else `expire` pays the node unverified) */
  if (t->sampled) {
    TRY(add64(c->slot, j->validator_timeout_slots, &t->deadline));
    t->sampled_slot = c->slot;
  }
  return 0;
}

/* Whether the node declared (`specialize`) the task id: it holds that task's weights. */
static bool holds_task(const Node *n, const uint8_t *task_id) {
  uint64_t count = n->special_count < MAX_SPECIALIZED ? n->special_count : MAX_SPECIALIZED;
  for (uint64_t i = 0; i < count; i++)
    if (pubkey_eq((const SolPubkey *)(n->specialized + i * 32), (const SolPubkey *)task_id)) return true;
  return false;
}

/* The on-chain choice among the task's holders: each holder gets a ticket, sha256(draw seed || node)
   mod BPS, and may take the task up once the ramp has opened that far: ticket * ramp < (elapsed + 1) *
   BPS. The lowest ticket among the holders watching gets it first, so the validator is a random holder
   that neither the node nor the client picks; after `validator_ramp_slots` every holder may. */
static uint64_t drawn(const JobHeader *j, const TaskSlot *t, const SolPubkey *node, uint64_t slot) {
  if (j->validator_ramp_slots == 0) return 0;
  uint8_t h[32];
  SolBytes parts[3] = {{t->commitment, 32}, {(const uint8_t *)&t->draw, 8}, {node->x, 32}};
  sol_sha256(parts, 3, h);
  uint64_t ticket = rd64(h) % BPS, elapsed;
  TRY(sub64(slot, t->sampled_slot, &elapsed));
  if (elapsed >= j->validator_ramp_slots) return 0;
  return ticket * j->validator_ramp_slots < (elapsed + 1) * BPS ? 0 : E_NOT_DRAWN;
}

/* accounts: 0 validator owner (signer), 1 validator node (w), 2 job (w), 3 config, 4 the job's model */
uint64_t ix_assign_validator(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TaskArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *v;
  JobHeader *j;
  Config *cfg;
  ModelHeader *m;
  TaskSlot *t;
  TRY(need_signer(&ka[0]));
  TRY(load_node(c, &ka[1], true, &v));
  TRY(load_job(c, &ka[2], true, &j));
  TRY(load_config(c, &ka[3], false, &cfg));
  TRY(load_model(c, &ka[4], &m));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)v->owner)) return E_UNAUTHORIZED;
  if (!pubkey_eq(ka[4].key, (const SolPubkey *)j->model)) return E_WRONG_ACCOUNT_TYPE;
  TRY(job_task(j, a.index, &t));
  if (t->status != ST_SAMPLED) return E_WRONG_TASK_STATE;
  /* one node per owner (the PDA is seeded by the owner), so a different node is a different owner */
  if (pubkey_eq(ka[1].key, (const SolPubkey *)t->node)) return E_SELF_VALIDATION;
  if (pubkey_eq(ka[0].key, (const SolPubkey *)j->client)) return E_SELF_VALIDATION;
  /* the validator re-executes the task, so it must hold it (docs/posp.md: "among staked nodes holding
     that task"); a job's task count equals its model's (post_job), the bound is checked anyway */
  if (a.index >= m->task_count) return E_BAD_TASK_INDEX;
  if (!holds_task(v, model_tasks(m)[a.index].task_id)) return E_NOT_SPECIALIZED;
  TRY(drawn(j, t, ka[1].key, c->slot));
  /* a holder that stopped heartbeating is not drawn: it has to say it is alive again first */
  if (cfg->heartbeat_window_slots && c->slot - v->last_heartbeat > cfg->heartbeat_window_slots)
    return E_STALE_HEARTBEAT;
  uint64_t deadline;
  TRY(lock_collateral(v, cfg, cfg->task_collateral));
  TRY(add64(c->slot, j->validator_timeout_slots, &deadline));
  sol_memcpy_(t->validator, ka[1].key, 32);
  t->validator_collateral = cfg->task_collateral;
  t->deadline = deadline;
  t->status = ST_VALIDATING;
  return 0;
}

/* accounts: 0 validator owner (signer), 1 validator node, 2 job (w) */
uint64_t ix_submit_verdict(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  VerdictArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *v;
  JobHeader *j;
  TaskSlot *t;
  TRY(need_signer(&ka[0]));
  TRY(load_node(c, &ka[1], false, &v));
  TRY(load_job(c, &ka[2], true, &j));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)v->owner)) return E_UNAUTHORIZED;
  TRY(job_task(j, a.index, &t));
  if (t->status != ST_VALIDATING) return E_WRONG_TASK_STATE;
  if (!pubkey_eq(ka[1].key, (const SolPubkey *)t->validator)) return E_WRONG_NODE;
  if (c->slot > t->deadline) return E_TOO_LATE;
  if (a.agree > 1) return E_INVALID_INSTRUCTION;
  /* The validator's own work digest (of the state its re-execution produced, which never leaves a node)
     opens the seal the executor committed with its result only if it really re-executed: an "agree"
     without that proof pays no validator reward (settle). */
  uint8_t h[32];
  SolBytes part = {a.result_hash, 32};
  sol_sha256(&part, 1, h);
  t->proved = pubkey_eq((const SolPubkey *)h, (const SolPubkey *)t->seal);
  t->verdict = a.agree ? VERDICT_AGREE : VERDICT_DISAGREE;
  t->status = a.agree ? ST_READY : ST_DISPUTED;
  /* the arbiter has the config's window to decide (else `expire` releases both sides unslashed) */
  if (!a.agree) TRY(add64(c->slot, j->arbiter_timeout_slots, &t->deadline));
  return 0;
}

/* accounts: 0 arbiter = config authority (signer), 1 config, 2 job (w) */
uint64_t ix_arbitrate(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  ArbitrateArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Config *cfg;
  JobHeader *j;
  TaskSlot *t;
  TRY(need_signer(&ka[0]));
  TRY(load_config(c, &ka[1], false, &cfg));
  TRY(load_job(c, &ka[2], true, &j));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)cfg->authority)) return E_UNAUTHORIZED;
  TRY(job_task(j, a.index, &t));
  if (t->status != ST_DISPUTED) return E_WRONG_TASK_STATE;
  if (a.node_honest > 1) return E_INVALID_INSTRUCTION;
  t->arbitration = a.node_honest ? ARB_NODE_HONEST : ARB_NODE_CHEATED;
  t->status = ST_RESOLVED;
  return 0;
}
