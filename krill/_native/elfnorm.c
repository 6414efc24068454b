/*
 * The ELF-aware delta transform (Courgette's idea, written for Krill).
 *
 * When a library is rebuilt, code moves, and every call, jump, RIP-relative
 * load, ADRP/BL and R_*_RELATIVE addend that points across the moved code
 * changes: a generic diff pays for that sea of 4-byte changes. Here each such
 * field is replaced by a label index (labels = the distinct target addresses,
 * sorted in the base), and the target's labels get the base's index where
 * they point to the same thing. The normalized target then differs from the
 * normalized base only where the code really changed; the delta carries that
 * diff plus the target's label table as differences from the base's (a run
 * of labels shifted by the same amount costs a zero byte each).
 *
 * Fields, in a fixed order ("candidates"):
 *   phase 1: x86-64 E8/E9/0F8x rel32 and RIP-relative disp32 (elfx86.c) or
 *            aarch64 B/BL imm26 and ADRP imm21 in SHF_EXECINSTR sections, an ADRP
 *            with the ADD/LDR/STR holding its low 12 bits as one field (side v2);
 *            r_offset of every SHT_RELA entry, r_addend of RELATIVE ones;
 *            .eh_frame_hdr's table and each FDE's pc_begin (side v3), CIE pointers
 *            and symbol values (side v4); SHT_RELR address entries (side v5);
 *   phase 2: the 8-byte slot each RELATIVE relocation (and, side v5, SHT_RELR) points at.
 * Their positions depend only on bytes the transform never changes (opcode
 * bits, r_info, headers), so the inverse finds them again in the normalized
 * target (phase 2 after phase 1 is restored). Which candidates were replaced
 * is carried in the side data (a run-length mask); a candidate overlapping an
 * earlier one is never replaced. All of that holds for well-formed files; for
 * any other input the encoder runs elf_restore and compares before it keeps
 * the ELF op, so a misparse costs size, never bytes. Every read is bounds
 * checked: hostile input gets a ValueError or an identity transform.
 *
 * Parts: elfscan.c finds the fields, elffields.c reads and writes their values, elflabels.c
 * builds and matches the label tables, this file normalizes, codes the side data, inverts.
 *
 * Memory: the encoder holds 40 bytes per candidate per file; elf_restore
 * writes fields as it finds them and holds only the output, the label table
 * and a bitmap of n/8 bytes.
 */
#include "elfnorm.h"
#include "elfcand.h"
#include "elfscan.h"

#include <stdlib.h>
#include <string.h>

/* Side data versions: 1 (format 3) reads an ADRP alone (its page is the label); 2 (format 4)
 * pairs it with the ADD/LDR/STR carrying its low 12 bits (the full address is the label);
 * 3 (format 4) also reads .eh_frame_hdr's table and .eh_frame's FDE pc_begin fields; 4 (format
 * 4) also symbol values (.dynsym, .symtab) and .eh_frame's CIE pointers; 5 (format 4) also
 * SHT_RELR address entries and the slots they relocate. */
#define SIDE_VERSION 5

/* Field values (elffields.c) and labels (elflabels.c) are declared in elfcand.h. */

/* ---- forward: the candidates of a file, with their addresses and contexts --------------- */

static int collect(Scan *s, uint64_t pos, int kind, int width, int tail, uint64_t va) {
    CandList *c = s->state;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4096;
        Cand *v = realloc(c->v, cap * sizeof *v);
        if (!v) return -1;
        c->v = v, c->cap = cap;
    }
    int k = kind < 0 ? -kind : kind;
    Cand *x = &c->v[c->n++];
    x->pos = pos, x->va = va, x->kind = (uint8_t)k, x->width = (uint8_t)width, x->tail = (uint8_t)tail;
    x->addr = elf_field_addr(c->buf + pos, k, tail, va);
    /* Only fields pointing into the image are labels: a misdecoded "call" in data points
     * anywhere, and as a label it would cost a table entry instead of four unchanged bytes. */
    x->take = kind > 0 && x->addr >= s->e->lo && x->addr < s->e->hi;
    if (k == K_APAIR && x->addr - (x->addr & 0xFFF) != elf_field_addr(c->buf + pos, K_ADRP, 0, va))
        x->take = 0; /* an LDR offset past the page: the inverse would split it otherwise */
    x->ctx = 0;
    x->hint = s->hint;
    return 0;
}

