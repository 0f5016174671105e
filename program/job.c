/* Jobs: escrowed payment for every task of a model, task acceptance with collateral, result commitments,
   expiry of late work and the final refund. */
#include "market.h"

/* The most a task can cost the escrow: its price, the protocol fee on it and one validator reward. */
static uint64_t task_budget(uint64_t price, uint64_t fee_bps, uint64_t reward, uint64_t *out) {
  uint64_t fee, total;
  TRY(bps_of(price, fee_bps, &fee));
  TRY(add64(price, fee, &total));
  return add64(total, reward, out);
}

/* accounts: 0 client (signer, w), 1 job PDA (w), 2 escrow PDA (w), 3 model, 4 config, 5 system program */
uint64_t ix_post_job(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  PostJobArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  ModelHeader *m;
  Config *cfg;
  TRY(load_model(c, &ka[3], &m));
  TRY(load_config(c, &ka[4], false, &cfg));
  if (m->filled != m->task_count) return E_MODEL_INCOMPLETE;
  if (a.deadline_slots == 0 || a.task_timeout_slots == 0) return E_INVALID_PARAMETER;
  uint64_t required = 0;
  for (uint64_t i = 0; i < m->task_count; i++) {
    uint64_t b;
    TRY(task_budget(model_tasks(m)[i].price, cfg->protocol_fee_bps, cfg->validator_reward, &b));
    TRY(add64(required, b, &required));
  }
  if (a.max_fee < required) return E_INSUFFICIENT_FEE;
  uint64_t deadline;
  TRY(add64(c->slot, a.deadline_slots, &deadline));

  uint8_t bump, escrow_bump;
  SolSignerSeed jseeds[4] = {{(const uint8_t *)SEED_JOB, SEED_JOB_LEN}, {ka[0].key->x, 32},
                             {(const uint8_t *)&a.nonce, 8}, {&bump, 1}};
  TRY(find_pda(c, &ka[1], jseeds, 3, &bump));
  SolSignerSeed eseeds[3] = {{(const uint8_t *)SEED_ESCROW, SEED_ESCROW_LEN}, {ka[1].key->x, 32},
                             {&escrow_bump, 1}};
  TRY(find_pda(c, &ka[2], eseeds, 2, &escrow_bump));
  CreateSpec job_spec = {&ka[0], &ka[1], &ka[5], sizeof(JobHeader) + m->task_count * sizeof(TaskSlot), 0};
  TRY(create_pda(c, &job_spec, jseeds, 4));
  CreateSpec escrow_spec = {&ka[0], &ka[2], &ka[5], 0, a.max_fee};
  TRY(create_pda(c, &escrow_spec, eseeds, 3));

  JobHeader *j = (JobHeader *)ka[1].data;
  j->tag = TAG_JOB;
  j->bump = bump;
  j->escrow_bump = escrow_bump;
  j->task_count = m->task_count;
  sol_memcpy_(j->client, ka[0].key, 32);
  sol_memcpy_(j->model, ka[3].key, 32);
  sol_memcpy_(j->input_hash, a.input_hash, 32);
  j->nonce = a.nonce;
  j->deposit = a.max_fee;
  j->deadline = deadline;
  j->task_timeout_slots = a.task_timeout_slots;
  /* snapshot the terms: a later set_config cannot change what this job was promised */
  j->verify_rate_bps = cfg->verify_rate_bps;
  j->validator_reward = cfg->validator_reward;
  j->protocol_fee_bps = cfg->protocol_fee_bps;
  j->new_node_bps = cfg->new_node_bps;
  j->new_node_half_life = cfg->new_node_half_life;
  j->failed_bps = cfg->failed_bps;
  j->failed_half_life = cfg->failed_half_life;
  for (uint64_t i = 0; i < m->task_count; i++) job_tasks(j)[i].price = model_tasks(m)[i].price;
  return 0;
}

/* accounts: 0 node owner (signer), 1 node (w), 2 job (w), 3 config, 4 model */
uint64_t ix_accept_task(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TaskArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *n;
  JobHeader *j;
  Config *cfg;
  ModelHeader *m;
  TaskSlot *t;
  TRY(need_signer(&ka[0]));
  TRY(load_node(c, &ka[1], true, &n));
  TRY(load_job(c, &ka[2], true, &j));
  TRY(load_config(c, &ka[3], false, &cfg));
  TRY(load_model(c, &ka[4], &m));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)n->owner)) return E_UNAUTHORIZED;
  if (!pubkey_eq(ka[4].key, (const SolPubkey *)j->model)) return E_WRONG_ACCOUNT_TYPE;
  if (pubkey_eq(ka[0].key, (const SolPubkey *)j->client)) return E_SELF_VALIDATION;
  TRY(job_task(j, a.index, &t));
  if (t->status != ST_OPEN) return E_WRONG_TASK_STATE;
  if (c->slot > j->deadline) return E_TOO_LATE;
  if (n->vram < model_tasks(m)[a.index].vram) return E_VRAM_TOO_SMALL;
  uint64_t free_stake, locked, deadline;
  TRY(sub64(n->stake, n->locked, &free_stake));
  if (n->stake < cfg->min_stake || free_stake < cfg->task_collateral) return E_INSUFFICIENT_STAKE;
  TRY(add64(n->locked, cfg->task_collateral, &locked));
  TRY(add64(c->slot, j->task_timeout_slots, &deadline));
  n->locked = locked;
  t->status = ST_ACCEPTED;
  sol_memcpy_(t->node, ka[1].key, 32);
  t->collateral = cfg->task_collateral;
  t->deadline = deadline;
  return 0;
}

