/* Shared by the ELF transform's parts (elfnorm.c, elffields.c, elflabels.c): a candidate field
 * and the list of a file's candidates, what a field's bytes hold, and the label table. */
#ifndef KRILL_ELFCAND_H
#define KRILL_ELFCAND_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t pos, addr, va;
    uint64_t hint; /* K_EH*: file offset of the FDE the field belongs to (contexts only) */
    uint32_t ctx;
    uint8_t kind, width, tail, take;
} Cand;

typedef struct {
    Cand *v;
    size_t n, cap;
    const uint8_t *buf;
    size_t nphase1;
} CandList;


/* ---- field values (elffields.c) -------------------------------------------------------- */

/* The address a field points at, decoded from its bytes. */
uint64_t elf_field_addr(const uint8_t *p, int kind, int tail, uint64_t va);
/* The largest label index a field of this kind can hold. */
uint64_t elf_index_limit(int kind);
/* The field's bytes carrying `idx` (forward) in place of its value. */
void elf_put_index(uint8_t *p, int kind, int tail, uint64_t idx);
/* The label index a normalized field holds. */
uint64_t elf_get_index(const uint8_t *p, int kind);
/* The field's bytes pointing at `addr`; 0, or -1 where the address does not fit the field. */
int elf_put_addr(uint8_t *p, int kind, int tail, uint64_t va, uint64_t addr);

/* ---- labels (elflabels.c) ---------------------------------------------------------------- */

/* Sorted distinct addresses of the taken candidates (malloc'd; NULL when out of memory). */
uint64_t *elf_label_set(const CandList *c, size_t *count);
/* The index of `key` in the sorted `v`, or -1. */
int64_t elf_label_find(const uint64_t *v, size_t n, uint64_t key);
/* A bucket index over a sorted label table (elf_label_index), for many lookups. */
typedef struct {
    const uint64_t *v;
    size_t n;
    uint64_t lo;    /* v[0] */
    unsigned shift; /* bucket of address a: (a - lo) >> shift */
    size_t buckets; /* 0: no buckets, lookups search the whole table */
    size_t *start;  /* buckets + 1 entries */
} LabelIndex;
/* Builds the index over v (which must outlive it); -1 when out of memory. */
int elf_label_index(LabelIndex *ix, const uint64_t *v, size_t n);
/* The same answer as elf_label_find(ix->v, ix->n, key), from one bucket. */
int64_t elf_label_lookup(const LabelIndex *ix, uint64_t key);
void elf_label_index_free(LabelIndex *ix);
/* For each target label, the base label it matches or -1 (malloc'd; NULL when out of memory). */
int64_t *elf_label_match(const CandList *bc, const uint64_t *lb, size_t nb, const CandList *tc,
                         const uint64_t *lt, size_t nt);

#endif
