/* krill._zdeflate, matching: zlib 1.2.13's window, hash chains and deflate_slow.
 *
 * What decides the output is zlib's to the byte: the rolling hash over 3 bytes
 * (hash_bits = memLevel + 7), when positions enter the chains (including the two after
 * a preset dictionary or a slide, through ``insert``), the chain walk (max_chain,
 * quartered once the previous match is good, stopped at nice_match or MAX_DIST), lazy
 * evaluation (max_lazy), dropping 3-byte matches further than TOO_FAR, and when the window
 * slides. Even bytes past the input's end matter: zlib compares up to 258 bytes whatever
 * the lookahead and clips the length afterwards, so which candidate wins near the end can
 * depend on stale window bytes; the window is therefore filled and slid exactly as
 * fill_window does (zeroed at start, as zlib's high-water mark makes it read).
 *
 * Where speed comes from: 8 bytes compared at a time, the two early-out checks as 16-bit
 * loads, and the output written straight to a growing buffer with a 64-bit bit buffer.
 */
#include "zdeflate.h"

#include <stdlib.h>

typedef struct {
    uint16_t good, lazy, nice, chain;
} zd_config;

/* zlib's configuration_table for the deflate_slow levels */
static const zd_config CONFIG[10] = {
    {0, 0, 0, 0},         {0, 0, 0, 0},         {0, 0, 0, 0},       {0, 0, 0, 0},
    {4, 4, 16, 16},       {8, 16, 32, 32},      {8, 16, 128, 128},  {8, 32, 128, 256},
    {32, 128, 258, 1024}, {32, 258, 258, 4096},
};

static inline uint16_t load16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

int zd_init(zd_state *s, int level, int mem_level, int strategy) {
    memset(s, 0, sizeof *s);
    s->level = level;
    s->strategy = strategy;
    s->good_match = CONFIG[level].good;
    s->max_lazy = CONFIG[level].lazy;
    s->nice_match = CONFIG[level].nice;
    s->max_chain = CONFIG[level].chain;
    s->hash_bits = (unsigned)mem_level + 7;
    s->hash_size = 1u << s->hash_bits;
    s->hash_mask = s->hash_size - 1;
    s->hash_shift = (s->hash_bits + ZD_MIN_MATCH - 1) / ZD_MIN_MATCH;
    s->lit_bufsize = 1u << (mem_level + 6);
    s->sym_end = s->lit_bufsize - 1;
    s->window = calloc(ZD_WINDOW_SIZE + ZD_WINDOW_PAD, 1);
    s->links = calloc(ZD_WSIZE, sizeof(uint64_t));
    s->head = calloc(s->hash_size, sizeof(uint16_t));
    s->syms = malloc(s->lit_bufsize * sizeof(uint32_t));
    if (!s->window || !s->links || !s->head || !s->syms) {
        zd_free(s);
        return 0;
    }
    s->match_length = s->prev_length = ZD_MIN_MATCH - 1;
    s->last_flush = -2;
    zd_trees_init(s);
    return 1;
}

void zd_free(zd_state *s) {
    free(s->window);
    free(s->links);
    free(s->head);
    free(s->syms);
    free(s->out);
    s->window = NULL, s->syms = NULL, s->out = NULL;
    s->links = NULL;
    s->head = NULL;
}

/* Move positions down by a window size after the window slid (slide_hash). */
static void slide_chains(zd_state *s) {
    for (unsigned n = 0; n < s->hash_size; n++) {
        unsigned m = s->head[n];
        s->head[n] = (uint16_t)(m >= ZD_WSIZE ? m - ZD_WSIZE : 0);
    }
    /* every lane alike, as zlib slides prev[]: a lane >= 0x8000 loses that bit, others go to 0 */
    for (unsigned n = 0; n < ZD_WSIZE; n++) {
        uint64_t x = s->links[n];
        uint64_t keep = ((x >> 15) & 0x0001000100010001ull) * 0xffffu;
        s->links[n] = x & keep & 0x7fff7fff7fff7fffull;
    }
}

static inline unsigned next_hash(const zd_state *s, unsigned h, unsigned c) {
    return ((h << s->hash_shift) ^ c) & s->hash_mask;
}

/* Put position str on its chain; returns the chain's previous head (INSERT_STRING).
 *
 * Lanes 1-3 copy the head's lanes 0-2 as they are now. The matcher reads lane k only where
 * zlib would read prev[] of the k-th position down the chain: that position is then within
 * MAX_DIST of the current one, so its slot has not been reused since it was copied, and
 * the copy is the value zlib reads (all lanes slide alike). */
static inline unsigned insert_string(zd_state *s, unsigned str) {
    s->ins_h = next_hash(s, s->ins_h, s->window[str + ZD_MIN_MATCH - 1]);
    unsigned head = s->head[s->ins_h];
    s->links[str & ZD_WMASK] = (s->links[head & ZD_WMASK] << 16) | head;
    s->head[s->ins_h] = (uint16_t)str;
    return head;
}

/* Read input into the window, sliding it when needed, until enough lookahead or no more
 * input (zlib's fill_window, step for step: when it slides and how much it copies shape
 * the stale bytes the matcher may compare near the end). */
