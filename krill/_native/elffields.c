/* What an ELF transform field's bytes hold (elfcand.h): the address it points at, decoded and
 * encoded per kind, and the label index the normalized file carries in its place. Every
 * encoder checks the value fits the field's bits, so the inverse never truncates. */
#include "elfcand.h"
#include "elfscan.h"

static int64_t sext(uint64_t v, int bits) {
    uint64_t m = 1ull << (bits - 1);
    v &= (1ull << bits) - 1;
    return (int64_t)((v ^ m) - m);
}

/* The address a field points at, decoded from its bytes. */
uint64_t elf_field_addr(const uint8_t *p, int kind, int tail, uint64_t va) {
    uint32_t w = rd32(p);
    switch (kind) {
    case K_X86: case K_EHPC: case K_EHLOC: case K_EHFDE:
        return va + (uint64_t)tail + (uint64_t)(int64_t)(int32_t)w;
    case K_B26: return va + (uint64_t)(sext(w, 26) * 4);
    case K_ADRP: {
        uint64_t imm = ((w >> 5) & 0x7FFFF) << 2 | ((w >> 29) & 3);
        return (va & ~0xFFFull) + (uint64_t)(sext(imm, 21) * 4096);
    }
    case K_EHCIE: return va - w;
    case K_RELR: return rd64(p);
    case K_APAIR: {
        uint32_t u = rd32(p + 4 * tail);
        return elf_field_addr(p, K_ADRP, 0, va) + ((uint64_t)((u >> 10) & 0xFFF) << a64_lo12_scale(u));
    }
    default: return rd64(p);
    }
}

/* The largest label index a field of this kind can hold. */
uint64_t elf_index_limit(int kind) {
    return kind == K_B26 ? (1u << 26) : kind == K_ADRP || kind == K_APAIR ? (1u << 21) : (1ull << 32);
}

/* The field's bytes carrying `index` (forward) in place of its value. */
void elf_put_index(uint8_t *p, int kind, int tail, uint64_t idx) {
    uint32_t w = rd32(p);
    if (kind == K_APAIR) wr32(p + 4 * tail, rd32(p + 4 * tail) & ~(0xFFFu << 10));
    switch (kind) {
    case K_RELR: wr64(p, idx << 1); break;
    case K_X86: case K_EHPC: case K_EHLOC: case K_EHFDE: case K_EHCIE: wr32(p, (uint32_t)idx); break;
    case K_B26: wr32(p, (w & 0xFC000000u) | (uint32_t)idx); break;
    case K_ADRP: /* fall through */
    case K_APAIR: wr32(p, (w & 0x9F00001Fu) | (uint32_t)(idx & 3) << 29 | (uint32_t)(idx >> 2) << 5); break;
    default: wr64(p, idx);
    }
}

uint64_t elf_get_index(const uint8_t *p, int kind) {
    uint32_t w = rd32(p);
    switch (kind) {
    case K_X86: case K_EHPC: case K_EHLOC: case K_EHFDE: case K_EHCIE: return w;
    case K_RELR: return rd64(p) >> 1;
    case K_B26: return w & 0x3FFFFFF;
    case K_ADRP: /* fall through */
    case K_APAIR: return ((w >> 5) & 0x7FFFF) << 2 | ((w >> 29) & 3);
    default: return rd64(p);
    }
}

/* The field's bytes pointing at `addr`; 0, or -1 where the address does not fit the field. */
int elf_put_addr(uint8_t *p, int kind, int tail, uint64_t va, uint64_t addr) {
    uint32_t w = rd32(p);
    int64_t d;
    switch (kind) {
    case K_X86: case K_EHPC: case K_EHLOC: case K_EHFDE:
        d = (int64_t)(addr - va - (uint64_t)tail);
        if (d != (int32_t)d) return -1;
        wr32(p, (uint32_t)(int32_t)d);
        return 0;
    case K_B26:
        d = (int64_t)(addr - va);
        if (d & 3 || d / 4 != sext((uint64_t)(d / 4), 26)) return -1;
        wr32(p, (w & 0xFC000000u) | ((uint32_t)(d / 4) & 0x3FFFFFF));
        return 0;
    case K_ADRP: {
        if (addr & 0xFFF) return -1;
        d = (int64_t)(addr - (va & ~0xFFFull)) / 4096;
        if (d != sext((uint64_t)d, 21)) return -1;
        uint32_t imm = (uint32_t)d & 0x1FFFFF;
        wr32(p, (w & 0x9F00001Fu) | (imm & 3) << 29 | (imm >> 2) << 5);
        return 0;
    }
    case K_RELR:
        if (addr & 1) return -1;
        wr64(p, addr);
        return 0;
    case K_EHCIE:
        if (va - addr > UINT32_MAX) return -1;
        wr32(p, (uint32_t)(va - addr));
        return 0;
    case K_APAIR: {
        uint32_t u = rd32(p + 4 * tail);
        int scale = a64_lo12_scale(u);
        uint64_t lo = addr & 0xFFF;
        if (scale < 0 || lo & ((1u << scale) - 1) || elf_put_addr(p, K_ADRP, 0, va, addr - lo) < 0) return -1;
        wr32(p + 4 * tail, (u & ~(0xFFFu << 10)) | (uint32_t)(lo >> scale) << 10);
        return 0;
    }
    default: wr64(p, addr); return 0;
    }
}
