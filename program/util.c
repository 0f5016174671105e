/* Account checks, PDA handling, CPIs and lamport moves shared by every instruction. */
#include "market.h"

static const SolPubkey SYSTEM_PROGRAM = {{0}};

uint64_t ctx_init(Ctx *c, const SolParameters *p, uint64_t n_accounts) {
  c->p = p;
  if (p->ka_num < n_accounts) return E_NOT_ENOUGH_ACCOUNTS;
  SolClock clock;
  if (sol_get_clock_sysvar(&clock)) return E_BAD_SYSVAR;
  c->slot = clock.slot;
  return 0;
}

uint64_t read_args(const Ctx *c, void *out, uint64_t size, const uint8_t **rest, uint64_t *rest_len) {
  const SolParameters *p = c->p;
  if (p->data_len < 1 + size) return E_INVALID_INSTRUCTION;
  if (size) sol_memcpy_(out, p->data + 1, size);
  if (rest) {
    *rest = p->data + 1 + size;
    *rest_len = p->data_len - 1 - size;
  } else if (p->data_len != 1 + size) {
    return E_INVALID_INSTRUCTION;
  }
  return 0;
}

uint64_t check_pda(const Ctx *c, const SolAccountInfo *a, const SolSignerSeed *seeds, int n) {
  SolPubkey expect;
  if (sol_create_program_address(seeds, n, c->p->program_id, &expect)) return E_BAD_PDA;
  return pubkey_eq(&expect, a->key) ? 0 : E_BAD_PDA;
}

uint64_t find_pda(const Ctx *c, const SolAccountInfo *a, const SolSignerSeed *seeds, int n, uint8_t *bump) {
  SolPubkey expect;
  if (sol_try_find_program_address(seeds, n, c->p->program_id, &expect, bump)) return E_BAD_PDA;
  return pubkey_eq(&expect, a->key) ? 0 : E_BAD_PDA;
}

uint64_t rent_exempt(uint64_t space, uint64_t *out) {
  SolRent rent;
  if (sol_get_rent_sysvar(&rent)) return E_BAD_SYSVAR;
  /* Clusters use an exemption threshold of exactly 2.0 years (older) or 1.0 with a doubled per-byte
     rate (newer). Anything else is refused rather than guessed: SBPF has no floating point. */
  uint64_t years;
  if (rent.exemption_threshold_bits == 0x4000000000000000ULL) years = 2;
  else if (rent.exemption_threshold_bits == 0x3FF0000000000000ULL) years = 1;
  else return E_BAD_SYSVAR;
  uint64_t bytes, rate = rent.lamports_per_byte_year * years;
  if (rent.lamports_per_byte_year > opaque(UINT64_MAX / years)) return E_OVERFLOW;
  TRY(add64(space, 128, &bytes)); /* ACCOUNT_STORAGE_OVERHEAD */
  if (rate && bytes > opaque(UINT64_MAX / rate)) return E_OVERFLOW;
  *out = bytes * rate;
  return 0;
}

/* System-program CPI signed by the PDA `seeds` with a single account: Allocate or Assign. */
static uint64_t pda_system_call(const Ctx *c, const CreateSpec *s, const SolSignerSeed *seeds, int n,
                                const SolBytes *data) {
  SolAccountMeta metas[1] = {{s->target->key, true, true}};
  SolInstruction ix = {s->system->key, metas, 1, (uint8_t *)data->addr, data->len};
  SolSignerSeeds signer = {seeds, (uint64_t)n};
  return sol_invoke_signed_c(&ix, c->p->ka, (int)c->p->ka_num, &signer, 1);
}

