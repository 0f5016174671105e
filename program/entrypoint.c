/* SplitUp marketplace program: entrypoint and instruction dispatch. */
#include "market.h"

typedef uint64_t (*Handler)(Ctx *);
typedef struct { Handler fn; uint64_t accounts; } Route;

/* indexed by the instruction tag (first byte of instruction data); see splitup/market/constants.py */
static const Route ROUTES[] = {
    [IX_INIT_CONFIG] = {ix_init_config, 3},       [IX_SET_CONFIG] = {ix_set_config, 2},
    [IX_REGISTER_MODEL] = {ix_register_model, 3}, [IX_ADD_MODEL_TASKS] = {ix_add_model_tasks, 2},
    [IX_REGISTER_NODE] = {ix_register_node, 4},   [IX_ADD_STAKE] = {ix_add_stake, 3},
    [IX_BEGIN_UNSTAKE] = {ix_begin_unstake, 3},   [IX_WITHDRAW] = {ix_withdraw, 2},
    [IX_SPECIALIZE] = {ix_specialize, 2},         [IX_POST_JOB] = {ix_post_job, 6},
    [IX_ACCEPT_TASK] = {ix_accept_task, 5},       [IX_COMMIT_RESULT] = {ix_commit_result, 3},
    [IX_SAMPLE] = {ix_sample, 2},                 [IX_ASSIGN_VALIDATOR] = {ix_assign_validator, 5},
    [IX_SUBMIT_VERDICT] = {ix_submit_verdict, 3}, [IX_ARBITRATE] = {ix_arbitrate, 3},
    [IX_SETTLE] = {ix_settle, 7},                 [IX_EXPIRE] = {ix_expire, 3},
    [IX_CLOSE_JOB] = {ix_close_job, 3},           [IX_COLLECT_FEES] = {ix_collect_fees, 3},
    [IX_REVEAL_SECRET] = {ix_reveal_secret, 2},   [IX_RECEIVE_INPUT] = {ix_receive_input, 3},
    [IX_RELEASE_TASK] = {ix_release_task, 4},     [IX_TAKE_OVER] = {ix_take_over, 7},
    [IX_HEARTBEAT] = {ix_heartbeat, 2},
    [IX_PROVE_RECEIPT] = {ix_prove_receipt, 3},   [IX_PROVE_HANDOFF] = {ix_prove_handoff, 5},
};

uint64_t entrypoint(const uint8_t *input) {
  SolAccountInfo ka[MAX_ACCOUNTS];
  SolParameters p = {.ka = ka};
  sol_deserialize(input, &p, MAX_ACCOUNTS);
  if (p.data_len < 1) return E_INVALID_INSTRUCTION;
  uint8_t tag = p.data[0];
  if (tag >= sizeof(ROUTES) / sizeof(ROUTES[0]) || !ROUTES[tag].fn) return E_INVALID_INSTRUCTION;
  Ctx c;
  TRY(ctx_init(&c, &p, ROUTES[tag].accounts));
  return ROUTES[tag].fn(&c);
}
