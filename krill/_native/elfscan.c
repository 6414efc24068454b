/*
 * Where the ELF transform's fields are (see elfnorm.c for what is done with them): the
 * file's layout from its program and section headers, and one scanner per phase that reports
 * every candidate field in a fixed order to a visitor (elfnorm.c's collect or restore_field).
 * The scanner reads only bytes the transform never changes, or a field after it was reported
 * (the inverse has restored it by then), so the node finds the same fields again.
 */
#include "elfnorm.h" /* x86_decode; Python.h first, as CPython asks */
#include "elfscan.h"

#include <stdlib.h>
#include <string.h>

static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Keeps spans sorted by offset and drops any overlapping an earlier one. */
static int disjoint(Span *s, int n) {
    qsort(s, (size_t)n, sizeof *s, span_cmp);
    int k = 0;
    uint64_t end = 0;
    for (int i = 0; i < n; i++) {
        if (s[i].size == 0 || (k && s[i].off < end)) continue;
        s[k++] = s[i];
        end = s[i].off + s[i].size;
    }
    return k;
}

void elf_parse(Elf *e, const uint8_t *b, size_t n) {
    memset(e, 0, sizeof *e);
    e->b = b, e->n = n;
    if (n < 64 || memcmp(b, "\x7f" "ELF\x02\x01", 6) != 0) return;
    int machine = rd16(b + 18);
    if (machine != 62 && machine != 183) return;
    e->machine = machine;
    uint64_t phoff = rd64(b + 32), shoff = rd64(b + 40);
    unsigned phentsize = rd16(b + 54), phnum = rd16(b + 56), shentsize = rd16(b + 58),
             shnum = rd16(b + 60);
    if (phentsize == 56 && fits(phoff, (uint64_t)phnum * 56, n)) {
        for (unsigned i = 0; i < phnum && e->nload < MAX_LOADS; i++) {
            const uint8_t *ph = b + phoff + (uint64_t)i * 56;
            if (rd32(ph) == 0x6474E550u) { /* PT_GNU_EH_FRAME */
                e->ehhdr.off = rd64(ph + 8), e->ehhdr.addr = rd64(ph + 16), e->ehhdr.size = rd64(ph + 32);
                continue;
            }
            if (rd32(ph) != 1) continue; /* PT_LOAD */
            Span *l = &e->load[e->nload++];
            l->off = rd64(ph + 8), l->addr = rd64(ph + 16), l->size = rd64(ph + 32);
            uint64_t memsz = rd64(ph + 40), end = l->addr + memsz;
            if (end < l->addr) end = UINT64_MAX;
            if (e->nload == 1 || l->addr < e->lo) e->lo = l->addr;
            if (end > e->hi) e->hi = end;
        }
    }
    int have_loads = e->nload > 0;
    if (shentsize == 64 && fits(shoff, (uint64_t)shnum * 64, n)) {
        for (unsigned i = 0; i < shnum; i++) {
            const uint8_t *sh = b + shoff + (uint64_t)i * 64;
            uint32_t type = rd32(sh + 4);
            uint64_t flags = rd64(sh + 8), addr = rd64(sh + 16), off = rd64(sh + 24),
                     size = rd64(sh + 32), entsize = rd64(sh + 56);
            if (!have_loads && (flags & 2) && size && addr + size > addr) { /* SHF_ALLOC */
                if (e->hi == 0 || addr < e->lo) e->lo = addr;
                if (addr + size > e->hi) e->hi = addr + size;
            }
            if (type == 8 || !fits(off, size, n)) continue; /* SHT_NOBITS */
            Span s = {off, size, addr};
            if ((flags & 4) && e->nexec < MAX_SPANS) e->exec[e->nexec++] = s;
            else if (type == 4 && entsize == 24 && e->nrela < MAX_SPANS) e->rela[e->nrela++] = s;
            else if ((type == 2 || type == 11) && entsize == 24 && e->nsym < MAX_SPANS) e->sym[e->nsym++] = s;
            else if (type == 19 && entsize == 8 && e->nrelr < MAX_SPANS) e->relr[e->nrelr++] = s;
        }
    }
    e->nexec = disjoint(e->exec, e->nexec);
    e->nrela = disjoint(e->rela, e->nrela);
    e->nsym = disjoint(e->sym, e->nsym);
    e->nrelr = disjoint(e->relr, e->nrelr);
}

