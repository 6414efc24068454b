/*
 * Reused tokens: where a target layer repeats a base layer, Go's matcher repeats the base's
 * decisions, so the segment encoder takes them from the base's stream instead of searching.
 *
 * Go's lazy matcher (levels 4-9) decides at each position it visits from the 32 KiB behind
 * it, the bytes ahead and its pending lazy state. Over a stretch where the target's tokens
 * are the base's (the origin compares both streams, krill/delta/segreuse.py), the
 * encoder here keeps visiting exactly the positions Go visits and emitting through the same
 * code, so blocks, window slides and stored-block choices fall where Go's do; only the
 * search is replaced: at a token's first position the "match found" is that token (a
 * literal: none), at the position after a match's start none, which makes the lazy step
 * emit it. Positions are not hashed in between; on leaving, the chains the matcher would
 * hold are rebuilt from the 32 KiB before (as at a restart point).
 *
 * A span is entered only at its first position with nothing pending (the previous token
 * was a match) and left at its end; one that cannot be entered is skipped. Tokens that are
 * not the target's make other bits: the origin proves every segment with its spans before
 * publishing them, and a node verifies every digest, so a wrong span costs a failed rebuild,
 * never a wrong byte served.
 */
#include "goflate_int.h"

/* Token i of a token buffer: the buffers are any bytes-like object (a memoryview slice may
 * start at any address), so the native uint32 is read through memcpy, not a cast. */
static inline uint32_t load_tok(const uint8_t *tok, size_t i) {
    uint32_t t;
    memcpy(&t, tok + 4 * i, sizeof t);
    return t;
}

/* Input bytes a token stands for; 0 for a stored block's marker (no tokens are known there). */
static inline int64_t token_len(uint32_t t) {
    if (t & 0x80000000u) return 0;
    return (t & MATCH_TYPE) ? (int64_t)((t >> LENGTH_SHIFT) & 0xff) + BASE_MATCH_LENGTH : 1;
}

/* Input bytes a token or a stored block's marker covers. */
static inline int64_t token_bytes(uint32_t t) { return (t & 0x80000000u) ? (int64_t)(t & 0xffff) : token_len(t); }

/* Put the cursor on the span's token at p1; 0 if no token starts there. */
static int seek(Deflater *d, const reuse_span *s) {
    size_t i = 0;
    int64_t pos = s->tok_pos;
    while (i < s->ntok && pos < s->p1) {
        int64_t n = token_len(load_tok(s->tok, i++));
        if (n == 0) return 0;
        pos += n;
    }
    d->tok_i = i;
    d->tok_pos = pos;
    return pos == s->p1 && i < s->ntok;
}

/* The hash chains Go's matcher holds at the span's end: positions it did not hash, within
 * 32 KiB (inclusive: Go tries a candidate exactly 32 KiB back) and still in the window. */
static void leave(Deflater *d, const reuse_span *s) {
    int64_t from = d->index - WINDOW_SIZE, first = s->p1 - d->in_base;
    if (from < first) from = first;
    if (from < 0) from = 0;
    for (int p = (int)from; p < d->index && p < d->max_insert_index; p++) gf_insert_hash(d, p);
}

/* Called at a visit to position in_base + index once it reaches reuse_next: whether the
 * decision there comes from a span's tokens (entering or leaving spans on the way). */
int gf_reuse_at(Deflater *d) {
    int64_t at = d->in_base + d->index;
    while (d->span_i < d->nspans) {
        const reuse_span *s = &d->spans[d->span_i];
        if (d->oracle) {
            if (at < s->p2) return 1;
            leave(d, s);
            d->oracle = 0;
            d->span_i++;
            continue;
        }
        if (at < s->p1) {
            d->reuse_next = s->p1;
            return 0;
        }
        if (at == s->p1 && !d->byte_available && seek(d, s)) {
            d->oracle = 1;
            d->reuse_next = INT64_MIN; /* every visit asks until the span ends */
            return 1;
        }
        d->span_i++; /* passed, or not enterable: the matcher runs through it */
    }
    d->reuse_next = INT64_MAX;
    return 0;
}