static void fill_window(zd_state *s) {
    do {
        unsigned more = ZD_WINDOW_SIZE - s->lookahead - s->strstart;
        if (s->strstart >= ZD_WSIZE + ZD_MAX_DIST) {
            memcpy(s->window, s->window + ZD_WSIZE, ZD_WSIZE - more);
            s->match_start -= ZD_WSIZE;
            s->strstart -= ZD_WSIZE;
            s->block_start -= (long)ZD_WSIZE;
            if (s->insert > s->strstart) s->insert = s->strstart;
            slide_chains(s);
            more += ZD_WSIZE;
        }
        if (s->avail_in == 0) break;
        size_t n = s->avail_in < more ? s->avail_in : more;
        memcpy(s->window + s->strstart + s->lookahead, s->next_in, n);
        s->next_in += n;
        s->avail_in -= n;
        s->lookahead += (unsigned)n;
        if (s->lookahead + s->insert >= ZD_MIN_MATCH) {
            unsigned str = s->strstart - s->insert;
            s->ins_h = s->window[str];
            s->ins_h = next_hash(s, s->ins_h, s->window[str + 1]);
            while (s->insert) {
                insert_string(s, str);
                str++;
                s->insert--;
                if (s->lookahead + s->insert < ZD_MIN_MATCH) break;
            }
        }
    } while (s->lookahead < ZD_MIN_LOOKAHEAD && s->avail_in != 0);
}

void zd_set_dictionary(zd_state *s, const uint8_t *dict, size_t len) {
    if (len >= ZD_WSIZE) { /* only the tail can be reached */
        dict += len - ZD_WSIZE;
        len = ZD_WSIZE;
    }
    const uint8_t *next = s->next_in;
    size_t avail = s->avail_in;
    s->next_in = dict;
    s->avail_in = len;
    fill_window(s);
    while (s->lookahead >= ZD_MIN_MATCH) {
        unsigned str = s->strstart, n = s->lookahead - (ZD_MIN_MATCH - 1);
        do insert_string(s, str++);
        while (--n);
        s->strstart = str;
        s->lookahead = ZD_MIN_MATCH - 1;
        fill_window(s);
    }
    s->strstart += s->lookahead;
    s->block_start = (long)s->strstart;
    s->insert = s->lookahead;
    s->lookahead = 0;
    s->match_length = s->prev_length = ZD_MIN_MATCH - 1;
    s->match_available = 0;
    s->next_in = next;
    s->avail_in = avail;
}

/* One candidate of the chain walk: whether it beats best_len, and by how much. */
#define ZD_TRY(candidate)                                                               \
    do {                                                                                \
        const uint8_t *match = window + (candidate);                                    \
        if (load16(match + best_len - 1) == scan_end && load16(match) == scan_start) {  \
            unsigned len = ZD_MAX_MATCH;                                                \
            for (unsigned i = 3; i < ZD_MAX_MATCH; i += 8) {                            \
                uint64_t diff = load64(scan + i) ^ load64(match + i);                   \
                if (diff) {                                                             \
                    unsigned at = i + ((unsigned)__builtin_ctzll(diff) >> 3);           \
                    len = at < ZD_MAX_MATCH ? at : ZD_MAX_MATCH;                        \
                    break;                                                              \
                }                                                                       \
            }                                                                           \
            if (len > best_len) {                                                       \
                s->match_start = (candidate);                                           \
                best_len = len;                                                         \
                if (len >= nice) goto done;                                             \
                scan_end = load16(scan + best_len - 1);                                 \
            }                                                                           \
        }                                                                               \
    } while (0)

/* Length of the longest match for strstart along the chain from cur_match, setting
 * match_start (zlib's longest_match). Bytes 0, 1 and the last two of the best length so
 * far are checked first; byte 2 is taken as equal, as zlib takes it (the hash implies it).
 * The walk visits zlib's candidates in zlib's order and stops where zlib stops; it takes
 * four steps per round from one load of links, so the chain's load latency, which bounds
 * zlib's walk, is paid a quarter as often. */
static inline unsigned longest_match(zd_state *s, unsigned cur_match) {
    unsigned chain = s->max_chain;
    const uint8_t *window = s->window;
    const uint8_t *scan = window + s->strstart;
    const uint64_t *links = s->links;
    unsigned best_len = s->prev_length;
    unsigned nice = s->nice_match;
    unsigned limit = s->strstart > ZD_MAX_DIST ? s->strstart - ZD_MAX_DIST : 0;
    if (s->prev_length >= s->good_match) chain >>= 2;
    if (nice > s->lookahead) nice = s->lookahead;
    uint16_t scan_start = load16(scan);
    uint16_t scan_end = load16(scan + best_len - 1);
    unsigned cur = cur_match;
    for (;;) {
        uint64_t next = links[cur & ZD_WMASK];
        unsigned n1 = (unsigned)next & 0xffff, n2 = (unsigned)(next >> 16) & 0xffff;
        unsigned n3 = (unsigned)(next >> 32) & 0xffff, n4 = (unsigned)(next >> 48);
        ZD_TRY(cur);
        if (n1 <= limit || --chain == 0) break;
        ZD_TRY(n1);
        if (n2 <= limit || --chain == 0) break;
        ZD_TRY(n2);
        if (n3 <= limit || --chain == 0) break;
        ZD_TRY(n3);
        if (n4 <= limit || --chain == 0) break;
        cur = n4;
    }
done:
    return best_len <= s->lookahead ? best_len : s->lookahead;
}

