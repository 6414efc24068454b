/* Bits and blocks as Go writes them (huffman_bit_writer.go), for goflate.c. */
#include "goflate_int.h"

/* ---- output and bits (huffmanBitWriter's byte order; its 48-bit batching changes nothing
 * in the bytes) ---------------------------------------------------------------------------- */

int gf_out_reserve(Deflater *d, size_t n) {
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
void gf_bits_flush(Deflater *d) {
    while (d->nbits != 0) {
        d->out[d->out_len++] = (uint8_t)d->bits;
        d->bits >>= 8;
        d->nbits = d->nbits > 8 ? d->nbits - 8 : 0;
    }
    d->bits = 0;
}

int gf_write_stored_header(Deflater *d, int length, int eof) {
    if (!gf_out_reserve(d, 32)) return 0;
    write_bits(d, eof ? 1 : 0, 3);
    gf_bits_flush(d);
    write_bits(d, (uint32_t)length, 16);
    write_bits(d, (uint16_t)~(uint16_t)length, 16);
    return 1;
}

/* writeBytes: the pending (byte-aligned) header bits, then the raw bytes. */
static int write_raw(Deflater *d, const uint8_t *p, size_t n) {
    if (!gf_out_reserve(d, n + 16)) return 0;
    gf_bits_flush(d);
    memcpy(d->out + d->out_len, p, n);
    d->out_len += n;
    return 1;
}

int gf_write_stored_block(Deflater *d, const uint8_t *p, int n) {
    return gf_write_stored_header(d, n, 0) && write_raw(d, p, (size_t)n);
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
    int64_t header = 3 + 5 + 5 + 4 + 3 * nc + gf_bit_length(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT) +
                     (int64_t)d->codegen_freq[16] * 2 + (int64_t)d->codegen_freq[17] * 3 +
                     (int64_t)d->codegen_freq[18] * 7;
    *num_codegens = nc;
    return header + gf_bit_length(lit, d->literal_freq, MAX_NUM_LIT) +
           gf_bit_length(off, d->offset_freq, OFFSET_CODE_COUNT) + extra_bits;
}

static int64_t fixed_size(Deflater *d, int64_t extra_bits) {
    return 3 + gf_bit_length(&fixed_lit_enc, d->literal_freq, MAX_NUM_LIT) +
           gf_bit_length(&fixed_off_enc, d->offset_freq, OFFSET_CODE_COUNT) + extra_bits;
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
    gf_huff_generate(&d->lit_enc, d->literal_freq, MAX_NUM_LIT, 15);
    gf_huff_generate(&d->off_enc, d->offset_freq, OFFSET_CODE_COUNT, 15);
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
int gf_write_block(Deflater *d, uint32_t *tokens, int n, const uint8_t *input, int input_len) {
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
    gf_huff_generate(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int64_t dsize = dynamic_size(d, &d->lit_enc, &d->off_enc, extra_bits, &num_codegens);
    if (dsize < size) {
        size = dsize;
        lit = &d->lit_enc;
        off = &d->off_enc;
    }
    if (storable && ssize < size) return gf_write_stored_block(d, input, input_len);
    if (!gf_out_reserve(d, block_bound(n))) return 0;
    if (lit == &fixed_lit_enc) write_bits(d, 2, 3); /* writeFixedHeader, never final */
    else write_dynamic_header(d, num_literals, num_offsets, num_codegens, 0);
    write_tokens(d, tokens, n, lit->codes, off->codes);
    return 1;
}

/* writeBlockDynamic (level 1): dynamic codes, or stored unless they save over 1/16. */
int gf_write_block_dynamic(Deflater *d, uint32_t *tokens, int n, const uint8_t *input, int input_len) {
    tokens[n++] = END_BLOCK_MARKER;
    int num_literals, num_offsets, num_codegens;
    index_tokens(d, tokens, n, &num_literals, &num_offsets);
    generate_codegen(d, num_literals, num_offsets, &d->lit_enc, &d->off_enc);
    gf_huff_generate(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int64_t size = dynamic_size(d, &d->lit_enc, &d->off_enc, 0, &num_codegens), ssize;
    if (stored_size(input, input_len, &ssize) && ssize < size + (size >> 4))
        return gf_write_stored_block(d, input, input_len);
    if (!gf_out_reserve(d, block_bound(n))) return 0;
    write_dynamic_header(d, num_literals, num_offsets, num_codegens, 0);
    write_tokens(d, tokens, n, d->lit_enc.codes, d->off_enc.codes);
    return 1;
}

/* writeBlockHuff: literals only with a dynamic code, or stored unless it saves over 1/16.
 * Only entries 0-256 of literal_freq are set; offset_freq[0] = 1 (the rest may be stale,
 * as in Go: the huffOffset code gives them length 0). */
int gf_write_block_huff(Deflater *d, const uint8_t *input, int n) {
    memset(d->literal_freq, 0, sizeof d->literal_freq);
    for (int i = 0; i < n; i++) d->literal_freq[input[i]]++;
    d->literal_freq[END_BLOCK_MARKER] = 1;
    d->offset_freq[0] = 1;
    gf_huff_generate(&d->lit_enc, d->literal_freq, MAX_NUM_LIT, 15);
    generate_codegen(d, END_BLOCK_MARKER + 1, 1, &d->lit_enc, &huff_offset_enc);
    gf_huff_generate(&d->cg_enc, d->codegen_freq, CODEGEN_CODE_COUNT, 7);
    int num_codegens;
    int64_t size = dynamic_size(d, &d->lit_enc, &huff_offset_enc, 0, &num_codegens), ssize;
    if (stored_size(input, n, &ssize) && ssize < size + (size >> 4)) return gf_write_stored_block(d, input, n);
    if (!gf_out_reserve(d, (size_t)n * 2 + 1024)) return 0;
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
