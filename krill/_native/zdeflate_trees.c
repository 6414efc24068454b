/* krill._zdeflate, blocks: the symbols of a block become a stored, fixed or dynamic block
 * exactly as zlib 1.2.13's trees.c chooses and codes them. The Huffman construction must
 * match zlib's to the tie: the heap order (frequency, then depth), the overflow fix that
 * caps code lengths, the run-length coding of the code lengths and the size comparisons
 * that pick the block type all decide the bits. */
#include "zdeflate.h"

#include <stdlib.h>

/* extra bits per length code, distance code and bit-length code (RFC 1951) */
static const uint8_t EXTRA_LBITS[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                        2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint8_t EXTRA_DBITS[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                        6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
static const uint8_t EXTRA_BLBITS[19] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7};
/* the order in which code-length code lengths are sent */
static const uint8_t BL_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

uint8_t zd_length_code[256];
uint8_t zd_dist_code[512];
static unsigned base_length[29];
static unsigned base_dist[30];
static zd_node static_ltree[ZD_L_CODES + 2];
static zd_node static_dtree[ZD_D_CODES];

static unsigned reverse_bits(unsigned code, int len) {
    unsigned res = 0;
    do {
        res |= code & 1;
        code >>= 1, res <<= 1;
    } while (--len > 0);
    return res >> 1;
}

/* Canonical codes from code lengths, in symbol order (zlib's gen_codes). */
static void assign_codes(zd_node *tree, int max_code, const uint16_t *bl_count) {
    uint16_t next_code[ZD_MAX_BITS + 1];
    unsigned code = 0;
    for (int bits = 1; bits <= ZD_MAX_BITS; bits++) {
        code = (code + bl_count[bits - 1]) << 1;
        next_code[bits] = (uint16_t)code;
    }
    for (int n = 0; n <= max_code; n++) {
        int len = tree[n].len;
        if (len) tree[n].code = (uint16_t)reverse_bits(next_code[len]++, len);
    }
}

void zd_tables_init(void) {
    unsigned length = 0, dist = 0;
    int code;
    for (code = 0; code < 28; code++) {
        base_length[code] = length;
        for (int n = 0; n < (1 << EXTRA_LBITS[code]); n++) zd_length_code[length++] = (uint8_t)code;
    }
    /* length 258 (255 here) has code 28 of its own, overriding code 27's last slot */
    zd_length_code[length - 1] = (uint8_t)code;
    base_length[28] = 255;
    for (code = 0; code < 16; code++) {
        base_dist[code] = dist;
        for (int n = 0; n < (1 << EXTRA_DBITS[code]); n++) zd_dist_code[dist++] = (uint8_t)code;
    }
    dist >>= 7; /* from now on, distances divided by 128 */
    for (; code < ZD_D_CODES; code++) {
        base_dist[code] = dist << 7;
        for (int n = 0; n < (1 << (EXTRA_DBITS[code] - 7)); n++)
            zd_dist_code[256 + dist++] = (uint8_t)code;
    }
    uint16_t bl_count[ZD_MAX_BITS + 1] = {0};
    int n = 0;
    for (; n <= 143; n++) static_ltree[n].len = 8, bl_count[8]++;
    for (; n <= 255; n++) static_ltree[n].len = 9, bl_count[9]++;
    for (; n <= 279; n++) static_ltree[n].len = 7, bl_count[7]++;
    for (; n <= 287; n++) static_ltree[n].len = 8, bl_count[8]++;
    assign_codes(static_ltree, ZD_L_CODES + 1, bl_count);
    for (n = 0; n < ZD_D_CODES; n++) {
        static_dtree[n].len = 5;
        static_dtree[n].code = (uint16_t)reverse_bits((unsigned)n, 5);
    }
}

/* ---- bits ---------------------------------------------------------------------------- */

/* The caller made room (zd_flush_block reserves the block's worst case). */
static inline void put_bits(zd_state *s, uint64_t value, unsigned len) {
    s->bitbuf |= value << s->bitcount;
    s->bitcount += len;
    if (s->bitcount >= 32) {
        uint32_t word = (uint32_t)s->bitbuf;
        memcpy(s->out + s->out_len, &word, 4); /* little-endian hosts only (setup.py) */
        s->out_len += 4;
        s->bitbuf >>= 32;
        s->bitcount -= 32;
    }
}

/* Pad to a byte boundary with zero bits and move every whole byte out (bi_windup). */
static void align_bits(zd_state *s) {
    while (s->bitcount > 0) {
        s->out[s->out_len++] = (uint8_t)s->bitbuf;
        s->bitbuf >>= 8;
        s->bitcount = s->bitcount > 8 ? s->bitcount - 8 : 0;
    }
    s->bitbuf = 0;
}

static int reserve(zd_state *s, size_t more) {
    if (s->out_len + more <= s->out_cap) return 1;
    size_t cap = s->out_cap ? s->out_cap : 1 << 16;
    while (cap < s->out_len + more) cap *= 2;
    uint8_t *grown = realloc(s->out, cap);
    if (!grown) return 0;
    s->out = grown;
    s->out_cap = cap;
    return 1;
}

/* ---- trees ----------------------------------------------------------------------------- */

void zd_init_block(zd_state *s) {
    for (int n = 0; n < ZD_L_CODES; n++) s->dyn_ltree[n].freq = 0;
    for (int n = 0; n < ZD_D_CODES; n++) s->dyn_dtree[n].freq = 0;
    for (int n = 0; n < ZD_BL_CODES; n++) s->bl_tree[n].freq = 0;
    s->dyn_ltree[ZD_END_BLOCK].freq = 1;
    s->opt_len = s->static_len = 0;
    s->sym_next = 0;
}

void zd_trees_init(zd_state *s) {
    s->l_desc = (zd_tree_desc){s->dyn_ltree, 0, static_ltree, EXTRA_LBITS, ZD_LITERALS + 1,
                               ZD_L_CODES, ZD_MAX_BITS};
    s->d_desc = (zd_tree_desc){s->dyn_dtree, 0, static_dtree, EXTRA_DBITS, 0, ZD_D_CODES,
                               ZD_MAX_BITS};
    s->bl_desc = (zd_tree_desc){s->bl_tree, 0, NULL, EXTRA_BLBITS, 0, ZD_BL_CODES, ZD_MAX_BL_BITS};
    zd_init_block(s);
}

/* n sorts before m: less frequent, or as frequent and not deeper */
static inline int lighter(const zd_node *tree, const uint8_t *depth, int n, int m) {
    return tree[n].freq < tree[m].freq || (tree[n].freq == tree[m].freq && depth[n] <= depth[m]);
}

static void sift_down(zd_state *s, const zd_node *tree, int k) {
    int v = s->heap[k];
    int j = k << 1;
    while (j <= s->heap_len) {
        if (j < s->heap_len && lighter(tree, s->depth, s->heap[j + 1], s->heap[j])) j++;
        if (lighter(tree, s->depth, v, s->heap[j])) break;
        s->heap[k] = s->heap[j];
        k = j;
        j <<= 1;
    }
    s->heap[k] = v;
}

/* Code lengths from the tree in heap[heap_max..], capped at max_length the way zlib caps
 * them (gen_bitlen), adding the block's cost to opt_len and static_len. */
static void assign_lengths(zd_state *s, zd_tree_desc *desc) {
    zd_node *tree = desc->tree;
    int max_code = desc->max_code, max_length = desc->max_length, overflow = 0, h;
    for (int bits = 0; bits <= ZD_MAX_BITS; bits++) s->bl_count[bits] = 0;
    tree[s->heap[s->heap_max]].len = 0; /* the root */
    for (h = s->heap_max + 1; h < ZD_HEAP_SIZE; h++) {
        int n = s->heap[h];
        int bits = tree[tree[n].dad].len + 1;
        if (bits > max_length) bits = max_length, overflow++;
        tree[n].len = (uint16_t)bits;
        if (n > max_code) continue; /* an inner node */
        s->bl_count[bits]++;
        int xbits = n >= desc->extra_base ? desc->extra[n - desc->extra_base] : 0;
        unsigned long f = tree[n].freq;
        s->opt_len += f * (unsigned)(bits + xbits);
        if (desc->stat) s->static_len += f * (unsigned)(desc->stat[n].len + xbits);
    }
    if (overflow == 0) return;
    do { /* move a leaf down, and an overflowing one up beside it as its brother */
        int bits = max_length - 1;
        while (s->bl_count[bits] == 0) bits--;
        s->bl_count[bits]--;
        s->bl_count[bits + 1] += 2;
        s->bl_count[max_length]--;
        overflow -= 2;
    } while (overflow > 0);
    /* hand the lengths out again, longest to the least frequent, as zlib walks the heap */
    for (int bits = max_length; bits != 0; bits--) {
        int n = s->bl_count[bits];
        while (n != 0) {
            int m = s->heap[--h];
            if (m > max_code) continue;
            if (tree[m].len != (unsigned)bits) {
                s->opt_len += ((unsigned long)bits - tree[m].len) * tree[m].freq;
                tree[m].len = (uint16_t)bits;
            }
            n--;
        }
    }
}

static void build_tree(zd_state *s, zd_tree_desc *desc) {
    zd_node *tree = desc->tree;
    int elems = desc->elems, max_code = -1, node, n, m;
    s->heap_len = 0, s->heap_max = ZD_HEAP_SIZE;
    for (n = 0; n < elems; n++) {
        if (tree[n].freq != 0) {
            s->heap[++s->heap_len] = max_code = n;
            s->depth[n] = 0;
        } else {
            tree[n].len = 0;
        }
    }
    /* at least two codes, so a code length of 0 is never needed */
    while (s->heap_len < 2) {
        node = s->heap[++s->heap_len] = max_code < 2 ? ++max_code : 0;
        tree[node].freq = 1;
        s->depth[node] = 0;
        s->opt_len--;
        if (desc->stat) s->static_len -= desc->stat[node].len;
    }
    desc->max_code = max_code;
    for (n = s->heap_len / 2; n >= 1; n--) sift_down(s, tree, n);
    node = elems;
    do {
        n = s->heap[1];
        s->heap[1] = s->heap[s->heap_len--];
        sift_down(s, tree, 1);
        m = s->heap[1];
        s->heap[--s->heap_max] = n;
        s->heap[--s->heap_max] = m;
        tree[node].freq = tree[n].freq + tree[m].freq;
        s->depth[node] = (uint8_t)((s->depth[n] >= s->depth[m] ? s->depth[n] : s->depth[m]) + 1);
        tree[n].dad = tree[m].dad = (uint16_t)node;
        s->heap[1] = node++;
        sift_down(s, tree, 1);
    } while (s->heap_len >= 2);
    s->heap[--s->heap_max] = s->heap[1];
    assign_lengths(s, desc);
    assign_codes(tree, max_code, s->bl_count);
}

/* The run-length walk over code lengths shared by counting and sending (scan/send_tree):
 * calls emit(s, tree, curlen, count, prevlen) for each run zlib would code. */
#define ZD_RUNS(tree, max_code, EMIT)                                            \
    do {                                                                         \
        int prevlen = -1, nextlen = (tree)[0].len, count = 0;                    \
        int max_count = nextlen ? 7 : 138, min_count = nextlen ? 4 : 3;          \
        for (int n = 0; n <= (max_code); n++) {                                  \
            int curlen = nextlen;                                                \
            nextlen = (tree)[n + 1].len;                                         \
            if (++count < max_count && curlen == nextlen) continue;              \
            EMIT;                                                                \
            count = 0, prevlen = curlen;                                         \
            if (nextlen == 0) max_count = 138, min_count = 3;                    \
            else if (curlen == nextlen) max_count = 6, min_count = 3;            \
            else max_count = 7, min_count = 4;                                   \
        }                                                                        \
    } while (0)

static void count_runs(zd_state *s, zd_node *tree, int max_code) {
    zd_node *bl = s->bl_tree;
    tree[max_code + 1].len = 0xffff; /* guard */
    ZD_RUNS(tree, max_code, {
        if (count < min_count) bl[curlen].freq += (unsigned)count;
        else if (curlen != 0) {
            if (curlen != prevlen) bl[curlen].freq++;
            bl[16].freq++;
        } else if (count <= 10) bl[17].freq++;
        else bl[18].freq++;
    });
}

static void send_runs(zd_state *s, zd_node *tree, int max_code) {
    const zd_node *bl = s->bl_tree;
    ZD_RUNS(tree, max_code, {
        if (count < min_count) {
            do put_bits(s, bl[curlen].code, bl[curlen].len);
            while (--count != 0);
        } else if (curlen != 0) {
            if (curlen != prevlen) {
                put_bits(s, bl[curlen].code, bl[curlen].len);
                count--;
            }
            put_bits(s, bl[16].code, bl[16].len);
            put_bits(s, (unsigned)count - 3, 2);
        } else if (count <= 10) {
            put_bits(s, bl[17].code, bl[17].len);
            put_bits(s, (unsigned)count - 3, 3);
        } else {
            put_bits(s, bl[18].code, bl[18].len);
            put_bits(s, (unsigned)count - 11, 7);
        }
    });
}

static int build_bl_tree(zd_state *s) {
    count_runs(s, s->dyn_ltree, s->l_desc.max_code);
    count_runs(s, s->dyn_dtree, s->d_desc.max_code);
    build_tree(s, &s->bl_desc);
    int max_blindex;
    for (max_blindex = ZD_BL_CODES - 1; max_blindex >= 3; max_blindex--)
        if (s->bl_tree[BL_ORDER[max_blindex]].len != 0) break;
    s->opt_len += 3 * ((unsigned long)max_blindex + 1) + 5 + 5 + 4;
    return max_blindex;
}

static void send_trees(zd_state *s, int lcodes, int dcodes, int blcodes) {
    put_bits(s, (unsigned)lcodes - 257, 5);
    put_bits(s, (unsigned)dcodes - 1, 5);
    put_bits(s, (unsigned)blcodes - 4, 4);
    for (int rank = 0; rank < blcodes; rank++) put_bits(s, s->bl_tree[BL_ORDER[rank]].len, 3);
    send_runs(s, s->dyn_ltree, lcodes - 1);
    send_runs(s, s->dyn_dtree, dcodes - 1);
}

static void send_symbols(zd_state *s, const zd_node *ltree, const zd_node *dtree) {
    const uint32_t *sym = s->syms, *end = s->syms + s->sym_next;
    for (; sym < end; sym++) {
        unsigned dist = *sym >> 8, lc = *sym & 0xff;
        if (dist == 0) {
            put_bits(s, ltree[lc].code, ltree[lc].len);
            continue;
        }
        unsigned code = zd_length_code[lc];
        /* length code and its extra bits, then distance code and its: at most 48 bits */
        uint64_t bits = ltree[code + ZD_LITERALS + 1].code;
        unsigned n = ltree[code + ZD_LITERALS + 1].len;
        bits |= (uint64_t)(lc - base_length[code]) << n;
        n += EXTRA_LBITS[code];
        dist--;
        code = zd_d_code(dist);
        bits |= (uint64_t)dtree[code].code << n;
        n += dtree[code].len;
        bits |= (uint64_t)(dist - base_dist[code]) << n;
        n += EXTRA_DBITS[code];
        if (n > 32) {
            put_bits(s, bits & 0xffffffffu, 32);
            bits >>= 32, n -= 32;
        }
        put_bits(s, bits, n);
    }
    put_bits(s, ltree[ZD_END_BLOCK].code, ltree[ZD_END_BLOCK].len);
}

/* Close the block of the symbols tallied so far (zlib's _tr_flush_block): stored when that
 * is no larger, else fixed codes when no larger than dynamic, else dynamic. ``buf`` is the
 * block's input, NULL when the window has slid past its start. */
void zd_flush_block(zd_state *s, const uint8_t *buf, unsigned long stored_len, int last) {
    /* worst case: a stored block, or 48 bits a symbol plus the trees */
    size_t need = (buf ? stored_len : 0) + (size_t)s->sym_next * 6 + 1024;
    if (!reserve(s, need)) {
        s->failed = 1;
        zd_init_block(s);
        return;
    }
    build_tree(s, &s->l_desc);
    build_tree(s, &s->d_desc);
    int max_blindex = build_bl_tree(s);
    unsigned long opt_lenb = (s->opt_len + 3 + 7) >> 3;
    unsigned long static_lenb = (s->static_len + 3 + 7) >> 3;
    if (static_lenb <= opt_lenb) opt_lenb = static_lenb;
    if (stored_len + 4 <= opt_lenb && buf != NULL) {
        put_bits(s, (0u << 1) + (unsigned)last, 3);
        align_bits(s);
        uint16_t len = (uint16_t)stored_len, nlen = (uint16_t)~stored_len;
        s->out[s->out_len++] = (uint8_t)len;
        s->out[s->out_len++] = (uint8_t)(len >> 8);
        s->out[s->out_len++] = (uint8_t)nlen;
        s->out[s->out_len++] = (uint8_t)(nlen >> 8);
        memcpy(s->out + s->out_len, buf, stored_len);
        s->out_len += stored_len;
    } else if (static_lenb == opt_lenb) {
        put_bits(s, (1u << 1) + (unsigned)last, 3);
        send_symbols(s, static_ltree, static_dtree);
    } else {
        put_bits(s, (2u << 1) + (unsigned)last, 3);
        send_trees(s, s->l_desc.max_code + 1, s->d_desc.max_code + 1, max_blindex + 1);
        send_symbols(s, s->dyn_ltree, s->dyn_dtree);
    }
    zd_init_block(s);
    if (last) align_bits(s);
}

/* What a flush other than Z_FINISH and Z_BLOCK adds after its block: Z_PARTIAL_FLUSH an
 * empty fixed block (_tr_align), Z_SYNC_FLUSH and Z_FULL_FLUSH an empty stored block. */
void zd_flush_marker(zd_state *s, int partial) {
    if (!reserve(s, 16)) {
        s->failed = 1;
        return;
    }
    if (partial) {
        put_bits(s, 1u << 1, 3);
        put_bits(s, static_ltree[ZD_END_BLOCK].code, static_ltree[ZD_END_BLOCK].len);
        return;
    }
    put_bits(s, 0, 3);
    align_bits(s);
    static const uint8_t empty[4] = {0, 0, 0xff, 0xff};
    memcpy(s->out + s->out_len, empty, 4);
    s->out_len += 4;
}
