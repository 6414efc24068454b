/*
 * A compact x86-64 instruction-length decoder for the ELF transform (elfnorm.c).
 *
 * It answers two questions per instruction: how long is it, and does it carry
 * a field whose value moves with code (call/jmp/jcc rel32, RIP-relative
 * disp32), at which offset, and how far that field is from the instruction's
 * end (the field is relative to the end). The length depends only on
 * prefixes, opcode and ModRM/SIB bytes, never on the displacement or
 * immediate values, so decoding the normalized stream (fields replaced by
 * label indices) finds the same instructions: that is what makes the
 * transform invertible without carrying positions. A wrong decode (data in
 * .text, an opcode this table gets wrong) only costs size; the encoder
 * checks the inverse before it keeps an ELF op.
 */
#include "elfnorm.h"

/* One-byte map: bit 0x80 = has ModRM; low bits = immediate kind. */
enum { I0 = 0, I8 = 1, I16 = 2, IZ = 3, I16_8 = 4, IMOFFS = 5, IV = 6, IGRP3 = 7, BAD = 0x40 };
#define M 0x80

static unsigned char one[256], two[256];

static void fill(unsigned char *t, int lo, int hi, unsigned char v) {
    for (int i = lo; i <= hi; i++) t[i] = v;
}

static void init_x86_tables(void) {
    for (int base = 0; base < 0x40; base += 8) { /* ALU block: 00-05, 08-0D, ... */
        fill(one, base, base + 3, M);
        one[base + 4] = I8;
        one[base + 5] = IZ;
        one[base + 6] = BAD;
        one[base + 7] = BAD;
    }
    fill(one, 0x40, 0x5F, I0);
    fill(one, 0x60, 0x62, BAD);
    one[0x63] = M;
    one[0x68] = IZ;
    one[0x69] = M | IZ;
    one[0x6A] = I8;
    one[0x6B] = M | I8;
    fill(one, 0x6C, 0x6F, I0);
    fill(one, 0x70, 0x7F, I8);
    one[0x80] = M | I8;
    one[0x81] = M | IZ;
    one[0x82] = BAD;
    one[0x83] = M | I8;
    fill(one, 0x84, 0x8F, M);
    fill(one, 0x90, 0x9F, I0);
    one[0x9A] = BAD;
    fill(one, 0xA0, 0xA3, IMOFFS);
    fill(one, 0xA4, 0xA7, I0);
    one[0xA8] = I8;
    one[0xA9] = IZ;
    fill(one, 0xAA, 0xAF, I0);
    fill(one, 0xB0, 0xB7, I8);
    fill(one, 0xB8, 0xBF, IV);
    one[0xC0] = M | I8;
    one[0xC1] = M | I8;
    one[0xC2] = I16;
    one[0xC3] = I0;
    one[0xC4] = BAD; /* VEX: handled before the table */
    one[0xC5] = BAD;
    one[0xC6] = M | I8;
    one[0xC7] = M | IZ;
    one[0xC8] = I16_8;
    one[0xC9] = I0;
    one[0xCA] = I16;
    one[0xCB] = I0;
    one[0xCC] = I0;
    one[0xCD] = I8;
    one[0xCE] = BAD;
    one[0xCF] = I0;
    fill(one, 0xD0, 0xD3, M);
    fill(one, 0xD4, 0xD6, BAD);
    one[0xD7] = I0;
    fill(one, 0xD8, 0xDF, M);
    fill(one, 0xE0, 0xE7, I8);
    one[0xE8] = IZ;
    one[0xE9] = IZ;
    one[0xEA] = BAD;
    one[0xEB] = I8;
    fill(one, 0xEC, 0xEF, I0);
    one[0xF1] = I0;
    one[0xF4] = I0;
    one[0xF5] = I0;
    one[0xF6] = M | IGRP3;
    one[0xF7] = M | IGRP3;
    fill(one, 0xF8, 0xFD, I0);
    one[0xFE] = M;
    one[0xFF] = M;

    fill(two, 0x00, 0xFF, M);
    two[0x04] = BAD;
    fill(two, 0x05, 0x0C, I0);
    two[0x0A] = BAD;
    two[0x0C] = BAD;
    two[0x0E] = I0;
    two[0x0F] = M | I8;
    fill(two, 0x24, 0x27, BAD);
    fill(two, 0x30, 0x3F, I0);
    fill(two, 0x70, 0x73, M | I8);
    two[0x77] = I0;
    fill(two, 0x80, 0x8F, IZ);
    fill(two, 0xA0, 0xA2, I0);
    two[0xA4] = M | I8;
    two[0xA6] = BAD;
    two[0xA7] = BAD;
    fill(two, 0xA8, 0xAA, I0);
    two[0xAC] = M | I8;
    two[0xBA] = M | I8;
    two[0xC2] = M | I8;
    fill(two, 0xC4, 0xC6, M | I8);
    fill(two, 0xC8, 0xCF, I0);
}

/* Immediate bytes of a VEX/EVEX map-1 opcode (the legacy 0F map's imm8 ones). */
static int vex_map1_imm(unsigned op) {
    return (op >= 0x70 && op <= 0x73) || op == 0xC2 || (op >= 0xC4 && op <= 0xC6);
}

/* Prefix bytes: PF_SKIP for every legacy prefix, with PF_66/PF_67 for the two that change
 * sizes; PF_REX for 40-4F. A byte with no bit is the opcode. */
enum { PF_SKIP = 1, PF_66 = 2, PF_67 = 4, PF_REX = 8 };
static unsigned char pfx[256];
/* ModRM byte: MR_LEN bits = bytes of ModRM, SIB and displacement (a SIB's base-5 disp32
 * excepted: it depends on the SIB byte); MR_SIB: a SIB follows; MR_RIP: mod 0, rm 5 (disp32,
 * RIP-relative unless 0x67). The old code computed this with five branches per operand. */
