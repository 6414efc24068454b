/*
 * krill._goflate: a deflate encoder whose output is byte for byte that of Go's
 * compress/flate (verified against Go 1.19), so Krill can recompress layers
 * made by Docker, BuildKit, crane and ko (all Go compress/gzip) exactly.
 *
 * Written for Krill from Go's documented behaviour (see NOTICE): the same
 * matcher (hash chains of 2^17 heads, lazy matching per level, a 64 KiB window
 * that slides by 32 KiB), the same level-1 fast path (a 2^14-entry table over
 * 64 KiB blocks), the same length-limited Huffman construction and the same
 * choice between stored, fixed and dynamic blocks. Any difference in any of
 * these changes the bytes, so the structure follows Go's closely and the
 * comments name the Go function each part reproduces.
 *
 * Go's Write is "step, then fill" in a loop; its output depends (rarely, when
 * a Write ends within 262 bytes of a full window) on how the input was split.
 * Deflater.compress() behaves as if all input came in one Write, whatever the
 * chunks it is given; Deflater.write() is exactly one Go Write call.
 *
 * Memory: about 1 MiB per Deflater, whatever the input size.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

#include "elfnorm.h"
#include "zblocks.h"

/* ---- constants (deflate.go, deflatefast.go, huffman_bit_writer.go) ---------------------- */

#define WINDOW_SIZE (1 << 15)
#define WINDOW_MASK (WINDOW_SIZE - 1)
#define MIN_MATCH 4           /* the smallest match Go's matcher emits */
#define MAX_MATCH 258
#define BASE_MATCH_LENGTH 3
#define BASE_MATCH_OFFSET 1
#define MAX_MATCH_OFFSET (1 << 15)
#define MAX_FLATE_BLOCK_TOKENS (1 << 14)
#define MAX_STORE_BLOCK 65535
#define HASH_BITS 17
#define HASH_SIZE (1 << HASH_BITS)
#define HASH_MASK (HASH_SIZE - 1)
#define MAX_HASH_OFFSET (1 << 24)
#define SKIP_NEVER INT32_MAX
#define HASHMUL 0x1e35a7bdu

#define FAST_TABLE_BITS 14
#define FAST_TABLE_SIZE (1 << FAST_TABLE_BITS)
#define FAST_TABLE_MASK (FAST_TABLE_SIZE - 1)
#define FAST_TABLE_SHIFT (32 - FAST_TABLE_BITS)
#define FAST_BUFFER_RESET (INT32_MAX - MAX_STORE_BLOCK * 2)
#define FAST_INPUT_MARGIN (16 - 1)
#define FAST_MIN_NON_LITERAL_BLOCK (1 + 1 + FAST_INPUT_MARGIN)

#define MAX_NUM_LIT 286
#define OFFSET_CODE_COUNT 30
#define END_BLOCK_MARKER 256
#define LENGTH_CODES_START 257
#define CODEGEN_CODE_COUNT 19
#define BAD_CODE 255
#define MAX_BITS_LIMIT 16

/* tokens (token.go): a literal is its byte; a match is 1<<30 | (length-3)<<22 | (offset-1) */
#define MATCH_TYPE (1u << 30)
#define LENGTH_SHIFT 22
#define OFFSET_MASK ((1u << LENGTH_SHIFT) - 1)
#define MATCH_TOKEN(xlen, xoff) (MATCH_TYPE + ((uint32_t)(xlen) << LENGTH_SHIFT) + (uint32_t)(xoff))

typedef struct {
    int level, good, lazy, nice, chain, fast_skip;
} level_cfg;

static const level_cfg LEVELS[10] = {
    {0, 0, 0, 0, 0, 0},
    {1, 0, 0, 0, 0, 0},
    {2, 4, 0, 16, 8, 5},
    {3, 4, 0, 32, 32, 6},
    {4, 4, 4, 16, 16, SKIP_NEVER},
    {5, 8, 16, 32, 32, SKIP_NEVER},
    {6, 8, 16, 128, 128, SKIP_NEVER},
    {7, 8, 32, 128, 256, SKIP_NEVER},
    {8, 32, 128, 258, 1024, SKIP_NEVER},
    {9, 32, 258, 258, 4096, SKIP_NEVER},
};

static const int8_t LENGTH_EXTRA_BITS[29] = {
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
};
static const uint32_t LENGTH_BASE[29] = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28,
    32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 255,
};
static const int8_t OFFSET_EXTRA_BITS[30] = {
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
};
static const uint32_t OFFSET_BASE[30] = {
    0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x0006, 0x0008, 0x000c, 0x0010, 0x0018,
    0x0020, 0x0030, 0x0040, 0x0060, 0x0080, 0x00c0, 0x0100, 0x0180, 0x0200, 0x0300,
    0x0400, 0x0600, 0x0800, 0x0c00, 0x1000, 0x1800, 0x2000, 0x3000, 0x4000, 0x6000,
};
static const uint8_t CODEGEN_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

/* Filled by init_tables(): length (0..255) and offset (0..32767) -> code, as token.go's. */
static uint8_t length_code_tab[256];
static uint8_t offset_code_tab[MAX_MATCH_OFFSET];

/* ---- Huffman codes (huffman_code.go) ---------------------------------------------------- */

typedef struct {
    uint16_t code, len;
} hcode;

typedef struct {
    uint16_t literal;
    int32_t freq;
} lit_node;

typedef struct {
    hcode codes[MAX_NUM_LIT];
    int32_t bit_count[17];
    lit_node cache[MAX_NUM_LIT + 1];
} huff_enc;

static huff_enc fixed_lit_enc, fixed_off_enc, huff_offset_enc;

static uint16_t reverse_bits(uint16_t number, int bit_length) {
    uint16_t v = (uint16_t)(number << (16 - bit_length)), r = 0;
    for (int i = 0; i < 16; i++) {
        r = (uint16_t)((r << 1) | (v & 1));
        v >>= 1;
    }
    return r;
}

static int64_t bit_length(const huff_enc *h, const int32_t *freq, int n) {
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
            h->codes[chunk[i].literal].code = reverse_bits(code, n);
            h->codes[chunk[i].literal].len = (uint16_t)n;
            code++;
        }
        count -= bits;
    }
}

