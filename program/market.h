/* Shared helpers of the SplitUp marketplace program. Every helper returns 0 or a Custom error code. */
#pragma once
#include "layouts.h"

#define MAX_ACCOUNTS 8
#define TRY(expr) do { uint64_t e_ = (expr); if (e_) return e_; } while (0)

/* ---- checked u64 arithmetic (lamports never wrap) */
static inline uint64_t add64(uint64_t a, uint64_t b, uint64_t *out) {
  if (a > UINT64_MAX - b) return E_OVERFLOW;
  *out = a + b;
  return 0;
}
static inline uint64_t sub64(uint64_t a, uint64_t b, uint64_t *out) {
  if (b > a) return E_OVERFLOW;
  *out = a - b;
  return 0;
}
/* Hide a value from the optimiser: clang would otherwise fuse "x > MAX / y; x * y" into a 128-bit
   overflow multiply (__multi3), which SBPF does not have. */
static inline uint64_t opaque(uint64_t v) { __asm__ volatile("" : "+r"(v)); return v; }
/* amount * bps / 10000, refusing overflow of the product */
static inline uint64_t bps_of(uint64_t amount, uint64_t bps, uint64_t *out) {
  if (bps && amount > opaque(UINT64_MAX / bps)) return E_OVERFLOW;
  *out = amount * bps / BPS;
  return 0;
}

/* ---- unaligned little-endian access for instruction data */
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; sol_memcpy_(&v, p, 8); return v; }
static inline void wr64(uint8_t *p, uint64_t v) { sol_memcpy_(p, &v, 8); }

/* ---- account checks */
static inline uint64_t need_signer(const SolAccountInfo *a) { return a->is_signer ? 0 : E_MISSING_SIGNATURE; }
static inline uint64_t need_writable(const SolAccountInfo *a) { return a->is_writable ? 0 : E_NOT_WRITABLE; }
static inline uint64_t need_owner(const SolAccountInfo *a, const SolPubkey *owner) {
  return pubkey_eq(a->owner, owner) ? 0 : E_WRONG_OWNER;
}
static inline uint64_t need_key(const SolAccountInfo *a, const SolPubkey *key, uint64_t err) {
  return pubkey_eq(a->key, key) ? 0 : err;
}

typedef struct { const SolParameters *p; uint64_t slot; } Ctx;

uint64_t ctx_init(Ctx *c, const SolParameters *p, uint64_t n_accounts);
/* Copy the fixed argument struct after the tag; rest and rest_len describe what follows it. */
uint64_t read_args(const Ctx *c, void *out, uint64_t size, const uint8_t **rest, uint64_t *rest_len);
/* Check that `a` sits at the PDA of `seeds` (the last seed being the bump). */
uint64_t check_pda(const Ctx *c, const SolAccountInfo *a, const SolSignerSeed *seeds, int n);
/* Find the PDA of `seeds` (without bump); verify `a` is it; return the bump. */
uint64_t find_pda(const Ctx *c, const SolAccountInfo *a, const SolSignerSeed *seeds, int n, uint8_t *bump);

typedef struct {
  const SolAccountInfo *payer;
  const SolAccountInfo *target;
  const SolAccountInfo *system;
  uint64_t space;
  uint64_t extra_lamports; /* on top of the rent-exempt minimum */
} CreateSpec;
/* Create a program-owned PDA account via the System program, signed with `seeds` (bump included). */
uint64_t create_pda(const Ctx *c, const CreateSpec *spec, const SolSignerSeed *seeds, int n);
uint64_t rent_exempt(uint64_t space, uint64_t *out);
/* System transfer from a signing wallet (CPI). */
uint64_t system_transfer(const Ctx *c, const SolAccountInfo *from, const SolAccountInfo *to,
                         const SolAccountInfo *system, uint64_t lamports);
/* Move lamports between accounts this program may debit (it owns `from`). */
uint64_t move_lamports(const SolAccountInfo *from, const SolAccountInfo *to, uint64_t amount);

/* Typed loaders: owner, writability (if asked), size, tag and PDA seeds all checked. */
uint64_t load_config(const Ctx *c, const SolAccountInfo *a, bool writable, Config **out);
uint64_t load_node(const Ctx *c, const SolAccountInfo *a, bool writable, Node **out);
uint64_t load_model(const Ctx *c, const SolAccountInfo *a, ModelHeader **out);
uint64_t load_job(const Ctx *c, const SolAccountInfo *a, bool writable, JobHeader **out);
uint64_t check_escrow(const Ctx *c, const SolAccountInfo *escrow, const SolAccountInfo *job, uint8_t bump);
static inline ModelTask *model_tasks(ModelHeader *m) { return (ModelTask *)(m + 1); }
static inline TaskSlot *job_tasks(JobHeader *j) { return (TaskSlot *)(j + 1); }
uint64_t job_task(JobHeader *j, uint64_t index, TaskSlot **out);
/* The job (writable) and its task at `index`. */
uint64_t load_task(const Ctx *c, const SolAccountInfo *job_ai, uint64_t index, JobHeader **j, TaskSlot **t);
/* `owner` signs and owns the node at `node_ai`. */
uint64_t owned_node(const Ctx *c, const SolAccountInfo *owner, const SolAccountInfo *node_ai, bool writable,
                    Node **out);
