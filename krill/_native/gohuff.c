/* Length-limited Huffman codes as Go builds them (huffman_code.go), for goflate.c. */
#include "goflate_int.h"

huff_enc fixed_lit_enc, fixed_off_enc, huff_offset_enc;

uint16_t gf_reverse_bits(uint16_t number, int bit_length) {
    uint16_t v = (uint16_t)(number << (16 - bit_length)), r = 0;
    for (int i = 0; i < 16; i++) {
        r = (uint16_t)((r << 1) | (v & 1));
        v >>= 1;
    }
    return r;
}

int64_t gf_bit_length(const huff_enc *h, const int32_t *freq, int n) {
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        if (freq[i] != 0) total += (int64_t)freq[i] * h->codes[i].len;
    return total;
}

/* Both orders are total (literals are unique), so any correct sort gives Go's order:
 * insertion sort for the short lists, qsort for the long ones (up to 286, once per block). */
static int cmp_by_freq(const void *pa, const void *pb) {
    const lit_node *a = pa, *b = pb;
    if (a->freq != b->freq) return a->freq < b->freq ? -1 : 1;
    return (int)a->literal - (int)b->literal;
}

static int cmp_by_literal(const void *pa, const void *pb) {
    return (int)((const lit_node *)pa)->literal - (int)((const lit_node *)pb)->literal;
}

static void sort_nodes(lit_node *a, int n, int (*cmp)(const void *, const void *)) {
    if (n > 24) {
        qsort(a, (size_t)n, sizeof *a, cmp);
        return;
    }
    for (int i = 1; i < n; i++) {
        lit_node x = a[i];
        int j = i - 1;
        while (j >= 0 && cmp(&a[j], &x) > 0) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = x;
    }
}

typedef struct {
    int32_t level, last_freq, next_char_freq, next_pair_freq, needed;
} level_info;

/* bitCounts: how many literals get each code length, lengths limited to max_bits (a
 * package-merge variant). list holds n >= 3 nodes by increasing frequency. */
static int32_t bit_counts(huff_enc *h, lit_node *list, int32_t n, int32_t max_bits) {
    level_info levels[MAX_BITS_LIMIT + 1];
    int32_t leaf_counts[MAX_BITS_LIMIT][MAX_BITS_LIMIT];
    memset(levels, 0, sizeof levels);
    memset(leaf_counts, 0, sizeof leaf_counts);
    list[n].literal = UINT16_MAX;
    list[n].freq = INT32_MAX;
    if (max_bits > n - 1) max_bits = n - 1;
    for (int32_t level = 1; level <= max_bits; level++) {
        levels[level].level = level;
        levels[level].last_freq = list[1].freq;
        levels[level].next_char_freq = list[2].freq;
        levels[level].next_pair_freq = list[0].freq + list[1].freq;
        leaf_counts[level][level] = 2;
        if (level == 1) levels[level].next_pair_freq = INT32_MAX;
    }
    levels[max_bits].needed = 2 * n - 4;
    int32_t level = max_bits;
    for (;;) {
        level_info *l = &levels[level];
        if (l->next_pair_freq == INT32_MAX && l->next_char_freq == INT32_MAX) {
            l->needed = 0;
            levels[level + 1].next_pair_freq = INT32_MAX;
            level++;
            continue;
        }
        int32_t prev_freq = l->last_freq;
        if (l->next_char_freq < l->next_pair_freq) {
            int32_t k = leaf_counts[level][level] + 1;
            l->last_freq = l->next_char_freq;
            leaf_counts[level][level] = k;
            l->next_char_freq = list[k].freq;
        } else {
            l->last_freq = l->next_pair_freq;
            memcpy(leaf_counts[level], leaf_counts[level - 1], sizeof(int32_t) * (size_t)level);
            levels[l->level - 1].needed = 2;
        }
        if (--l->needed == 0) {
            if (l->level == max_bits) break;
            levels[l->level + 1].next_pair_freq = prev_freq + l->last_freq;
            level++;
        } else {
            while (levels[level - 1].needed > 0) level--;
        }
    }
    int32_t bits = 1;
    const int32_t *counts = leaf_counts[max_bits];
    for (int32_t lv = max_bits; lv > 0; lv--) {
        h->bit_count[bits] = counts[lv] - counts[lv - 1];
        bits++;
    }
    return max_bits;
}

/* assignEncodingAndSize: canonical codes, shortest codes to the most frequent literals,
 * equal lengths in literal order. */
static void assign_encoding(huff_enc *h, int32_t max_bits, lit_node *list, int count) {
    uint16_t code = 0;
    for (int32_t n = 0; n <= max_bits; n++) {
        int32_t bits = h->bit_count[n];
        code = (uint16_t)(code << 1);
        if (n == 0 || bits == 0) continue;
        lit_node *chunk = list + count - bits;
        sort_nodes(chunk, bits, cmp_by_literal);
        for (int32_t i = 0; i < bits; i++) {
            h->codes[chunk[i].literal].code = gf_reverse_bits(code, n);
            h->codes[chunk[i].literal].len = (uint16_t)n;
            code++;
        }
        count -= bits;
    }
}

/* generate: the length-limited code for freq[0..n). */
void gf_huff_generate(huff_enc *h, const int32_t *freq, int n, int32_t max_bits) {
    lit_node *list = h->cache;
    int count = 0;
    for (int i = 0; i < n; i++) {
        if (freq[i] != 0) {
            list[count].literal = (uint16_t)i;
            list[count].freq = freq[i];
            count++;
        } else {
            h->codes[i].len = 0;
        }
    }
    if (count <= 2) {
        for (int i = 0; i < count; i++) {
            h->codes[list[i].literal].code = (uint16_t)i;
            h->codes[list[i].literal].len = 1;
        }
        return;
    }
    sort_nodes(list, count, cmp_by_freq);
    int32_t mb = bit_counts(h, list, count, max_bits);
    assign_encoding(h, mb, list, count);
}