static uint32_t mix(uint32_t h, uint32_t v) { return (h ^ v) * 16777619u; }

/* aarch64 words with their label bits cleared: what stays when code moves. */
static uint32_t a64_stable(uint32_t w) {
    if ((w & 0x7C000000u) == 0x14000000u) return w & 0xFC000000u;
    if ((w & 0x9F000000u) == 0x90000000u) return w & 0x9F00001Fu;
    if (a64_lo12_scale(w) >= 0) return w & ~(0xFFFu << 10);
    return w;
}

/* A hash of the bytes around each candidate, its own and other fields' values left out:
 * a context found once in the base and once in the target pairs their labels. */
static void contexts(const Elf *e, CandList *c, const uint8_t *cover) {
    const uint8_t *b = c->buf;
    for (size_t i = 0; i < c->n; i++) {
        Cand *x = &c->v[i];
        uint32_t h = mix(2166136261u, x->kind);
        if (x->kind == K_B26 || x->kind == K_ADRP || x->kind == K_APAIR) {
            if (x->kind == K_APAIR) h = mix(mix(h, x->tail), a64_stable(rd32(b + x->pos + 4 * x->tail)));
            for (int k = -3; k <= 1; k++) {
                int64_t p = (int64_t)x->pos + 4 * k;
                if (p >= 0 && (uint64_t)p + 4 <= e->n) h = mix(h, a64_stable(rd32(b + p)));
            }
        } else if (x->kind >= K_EHPC && x->hint != UINT64_MAX && x->hint + 16 <= e->n) {
            /* the FDE's pc_range and instructions: what stays when the function moves */
            uint64_t from = x->hint + 12, to = x->hint + 4 + rd32(b + x->hint);
            if (to > from + 32) to = from + 32;
            if (to > e->n) to = e->n;
            for (uint64_t p = from; p < to; p++) h = mix(h, b[p]);
        } else {
            uint64_t lo = x->pos >= 16 ? x->pos - 16 : 0, hi = x->pos + x->width + 8;
            if (hi > e->n) hi = e->n;
            for (uint64_t p = lo; p < hi; p++)
                h = mix(h, (cover[p >> 3] & (1u << (p & 7))) ? 0x100u : b[p]);
        }
        x->ctx = h;
    }
}

/* All candidates of `b` (phase 1 then phase 2, read from the same unchanged bytes). */
static int candidates(Elf *e, const uint8_t *b, size_t n, CandList *c, int with_contexts,
                      int version) {
    elf_parse(e, b, n);
    memset(c, 0, sizeof *c);
    c->buf = b;
    if (!e->machine) return 0;
    uint8_t *cover = calloc(n / 8 + 1, 1);
    if (!cover) return -1;
    Scan s = {e, cover, collect, c, version >= 2, version >= 3, version >= 4, version >= 5, UINT64_MAX};
    int rc = elf_scan_phase1(&s, b);
    c->nphase1 = c->n;
    if (rc == 0) rc = elf_scan_phase2(&s, b);
    if (rc == 0 && with_contexts) contexts(e, c, cover); /* only matching needs them */
    free(cover);
    return rc;
}

/* The normalized bytes, into `out` (n bytes) or a new buffer when it is NULL: every taken
 * candidate holds the index of its address in `table` (map[i] for label i of `labels`). A
 * candidate whose index does not fit is left alone. NULL when out of memory. */
static uint8_t *normalize(const CandList *c, size_t n, const uint64_t *labels, size_t nlabels,
                          const int64_t *map, uint8_t *out) {
    LabelIndex ix;
    if (elf_label_index(&ix, labels, nlabels) < 0 || (!out && !(out = malloc(n ? n : 1)))) {
        elf_label_index_free(&ix);
        return NULL;
    }
    memcpy(out, c->buf, n);
    for (size_t i = 0; i < c->n; i++) {
        Cand *x = &c->v[i];
        if (!x->take) continue;
        int64_t l = elf_label_lookup(&ix, x->addr);
        uint64_t idx = map ? (uint64_t)map[l] : (uint64_t)l;
        if (idx >= elf_index_limit(x->kind)) {
            x->take = 0;
            continue;
        }
        elf_put_index(out + x->pos, x->kind, x->tail, idx);
    }
    elf_label_index_free(&ix);
    return out;
}

