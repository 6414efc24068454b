/* krill._zdeflate: the Python type over zdeflate_match.c / zdeflate_trees.c.
 *
 * ``Compressor(level, mem_level=8, strategy=0, zdict=None)`` stands in for
 * ``zlib.compressobj(level, DEFLATED, -15, mem_level, strategy, zdict=zdict)``: the
 * concatenation of what compress() and flush(Z_FINISH) return is the same bytes (each
 * call may return a different share of them than zlib's would). The GIL is released while
 * compressing, so the recompressing workers of a delta apply run on all cores.
 *
 * Z_PARTIAL_FLUSH, Z_SYNC_FLUSH and Z_FULL_FLUSH write zlib's bytes too, except possibly
 * where a flush() call's output reaches 32 KiB: CPython's flush() gives deflate() 32 KiB of
 * output space first, and if the empty marker block is what fills it, deflate() is called
 * again and writes a second marker; this encoder, whose output is not cut into such pieces,
 * writes one. A flush returns the rest of the open block, so this takes a large block
 * (mem_level 9's can reach 32 KiB); the data inflated is the same. The recipe
 * (krill/delta/zlibrestarts.py) uses compress() and Z_FINISH only; tests/test_zdeflate.py
 * compares the other modes with zlib where no flush reaches 32 KiB, and checks this case.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "zdeflate.h"

typedef struct {
    PyObject_HEAD
    zd_state st;
    int ready; /* zd_init succeeded */
    int busy;  /* a call is compressing with the GIL released */
} Compressor;

/* An int argument; out-of-range values are clamped so the range check says ValueError
 * (not OverflowError) whatever the size, and non-integers are a TypeError. */
static int small_int(PyObject *obj, void *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "an integer is required, not %.100s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    int overflow = 0;
    long v = PyLong_AsLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return 0;
    if (overflow > 0 || v > INT_MAX) v = INT_MAX;
    if (overflow < 0 || v < INT_MIN) v = INT_MIN;
    *(int *)out = (int)v;
    return 1;
}

static int Compressor_init(Compressor *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"level", "mem_level", "strategy", "zdict", NULL};
    int level, mem_level = 8, strategy = 0;
    PyObject *zdict_obj = Py_None;
    Py_buffer zdict = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|O&O&O", keywords, small_int, &level,
                                     small_int, &mem_level, small_int, &strategy, &zdict_obj))
        return -1;
    if (zdict_obj != Py_None && PyObject_GetBuffer(zdict_obj, &zdict, PyBUF_SIMPLE) < 0) return -1;
    /* Checked after the buffer is got (a __buffer__ method, Python 3.12+, may run any code):
     * a second init would free the state a call in another thread is compressing with. */
    const char *bad = NULL;
    if (self->ready) {
        PyBuffer_Release(&zdict);
        PyErr_SetString(PyExc_RuntimeError, "a Compressor is initialised once: make a new one");
        return -1;
    }
    if (level < 4 || level > 9) bad = "level must be 4-9 (zlib's lazy levels); use zlib for others";
    else if (mem_level < 1 || mem_level > 9) bad = "mem_level must be 1-9";
    else if (strategy != 0 && strategy != ZD_FILTERED)
        bad = "strategy must be Z_DEFAULT_STRATEGY (0) or Z_FILTERED (1); use zlib for others";
    if (bad) {
        PyBuffer_Release(&zdict);
        PyErr_SetString(PyExc_ValueError, bad);
        return -1;
    }
    if (!zd_init(&self->st, level, mem_level, strategy)) {
        PyBuffer_Release(&zdict);
        PyErr_NoMemory();
        return -1;
    }
    self->ready = 1;
    if (zdict.buf) {
        zd_set_dictionary(&self->st, zdict.buf, (size_t)zdict.len);
        PyBuffer_Release(&zdict);
    }
    return 0;
}

