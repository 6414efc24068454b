/*
 * krill._goflate.deflate_blocks: where each block of a raw deflate stream (RFC 1951)
 * starts, in bits of the stream and in bytes of its output.
 *
 * The origin needs these to cut a zlib-made gzip layer into segments a node can
 * recompress in parallel (krill/delta/zlibrestarts.py): Python's zlib decompresses
 * but never says where a block ended. Written for Krill from RFC 1951.
 *
 * Only the block structure matters, so nothing is decompressed: literals are
 * counted, matches add their length (their distance is checked against the
 * output so far, as an inflater without a preset window would), stored blocks
 * are skipped. Memory: two 64 KiB decoding tables and the list of blocks.
 * Every way a stream can be invalid that zlib's inflate refuses is refused
 * here too (with ValueError), so a bad blob makes no restart points.
 */
#include "zblocks.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_BITS 15
#define TABLE_SIZE (1u << TABLE_BITS)
#define SYM_MASK 0x1FFu
#define LEN_SHIFT 9

typedef struct {
    const uint8_t *p;
    size_t n;     /* bytes */
    uint64_t pos; /* bits consumed */
} Bits;

typedef struct {
    uint64_t bit_off;
    uint64_t out_off;
    int btype;
} Block;

typedef struct {
    Block *items;
    size_t len, cap;
} Blocks;

/* The next (at least) 56 bits at pos, least significant first; zeros past the end. */
static inline uint64_t peek(const Bits *b) {
    size_t i = (size_t)(b->pos >> 3);
    uint64_t v = 0;
    if (i + 8 <= b->n) {
        memcpy(&v, b->p + i, 8); /* one load */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
#endif
    } else {
        for (size_t k = 0; i + k < b->n && k < 8; k++) v |= (uint64_t)b->p[i + k] << (8 * k);
    }
    return v >> (b->pos & 7);
}

static inline int overrun(const Bits *b) { return b->pos > (uint64_t)b->n * 8; }

static inline unsigned take(Bits *b, unsigned n) {
    unsigned v = (unsigned)(peek(b) & ((1u << n) - 1));
    b->pos += n;
    return v;
}

static unsigned reverse(unsigned code, unsigned len) {
    unsigned r = 0;
    for (unsigned i = 0; i < len; i++, code >>= 1) r = (r << 1) | (code & 1);
    return r;
}

/*
 * A lookup table over `bits` bits for the canonical code with these lengths:
 * entry = symbol | length << 9, 0 where no code matches. Refuses (-1) an
 * oversubscribed code, and an incomplete one unless it has a single 1-bit code
 * (or none) and is not the code-length code, as zlib's inflate does.
 */
static int build(uint16_t *table, unsigned *bits, const uint8_t *lens, unsigned n, int is_codes) {
    unsigned count[16] = {0}, next[16] = {0};
    for (unsigned s = 0; s < n; s++) count[lens[s]]++;
    count[0] = 0;
    unsigned max = 0;
    for (unsigned l = 1; l <= 15; l++)
        if (count[l]) max = l;
    /* Over only as many bits as the longest code: a code is known by its first `max` bits,
     * and a smaller table is quicker to fill (one per block). */
    if (max > *bits) return -1;
    *bits = max;
    memset(table, 0, sizeof(uint16_t) << max);
    if (max == 0) return 0; /* nothing to decode: any use fails */
    int left = 1;
    for (unsigned l = 1; l <= 15; l++) {
        left <<= 1;
        left -= (int)count[l];
        if (left < 0) return -1;
    }
    if (left > 0 && (is_codes || max != 1)) return -1;
    unsigned code = 0;
    for (unsigned l = 1; l <= 15; l++) {
        code = (code + count[l - 1]) << 1;
        next[l] = code;
    }
    for (unsigned s = 0; s < n; s++) {
        unsigned l = lens[s];
        if (!l) continue;
        unsigned r = reverse(next[l]++, l);
        for (unsigned e = r; e < (1u << max); e += 1u << l) table[e] = (uint16_t)(s | l << LEN_SHIFT);
    }
    return 0;
}