static int relative_type(const Elf *e, uint32_t type) {
    return e->machine == 62 ? (type == 8 || type == 37) : (type == 1027 || type == 1032);
}

/* The file offset of `len` bytes at virtual address va, or UINT64_MAX; *avail (if given):
 * the bytes of its segment in the file from there. */
static uint64_t va_offset(const Elf *e, uint64_t va, uint64_t len, uint64_t *avail) {
    for (int i = 0; i < e->nload; i++) {
        const Span *l = &e->load[i];
        if (va >= l->addr && va - l->addr < l->size && l->size - (va - l->addr) >= len) {
            uint64_t off = l->off + (va - l->addr);
            if (off >= l->off && fits(off, len, e->n)) {
                if (avail) *avail = l->size - (va - l->addr) < e->n - off ? l->size - (va - l->addr) : e->n - off;
                return off;
            }
        }
    }
    return UINT64_MAX;
}

/* The file offset of an 8-byte slot at virtual address va, or UINT64_MAX. */
static uint64_t slot_offset(const Elf *e, uint64_t va) { return va_offset(e, va, 8, NULL); }

/* The bits of bytes pos..pos+width-1 (width <= 8) in their byte of `cover` and the next one:
 * two masked reads where a loop tested a bit at a time (that loop was a tenth of a scan). */
static uint32_t cover_bits(uint64_t pos, int width) { return ((1u << width) - 1) << (pos & 7); }

static int covered(const uint8_t *cover, uint64_t pos, int width) {
    uint32_t m = cover_bits(pos, width);
    const uint8_t *c = cover + (pos >> 3);
    return (c[0] & m) || ((m >> 8) && (c[1] & (m >> 8))); /* c[1] only when the bytes reach it */
}

static void mark(uint8_t *cover, uint64_t pos, int width) {
    uint32_t m = cover_bits(pos, width);
    uint8_t *c = cover + (pos >> 3);
    c[0] |= (uint8_t)m;
    if (m >> 8) c[1] |= (uint8_t)(m >> 8);
}

/* Reports a candidate (take = 0 when it overlaps an earlier one) and marks its bytes. */
static int emit(Scan *s, const uint8_t *buf, uint64_t pos, int kind, int width, int tail,
                uint64_t va) {
    (void)buf;
    uint64_t user = pos + 4u * (uint64_t)tail;
    int pair = kind == K_APAIR;
    int free_ = !covered(s->cover, pos, width) && !(pair && covered(s->cover, user, 4));
    mark(s->cover, pos, width);
    if (pair) mark(s->cover, user, 4);
    return s->visit(s, pos, free_ ? kind : -kind, width, tail, va);
}

/* aarch64 ADD (immediate, 64-bit, unshifted) and LDR/STR (unsigned offset): the
 * instructions that carry an ADRP's low 12 bits. Only opcode and register bits are read,
 * which the transform never changes. */
int a64_lo12_scale(uint32_t w) {
    if ((w & 0xFFC00000u) == 0x91000000u) return 0;
    if ((w & 0x3B000000u) == 0x39000000u) {
        int size = (int)(w >> 30);
        return (w & (1u << 26)) && (w & (1u << 23)) ? (size ? -1 : 4) : size;
    }
    return -1;
}

static int is_branch26(uint32_t w) { return (w & 0x7C000000u) == 0x14000000u; }

/* The word distance (1..A64_REACH) to the first ADD/LDR/STR using the ADRP's register rd
 * as its base and not yet paired, or 0: stops at a branch or a word writing rd. */
static int a64_user(const uint8_t *cover, const uint8_t *buf, uint64_t pos, uint64_t end, uint32_t rd) {
    for (int k = 1; k <= A64_REACH && end - pos >= 4u * (uint64_t)k + 4; k++) {
        uint64_t p = pos + 4u * (uint64_t)k;
        uint32_t w = rd32(buf + p);
        if (is_branch26(w)) return 0;
        if (a64_lo12_scale(w) >= 0 && ((w >> 5) & 0x1F) == rd && !(cover[p >> 3] & (1u << (p & 7))))
            return k;
        if ((w & 0x1F) == rd) return 0;
    }
    return 0;
}

static int scan_eh(Scan *s, const uint8_t *buf);
static int scan_syms(Scan *s, const uint8_t *buf);

