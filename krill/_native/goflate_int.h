/* The pieces of krill._goflate's Go-compatible deflate encoder (goflate.c), shared by its
 * parts: gohuff.c (Huffman codes), gobits.c (bits and blocks), golevels.c (the matchers)
 * and goflate.c (tables and the Python type). One translation unit per part keeps each
 * under 500 lines; the calls between parts are per block or per call, never per byte. */
#ifndef KRILL_GOFLATE_INT_H
#define KRILL_GOFLATE_INT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

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

extern const level_cfg LEVELS[10];
extern const int8_t LENGTH_EXTRA_BITS[29];
extern const uint32_t LENGTH_BASE[29];
extern const int8_t OFFSET_EXTRA_BITS[30];
extern const uint32_t OFFSET_BASE[30];
extern const uint8_t CODEGEN_ORDER[19];
extern uint8_t length_code_tab[256];
extern uint8_t offset_code_tab[MAX_MATCH_OFFSET];

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

extern huff_enc fixed_lit_enc, fixed_off_enc, huff_offset_enc;

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

/* A stretch of the input over which Go's matcher makes the decisions a base layer's stream
 * records (goreuse.c): its tokens are taken from there instead of searched for. */
typedef struct {
    int64_t p1, p2;       /* input offsets: from the position after a match to the end of one */
    const uint8_t *tok;   /* the base's tokens (token.go's encoding, native uint32s at any
                           * alignment: read with load_tok), the first at tok_pos */
    size_t ntok;
    int64_t tok_pos;
} reuse_span;

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
    uint64_t *links;     /* WINDOW_SIZE: 4 chain distances per position (golevels.c, insert_string) */
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

    /* reused tokens (segments only; goreuse.c) */
    const reuse_span *spans;
    size_t nspans, span_i;
    int64_t reuse_next; /* the next input offset whose visit asks goreuse.c (INT64_MAX: none) */
    int oracle;         /* inside spans[span_i]: decisions come from its tokens */
    size_t tok_i;       /* the next of its tokens, at input offset tok_pos */
    int64_t tok_pos;
} Deflater;

/* ---- between the parts ------------------------------------------------------------------- */

uint16_t gf_reverse_bits(uint16_t number, int bit_length);
int64_t gf_bit_length(const huff_enc *h, const int32_t *freq, int n);
void gf_huff_generate(huff_enc *h, const int32_t *freq, int n, int32_t max_bits);
int gf_out_reserve(Deflater *d, size_t n);
void gf_bits_flush(Deflater *d);
int gf_write_stored_header(Deflater *d, int length, int eof);
int gf_write_stored_block(Deflater *d, const uint8_t *p, int n);
int gf_write_block(Deflater *d, uint32_t *tokens, int n, const uint8_t *input, int input_len);
int gf_write_block_dynamic(Deflater *d, uint32_t *tokens, int n, const uint8_t *input, int input_len);
int gf_write_block_huff(Deflater *d, const uint8_t *input, int n);
void gf_insert_hash(Deflater *d, int index);
int gf_step(Deflater *d);
int gf_fill(Deflater *d, const uint8_t *b, size_t n);
int gf_feed_whole(Deflater *d, const uint8_t *b, size_t n);
int gf_feed_go_write(Deflater *d, const uint8_t *b, size_t n);
int gf_finish_stream(Deflater *d);
void gf_init_tables(void);
int gf_reuse_at(Deflater *d);
int gf_reuse_token(Deflater *d, int *length, int *offset);
int gf_parse_reuse(PyObject *reuse, reuse_span **spans, Py_buffer **views, Py_ssize_t *n);
void gf_release_reuse(reuse_span *spans, Py_buffer *views, Py_ssize_t n);
PyObject *gf_reuse_spans(PyObject *module, PyObject *args);
int gf_enc_speed_step(Deflater *d);
int gf_store_step(Deflater *d);
int gf_store_huff_step(Deflater *d);

/* matchLen: common prefix of a and b, at most max bytes (8 at a time; same result). */
static inline int gf_match_len(const uint8_t *a, const uint8_t *b, int max) {
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


#endif
