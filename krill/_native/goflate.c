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
#include "goflate_int.h"

#include "elfnorm.h"
#include "hdiffapply.h"
#include "zblocks.h"

/* ---- tables (token.go, deflate.go, huffman_bit_writer.go) ---------------------------- */

const level_cfg LEVELS[10] = {
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

const int8_t LENGTH_EXTRA_BITS[29] = {
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
};
const uint32_t LENGTH_BASE[29] = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28,
    32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 255,
};
const int8_t OFFSET_EXTRA_BITS[30] = {
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
};
const uint32_t OFFSET_BASE[30] = {
    0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x0006, 0x0008, 0x000c, 0x0010, 0x0018,
    0x0020, 0x0030, 0x0040, 0x0060, 0x0080, 0x00c0, 0x0100, 0x0180, 0x0200, 0x0300,
    0x0400, 0x0600, 0x0800, 0x0c00, 0x1000, 0x1800, 0x2000, 0x3000, 0x4000, 0x6000,
};
const uint8_t CODEGEN_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

/* Filled by gf_init_tables(): length (0..255) and offset (0..32767) -> code, as token.go's. */
uint8_t length_code_tab[256];
uint8_t offset_code_tab[MAX_MATCH_OFFSET];

/* ---- Python type ------------------------------------------------------------------------ */

void gf_init_tables(void) {
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
        fixed_lit_enc.codes[ch].code = gf_reverse_bits(bits, size);
        fixed_lit_enc.codes[ch].len = size;
    }
    for (int ch = 0; ch < OFFSET_CODE_COUNT; ch++) {
        fixed_off_enc.codes[ch].code = gf_reverse_bits((uint16_t)ch, 5);
        fixed_off_enc.codes[ch].len = 5;
    }
    int32_t freq[OFFSET_CODE_COUNT] = {1};
    gf_huff_generate(&huff_offset_enc, freq, OFFSET_CODE_COUNT, 15);
}