static inline int decode(Bits *b, const uint16_t *table, unsigned bits, unsigned *sym) {
    uint16_t e = table[peek(b) & ((1u << bits) - 1)];
    if (!(e >> LEN_SHIFT)) return -1;
    b->pos += e >> LEN_SHIFT;
    *sym = e & SYM_MASK;
    return 0;
}

static const uint16_t LEN_BASE[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LEN_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t DIST_BASE[30] = {1,    2,    3,    4,    5,    7,     9,     13,    17,  25,
                                       33,   49,   65,   97,   129,  193,   257,   385,   513, 769,
                                       1025, 1537, 2049, 3073, 4097, 6145,  8193,  12289, 16385, 24577};
static const uint8_t DIST_EXTRA[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                       6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
static const uint8_t CL_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

typedef struct {
    uint16_t *lit, *dist;
    uint64_t out;
    unsigned lit_bits, dist_bits; /* the tables' index widths */
    /* deflate_tokens only: the symbols as Go's matcher tokens (NULL: only scan) */
    uint32_t *tok;
    size_t ntok, tokcap;
    uint64_t stop_out; /* stop at the first block boundary or token at or past this output offset */
    int nomem;
    /* enter the first block mid-way: its tables are read, then decoding goes on from the
     * symbol at entry_bit, entry_out bytes into the output (NO_ENTRY: from the block's start) */
    uint64_t entry_bit, entry_out;
    /* deflate_token_bits: where the tokens starting at these output offsets (ascending) are */
    const uint64_t *want;
    size_t nwant, iwant;
    uint64_t *want_block, *want_bit, block_bit;
} Scan;

#define NO_ENTRY UINT64_MAX

/* The one "reason" that is not the stream's fault: callers raise MemoryError for it (compared
 * by address), ValueError for the others. */
static const char OUT_OF_MEMORY[] = "out of memory";

/* A scan's failure as the exception it calls for. */
static void scan_error(const char *err) {
    if (err == OUT_OF_MEMORY) PyErr_NoMemory();
    else PyErr_Format(PyExc_ValueError, "invalid deflate stream: %s", err);
}

/* A stored block's bytes have no tokens: one marker stands for them (its low bits: how many). */
#define TOKEN_STORED 0x80000000u

static inline int emit(Scan *s, uint32_t t) {
    if (s->ntok == s->tokcap) {
        size_t cap = s->tokcap ? s->tokcap * 2 : 1 << 16;
        uint32_t *p = realloc(s->tok, cap * sizeof *p);
        if (!p) return s->nomem = 1, -1;
        s->tok = p;
        s->tokcap = cap;
    }
    s->tok[s->ntok++] = t;
    return 0;
}

/* The symbols of one fixed or dynamic block, up to its end-of-block code. */
static void note_wanted(Scan *s, uint64_t at) {
    while (s->iwant < s->nwant && s->want[s->iwant] < s->out) s->iwant++;
    if (s->iwant < s->nwant && s->want[s->iwant] == s->out) {
        s->want_block[s->iwant] = s->block_bit;
        s->want_bit[s->iwant++] = at;
    }
}

static const char *codes(Bits *b, Scan *s) {
    for (;;) {
        unsigned sym;
        uint64_t at = b->pos;
        if (decode(b, s->lit, s->lit_bits, &sym) < 0) return "invalid literal/length code";
        if (overrun(b)) return "truncated";
        if (s->want && sym != 256) note_wanted(s, at);
        if (sym < 256) {
            if (s->tok) {
                if (s->out >= s->stop_out) return NULL;
                if (emit(s, sym) < 0) return OUT_OF_MEMORY;
            }
            s->out++;
            continue;
        }
        if (sym == 256) return NULL;
        sym -= 257;
        if (sym >= 29) return "invalid literal/length code";
        unsigned len = LEN_BASE[sym] + take(b, LEN_EXTRA[sym]);
        unsigned d;
        if (decode(b, s->dist, s->dist_bits, &d) < 0 || d >= 30) return "invalid distance code";
        uint64_t dist = DIST_BASE[d] + take(b, DIST_EXTRA[d]);
        if (overrun(b)) return "truncated";
        if (dist > s->out) return "invalid distance too far back";
        if (s->tok) {
            if (s->out >= s->stop_out) return NULL;
            /* token.go's matchToken: 1<<30 | (length-3)<<22 | (offset-1) */
            if (emit(s, 0x40000000u | (len - 3) << 22 | (uint32_t)(dist - 1)) < 0) return OUT_OF_MEMORY;
        }
        s->out += len;
    }
}

static const char *dynamic_tables(Bits *b, Scan *s) {
    unsigned nlen = take(b, 5) + 257, ndist = take(b, 5) + 1, ncode = take(b, 4) + 4;
    if (nlen > 286 || ndist > 30) return "too many length or distance symbols";
    uint8_t cl[19] = {0}, lens[320] = {0};
    for (unsigned i = 0; i < ncode; i++) cl[CL_ORDER[i]] = (uint8_t)take(b, 3);
    if (overrun(b)) return "truncated";
    uint16_t cltab[1 << 7];
    unsigned clbits = 7;
    if (build(cltab, &clbits, cl, 19, 1) < 0) return "invalid code lengths set";
    unsigned have = 0;
    while (have < nlen + ndist) {
        unsigned sym;
        if (decode(b, cltab, clbits, &sym) < 0) return "invalid code lengths set";
        if (sym < 16) {
            lens[have++] = (uint8_t)sym;
            continue;
        }
        unsigned repeat, value = 0;
        if (sym == 16) {
            if (have == 0) return "invalid bit length repeat";
            value = lens[have - 1];
            repeat = 3 + take(b, 2);
        } else if (sym == 17) {
            repeat = 3 + take(b, 3);
        } else {
            repeat = 11 + take(b, 7);
        }
        if (have + repeat > nlen + ndist) return "invalid bit length repeat";
        while (repeat--) lens[have++] = (uint8_t)value;
    }
    if (overrun(b)) return "truncated";
    if (lens[256] == 0) return "invalid code -- missing end-of-block";
    s->lit_bits = s->dist_bits = TABLE_BITS;
    if (build(s->lit, &s->lit_bits, lens, nlen, 0) < 0) return "invalid literal/lengths set";
    if (build(s->dist, &s->dist_bits, lens + nlen, ndist, 0) < 0) return "invalid distances set";
    return NULL;
}

static void fixed_tables(Scan *s) {
    uint8_t lens[320];
    for (int i = 0; i < 144; i++) lens[i] = 8;
    for (int i = 144; i < 256; i++) lens[i] = 9;
    for (int i = 256; i < 280; i++) lens[i] = 7;
    for (int i = 280; i < 288; i++) lens[i] = 8;
    for (int i = 0; i < 32; i++) lens[288 + i] = 5; /* 30 and 31 decode, then are refused */
    s->lit_bits = s->dist_bits = TABLE_BITS;
    build(s->lit, &s->lit_bits, lens, 288, 0);
    build(s->dist, &s->dist_bits, lens + 288, 32, 0);
}

static int push(Blocks *out, uint64_t bit_off, uint64_t out_off, int btype) {
    if (out->len == out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 256;
        Block *items = realloc(out->items, cap * sizeof(Block));
        if (!items) return -1;
        out->items = items;
        out->cap = cap;
    }
    out->items[out->len++] = (Block){bit_off, out_off, btype};
    return 0;
}

/* With an entry point, skip from the first block's tables to the symbol there. */
static const char *enter(Bits *b, Scan *s) {
    if (s->entry_bit == NO_ENTRY) return NULL;
    if (s->entry_bit < b->pos) return "entry point inside the block's header";
    b->pos = s->entry_bit;
    s->out = s->entry_out;
    s->entry_bit = NO_ENTRY;
    return overrun(b) ? "truncated" : NULL;
}

/* Every block of the stream, until the final one ends; NULL or the reason it is invalid. */
static const char *scan(Bits *b, Scan *s, Blocks *out) {
    int last = 0;
    while (!last) {
        uint64_t start = b->pos;
        if (s->tok && s->out >= s->stop_out) return NULL;
        last = (int)take(b, 1);
        int btype = (int)take(b, 2);
        if (overrun(b)) return "truncated";
        if (push(out, start, s->out, btype) < 0) return OUT_OF_MEMORY;
        s->block_bit = start;
        const char *err = NULL;
        if (s->entry_bit != NO_ENTRY && btype != 1 && btype != 2) return "entry inside a stored block";
        if (btype == 0) {
            b->pos = (b->pos + 7) & ~(uint64_t)7;
            unsigned len = take(b, 16), nlen = take(b, 16);
            if (overrun(b)) return "truncated";
            if (len != (~nlen & 0xFFFFu)) return "invalid stored block lengths";
            b->pos += (uint64_t)len * 8;
            if (overrun(b)) return "truncated";
            if (s->tok && len && emit(s, TOKEN_STORED | len) < 0) return OUT_OF_MEMORY;
            s->out += len;
        } else if (btype == 1) {
            fixed_tables(s);
            err = enter(b, s);
            if (!err) err = codes(b, s);
        } else if (btype == 2) {
            err = dynamic_tables(b, s);
            if (!err) err = enter(b, s);
            if (!err) err = codes(b, s);
        } else {
            return "invalid block type";
        }
        if (err) return err;
    }
    return NULL;
}

/* Allocate the decoding tables, scan with the GIL released, free them: NULL or the reason
 * the stream is invalid. */
static const char *run_scan(Bits *b, Scan *s, Blocks *blocks) {
    s->lit = malloc(sizeof(uint16_t) * TABLE_SIZE);
    s->dist = malloc(sizeof(uint16_t) * TABLE_SIZE);
    const char *err = OUT_OF_MEMORY;
    if (s->lit && s->dist) {
        Py_BEGIN_ALLOW_THREADS;
        err = scan(b, s, blocks);
        Py_END_ALLOW_THREADS;
    }
    free(s->lit);
    free(s->dist);
    s->lit = s->dist = NULL;
    return err;
}

/* The blocks as [(bit_off, out_off, btype)], or NULL with the exception set. */
static PyObject *blocks_list(const Blocks *blocks) {
    PyObject *list = PyList_New((Py_ssize_t)blocks->len);
    for (size_t i = 0; list && i < blocks->len; i++) {
        const Block *k = &blocks->items[i];
        PyObject *t = Py_BuildValue("(KKi)", (unsigned long long)k->bit_off,
                                    (unsigned long long)k->out_off, k->btype);
        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

PyObject *zblocks_scan(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer view;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTuple(args, "y*|n", &view, &offset)) return NULL;
    if (offset < 0 || offset > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "offset outside the data");
        return NULL;
    }
    Bits b = {(const uint8_t *)view.buf + offset, (size_t)(view.len - offset), 0};
    Scan s = {NULL, NULL, 0};
    s.entry_bit = NO_ENTRY;
    Blocks blocks = {NULL, 0, 0};
    const char *err = run_scan(&b, &s, &blocks);
    PyBuffer_Release(&view);
    PyObject *list = NULL;
    if (err) {
        scan_error(err);
    } else {
        list = blocks_list(&blocks);
    }
    free(blocks.items);
    if (!list) return NULL;
    return Py_BuildValue("(NKK)", list, (unsigned long long)b.pos, (unsigned long long)s.out);
}

/* deflate_tokens: the symbols of the stream from a block boundary as Go's matcher tokens, for
 * reusing a base layer's matches where a target layer's tokens are the same (segreuse). */
PyObject *zblocks_tokens(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer view;
    Py_ssize_t offset = 0;
    unsigned long long bit_off = 0, out_off = 0, stop_out = ~0ULL;
    long long entry_bit = -1;
    if (!PyArg_ParseTuple(args, "y*|nKKKL", &view, &offset, &bit_off, &out_off, &stop_out, &entry_bit))
        return NULL;
    if (offset < 0 || offset > view.len || bit_off > (unsigned long long)(view.len - offset) * 8) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "offset outside the data");
        return NULL;
    }
    Bits b = {(const uint8_t *)view.buf + offset, (size_t)(view.len - offset), bit_off};
    Scan s = {NULL, NULL, out_off};
    s.stop_out = stop_out;
    s.entry_bit = entry_bit < 0 ? NO_ENTRY : (uint64_t)entry_bit;
    s.entry_out = out_off;
    Blocks blocks = {NULL, 0, 0};
    const char *err = OUT_OF_MEMORY;
    if (emit(&s, 0) == 0) { /* the token buffer exists even for no tokens */
        s.ntok = 0;
        err = run_scan(&b, &s, &blocks);
    }
    PyBuffer_Release(&view);
    PyObject *list = NULL, *toks = NULL;
    if (err) {
        scan_error(err);
    } else if ((list = blocks_list(&blocks)) != NULL) {
        toks = PyBytes_FromStringAndSize((const char *)s.tok, (Py_ssize_t)(s.ntok * sizeof(uint32_t)));
    }
    free(blocks.items);
    free(s.tok);
    if (!list || !toks) {
        Py_XDECREF(list);
        Py_XDECREF(toks);
        return NULL;
    }
    return Py_BuildValue("(NNKK)", toks, list, (unsigned long long)b.pos, (unsigned long long)s.out);
}

