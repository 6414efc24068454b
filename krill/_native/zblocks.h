/* The deflate block scanner (zblocks.c), part of krill._goflate. */
#ifndef KRILL_ZBLOCKS_H
#define KRILL_ZBLOCKS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *zblocks_scan(PyObject *module, PyObject *args);
PyObject *zblocks_tokens(PyObject *module, PyObject *args);
PyObject *zblocks_token_bits(PyObject *module, PyObject *args);

#define ZBLOCKS_METHODS                                                                          \
    {"deflate_blocks", zblocks_scan, METH_VARARGS,                                             \
     "deflate_blocks(data, offset=0) -> (blocks, end_bit, out_size): where each block of the "  \
     "raw deflate stream starting at byte offset of data begins, as (bit_off, out_off, btype) "  \
     "with bit_off counted from offset and out_off the bytes decompressed before it; end_bit: "  \
     "the bit after the final block. Nothing is decompressed into memory. ValueError if the "    \
     "stream is invalid or truncated. The GIL is released while scanning."},                  \
    {"deflate_tokens", zblocks_tokens, METH_VARARGS,                                           \
     "deflate_tokens(data, offset=0, bit_off=0, out_off=0, stop_out=2**64-1) -> (tokens, "    \
     "blocks, end_bit, out_end): the symbols from the block starting at bit_off (out_off bytes " \
     "into the output) as Go matcher tokens (native uint32s; 0x80000000|n stands for a stored " \
     "block's n bytes), up to the first token or block at or past stop_out; entry_bit >= 0: "   \
     "read the block's tables, then decode from the symbol at entry_bit (out_off: its offset)."}, \
    {"deflate_token_bits", zblocks_token_bits, METH_VARARGS,                                   \
     "deflate_token_bits(data, offset, positions) -> [(block_bit, token_bit)]: for each output " \
     "offset (ascending) where a token starts, the bit offsets of its block and its symbol, "   \
     "(-1, -1) where none does."},

#endif