static void Deflater_free_buffers(Deflater *d) {
    free(d->window);
    free(d->hash_head);
    free(d->links);
    free(d->table);
    free(d->prev);
    free(d->tokens);
    free(d->out);
    free(d->points);
    d->window = d->prev = d->out = NULL;
    d->hash_head = d->tokens = NULL;
    d->links = NULL;
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
    d->reuse_next = INT64_MAX;
    if (level >= 0) d->cfg = LEVELS[level];
    if (level >= 2) {
        d->window_cap = 2 * WINDOW_SIZE;
        d->hash_head = calloc(HASH_SIZE, sizeof(uint32_t));
        d->links = calloc(WINDOW_SIZE, sizeof(uint64_t));
        d->tokens = malloc(sizeof(uint32_t) * (MAX_FLATE_BLOCK_TOKENS + 1));
        d->hash_offset = 1;
        d->length = MIN_MATCH - 1;
        d->chain_head = -1;
        if (!d->hash_head || !d->links || !d->tokens) goto nomem;
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
    /* Checked after the arguments (their __index__ may run Python code): a second __init__
     * would free the buffers a compress() in another thread is using with the GIL released,
     * and restart points only grow while the object lives (restart_points relies on it). */
    if (d->window != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Deflater is initialised once: make a new one");
        return -1;
    }
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
    if (!r) { /* the output is lost: going on would leave a gap in the stream */
        d->finished = 1;
        return NULL;
    }
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
        PyErr_SetString(PyExc_ValueError, "Deflater already finished (or failed)");
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
    ok = whole ? gf_feed_whole(d, view.buf, (size_t)view.len) : gf_feed_go_write(d, view.buf, (size_t)view.len);
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
    ok = gf_finish_stream(d);
    Py_END_ALLOW_THREADS
    PyObject *r = leave(d, ok);
    d->finished = 1;
    return r;
}

static PyObject *Deflater_restart_points(Deflater *d, PyObject *Py_UNUSED(ignored)) {
    /* A compress() running with the GIL released reallocates and appends to points. */
    if (d->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Deflater is compressing in another thread: ask when it returns");
        return NULL;
    }
    /* n read once: Py_BuildValue may run Python code (the garbage collector) that feeds this
     * object; points only grow (no re-initialisation), so the first n stay valid. */
    size_t n = d->npoints;
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (size_t i = 0; i < n; i++) {
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
 * (a crafted or corrupt point: refused before the window is read at it). The sums are
 * 64-bit: the fields are any int a caller passes, and win + avail must not wrap (the
 * build's -fno-strict-overflow makes int overflow wrap, not trap). */
static int restart_fits(const Deflater *d, const restart_point *r) {
    int64_t end = d->window_end, win = r->win;
    if (win < 0 || r->avail < 0 || r->avail > 1 || win + r->avail > end) return 0;
    if (!r->avail) return 1;
    if (r->length == MIN_MATCH - 1) return r->offset == 0;
    return r->length >= MIN_MATCH && r->length <= MAX_MATCH && win + r->length <= end && r->offset >= 1 &&
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
    for (int p = from; p < d->index && p < k - (MIN_MATCH - 1); p++) gf_insert_hash(d, p);
    return k;
}

/* As feed_whole, then either the end of the stream (final) or the step Go takes before its
 * next fill; stops early once the block ending at stop_at is written. */
static int run_segment(Deflater *d, const uint8_t *b, size_t n, int final) {
    while (n > 0) {
        if (d->window_end == d->window_cap) {
            if (!gf_step(d)) return 0;
            if (d->stopped) return 1;
        }
        int k = gf_fill(d, b, n);
        b += k;
        n -= (size_t)k;
    }
    if (final) return gf_finish_stream(d);
    if (d->window_end == d->window_cap && !gf_step(d)) return 0;
    return 1;
}

/* The segment's bytes (the first one's lead bits and the last one's padding are zero) and
 * their exact bit count, lead bits included. */
static PyObject *segment_result(Deflater *d, int reached) {
    long long nbits = ((long long)d->out_len << 3) + d->nbits;
    if (!gf_out_reserve(d, 16)) return PyErr_NoMemory();
    gf_bits_flush(d);
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)d->out, (Py_ssize_t)d->out_len);
    if (!bytes) return NULL;
    return Py_BuildValue("(NLO)", bytes, nbits, reached ? Py_True : Py_False);
}

static PyObject *goflate_segment(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"level", "data", "start", "stop", "final", "reuse", NULL};
    int level, final = 0;
    Py_buffer view;
    PyObject *start, *reuse = Py_None;
    long long stop;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*OLp|O", kwlist, &level, &view, &start, &stop, &final,
                                     &reuse))
        return NULL;
    reuse_span *spans = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t nspans = 0;
    if (!gf_parse_reuse(reuse, &spans, &views, &nspans)) {
        gf_release_reuse(spans, views, nspans);
        PyBuffer_Release(&view);
        return NULL;
    }
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
    d->spans = spans;
    d->nspans = (size_t)nspans;
    d->reuse_next = nspans ? spans[0].p1 : INT64_MAX;
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
    gf_release_reuse(spans, views, nspans);
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
     "the stream's end if final; reuse: spans (p1, p2, tokens, tok_pos) whose decisions come from a base "
     "stream's tokens (goreuse.c). The output starts lead_bits (bit_off % 8) into its first byte, as in the "
     "stream; nbits counts them. reached: the segment ended exactly there. The GIL is released while "
     "compressing."},
    {"reuse_spans", gf_reuse_spans, METH_VARARGS,
     "reuse_spans(target_tokens, base_tokens, ranges, cuts, min_len, limit) -> [(p1, p2, q1)]: where the "
     "target stream's tokens (deflate_tokens) equal the base's over aligned ranges (t_from, t_to, b_from), "
     "as spans segment(reuse=...) can take them from the base: from after a match to a match's end, none "
     "crossing a cut or past limit, at least min_len long. The GIL is released while comparing."},
    ELFNORM_METHODS
    ZBLOCKS_METHODS
    HDIFFAPPLY_METHODS
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
    gf_init_tables();
    elf_x86_init();
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
