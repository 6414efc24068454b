/* The matchers of levels 2-9 (deflate.go) and the input steps, for goflate.c (level 1 and the
 * store levels: gofast.c). */
#include "goflate_int.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* ---- levels 2-9 (deflate.go) ------------------------------------------------------------ */

static inline uint32_t hash4(const uint8_t *b) {
    return (((uint32_t)b[3] | (uint32_t)b[2] << 8 | (uint32_t)b[1] << 16 | (uint32_t)b[0] << 24) * HASHMUL) >>
           (32 - HASH_BITS);
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
            /* the chain links are distances (see insert_string): nothing to move */
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
    /* The walk reads the links four at a time (see insert_string): ``anchor`` is the
     * position whose slot ``lanes`` is, ``k`` how many of its lanes the walk has used. */
    int anchor = prev_head, k = 0;
    uint64_t lanes = d->links[anchor & WINDOW_MASK];
    for (int i = prev_head; tries > 0; tries--) {
        /* the next candidate, used only if Go would go on to it (the checks after the test) */
        if (k == 4) {
            anchor = i;
            lanes = d->links[anchor & WINDOW_MASK];
            k = 0;
        }
        int next = anchor - (int)((lanes >> (16 * k++)) & 0xffff);
        if (w_end == load_u32(win + i + length - 3)) {
            int n = gf_match_len(win + i, w_pos, min_match_look);
            if (n > length && (n > MIN_MATCH || pos - i <= 4096)) {
                length = n;
                offset = pos - i;
                ok = 1;
                if (n >= nice) break;
                w_end = load_u32(win + pos + n - 3);
            }
        }
        if (i == min_index) break;
        i = next;
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
        if (!gf_write_block(d, d->tokens, d->ntokens, input, input_len)) return 0;
        if (d->record_every > 0 || d->stop_at >= 0) note_block_end(d, index);
    }
    d->ntokens = 0;
    return 1;
}

/* Each 16-bit lane of x plus d, at most 0xffff (one SSE2 instruction on x86-64). */
static inline uint64_t add_saturating(uint64_t x, uint16_t d) {
#if defined(__SSE2__)
    return (uint64_t)_mm_cvtsi128_si64(_mm_adds_epu16(_mm_cvtsi64_si128((long long)x), _mm_set1_epi16((short)d)));
#else
    uint64_t r = 0;
    for (int k = 0; k < 4; k++) {
        uint32_t sum = (uint32_t)((x >> (16 * k)) & 0xffff) + d;
        r |= (uint64_t)(sum < 0xffff ? sum : 0xffff) << (16 * k);
    }
    return r;
#endif
}

/* Put window position ``index`` at the head of its hash chain; returns the chain's previous
 * head (Go's hashHead value: position + hashOffset, 0 for none).
 *
 * Go keeps one link per position (hashPrev, an absolute position) and its matcher loads one
 * per candidate. Here a position's slot holds the distances back to its next four chain
 * positions, 16 bits each, so one load yields four candidates. Lane 0 is the distance to
 * the previous head; lanes 1-3 add the previous head's lanes 0-2 as they are now. Why every
 * lane the matcher uses equals what Go would read:
 *   - Go reads hashPrev of a chain position p only while p > minIndex = pos - 32 KiB.
 *     p's slot is reused only by position p + 32 KiB, which is not inserted before pos
 *     (positions enter the chains in order, none after the one being matched), so Go reads
 *     the value written when p was inserted; by induction each lane copied from a later
 *     position's insertion is that value too.
 *   - A distance over 0xffff is stored as 0xffff: pos - 0xffff is below minIndex, where Go
 *     breaks as well. A previous head before the window's start or 32 KiB or more back
 *     (stale, or 0 = none) gives all lanes 0xffff: from any later position Go stops at it
 *     (i < 0 or i < minIndex) before reading anything behind it; from this one it reaches
 *     it through hashHead, tries it when exactly 32 KiB back (i == minIndex), and stops.
 *   - Distances do not change when the window slides or hashOffset is renormalised, so
 *     only hashHead is rewritten then (fill_deflate).
 * Copying the lanes costs every insertion a load and an add; it pays where chains are long
 * (against one link per position, single core, numpy and pandas layer tars: level 6
 * 1.22-1.24x, level 9 1.48-1.54x); at level 4 (chains of 16) it is 0.97x, and keeping
 * one lane there was slower still (0.89x). */
