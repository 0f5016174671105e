/* Jobs: escrowed payment for every task of a model, task acceptance with collateral scaled to the price,
   input receipts, result commitments (which fix the task's sampling rate), the client's draw secret,
   releases, stand-in takeovers, expiry of late work and the final refund. */
#include "market.h"

/* The most a task can cost the escrow: its price, the protocol fee on it and one validator reward. */
static uint64_t task_budget(const Config *cfg, uint64_t price, uint64_t *out) {
  uint64_t fee, total, reward;
  TRY(bps_of(price, cfg->protocol_fee_bps, &fee));
  TRY(add64(price, fee, &total));
  TRY(task_reward(cfg->validator_reward, cfg->validator_reward_bps, price, &reward));
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
  /* a client cannot hold a node's collateral (or its own escrow) longer than the market allows */
  if (a.deadline_slots > cfg->max_deadline_slots || a.task_timeout_slots > cfg->max_task_timeout_slots)
    return E_WINDOW_TOO_LONG;
  uint64_t required = 0;
  for (uint64_t i = 0; i < m->task_count; i++) {
    uint64_t b;
    TRY(task_budget(cfg, model_tasks(m)[i].price, &b));
    TRY(add64(required, b, &required));
  }
  if (a.max_fee < required) return E_INSUFFICIENT_FEE;
  /* the nonce names a recent slot, and close_job waits until it is stale: an address is posted once, so
     what a node signed for one job (evidence.c) can never be shown against another at the same address */
  uint64_t nonce_slot = a.nonce >> NONCE_SLOT_SHIFT;
  if (nonce_slot > c->slot || c->slot - nonce_slot > NONCE_SLOTS) return E_STALE_NONCE;
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
  sol_memcpy_(j->secret_hash, a.secret_hash, 32);
  j->nonce = a.nonce;
  j->deposit = a.max_fee;
  j->deadline = deadline;
  j->task_timeout_slots = a.task_timeout_slots;
  /* snapshot the terms: a later set_config cannot change what this job was promised */
  j->verify_rate_bps = cfg->verify_rate_bps;
  j->validator_reward = cfg->validator_reward;
  j->validator_reward_bps = cfg->validator_reward_bps;
  j->handoff_slots = cfg->handoff_slots;
  j->protocol_fee_bps = cfg->protocol_fee_bps;
  j->new_node_bps = cfg->new_node_bps;
  j->new_node_half_life = cfg->new_node_half_life;
  j->failed_bps = cfg->failed_bps;
  j->failed_half_life = cfg->failed_half_life;
  j->slash_bps = cfg->slash_bps;
  j->collusion_bps = cfg->collusion_bps;
  j->rep_min_price = cfg->rep_min_price;
  j->validator_timeout_slots = cfg->validator_timeout_slots;
  j->arbiter_timeout_slots = cfg->arbiter_timeout_slots;
  j->reveal_slots = cfg->reveal_slots;
  j->validator_ramp_slots = cfg->validator_ramp_slots;
  for (uint64_t i = 0; i < m->task_count; i++) job_tasks(j)[i].price = model_tasks(m)[i].price;
  return 0;
}

/* accounts: 0 node owner (signer), 1 node (w), 2 job (w), 3 config, 4 model */
uint64_t ix_accept_task(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  AcceptArgs a;
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
  uint64_t collateral, deadline;
  TRY(min_collateral(cfg, t->price, &collateral));
  if (a.collateral > collateral) collateral = a.collateral; /* more at risk: sampled less (commit_result) */
  TRY(lock_collateral(n, cfg, collateral));
  TRY(add64(c->slot, j->task_timeout_slots, &deadline));
  t->status = ST_ACCEPTED;
  sol_memcpy_(t->node, ka[1].key, 32);
  t->collateral = collateral;
  t->deadline = deadline;
  return 0;
}

/* accounts: 0 node owner (signer), 1 node, 2 job (w). The node records that it got its input: from
   now on failing to deliver is its fault (a liveness slash), and the client can no longer release the
   task out from under it. (A client holding the node's signed receipt proves the same: prove_receipt.) */
uint64_t ix_receive_input(Ctx *c) {
  HashArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  OwnedTask o;
  TRY(load_owned_task(c, c->p->ka, false, a.index, &o));
  if (o.task->received) return E_INPUT_RECEIVED;
  o.task->received = 1; /* the hash receipted is in the transaction */
  return 0;
}

/* accounts: 0 node owner (signer), 1 node, 2 job (w). The rate the draw will use is fixed here, from the
   node's record as it stands and the collateral it locked (docs/posp.md "The rule the program applies"). */
uint64_t ix_commit_result(Ctx *c) {
  CommitArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  OwnedTask o;
  TRY(load_owned_task(c, c->p->ka, false, a.index, &o));
  TaskSlot *t = o.task;
  if (c->slot > t->deadline) return E_TOO_LATE;
  TRY(task_rate(o.job, o.node, t, &t->rate_bps));
  sol_memcpy_(t->commitment, a.commitment, 32);
  sol_memcpy_(t->seal, a.seal, 32);
  t->committed_slot = c->slot;
  t->received = 1; /* it delivered, so it had its input */
  t->status = ST_COMMITTED;
  return 0;
}

