/* krill._announcequery: the tracker's parse of an ordinary announce query, in C.
 *
 * plain_announce(query: str) -> (info_hash, peer_id, port, left, event, numwant, compact) | None
 *
 * The announce path's parse was a third of the tracker's own CPU per announce
 * in Python (docs/benchmarks.md, issue 20). This function reads only the
 * queries clients actually send: ASCII, plain parameter names, decimal
 * numbers, a known event, compact 0 or 1, and 20-byte info_hash / peer_id
 * (percent-encoded or not). For any other query, valid or not, it returns
 * None and the caller takes the general Python parse
 * (krill.tracker.announce.announce_from_query), which also words refusals.
 * When it does answer, the answer is exactly what the Python parse gives
 * (tests/test_tracker_cquery.py holds the two together with hypothesis):
 *
 *   - parts are split on '&', empty parts skipped, name and value split at the
 *     first '='; the first occurrence of a name wins;
 *   - any name holding '%' or '+' (an encoded name), or a '#' anywhere (a
 *     fragment, which the URL parser would cut off), sends the query the
 *     general way;
 *   - a value is decoded as urllib.parse.unquote_to_bytes(value.replace("+", " "))
 *     does: '+' is a space, '%' and two hex digits a byte, any other '%' itself;
 *   - port and left must be present, 1-20 ASCII digits each (and fit 64 bits
 *     here), numwant likewise if present (-1 when absent), port 1-65535;
 *   - event is absent, empty or one of started, completed, stopped, paused;
 *   - compact is absent, "0" or "1" (compact = the value is not "0").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

enum { INFO_HASH, PEER_ID, PORT, LEFT, EVENT, NUMWANT, COMPACT, NFIELDS };

typedef struct {
    const char *at;
    Py_ssize_t len;
    int seen;
} field;

/* Which of the fields a name is; -1 for any other (uploaded, downloaded, key, ...). */
static int field_of(const char *name, Py_ssize_t len) {
    static const struct { const char *name; Py_ssize_t len; int which; } known[] = {
        {"info_hash", 9, INFO_HASH}, {"peer_id", 7, PEER_ID}, {"port", 4, PORT},
        {"left", 4, LEFT}, {"event", 5, EVENT}, {"numwant", 7, NUMWANT},
        {"compact", 7, COMPACT},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (known[i].len == len && memcmp(known[i].name, name, (size_t)len) == 0) {
            return known[i].which;
        }
    }
    return -1;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode a value into out[20]; 0 if it decodes to exactly 20 bytes, -1 otherwise. */
static int twenty_bytes(const field *f, unsigned char out[20]) {
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < f->len; i++) {
        char c = f->at[i];
        unsigned char byte = (unsigned char)c;
        if (c == '+') {
            byte = ' ';
        } else if (c == '%' && i + 2 < f->len) {
            int hi = hex_value(f->at[i + 1]), lo = hex_value(f->at[i + 2]);
            if (hi >= 0 && lo >= 0) {
                byte = (unsigned char)(hi << 4 | lo);
                i += 2;
            }
        }
        if (n == 20) return -1;
        out[n++] = byte;
    }
    return n == 20 ? 0 : -1;
}

/* A decimal of 1-20 ASCII digits that fits 64 bits into *out; -1 for anything else. */
static int decimal(const field *f, unsigned long long *out) {
    if (f->len < 1 || f->len > 20) return -1;
    unsigned long long value = 0;
    for (Py_ssize_t i = 0; i < f->len; i++) {
        char c = f->at[i];
        if (c < '0' || c > '9') return -1;
        unsigned digit = (unsigned)(c - '0');
        if (value > (ULLONG_MAX - digit) / 10) return -1; /* too big: the general way */
        value = value * 10 + digit;
    }
    *out = value;
    return 0;
}

static int equals(const field *f, const char *text) {
    size_t len = strlen(text);
    return (size_t)f->len == len && memcmp(f->at, text, len) == 0;
}

/* The event's interned name, or NULL if the value is not one of the known events. */
static PyObject *event_names[5];

static PyObject *event_of(const field *f) {
    if (!f->seen || f->len == 0) return event_names[0];
    static const char *const texts[] = {"", "started", "completed", "stopped", "paused"};
    for (int i = 1; i < 5; i++) {
        if (equals(f, texts[i])) return event_names[i];
    }
    return NULL;
}

/* Split the query into the fields; -1 if it must go the general way. */
static int split_query(const char *q, Py_ssize_t len, field fields[NFIELDS]) {
    if (memchr(q, '#', (size_t)len) != NULL) return -1;
    Py_ssize_t start = 0;
    while (start <= len) {
        const char *amp = memchr(q + start, '&', (size_t)(len - start));
        Py_ssize_t end = amp ? (Py_ssize_t)(amp - q) : len;
        if (end > start) {
            const char *part = q + start;
            Py_ssize_t part_len = end - start;
            const char *eq = memchr(part, '=', (size_t)part_len);
            Py_ssize_t name_len = eq ? (Py_ssize_t)(eq - part) : part_len;
            if (memchr(part, '%', (size_t)name_len) || memchr(part, '+', (size_t)name_len)) {
                return -1; /* an encoded name */
            }
            int which = field_of(part, name_len);
            if (which >= 0 && !fields[which].seen) {
                fields[which].seen = 1;
                fields[which].at = eq ? eq + 1 : part + part_len;
                fields[which].len = eq ? part_len - name_len - 1 : 0;
            }
        }
        start = end + 1;
    }
    return 0;
}

