/* krill._zdeflate: a raw deflate encoder whose output is bit for bit that of zlib 1.2.13's
 * deflate_slow (levels 4-9, any memLevel, windowBits -15, Z_DEFAULT_STRATEGY or Z_FILTERED),
 * written for Krill so zlib-made layers recompress faster than the system libz does.
 *
 * Every decision that shapes the output (hashing, chain walk, lazy matching, window
 * sliding, when a block ends and how it is coded) follows zlib's algorithm; only the
 * mechanics differ: 8 bytes compared at a time, a 64-bit bit buffer, no pending buffer.
 * The parts: zdeflate_match.c (window, hash chains, matcher, the lazy loop),
 * zdeflate_trees.c (symbols, Huffman trees, blocks, bits) and zdeflate_py.c (the type).
 */
#ifndef KRILL_ZDEFLATE_H
#define KRILL_ZDEFLATE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ZD_WSIZE 32768u
#define ZD_WMASK (ZD_WSIZE - 1)
#define ZD_WINDOW_SIZE (2 * ZD_WSIZE)
#define ZD_MIN_MATCH 3
#define ZD_MAX_MATCH 258
#define ZD_MIN_LOOKAHEAD (ZD_MAX_MATCH + ZD_MIN_MATCH + 1)
#define ZD_MAX_DIST (ZD_WSIZE - ZD_MIN_LOOKAHEAD)
#define ZD_TOO_FAR 4096
/* the matcher reads whole 8-byte words up to 7 bytes past a 258-byte match */
#define ZD_WINDOW_PAD 64

#define ZD_LITERALS 256
#define ZD_END_BLOCK 256
#define ZD_L_CODES (ZD_LITERALS + 1 + 29)
#define ZD_D_CODES 30
#define ZD_BL_CODES 19
#define ZD_HEAP_SIZE (2 * ZD_L_CODES + 1)
#define ZD_MAX_BITS 15
#define ZD_MAX_BL_BITS 7

#define ZD_FILTERED 1

/* zlib's flush modes */
#define ZD_NO_FLUSH 0
#define ZD_PARTIAL_FLUSH 1
#define ZD_SYNC_FLUSH 2
#define ZD_FULL_FLUSH 3
#define ZD_FINISH 4
#define ZD_BLOCK 5

/* One Huffman tree entry; zlib overlays freq/code and dad/len, kept apart here. */
typedef struct {
    uint32_t freq;
    uint16_t code;
    uint16_t len;
    uint16_t dad;
} zd_node;

/* What build_tree needs to know about a tree besides its nodes. */
typedef struct {
    zd_node *tree;
    int max_code;
    const zd_node *stat; /* the fixed code's lengths, NULL for the bit-length tree */
    const uint8_t *extra;
    int extra_base;
    int elems;
    int max_length;
} zd_tree_desc;

typedef struct zd_state {
    /* settings */
    int level, strategy;
    unsigned good_match, max_lazy, nice_match, max_chain;
    unsigned hash_bits, hash_size, hash_mask, hash_shift;
    unsigned lit_bufsize, sym_end;

    /* window and hash chains */
    uint8_t *window; /* ZD_WINDOW_SIZE + ZD_WINDOW_PAD bytes, zeroed at start */
    /* ZD_WSIZE chain links: 16-bit lane k of links[p & WMASK] is the position k+1 steps
     * down p's chain (lane 0 is zlib's prev[]), so the walk loads once per 4 candidates */
    uint64_t *links;
    uint16_t *head;  /* hash_size heads */
    unsigned ins_h;
    long block_start;
    unsigned strstart, match_start, lookahead, insert;
    unsigned match_length, prev_length, prev_match;
    int match_available;

    /* input of the current call */
    const uint8_t *next_in;
    size_t avail_in;

    /* symbols of the open block: (distance << 8) | length-3 or literal; distance 0 = literal */
    uint32_t *syms;
    unsigned sym_next;

    /* trees */
    zd_node dyn_ltree[ZD_HEAP_SIZE];
    zd_node dyn_dtree[2 * ZD_D_CODES + 1];
    zd_node bl_tree[2 * ZD_BL_CODES + 1];
    zd_tree_desc l_desc, d_desc, bl_desc;
    uint16_t bl_count[ZD_MAX_BITS + 1];
    int heap[ZD_HEAP_SIZE];
    int heap_len, heap_max;
    uint8_t depth[ZD_HEAP_SIZE];
    unsigned long opt_len, static_len;

    /* output: whole bytes in out[0..out_len), up to 63 more bits in bitbuf */
    uint8_t *out;
    size_t out_len, out_cap;
    uint64_t bitbuf;
    unsigned bitcount;
    int last_flush; /* the flush mode of the previous call (-2 before any), as deflate() keeps */
    int failed;     /* an allocation failed: the stream is lost */
    int finished;
} zd_state;

/* zdeflate_match.c */
int zd_init(zd_state *s, int level, int mem_level, int strategy);
void zd_free(zd_state *s);
void zd_set_dictionary(zd_state *s, const uint8_t *dict, size_t len);
/* One deflate() call as Python's compress() (ZD_NO_FLUSH) and flush(mode) make it:
 * consumes all of data, then flushes as mode says. */
void zd_deflate(zd_state *s, const uint8_t *data, size_t len, int flush);

/* zdeflate_trees.c */
void zd_tables_init(void);
void zd_init_block(zd_state *s);
void zd_trees_init(zd_state *s);
void zd_flush_block(zd_state *s, const uint8_t *buf, unsigned long stored_len, int last);
void zd_flush_marker(zd_state *s, int partial);
extern uint8_t zd_length_code[256];
extern uint8_t zd_dist_code[512];

static inline unsigned zd_d_code(unsigned dist) {
    return dist < 256 ? zd_dist_code[dist] : zd_dist_code[256 + (dist >> 7)];
}

/* Record a literal; nonzero when the block is full and must be flushed. */
static inline int zd_tally_lit(zd_state *s, unsigned c) {
    s->syms[s->sym_next++] = c;
    s->dyn_ltree[c].freq++;
    return s->sym_next == s->sym_end;
}

/* Record a match at distance dist (1..32768) of length len+3. */
static inline int zd_tally_dist(zd_state *s, unsigned dist, unsigned len) {
    s->syms[s->sym_next++] = (dist << 8) | len;
    s->dyn_ltree[zd_length_code[len] + ZD_LITERALS + 1].freq++;
    s->dyn_dtree[zd_d_code(dist - 1)].freq++;
    return s->sym_next == s->sym_end;
}

#endif