/* accounts: 0 client (signer), 1 job (w). Opens the secret committed with the job; tasks committed before
   this slot draw with it (ix_sample). */
uint64_t ix_reveal_secret(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  SecretArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  JobHeader *j;
  TRY(need_signer(&ka[0]));
  TRY(load_job(c, &ka[1], true, &j));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)j->client)) return E_UNAUTHORIZED;
  if (j->revealed_slot) return E_BAD_SECRET;
  uint8_t h[32];
  SolBytes part = {a.secret, 32};
  sol_sha256(&part, 1, h);
  if (!pubkey_eq((const SolPubkey *)h, (const SolPubkey *)j->secret_hash)) return E_BAD_SECRET;
  sol_memcpy_(j->secret, a.secret, 32);
  j->revealed_slot = c->slot ? c->slot : 1;
  return 0;
}

/* Clear a task down to its price in `status`: OPEN (another node may take it) or RELEASED (given up). */
static void clear_task(TaskSlot *t, uint8_t status) {
  uint64_t price = t->price;
  sol_memset_(t, 0, sizeof(TaskSlot));
  t->price = price;
  t->status = status;
}

/* accounts: 0 signer: the task's node owner or the job's client, 1 job (w), 2 the task's node (w),
   3 config (w). Gives a task up: unpaid, and its price stays in escrow for the client's refund.
   - a task nobody accepted: only the client (it winds its job up);
   - a task with no receipt on chain, by the client: released at once, unslashed;
   - the same by the node: "never fed" is a claim it cannot prove, so the task's deadline is cut to
     handoff_slots from now; the client may show the node's signed receipt meanwhile (prove_receipt),
     and `expire` then releases the node unslashed, or with the liveness penalty if it was shown;
   - a task the node had its input for: only the node itself, with the liveness penalty. */
