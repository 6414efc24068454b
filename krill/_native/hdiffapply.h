/* Applying an uncompressed HDIFF13 diff (hdiffapply.c), part of krill._goflate. */
#ifndef KRILL_HDIFFAPPLY_H
#define KRILL_HDIFFAPPLY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* new_size bytes into out from old and the diff's four sections (covers, rle ctrl, rle codes,
 * new data; sizes[i] bytes each, back to back from `sections`); NULL, or why the diff was
 * refused (out then holds garbage). */
const char *hdiff_apply(const uint8_t *old, size_t old_size, const uint8_t *sections,
                        const uint64_t sizes[4], uint64_t cover_count, uint8_t *out,
                        size_t new_size);

PyObject *hdiff_apply_py(PyObject *module, PyObject *args);

#define HDIFFAPPLY_METHODS                                                                       \
    {"hdiff_apply", hdiff_apply_py, METH_VARARGS,                                                \
     "hdiff_apply(old, sections, (covers, rle_ctrl, rle_codes, new_data sizes), cover_count, "   \
     "new_size) -> new: an uncompressed HDIFF13 diff's sections applied to old; ValueError if "  \
     "they do not add up. The GIL is released while applying."},

#endif