int elf_scan_phase1(Scan *s, const uint8_t *buf) {
    const Elf *e = s->e;
    for (int i = 0; i < e->nexec; i++) {
        const Span *x = &e->exec[i];
        uint64_t pos = x->off, end = x->off + x->size;
        if (e->machine == 62) {
            while (pos < end) {
                X86Insn ins;
                int len = x86_decode(buf + pos, end - pos, &ins);
                if (len <= 0) {
                    pos++;
                    continue;
                }
                if (ins.field >= 0) {
                    uint64_t f = pos + (uint64_t)ins.field;
                    if (emit(s, buf, f, K_X86, 4, ins.tail, x->addr + (f - x->off)) < 0) return -1;
                }
                pos += (uint64_t)len;
            }
        } else {
            for (; end - pos >= 4; pos += 4) {
                uint32_t w = rd32(buf + pos);
                int kind = (w & 0x7C000000u) == 0x14000000u   ? K_B26
                           : (w & 0x9F000000u) == 0x90000000u ? K_ADRP
                                                              : 0;
                int tail = 0;
                if (kind == K_ADRP && s->pairs && (tail = a64_user(s->cover, buf, pos, end, w & 0x1F)) > 0)
                    kind = K_APAIR;
                if (kind && emit(s, buf, pos, kind, 4, tail, x->addr + (pos - x->off)) < 0) return -1;
            }
        }
    }
    for (int i = 0; i < e->nrela; i++) {
        const Span *r = &e->rela[i];
        for (uint64_t p = r->off; r->off + r->size - p >= 24; p += 24) {
            uint32_t type = (uint32_t)rd64(buf + p + 8);
            if (emit(s, buf, p, K_ABS64, 8, 0, 0) < 0) return -1;
            if (relative_type(e, type) && emit(s, buf, p + 16, K_ABS64, 8, 0, 0) < 0) return -1;
        }
    }
    return scan_eh(s, buf) < 0 ? -1 : scan_syms(s, buf);
}

/* ---- .eh_frame_hdr and .eh_frame (DWARF call frame info, one FDE per function) ---------- */

static int uleb(const uint8_t *buf, uint64_t *q, uint64_t end) {
    for (int i = 0; i < 10 && *q < end; i++)
        if (!(buf[(*q)++] & 0x80)) return 0;
    return -1;
}

/* The pointer encoding of FDEs under the CIE at `cie` ('R' of a "z..." augmentation), or -1. */
static int cie_fde_encoding(const uint8_t *buf, uint64_t cie, uint64_t end) {
    if (cie > end || end - cie < 10) return -1;
    uint32_t len = rd32(buf + cie);
    if (len < 6 || len > end - cie - 4 || rd32(buf + cie + 4) != 0) return -1;
    uint64_t q = cie + 8, stop = cie + 4 + len;
    int version = buf[q++];
    const uint8_t *aug = buf + q;
    while (q < stop && buf[q]) q++;
    if (q++ >= stop || aug[0] != 'z' || (version != 1 && version != 3)) return -1;
    if (uleb(buf, &q, stop) || uleb(buf, &q, stop)) return -1; /* code, data alignment */
    if (version == 1 ? q++ >= stop : uleb(buf, &q, stop)) return -1;
    if (uleb(buf, &q, stop)) return -1; /* augmentation data length */
    for (const uint8_t *c = aug + 1; *c && q < stop; c++) {
        if (*c == 'R') return buf[q];
        if (*c == 'L') q++;
        else if (*c == 'P') {
            int enc = buf[q++] & 0x0F;
            q += enc == 2 || enc == 0x0A ? 2 : enc == 3 || enc == 0x0B ? 4 : 8;
        } else if (*c != 'S' && *c != 'B') return -1;
    }
    return -1;
}

static int emit_eh(Scan *s, const uint8_t *buf, uint64_t pos, int kind, uint64_t va, uint64_t fde) {
    s->hint = fde;
    int rc = emit(s, buf, pos, kind, 4, 0, va);
    s->hint = UINT64_MAX;
    return rc;
}

/* .eh_frame_hdr's binary-search table (function start, FDE address; datarel sdata4) and each
 * FDE's pcrel sdata4 pc_begin in .eh_frame: one field per function, moving with the code.
 * What is read to find them (encodings, counts, record lengths, CIE ids) is never changed;
 * a field is read only after it is emitted (the inverse has restored it by then). */