/* generate: the length-limited code for freq[0..n). */
static void huff_generate(huff_enc *h, const int32_t *freq, int n, int32_t max_bits) {
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

/* ---- the encoder state ------------------------------------------------------------------ */

typedef struct {
    uint32_t val;
    int32_t offset;
} fast_entry;

/* What a restarted levels-4-9 encoder needs beyond the input: see "restart points". */
typedef struct {
    int64_t in_off, bit_off; /* where the block ends: input offset, output bit offset */
    int32_t win;             /* in_off - the window's input offset (the window slides at fixed points) */
    int32_t avail;           /* byteAvailable: the byte at in_off is pending as a lazy literal */
    int32_t length, offset;  /* the match found at in_off, when avail */
} restart_point;

typedef struct {
    PyObject_HEAD
    level_cfg cfg;
    int level;    /* -2 … 9, with -1 already mapped to 6 */
    int busy;     /* a call is running (the GIL is released while compressing) */
    int finished; /* finish() was called */
    int sync;

    uint8_t *window;
    int window_cap; /* 2*WINDOW_SIZE for levels 2-9, MAX_STORE_BLOCK otherwise */
    int window_end;

    /* levels 2-9 (compressor in deflate.go) */
    uint32_t *hash_head; /* HASH_SIZE */
    uint32_t *hash_prev; /* WINDOW_SIZE */
    int chain_head, hash_offset, index, block_start, byte_available;
    int length, offset, max_insert_index;

    /* level 1 (deflateFast in deflatefast.go) */
    fast_entry *table; /* FAST_TABLE_SIZE */
    uint8_t *prev;     /* MAX_STORE_BLOCK */
    int32_t prev_len, cur;

    uint32_t *tokens; /* up to MAX_STORE_BLOCK + 1 */
    int ntokens;

    /* huffmanBitWriter */
    uint64_t bits;
    unsigned nbits;
    int32_t literal_freq[MAX_NUM_LIT];
    int32_t offset_freq[OFFSET_CODE_COUNT];
    int32_t codegen_freq[CODEGEN_CODE_COUNT];
    uint8_t codegen[MAX_NUM_LIT + OFFSET_CODE_COUNT + 1];
    huff_enc lit_enc, off_enc, cg_enc;

    /* output produced since the last call returned */
    uint8_t *out;
    size_t out_len, out_cap;
    int nomem;

    /* restart points (levels 4-9; see "restart points" below) */
    int64_t in_base;   /* input offset of window[0] */
    int64_t out_taken; /* bytes handed out by earlier calls */
    int64_t record_every, next_record;
    restart_point *points;
    size_t npoints, points_cap;
    int64_t stop_at; /* stop after the block ending here (-1: never) */
    int stopped, overshot;
} Deflater;

/* ---- output and bits (huffmanBitWriter's byte order; its 48-bit batching changes nothing
 * in the bytes) ---------------------------------------------------------------------------- */

static int out_reserve(Deflater *d, size_t n) {
    if (d->out_len + n <= d->out_cap) return 1;
    size_t cap = d->out_cap ? d->out_cap : 1 << 16;
    while (cap < d->out_len + n) cap *= 2;
    uint8_t *p = realloc(d->out, cap);
    if (!p) {
        d->nomem = 1;
        return 0;
    }
    d->out = p;
    d->out_cap = cap;
    return 1;
}

/* Callers reserve room first: every block reserves a bound on what it can write. */
static inline void write_bits(Deflater *d, uint32_t b, unsigned nb) {
    d->bits |= (uint64_t)b << d->nbits;
    d->nbits += nb;
    if (d->nbits >= 48) {
        uint64_t v = d->bits;
        uint8_t *o = d->out + d->out_len;
        o[0] = (uint8_t)v;
        o[1] = (uint8_t)(v >> 8);
        o[2] = (uint8_t)(v >> 16);
        o[3] = (uint8_t)(v >> 24);
        o[4] = (uint8_t)(v >> 32);
        o[5] = (uint8_t)(v >> 40);
        d->out_len += 6;
        d->bits >>= 48;
        d->nbits -= 48;
    }
}

static inline void write_code(Deflater *d, hcode c) { write_bits(d, c.code, c.len); }

/* flush: pending bits out, the last byte padded with zeros. */
static void bits_flush(Deflater *d) {
    while (d->nbits != 0) {
        d->out[d->out_len++] = (uint8_t)d->bits;
        d->bits >>= 8;
        d->nbits = d->nbits > 8 ? d->nbits - 8 : 0;
    }
    d->bits = 0;
}

static int write_stored_header(Deflater *d, int length, int eof) {
    if (!out_reserve(d, 32)) return 0;
    write_bits(d, eof ? 1 : 0, 3);
    bits_flush(d);
    write_bits(d, (uint32_t)length, 16);
    write_bits(d, (uint16_t)~(uint16_t)length, 16);
    return 1;
}

/* writeBytes: the pending (byte-aligned) header bits, then the raw bytes. */
static int write_raw(Deflater *d, const uint8_t *p, size_t n) {
    if (!out_reserve(d, n + 16)) return 0;
    bits_flush(d);
    memcpy(d->out + d->out_len, p, n);
    d->out_len += n;
    return 1;
}

static int write_stored_block(Deflater *d, const uint8_t *p, int n) {
    return write_stored_header(d, n, 0) && write_raw(d, p, (size_t)n);
}

/* ---- block writing (huffman_bit_writer.go) ---------------------------------------------- */

/* generateCodegen: the run-length coded code lengths of both alphabets, and their counts. */
static void generate_codegen(Deflater *d, int num_literals, int num_offsets, const huff_enc *lit,
                             const huff_enc *off) {
    uint8_t *codegen = d->codegen;
    memset(d->codegen_freq, 0, sizeof d->codegen_freq);
    for (int i = 0; i < num_literals; i++) codegen[i] = (uint8_t)lit->codes[i].len;
    for (int i = 0; i < num_offsets; i++) codegen[num_literals + i] = (uint8_t)off->codes[i].len;
    codegen[num_literals + num_offsets] = BAD_CODE;

    uint8_t size = codegen[0];
    int count = 1, out_index = 0;
    for (int in_index = 1; size != BAD_CODE; in_index++) {
        uint8_t next_size = codegen[in_index];
        if (next_size == size) {
            count++;
            continue;
        }
        if (size != 0) {
            codegen[out_index++] = size;
            d->codegen_freq[size]++;
            count--;
            while (count >= 3) {
                int n = count < 6 ? count : 6;
                codegen[out_index++] = 16;
                codegen[out_index++] = (uint8_t)(n - 3);
                d->codegen_freq[16]++;
                count -= n;
            }
        } else {
            while (count >= 11) {
                int n = count < 138 ? count : 138;
                codegen[out_index++] = 18;
                codegen[out_index++] = (uint8_t)(n - 11);
                d->codegen_freq[18]++;
                count -= n;
            }
            if (count >= 3) {
                codegen[out_index++] = 17;
                codegen[out_index++] = (uint8_t)(count - 3);
                d->codegen_freq[17]++;
                count = 0;
            }
        }
        count--;
        for (; count >= 0; count--) {
            codegen[out_index++] = size;
            d->codegen_freq[size]++;
        }
        size = next_size;
        count = 1;
    }
    codegen[out_index] = BAD_CODE;
}

static int64_t dynamic_size(Deflater *d, const huff_enc *lit, const huff_enc *off, int64_t extra_bits,
                            int *num_codegens) {
    int nc = CODEGEN_CODE_COUNT;
    while (nc > 4 && d->codegen_freq[CODEGEN_ORDER[nc - 1]] == 0) nc--;
    int64_t header = 3 + 5 + 5 + 4 + 3 * nc + bit_length(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT) +
                     (int64_t)d->codegen_freq[16] * 2 + (int64_t)d->codegen_freq[17] * 3 +
                     (int64_t)d->codegen_freq[18] * 7;
    *num_codegens = nc;
    return header + bit_length(lit, d->literal_freq, MAX_NUM_LIT) +
           bit_length(off, d->offset_freq, OFFSET_CODE_COUNT) + extra_bits;
}

static int64_t fixed_size(Deflater *d, int64_t extra_bits) {
    return 3 + bit_length(&fixed_lit_enc, d->literal_freq, MAX_NUM_LIT) +
           bit_length(&fixed_off_enc, d->offset_freq, OFFSET_CODE_COUNT) + extra_bits;
}

/* storedSize: in bits, if the input fits one stored block (input NULL: never stored). */
static int stored_size(const uint8_t *input, int n, int64_t *size) {
    if (input == NULL || n > MAX_STORE_BLOCK) return 0;
    *size = ((int64_t)n + 5) * 8;
    return 1;
}

static void write_dynamic_header(Deflater *d, int num_literals, int num_offsets, int num_codegens, int eof) {
    write_bits(d, eof ? 5 : 4, 3);
    write_bits(d, (uint32_t)(num_literals - 257), 5);
    write_bits(d, (uint32_t)(num_offsets - 1), 5);
    write_bits(d, (uint32_t)(num_codegens - 4), 4);
    for (int i = 0; i < num_codegens; i++) write_bits(d, d->cg_enc.codes[CODEGEN_ORDER[i]].len, 3);
    for (int i = 0;;) {
        int word = d->codegen[i++];
        if (word == BAD_CODE) break;
        write_code(d, d->cg_enc.codes[word]);
        if (word == 16) write_bits(d, d->codegen[i++], 2);
        else if (word == 17) write_bits(d, d->codegen[i++], 3);
        else if (word == 18) write_bits(d, d->codegen[i++], 7);
    }
}

static inline uint32_t offset_code(uint32_t off) {
    /* offsets are < 2^15, so token.go's third case (off >> 14) never applies */
    if (off < 256) return offset_code_tab[off];
    return offset_code_tab[off >> 7] + 14;
}

/* indexTokens: symbol counts of the tokens (the end-of-block marker included), and the
 * dynamic codes for them; returns the alphabet sizes used. */
static void index_tokens(Deflater *d, const uint32_t *tokens, int n, int *num_literals, int *num_offsets) {
    memset(d->literal_freq, 0, sizeof d->literal_freq);
    memset(d->offset_freq, 0, sizeof d->offset_freq);
    for (int i = 0; i < n; i++) {
        uint32_t t = tokens[i];
        if (t < MATCH_TYPE) {
            d->literal_freq[t]++;
            continue;
        }
        d->literal_freq[LENGTH_CODES_START + length_code_tab[(t - MATCH_TYPE) >> LENGTH_SHIFT]]++;
        d->offset_freq[offset_code(t & OFFSET_MASK)]++;
    }
    int nl = MAX_NUM_LIT;
    while (d->literal_freq[nl - 1] == 0) nl--;
    int no = OFFSET_CODE_COUNT;
    while (no > 0 && d->offset_freq[no - 1] == 0) no--;
    if (no == 0) {
        d->offset_freq[0] = 1;
        no = 1;
    }
    huff_generate(&d->lit_enc, d->literal_freq, MAX_NUM_LIT, 15);
    huff_generate(&d->off_enc, d->offset_freq, OFFSET_CODE_COUNT, 15);
    *num_literals = nl;
    *num_offsets = no;
}

/* The token loops keep the bit buffer in locals and store whole bytes after every symbol
 * group (an 8-byte store, then advance by the whole bytes in it): fewer than 8 bits stay
 * pending, so a match's 48 bits always fit. Same LSB-first bytes as write_bits. Callers
 * reserved the block's bound, which has more than 8 bytes of slack. */
typedef struct {
    uint64_t bits;
    unsigned nbits;
    uint8_t *o;
} bit_sink;

static inline bit_sink sink_open(Deflater *d) {
    while (d->nbits >= 8) { /* write_bits leaves up to 47 pending */
        d->out[d->out_len++] = (uint8_t)d->bits;
        d->bits >>= 8;
        d->nbits -= 8;
    }
    bit_sink k = {d->bits, d->nbits, d->out + d->out_len};
    return k;
}

static inline void sink_put(bit_sink *k, uint32_t b, unsigned nb) {
    k->bits |= (uint64_t)b << k->nbits;
    k->nbits += nb;
}

static inline void sink_drain(bit_sink *k) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(k->o, &k->bits, 8);
#else
    for (int j = 0; j < 8; j++) k->o[j] = (uint8_t)(k->bits >> (8 * j));
#endif
    unsigned whole = k->nbits & ~7u;
    k->o += whole >> 3;
    k->bits = whole == 64 ? 0 : k->bits >> whole;
    k->nbits &= 7;
}

