/* The ELF transform's labels (elfcand.h): a file's label table (the distinct addresses its
 * fields point at, sorted) and the matching of the target's labels to the base's. */
#include "elfcand.h"

#include <stdlib.h>
#include <string.h>

/* LSD radix sort, 16 bits a pass (qsort was most of the base's normalization on a node). */
static int radix_sort(uint64_t *v, size_t n) {
    uint64_t *tmp = malloc((n + 1) * sizeof *tmp);
    size_t *count = malloc(65536 * sizeof *count);
    if (!tmp || !count) {
        free(tmp), free(count);
        return -1;
    }
    for (int shift = 0; shift < 64; shift += 16) {
        memset(count, 0, 65536 * sizeof *count);
        for (size_t i = 0; i < n; i++) count[(v[i] >> shift) & 0xFFFF]++;
        if (count[(n ? v[0] >> shift : 0) & 0xFFFF] == n) continue; /* all equal here */
        size_t sum = 0;
        for (size_t k = 0; k < 65536; k++) {
            size_t c = count[k];
            count[k] = sum, sum += c;
        }
        for (size_t i = 0; i < n; i++) tmp[count[(v[i] >> shift) & 0xFFFF]++] = v[i];
        memcpy(v, tmp, n * sizeof *v);
    }
    free(tmp), free(count);
    return 0;
}

/* Sorted distinct addresses of the taken candidates. */
uint64_t *elf_label_set(const CandList *c, size_t *count) {
    uint64_t *v = malloc((c->n + 1) * sizeof *v);
    if (!v) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].take) v[k++] = c->v[i].addr;
    if (radix_sort(v, k) < 0) {
        free(v);
        return NULL;
    }
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (!u || v[i] != v[u - 1]) v[u++] = v[i];
    *count = u;
    return v;
}

int64_t elf_label_find(const uint64_t *v, size_t n, uint64_t key) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && v[lo] == key ? (int64_t)lo : -1;
}

/* ---- matching the target's labels to the base's ------------------------------------------ */

typedef struct {
    uint32_t ctx, label;
} CtxLabel;

static int ctx_cmp(const void *a, const void *b) {
    const CtxLabel *x = a, *y = b;
    return x->ctx < y->ctx ? -1 : x->ctx > y->ctx;
}

static CtxLabel *ctx_labels(const CandList *c, const uint64_t *labels, size_t nl, size_t *count) {
    CtxLabel *v = malloc((c->n + 1) * sizeof *v);
    if (!v) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].take) v[k].ctx = c->v[i].ctx, v[k++].label = (uint32_t)elf_label_find(labels, nl, c->v[i].addr);
    qsort(v, k, sizeof *v, ctx_cmp);
    *count = k;
    return v;
}

/* For each target label, the base label it matches or -1. Courgette's "adjustment", simply:
 * (1) a field whose context occurs once in each file pairs the two labels it points at;
 * (2) walking the target's labels in address order, an unpaired one takes the base label at
 *     its address plus the shift of the last paired label (code moves in runs), or of the
 *     next paired one. Any choice is correct; better ones make the normalized files agree. */
int64_t *elf_label_match(const CandList *bc, const uint64_t *lb, size_t nb, const CandList *tc,
                      const uint64_t *lt, size_t nt) {
    int64_t *assign = malloc((nt + 1) * sizeof *assign);
    uint8_t *used = calloc(nb + 1, 1);
    size_t nbc = 0, ntc = 0;
    CtxLabel *bv = ctx_labels(bc, lb, nb, &nbc), *tv = ctx_labels(tc, lt, nt, &ntc);
    int64_t *next_shift = malloc((nt + 1) * sizeof *next_shift);
    if (!assign || !used || !bv || !tv || !next_shift) {
        free(assign), free(used), free(bv), free(tv), free(next_shift);
        return NULL;
    }
    for (size_t i = 0; i < nt; i++) assign[i] = -1;
    size_t i = 0, j = 0;
    while (i < nbc && j < ntc) {
        if (bv[i].ctx < tv[j].ctx) i++;
        else if (bv[i].ctx > tv[j].ctx) j++;
        else {
            size_t i2 = i, j2 = j;
            while (i2 < nbc && bv[i2].ctx == bv[i].ctx) i2++;
            while (j2 < ntc && tv[j2].ctx == tv[j].ctx) j2++;
            if (i2 - i == 1 && j2 - j == 1 && assign[tv[j].label] < 0 && !used[bv[i].label]) {
                assign[tv[j].label] = bv[i].label;
                used[bv[i].label] = 1;
            }
            i = i2, j = j2;
        }
    }
    int64_t shift = 0, have = 0;
    for (size_t k = nt; k-- > 0;) { /* the shift of the next paired label, for (2) */
        if (assign[k] >= 0) shift = (int64_t)(lb[assign[k]] - lt[k]), have = 1;
        next_shift[k] = have ? shift : INT64_MIN;
    }
    shift = 0;
    for (size_t k = 0; k < nt; k++) {
        if (assign[k] >= 0) {
            shift = (int64_t)(lb[assign[k]] - lt[k]);
            continue;
        }
        int64_t tries[2] = {shift, next_shift[k]};
        for (int t = 0; t < 2; t++) {
            if (t == 1 && (tries[1] == INT64_MIN || tries[1] == tries[0])) break;
            int64_t l = elf_label_find(lb, nb, lt[k] + (uint64_t)tries[t]);
            if (l >= 0 && !used[l]) {
                assign[k] = l, used[l] = 1;
                break;
            }
        }
    }
    free(used), free(bv), free(tv), free(next_shift);
    return assign;
}
