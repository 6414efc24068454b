/* The ELF transform's labels (elfcand.h): a file's label table (the distinct addresses its
 * fields point at, sorted) and the matching of the target's labels to the base's. */
#include "elfcand.h"

#include <stdlib.h>
#include <string.h>

/* LSD radix sort of v - min(v), 11 bits a pass, only as many passes as the span needs: a
 * library's labels span a few MB, two passes (qsort was most of the base's normalization on
 * a node; 16-bit digits cleared a 512 KB count table four times per file). */
#define DIGIT_BITS 11
static int radix_sort(uint64_t *v, size_t n) {
    if (n < 2) return 0;
    uint64_t lo = v[0], hi = v[0];
    for (size_t i = 1; i < n; i++) {
        if (v[i] < lo) lo = v[i];
        if (v[i] > hi) hi = v[i];
    }
    uint64_t *tmp = malloc(n * sizeof *tmp), *src = v, *dst = tmp;
    size_t count[1u << DIGIT_BITS];
    if (!tmp) return -1;
    for (int shift = 0; shift < 64 && ((hi - lo) >> shift); shift += DIGIT_BITS) {
        const uint64_t mask = (1u << DIGIT_BITS) - 1;
        memset(count, 0, sizeof count);
        for (size_t i = 0; i < n; i++) count[((src[i] - lo) >> shift) & mask]++;
        size_t sum = 0;
        for (size_t k = 0; k <= mask; k++) {
            size_t c = count[k];
            count[k] = sum, sum += c;
        }
        for (size_t i = 0; i < n; i++) dst[count[((src[i] - lo) >> shift) & mask]++] = src[i];
        uint64_t *t = src;
        src = dst, dst = t;
    }
    if (src != v) memcpy(v, src, n * sizeof *v);
    free(tmp);
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

/* Below this many labels a binary search over the whole table is as quick as a bucket. */
#define INDEX_MIN_LABELS 64

/* Buckets over the table's address range, a power of two at least as many as labels:
 * start[b] is the first label whose (address - lo) >> shift is b or more. A lookup reads
 * one bucket (usually one or two labels) where a binary search over a library's 10^5
 * labels took 17 dependent, mispredicted steps: that search was a quarter of a node's
 * normalization of the base. Addresses cluster, so a bucket may hold many: it is searched
 * in halves, never walked. */
int elf_label_index(LabelIndex *ix, const uint64_t *v, size_t n) {
    *ix = (LabelIndex){v, n, n ? v[0] : 0, 0, 0, NULL};
    if (n < INDEX_MIN_LABELS) return 0;
    size_t buckets = 1;
    while (buckets < n) buckets <<= 1;
    uint64_t span = v[n - 1] - v[0];
    while ((span >> ix->shift) >= buckets) ix->shift++; /* < 64: buckets >= 64 */
    if (!(ix->start = malloc((buckets + 1) * sizeof *ix->start))) return -1;
    size_t i = 0;
    for (size_t b = 0; b <= buckets; b++) {
        while (i < n && ((v[i] - ix->lo) >> ix->shift) < b) i++;
        ix->start[b] = i;
    }
    ix->buckets = buckets;
    return 0;
}

int64_t elf_label_lookup(const LabelIndex *ix, uint64_t key) {
    if (!ix->start) return elf_label_find(ix->v, ix->n, key);
    if (key < ix->lo) return -1;
    uint64_t b = (key - ix->lo) >> ix->shift;
    if (b >= ix->buckets) return -1;
    size_t first = ix->start[b];
    int64_t k = elf_label_find(ix->v + first, ix->start[b + 1] - first, key);
    return k < 0 ? -1 : k + (int64_t)first;
}

void elf_label_index_free(LabelIndex *ix) {
    free(ix->start);
    ix->start = NULL;
}

/* ---- matching the target's labels to the base's ------------------------------------------ */

typedef struct {
    uint32_t ctx, label;
} CtxLabel;

static int ctx_cmp(const void *a, const void *b) {
    const CtxLabel *x = a, *y = b;
    return x->ctx < y->ctx ? -1 : x->ctx > y->ctx;
}

static CtxLabel *ctx_labels(const CandList *c, const LabelIndex *labels, size_t *count) {
    CtxLabel *v = malloc((c->n + 1) * sizeof *v);
    if (!v) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->v[i].take) v[k].ctx = c->v[i].ctx, v[k++].label = (uint32_t)elf_label_lookup(labels, c->v[i].addr);
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
    LabelIndex bix, tix;
    int nomem = elf_label_index(&bix, lb, nb) < 0;
    nomem |= elf_label_index(&tix, lt, nt) < 0;
    int64_t *assign = malloc((nt + 1) * sizeof *assign);
    uint8_t *used = calloc(nb + 1, 1);
    size_t nbc = 0, ntc = 0;
    CtxLabel *bv = nomem ? NULL : ctx_labels(bc, &bix, &nbc),
             *tv = nomem ? NULL : ctx_labels(tc, &tix, &ntc);
    int64_t *next_shift = malloc((nt + 1) * sizeof *next_shift);
    elf_label_index_free(&tix);
    if (!assign || !used || !bv || !tv || !next_shift) {
        elf_label_index_free(&bix);
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
            int64_t l = elf_label_lookup(&bix, lt[k] + (uint64_t)tries[t]);
            if (l >= 0 && !used[l]) {
                assign[k] = l, used[l] = 1;
                break;
            }
        }
    }
    elf_label_index_free(&bix);
    free(used), free(bv), free(tv), free(next_shift);
    return assign;
}