/* Close the open block at strstart (FLUSH_BLOCK). */
static void end_block(zd_state *s, int last) {
    const uint8_t *buf = s->block_start >= 0 ? s->window + s->block_start : NULL;
    zd_flush_block(s, buf, (unsigned long)((long)s->strstart - s->block_start), last);
    s->block_start = (long)s->strstart;
}

/* zlib's deflate_slow over the input set in next_in/avail_in: returns when it is consumed
 * and fewer than MIN_LOOKAHEAD bytes are left (ZD_NO_FLUSH), or once all input is coded
 * and the block closed (any other flush; the last block at ZD_FINISH). */
static void deflate_lazy(zd_state *s, int flush) {
    for (;;) {
        if (s->lookahead < ZD_MIN_LOOKAHEAD) {
            fill_window(s);
            if (s->lookahead < ZD_MIN_LOOKAHEAD && flush == ZD_NO_FLUSH) return;
            if (s->lookahead == 0) break;
        }
        unsigned hash_head = 0;
        if (s->lookahead >= ZD_MIN_MATCH) hash_head = insert_string(s, s->strstart);
        s->prev_length = s->match_length, s->prev_match = s->match_start;
        s->match_length = ZD_MIN_MATCH - 1;
        if (hash_head != 0 && s->prev_length < s->max_lazy &&
            s->strstart - hash_head <= ZD_MAX_DIST) {
            s->match_length = longest_match(s, hash_head);
            if (s->match_length <= 5 &&
                (s->strategy == ZD_FILTERED ||
                 (s->match_length == ZD_MIN_MATCH && s->strstart - s->match_start > ZD_TOO_FAR)))
                s->match_length = ZD_MIN_MATCH - 1;
        }
        if (s->prev_length >= ZD_MIN_MATCH && s->match_length <= s->prev_length) {
            /* the previous position's match is the better one: emit it */
            unsigned max_insert = s->strstart + s->lookahead - ZD_MIN_MATCH;
            int full = zd_tally_dist(s, s->strstart - 1 - s->prev_match,
                                     s->prev_length - ZD_MIN_MATCH);
            s->lookahead -= s->prev_length - 1;
            unsigned left = s->prev_length - 2;
            unsigned str = s->strstart;
            do {
                if (++str <= max_insert) insert_string(s, str);
            } while (--left != 0);
            s->strstart = str + 1;
            s->prev_length = 0;
            s->match_available = 0;
            s->match_length = ZD_MIN_MATCH - 1;
            if (full) end_block(s, 0);
        } else if (s->match_available) {
            /* no better match here: the previous byte goes out as a literal */
            if (zd_tally_lit(s, s->window[s->strstart - 1])) end_block(s, 0);
            s->strstart++;
            s->lookahead--;
        } else {
            s->match_available = 1;
            s->strstart++;
            s->lookahead--;
        }
    }
    if (s->match_available) {
        zd_tally_lit(s, s->window[s->strstart - 1]);
        s->match_available = 0;
    }
    s->insert = s->strstart < ZD_MIN_MATCH - 1 ? s->strstart : ZD_MIN_MATCH - 1;
    if (flush == ZD_FINISH) end_block(s, 1);
    else if (s->sym_next) end_block(s, 0);
}

/* zlib's order of flush modes, Z_BLOCK between Z_NO_FLUSH and Z_PARTIAL_FLUSH */
static int flush_rank(int flush) { return flush * 2 - (flush > 4 ? 9 : 0); }

void zd_deflate(zd_state *s, const uint8_t *data, size_t len, int flush) {
    int old_flush = s->last_flush;
    s->last_flush = flush;
    /* deflate() does nothing for a flush no stronger than the last one with no new input */
    if (len == 0 && flush != ZD_FINISH && flush_rank(flush) <= flush_rank(old_flush)) return;
    s->next_in = data;
    s->avail_in = len;
    if (len || s->lookahead || flush != ZD_NO_FLUSH) {
        deflate_lazy(s, flush);
        if (flush == ZD_PARTIAL_FLUSH) {
            zd_flush_marker(s, 1);
        } else if (flush == ZD_SYNC_FLUSH || flush == ZD_FULL_FLUSH) {
            zd_flush_marker(s, 0);
            if (flush == ZD_FULL_FLUSH) { /* forget the history */
                memset(s->head, 0, s->hash_size * sizeof(uint16_t));
                if (s->lookahead == 0) {
                    s->strstart = 0;
                    s->block_start = 0;
                    s->insert = 0;
                }
            }
        }
    }
    s->next_in = NULL;
    s->avail_in = 0;
    if (flush == ZD_FINISH) s->finished = 1;
}