/* The "match found" at this visit: the span's token starting here, if a match. */
int gf_reuse_token(Deflater *d, int *length, int *offset) {
    const reuse_span *s = &d->spans[d->span_i];
    if (d->tok_pos != d->in_base + d->index || d->tok_i >= s->ntok) return 0;
    uint32_t t = load_tok(s->tok, d->tok_i++);
    int64_t n = token_len(t);
    if (n == 0) { /* a stored block: the origin never makes such a span; the bits will differ */
        d->tok_pos = INT64_MAX;
        return 0;
    }
    d->tok_pos += n;
    if (!(t & MATCH_TYPE)) return 0;
    int off = (int)(t & OFFSET_MASK) + BASE_MATCH_OFFSET;
    if (off > MAX_MATCH_OFFSET || n > d->window_end - d->index) {
        /* no match Go could make here (a crafted span): none, and the span's tokens end */
        d->tok_pos = INT64_MAX;
        return 0;
    }
    *length = (int)n;
    *offset = off;
    return 1;
}

/* The items of a sequence as a new tuple; TypeError saying what was wanted if not iterable.
 * A tuple copy, not PySequence_Fast's list: parsing an item may run Python code (__index__)
 * that changes a list under the loop; the copy also keeps every item alive while parsed. */
static PyObject *tuple_of(PyObject *seq, const char *what) {
    PyObject *t = PySequence_Tuple(seq);
    if (!t && PyErr_ExceptionMatches(PyExc_TypeError)) PyErr_SetString(PyExc_TypeError, what);
    return t;
}

/* reuse: a sequence of (p1, p2, tokens, tok_pos), offsets into the segment's data, in order;
 * tokens: native uint32s (krill._goflate.deflate_tokens). Their buffers stay held in views. */
int gf_parse_reuse(PyObject *reuse, reuse_span **spans, Py_buffer **views, Py_ssize_t *n) {
    *spans = NULL;
    *views = NULL;
    *n = 0;
    if (reuse == Py_None) return 1;
    PyObject *seq = tuple_of(reuse, "reuse must be a sequence of (p1, p2, tokens, tok_pos)");
    if (!seq) return 0;
    Py_ssize_t k = PyTuple_GET_SIZE(seq);
    *spans = calloc((size_t)k + 1, sizeof(reuse_span));
    *views = calloc((size_t)k + 1, sizeof(Py_buffer));
    if (!*spans || !*views) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        reuse_span *s = &(*spans)[i];
        long long p1, p2, pos;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(seq, i), "LLy*L", &p1, &p2, &(*views)[i], &pos)) break;
        *n = i + 1;
        s->p1 = p1, s->p2 = p2, s->tok_pos = pos;
        s->tok = (const uint8_t *)(*views)[i].buf;
        s->ntok = (size_t)(*views)[i].len / sizeof(uint32_t);
        if (p1 < 0 || p2 <= p1 || (i > 0 && p1 < (*spans)[i - 1].p2) || pos > p1) {
            PyErr_SetString(PyExc_ValueError, "reuse spans must be ordered, non-empty, and start after their tokens");
            break;
        }
    }
    Py_DECREF(seq);
    return !PyErr_Occurred();
}

void gf_release_reuse(reuse_span *spans, Py_buffer *views, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) PyBuffer_Release(&views[i]);
    free(spans);
    free(views);
}

/* ---- the origin: where the target's tokens are the base's -------------------------------- */

typedef struct {
    int64_t t_from, t_to, b_from;
} aligned_range;

typedef struct {
    int64_t *v;
    size_t n, cap;
} int64s;

static int push3(int64s *out, int64_t a, int64_t b, int64_t c) {
    if (out->n + 3 > out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 96;
        int64_t *v = realloc(out->v, cap * sizeof *v);
        if (!v) return -1;
        out->v = v;
        out->cap = cap;
    }
    out->v[out->n++] = a, out->v[out->n++] = b, out->v[out->n++] = c;
    return 0;
}

static inline int is_match(uint32_t t) { return (t & MATCH_TYPE) && !(t & 0x80000000u); }

/* Spans [p1, p2) of the target where every token equals the base's at the same place in an
 * aligned range (target bytes [t_from, t_to) are the base's from b_from), p1 after a match,
 * p2 at the end of one, none crossing a cut, none past limit, each at least min_len long.
 * bpos: each base token's input offset. Appends (p1, p2, q1) triples. */
