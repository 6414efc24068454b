/*
 * Applying an uncompressed HDIFF13 diff (HDiffPatch's format, the delta's OP_HDIFF and the
 * inside of OP_ELF), written for Krill so that a node need not load the hdiffpatch binding:
 * its 38 MB extension and the attrs classes around it cost ~25 ms of CPU with the GIL held,
 * in every `krill delta apply` that has a binary-diff op. The origin still makes the diffs
 * with hdiffpatch; tests/test_hdiff_apply.py checks this against its apply on real and
 * fuzzed diffs.
 *
 * After the header (parsed and checked against the op in Python, krill/delta/hdiff.py) come
 * four plain sections:
 *   covers    coverCount triples of packed integers: the old position as a signed step from
 *             the end of the previous cover (the sign in the first byte's top bit), the new
 *             position as a step from the end of the previous cover, the length;
 *   rle ctrl  runs covering the whole new file, each a type in its first byte's top two bits
 *             (00: add 0, 01: add 255, 10: add one byte from the codes, 11: add that many
 *             bytes from the codes) and a length - 1;
 *   rle codes the bytes those runs take;
 *   new data  the bytes no cover gives, in order.
 * new[cover] = old[cover's old range] + the runs over it (byte-wise, mod 256); between
 * covers, new = the next new-data bytes (the runs over them are skipped, not added).
 * Every read is bounded; a diff that does not add up exactly is refused.
 */
#include "hdiffapply.h"

#include <string.h>

typedef struct {
    const uint8_t *p, *end;
} Cursor;

/* HDiffPatch's packed integer: the first byte's top `tag` bits belong to the caller, the next
 * bit says more bytes follow, the rest is the value's top; each further byte adds 7 bits. */
static int unpack(Cursor *c, unsigned tag, uint64_t *out) {
    if (c->p >= c->end) return -1;
    unsigned b = *c->p++;
    uint64_t v = b & ((1u << (7 - tag)) - 1);
    int more = (b >> (7 - tag)) & 1;
    while (more) {
        if (c->p >= c->end || (v >> 57)) return -1; /* truncated, or over 64 bits */
        b = *c->p++;
        v = (v << 7) | (b & 0x7F);
        more = b >> 7;
    }
    *out = v;
    return 0;
}

/* The rle stream: runs read from `ctrl` as they are needed, bytes from `codes`. */
typedef struct {
    Cursor ctrl, codes;
    uint64_t set_left, copy_left; /* what is left of the current run (one of them) */
    uint8_t set_value;
} Rle;

/* Reads the next run; -1 when the control section is exhausted or malformed. */
static int next_run(Rle *r) {
    if (r->ctrl.p >= r->ctrl.end) return -1;
    unsigned type = *r->ctrl.p >> 6;
    uint64_t length;
    if (unpack(&r->ctrl, 2, &length) < 0 || length == UINT64_MAX) return -1;
    length++;
    if (type == 3) {
        r->copy_left = length;
        return 0;
    }
    if (type == 2) {
        if (r->codes.p >= r->codes.end) return -1;
        r->set_value = *r->codes.p++;
    } else {
        r->set_value = type == 0 ? 0 : 255;
    }
    r->set_left = length;
    return 0;
}

/* Adds the next n bytes of the stream to out, or skips them (out NULL). */
static int rle_take(Rle *r, uint8_t *out, uint64_t n) {
    while (n > 0) {
        if (r->set_left == 0 && r->copy_left == 0 && next_run(r) < 0) return -1;
        if (r->set_left) {
            uint64_t k = r->set_left < n ? r->set_left : n;
            if (out) {
                if (r->set_value)
                    for (uint64_t i = 0; i < k; i++) out[i] += r->set_value;
                out += k;
            }
            r->set_left -= k, n -= k;
        } else {
            uint64_t k = r->copy_left < n ? r->copy_left : n;
            if ((uint64_t)(r->codes.end - r->codes.p) < k) return -1;
            if (out) {
                for (uint64_t i = 0; i < k; i++) out[i] += r->codes.p[i];
                out += k;
            }
            r->codes.p += k, r->copy_left -= k, n -= k;
        }
    }
    return 0;
}

