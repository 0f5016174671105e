/* Settlement of one task: pay the node, the validator's reward and the protocol fee out of escrow;
   slash whoever lost a dispute and pay the slash to the winner. Escrow can never pay out more than
   was deposited: `paid` is checked against `deposit` before any lamport leaves. */
#include "market.h"

typedef struct {
  SolAccountInfo *job_ai, *escrow, *config_ai;
  JobHeader *job;
  Config *cfg;
} Payer;

static uint64_t pay(Payer *p, const SolAccountInfo *to, uint64_t amount) {
  uint64_t paid;
  TRY(add64(p->job->paid, amount, &paid));
  if (paid > p->job->deposit) return E_ESCROW_EXHAUSTED;
  p->job->paid = paid;
  return move_lamports(p->escrow, to, amount);
}

/* Pay the node its price (and the protocol its fee). Reputation, what lowers the node's sampling rate,
   grows only with verified work (a validator proved it re-executed, or the arbiter upheld it) that
   another party paid at least rep_min_price for, by its value in credits (price / rep_min_price). The
   other party is another owner: a client may not accept, take over or validate its own job's tasks. */
static uint64_t pay_node(Payer *p, const Payee *owner, Node *n, uint64_t price, bool verified) {
  uint64_t fee;
  const SolAccountInfo *to;
  TRY(bps_of(price, p->job->protocol_fee_bps, &fee));
  TRY(payee_account(owner, price, &to));
  TRY(pay(p, to, price));
  TRY(pay(p, p->config_ai, fee));
  TRY(add64(p->cfg->treasury, fee, &p->cfg->treasury));
  TRY(add64(n->tasks_done, 1, &n->tasks_done));
  if (!verified) return 0;
  TRY(add64(n->verified, 1, &n->verified));
  uint64_t credits = price / p->job->rep_min_price;
  if (credits == 0) return 0;
  TRY(add64(n->reputation, credits, &n->reputation));
  if (n->ever_failed) TRY(add64(n->since_failure, credits, &n->since_failure));
  return 0;
}

/* accounts: 0 job (w), 1 escrow (w), 2 config (w), 3 node (w), 4 node owner wallet (w),
   5 validator node (w), 6 validator owner wallet (w). Permissionless. For a task that was never
   validated, pass the node and its owner again at 5 and 6; they are then not touched. What a wallet
   cannot take (the runtime would refuse its new balance) is credited to its node, withdrawable (Payee). */
uint64_t ix_settle(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TaskArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Payer p = {&ka[0], &ka[1], &ka[2], NULL, NULL};
  Node *n, *v = NULL;
  TaskSlot *t;
  TRY(load_job(c, &ka[0], true, &p.job));
  TRY(check_escrow(c, &ka[1], &ka[0], p.job->escrow_bump));
  TRY(load_config(c, &ka[2], true, &p.cfg));
  TRY(job_task(p.job, a.index, &t));
  if (t->status != ST_READY && t->status != ST_RESOLVED) return E_WRONG_TASK_STATE;
  /* the receiver of the node's output has handoff_slots to prove a lie in it (ix_prove_handoff) */
  uint64_t open_until;
  TRY(add64(t->committed_slot, p.job->handoff_slots, &open_until));
  if (c->slot <= open_until) return E_TOO_EARLY;
  TRY(load_node(c, &ka[3], true, &n));
  if (!pubkey_eq(ka[3].key, (const SolPubkey *)t->node)) return E_WRONG_NODE;
  if (!pubkey_eq(ka[4].key, (const SolPubkey *)n->owner)) return E_WRONG_NODE;
  TRY(need_writable(&ka[4]));
  bool validated = t->verdict != VERDICT_NONE;
  uint64_t reward;
  TRY(task_reward(p.job->validator_reward, p.job->validator_reward_bps, t->price, &reward));
  if (validated) {
    TRY(load_node(c, &ka[5], true, &v));
    if (!pubkey_eq(ka[5].key, (const SolPubkey *)t->validator)) return E_WRONG_NODE;
    if (!pubkey_eq(ka[6].key, (const SolPubkey *)v->owner)) return E_WRONG_NODE;
    TRY(need_writable(&ka[6]));
  }

  Payee node_owner = {&ka[4], &ka[3], n}, validator_owner = {&ka[6], &ka[5], v};
  const SolAccountInfo *to;
  if (t->status == ST_READY) { /* not drawn, or the validator agreed */
    /* an agreement counts as verification (and earns the reward) only with proof of re-execution */
    TRY(pay_node(&p, &node_owner, n, t->price, validated && t->proved));
    TRY(unlock(n, t->collateral));
    if (validated) {
      if (t->proved) {
        TRY(payee_account(&validator_owner, reward, &to));
        TRY(pay(&p, to, reward));
      }
      TRY(unlock(v, t->validator_collateral));
    }
    t->status = ST_SETTLED;
  } else if (t->arbitration == ARB_NODE_HONEST) { /* the validator was wrong */
    TRY(pay_node(&p, &node_owner, n, t->price, true));
    TRY(unlock(n, t->collateral));
    Slash sl = {&ka[5], v, &ka[4], t->validator_collateral, p.cfg->slash_bps, 0, &node_owner};
    TRY(slash(&sl)); /* the winner is paid from the slash (docs/posp.md) */
    TRY(add64(v->failed, 1, &v->failed));
    t->status = ST_SETTLED;
  } else { /* the node cheated: no pay, slashed; the validator earned its reward */
    Slash sl = {&ka[3], n, &ka[6], t->collateral, p.cfg->slash_bps, 0, &validator_owner};
    TRY(slash(&sl)); /* the winner is paid from the slash (docs/posp.md) */
    TRY(add64(n->failed, 1, &n->failed));
    n->ever_failed = 1; /* its verification rate jumps to failed_bps and decays again */
    n->since_failure = 0;
    TRY(payee_account(&validator_owner, reward, &to));
    TRY(pay(&p, to, reward));
    TRY(unlock(v, t->validator_collateral));
    t->status = ST_FAILED;
  }
  return add64(p.job->closed_tasks, 1, &p.job->closed_tasks);
}
