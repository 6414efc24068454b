/* Where the ELF transform's fields are (elfscan.c), shared with elfnorm.c: the file's layout,
 * the field kinds, and the scanner that reports every candidate field, in order, to a visitor. */
#ifndef KRILL_ELFSCAN_H
#define KRILL_ELFSCAN_H

#include <stddef.h>
#include <stdint.h>

enum { K_X86 = 1, K_B26 = 2, K_ADRP = 3, K_ABS64 = 4, K_APAIR = 5, K_EHPC = 6, K_EHLOC = 7, K_EHFDE = 8,
       K_EHCIE = 9, K_RELR = 10 };
/* K_RELR: an address entry of SHT_RELR (even; odd entries are bitmaps): its label index is
 * stored doubled, so the normalized entry stays even and the inverse reads the table alike. */
/* K_EH*: 32-bit fields relative to `va` like K_X86 with tail 0 (.eh_frame FDE pc_begin,
 * .eh_frame_hdr's table entries); their own kinds only for the matching contexts. */
#define A64_REACH 8 /* how many words after an ADRP its ADD/LDR/STR is looked for */
#define MAX_SPANS 1024
#define MAX_LOADS 64

typedef struct {
    uint64_t off, size, addr;
} Span;

typedef struct {
    const uint8_t *b;
    size_t n;
    int machine; /* 62 (x86-64), 183 (aarch64), 0: not an ELF this transform reads */
    Span exec[MAX_SPANS];
    int nexec;
    Span rela[MAX_SPANS];
    int nrela;
    Span sym[MAX_SPANS]; /* SHT_SYMTAB, SHT_DYNSYM */
    int nsym;
    Span relr[MAX_SPANS]; /* SHT_RELR (packed relative relocations) */
    int nrelr;
    Span load[MAX_LOADS]; /* off, filesz, vaddr */
    Span ehhdr;           /* PT_GNU_EH_FRAME: off, filesz, vaddr (size 0: none) */
    int nload;
    uint64_t lo, hi; /* the image's address range */
} Elf;

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static inline void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)v), wr32(p + 4, (uint32_t)(v >> 32)); }
static inline int fits(uint64_t off, uint64_t size, size_t n) { return off <= n && size <= n - off; }

/* ---- the scanner: every candidate of one phase, in order, to a visitor ------------------- */

typedef struct Scan Scan;
typedef int (*Visit)(Scan *s, uint64_t pos, int kind, int width, int tail, uint64_t va);
struct Scan {
    const Elf *e;
    uint8_t *cover; /* one bit per byte: inside an earlier candidate */
    Visit visit;
    void *state;
    int pairs; /* side version >= 2: ADRP+ADD/LDR/STR pairs */
    int eh;    /* side version >= 3: .eh_frame_hdr and .eh_frame */
    int syms;  /* side version >= 4: symbol values, CIE pointers */
    int relr;  /* side version >= 5: SHT_RELR */
    uint64_t hint;
};

/* The layout of b (machine 0 when it is not an ELF64 LE x86-64/aarch64 file). */
void elf_parse(Elf *e, const uint8_t *b, size_t n);
/* Every candidate of phase 1 (code, relocations, .eh_frame, symbols) or phase 2 (the slots
 * relative relocations point at) to s->visit; -1 when the visitor stops. */
int elf_scan_phase1(Scan *s, const uint8_t *buf);
int elf_scan_phase2(Scan *s, const uint8_t *buf);
/* log2 of the scale of an aarch64 ADD-immediate/LDR/STR's imm12, or -1 for other words. */
int a64_lo12_scale(uint32_t w);

#endif
