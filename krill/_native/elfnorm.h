/* The ELF-aware delta transform (elfnorm.c, elfx86.c), part of krill._goflate. */
#ifndef KRILL_ELFNORM_H
#define KRILL_ELFNORM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int field; /* offset of a code-relative 32-bit field in the instruction, or -1 */
    int tail;  /* bytes from that field's start to the instruction's end */
} X86Insn;

/* Builds the decoder's tables; called once by the module's init. */
void elf_x86_init(void);
/* Length of the instruction at p (at most avail bytes), or -1 if invalid or truncated. */
int x86_decode(const uint8_t *p, size_t avail, X86Insn *out);

PyObject *elfnorm_base(PyObject *module, PyObject *args);
PyObject *elfnorm_encode(PyObject *module, PyObject *args);
PyObject *elfnorm_restore(PyObject *module, PyObject *args);

#define ELFNORM_METHODS                                                                          \
    {"elf_base", elfnorm_base, METH_VARARGS,                                                   \
     "elf_base(base, version=5) -> (normalized, labels): the base's normalization and label "   \
     "addresses (u64 LE each), computed from the base alone, as side data `version` reads it."},                                            \
    {"elf_encode", elfnorm_encode, METH_VARARGS,                                               \
     "elf_encode(base, target, version=5) -> (norm_base, norm_target, side): the target normalized with "  \
     "labels matched to the base's, and the side data elf_restore needs."},                     \
    {"elf_restore", elfnorm_restore, METH_VARARGS,                                             \
     "elf_restore(norm_target, side, base_labels) -> target; ValueError if they do not fit."},

#endif
