/* The node registry: stake in the node's PDA, capabilities, unbonding, specialisation. A node PDA always
   holds rent + stake + unbonding lamports; locked collateral is a part of stake. */
#include "market.h"

/* accounts: 0 owner (signer, w), 1 node PDA (w), 2 config, 3 system program */
uint64_t ix_register_node(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  RegisterNodeArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Config *cfg;
  TRY(load_config(c, &ka[2], false, &cfg));
  if (a.stake < cfg->min_stake) return E_INSUFFICIENT_STAKE;
  uint8_t bump;
  SolSignerSeed seeds[3] = {{(const uint8_t *)SEED_NODE, SEED_NODE_LEN}, {ka[0].key->x, 32}, {&bump, 1}};
  TRY(find_pda(c, &ka[1], seeds, 2, &bump));
  CreateSpec spec = {&ka[0], &ka[1], &ka[3], sizeof(Node), 0};
  TRY(create_pda(c, &spec, seeds, 3));
  TRY(system_transfer(c, &ka[0], &ka[1], &ka[3], a.stake));
  Node *n = (Node *)ka[1].data;
  n->tag = TAG_NODE;
  n->bump = bump;
  n->engines = a.engines;
  sol_memcpy_(n->owner, ka[0].key, 32);
  n->stake = a.stake;
  n->vram = a.vram;
  sol_memcpy_(n->endpoint, a.endpoint, sizeof(n->endpoint));
  n->last_heartbeat = c->slot; /* registering is the node's first sign of life */
  return 0;
}

/* accounts: 0 owner (signer, w), 1 node (w), 2 system program */
uint64_t ix_add_stake(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  AmountArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *n;
  TRY(owned_node(c, &ka[0], &ka[1], true, &n));
  if (a.amount == 0) return E_INVALID_PARAMETER;
  uint64_t stake;
  TRY(add64(n->stake, a.amount, &stake));
  TRY(system_transfer(c, &ka[0], &ka[1], &ka[2], a.amount));
  n->stake = stake;
  return 0;
}

/* accounts: 0 owner (signer), 1 node (w), 2 config. Moves free stake into unbonding and restarts the
   unbonding clock: stake that leaves cannot back new tasks but stays slashable until withdrawn. */
uint64_t ix_begin_unstake(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  AmountArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *n;
  TRY(owned_node(c, &ka[0], &ka[1], true, &n));
  Config *cfg;
  TRY(load_config(c, &ka[2], false, &cfg));
  uint64_t free_stake;
  TRY(sub64(n->stake, n->locked, &free_stake));
  if (a.amount == 0 || a.amount > free_stake) return E_INSUFFICIENT_STAKE;
  uint64_t unbonding, at;
  TRY(add64(n->unbonding, a.amount, &unbonding));
  TRY(add64(c->slot, cfg->unbonding_slots, &at));
  n->stake -= a.amount;
  n->unbonding = unbonding;
  n->unbond_at = at;
  return 0;
}

/* accounts: 0 owner (signer, w), 1 node (w) */
uint64_t ix_withdraw(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  TRY(read_args(c, NULL, 0, NULL, NULL));
  Node *n;
  TRY(owned_node(c, &ka[0], &ka[1], true, &n));
  if (n->unbonding == 0) return E_NOTHING_TO_WITHDRAW;
  if (c->slot < n->unbond_at) return E_STILL_BONDING;
  uint64_t amount = n->unbonding;
  n->unbonding = 0;
  return move_lamports(&ka[1], &ka[0], amount);
}

/* accounts: 0 owner (signer), 1 node (w). Replaces the list of task ids the node keeps preloaded. */
uint64_t ix_specialize(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  SpecializeArgs a;
  const uint8_t *rest;
  uint64_t rest_len;
  TRY(read_args(c, &a, sizeof(a), &rest, &rest_len));
  if (a.count > MAX_SPECIALIZED || rest_len != a.count * 32) return E_INVALID_INSTRUCTION;
  Node *n;
  TRY(owned_node(c, &ka[0], &ka[1], true, &n));
  sol_memset_(n->specialized, 0, sizeof(n->specialized));
  if (rest_len) sol_memcpy_(n->specialized, rest, rest_len);
  n->special_count = a.count;
  return 0;
}

/* accounts: 0 owner (signer), 1 node (w). The node stamps its account with the slot and a small status;
   nothing else is read or moved, so a beat costs its signature fee and a few thousand compute units.
   Silence is never slashed: a node that stops beating is only no longer routed to or drawn. */
uint64_t ix_heartbeat(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  HeartbeatArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Node *n;
  TRY(owned_node(c, &ka[0], &ka[1], true, &n));
  n->last_heartbeat = c->slot;
  n->free_sessions = a.free_sessions;
  n->engines = a.engines;
  n->version = a.version;
  return 0;
}