/* ---- side data: header, mask of replaced candidates, label table ----------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int fail;
} Buf;

static void put_varint(Buf *b, uint64_t v) {
    if (b->n + 10 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->fail = 1;
            return;
        }
        b->p = p, b->cap = cap;
    }
    while (v >= 0x80) b->p[b->n++] = (uint8_t)(v | 0x80), v >>= 7;
    b->p[b->n++] = (uint8_t)v;
}

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

typedef struct {
    const uint8_t *p;
    size_t n, at;
    int fail;
} Reader;

static uint64_t get_varint(Reader *r) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->at >= r->n) break;
        uint8_t c = r->p[r->at++];
        v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) return v;
    }
    r->fail = 1;
    return 0;
}

static int side_encode(Buf *out, const CandList *tc, const uint64_t *lb, size_t nb,
                       const uint64_t *lt, size_t nt, const int64_t *assign, int version) {
    size_t nnew = 0;
    for (size_t k = 0; k < nt; k++) nnew += assign[k] < 0;
    put_varint(out, (uint64_t)version);
    put_varint(out, tc->n);
    put_varint(out, tc->nphase1);
    put_varint(out, nb);
    put_varint(out, nnew);
    size_t run = 0;
    int state = 1;
    for (size_t i = 0; i < tc->n; i++) {
        if (tc->v[i].take == state) {
            run++;
            continue;
        }
        put_varint(out, run);
        state ^= 1, run = 1;
    }
    put_varint(out, run);
    uint64_t *tb = malloc((nb + 1) * sizeof *tb);
    if (!tb) return -1;
    uint8_t *set = calloc(nb + 1, 1);
    if (!set) {
        free(tb);
        return -1;
    }
    for (size_t k = 0; k < nt; k++)
        if (assign[k] >= 0) tb[assign[k]] = lt[k], set[assign[k]] = 1;
    int64_t prev = 0;
    for (size_t i = 0; i < nb; i++) { /* unmatched base labels repeat the shift: zero bytes */
        int64_t d = set[i] ? (int64_t)(tb[i] - lb[i]) : prev;
        put_varint(out, zigzag(d - prev));
        prev = d;
    }
    uint64_t last = 0;
    for (size_t k = 0; k < nt; k++)
        if (assign[k] < 0) put_varint(out, zigzag((int64_t)(lt[k] - last))), last = lt[k];
    free(tb), free(set);
    return out->fail ? -1 : 0;
}

/* ---- inverse ----------------------------------------------------------------------------- */

typedef struct {
    uint8_t *out;
    const uint8_t *mask; /* one byte per candidate */
    size_t ncand, at;
    const uint64_t *table;
    size_t ntable;
    const char *error;
} Restore;

static int restore_field(Scan *s, uint64_t pos, int kind, int width, int tail, uint64_t va) {
    Restore *r = s->state;
    (void)width;
    if (r->at >= r->ncand) {
        r->error = "the ELF file has more fields than the delta's mask";
        return -1;
    }
    if (!r->mask[r->at++]) return 0;
    if (kind < 0) {
        r->error = "the delta's mask replaces an overlapping field";
        return -1;
    }
    uint64_t idx = elf_get_index(r->out + pos, kind);
    if (idx >= r->ntable) {
        r->error = "a field's label index is outside the delta's label table";
        return -1;
    }
    if (elf_put_addr(r->out + pos, kind, tail, va, r->table[idx]) < 0) {
        r->error = "a label's address does not fit its field";
        return -1;
    }
    return 0;
}

