/* Models: the tasks a model splits into, each with its VRAM need and price. Append-only until complete,
   then immutable, so a posted job's prices can never change under it. */
#include "market.h"

static uint64_t write_tasks(ModelHeader *m, uint64_t start, const uint8_t *rest, uint64_t rest_len) {
  if (rest_len % sizeof(ModelTask)) return E_INVALID_INSTRUCTION;
  uint64_t n = rest_len / sizeof(ModelTask);
  if (start != m->filled) return E_BAD_TASK_INDEX;
  if (n > m->task_count - m->filled) return E_TOO_MANY_TASKS;
  sol_memcpy_(&model_tasks(m)[start], rest, rest_len);
  m->filled = (uint32_t)(start + n);
  return 0;
}

/* accounts: 0 owner (signer, w), 1 model PDA (w), 2 system program */
uint64_t ix_register_model(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  RegisterModelArgs a;
  const uint8_t *rest;
  uint64_t rest_len;
  TRY(read_args(c, &a, sizeof(a), &rest, &rest_len));
  if (a.task_count == 0 || a.task_count > MAX_TASKS) return E_TOO_MANY_TASKS;
  uint8_t bump;
  SolSignerSeed seeds[4] = {{(const uint8_t *)SEED_MODEL, SEED_MODEL_LEN}, {ka[0].key->x, 32}, {a.model_hash, 32},
                            {&bump, 1}};
  TRY(find_pda(c, &ka[1], seeds, 3, &bump));
  CreateSpec spec = {&ka[0], &ka[1], &ka[2], sizeof(ModelHeader) + (uint64_t)a.task_count * sizeof(ModelTask), 0};
  TRY(create_pda(c, &spec, seeds, 4));
  ModelHeader *m = (ModelHeader *)ka[1].data;
  m->tag = TAG_MODEL;
  m->bump = bump;
  m->task_count = a.task_count;
  m->filled = 0;
  sol_memcpy_(m->owner, ka[0].key, 32);
  sol_memcpy_(m->model_hash, a.model_hash, 32);
  return write_tasks(m, 0, rest, rest_len);
}

/* accounts: 0 owner (signer), 1 model (w) */
uint64_t ix_add_model_tasks(Ctx *c) {
  SolAccountInfo *ka = c->p->ka;
  AddModelTasksArgs a;
  const uint8_t *rest;
  uint64_t rest_len;
  TRY(read_args(c, &a, sizeof(a), &rest, &rest_len));
  TRY(need_signer(&ka[0]));
  TRY(need_writable(&ka[1]));
  ModelHeader *m;
  TRY(load_model(c, &ka[1], &m));
  if (!pubkey_eq(ka[0].key, (const SolPubkey *)m->owner)) return E_UNAUTHORIZED;
  return write_tasks(m, a.start, rest, rest_len);
}