static int scan_eh(Scan *s, const uint8_t *buf) {
    const Elf *e = s->e;
    const Span *h = &e->ehhdr;
    if (!s->eh || h->size < 12 || !fits(h->off, h->size, e->n)) return 0;
    const uint8_t *p = buf + h->off;
    if (p[0] != 1 || p[1] != 0x1B || p[2] != 0x03 || p[3] != 0x3B) return 0;
    if (emit_eh(s, buf, h->off + 4, K_EHPC, h->addr + 4, UINT64_MAX) < 0) return -1;
    uint64_t eh_va = h->addr + 4 + (uint64_t)(int64_t)(int32_t)rd32(p + 4), count = rd32(p + 8);
    if (count > (h->size - 12) / 8) count = 0;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t f = h->off + 12 + 8 * i;
        uint64_t fde = va_offset(e, h->addr + (uint64_t)(int64_t)(int32_t)rd32(buf + f + 4), 16, NULL);
        if (emit_eh(s, buf, f, K_EHLOC, h->addr, fde) < 0 ||
            emit_eh(s, buf, f + 4, K_EHFDE, h->addr, fde) < 0)
            return -1;
    }
    uint64_t avail = 0, start = va_offset(e, eh_va, 8, &avail);
    if (start == UINT64_MAX) return 0;
    for (uint64_t pos = start, end = start + avail; end - pos >= 16;) {
            uint32_t len = rd32(buf + pos);
        if (len < 12 || len > end - pos - 4) break;
        if (s->syms && emit_eh(s, buf, pos + 4, K_EHCIE, eh_va + (pos + 4 - start), pos) < 0) return -1;
        uint32_t id = rd32(buf + pos + 4); /* read once restored */
        if (id && id <= pos + 4 - start && cie_fde_encoding(buf, pos + 4 - id, end) == 0x1B &&
            emit_eh(s, buf, pos + 8, K_EHPC, eh_va + (pos + 8 - start), pos) < 0)
            return -1;
        pos += 4 + (uint64_t)len;
    }
    return 0;
}

/* st_value of every symbol defined in a section (function and object addresses). */
static int scan_syms(Scan *s, const uint8_t *buf) {
    const Elf *e = s->e;
    for (int i = 0; s->syms && i < e->nsym; i++) {
        const Span *y = &e->sym[i];
        for (uint64_t p = y->off; y->off + y->size - p >= 24; p += 24) {
            unsigned shndx = rd16(buf + p + 6);
            if (shndx && shndx < 0xFF00 && emit(s, buf, p + 8, K_ABS64, 8, 0, 0) < 0) return -1;
        }
    }
    for (int i = 0; s->relr && i < e->nrelr; i++) {
        const Span *y = &e->relr[i];
        for (uint64_t p = y->off; y->off + y->size - p >= 8; p += 8)
            if (!(buf[p] & 1) && emit(s, buf, p, K_RELR, 8, 0, 0) < 0) return -1;
    }
    return 0;
}

int elf_scan_phase2(Scan *s, const uint8_t *buf) {
    const Elf *e = s->e;
    for (int i = 0; s->relr && i < e->nrelr; i++) { /* the slots SHT_RELR relocates */
        const Span *y = &e->relr[i];
        uint64_t next = 0;
        for (uint64_t p = y->off; y->off + y->size - p >= 8; p += 8) {
            uint64_t v = rd64(buf + p), slot;
            if (!(v & 1)) {
                if ((slot = slot_offset(e, v)) != UINT64_MAX && emit(s, buf, slot, K_ABS64, 8, 0, 0) < 0)
                    return -1;
                next = v + 8;
                continue;
            }
            for (int bit = 1; bit < 64; bit++)
                if ((v >> bit) & 1 && (slot = slot_offset(e, next + 8u * (uint64_t)(bit - 1))) != UINT64_MAX &&
                    emit(s, buf, slot, K_ABS64, 8, 0, 0) < 0)
                    return -1;
            next += 63 * 8;
        }
    }
    for (int i = 0; i < e->nrela; i++) {
        const Span *r = &e->rela[i];
        for (uint64_t p = r->off; r->off + r->size - p >= 24; p += 24) {
            if (!relative_type(e, (uint32_t)rd64(buf + p + 8))) continue;
            uint64_t slot = slot_offset(e, rd64(buf + p));
            if (slot != UINT64_MAX && emit(s, buf, slot, K_ABS64, 8, 0, 0) < 0) return -1;
        }
    }
    return 0;
}