uint64_t create_pda(const Ctx *c, const CreateSpec *s, const SolSignerSeed *seeds, int n) {
  TRY(need_key(s->system, &SYSTEM_PROGRAM, E_BAD_PROGRAM));
  TRY(need_signer(s->payer));
  TRY(need_writable(s->payer));
  TRY(need_writable(s->target));
  uint64_t lamports;
  TRY(rent_exempt(s->space, &lamports));
  TRY(add64(lamports, s->extra_lamports, &lamports));
  uint64_t existing = *s->target->lamports;
  if (existing == 0) {
    uint8_t data[52];
    sol_memset_(data, 0, 4); /* SystemInstruction::CreateAccount */
    wr64(data + 4, lamports);
    wr64(data + 12, s->space);
    sol_memcpy_(data + 20, c->p->program_id, 32);
    SolAccountMeta metas[2] = {{s->payer->key, true, true}, {s->target->key, true, true}};
    SolInstruction ix = {s->system->key, metas, 2, data, sizeof(data)};
    SolSignerSeeds signer = {seeds, (uint64_t)n};
    return sol_invoke_signed_c(&ix, c->p->ka, (int)c->p->ka_num, &signer, 1);
  }
  /* Someone sent lamports to the address first (CreateAccount would refuse it, letting anyone block a
     node or job address for a few lamports). Top it up, then allocate and assign it ourselves. */
  if (!pubkey_eq(s->target->owner, &SYSTEM_PROGRAM) || s->target->data_len != 0) return E_ALREADY_INITIALIZED;
  if (existing < lamports) TRY(system_transfer(c, s->payer, s->target, s->system, lamports - existing));
  uint8_t alloc[12];
  sol_memset_(alloc, 0, 4);
  alloc[0] = 8; /* SystemInstruction::Allocate */
  wr64(alloc + 4, s->space);
  SolBytes alloc_ix = {alloc, sizeof(alloc)};
  TRY(pda_system_call(c, s, seeds, n, &alloc_ix));
  uint8_t assign[36];
  sol_memset_(assign, 0, 4);
  assign[0] = 1; /* SystemInstruction::Assign */
  sol_memcpy_(assign + 4, c->p->program_id, 32);
  SolBytes assign_ix = {assign, sizeof(assign)};
  return pda_system_call(c, s, seeds, n, &assign_ix);
}

uint64_t system_transfer(const Ctx *c, const SolAccountInfo *from, const SolAccountInfo *to,
                         const SolAccountInfo *system, uint64_t lamports) {
  TRY(need_key(system, &SYSTEM_PROGRAM, E_BAD_PROGRAM));
  TRY(need_signer(from));
  TRY(need_writable(from));
  TRY(need_writable(to));
  uint8_t data[12];
  sol_memset_(data, 0, 4);
  data[0] = 2; /* SystemInstruction::Transfer */
  wr64(data + 4, lamports);
  SolAccountMeta metas[2] = {{from->key, true, true}, {to->key, true, false}};
  SolInstruction ix = {system->key, metas, 2, data, sizeof(data)};
  return sol_invoke_signed_c(&ix, c->p->ka, (int)c->p->ka_num, NULL, 0);
}

uint64_t move_lamports(const SolAccountInfo *from, const SolAccountInfo *to, uint64_t amount) {
  TRY(need_writable(from));
  TRY(need_writable(to));
  uint64_t f, t;
  TRY(sub64(*from->lamports, amount, &f));
  TRY(add64(*to->lamports, amount, &t));
  *from->lamports = f;
  *to->lamports = t;
  return 0;
}

static uint64_t load_common(const Ctx *c, const SolAccountInfo *a, bool writable, uint64_t size, uint8_t tag) {
  TRY(need_owner(a, c->p->program_id));
  if (writable) TRY(need_writable(a));
  if (a->data_len < size || a->data[0] != tag) return E_WRONG_ACCOUNT_TYPE;
  return 0;
}

uint64_t load_config(const Ctx *c, const SolAccountInfo *a, bool writable, Config **out) {
  TRY(load_common(c, a, writable, sizeof(Config), TAG_CONFIG));
  Config *cfg = (Config *)a->data;
  SolSignerSeed seeds[2] = {{(const uint8_t *)SEED_CONFIG, SEED_CONFIG_LEN}, {&cfg->bump, 1}};
  TRY(check_pda(c, a, seeds, 2));
  *out = cfg;
  return 0;
}

uint64_t load_node(const Ctx *c, const SolAccountInfo *a, bool writable, Node **out) {
  TRY(load_common(c, a, writable, sizeof(Node), TAG_NODE));
  Node *n = (Node *)a->data;
  SolSignerSeed seeds[3] = {{(const uint8_t *)SEED_NODE, SEED_NODE_LEN}, {n->owner, 32}, {&n->bump, 1}};
  TRY(check_pda(c, a, seeds, 3));
  *out = n;
  return 0;
}

uint64_t load_model(const Ctx *c, const SolAccountInfo *a, ModelHeader **out) {
  TRY(load_common(c, a, false, sizeof(ModelHeader), TAG_MODEL));
  ModelHeader *m = (ModelHeader *)a->data;
  if (m->task_count > MAX_TASKS || a->data_len < sizeof(ModelHeader) + m->task_count * sizeof(ModelTask))
    return E_WRONG_ACCOUNT_TYPE;
  SolSignerSeed seeds[4] = {{(const uint8_t *)SEED_MODEL, SEED_MODEL_LEN}, {m->owner, 32}, {m->model_hash, 32},
                            {&m->bump, 1}};
  TRY(check_pda(c, a, seeds, 4));
  *out = m;
  return 0;
}