/* Decodes the side data into the mask and table; an error message or NULL. */
static const char *side_decode(Reader *rd, const uint64_t *lb, size_t nb_have, size_t n,
                               uint8_t **mask, size_t *ncand, size_t *nphase1, uint64_t **table,
                               size_t *ntable, int *version_out) {
    uint64_t version = get_varint(rd), nc = get_varint(rd), n1 = get_varint(rd),
             nb = get_varint(rd), nnew = get_varint(rd);
    if (rd->fail || version < 1 || version > SIDE_VERSION) return "ELF side data: bad header";
    *version_out = (int)version;
    if (nc > 2 * (uint64_t)n + 16 || n1 > nc || nnew > nc) return "ELF side data: counts out of range";
    if (nb != nb_have) return "ELF side data: made against a base with another label count";
    *mask = malloc(nc + 1);
    *table = malloc((nb + nnew + 1) * sizeof **table);
    if (!*mask || !*table) return "out of memory";
    size_t i = 0;
    for (int state = 1; i < nc; state ^= 1) {
        uint64_t run = get_varint(rd);
        if (rd->fail || run > nc - i) return "ELF side data: bad mask";
        memset(*mask + i, state, run);
        i += run;
        if (run == 0 && i) return "ELF side data: bad mask";
    }
    int64_t d = 0;
    for (size_t k = 0; k < nb; k++) d += unzigzag(get_varint(rd)), (*table)[k] = lb[k] + (uint64_t)d;
    uint64_t last = 0;
    for (size_t k = 0; k < nnew; k++) last += (uint64_t)unzigzag(get_varint(rd)), (*table)[nb + k] = last;
    if (rd->fail || rd->at != rd->n) return "ELF side data: bad label table";
    *ncand = nc, *nphase1 = n1, *ntable = nb + nnew;
    return NULL;
}

/* ---- Python entry points (the GIL is released while computing) --------------------------- */

typedef struct {
    uint8_t *norm_b, *norm_t;
    uint64_t *lb;
    size_t nb;
    Buf side;
    int oom;
} Encoded;

/* `into`: where the normalized base goes (n bytes), or NULL for a new buffer in r->norm_b. */
static void encode_base(const uint8_t *b, size_t n, Encoded *r, CandList *bc, int with_contexts,
                        int version, uint8_t *into) {
    Elf *e = malloc(sizeof *e);
    if (!e || candidates(e, b, n, bc, with_contexts, version) < 0 || !(r->lb = elf_label_set(bc, &r->nb)) ||
        !(r->norm_b = normalize(bc, n, r->lb, r->nb, NULL, into)))
        r->oom = 1;
    if (into) r->norm_b = NULL; /* the caller's */
    free(e);
}

static void encode_target(const uint8_t *t, size_t n, Encoded *r, CandList *bc, int version) {
    CandList tc = {0};
    size_t nt = 0;
    uint64_t *lt = NULL;
    int64_t *assign = NULL, *map = NULL;
    Elf *e = malloc(sizeof *e);
    if (!e || candidates(e, t, n, &tc, 1, version) < 0 || !(lt = elf_label_set(&tc, &nt)) ||
        !(assign = elf_label_match(bc, r->lb, r->nb, &tc, lt, nt)) || !(map = malloc((nt + 1) * sizeof *map))) {
        r->oom = 1;
    } else {
        size_t fresh = r->nb;
        for (size_t k = 0; k < nt; k++) map[k] = assign[k] >= 0 ? assign[k] : (int64_t)fresh++;
        if (!(r->norm_t = normalize(&tc, n, lt, nt, map, NULL)) ||
            side_encode(&r->side, &tc, r->lb, r->nb, lt, nt, assign, version) < 0)
            r->oom = 1;
    }
    free(e), free(tc.v), free(lt), free(assign), free(map);
}

static PyObject *take_bytes(uint8_t *p, size_t n) {
    PyObject *o = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    free(p);
    return o;
}

static void encoded_free(Encoded *r) {
    free(r->norm_b), free(r->norm_t), free(r->lb), free(r->side.p);
}

static int bad_version(int version) {
    if (version >= 1 && version <= SIDE_VERSION) return 0;
    PyErr_Format(PyExc_ValueError, "ELF side data version %d is not known here (1..%d)", version,
                 SIDE_VERSION);
    return 1;
}

PyObject *elfnorm_base(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer base;
    int version = SIDE_VERSION;
    if (!PyArg_ParseTuple(args, "y*|i", &base, &version)) return NULL;
    if (bad_version(version)) {
        PyBuffer_Release(&base);
        return NULL;
    }
    Encoded r = {0};
    CandList bc = {0};
    /* Normalized straight into the bytes object returned: a base library is MBs, and a copy
     * of it (into fresh, page-faulting memory) was a tenth of a node's normalization. */
    PyObject *norm = PyBytes_FromStringAndSize(NULL, base.len);
    if (!norm) {
        PyBuffer_Release(&base);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    encode_base(base.buf, (size_t)base.len, &r, &bc, 0, version, (uint8_t *)PyBytes_AS_STRING(norm));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&base);
    free(bc.v);
    PyObject *res = NULL;
    if (r.oom) PyErr_NoMemory();
    else {
        uint8_t *labels = malloc(r.nb * 8 + 1);
        if (!labels) PyErr_NoMemory();
        else {
            for (size_t i = 0; i < r.nb; i++) wr64(labels + 8 * i, r.lb[i]);
            PyObject *lb = take_bytes(labels, r.nb * 8);
            if (lb) res = PyTuple_Pack(2, norm, lb);
            Py_XDECREF(lb);
        }
    }
    Py_DECREF(norm);
    encoded_free(&r);
    return res;
}