static inline void sink_close(Deflater *d, bit_sink *k) {
    d->bits = k->bits;
    d->nbits = k->nbits;
    d->out_len = (size_t)(k->o - d->out);
}

static void write_tokens(Deflater *d, const uint32_t *tokens, int n, const hcode *le, const hcode *oe) {
    bit_sink k = sink_open(d);
    for (int i = 0; i < n; i++) {
        uint32_t t = tokens[i];
        if (t < MATCH_TYPE) {
            sink_put(&k, le[t].code, le[t].len);
            sink_drain(&k);
            continue;
        }
        uint32_t length = (t - MATCH_TYPE) >> LENGTH_SHIFT;
        uint32_t lc = length_code_tab[length];
        sink_put(&k, le[lc + LENGTH_CODES_START].code, le[lc + LENGTH_CODES_START].len);
        if (LENGTH_EXTRA_BITS[lc] > 0) sink_put(&k, length - LENGTH_BASE[lc], (unsigned)LENGTH_EXTRA_BITS[lc]);
        uint32_t offset = t & OFFSET_MASK;
        uint32_t oc = offset_code(offset);
        sink_put(&k, oe[oc].code, oe[oc].len);
        if (OFFSET_EXTRA_BITS[oc] > 0) sink_put(&k, offset - OFFSET_BASE[oc], (unsigned)OFFSET_EXTRA_BITS[oc]);
        sink_drain(&k);
    }
    sink_close(d, &k);
}

/* A bound on a Huffman block's bytes: header plus at most 48 bits per token. */
static size_t block_bound(int ntokens) { return (size_t)ntokens * 6 + 1024; }

/* writeBlock: the smallest of fixed, dynamic and (when the input is known and fits) stored.
 * The tokens array has room for the end-of-block marker. */