/* The preamble of a node acting on its own task: `ka[0]` (the owner) signs and owns the node `ka[1]`, and
   the task at `index` of the job `ka[2]` (writable) is ACCEPTED by that node. */
typedef struct { Node *node; JobHeader *job; TaskSlot *task; } OwnedTask;
uint64_t load_owned_task(const Ctx *c, const SolAccountInfo *ka, bool node_writable, uint64_t index, OwnedTask *out);

/* A node owner paid by settlement: its wallet, and its node as the fallback. The runtime refuses a
   transaction that leaves an account with a balance between 0 and its rent-exempt minimum (or changes an
   executable account's), so a payment its wallet cannot take lands in its node instead, as withdrawable
   balance (`unbonding`): an owner who empties its wallet cannot block the settlement, and with it the
   client's refund and the other side's collateral. */
typedef struct {
  const SolAccountInfo *wallet;
  const SolAccountInfo *node_ai;
  Node *node;
} Payee;
/* Where `amount` for `p` goes: its wallet if the runtime lets the wallet take it, else its node. */
uint64_t payee_account(const Payee *p, uint64_t amount, const SolAccountInfo **out);

/* A slash: `collateral * slash_bps / BPS` leaves the node's stake (its PDA) for `dest` (or, with `payee`
   set, for the winner's wallet or node: payee_account); the collateral is unlocked. The caller counts the
   fault (cheating or liveness). `amount` is set to what moved. */
typedef struct {
  const SolAccountInfo *node_ai;
  Node *node;
  const SolAccountInfo *dest;
  uint64_t collateral;
  uint64_t slash_bps;
  uint64_t amount;
  const Payee *payee;
} Slash;
uint64_t slash(Slash *s);
uint64_t unlock(Node *node, uint64_t collateral);
/* The least collateral a task of `price` needs: max(task_collateral, price * collateral_bps / BPS). */
uint64_t min_collateral(const Config *cfg, uint64_t price, uint64_t *out);
/* What a validator's check of a task of `price` pays: max(floor, price * bps / BPS). */
uint64_t task_reward(uint64_t floor, uint64_t bps, uint64_t price, uint64_t *out);
/* Lock `amount` of the node's free stake (refused below min_stake or without enough free stake). */
uint64_t lock_collateral(Node *n, const Config *cfg, uint64_t amount);

/* The task's sampling rate: max(node's reputation rate, the sound rate for its price and collateral). */
uint64_t task_rate(const JobHeader *j, const Node *n, const TaskSlot *t, uint64_t *out);

/* instruction handlers */
uint64_t ix_init_config(Ctx *c);
uint64_t ix_set_config(Ctx *c);
uint64_t ix_collect_fees(Ctx *c);
uint64_t ix_register_model(Ctx *c);
uint64_t ix_add_model_tasks(Ctx *c);
uint64_t ix_register_node(Ctx *c);
uint64_t ix_add_stake(Ctx *c);
uint64_t ix_begin_unstake(Ctx *c);
uint64_t ix_withdraw(Ctx *c);
uint64_t ix_specialize(Ctx *c);
uint64_t ix_post_job(Ctx *c);
uint64_t ix_accept_task(Ctx *c);
uint64_t ix_commit_result(Ctx *c);
uint64_t ix_sample(Ctx *c);
uint64_t ix_assign_validator(Ctx *c);
uint64_t ix_submit_verdict(Ctx *c);
uint64_t ix_arbitrate(Ctx *c);
uint64_t ix_settle(Ctx *c);
uint64_t ix_expire(Ctx *c);
uint64_t ix_close_job(Ctx *c);
uint64_t ix_reveal_secret(Ctx *c);
uint64_t ix_receive_input(Ctx *c);
uint64_t ix_release_task(Ctx *c);
uint64_t ix_take_over(Ctx *c);
uint64_t ix_heartbeat(Ctx *c);
uint64_t ix_prove_receipt(Ctx *c);
uint64_t ix_prove_handoff(Ctx *c);
