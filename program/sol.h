/* The Solana C ABI that SplitUp's program uses, for upstream clang (-target bpfel -mcpu=v2), SBPFv0.
   Our own copy: only what the program needs, no SDK dependency. */
#pragma once
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef long long int64_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)
#define UINT64_MAX 0xFFFFFFFFFFFFFFFFULL

typedef struct { uint8_t x[32]; } SolPubkey;
typedef struct {
  SolPubkey *key; uint64_t *lamports; uint64_t data_len; uint8_t *data;
  SolPubkey *owner; uint64_t rent_epoch; bool is_signer; bool is_writable; bool executable;
} SolAccountInfo;
typedef struct {
  SolAccountInfo *ka; uint64_t ka_num; const uint8_t *data; uint64_t data_len;
  const SolPubkey *program_id;
} SolParameters;
typedef struct { SolPubkey *pubkey; bool is_writable; bool is_signer; } SolAccountMeta;
typedef struct {
  SolPubkey *program_id; SolAccountMeta *accounts; uint64_t account_len;
  uint8_t *data; uint64_t data_len;
} SolInstruction;
typedef struct { const uint8_t *addr; uint64_t len; } SolSignerSeed;
typedef struct { const SolSignerSeed *addr; uint64_t len; } SolSignerSeeds;
typedef struct { const uint8_t *addr; uint64_t len; } SolBytes;
typedef struct {
  uint64_t slot; int64_t epoch_start_timestamp; uint64_t epoch; uint64_t leader_schedule_epoch;
  int64_t unix_timestamp;
} SolClock;
/* Rent's exemption_threshold is an f64; we only read its bits (no floating point on SBPF). */
typedef struct { uint64_t lamports_per_byte_year; uint64_t exemption_threshold_bits; uint8_t burn_percent; } SolRent;

/* syscalls, resolved by name at load time */
void sol_log_(const char *, uint64_t);
void sol_log_64_(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
void sol_log_pubkey(const SolPubkey *);
void sol_memcpy_(void *, const void *, uint64_t);
void sol_memset_(void *, int, uint64_t);
void sol_memcmp_(const void *, const void *, uint64_t, int *);
uint64_t sol_sha256(const SolBytes *, int, uint8_t *);
uint64_t sol_create_program_address(const SolSignerSeed *, int, const SolPubkey *, SolPubkey *);
uint64_t sol_try_find_program_address(const SolSignerSeed *, int, const SolPubkey *, SolPubkey *, uint8_t *);
uint64_t sol_invoke_signed_c(const SolInstruction *, const SolAccountInfo *, int, const SolSignerSeeds *, int);
uint64_t sol_get_clock_sysvar(void *);
uint64_t sol_get_rent_sysvar(void *);

#define sol_log(s) sol_log_(s, sizeof(s) - 1)
#define MAX_PERMITTED_DATA_INCREASE (1024 * 10)
#define SUCCESS 0

static inline bool pubkey_eq(const SolPubkey *a, const SolPubkey *b) {
  const uint64_t *x = (const uint64_t *)a->x, *y = (const uint64_t *)b->x;
  return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* Parse the loader's serialized input (aligned format of BPFLoader2 / the upgradeable loader).
   Accounts beyond ka_cap are skipped; duplicates share the first occurrence's memory. */
static inline void sol_deserialize(const uint8_t *input, SolParameters *p, uint64_t ka_cap) {
  p->ka_num = *(const uint64_t *)input;
  input += 8;
  for (uint64_t i = 0; i < p->ka_num; i++) {
    uint8_t dup = input[0];
    input += 1;
    if (dup == 0xFF) {
      SolAccountInfo tmp;
      SolAccountInfo *a = i < ka_cap ? &p->ka[i] : &tmp;
      a->is_signer = input[0] != 0;
      a->is_writable = input[1] != 0;
      a->executable = input[2] != 0;
      input += 3 + 4;
      a->key = (SolPubkey *)input; input += 32;
      a->owner = (SolPubkey *)input; input += 32;
      a->lamports = (uint64_t *)input; input += 8;
      a->data_len = *(const uint64_t *)input; input += 8;
      a->data = (uint8_t *)input;
      input += a->data_len + MAX_PERMITTED_DATA_INCREASE;
      input = (const uint8_t *)(((uint64_t)input + 7) & ~7ULL);
      a->rent_epoch = *(const uint64_t *)input; input += 8;
    } else {
      if (i < ka_cap && dup < ka_cap) p->ka[i] = p->ka[dup];
      input += 7;
    }
  }
  p->data_len = *(const uint64_t *)input; input += 8;
  p->data = input; input += p->data_len;
  p->program_id = (const SolPubkey *)input;
  if (p->ka_num > ka_cap) p->ka_num = ka_cap;
}