static inline uint32_t insert_string(Deflater *d, int index) {
    uint32_t *hh = &d->hash_head[hash4(d->window + index) & HASH_MASK];
    uint32_t head = *hh;
    int prev = (int)((int64_t)head - d->hash_offset);
    int dist = index - prev;
    /* Without a branch: whether the previous head is in reach depends on the data, and
     * mispredicting it cost more than the load (prev & WINDOW_MASK is a slot either way). */
    uint64_t lanes = add_saturating(d->links[prev & WINDOW_MASK] << 16, (uint16_t)dist);
    uint64_t reach = -(uint64_t)((prev >= 0) & (dist < WINDOW_SIZE));
    lanes = (lanes & reach) | ~reach;
    d->links[index & WINDOW_MASK] = lanes;
    *hh = (uint32_t)(index + d->hash_offset);
    return head;
}

void gf_insert_hash(Deflater *d, int index) { insert_string(d, index); }

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
        /* inside a span of reused tokens (goreuse.c; segments at levels 4-9 only), the token
         * there stands for the search, and nothing is hashed */
        int reused = d->in_base + d->index >= d->reuse_next && gf_reuse_at(d);
        if (!reused && d->index < d->max_insert_index) d->chain_head = (int)insert_string(d, d->index);
        int prev_length = d->length, prev_offset = d->offset;
        d->length = MIN_MATCH - 1;
        d->offset = 0;
        int min_index = d->index - WINDOW_SIZE;
        if (min_index < 0) min_index = 0;

        if (reused) {
            int nl, no;
            if (gf_reuse_token(d, &nl, &no)) {
                d->length = nl;
                d->offset = no;
            }
        } else if (d->chain_head - d->hash_offset >= min_index &&
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
                if (reused) {
                    d->index = new_index > d->index + 1 ? new_index : d->index + 1;
                } else {
                    int index = d->index;
                    for (index++; index < new_index; index++)
                        if (index < d->max_insert_index) insert_string(d, index);
                    d->index = index;
                }
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

int gf_step(Deflater *d) {
    switch (d->level) {
    case 0: return gf_store_step(d);
    case -2: return gf_store_huff_step(d);
    case 1: return gf_enc_speed_step(d);
    default: return deflate_step(d);
    }
}

int gf_fill(Deflater *d, const uint8_t *b, size_t n) {
    if (d->level >= 2) return fill_deflate(d, b, n);
    size_t room = (size_t)(d->window_cap - d->window_end); /* fillStore */
    if (n > room) n = room;
    memcpy(d->window + d->window_end, b, n);
    d->window_end += (int)n;
    return (int)n;
}

/* As one Go Write of everything fed so far: step only when the window is full. */
int gf_feed_whole(Deflater *d, const uint8_t *b, size_t n) {
    while (n > 0) {
        if (d->window_end == d->window_cap && !gf_step(d)) return 0;
        int k = gf_fill(d, b, n);
        b += k;
        n -= (size_t)k;
    }
    return 1;
}

/* Exactly one Go Write call (compressor.write). */
int gf_feed_go_write(Deflater *d, const uint8_t *b, size_t n) {
    while (n > 0) {
        if (!gf_step(d)) return 0;
        int k = gf_fill(d, b, n);
        b += k;
        n -= (size_t)k;
    }
    return 1;
}

/* compressor.close: the rest, then an empty final stored block. */
int gf_finish_stream(Deflater *d) {
    d->sync = 1;
    if (!gf_step(d)) return 0;
    if (!gf_write_stored_header(d, 0, 1)) return 0;
    gf_bits_flush(d);
    return 1;
}