static int find_spans(const uint8_t *tt, size_t nt, const uint8_t *bt, const int64_t *bpos, size_t nb,
                      const aligned_range *rg, size_t nr, const int64_t *cuts, size_t nc, int64_t min_len,
                      int64_t limit, int64s *out) {
    size_t r = 0, c = 0, j = 0;
    int64_t tp = 0;
    /* the span being grown: its p1, q1, last clean end, and the base's offset from the target
     * (a span's tokens are read from the base in one run: one range, one shift) */
    int64_t open = -1, q_open = 0, last_end = -1, shift = 0, open_shift = 0;
    for (size_t i = 0; i <= nt; i++) {
        uint32_t t = i < nt ? load_tok(tt, i) : 0;
        int64_t len = i < nt ? token_bytes(t) : 0;
        while (r < nr && rg[r].t_to <= tp) r++;
        while (c < nc && cuts[c] < tp) c++;
        int same = 0;
        if (i < nt && !(t & 0x80000000u) && r < nr && rg[r].t_from <= tp && tp + len <= rg[r].t_to && tp + len <= limit) {
            shift = rg[r].b_from - rg[r].t_from;
            int64_t want = tp + shift;
            if (j >= nb || bpos[j] > want || want - bpos[j] > 4096) { /* a jump: binary search */
                size_t lo = 0, hi = nb;
                while (lo < hi) {
                    size_t mid = (lo + hi) / 2;
                    if (bpos[mid] < want) lo = mid + 1; else hi = mid;
                }
                j = lo;
            }
            while (j < nb && bpos[j] < want) j++;
            same = j < nb && bpos[j] == want && load_tok(bt, j) == t;
        }
        int cut_here = c < nc && cuts[c] < tp + (len ? len : 1); /* at or inside this token */
        if (open >= 0 && (!same || cut_here || shift != open_shift)) { /* ends at its last clean end */
            if (last_end - open >= min_len && push3(out, open, last_end, q_open) < 0) return -1;
            open = -1;
        }
        /* a span may start here if the token before was a match and this one is the base's */
        if (open < 0 && same && i > 0 && is_match(load_tok(tt, i - 1))) {
            open = tp;
            q_open = bpos[j];
            open_shift = shift;
            last_end = -1;
        }
        if (open >= 0 && is_match(t)) last_end = tp + len;
        tp += len;
    }
    return 0;
}

/* reuse_spans(target_tokens, base_tokens, ranges, cuts, min_len, limit) -> [(p1, p2, q1)] */
PyObject *gf_reuse_spans(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer tv, bv;
    PyObject *ranges, *cuts;
    long long min_len, limit;
    if (!PyArg_ParseTuple(args, "y*y*OOLL", &tv, &bv, &ranges, &cuts, &min_len, &limit)) return NULL;
    PyObject *rs = tuple_of(ranges, "ranges: a sequence of (t_from, t_to, b_from)");
    PyObject *cs = rs ? tuple_of(cuts, "cuts: a sequence of offsets") : NULL;
    size_t nt = (size_t)tv.len / 4, nb = (size_t)bv.len / 4;
    size_t nr = rs ? (size_t)PyTuple_GET_SIZE(rs) : 0, nc = cs ? (size_t)PyTuple_GET_SIZE(cs) : 0;
    aligned_range *rg = malloc((nr + 1) * sizeof *rg);
    int64_t *cv = malloc((nc + 1) * sizeof *cv), *bpos = malloc((nb + 1) * sizeof *bpos);
    int64s out = {NULL, 0, 0};
    PyObject *result = NULL;
    if (!cs || !rg || !cv || !bpos) {
        if (cs) PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < nr; i++) {
        long long a, b, q;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(rs, (Py_ssize_t)i), "LLL", &a, &b, &q)) goto done;
        rg[i] = (aligned_range){a, b, q};
        if (b < a || (i > 0 && a < rg[i - 1].t_to)) {
            PyErr_SetString(PyExc_ValueError, "ranges must be ordered and not overlap");
            goto done;
        }
    }
    for (size_t i = 0; i < nc; i++) {
        cv[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(cs, (Py_ssize_t)i));
        if (cv[i] == -1 && PyErr_Occurred()) goto done;
    }
    int64_t p = 0;
    for (size_t j = 0; j < nb; j++) {
        bpos[j] = p;
        p += token_bytes(load_tok(bv.buf, j));
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = find_spans(tv.buf, nt, bv.buf, bpos, nb, rg, nr, cv, nc, min_len, limit, &out);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(result = PyList_New((Py_ssize_t)(out.n / 3)))) goto done;
    for (size_t i = 0; i < out.n / 3; i++) {
        PyObject *t = Py_BuildValue("(LLL)", (long long)out.v[3 * i], (long long)out.v[3 * i + 1],
                                    (long long)out.v[3 * i + 2]);
        if (!t) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, t);
    }
done:
    free(rg);
    free(cv);
    free(bpos);
    free(out.v);
    Py_XDECREF(rs);
    Py_XDECREF(cs);
    PyBuffer_Release(&tv);
    PyBuffer_Release(&bv);
    return result;
}