static int write_block(Deflater *d, uint32_t *tokens, int n, const uint8_t *input, int input_len) {
    tokens[n++] = END_BLOCK_MARKER;
    int num_literals, num_offsets;
    index_tokens(d, tokens, n, &num_literals, &num_offsets);

    int64_t extra_bits = 0, ssize = 0;
    int storable = stored_size(input, input_len, &ssize);
    if (storable) {
        for (int lc = LENGTH_CODES_START + 8; lc < num_literals; lc++)
            extra_bits += (int64_t)d->literal_freq[lc] * LENGTH_EXTRA_BITS[lc - LENGTH_CODES_START];
        for (int oc = 4; oc < num_offsets; oc++)
            extra_bits += (int64_t)d->offset_freq[oc] * OFFSET_EXTRA_BITS[oc];
    }
    const huff_enc *lit = &fixed_lit_enc, *off = &fixed_off_enc;
    int64_t size = fixed_size(d, extra_bits);
    int num_codegens;
    generate_codegen(d, num_literals, num_offsets, &d->lit_enc, &d->off_enc);
    huff_generate(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int64_t dsize = dynamic_size(d, &d->lit_enc, &d->off_enc, extra_bits, &num_codegens);
    if (dsize < size) {
        size = dsize;
        lit = &d->lit_enc;
        off = &d->off_enc;
    }
    if (storable && ssize < size) return write_stored_block(d, input, input_len);
    if (!out_reserve(d, block_bound(n))) return 0;
    if (lit == &fixed_lit_enc) write_bits(d, 2, 3); /* writeFixedHeader, never final */
    else write_dynamic_header(d, num_literals, num_offsets, num_codegens, 0);
    write_tokens(d, tokens, n, lit->codes, off->codes);
    return 1;
}

/* writeBlockDynamic (level 1): dynamic codes, or stored unless they save over 1/16. */
static int write_block_dynamic(Deflater *d, uint32_t *tokens, int n, const uint8_t *input, int input_len) {
    tokens[n++] = END_BLOCK_MARKER;
    int num_literals, num_offsets, num_codegens;
    index_tokens(d, tokens, n, &num_literals, &num_offsets);
    generate_codegen(d, num_literals, num_offsets, &d->lit_enc, &d->off_enc);
    huff_generate(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int64_t size = dynamic_size(d, &d->lit_enc, &d->off_enc, 0, &num_codegens), ssize;
    if (stored_size(input, input_len, &ssize) && ssize < size + (size >> 4))
        return write_stored_block(d, input, input_len);
    if (!out_reserve(d, block_bound(n))) return 0;
    write_dynamic_header(d, num_literals, num_offsets, num_codegens, 0);
    write_tokens(d, tokens, n, d->lit_enc.codes, d->off_enc.codes);
    return 1;
}

/* writeBlockHuff: literals only with a dynamic code, or stored unless it saves over 1/16.
 * Only entries 0-256 of literal_freq are set; offset_freq[0] = 1 (the rest may be stale,
 * as in Go: the huffOffset code gives them length 0). */
static int write_block_huff(Deflater *d, const uint8_t *input, int n) {
    memset(d->literal_freq, 0, sizeof d->literal_freq);
    for (int i = 0; i < n; i++) d->literal_freq[input[i]]++;
    d->literal_freq[END_BLOCK_MARKER] = 1;
    d->offset_freq[0] = 1;
    huff_generate(&d->lit_enc, d->literal_freq, MAX_NUM_LIT, 15);
    generate_codegen(d, END_BLOCK_MARKER + 1, 1, &d->lit_enc, &huff_offset_enc);
    huff_generate(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int num_codegens;
    int64_t size = dynamic_size(d, &d->lit_enc, &huff_offset_enc, 0, &num_codegens), ssize;
    if (stored_size(input, n, &ssize) && ssize < size + (size >> 4)) return write_stored_block(d, input, n);
    if (!out_reserve(d, (size_t)n * 2 + 1024)) return 0;
    write_dynamic_header(d, END_BLOCK_MARKER + 1, 1, num_codegens, 0);
    const hcode *enc = d->lit_enc.codes;
    bit_sink k = sink_open(d);
    for (int i = 0; i < n; i++) {
        sink_put(&k, enc[input[i]].code, enc[input[i]].len);
        sink_drain(&k);
    }
    sink_close(d, &k);
    write_code(d, enc[END_BLOCK_MARKER]);
    return 1;
}

/* ---- levels 2-9 (deflate.go) ------------------------------------------------------------ */

static inline uint32_t hash4(const uint8_t *b) {
    return (((uint32_t)b[3] | (uint32_t)b[2] << 8 | (uint32_t)b[1] << 16 | (uint32_t)b[0] << 24) * HASHMUL) >>
           (32 - HASH_BITS);
}

/* matchLen: common prefix of a and b, at most max bytes (8 at a time; same result). */
static inline int match_len(const uint8_t *a, const uint8_t *b, int max) {
    int i = 0;
    while (i + 8 <= max) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) return i + (__builtin_ctzll(x ^ y) >> 3);
        i += 8;
    }
    while (i < max && a[i] == b[i]) i++;
    return i;
}

/* fillDeflate: slide the window by 32 KiB when the matcher is near its end, then copy in. */
static int fill_deflate(Deflater *d, const uint8_t *b, size_t n) {
    if (d->index >= 2 * WINDOW_SIZE - (MIN_MATCH + MAX_MATCH)) {
        memcpy(d->window, d->window + WINDOW_SIZE, WINDOW_SIZE);
        d->index -= WINDOW_SIZE;
        d->window_end -= WINDOW_SIZE;
        d->in_base += WINDOW_SIZE;
        d->block_start = d->block_start >= WINDOW_SIZE ? d->block_start - WINDOW_SIZE : INT32_MAX;
        d->hash_offset += WINDOW_SIZE;
        if (d->hash_offset > MAX_HASH_OFFSET) {
            int delta = d->hash_offset - 1;
            d->hash_offset -= delta;
            d->chain_head -= delta;
            for (int i = 0; i < WINDOW_SIZE; i++)
                d->hash_prev[i] = (int64_t)d->hash_prev[i] > delta ? d->hash_prev[i] - (uint32_t)delta : 0;
            for (int i = 0; i < HASH_SIZE; i++)
                d->hash_head[i] = (int64_t)d->hash_head[i] > delta ? d->hash_head[i] - (uint32_t)delta : 0;
        }
    }
    size_t room = (size_t)(d->window_cap - d->window_end);
    if (n > room) n = room;
    memcpy(d->window + d->window_end, b, n);
    d->window_end += (int)n;
    return (int)n;
}

static inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int find_match(Deflater *d, int pos, int prev_head, int prev_length, int lookahead, int *out_length,
                      int *out_offset) {
    const uint8_t *win = d->window;
    int min_match_look = lookahead < MAX_MATCH ? lookahead : MAX_MATCH;
    int nice = min_match_look < d->cfg.nice ? min_match_look : d->cfg.nice;
    int tries = d->cfg.chain, length = prev_length, offset = 0, ok = 0;
    if (length >= d->cfg.good) tries >>= 2;
    /* Go tests the byte just past the best match first; a longer match also needs the 3
     * before it, so comparing those 4 bytes at once rejects the same candidates sooner.
     * (length >= 3 always: callers pass minMatchLength - 1.) */
    uint32_t w_end = load_u32(win + pos + length - 3);
    const uint8_t *w_pos = win + pos;
    int min_index = pos - WINDOW_SIZE;
    for (int i = prev_head; tries > 0; tries--) {
        if (w_end == load_u32(win + i + length - 3)) {
            int n = match_len(win + i, w_pos, min_match_look);
            if (n > length && (n > MIN_MATCH || pos - i <= 4096)) {
                length = n;
                offset = pos - i;
                ok = 1;
                if (n >= nice) break;
                w_end = load_u32(win + pos + n - 3);
            }
        }
        if (i == min_index) break;
        i = (int)((int64_t)d->hash_prev[i & WINDOW_MASK] - d->hash_offset);
        if (i < min_index || i < 0) break;
    }
    *out_length = length;
    *out_offset = offset;
    return ok;
}

/* ---- restart points (levels 4-9) ---------------------------------------------------------
 *
 * At the lazy levels every position is hashed (fastSkipHashing == skipNever), so at a block
 * boundary the matcher's state is a function of the input before it, plus a few fields: the
 * window's input offset (it slides by 32 KiB at points fixed by the input), the pending lazy
 * literal and its match (byteAvailable, length, offset). Hash chains only ever reach back
 * 32 KiB and never below the window's start, so a restarted encoder rebuilds them by hashing
 * the preceding 32 KiB of the window in order. The Huffman writer keeps nothing across blocks
 * but its bit position. A recording encoder notes such a state every record_every input
 * bytes (in full-window steps only: one big Write); the origin proves each one by compressing
 * the segment from it (krill/delta/restarts.py). */

static int64_t bits_out(const Deflater *d) {
    return ((d->out_taken + (int64_t)d->out_len) << 3) + (int64_t)d->nbits;
}

/* index: the window position the block just written ends at. */
static void note_block_end(Deflater *d, int index) {
    int64_t end = d->in_base + index;
    if (d->stop_at >= 0 && end >= d->stop_at) {
        d->stopped = 1;
        d->overshot = end != d->stop_at;
        return;
    }
    if (d->record_every <= 0 || end < d->next_record || d->sync || d->window_end != d->window_cap) return;
    if (d->npoints == d->points_cap) {
        size_t cap = d->points_cap ? d->points_cap * 2 : 64;
        restart_point *p = realloc(d->points, cap * sizeof *p);
        if (!p) return; /* a missing restart point costs speed, never bytes */
        d->points = p;
        d->points_cap = cap;
    }
    /* The lazy path writes a block either after a match (index is then the next position to
     * look at, nothing pending) or after the literal before index, with the match found at
     * index still pending; the caller then steps index past it. */
    restart_point r = {end, bits_out(d), index, d->byte_available, d->byte_available ? d->length : MIN_MATCH - 1,
                       d->byte_available ? d->offset : 0};
    d->points[d->npoints++] = r;
    d->next_record = end + d->record_every;
}

/* compressor.writeBlock: the window bytes of the block go along when they are still there. */
static int deflate_write_block(Deflater *d, int index) {
    if (index > 0) {
        const uint8_t *input = NULL;
        int input_len = 0;
        if (d->block_start <= index) {
            input = d->window + d->block_start;
            input_len = index - d->block_start;
        }
        d->block_start = index;
        if (!write_block(d, d->tokens, d->ntokens, input, input_len)) return 0;
        if (d->record_every > 0 || d->stop_at >= 0) note_block_end(d, index);
    }
    d->ntokens = 0;
    return 1;
}

static void insert_hash(Deflater *d, int index) {
    uint32_t *hh = &d->hash_head[hash4(d->window + index) & HASH_MASK];
    d->hash_prev[index & WINDOW_MASK] = *hh;
    *hh = (uint32_t)(index + d->hash_offset);
}

/* compressor.deflate: greedy (levels 2-3, with skipped hashing after long matches) or lazy
 * (levels 4-9) matching over the window, a block every 2^14 tokens. */
static int deflate_step(Deflater *d) {
    const int fast_skip = d->cfg.fast_skip;
    if (d->window_end - d->index < MIN_MATCH + MAX_MATCH && !d->sync) return 1;
    d->max_insert_index = d->window_end - (MIN_MATCH - 1);
    for (;;) {
        int lookahead = d->window_end - d->index;
        if (lookahead < MIN_MATCH + MAX_MATCH) {
            if (!d->sync) break;
            if (lookahead == 0) {
                if (d->byte_available) {
                    d->tokens[d->ntokens++] = d->window[d->index - 1];
                    d->byte_available = 0;
                }
                if (d->ntokens > 0 && !deflate_write_block(d, d->index)) return 0;
                break;
            }
        }
        if (d->index < d->max_insert_index) {
            uint32_t *hh = &d->hash_head[hash4(d->window + d->index) & HASH_MASK];
            d->chain_head = (int)*hh;
            d->hash_prev[d->index & WINDOW_MASK] = (uint32_t)d->chain_head;
            *hh = (uint32_t)(d->index + d->hash_offset);
        }
        int prev_length = d->length, prev_offset = d->offset;
        d->length = MIN_MATCH - 1;
        d->offset = 0;
        int min_index = d->index - WINDOW_SIZE;
        if (min_index < 0) min_index = 0;

        if (d->chain_head - d->hash_offset >= min_index &&
            ((fast_skip != SKIP_NEVER && lookahead > MIN_MATCH - 1) ||
             (fast_skip == SKIP_NEVER && lookahead > prev_length && prev_length < d->cfg.lazy))) {
            int nl, no;
            if (find_match(d, d->index, d->chain_head - d->hash_offset, MIN_MATCH - 1, lookahead, &nl, &no)) {
                d->length = nl;
                d->offset = no;
            }
        }
        if ((fast_skip != SKIP_NEVER && d->length >= MIN_MATCH) ||
            (fast_skip == SKIP_NEVER && prev_length >= MIN_MATCH && d->length <= prev_length)) {
            if (fast_skip != SKIP_NEVER)
                d->tokens[d->ntokens++] =
                    MATCH_TOKEN(d->length - BASE_MATCH_LENGTH, d->offset - BASE_MATCH_OFFSET);
            else
                d->tokens[d->ntokens++] =
                    MATCH_TOKEN(prev_length - BASE_MATCH_LENGTH, prev_offset - BASE_MATCH_OFFSET);
            if (d->length <= fast_skip) {
                int new_index = fast_skip != SKIP_NEVER ? d->index + d->length : d->index + prev_length - 1;
                int index = d->index;
                for (index++; index < new_index; index++)
                    if (index < d->max_insert_index) insert_hash(d, index);
                d->index = index;
                if (fast_skip == SKIP_NEVER) {
                    d->byte_available = 0;
                    d->length = MIN_MATCH - 1;
                }
            } else {
                d->index += d->length;
            }
            if (d->ntokens == MAX_FLATE_BLOCK_TOKENS) {
                if (!deflate_write_block(d, d->index)) return 0;
                if (d->stopped) return 1;
            }
        } else {
            if (fast_skip != SKIP_NEVER || d->byte_available) {
                int i = fast_skip != SKIP_NEVER ? d->index : d->index - 1;
                d->tokens[d->ntokens++] = d->window[i];
                if (d->ntokens == MAX_FLATE_BLOCK_TOKENS) {
                    if (!deflate_write_block(d, i + 1)) return 0;
                    if (d->stopped) return 1;
                }
            }
            d->index++;
            if (fast_skip == SKIP_NEVER) d->byte_available = 1;
        }
    }
    return 1;
}

/* ---- level 1 (deflatefast.go) ----------------------------------------------------------- */

static inline uint32_t load32(const uint8_t *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static inline uint64_t load64(const uint8_t *b) { return (uint64_t)load32(b) | (uint64_t)load32(b + 4) << 32; }

static inline uint32_t fast_hash(uint32_t u) { return (u * HASHMUL) >> FAST_TABLE_SHIFT; }

static void fast_shift_offsets(Deflater *d) {
    if (d->prev_len == 0) {
        memset(d->table, 0, sizeof(fast_entry) * FAST_TABLE_SIZE);
        d->cur = MAX_MATCH_OFFSET + 1;
        return;
    }
    for (int i = 0; i < FAST_TABLE_SIZE; i++) {
        int64_t v = (int64_t)d->table[i].offset - d->cur + MAX_MATCH_OFFSET + 1;
        d->table[i].offset = v < 0 ? 0 : (int32_t)v;
    }
    d->cur = MAX_MATCH_OFFSET + 1;
}

static void fast_reset(Deflater *d) {
    d->prev_len = 0;
    d->cur += MAX_MATCH_OFFSET;
    if (d->cur >= FAST_BUFFER_RESET) fast_shift_offsets(d);
}

/* deflateFast.matchLen: the match may start in the previous block and run into this one. */
static int32_t fast_match_len(Deflater *d, int32_t s, int32_t t, const uint8_t *src, int32_t len) {
    int32_t s1 = s + MAX_MATCH - 4;
    if (s1 > len) s1 = len;
    if (t >= 0) return match_len(src + t, src + s, s1 - s);
    int32_t tp = d->prev_len + t;
    if (tp < 0) return 0;
    int32_t alen = s1 - s, blen = d->prev_len - tp;
    if (blen > alen) blen = alen;
    int32_t n = match_len(src + s, d->prev + tp, blen);
    if (n < blen) return n;
    if (s + n == s1) return n;
    return n + match_len(src + s + n, src, s1 - (s + n));
}

static void emit_literals(Deflater *d, const uint8_t *lit, int32_t n) {
    for (int32_t i = 0; i < n; i++) d->tokens[d->ntokens++] = lit[i];
}

/* deflateFast.encode: Snappy-style greedy matching with a skip that grows over misses. */
static void fast_encode(Deflater *d, const uint8_t *src, int32_t len) {
    fast_entry *table = d->table;
    d->ntokens = 0;
    if (d->cur >= FAST_BUFFER_RESET) fast_shift_offsets(d);
    if (len < FAST_MIN_NON_LITERAL_BLOCK) {
        d->cur += MAX_STORE_BLOCK;
        d->prev_len = 0;
        emit_literals(d, src, len);
        return;
    }
    int32_t s_limit = len - FAST_INPUT_MARGIN, next_emit = 0, s = 0;
    uint32_t cv = load32(src);
    uint32_t next_hash = fast_hash(cv);
    for (;;) {
        int32_t skip = 32, next_s = s;
        fast_entry candidate;
        for (;;) {
            s = next_s;
            int32_t between = skip >> 5;
            next_s = s + between;
            skip += between;
            if (next_s > s_limit) goto emit_remainder;
            candidate = table[next_hash & FAST_TABLE_MASK];
            uint32_t now = load32(src + next_s);
            table[next_hash & FAST_TABLE_MASK].offset = s + d->cur;
            table[next_hash & FAST_TABLE_MASK].val = cv;
            next_hash = fast_hash(now);
            int64_t offset = (int64_t)s - ((int64_t)candidate.offset - d->cur);
            if (offset > MAX_MATCH_OFFSET || cv != candidate.val) {
                cv = now;
                continue;
            }
            break;
        }
        emit_literals(d, src + next_emit, s - next_emit);
        for (;;) {
            s += 4;
            int32_t t = candidate.offset - d->cur + 4;
            int32_t l = fast_match_len(d, s, t, src, len);
            d->tokens[d->ntokens++] = MATCH_TOKEN(l + 4 - BASE_MATCH_LENGTH, s - t - BASE_MATCH_OFFSET);
            s += l;
            next_emit = s;
            if (s >= s_limit) goto emit_remainder;
            uint64_t x = load64(src + s - 1);
            uint32_t prev_hash = fast_hash((uint32_t)x);
            table[prev_hash & FAST_TABLE_MASK].offset = d->cur + s - 1;
            table[prev_hash & FAST_TABLE_MASK].val = (uint32_t)x;
            x >>= 8;
            uint32_t curr_hash = fast_hash((uint32_t)x);
            candidate = table[curr_hash & FAST_TABLE_MASK];
            table[curr_hash & FAST_TABLE_MASK].offset = d->cur + s;
            table[curr_hash & FAST_TABLE_MASK].val = (uint32_t)x;
            int64_t offset = (int64_t)s - ((int64_t)candidate.offset - d->cur);
            if (offset > MAX_MATCH_OFFSET || (uint32_t)x != candidate.val) {
                cv = (uint32_t)(x >> 8);
                next_hash = fast_hash(cv);
                s++;
                break;
            }
        }
    }
emit_remainder:
    if (next_emit < len) emit_literals(d, src + next_emit, len - next_emit);
    d->cur += len;
    d->prev_len = len;
    memcpy(d->prev, src, (size_t)len);
}

/* compressor.encSpeed */
static int enc_speed_step(Deflater *d) {
    int end = d->window_end;
    if (end < MAX_STORE_BLOCK) {
        if (!d->sync) return 1;
        if (end < 128) {
            int ok = 1;
            if (end == 0) return 1;
            if (end <= 16) ok = write_stored_block(d, d->window, end);
            else ok = write_block_huff(d, d->window, end);
            d->window_end = 0;
            fast_reset(d);
            return ok;
        }
    }
    fast_encode(d, d->window, end);
    int ok;
    if (d->ntokens > end - (end >> 4)) ok = write_block_huff(d, d->window, end);
    else ok = write_block_dynamic(d, d->tokens, d->ntokens, d->window, end);
    d->window_end = 0;
    return ok;
}

/* ---- levels 0 and -2 (store, storeHuff) ------------------------------------------------- */

static int store_step(Deflater *d) {
    if (d->window_end > 0 && (d->window_end == MAX_STORE_BLOCK || d->sync)) {
        int ok = write_stored_block(d, d->window, d->window_end);
        d->window_end = 0;
        return ok;
    }
    return 1;
}

static int store_huff_step(Deflater *d) {
    if ((d->window_end < d->window_cap && !d->sync) || d->window_end == 0) return 1;
    int ok = write_block_huff(d, d->window, d->window_end);
    d->window_end = 0;
    return ok;
}

static int step(Deflater *d) {
    switch (d->level) {
    case 0: return store_step(d);
    case -2: return store_huff_step(d);
    case 1: return enc_speed_step(d);
    default: return deflate_step(d);
    }
}

static int fill(Deflater *d, const uint8_t *b, size_t n) {
    if (d->level >= 2) return fill_deflate(d, b, n);
    size_t room = (size_t)(d->window_cap - d->window_end); /* fillStore */
    if (n > room) n = room;
    memcpy(d->window + d->window_end, b, n);
    d->window_end += (int)n;
    return (int)n;
}

/* As one Go Write of everything fed so far: step only when the window is full. */
static int feed_whole(Deflater *d, const uint8_t *b, size_t n) {
    while (n > 0) {
        if (d->window_end == d->window_cap && !step(d)) return 0;
        int k = fill(d, b, n);
        b += k;
        n -= (size_t)k;
    }
    return 1;
}

/* Exactly one Go Write call (compressor.write). */
static int feed_go_write(Deflater *d, const uint8_t *b, size_t n) {
    while (n > 0) {
        if (!step(d)) return 0;
        int k = fill(d, b, n);
        b += k;
        n -= (size_t)k;
    }
    return 1;
}

/* compressor.close: the rest, then an empty final stored block. */
static int finish_stream(Deflater *d) {
    d->sync = 1;
    if (!step(d)) return 0;
    if (!write_stored_header(d, 0, 1)) return 0;
    bits_flush(d);
    return 1;
}

/* ---- Python type ------------------------------------------------------------------------ */

static void init_tables(void) {
    /* token.go's lengthCodes / offsetCodes, computed from the RFC 1951 bases */
    for (int code = 0; code < 29; code++) {
        uint32_t lo = LENGTH_BASE[code], hi = code == 28 ? 255 : LENGTH_BASE[code + 1] - 1;
        if (code == 27) hi = 254; /* length 258 (xlen 255) has its own code 28 */
        for (uint32_t v = lo; v <= hi && v < 256; v++) length_code_tab[v] = (uint8_t)code;
    }
    for (int code = 0; code < 16; code++) {
        uint32_t lo = OFFSET_BASE[code], hi = code == 15 ? 255 : OFFSET_BASE[code + 1] - 1;
        for (uint32_t v = lo; v <= hi; v++) offset_code_tab[v] = (uint8_t)code;
    }
    /* generateFixedLiteralEncoding / generateFixedOffsetEncoding */
    for (int ch = 0; ch < MAX_NUM_LIT; ch++) {
        uint16_t bits, size;
        if (ch < 144) { bits = (uint16_t)(ch + 48); size = 8; }
        else if (ch < 256) { bits = (uint16_t)(ch + 400 - 144); size = 9; }
        else if (ch < 280) { bits = (uint16_t)(ch - 256); size = 7; }
        else { bits = (uint16_t)(ch + 192 - 280); size = 8; }
        fixed_lit_enc.codes[ch].code = reverse_bits(bits, size);
        fixed_lit_enc.codes[ch].len = size;
    }
    for (int ch = 0; ch < OFFSET_CODE_COUNT; ch++) {
        fixed_off_enc.codes[ch].code = reverse_bits((uint16_t)ch, 5);
        fixed_off_enc.codes[ch].len = 5;
    }
    int32_t freq[OFFSET_CODE_COUNT] = {1};
    huff_generate(&huff_offset_enc, freq, OFFSET_CODE_COUNT, 15);
}

static void Deflater_free_buffers(Deflater *d) {
    free(d->window);
    free(d->hash_head);
    free(d->hash_prev);
    free(d->table);
    free(d->prev);
    free(d->tokens);
    free(d->out);
    free(d->points);
    d->window = d->prev = d->out = NULL;
    d->hash_head = d->hash_prev = d->tokens = NULL;
    d->table = NULL;
    d->points = NULL;
}

/* The buffers and state of a fresh stream at ``level`` (-2 … 9, -1 already mapped to 6);
 * -1 when out of memory (nothing is left allocated). The Python header is not touched. */
static int deflater_setup(Deflater *d, int level) {
    Deflater_free_buffers(d);
    memset(&d->cfg, 0, sizeof(Deflater) - offsetof(Deflater, cfg));
    d->level = level;
    d->stop_at = -1;
    if (level >= 0) d->cfg = LEVELS[level];
    if (level >= 2) {
        d->window_cap = 2 * WINDOW_SIZE;
        d->hash_head = calloc(HASH_SIZE, sizeof(uint32_t));
        d->hash_prev = calloc(WINDOW_SIZE, sizeof(uint32_t));
        d->tokens = malloc(sizeof(uint32_t) * (MAX_FLATE_BLOCK_TOKENS + 1));
        d->hash_offset = 1;
        d->length = MIN_MATCH - 1;
        d->chain_head = -1;
        if (!d->hash_head || !d->hash_prev || !d->tokens) goto nomem;
    } else {
        d->window_cap = MAX_STORE_BLOCK;
    }
    if (level == 1) {
        d->table = calloc(FAST_TABLE_SIZE, sizeof(fast_entry));
        d->prev = malloc(MAX_STORE_BLOCK);
        d->tokens = malloc(sizeof(uint32_t) * (MAX_STORE_BLOCK + 1));
        d->cur = MAX_STORE_BLOCK;
        if (!d->table || !d->prev || !d->tokens) goto nomem;
    }
    d->window = malloc((size_t)d->window_cap);
    if (!d->window) goto nomem;
    return 0;
nomem:
    Deflater_free_buffers(d);
    return -1;
}

static void Deflater_dealloc(Deflater *d) {
    Deflater_free_buffers(d);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

/* Levels whose matcher state at a block boundary is a function of the preceding window. */
static int restartable_level(int level) { return level >= 4 && level <= 9; }

static int Deflater_init(Deflater *d, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"level", "record_every", NULL};
    int level = -1;
    long long record_every = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iL", kwlist, &level, &record_every)) return -1;
    if (level < -2 || level > 9) {
        PyErr_Format(PyExc_ValueError, "invalid compression level %d: want value in range [-2, 9]", level);
        return -1;
    }
    if (level == -1) level = 6;
    if (record_every < 0 || (record_every > 0 && !restartable_level(level))) {
        PyErr_Format(PyExc_ValueError, "restart points are recorded at levels 4-9 only (level %d)", level);
        return -1;
    }
    if (deflater_setup(d, level) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    d->record_every = record_every;
    d->next_record = record_every;
    return 0;
}

/* Take the output produced so far as a bytes object. */
static PyObject *take_output(Deflater *d) {
    PyObject *r = PyBytes_FromStringAndSize((const char *)d->out, (Py_ssize_t)d->out_len);
    d->out_taken += (int64_t)d->out_len;
    d->out_len = 0;
    if (d->out_cap > (1 << 22)) { /* keep memory bounded between calls */
        free(d->out);
        d->out = NULL;
        d->out_cap = 0;
    }
    return r;
}

static int enter(Deflater *d) {
    if (d->window == NULL) {
        PyErr_SetString(PyExc_ValueError, "Deflater not initialised");
        return 0;
    }
    if (d->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Deflater used from two threads at once");
        return 0;
    }
    if (d->finished) {
        PyErr_SetString(PyExc_ValueError, "Deflater already finished");
        return 0;
    }
    d->busy = 1;
    return 1;
}

static PyObject *leave(Deflater *d, int ok) {
    d->busy = 0;
    if (!ok || d->nomem) {
        d->finished = 1; /* the stream is broken: refuse further use */
        return PyErr_NoMemory();
    }
    return take_output(d);
}

static PyObject *feed(Deflater *d, PyObject *arg, int whole) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (!enter(d)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = whole ? feed_whole(d, view.buf, (size_t)view.len) : feed_go_write(d, view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return leave(d, ok);
}

static PyObject *Deflater_compress(Deflater *d, PyObject *arg) { return feed(d, arg, 1); }

static PyObject *Deflater_write(Deflater *d, PyObject *arg) { return feed(d, arg, 0); }

static PyObject *Deflater_finish(Deflater *d, PyObject *Py_UNUSED(ignored)) {
    if (!enter(d)) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = finish_stream(d);
    Py_END_ALLOW_THREADS
    PyObject *r = leave(d, ok);
    d->finished = 1;
    return r;
}

static PyObject *Deflater_restart_points(Deflater *d, PyObject *Py_UNUSED(ignored)) {
    PyObject *list = PyList_New((Py_ssize_t)d->npoints);
    if (!list) return NULL;
    for (size_t i = 0; i < d->npoints; i++) {
        const restart_point *r = &d->points[i];
        PyObject *t = Py_BuildValue("(LLiiii)", (long long)r->in_off, (long long)r->bit_off, r->win, r->avail,
                                    r->length, r->offset);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

/* ---- segments: one restart point to the next, for parallel recompression ---------------- */

/* The state a restart point describes, over a window holding data[0:] (data starts at the
 * window's input offset). 0 if the point cannot be a state of Go's matcher over this data
 * (a crafted or corrupt point: refused before any memory is touched). */
static int restart_fits(const Deflater *d, const restart_point *r) {
    int end = d->window_end;
    if (r->win < 0 || r->avail < 0 || r->avail > 1 || r->win + r->avail > end) return 0;
    if (!r->avail) return 1;
    if (r->length == MIN_MATCH - 1) return r->offset == 0;
    return r->length >= MIN_MATCH && r->length <= MAX_MATCH && r->win + r->length <= end && r->offset >= 1 &&
           r->offset <= MAX_MATCH_OFFSET;
}

/* Load the window from data and rebuild what the matcher held at the point: the hash chains
 * of the 32 KiB before it, the pending literal and match. Returns the bytes taken, -1 if the
 * point does not fit. */
static int load_restart(Deflater *d, const uint8_t *data, size_t n, const restart_point *r) {
    int k = n < (size_t)d->window_cap ? (int)n : d->window_cap;
    memcpy(d->window, data, (size_t)k);
    d->window_end = k;
    if (!restart_fits(d, r)) return -1;
    d->index = r->win + r->avail;
    d->block_start = r->win;
    d->byte_available = r->avail;
    d->length = r->avail ? r->length : MIN_MATCH - 1;
    d->offset = r->avail ? r->offset : 0;
    int from = d->index > WINDOW_SIZE ? d->index - WINDOW_SIZE : 0;
    for (int p = from; p < d->index && p < k - (MIN_MATCH - 1); p++) insert_hash(d, p);
    return k;
}

/* As feed_whole, then either the end of the stream (final) or the step Go takes before its
 * next fill; stops early once the block ending at stop_at is written. */
static int run_segment(Deflater *d, const uint8_t *b, size_t n, int final) {
    while (n > 0) {
        if (d->window_end == d->window_cap) {
            if (!step(d)) return 0;
            if (d->stopped) return 1;
        }
        int k = fill(d, b, n);
        b += k;
        n -= (size_t)k;
    }
    if (final) return finish_stream(d);
    if (d->window_end == d->window_cap && !step(d)) return 0;
    return 1;
}

/* The segment's bytes (the first one's lead bits and the last one's padding are zero) and
 * their exact bit count, lead bits included. */
static PyObject *segment_result(Deflater *d, int reached) {
    long long nbits = ((long long)d->out_len << 3) + d->nbits;
    if (!out_reserve(d, 16)) return PyErr_NoMemory();
    bits_flush(d);
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)d->out, (Py_ssize_t)d->out_len);
    if (!bytes) return NULL;
    return Py_BuildValue("(NLO)", bytes, nbits, reached ? Py_True : Py_False);
}

static PyObject *goflate_segment(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"level", "data", "start", "stop", "final", NULL};
    int level, final = 0;
    Py_buffer view;
    PyObject *start;
    long long stop;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*OLp", kwlist, &level, &view, &start, &stop, &final))
        return NULL;
    PyObject *result = NULL;
    restart_point r = {0, 0, 0, 0, MIN_MATCH - 1, 0};
    int lead_bits = 0;
    int restarted = start != Py_None;
    Deflater *d = calloc(1, sizeof(Deflater));
    if (!d) {
        PyErr_NoMemory();
        goto done;
    }
    if (!restartable_level(level)) {
        PyErr_Format(PyExc_ValueError, "segments are compressed at levels 4-9 only (level %d)", level);
        goto done;
    }
    if (restarted && !PyArg_ParseTuple(start, "iiiii", &r.win, &r.avail, &r.length, &r.offset, &lead_bits))
        goto done;
    if (lead_bits < 0 || lead_bits > 7) {
        PyErr_SetString(PyExc_ValueError, "a segment starts 0-7 bits into its first byte");
        goto done;
    }
    if (deflater_setup(d, level) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    d->stop_at = final ? -1 : stop;
    /* Stored blocks pad to the stream's byte boundary, so the segment is written at the bit
     * position it has in the stream: its first byte joins the previous segment's last by OR. */
    d->nbits = (unsigned)lead_bits;
    const uint8_t *data = view.buf;
    size_t n = (size_t)view.len;
    if (restarted) {
        int k = load_restart(d, data, n, &r);
        if (k < 0) {
            PyErr_SetString(PyExc_ValueError, "restart point does not fit the data: not a state of Go's matcher");
            goto done;
        }
        data += k;
        n -= (size_t)k;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = run_segment(d, data, n, final);
    Py_END_ALLOW_THREADS
    if (!ok || d->nomem) {
        PyErr_NoMemory();
        goto done;
    }
    result = segment_result(d, final || (d->stopped && !d->overshot));
done:
    if (d) {
        Deflater_free_buffers(d);
        free(d);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef Deflater_methods[] = {
    {"compress", (PyCFunction)Deflater_compress, METH_O,
     "compress(data) -> bytes: feed data as if all input came in one Go Write call."},
    {"write", (PyCFunction)Deflater_write, METH_O,
     "write(data) -> bytes: exactly one Go flate.Writer.Write(data) call."},
    {"finish", (PyCFunction)Deflater_finish, METH_NOARGS,
     "finish() -> bytes: flate.Writer.Close(): the rest of the stream and its final block."},
    {"restart_points", (PyCFunction)Deflater_restart_points, METH_NOARGS,
     "restart_points() -> [(in_off, bit_off, win, avail, length, offset)]: the states recorded so far "
     "(Deflater(level, record_every=N): about every N input bytes, at levels 4-9, compress() only)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DeflaterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "krill._goflate.Deflater",
    .tp_doc = "Deflater(level=-1): raw deflate exactly as Go's compress/flate writes it.",
    .tp_basicsize = sizeof(Deflater),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Deflater_init,
    .tp_dealloc = (destructor)Deflater_dealloc,
    .tp_methods = Deflater_methods,
};

static PyMethodDef goflate_functions[] = {
    {"segment", (PyCFunction)(void (*)(void))goflate_segment, METH_VARARGS | METH_KEYWORDS,
     "segment(level, data, start, stop, final) -> (bytes, nbits, reached): compress data (which starts "
     "at the window's input offset) from a restart point's (win, avail, length, offset, lead_bits), or "
     "from a fresh stream if start is None, up to the block ending at stop (an offset into data), or to "
     "the stream's end if final. The output starts lead_bits (bit_off % 8) into its first byte, as in the "
     "stream; nbits counts them. reached: the segment ended exactly there. The GIL is released while "
     "compressing."},
    ELFNORM_METHODS
    ZBLOCKS_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef goflate_module = {
    PyModuleDef_HEAD_INIT,
    .m_methods = goflate_functions,
    .m_name = "krill._goflate",
    .m_doc = "Deflate byte-identical to Go's compress/flate (verified against Go 1.19).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__goflate(void) {
    init_tables();
    if (PyType_Ready(&DeflaterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&goflate_module);
    if (!m) return NULL;
    Py_INCREF(&DeflaterType);
    if (PyModule_AddObject(m, "Deflater", (PyObject *)&DeflaterType) < 0) {
        Py_DECREF(&DeflaterType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddStringConstant(m, "GO_VERSION_VERIFIED", "go1.19");
    return m;
}