enum { MR_LEN = 0x0F, MR_SIB = 0x10, MR_RIP = 0x20 };
static unsigned char modrm[256];
/* Immediate bytes by kind (I0..IV) and operand sizes: [kind][opsize16 | addr32 << 1 | rexw << 2]. */
static unsigned char imm_bytes[8][8];

/* Fills the tables once, from the module's init (before any thread decodes). */
void elf_x86_init(void) {
    init_x86_tables();
    static const unsigned char legacy[] = {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65};
    for (size_t k = 0; k < sizeof legacy; k++) pfx[legacy[k]] = PF_SKIP;
    pfx[0x66] = PF_SKIP | PF_66;
    pfx[0x67] = PF_SKIP | PF_67;
    for (int b = 0x40; b <= 0x4F; b++) pfx[b] = PF_REX;
    for (int m = 0; m < 256; m++) {
        int mod = m >> 6, rm = m & 7, len = 1, flags = 0;
        if (mod != 3) {
            if (rm == 4) len = 2, flags |= MR_SIB;
            else if (mod == 0 && rm == 5) len += 4, flags |= MR_RIP;
            if (mod == 1) len += 1;
            if (mod == 2) len += 4;
        }
        modrm[m] = (unsigned char)(len | flags);
    }
    for (int v = 0; v < 8; v++) {
        int opsize16 = v & 1, addr32 = (v >> 1) & 1, rexw = (v >> 2) & 1;
        imm_bytes[I8][v] = 1;
        imm_bytes[I16][v] = 2;
        imm_bytes[IZ][v] = opsize16 ? 2 : 4;
        imm_bytes[I16_8][v] = 3;
        imm_bytes[IMOFFS][v] = addr32 ? 4 : 8;
        imm_bytes[IV][v] = rexw ? 8 : (opsize16 ? 2 : 4);
    }
}

int x86_decode(const uint8_t *p, size_t avail, X86Insn *out) {
    size_t i = 0;
    unsigned sizes = 0; /* opsize16 | addr32 << 1 | rexw << 2 */
    out->field = -1;
    out->tail = 0;
    for (;; i++) { /* legacy prefixes, then REX: only the last REX counts */
        if (i >= avail || i >= 14) return -1;
        unsigned c = pfx[p[i]];
        if (c & PF_SKIP) {
            sizes |= (c >> 1) & 3;
            continue;
        }
        if (c & PF_REX) {
            sizes = (sizes & 3) | ((p[i] & 8) >> 1);
            if (i + 1 < avail && (pfx[p[i + 1]] & PF_REX)) continue;
            i++;
        }
        break;
    }
    if (i >= avail) return -1;
    unsigned op = p[i++];
    unsigned attr;
    int opsize16 = sizes & 1;
    if (op == 0xC4 || op == 0xC5 || op == 0x62) { /* VEX3, VEX2, EVEX */
        unsigned map;
        size_t extra = op == 0xC4 ? 2 : op == 0xC5 ? 1 : 3;
        if (i + extra >= avail) return -1;
        map = op == 0xC5 ? 1 : (p[i] & (op == 0x62 ? 7 : 0x1F));
        if (op == 0x62) sizes = (sizes & 3) | ((p[i + 1] & 0x80) >> 5);
        i += extra;
        unsigned vop = p[i++];
        if (map == 1 && vop == 0x77 && op != 0x62) return (int)i; /* vzeroupper/vzeroall */
        if (map == 3) attr = M | I8;
        else if (map == 1) attr = vex_map1_imm(vop) ? (M | I8) : M;
        else if (map == 2 || map == 5 || map == 6) attr = M;
        else return -1;
    } else if (op == 0x0F) {
        if (i >= avail) return -1;
        unsigned op2 = p[i++];
        if (op2 == 0x38 || op2 == 0x3A) {
            if (i >= avail) return -1;
            i++;
            attr = op2 == 0x38 ? M : M | I8;
        } else {
            attr = two[op2];
            if (op2 >= 0x80 && op2 <= 0x8F && !opsize16) { /* jcc rel32 */
                if (i + 4 > avail) return -1;
                out->field = (int)i;
                out->tail = 4;
                return (int)i + 4;
            }
        }
    } else {
        attr = one[op];
        if ((op == 0xE8 || op == 0xE9) && !opsize16) { /* call/jmp rel32 */
            if (i + 4 > avail) return -1;
            out->field = (int)i;
            out->tail = 4;
            return (int)i + 4;
        }
    }
    if (attr & BAD) return -1;
    size_t modrm_at = i;
    unsigned mr = 0;
    if (attr & M) {
        if (i >= avail) return -1;
        mr = modrm[p[i]];
        size_t len = mr & MR_LEN;
        if (mr & MR_SIB) {
            if (i + 1 >= avail) return -1;
            if ((p[i] >> 6) == 0 && (p[i + 1] & 7) == 5) len += 4;
        }
        if (len > avail - i) return -1;
        i += len;
    }
    unsigned kind = attr & 0x3F;
    size_t imm = kind == IGRP3 ? (((p[modrm_at] >> 3) & 7) < 2 ? (op == 0xF6 ? 1 : (opsize16 ? 2 : 4)) : 0)
                               : imm_bytes[kind & 7][sizes];
    i += imm;
    if (i > avail || i > 15) return -1;
    if ((mr & MR_RIP) && !(sizes & 2)) {
        out->field = (int)(modrm_at + 1);
        out->tail = (int)(4 + imm);
    }
    return (int)i;
}