/* deflate_token_bits(data, offset, positions) -> [(block_bit, token_bit)]: for each output
 * offset (ascending) where a token starts, the bit offsets of its block and of its symbol
 * (-1, -1 where none starts): what a node needs to decode from that token on. */
PyObject *zblocks_token_bits(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer view;
    Py_ssize_t offset = 0;
    PyObject *positions;
    if (!PyArg_ParseTuple(args, "y*nO", &view, &offset, &positions)) return NULL;
    /* PyLong_AsUnsignedLongLong runs no Python code (no __index__), so a list can't change
     * under the loop. */
    PyObject *seq = PySequence_Fast(positions, "positions must be a sequence of offsets");
    Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : 0;
    uint64_t *want = malloc(sizeof(uint64_t) * ((size_t)n + 1));
    uint64_t *wb = malloc(sizeof(uint64_t) * ((size_t)n + 1)), *wt = malloc(sizeof(uint64_t) * ((size_t)n + 1));
    Scan s = {NULL, NULL, 0};
    Blocks blocks = {NULL, 0, 0};
    PyObject *result = NULL;
    if (!seq) goto done;
    if (!want || !wb || !wt) { /* before the loop writes to them */
        PyErr_NoMemory();
        goto done;
    }
    if (offset < 0 || offset > view.len) {
        PyErr_SetString(PyExc_ValueError, "offset outside the data");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        want[i] = (uint64_t)PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) goto done;
        if (i > 0 && want[i] <= want[i - 1]) {
            PyErr_SetString(PyExc_ValueError, "positions must ascend");
            goto done;
        }
        wb[i] = wt[i] = UINT64_MAX;
    }
    s.entry_bit = NO_ENTRY;
    s.want = want, s.nwant = (size_t)n, s.want_block = wb, s.want_bit = wt;
    Bits b = {(const uint8_t *)view.buf + offset, (size_t)(view.len - offset), 0};
    const char *err = run_scan(&b, &s, &blocks);
    if (err) {
        scan_error(err);
        goto done;
    }
    if (!(result = PyList_New(n))) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long bb = wb[i] == UINT64_MAX ? -1 : (long long)wb[i], tb = wt[i] == UINT64_MAX ? -1 : (long long)wt[i];
        PyObject *t = Py_BuildValue("(LL)", bb, tb);
        if (!t) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, t);
    }
done:
    free(want);
    free(wb);
    free(wt);
    free(blocks.items);
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return result;
}