uint64_t load_job(const Ctx *c, const SolAccountInfo *a, bool writable, JobHeader **out) {
  TRY(load_common(c, a, writable, sizeof(JobHeader), TAG_JOB));
  JobHeader *j = (JobHeader *)a->data;
  if (j->task_count > MAX_TASKS || a->data_len < sizeof(JobHeader) + j->task_count * sizeof(TaskSlot))
    return E_WRONG_ACCOUNT_TYPE;
  SolSignerSeed seeds[4] = {{(const uint8_t *)SEED_JOB, SEED_JOB_LEN}, {j->client, 32},
                            {(const uint8_t *)&j->nonce, 8}, {&j->bump, 1}};
  TRY(check_pda(c, a, seeds, 4));
  *out = j;
  return 0;
}

uint64_t check_escrow(const Ctx *c, const SolAccountInfo *escrow, const SolAccountInfo *job, uint8_t bump) {
  TRY(need_owner(escrow, c->p->program_id));
  TRY(need_writable(escrow));
  SolSignerSeed seeds[3] = {{(const uint8_t *)SEED_ESCROW, SEED_ESCROW_LEN}, {job->key->x, 32}, {&bump, 1}};
  return check_pda(c, escrow, seeds, 3);
}

uint64_t job_task(JobHeader *j, uint64_t index, TaskSlot **out) {
  if (index >= j->task_count) return E_BAD_TASK_INDEX;
  *out = &job_tasks(j)[index];
  return 0;
}

uint64_t load_task(const Ctx *c, const SolAccountInfo *job_ai, uint64_t index, JobHeader **j, TaskSlot **t) {
  TRY(load_job(c, job_ai, true, j));
  return job_task(*j, index, t);
}

uint64_t owned_node(const Ctx *c, const SolAccountInfo *owner, const SolAccountInfo *node_ai, bool writable,
                    Node **out) {
  TRY(need_signer(owner));
  TRY(load_node(c, node_ai, writable, out));
  return pubkey_eq(owner->key, (const SolPubkey *)(*out)->owner) ? 0 : E_UNAUTHORIZED;
}

uint64_t load_owned_task(const Ctx *c, const SolAccountInfo *ka, bool node_writable, uint64_t index, OwnedTask *out) {
  TRY(owned_node(c, &ka[0], &ka[1], node_writable, &out->node));
  TRY(load_task(c, &ka[2], index, &out->job, &out->task));
  if (out->task->status != ST_ACCEPTED) return E_WRONG_TASK_STATE;
  return pubkey_eq(ka[1].key, (const SolPubkey *)out->task->node) ? 0 : E_WRONG_NODE;
}

uint64_t min_collateral(const Config *cfg, uint64_t price, uint64_t *out) {
  uint64_t scaled;
  TRY(bps_of(price, cfg->collateral_bps, &scaled));
  *out = scaled > cfg->task_collateral ? scaled : cfg->task_collateral;
  return 0;
}

uint64_t task_reward(uint64_t floor, uint64_t bps, uint64_t price, uint64_t *out) {
  uint64_t scaled;
  TRY(bps_of(price, bps, &scaled));
  *out = scaled > floor ? scaled : floor;
  return 0;
}

uint64_t lock_collateral(Node *n, const Config *cfg, uint64_t amount) {
  uint64_t free_stake, locked;
  TRY(sub64(n->stake, n->locked, &free_stake));
  if (n->stake < cfg->min_stake || free_stake < amount) return E_INSUFFICIENT_STAKE;
  TRY(add64(n->locked, amount, &locked));
  n->locked = locked;
  return 0;
}

uint64_t unlock(Node *node, uint64_t collateral) {
  return sub64(node->locked, collateral, &node->locked);
}

uint64_t payee_account(const Payee *p, uint64_t amount, const SolAccountInfo **out) {
  const SolAccountInfo *w = p->wallet;
  uint64_t after, least;
  TRY(add64(*w->lamports, amount, &after));
  if (!w->executable) {
    if (after == 0) { *out = w; return 0; }
    TRY(rent_exempt(w->data_len, &least));
    if (after >= least) { *out = w; return 0; }
  }
  TRY(add64(p->node->unbonding, amount, &p->node->unbonding)); /* withdrawable (ix_withdraw) */
  *out = p->node_ai;
  return 0;
}

uint64_t slash(Slash *s) {
  uint64_t amount;
  TRY(bps_of(s->collateral, s->slash_bps, &amount));
  if (amount > s->node->stake) amount = s->node->stake;
  TRY(unlock(s->node, s->collateral));
  TRY(sub64(s->node->stake, amount, &s->node->stake));
  const SolAccountInfo *dest = s->dest;
  if (s->payee) TRY(payee_account(s->payee, amount, &dest));
  TRY(move_lamports(s->node_ai, dest, amount));
  s->amount = amount;
  return 0;
}