/* accounts: 0 node owner (signer), 1 node, 2 job (w) */
uint64_t ix_commit_result(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  CommitArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *n;
  JobHeader *j;
  TaskSlot *t;
  TRY(need_signer(&ka[0]));
  TRY(load_node(c, &ka[1], false, &n));
  TRY(load_job(c, &ka[2], true, &j));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)n->owner)) return E_UNAUTHORIZED;
  TRY(job_task(j, a.index, &t));
  if (t->status != ST_ACCEPTED) return E_WRONG_TASK_STATE;
  if (!pubkey_eq(ka[1].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
  if (c->slot > t->deadline) return E_TOO_LATE;
  sol_memcpy_(t->commitment, a.commitment, 32);
  t->committed_slot = c->slot;
  t->status = ST_COMMITTED;
  return 0;
}

/* accounts: 0 job (w), 1 config (w), 2 the late party's node (w). Permissionless: anyone may expire
   late work. A node that missed its deadline is slashed and the task reopens for another node; a
   validator that missed its deadline is slashed and the task waits for another validator. With no
   winner to pay, the slash goes to the treasury. Sampled tasks nobody validated and disputes the
   arbiter left open are released (below). */
uint64_t ix_expire(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TaskArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  JobHeader *j;
  Config *cfg;
  Node *n;
  TaskSlot *t;
  TRY(load_job(c, &ka[0], true, &j));
  TRY(load_config(c, &ka[1], true, &cfg));
  TRY(load_node(c, &ka[2], true, &n));
  TRY(job_task(j, a.index, &t));
  if (c->slot <= t->deadline) return E_TOO_EARLY;
  if (t->status == ST_ACCEPTED) {
    if (!pubkey_eq(ka[2].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
    Slash sl = {&ka[2], n, &ka[1], t->collateral, cfg->slash_bps, 0};
    TRY(slash(&sl));
    TRY(add64(cfg->treasury, sl.amount, &cfg->treasury));
    uint64_t price = t->price;
    sol_memset_(t, 0, sizeof(TaskSlot));
    t->price = price;
    t->status = ST_OPEN;
    return 0;
  }
  if (t->status == ST_VALIDATING) {
    if (!pubkey_eq(ka[2].key, (const SolPubkey *)t->validator)) return E_WRONG_NODE;
    Slash sl = {&ka[2], n, &ka[1], t->validator_collateral, cfg->slash_bps, 0};
    TRY(slash(&sl));
    TRY(add64(cfg->treasury, sl.amount, &cfg->treasury));
    sol_memset_(t->validator, 0, 32);
    t->validator_collateral = 0;
    TRY(add64(c->slot, j->task_timeout_slots, &t->deadline)); /* a fresh window for another validator */
    t->status = ST_SAMPLED;
    return 0;
  }
  /* Liveness: nobody is at fault when no validator takes a sampled task up, or when the arbiter stays
     silent; the node is then paid as unverified and a disputing validator leaves unslashed, unpaid. */
  if (t->status == ST_SAMPLED) {
    if (!pubkey_eq(ka[2].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
    t->status = ST_READY;
    return 0;
  }
  if (t->status == ST_DISPUTED) {
    if (!pubkey_eq(ka[2].key, (const SolPubkey *)t->validator)) return E_WRONG_NODE;
    TRY(unlock(n, t->validator_collateral));
    sol_memset_(t->validator, 0, 32);
    t->validator_collateral = 0;
    t->verdict = VERDICT_NONE;
    t->status = ST_READY;
    return 0;
  }
  return E_WRONG_TASK_STATE;
}

/* accounts: 0 client (signer, w), 1 job (w), 2 escrow (w). Refunds the unused escrow and both rents.
   Allowed once every task is settled or failed, or after the job's deadline if the rest never started. */
uint64_t ix_close_job(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TRY(read_args(c, NULL, 0, NULL, NULL));
  JobHeader *j;
  TRY(need_signer(&ka[0]));
  TRY(need_writable(&ka[0]));
  TRY(load_job(c, &ka[1], true, &j));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)j->client)) return E_UNAUTHORIZED;
  TRY(check_escrow(c, &ka[2], &ka[1], j->escrow_bump));
  bool any_open = false;
  for (uint64_t i = 0; i < j->task_count; i++) {
    uint8_t st = job_tasks(j)[i].status;
    if (st == ST_OPEN) any_open = true;
    else if (st != ST_SETTLED && st != ST_FAILED) return E_JOB_NOT_FINISHED;
  }
  if (any_open && c->slot <= j->deadline) return E_JOB_NOT_FINISHED;
  uint64_t job_data_len = ka[1].data_len;
  TRY(move_lamports(&ka[2], &ka[0], *ka[2].lamports));
  TRY(move_lamports(&ka[1], &ka[0], *ka[1].lamports));
  /* a closed account must not be mistaken for a live job if revived in the same transaction */
  sol_memset_(ka[1].data, 0, job_data_len);
  return 0;
}