/* The fields of the ASCII query q[0:len], or None. */
static PyObject *fields_of(const char *q, Py_ssize_t len) {
    field fields[NFIELDS];
    memset(fields, 0, sizeof fields);
    if (split_query(q, len, fields) < 0) Py_RETURN_NONE;

    unsigned char info_hash[20], peer_id[20];
    unsigned long long port, left, numwant = 0;
    if (!fields[INFO_HASH].seen || twenty_bytes(&fields[INFO_HASH], info_hash) < 0) Py_RETURN_NONE;
    if (!fields[PEER_ID].seen || twenty_bytes(&fields[PEER_ID], peer_id) < 0) Py_RETURN_NONE;
    if (!fields[PORT].seen || decimal(&fields[PORT], &port) < 0) Py_RETURN_NONE;
    if (port < 1 || port > 65535) Py_RETURN_NONE;
    if (!fields[LEFT].seen || decimal(&fields[LEFT], &left) < 0) Py_RETURN_NONE;
    if (fields[NUMWANT].seen && decimal(&fields[NUMWANT], &numwant) < 0) Py_RETURN_NONE;
    if (fields[NUMWANT].seen && numwant > (unsigned long long)LLONG_MAX) Py_RETURN_NONE;
    PyObject *event = event_of(&fields[EVENT]);
    if (event == NULL) Py_RETURN_NONE;
    int compact = 1;
    if (fields[COMPACT].seen) {
        if (equals(&fields[COMPACT], "0")) {
            compact = 0;
        } else if (!equals(&fields[COMPACT], "1")) {
            Py_RETURN_NONE;
        }
    }
    /* Built item by item: Py_BuildValue parses its format string on every call. */
    PyObject *items[7] = {
        PyBytes_FromStringAndSize((const char *)info_hash, 20),
        PyBytes_FromStringAndSize((const char *)peer_id, 20),
        PyLong_FromUnsignedLongLong(port),
        PyLong_FromUnsignedLongLong(left),
        Py_NewRef(event),
        PyLong_FromLongLong(fields[NUMWANT].seen ? (long long)numwant : -1LL),
        Py_NewRef(compact ? Py_True : Py_False),
    };
    PyObject *answer = PyTuple_New(7);
    for (int i = 0; i < 7; i++) {
        if (items[i] == NULL || answer == NULL) {
            for (int j = 0; j < 7; j++) Py_XDECREF(items[j]);
            Py_XDECREF(answer);
            return NULL;
        }
    }
    for (int i = 0; i < 7; i++) PyTuple_SET_ITEM(answer, i, items[i]);
    return answer;
}

static PyObject *plain_announce(PyObject *module, PyObject *query) {
    (void)module;
    if (!PyUnicode_Check(query)) {
        PyErr_SetString(PyExc_TypeError, "plain_announce(query): query must be a str");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(query)) Py_RETURN_NONE;
    Py_ssize_t len;
    const char *q = PyUnicode_AsUTF8AndSize(query, &len);
    if (q == NULL) return NULL;
    return fields_of(q, len);
}

/* plain_announce of the query in a request target ("/announce?QUERY"); None if it has no '?'.
 * The announce path hands aiohttp's raw target over as it is: no split in Python. */
static PyObject *plain_announce_target(PyObject *module, PyObject *target) {
    (void)module;
    if (!PyUnicode_Check(target)) {
        PyErr_SetString(PyExc_TypeError, "plain_announce_target(target): target must be a str");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(target)) Py_RETURN_NONE;
    Py_ssize_t len;
    const char *t = PyUnicode_AsUTF8AndSize(target, &len);
    if (t == NULL) return NULL;
    const char *mark = memchr(t, '?', (size_t)len);
    if (mark == NULL) Py_RETURN_NONE;
    return fields_of(mark + 1, len - (mark + 1 - t));
}

static PyMethodDef announcequery_functions[] = {
    {"plain_announce", (PyCFunction)plain_announce, METH_O,
     "plain_announce(query) -> (info_hash, peer_id, port, left, event, numwant, compact) | None: "
     "an ordinary announce query's fields (numwant -1 if absent); None for any other query, "
     "which the general Python parse must read."},
    {"plain_announce_target", (PyCFunction)plain_announce_target, METH_O,
     "plain_announce_target(target) -> plain_announce(the query after the target's first '?'), "
     "or None if it has none."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef announcequery_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "krill._announcequery",
    .m_doc = "The tracker's parse of an ordinary announce query (krill.tracker.announce).",
    .m_size = -1,
    .m_methods = announcequery_functions,
};

PyMODINIT_FUNC PyInit__announcequery(void) {
    static const char *const texts[] = {"", "started", "completed", "stopped", "paused"};
    for (int i = 0; i < 5; i++) {
        event_names[i] = PyUnicode_InternFromString(texts[i]);
        if (event_names[i] == NULL) return NULL;
    }
    return PyModule_Create(&announcequery_module);
}