PyObject *elfnorm_encode(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer base, target;
    int version = SIDE_VERSION;
    if (!PyArg_ParseTuple(args, "y*y*|i", &base, &target, &version)) return NULL;
    if (bad_version(version)) {
        PyBuffer_Release(&base), PyBuffer_Release(&target);
        return NULL;
    }
    Encoded r = {0};
    CandList bc = {0};
    Py_BEGIN_ALLOW_THREADS
    encode_base(base.buf, (size_t)base.len, &r, &bc, 1, version, NULL);
    if (!r.oom) encode_target(target.buf, (size_t)target.len, &r, &bc, version);
    Py_END_ALLOW_THREADS
    size_t nb = (size_t)base.len, nt = (size_t)target.len;
    PyBuffer_Release(&base), PyBuffer_Release(&target);
    free(bc.v);
    PyObject *res = NULL;
    if (r.oom) PyErr_NoMemory();
    else {
        PyObject *a = take_bytes(r.norm_b, nb), *b = take_bytes(r.norm_t, nt),
                 *c = PyBytes_FromStringAndSize((const char *)r.side.p, (Py_ssize_t)r.side.n);
        r.norm_b = r.norm_t = NULL;
        if (a && b && c) res = PyTuple_Pack(3, a, b, c);
        Py_XDECREF(a), Py_XDECREF(b), Py_XDECREF(c);
    }
    encoded_free(&r);
    return res;
}

static const char *restore(uint8_t *out, size_t n, const uint8_t *side, size_t side_n,
                           const uint8_t *lbytes, size_t nb) {
    uint64_t *lb = malloc((nb + 1) * sizeof *lb), *table = NULL;
    uint8_t *mask = NULL, *cover = calloc(n / 8 + 1, 1);
    Elf *e = malloc(sizeof *e);
    const char *err = NULL;
    size_t ncand = 0, n1 = 0, ntable = 0;
    int version = 0;
    if (!lb || !cover || !e) err = "out of memory";
    if (!err) {
        for (size_t i = 0; i < nb; i++) lb[i] = rd64(lbytes + 8 * i);
        Reader rd = {side, side_n, 0, 0};
        err = side_decode(&rd, lb, nb, n, &mask, &ncand, &n1, &table, &ntable, &version);
    }
    if (!err) {
        elf_parse(e, out, n);
        Restore r = {out, mask, ncand, 0, table, ntable, NULL};
        Scan s = {e, cover, restore_field, &r, version >= 2, version >= 3, version >= 4, version >= 5, UINT64_MAX};
        if (e->machine && elf_scan_phase1(&s, out) == 0) {
            if (r.at != n1) r.error = "the ELF file's fields do not match the delta's mask";
            else elf_scan_phase2(&s, out);
        }
        if (r.error) err = r.error;
        else if (r.at != ncand) err = "the ELF file has fewer fields than the delta's mask";
    }
    free(lb), free(table), free(mask), free(cover), free(e);
    return err;
}

PyObject *elfnorm_restore(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer norm, side, labels;
    if (!PyArg_ParseTuple(args, "y*y*y*", &norm, &side, &labels)) return NULL;
    PyObject *out = NULL;
    const char *err = NULL;
    if (labels.len % 8) err = "base labels must be u64 values";
    else if (!(out = PyBytes_FromStringAndSize(norm.buf, norm.len))) err = "";
    if (!err) {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        err = restore(o, (size_t)norm.len, side.buf, (size_t)side.len, labels.buf, (size_t)labels.len / 8);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&norm), PyBuffer_Release(&side), PyBuffer_Release(&labels);
    if (err) {
        Py_XDECREF(out);
        if (*err) PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return out;
}
