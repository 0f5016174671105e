/* The market's configuration: created once, tuned by its authority, which also collects fees. */
#include "market.h"

static uint64_t check_params(const InitConfigArgs *a) {
  if (a->verify_rate_bps > BPS || a->slash_bps > BPS || a->protocol_fee_bps > BPS) return E_INVALID_PARAMETER;
  if (a->validator_reward_bps > 10 * BPS) return E_INVALID_PARAMETER;
  if (a->min_stake == 0 || a->task_collateral > a->min_stake) return E_INVALID_PARAMETER;
  if (a->validator_timeout_slots == 0) return E_INVALID_PARAMETER;
  /* elevated rates lie between the base rate and 100%, and halve at least every 1 task */
  if (a->new_node_bps > BPS || a->failed_bps > BPS) return E_INVALID_PARAMETER;
  if (a->new_node_bps < a->verify_rate_bps || a->failed_bps < a->verify_rate_bps) return E_INVALID_PARAMETER;
  if (a->new_node_half_life == 0 || a->failed_half_life == 0) return E_INVALID_PARAMETER;
  /* soundness needs collateral at risk, validators that are not all colluding, a penalty for lateness
     that does not exceed the one for cheating, and a finite unit of reputation */
  if (a->slash_bps == 0 || a->collusion_bps >= BPS || a->liveness_slash_bps > a->slash_bps) return E_INVALID_PARAMETER;
  if (a->rep_min_price == 0) return E_INVALID_PARAMETER;
  /* every window is bounded (unbonding too): a client's funds and a node's stake are never locked for good */
  if (a->max_deadline_slots == 0 || a->max_task_timeout_slots == 0 || a->arbiter_timeout_slots == 0 ||
      a->reveal_slots == 0)
    return E_INVALID_PARAMETER;
  /* a proven lie in a hand-off is cheating, and costs at least what cheating does: otherwise a sampled
     cheat (or a friend holding its hand-off) proves its own lie first and pays less than the check would
     take. At most the collateral. */
  if (a->handoff_slash_bps > BPS || a->handoff_slash_bps < a->slash_bps) return E_INVALID_PARAMETER;
  if (a->handoff_slots == 0 || a->handoff_slots > MAX_WINDOW_SLOTS) return E_INVALID_PARAMETER;
  if (a->max_deadline_slots > MAX_WINDOW_SLOTS || a->max_task_timeout_slots > MAX_WINDOW_SLOTS ||
      a->validator_timeout_slots > MAX_WINDOW_SLOTS || a->arbiter_timeout_slots > MAX_WINDOW_SLOTS ||
      a->reveal_slots > MAX_WINDOW_SLOTS || a->validator_ramp_slots > a->validator_timeout_slots ||
      a->heartbeat_window_slots > MAX_WINDOW_SLOTS || a->unbonding_slots > MAX_WINDOW_SLOTS)
    return E_INVALID_PARAMETER;
  return 0;
}

static void apply(Config *cfg, const InitConfigArgs *a) {
  cfg->verify_rate_bps = a->verify_rate_bps;
  cfg->min_stake = a->min_stake;
  cfg->task_collateral = a->task_collateral;
  cfg->slash_bps = a->slash_bps;
  cfg->validator_reward = a->validator_reward;
  cfg->protocol_fee_bps = a->protocol_fee_bps;
  cfg->unbonding_slots = a->unbonding_slots;
  cfg->validator_timeout_slots = a->validator_timeout_slots;
  cfg->new_node_bps = a->new_node_bps;
  cfg->new_node_half_life = a->new_node_half_life;
  cfg->failed_bps = a->failed_bps;
  cfg->failed_half_life = a->failed_half_life;
  cfg->collateral_bps = a->collateral_bps;
  cfg->collusion_bps = a->collusion_bps;
  cfg->liveness_slash_bps = a->liveness_slash_bps;
  cfg->rep_min_price = a->rep_min_price;
  cfg->max_deadline_slots = a->max_deadline_slots;
  cfg->max_task_timeout_slots = a->max_task_timeout_slots;
  cfg->arbiter_timeout_slots = a->arbiter_timeout_slots;
  cfg->reveal_slots = a->reveal_slots;
  cfg->validator_ramp_slots = a->validator_ramp_slots;
  cfg->validator_reward_bps = a->validator_reward_bps;
  cfg->heartbeat_window_slots = a->heartbeat_window_slots;
  cfg->handoff_slash_bps = a->handoff_slash_bps;
  cfg->handoff_slots = a->handoff_slots;
}

/* accounts: 0 authority (signer, writable: pays rent), 1 config PDA (w), 2 system program */
uint64_t ix_init_config(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  InitConfigArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  TRY(check_params(&a));
  uint8_t bump;
  SolSignerSeed seeds[2] = {{(const uint8_t *)SEED_CONFIG, SEED_CONFIG_LEN}, {&bump, 1}};
  TRY(find_pda(c, &ka[1], seeds, 1, &bump));
  CreateSpec spec = {&ka[0], &ka[1], &ka[2], sizeof(Config), 0};
  TRY(create_pda(c, &spec, seeds, 2));
  Config *cfg = (Config *)ka[1].data;
  cfg->tag = TAG_CONFIG;
  cfg->bump = bump;
  sol_memcpy_(cfg->authority, ka[0].key, 32);
  apply(cfg, &a);
  return 0;
}

/* accounts: 0 authority (signer), 1 config (w) */
uint64_t ix_set_config(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  InitConfigArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  TRY(check_params(&a));
  Config *cfg;
  TRY(load_config(c, &ka[1], true, &cfg));
  TRY(need_signer(&ka[0]));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)cfg->authority)) return E_UNAUTHORIZED;
  apply(cfg, &a);
  return 0;
}

/* accounts: 0 authority (signer), 1 config (w), 2 destination (w). Moves treasury lamports out. */
uint64_t ix_collect_fees(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  AmountArgs a;
  TRY(read_args(c, &a, sizeof(a), NULL, NULL));
  Config *cfg;
  TRY(load_config(c, &ka[1], true, &cfg));
  TRY(need_signer(&ka[0]));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)cfg->authority)) return E_UNAUTHORIZED;
  if (a.amount > cfg->treasury) return E_ESCROW_EXHAUSTED;
  /* to the config itself the lamports would not move, but the treasury would lose track of them */
  if (pubkey_eq(ka[2].key, ka[1].key)) return E_INVALID_PARAMETER;
  cfg->treasury -= a.amount;
  return move_lamports(&ka[1], &ka[2], a.amount);
}