static void Compressor_dealloc(Compressor *self) {
    if (self->ready) zd_free(&self->st);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int usable(Compressor *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_ValueError, "Compressor was not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Compressor is in use by another thread");
        return 0;
    }
    if (self->st.finished || self->st.failed) {
        PyErr_SetString(PyExc_ValueError,
                        "the stream is finished (or failed): make a new Compressor for more data");
        return 0;
    }
    return 1;
}

/* The whole bytes written so far, as bytes; the partial byte stays in the bit buffer. */
static PyObject *take_output(Compressor *self) {
    if (self->st.failed) return PyErr_NoMemory();
    PyObject *r = PyBytes_FromStringAndSize((const char *)self->st.out, (Py_ssize_t)self->st.out_len);
    if (!r) { /* the output is lost: going on would leave a gap in the stream */
        self->st.failed = 1;
        return NULL;
    }
    self->st.out_len = 0;
    return r;
}

static PyObject *Compressor_compress(Compressor *self, PyObject *arg) {
    Py_buffer view;
    /* The buffer first, then the checks, then busy, with no Python code in between: a
     * __buffer__ method (Python 3.12+) may run any code, a compress() of this object too. */
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (!usable(self)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    zd_deflate(&self->st, view.buf, (size_t)view.len, ZD_NO_FLUSH);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyBuffer_Release(&view);
    return take_output(self);
}

static PyObject *Compressor_flush(Compressor *self, PyObject *args) {
    int mode = ZD_FINISH;
    if (!PyArg_ParseTuple(args, "|O&", small_int, &mode)) return NULL;
    if (!usable(self)) return NULL;
    if (mode == ZD_NO_FLUSH) return PyBytes_FromStringAndSize(NULL, 0); /* as zlib's flush() */
    if (mode < ZD_NO_FLUSH || mode > ZD_BLOCK) {
        PyErr_SetString(PyExc_ValueError, "mode must be one of zlib's flush modes (0-5)");
        return NULL;
    }
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    zd_deflate(&self->st, NULL, 0, mode);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyObject *r = take_output(self);
    if (mode != ZD_FINISH) return r;
    free(self->st.out); /* a finished stream keeps no buffers beyond its object */
    self->st.out = NULL;
    self->st.out_cap = 0;
    return r;
}

static PyMethodDef Compressor_methods[] = {
    {"compress", (PyCFunction)Compressor_compress, METH_O,
     "compress(data) -> bytes: feed data (any bytes-like object); returns the output ready so far."},
    {"flush", (PyCFunction)Compressor_flush, METH_VARARGS,
     "flush(mode=zlib.Z_FINISH) -> bytes: flush as zlib's compressobj().flush(mode) does (Z_FINISH "
     "ends the stream) and return the output ready so far. Z_PARTIAL_FLUSH, Z_SYNC_FLUSH and "
     "Z_FULL_FLUSH write one empty marker block where CPython's zlib writes two (when the marker "
     "fills the first 32 KiB of a flush's output): the same data, not the same bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CompressorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "krill._zdeflate.Compressor",
    .tp_doc = "Compressor(level, mem_level=8, strategy=0, zdict=None): raw deflate, bit for bit "
              "zlib 1.2.13's at levels 4-9 with windowBits -15.",
    .tp_basicsize = sizeof(Compressor),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Compressor_init,
    .tp_dealloc = (destructor)Compressor_dealloc,
    .tp_methods = Compressor_methods,
};

static struct PyModuleDef zdeflate_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "krill._zdeflate",
    .m_doc = "Raw deflate bit for bit as zlib 1.2.13's deflate_slow (levels 4-9), faster.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__zdeflate(void) {
    zd_tables_init();
    if (PyType_Ready(&CompressorType) < 0) return NULL;
    PyObject *m = PyModule_Create(&zdeflate_module);
    if (!m) return NULL;
    Py_INCREF(&CompressorType);
    if (PyModule_AddObject(m, "Compressor", (PyObject *)&CompressorType) < 0) {
        Py_DECREF(&CompressorType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddStringConstant(m, "ZLIB_VERSION_MATCHED", "1.2.13");
    return m;
}
