/* Level 1 (deflatefast.go) and the store levels 0 and -2, for goflate.c; split from
 * golevels.c (levels 2-9) to keep each part short. */
#include "goflate_int.h"

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
    if (t >= 0) return gf_match_len(src + t, src + s, s1 - s);
    int32_t tp = d->prev_len + t;
    if (tp < 0) return 0;
    int32_t alen = s1 - s, blen = d->prev_len - tp;
    if (blen > alen) blen = alen;
    int32_t n = gf_match_len(src + s, d->prev + tp, blen);
    if (n < blen) return n;
    if (s + n == s1) return n;
    return n + gf_match_len(src + s + n, src, s1 - (s + n));
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
int gf_enc_speed_step(Deflater *d) {
    int end = d->window_end;
    if (end < MAX_STORE_BLOCK) {
        if (!d->sync) return 1;
        if (end < 128) {
            int ok = 1;
            if (end == 0) return 1;
            if (end <= 16) ok = gf_write_stored_block(d, d->window, end);
            else ok = gf_write_block_huff(d, d->window, end);
            d->window_end = 0;
            fast_reset(d);
            return ok;
        }
    }
    fast_encode(d, d->window, end);
    int ok;
    if (d->ntokens > end - (end >> 4)) ok = gf_write_block_huff(d, d->window, end);
    else ok = gf_write_block_dynamic(d, d->tokens, d->ntokens, d->window, end);
    d->window_end = 0;
    return ok;
}

/* ---- levels 0 and -2 (store, storeHuff) ------------------------------------------------- */

int gf_store_step(Deflater *d) {
    if (d->window_end > 0 && (d->window_end == MAX_STORE_BLOCK || d->sync)) {
        int ok = gf_write_stored_block(d, d->window, d->window_end);
        d->window_end = 0;
        return ok;
    }
    return 1;
}

int gf_store_huff_step(Deflater *d) {
    if ((d->window_end < d->window_cap && !d->sync) || d->window_end == 0) return 1;
    int ok = gf_write_block_huff(d, d->window, d->window_end);
    d->window_end = 0;
    return ok;
}