/* Copies the next n new-data bytes to out and skips their runs. */
static int take_new(Cursor *data, Rle *r, uint8_t *out, uint64_t n) {
    if ((uint64_t)(data->end - data->p) < n) return -1;
    memcpy(out, data->p, n);
    data->p += n;
    return rle_take(r, NULL, n);
}

const char *hdiff_apply(const uint8_t *old, size_t old_size, const uint8_t *sections,
                        const uint64_t sizes[4], uint64_t cover_count, uint8_t *out,
                        size_t new_size) {
    const uint8_t *p = sections;
    Cursor covers = {p, p + sizes[0]};
    Rle rle = {{covers.end, covers.end + sizes[1]}, {covers.end + sizes[1], covers.end + sizes[1] + sizes[2]},
               0, 0, 0};
    Cursor data = {rle.codes.end, rle.codes.end + sizes[3]};
    uint64_t old_back = 0, new_back = 0; /* where the previous cover ended: new_back bytes written */
    for (uint64_t i = 0; i < cover_count; i++) {
        if (covers.p >= covers.end) return "hdiff diff: covers truncated";
        int back = *covers.p >> 7;
        uint64_t step, gap, length;
        if (unpack(&covers, 1, &step) < 0 || unpack(&covers, 0, &gap) < 0 || unpack(&covers, 0, &length) < 0)
            return "hdiff diff: bad cover";
        if (back ? step > old_back : step > UINT64_MAX - old_back) return "hdiff diff: cover outside the old file";
        uint64_t old_pos = back ? old_back - step : old_back + step;
        if (gap > new_size - new_back) return "hdiff diff: cover outside the new file";
        uint64_t new_pos = new_back + gap;
        if (length > new_size - new_pos || old_pos > old_size || length > old_size - old_pos)
            return "hdiff diff: cover outside the files";
        if (take_new(&data, &rle, out + new_back, gap) < 0) return "hdiff diff: new data or runs short";
        memcpy(out + new_pos, old + old_pos, length);
        if (rle_take(&rle, out + new_pos, length) < 0) return "hdiff diff: runs short";
        old_back = old_pos + length;
        new_back = new_pos + length;
    }
    if (take_new(&data, &rle, out + new_back, new_size - new_back) < 0) return "hdiff diff: new data or runs short";
    if (covers.p != covers.end || data.p != data.end || rle.codes.p != rle.codes.end ||
        rle.ctrl.p != rle.ctrl.end || rle.set_left || rle.copy_left)
        return "hdiff diff: sections longer than the files need";
    return NULL;
}

PyObject *hdiff_apply_py(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer old, sections;
    unsigned long long s0, s1, s2, s3, cover_count;
    Py_ssize_t new_size;
    if (!PyArg_ParseTuple(args, "y*y*(KKKK)Kn", &old, &sections, &s0, &s1, &s2, &s3, &cover_count, &new_size))
        return NULL;
    const char *err = NULL;
    uint64_t sizes[4] = {s0, s1, s2, s3};
    uint64_t total = 0;
    for (int i = 0; i < 4 && !err; i++) {
        if (sizes[i] > (uint64_t)sections.len - total) err = "hdiff diff: sections overrun the diff";
        else total += sizes[i];
    }
    if (!err && total != (uint64_t)sections.len) err = "hdiff diff: sections do not add up to the diff";
    if (!err && new_size < 0) err = "hdiff diff: negative new size";
    PyObject *out = err ? NULL : PyBytes_FromStringAndSize(NULL, new_size);
    if (out) {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        err = hdiff_apply(old.buf, (size_t)old.len, sections.buf, sizes, cover_count, o, (size_t)new_size);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&old);
    PyBuffer_Release(&sections);
    if (err) {
        Py_XDECREF(out);
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return out;
}
