/* The deflate block scanner (zblocks.c), part of krill._goflate. */
#ifndef KRILL_ZBLOCKS_H
#define KRILL_ZBLOCKS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *zblocks_scan(PyObject *module, PyObject *args);

#define ZBLOCKS_METHODS                                                                          \
    {"deflate_blocks", zblocks_scan, METH_VARARGS,                                             \
     "deflate_blocks(data, offset=0) -> (blocks, end_bit, out_size): where each block of the "  \
     "raw deflate stream starting at byte offset of data begins, as (bit_off, out_off, btype) "  \
     "with bit_off counted from offset and out_off the bytes decompressed before it; end_bit: "  \
     "the bit after the final block. Nothing is decompressed into memory. ValueError if the "    \
     "stream is invalid or truncated. The GIL is released while scanning."},

#endif