uint64_t ix_release_task(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TaskArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  JobHeader *j;
  Config *cfg;
  TaskSlot *t;
  TRY(need_signer(&ka[0]));
  TRY(load_task(c, &ka[1], a.index, &j, &t));
  TRY(load_config(c, &ka[3], true, &cfg));
  bool by_client = pubkey_eq(ka[0].key, (const SolPubkey *)j->client);
  if (t->status == ST_OPEN) {
    if (!by_client) return E_UNAUTHORIZED;
    t->status = ST_RELEASED;
    return 0;
  }
  if (t->status != ST_ACCEPTED) return E_WRONG_TASK_STATE;
  Node *n;
  TRY(load_node(c, &ka[2], true, &n));
  if (!pubkey_eq(ka[2].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
  bool by_node = pubkey_eq(ka[0].key, (const SolPubkey *)n->owner);
  if (!by_client && !by_node) return E_UNAUTHORIZED;
  if (t->received) {
    if (!by_node) return E_INPUT_RECEIVED;
    Slash sl = {&ka[2], n, &ka[3], t->collateral, cfg->liveness_slash_bps, 0};
    TRY(slash(&sl));
    TRY(add64(cfg->treasury, sl.amount, &cfg->treasury));
    TRY(add64(n->liveness_faults, 1, &n->liveness_faults));
  } else if (!by_client) {
    uint64_t grace;
    TRY(add64(c->slot, j->handoff_slots, &grace));
    if (grace < t->deadline) t->deadline = grace;
    t->releasing = 1; /* `expire` releases it rather than reopen it */
    return 0;
  } else {
    TRY(unlock(n, t->collateral));
  }
  clear_task(t, ST_RELEASED);
  return 0;
}

/* accounts: 0 client (signer), 1 stand-in owner (signer), 2 stand-in node (w), 3 the failed node (w),
   4 job (w), 5 config (w), 6 the job's model. A node stopped mid-task; the client hands the task, with its
   input, to a stand-in, which locks collateral and becomes the executor (paid at settlement). The failed
   node is never paid for it: unslashed before its deadline (the client chose to move on), after it the
   liveness penalty if it had receipted its input (as `expire` would). */
uint64_t ix_take_over(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  AcceptArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *s, *old;
  JobHeader *j;
  Config *cfg;
  ModelHeader *m;
  TaskSlot *t;
  TRY(need_signer(&ka[0]));
  TRY(owned_node(c, &ka[1], &ka[2], true, &s));
  TRY(load_node(c, &ka[3], true, &old));
  TRY(load_task(c, &ka[4], a.index, &j, &t));
  TRY(load_config(c, &ka[5], true, &cfg));
  TRY(load_model(c, &ka[6], &m));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)j->client)) return E_UNAUTHORIZED;
  if (!pubkey_eq(ka[6].key, (const SolPubkey *)j->model)) return E_WRONG_ACCOUNT_TYPE;
  if (pubkey_eq(ka[1].key, (const SolPubkey *)j->client)) return E_SELF_VALIDATION;
  if (t->status != ST_ACCEPTED) return E_WRONG_TASK_STATE;
  if (!pubkey_eq(ka[3].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
  if (pubkey_eq(ka[2].key, ka[3].key)) return E_WRONG_NODE;
  if (s->vram < model_tasks(m)[a.index].vram) return E_VRAM_TOO_SMALL;
  if (c->slot > t->deadline && t->received) {
    Slash sl = {&ka[3], old, &ka[5], t->collateral, cfg->liveness_slash_bps, 0};
    TRY(slash(&sl));
    TRY(add64(cfg->treasury, sl.amount, &cfg->treasury));
    TRY(add64(old->liveness_faults, 1, &old->liveness_faults));
  } else {
    TRY(unlock(old, t->collateral));
  }
  uint64_t collateral, deadline;
  TRY(min_collateral(cfg, t->price, &collateral));
  if (a.collateral > collateral) collateral = a.collateral;
  TRY(lock_collateral(s, cfg, collateral));
  TRY(add64(c->slot, j->task_timeout_slots, &deadline));
  sol_memcpy_(t->node, ka[2].key, 32);
  t->standin = 1;
  t->releasing = 0; /* whatever the failed node asked, the stand-in holds the task now */
  t->collateral = collateral;
  t->deadline = deadline;
  t->received = 1; /* the client handed it the input with the task */
  return 0;
}

/* accounts: 0 job (w), 1 config (w), 2 the late party's node (w). Permissionless: anyone may expire
   late work. Blame needs evidence: a node that receipted its input and missed its deadline pays the
   liveness penalty; a node that never receipted one is released unslashed (it may never have been fed).
   Either way the task reopens for another node, or is RELEASED if its node had given it up. A
   validator that took a task up and missed its deadline pays the liveness penalty and the task waits for
   another validator. With no winner to pay, penalties go to the treasury. Sampled tasks nobody validated and disputes the arbiter left open are released. */
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
    if (t->received) {
      Slash sl = {&ka[2], n, &ka[1], t->collateral, cfg->liveness_slash_bps, 0};
      TRY(slash(&sl));
      TRY(add64(cfg->treasury, sl.amount, &cfg->treasury));
      TRY(add64(n->liveness_faults, 1, &n->liveness_faults));
    } else {
      TRY(unlock(n, t->collateral));
    }
    clear_task(t, t->releasing ? ST_RELEASED : ST_OPEN);
    return 0;
  }
  if (t->status == ST_VALIDATING) {
    if (!pubkey_eq(ka[2].key, (const SolPubkey *)t->validator)) return E_WRONG_NODE;
    Slash sl = {&ka[2], n, &ka[1], t->validator_collateral, cfg->liveness_slash_bps, 0};
    TRY(slash(&sl));
    TRY(add64(cfg->treasury, sl.amount, &cfg->treasury));
    TRY(add64(n->liveness_faults, 1, &n->liveness_faults));
    sol_memset_(t->validator, 0, 32);
    t->validator_collateral = 0;
    TRY(add64(c->slot, j->validator_timeout_slots, &t->deadline)); /* a fresh window for another validator */
    t->sampled_slot = c->slot; /* and a fresh lottery ramp */
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
   Allowed once every task is settled, failed or released, or after the job's deadline if the rest never
   started; and once the job's nonce is too old to post with again (NONCE_SLOTS after its slot). */
uint64_t ix_close_job(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TRY(read_args(c, NULL, 0, NULL, NULL));
  JobHeader *j;
  TRY(need_signer(&ka[0]));
  TRY(need_writable(&ka[0]));
  TRY(load_job(c, &ka[1], true, &j));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)j->client)) return E_UNAUTHORIZED;
  TRY(check_escrow(c, &ka[2], &ka[1], j->escrow_bump));
  /* not while its nonce could still post a job at this address (ix_post_job); checked once finished */
  bool young = c->slot <= (j->nonce >> NONCE_SLOT_SHIFT) + NONCE_SLOTS;
  bool any_open = false;
  for (uint64_t i = 0; i < j->task_count; i++) {
    uint8_t st = job_tasks(j)[i].status;
    if (st == ST_OPEN) any_open = true;
    else if (st != ST_SETTLED && st != ST_FAILED && st != ST_RELEASED) return E_JOB_NOT_FINISHED;
  }
  if (any_open && c->slot <= j->deadline) return E_JOB_NOT_FINISHED;
  if (young) return E_TOO_EARLY;
  uint64_t job_data_len = ka[1].data_len;
  TRY(move_lamports(&ka[2], &ka[0], *ka[2].lamports));
  TRY(move_lamports(&ka[1], &ka[0], *ka[1].lamports));
  /* a closed account must not be mistaken for a live job if revived in the same transaction */
  sol_memset_(ka[1].data, 0, job_data_len);
  return 0;
}
