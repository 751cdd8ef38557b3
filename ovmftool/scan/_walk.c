/*
 * Native recursive-descent code discovery: the same walk as codemap.Discoverer, in C.
 *
 * codemap.py holds the reference implementation and the rules (strong and weak roots, trials,
 * gap fill). This file does exactly the same steps in the same order, so its results are equal
 * to the Python walk's (tests/test_scan_native.py compares them on real modules). Instructions
 * are decoded by capstone, called through the function pointers the Python side passes in
 * (the capstone Python package's own libcapstone, so both walks decode identically); nothing is
 * linked at build time.
 *
 * One entry point: discover(mem, bits, ranges, strong, weak, handle, fn_malloc, fn_iter,
 * fn_free, kinds[, lean]) -> (sizes, functions, calls, tails, sites, code_bytes); lean and no
 * string I/O site found: (None, number of functions, None, None, [], code_bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* capstone 5's cs_insn (detail off); layout checked below and by the Python side's version check. */
typedef struct {
    unsigned int id;
    uint64_t address;
    uint16_t size;
    uint8_t bytes[24];
    char mnemonic[32];
    char op_str[160];
    void *detail;
} cs_insn5;

_Static_assert(sizeof(cs_insn5) == 248, "capstone 5 cs_insn layout");
_Static_assert(offsetof(cs_insn5, mnemonic) == 42, "capstone 5 cs_insn layout");

typedef cs_insn5 *(*cs_malloc_t)(size_t);
typedef bool (*cs_disasm_iter_t)(size_t, const uint8_t **, size_t *, uint64_t *, cs_insn5 *);
typedef void (*cs_free_t)(cs_insn5 *, size_t);

enum { K_PLAIN, K_COND, K_JMP, K_CALL, K_END, K_SIO, K_LEA, K_ODD };
#define D_UNKNOWN 0
#define D_BAD 0xFF /* size 15, K_ODD, has-aux: no instruction (K_ODD has no aux) */

typedef struct { uint64_t *v; size_t n, cap; } vec64;

static int vgrow(vec64 *v) {
    size_t cap = v->cap ? v->cap * 2 : 64;
    uint64_t *nv = realloc(v->v, cap * sizeof(uint64_t));
    if (!nv) return -1;
    v->v = nv;
    v->cap = cap;
    return 0;
}

static inline int vpush(vec64 *v, uint64_t x) {
    if (v->n == v->cap && vgrow(v)) return -1;
    v->v[v->n++] = x;
    return 0;
}

typedef struct {
    const uint8_t *mem;
    uint64_t n;
    int bits;
    size_t nranges;
    uint64_t *lo, *hi;
    /* decode cache, one byte an address: D_UNKNOWN, D_BAD, or size (bits 0-3, 1..15) | kind
     * (bits 4-6) | has-aux (bit 7); an instruction with an aux is decoded again for its aux */
    uint8_t *dcache;
    /* the code map so far, and the current trial */
    uint8_t *gsize, *tsize;   /* instruction starts: size, 0 = none */
    uint8_t *fflag;           /* bit 0: known function, bit 1: trial function */
    vec64 gfx, tfx;           /* function starts outside [0, n) */
    vec64 tstarts;            /* trial's starts (to merge or undo) */
    vec64 tfuncs;             /* trial's in-range functions (to merge or undo) */
    vec64 gcalls, tcalls, gtails, ttails;   /* triples fn, rva, target */
    vec64 gsites, tsites;     /* triples rva, size, fn */
    vec64 leas;
    vec64 fn_todo, blocks;
    size_t nstarts;
    uint64_t code_bytes;      /* sum of the merged instructions' sizes */
    uint64_t span_lo, span_hi; /* [lowest range start, highest range end): where starts can be */
    bool overlap;             /* some range starts inside the one before it */
    size_t nfuncs;            /* in-range functions merged (fflag bit 0) */
    bool ok, bare;
    cs_insn5 *insn;
    size_t handle;
    cs_disasm_iter_t iter;
    const uint8_t *kinds;
    size_t nkinds;
    int oom;                  /* 1: out of memory, 2: over the caps below */
} W;

/* Caps on one module's code map, far above any real module (OVMF's largest: 2,902 functions,
 * 14,808 calls, 6 sites; 27 function starts outside the image at most) and low enough that a
 * hostile module cannot make the map, and the Python objects made of it, take gigabytes or
 * the linear searches of targets outside the image take hours. codemap.WALK_CAPS: the same. */
#define MAX_FUNCS 65536
#define MAX_TRANSFERS 262144  /* calls and tail jumps */
#define MAX_SITES 65536
#define MAX_OUTSIDE 4096      /* function starts outside the image */

static void check_caps(W *w) {
    size_t outside = w->gfx.n + w->tfx.n;
    if (w->nfuncs + w->tfuncs.n + outside > MAX_FUNCS || outside > MAX_OUTSIDE
        || (w->gcalls.n + w->tcalls.n + w->gtails.n + w->ttails.n) / 3 > MAX_TRANSFERS
        || (w->gsites.n + w->tsites.n) / 3 > MAX_SITES)
        w->oom = 2;
}

/* --- ranges ----------------------------------------------------------------------------- */

static long range_index(W *w, uint64_t a) {
    /* last range whose start is <= a (bisect_right - 1) */
    size_t lo = 0, hi = w->nranges;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a < w->lo[mid]) hi = mid; else lo = mid + 1;
    }
    return (long)lo - 1;
}

static bool in_exec(W *w, int64_t a) {
    if (a < 0) return false;
    long i = range_index(w, (uint64_t)a);
    return i >= 0 && (uint64_t)a < w->hi[i];
}

static uint64_t range_end(W *w, uint64_t a) { return w->hi[range_index(w, a)]; }

/* --- decoding --------------------------------------------------------------------------- */

static bool parse_rip(const char *op, int64_t next, int64_t *out) {
    /* first match of  \[rip ([+-]) 0x([0-9a-f]+)\]  */
    const char *p = op;
    while ((p = strstr(p, "[rip ")) != NULL) {
        const char *q = p + 5;
        p += 1;
        if ((q[0] != '+' && q[0] != '-') || q[1] != ' ' || q[2] != '0' || q[3] != 'x') continue;
        const char *h = q + 4, *e = h;
        uint64_t d = 0;
        while ((*e >= '0' && *e <= '9') || (*e >= 'a' && *e <= 'f')) {
            d = d * 16 + (uint64_t)(*e <= '9' ? *e - '0' : *e - 'a' + 10);
            e++;
        }
        if (e == h || *e != ']') continue;
        *out = q[0] == '+' ? next + (int64_t)d : next - (int64_t)d;
        return true;
    }
    return false;
}

/* capstone: one instruction at a, bytes up to end. Returns its size or 0 when undecodable;
 * w->insn holds it (mnemonic, operands). */
static int cs_decode(W *w, uint64_t a, uint64_t end, int *kind, int64_t *aux, bool *has) {
    if (a >= end || a >= w->n) return 0;
    if (end > w->n) end = w->n;
    const uint8_t *code = w->mem + a;
    /* at most 15 bytes: no x86 instruction is longer (capstone refuses one), and capstone reads
     * every prefix it is given before refusing, so a megabyte of REX bytes cost a millisecond
     * per address decoded (hostile exports made scans take hours) */
    size_t size = (size_t)(end - a) < 15 ? (size_t)(end - a) : 15;
    uint64_t addr = a;
    if (!w->iter(w->handle, &code, &size, &addr, w->insn)) return 0;
    cs_insn5 *i = w->insn;
    int k = i->id < w->nkinds ? w->kinds[i->id] : K_PLAIN;
    *has = false;
    if (k == K_LEA) {
        int64_t t;
        if (parse_rip(i->op_str, (int64_t)(a + i->size), &t)) {
            *aux = t;
            *has = true;
        } else {
            k = K_PLAIN;
        }
    } else if ((k == K_COND || k == K_JMP || k == K_CALL) && i->op_str[0] == '0' && i->op_str[1] == 'x'
               && strchr(i->op_str, ':') == NULL) {
        *aux = (int64_t)strtoull(i->op_str + 2, NULL, 16);
        *has = true;
    }
    *kind = k;
    return i->size;
}

/*
 * The fast path: lengths and kinds of the common, unambiguous encodings compilers emit in
 * 32- and 64-bit code, without capstone's text formatting. Anything else returns -1 and goes
 * to capstone: other prefixes (segment, LOCK, REP, 67, repeated 66), x87, SSE/VEX, system
 * instructions, string instructions (INS/OUTS among them), far transfers, the opcodes the scanner
 * counts as odd, and group encodings whose validity varies. tests/test_scan_native.py checks
 * every offset of real modules and random bytes against capstone.
 */
enum { IMM_NONE = 0, IMM8 = 1, IMMZ = 2 /* 16 or 32 by operand size */, IMM16 = 3 };

static int fast_decode(W *w, uint64_t a, uint64_t end, int *kind, int64_t *aux, bool *has) {
    const uint8_t *m = w->mem;
    bool x64 = w->bits == 64;
    if (w->bits == 16) return -1;
    uint64_t p = a;
    bool o16 = false, rexw = false;
    if (p < end && m[p] == 0x66) {
        o16 = true;
        p++;
    }
    if (x64 && p < end && (m[p] & 0xF0) == 0x40) {
        rexw = (m[p] & 8) != 0;
        p++;
    }
    if (p >= end) return -1;
    uint8_t op = m[p++];
    bool modrm = false, two = false;
    int imm = IMM_NONE, k = K_PLAIN;
    int rel = 0; /* size of a relative branch displacement */
    if (op == 0x0F) {
        if (p >= end) return -1;
        two = true;
        op = m[p++];
        if ((op >= 0x40 && op <= 0x4F) || op == 0xA3 || op == 0xAB || op == 0xB3 || op == 0xBB || op == 0xA5
            || op == 0xAD || op == 0xAF || op == 0xB0 || op == 0xB1 || op == 0xB6 || op == 0xB7 || op == 0xBE
            || op == 0xBF) {
            modrm = true;
        } else if (op == 0xA4 || op == 0xAC) {
            modrm = true;
            imm = IMM8;
        } else if (op >= 0x80 && op <= 0x8F) {
            if (o16) return -1;
            rel = 4;
            k = K_COND;
        } else if (op == 0x1F || (op >= 0x90 && op <= 0x9F)) {
            modrm = true; /* reg must be 0: checked below */
        } else if (op == 0xBA) {
            modrm = true; /* reg 4..7: checked below */
            imm = IMM8;
        } else if (op == 0xA2 || op == 0x31 || op == 0x30 || op == 0x32) {
            /* cpuid, rdtsc, wrmsr, rdmsr */
        } else {
            return -1;
        }
    } else if (op < 0x40 && (op & 7) < 6) {
        /* ALU: 00-05, 08-0D, ... 38-3D */
        if ((op & 7) < 4) modrm = true;
        else imm = (op & 7) == 4 ? IMM8 : IMMZ;
    } else if (op >= 0x40 && op <= 0x4F) {
        if (x64) return -1; /* a REX not directly before the opcode */
    } else if (op >= 0x50 && op <= 0x5F) {
    } else if (op == 0x63) {
        if (!x64) return -1;
        modrm = true;
    } else if (op == 0x68) {
        imm = IMMZ;
    } else if (op == 0x69) {
        modrm = true;
        imm = IMMZ;
    } else if (op == 0x6A) {
        imm = IMM8;
    } else if (op == 0x6B) {
        modrm = true;
        imm = IMM8;
    } else if (op >= 0x70 && op <= 0x7F) {
        rel = 1;
        k = K_COND;
    } else if (op == 0x80 || op == 0x83) {
        modrm = true;
        imm = IMM8;
    } else if (op == 0x81) {
        modrm = true;
        imm = IMMZ;
    } else if ((op >= 0x84 && op <= 0x8B) || op == 0x8D || op == 0x8F) {
        modrm = true;
    } else if (op >= 0x90 && op <= 0x99) {
    } else if (op == 0x9C || op == 0x9D || op == 0xC9 || op == 0xF4 || (op >= 0xF8 && op <= 0xFD) ||
               (op >= 0xEC && op <= 0xEF)) {
    } else if (op == 0xA8) {
        imm = IMM8;
    } else if (op == 0xA9) {
        imm = IMMZ;
    } else if (op >= 0xB0 && op <= 0xB7) {
        imm = IMM8;
    } else if (op >= 0xB8 && op <= 0xBF) {
        imm = IMMZ; /* imm64 with REX.W: below */
    } else if (op == 0xC0 || op == 0xC1) {
        modrm = true;
        imm = IMM8;
    } else if (op == 0xC2) {
        if (o16) return -1;
        imm = IMM16;
        k = K_END;
    } else if (op == 0xC3 || op == 0xCC) {
        if (o16) return -1;
        k = K_END;
    } else if (op == 0xC6) {
        modrm = true;
        imm = IMM8;
    } else if (op == 0xC7) {
        modrm = true;
        imm = IMMZ;
    } else if (op >= 0xD0 && op <= 0xD3) {
        modrm = true;
    } else if (op >= 0xE4 && op <= 0xE7) {
        imm = IMM8;
    } else if (op == 0xE8 || op == 0xE9) {
        if (o16) return -1;
        rel = 4;
        k = op == 0xE8 ? K_CALL : K_JMP;
    } else if (op == 0xEB) {
        if (o16) return -1;
        rel = 1;
        k = K_JMP;
    } else if (op == 0xF6 || op == 0xF7 || op == 0xFE || op == 0xFF) {
        modrm = true; /* group: by reg below */
    } else {
        return -1;
    }
    uint64_t next;
    if (modrm) {
        if (p >= end) return -1;
        uint8_t mr = m[p++];
        int mod = mr >> 6, reg = (mr >> 3) & 7, rm = mr & 7;
        if (two) {
            if ((op == 0x1F || (op >= 0x90 && op <= 0x9F)) && reg != 0) return -1;
            if (op == 0xBA && reg < 4) return -1;
        } else if (op == 0x8D) {
            if (mod == 3) return -1;
            k = K_LEA;
        } else if (op == 0x8F || op == 0xC6 || op == 0xC7) {
            if (reg != 0) return -1;
        } else if (op == 0xC0 || op == 0xC1 || (op >= 0xD0 && op <= 0xD3)) {
            if (reg == 6) return -1;
        } else if (op == 0xF6 || op == 0xF7) {
            if (reg == 1) return -1;
            if (reg == 0) imm = op == 0xF6 ? IMM8 : IMMZ;
        } else if (op == 0xFE) {
            if (reg > 1) return -1;
        } else if (op == 0xFF) {
            if (reg == 3 || reg == 5 || reg == 7) return -1;
            if (reg == 2 || reg == 4) {
                if (o16) return -1;
                k = reg == 2 ? K_CALL : K_JMP;
            }
        }
        bool rip = false;
        if (mod != 3) {
            if (rm == 4) {
                if (p >= end) return -1;
                uint8_t sib = m[p++];
                if (mod == 0 && (sib & 7) == 5) p += 4;
            } else if (mod == 0 && rm == 5) {
                rip = x64;
                p += 4;
            }
            if (mod == 1) p += 1;
            else if (mod == 2) p += 4;
        }
        if (k == K_LEA) {
            if (p > end) return 0;
            int32_t d = 0;
            if (rip) memcpy(&d, m + p - 4, 4);
            /* capstone prints a displacement of -9..9 in decimal ("[rip + 8]", "[rip]"), which
             * the walk does not read as a target (codemap.RawDecoder): such an LEA is plain */
            if (rip && (d > 9 || d < -9)) {
                *aux = (int64_t)p + d;
                *has = true;
            } else {
                k = K_PLAIN;
            }
        }
    }
    switch (imm) {
    case IMM8: p += 1; break;
    case IMM16: p += 2; break;
    case IMMZ:
        if (!two && op >= 0xB8 && op <= 0xBF && rexw) p += 8;
        else p += (o16 && !rexw) ? 2 : 4;
        break;
    default: break;
    }
    if (rel) {
        p += (uint64_t)rel;
        if (p > end) return 0;
        int64_t d;
        if (rel == 1) d = (int8_t)m[p - 1];
        else {
            int32_t d32;
            memcpy(&d32, m + p - 4, 4);
            d = d32;
        }
        uint64_t t = p + (uint64_t)d;
        if (!x64) t &= 0xFFFFFFFFu;
        /* capstone prints targets below 10 in decimal; the walk reads only "0x..." targets */
        if (t > 9) {
            *aux = (int64_t)t;
            *has = true;
        }
    }
    next = p;
    if (next > end) return 0; /* runs past the bytes available: undecodable, as in capstone */
    if (next - a > 15) return -1;
    *kind = k;
    return (int)(next - a);
}

/* One instruction at a, bytes up to end: the fast path, else capstone. Size or 0. */
static int decode_raw(W *w, uint64_t a, uint64_t end, int *kind, int64_t *aux, bool *has) {
    if (a >= end || a >= w->n) return 0;
    if (end > w->n) end = w->n;
    bool h = false;
    int size = fast_decode(w, a, end, kind, aux, &h);
    if (size >= 0) {
        *has = h;
        return size;
    }
    return cs_decode(w, a, end, kind, aux, has);
}

/* Cached decode at a; `end`: the end of a's executable range (range_end), the limit the Python
 * walk decodes with. */
static inline int decode_at(W *w, uint64_t a, uint64_t end, int *kind, int64_t *aux, bool *has) {
    uint8_t c = w->dcache[a];
    if (c == D_BAD) return 0;
    if (c == D_UNKNOWN || (c & 0x80)) {
        /* not decoded yet, or decoded with an aux (a branch target or LEA address), which the
         * cache does not hold: decoding is deterministic, so this gives the same instruction */
        int k = 0;
        int64_t x = 0;
        bool h = false;
        int size = decode_raw(w, a, end, &k, &x, &h);
        if (size == 0) {
            w->dcache[a] = D_BAD;
            return 0;
        }
        w->dcache[a] = (uint8_t)(size | (k << 4) | (h ? 0x80 : 0));
        *kind = k;
        *aux = x;
        *has = h;
        return size;
    }
    *kind = (c >> 4) & 7;
    *aux = 0;
    *has = false;
    return c & 15;
}

/* The mnemonic of the instruction at a (for string I/O sites; decoded again, rarely needed). */
static const char *mnemonic_at(W *w, uint64_t a, uint64_t end) {
    int k;
    int64_t x;
    bool h;
    if (!cs_decode(w, a, end, &k, &x, &h)) return "";
    return w->insn->mnemonic;
}

/* --- sets ------------------------------------------------------------------------------- */

static bool vhas(const vec64 *v, uint64_t x) {
    for (size_t i = 0; i < v->n; i++)
        if (v->v[i] == x) return true;
    return false;
}

static bool is_fn(W *w, uint64_t a, int bit) {
    if (a < w->n) return (w->fflag[a] & bit) != 0;
    return vhas(bit == 1 ? &w->gfx : &w->tfx, a);
}

static void add_tfn(W *w, uint64_t a) {
    if (a < w->n) {
        if (!(w->fflag[a] & 2)) {
            w->fflag[a] |= 2;
            if (vpush(&w->tfuncs, a)) w->oom = 1;
        }
    } else if (!vhas(&w->tfx, a)) {
        if (vpush(&w->tfx, a)) w->oom = 1;
    }
    if (!w->oom) check_caps(w);
}

static bool is_start(W *w, uint64_t a) { return a < w->n && (w->gsize[a] || w->tsize[a]); }

/* --- heuristics (codemap.Discoverer's helpers) ------------------------------------------ */

static bool printable(uint8_t c) { return (c >= 0x20 && c < 0x7F) || c == 9 || c == 10 || c == 13; }

static bool looks_like_string(W *w, uint64_t a) {
    const uint8_t *m = w->mem;
    uint64_t len = w->n, n = 0, k = 0;
    while (a + n < len && printable(m[a + n])) {
        n++;
        if (n > 256) break;
    }
    if (n >= 4 && a + n < len && m[a + n] == 0) return true;
    while (a + 2 * k + 1 < len && printable(m[a + 2 * k]) && m[a + 2 * k + 1] == 0) {
        k++;
        if (k > 128) break;
    }
    return k >= 3 && a + 2 * k + 2 <= len && m[a + 2 * k] == 0 && m[a + 2 * k + 1] == 0;
}

static bool inside_other(W *w, uint64_t a) {
    for (uint64_t back = 1; back < 15; back++) {
        if (back > a) break;
        uint64_t x = a - back;
        if (x >= w->n) continue;
        uint8_t sz = w->gsize[x] ? w->gsize[x] : w->tsize[x];
        if (sz && sz > back) return true;
    }
    return false;
}

static uint64_t skip_pad(W *w, uint64_t a, uint64_t end) {
    const uint8_t *m = w->mem;
    if (end > w->n) end = w->n;
    while (a < end) {
        uint8_t b = m[a];
        if (b == 0x90 || b == 0xCC || b == 0) {
            a++;
            continue;
        }
        uint64_t p = a;
        while (p < end && (m[p] == 0x66 || m[p] == 0x2E)) p++;
        if (p + 1 < end && m[p] == 0x0F && m[p + 1] == 0x1F) {
            int k;
            int64_t x;
            bool h;
            uint64_t lim = a + 16 < w->n ? a + 16 : w->n;
            int size = cs_decode(w, a, lim, &k, &x, &h);
            if (size && strcmp(w->insn->mnemonic, "nop") == 0) {
                a += (uint64_t)size;
                continue;
            }
            return a;
        }
        return a;
    }
    return a;
}

/* --- the walk --------------------------------------------------------------------------- */

static void trial_reset(W *w) {
    for (size_t i = 0; i < w->tstarts.n; i++) w->tsize[w->tstarts.v[i]] = 0;
    for (size_t i = 0; i < w->tfuncs.n; i++) w->fflag[w->tfuncs.v[i]] &= (uint8_t)~2;
    w->tstarts.n = w->tfuncs.n = w->tfx.n = 0;
    w->tcalls.n = w->ttails.n = w->tsites.n = w->leas.n = 0;
    w->ok = true;
    w->bare = false;
}

static void push3(W *w, vec64 *v, uint64_t a, uint64_t b, uint64_t c) {
    if (vpush(v, a) || vpush(v, b) || vpush(v, c)) w->oom = 1;
    else check_caps(w);
}

static void walk(W *w, uint64_t root, bool strict) {
    w->fn_todo.n = 0;
    if (vpush(&w->fn_todo, root)) w->oom = 1;
    add_tfn(w, root);
    while (w->fn_todo.n && w->ok && !w->oom) {
        uint64_t fn = w->fn_todo.v[--w->fn_todo.n];
        w->blocks.n = 0;
        if (vpush(&w->blocks, fn)) w->oom = 1;
        while (w->blocks.n && w->ok && !w->oom) {
            uint64_t a = w->blocks.v[--w->blocks.n];
            if (is_start(w, a)) continue;
            if (!in_exec(w, (int64_t)a) || (strict && inside_other(w, a))) {
                if (strict) w->ok = false;
                continue;
            }
            uint64_t end = range_end(w, a);
            while (a < end && !is_start(w, a) && !w->oom) {
                int kind = 0;
                int64_t aux = 0;
                bool has = false;
                /* range_end(w, a) is the block's end unless ranges overlap (a hostile module) */
                int size = decode_at(w, a, w->overlap ? range_end(w, a) : end, &kind, &aux, &has);
                if (!size) {
                    if (strict) w->ok = false;
                    break;
                }
                w->tsize[a] = (uint8_t)size;
                if (vpush(&w->tstarts, a)) w->oom = 1;
                uint64_t addr = a;
                a += (uint64_t)size;
                if (kind == K_PLAIN) continue;
                if (kind == K_COND) {
                    if (has && vpush(&w->blocks, (uint64_t)aux)) w->oom = 1;
                } else if (kind == K_CALL) {
                    if (has) {
                        uint64_t t = (uint64_t)aux;
                        push3(w, &w->tcalls, fn, addr, t);
                        if (!is_fn(w, t, 2) && !is_fn(w, t, 1)) {
                            add_tfn(w, t);
                            if (vpush(&w->fn_todo, t)) w->oom = 1;
                        }
                    }
                    /* a string right after a call: the call does not return (codemap._walk) */
                    if (looks_like_string(w, a)) break;
                } else if (kind == K_JMP) {
                    if (has) {
                        uint64_t t = (uint64_t)aux;
                        if (is_fn(w, t, 1) || is_fn(w, t, 2)) push3(w, &w->ttails, fn, addr, t);
                        else if (vpush(&w->blocks, t)) w->oom = 1;
                    }
                    break;
                } else if (kind == K_END) {
                    break;
                } else if (kind == K_LEA) {
                    if (vpush(&w->leas, (uint64_t)aux)) w->oom = 1;
                } else if (kind == K_SIO) {
                    push3(w, &w->tsites, addr, (uint64_t)size, fn);
                    if (!strchr(mnemonic_at(w, addr, end), ' ')) {
                        w->bare = true;
                        if (strict) {
                            w->ok = false;
                            break;
                        }
                    }
                } else if (kind == K_ODD && strict) {
                    w->ok = false;
                    break;
                }
            }
        }
    }
}

static void append(W *w, vec64 *dst, const vec64 *src) {
    for (size_t i = 0; i < src->n; i++)
        if (vpush(dst, src->v[i])) w->oom = 1;
}

static void merge(W *w) {
    for (size_t i = 0; i < w->tstarts.n; i++) {
        uint64_t a = w->tstarts.v[i];
        w->gsize[a] = w->tsize[a];
        w->code_bytes += w->tsize[a];
        w->tsize[a] = 0;
    }
    w->nstarts += w->tstarts.n;
    w->tstarts.n = 0;
    for (size_t i = 0; i < w->tfuncs.n; i++) w->fflag[w->tfuncs.v[i]] = 1;
    w->nfuncs += w->tfuncs.n;
    w->tfuncs.n = 0;
    for (size_t i = 0; i < w->tfx.n; i++)
        if (!vhas(&w->gfx, w->tfx.v[i]) && vpush(&w->gfx, w->tfx.v[i])) w->oom = 1;
    w->tfx.n = 0;
    append(w, &w->gcalls, &w->tcalls);
    append(w, &w->gtails, &w->ttails);
    append(w, &w->gsites, &w->tsites);
}

/* Explore from root; on acceptance the trial's LEA targets are left in w->leas. */
static bool add_root(W *w, int64_t root, bool weak) {
    w->leas.n = 0;
    if (!in_exec(w, root)) return false;
    uint64_t r = (uint64_t)root;
    if (w->gsize[r] || (w->fflag[r] & 1)) return false;
    if (weak && looks_like_string(w, r)) return false;
    trial_reset(w);
    walk(w, r, weak);
    if (weak && (!w->ok || w->bare || w->tstarts.n == 0)) {
        trial_reset(w);
        return false;
    }
    merge(w);
    return true;
}

/* --- gap fill --------------------------------------------------------------------------- */

/* Whether a linear decode from `p` reaches `end` exactly (codemap._decodes_exactly). `memo`
 * (indexed from `base`): 0 unknown, 1 no, 2 yes for the current end; the verdict is kept for every
 * instruction start on the way (the same decode from there on). -1: out of memory. */
static int decode_path(W *w, uint64_t p, uint64_t end, const uint8_t *memo, uint64_t base, vec64 *path) {
    int last = -1;
    uint64_t a = p;
    while (a < end) {
        if (memo[a - base]) return memo[a - base] == 2;
        if (vpush(path, a)) return -1;
        int kind = 0;
        int64_t aux;
        bool has;
        int size = decode_raw(w, a, end, &kind, &aux, &has);
        if (!size) {
            path->n--; /* no instruction starts here */
            return 0;
        }
        if ((kind == K_SIO && !strchr(w->insn->mnemonic, ' ')) || kind == K_ODD) return 0;
        a += (uint64_t)size;
        last = kind;
        if (a >= end) break;
        if ((kind == K_JMP || kind == K_END) && skip_pad(w, a, end) >= end) return 1;
    }
    return a == end && (last == K_JMP || last == K_END);
}

static int decodes_exactly(W *w, uint64_t p, uint64_t end, uint8_t *memo, uint64_t base, vec64 *path) {
    if (memo[p - base]) return memo[p - base] == 2;
    path->n = 0;
    int v = decode_path(w, p, end, memo, base, path);
    if (v < 0) return -1;
    for (size_t i = 0; i < path->n; i++) memo[path->v[i] - base] = v ? 2 : 1;
    return v;
}

/* Where a function may start after `q` in a hole: after the first unconditional end a linear
 * decode from `q` meets, and its padding; `end` when there is none (codemap._next_gap_start). */
static uint64_t next_gap_start(W *w, uint64_t q, uint64_t end) {
    uint64_t a = q;
    while (a < end) {
        int kind = 0;
        int64_t aux;
        bool has;
        int size = decode_raw(w, a, end, &kind, &aux, &has);
        if (!size) { /* a byte that does not decode (TDCALL, data): stepped over */
            a++;
            continue;
        }
        a += (uint64_t)size;
        if (kind == K_JMP || kind == K_END) return skip_pad(w, a, end);
    }
    return end;
}

/* One bit in each byte of `word` that is not zero (bit 8k for byte k, in memory order), as
 * memcpy loads it: little-endian hosts only (x86), which is where the scanner's x86 code runs;
 * other hosts take the byte loop. */
static uint64_t nonzero_bytes(uint64_t word) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
    uint64_t high = (((word & low7) + low7) | word) & ~low7; /* bit 7 of each non-zero byte */
    return high >> 7;
#else
    const uint8_t *b = (const uint8_t *)&word;
    uint64_t m = 0;
    for (int i = 0; i < 8; i++)
        if (b[i]) m |= 1ULL << (8 * i);
    return m;
#endif
}

static int lowest_bit(uint64_t m) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(m);
#else
    int i = 0;
    while (!(m & 1)) {
        m >>= 1;
        i++;
    }
    return i;
#endif
}

/* Roots found in the hole [e0, a1), each part of it from a place after code up to the next code
 * (codemap._fill_hole): 1 if any was accepted, -1 out of memory. */
static int fill_hole(W *w, uint64_t e0, uint64_t a1) {
    const uint8_t *g = w->gsize;
    uint8_t *memo = calloc((size_t)(a1 - e0), 1);
    vec64 path = {0};
    if (!memo) return -1;
    int added = 0;
    uint64_t p = e0, end = e0;
    while (p < a1) {
        if (end <= p) { /* the code after this part: the next instruction start (memo entries past
                         * p are unwritten: a part's decodes stay inside it) */
            end = p;
            while (end < a1 && !g[end]) end++;
        }
        uint64_t q = skip_pad(w, p, end);
        p = end;
        while (q < end) {
            if (!looks_like_string(w, q)) {
                int ok = decodes_exactly(w, q, end, memo, e0, &path);
                if (ok < 0) {
                    added = -1;
                    goto out;
                }
                if (ok) {
                    size_t before = w->nstarts;
                    add_root(w, (int64_t)q, true);
                    if (w->oom) goto out;
                    if (w->nstarts > before) {
                        added = 1;
                        size_t k = 0; /* go on after the code just found at q */
                        p = q;
                        while (p < w->n && g[p]) {
                            p += g[p];
                            k++;
                        }
                        if (k != w->nstarts - before) { /* code found elsewhere too: the end may move */
                            if (end > p) memset(memo + (p - e0), 0, (size_t)(end - p));
                            end = p;
                        }
                        break;
                    }
                }
            }
            q = next_gap_start(w, q, end);
        }
        while (p < a1 && g[p]) p += g[p];
    }
out:
    free(memo);
    free(path.v);
    return added;
}

/* Order of two [start, end) pairs: by start, then end (qsort). */
static int cmp_pair(const void *x, const void *y) {
    const uint64_t *a = x, *b = y;
    if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
    if (a[1] != b[1]) return a[1] < b[1] ? -1 : 1;
    return 0;
}

static int fill_gaps(W *w) {
    vec64 gaps = {0};
    for (int pass = 0; pass < 2; pass++) {
        bool added = false;
        gaps.n = 0;
        bool have = false;
        uint64_t prev_end = 0;
        /* every instruction start in address order (they lie only inside executable ranges:
         * [span_lo, span_hi)), eight bytes of gsize at a time: a mask of the non-zero ones */
        const uint8_t *g = w->gsize;
        uint64_t a = w->span_lo;
        while (a < w->span_hi) {
            uint64_t mask;
            int width;
            if (a + 8 <= w->span_hi) {
                uint64_t word;
                memcpy(&word, g + a, 8);
                mask = nonzero_bytes(word);
                width = 8;
            } else {
                mask = g[a] ? 1 : 0;
                width = 1;
            }
            while (mask) {
                uint64_t x = a + (uint64_t)(lowest_bit(mask) >> 3);
                mask &= mask - 1;
                if (have && x > prev_end && (vpush(&gaps, prev_end) || vpush(&gaps, x))) {
                    free(gaps.v);
                    return -1;
                }
                prev_end = x + g[x];
                have = true;
            }
            a += (uint64_t)width;
        }
        /* each executable range that holds code: before its first instruction, after its last
         * (codemap.gaps); then every gap in address order, once */
        for (size_t r = 0; r < w->nranges; r++) {
            uint64_t lo = w->lo[r], hi = w->hi[r] < w->n ? w->hi[r] : w->n, first = lo;
            while (first < hi && !g[first]) first++;
            if (first >= hi) continue;
            uint64_t last = hi - 1;
            while (!g[last]) last--;
            uint64_t last_end = last + g[last];
            if ((first > lo && (vpush(&gaps, lo) || vpush(&gaps, first))) ||
                (last_end < hi && (vpush(&gaps, last_end) || vpush(&gaps, hi)))) {
                free(gaps.v);
                return -1;
            }
        }
        if (gaps.n) qsort(gaps.v, gaps.n / 2, 2 * sizeof(uint64_t), cmp_pair); /* (never with NULL) */
        size_t kept = 0;
        for (size_t i = 0; i < gaps.n; i += 2) {
            if (kept && gaps.v[kept - 2] == gaps.v[i] && gaps.v[kept - 1] == gaps.v[i + 1]) continue;
            gaps.v[kept++] = gaps.v[i];
            gaps.v[kept++] = gaps.v[i + 1];
        }
        gaps.n = kept;
        for (size_t i = 0; i < gaps.n; i += 2) {
            uint64_t e0 = gaps.v[i], a1 = gaps.v[i + 1];
            if (!in_exec(w, (int64_t)e0) || range_end(w, e0) < a1) continue;
            int r = fill_hole(w, e0, a1);
            if (r < 0) {
                free(gaps.v);
                return -1;
            }
            if (r) added = true;
        }
        if (!added) break;
    }
    free(gaps.v);
    return w->oom ? -1 : 0;
}

/* --- Python glue ------------------------------------------------------------------------ */

static PyObject *triples(const vec64 *v) {
    PyObject *out = PyList_New((Py_ssize_t)(v->n / 3));
    if (!out) return NULL;
    for (size_t i = 0; i < v->n / 3; i++) {
        PyObject *t = Py_BuildValue("(KKK)", (unsigned long long)v->v[3 * i], (unsigned long long)v->v[3 * i + 1],
                                    (unsigned long long)v->v[3 * i + 2]);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    return out;
}

static void w_free(W *w) {
    free(w->lo);
    free(w->hi);
    /* dcache, gsize, tsize and fflag are the arena's (arena_get) */
    vec64 *vs[] = {&w->gfx, &w->tfx, &w->tstarts, &w->tfuncs, &w->gcalls, &w->tcalls, &w->gtails, &w->ttails,
                   &w->gsites, &w->tsites, &w->leas, &w->fn_todo, &w->blocks};
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) free(vs[i]->v);
}

static int int64_of(PyObject *o, int64_t *out) {
    /* Python ints of any size: values outside int64 can never be in an executable range. */
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = overflow ? -1 : (int64_t)v;
    return 0;
}

/* The fields both entry points set from their arguments; allocates the capstone instruction. */
static void w_init(W *w, const Py_buffer *mem, int bits, unsigned long long handle, unsigned long long p_malloc,
                   unsigned long long p_iter, const Py_buffer *kinds) {
    memset(w, 0, sizeof *w);
    w->mem = mem->buf;
    w->n = (uint64_t)mem->len;
    w->bits = bits;
    w->handle = (size_t)handle;
    w->iter = (cs_disasm_iter_t)(uintptr_t)p_iter;
    w->kinds = kinds->buf;
    w->nkinds = (size_t)kinds->len;
    w->insn = ((cs_malloc_t)(uintptr_t)p_malloc)(w->handle);
}

/* The per-address tables of one walk (dcache, gsize, tsize, fflag, seen: 5 bytes an address),
 * kept from one call to the next and cleared after each use: a scan walks a hundred modules,
 * and fresh zeroed memory for each cost more in page faults than the walk itself. Kept only up
 * to KEEP_ARENA (real modules are at most about 1 MiB); the GIL is held throughout a walk. */
#define KEEP_ARENA ((size_t)8 << 20)
static uint8_t *g_arena = NULL;
static size_t g_arena_size = 0;

static uint8_t *arena_get(size_t need) {
    if (g_arena && g_arena_size >= need) return g_arena; /* all zero */
    free(g_arena);
    g_arena = calloc(need, 1);
    g_arena_size = g_arena ? need : 0;
    return g_arena;
}

static void arena_drop(void) {
    free(g_arena);
    g_arena = NULL;
    g_arena_size = 0;
}

static PyObject *py_discover(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer mem, kinds;
    int bits;
    PyObject *ranges, *strong, *weak;
    unsigned long long handle, p_malloc, p_iter, p_free;
    int lean = 0;
    if (!PyArg_ParseTuple(args, "y*iOOOKKKKy*|p", &mem, &bits, &ranges, &strong, &weak, &handle, &p_malloc, &p_iter,
                          &p_free, &kinds, &lean))
        return NULL;
    W w;
    w_init(&w, &mem, bits, handle, p_malloc, p_iter, &kinds);
    PyObject *result = NULL;
    cs_free_t cs_free = (cs_free_t)(uintptr_t)p_free;
    size_t n = mem.len ? (size_t)mem.len : 1;
    Py_ssize_t nr = PySequence_Length(ranges);
    if (nr < 0 || !w.insn) goto done;
    w.lo = calloc((size_t)nr + 1, sizeof(uint64_t));
    w.hi = calloc((size_t)nr + 1, sizeof(uint64_t));
    w.dcache = n <= SIZE_MAX / 5 ? arena_get(5 * n) : NULL;
    uint8_t *seen = NULL;
    if (w.dcache) {
        w.gsize = w.dcache + n;
        w.tsize = w.dcache + 2 * n;
        w.fflag = w.dcache + 3 * n;
        seen = w.dcache + 4 * n;
    }
    if (!w.lo || !w.hi || !w.dcache) {
        PyErr_NoMemory();
        goto done;
    }
    /* ranges arrive sorted ([start, end) pairs); ends are clamped to the memory image */
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *t = PySequence_GetItem(ranges, i);
        unsigned long long lo, hi;
        if (!t) goto done;
        int okp = PyArg_ParseTuple(t, "KK", &lo, &hi);
        Py_DECREF(t);
        if (!okp) goto done;
        w.lo[i] = lo;
        w.hi[i] = hi < w.n ? hi : w.n;
        if (i == 0 || lo < w.span_lo) w.span_lo = lo;
        if (w.hi[i] > w.span_hi) w.span_hi = w.hi[i];
    }
    w.nranges = (size_t)nr;
    for (Py_ssize_t i = 1; i < nr; i++)
        if (w.lo[i] < w.hi[i - 1]) w.overlap = true;

    vec64 pending = {0}, queue = {0};
    Py_ssize_t ns = PySequence_Length(strong);
    for (Py_ssize_t i = 0; i < ns && !w.oom; i++) {
        PyObject *t = PySequence_GetItem(strong, i), *r;
        int64_t root;
        if (!t) goto fail;
        r = PyTuple_Check(t) ? PyTuple_GetItem(t, 0) : NULL;
        if (!r || int64_of(r, &root)) {
            Py_DECREF(t);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "strong roots are (rva, kind) tuples");
            goto fail;
        }
        Py_DECREF(t);
        if (add_root(&w, root, false)) append(&w, &pending, &w.leas);
    }
    Py_ssize_t nw = PySequence_Length(weak);
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *t = PySequence_GetItem(weak, i);
        int64_t v;
        if (!t) goto fail;
        int bad = int64_of(t, &v);
        Py_DECREF(t);
        if (bad) goto fail;
        if (vpush(&queue, (uint64_t)v)) w.oom = 1;
    }
    append(&w, &queue, &pending);
    /* FIFO queue; targets outside code have no effect, so "seen" is only kept for code */
    for (size_t qi = 0; qi < queue.n && !w.oom; qi++) {
        int64_t t = (int64_t)queue.v[qi];
        if (!in_exec(&w, t) || seen[t]) continue;
        seen[t] = 1;
        if (add_root(&w, t, true)) append(&w, &queue, &w.leas);
    }
    if (fill_gaps(&w) || w.oom) {
        if (w.oom == 2)
            PyErr_SetString(PyExc_OverflowError, "the module's code map exceeds the walk's caps (more than 65536 "
                            "functions, 262144 calls and jumps, 65536 string I/O sites or 4096 targets outside it)");
        else
            PyErr_NoMemory();
        goto fail;
    }
    if (lean && w.gsites.n == 0) {
        /* lean, and no site: only the counts (what a scan reports of such a module) */
        result = Py_BuildValue("(OnOO[]K)", Py_None, (Py_ssize_t)(w.nfuncs + w.gfx.n), Py_None, Py_None,
                               (unsigned long long)w.code_bytes);
    } else {
        PyObject *sizes = PyBytes_FromStringAndSize((const char *)w.gsize, (Py_ssize_t)w.n);
        PyObject *funcs = PyList_New(0);
        PyObject *calls = triples(&w.gcalls), *tails = triples(&w.gtails);
        PyObject *sites = PyList_New((Py_ssize_t)(w.gsites.n / 3));
        if (sizes && funcs && sites) {
            for (uint64_t a = 0; a < w.n && funcs; a++)
                if (w.fflag[a] & 1) {
                    PyObject *x = PyLong_FromUnsignedLongLong(a);
                    if (!x || PyList_Append(funcs, x)) Py_CLEAR(funcs);
                    Py_XDECREF(x);
                }
            for (size_t i = 0; funcs && i < w.gfx.n; i++) {
                PyObject *x = PyLong_FromUnsignedLongLong(w.gfx.v[i]);
                if (!x || PyList_Append(funcs, x)) Py_CLEAR(funcs);
                Py_XDECREF(x);
            }
            for (size_t i = 0; sites && i < w.gsites.n / 3; i++) {
                uint64_t a = w.gsites.v[3 * i];
                const char *mn = mnemonic_at(&w, a, range_end(&w, a));
                PyObject *t = Py_BuildValue("(KKsK)", (unsigned long long)a, (unsigned long long)w.gsites.v[3 * i + 1],
                                            mn, (unsigned long long)w.gsites.v[3 * i + 2]);
                if (!t) {
                    Py_CLEAR(sites);
                    break;
                }
                PyList_SET_ITEM(sites, (Py_ssize_t)i, t);
            }
        }
        if (sizes && funcs && calls && tails && sites)
            result = Py_BuildValue("(NNNNNK)", sizes, funcs, calls, tails, sites, (unsigned long long)w.code_bytes);
        else {
            Py_XDECREF(sizes);
            Py_XDECREF(funcs);
            Py_XDECREF(calls);
            Py_XDECREF(tails);
            Py_XDECREF(sites);
        }
    }
fail:
    free(pending.v);
    free(queue.v);
done:
    if (result && w.dcache) {
        /* leave the arena all zero: the walk wrote the tables only inside the executable ranges
         * ([span_lo, span_hi)), except function flags (any call target in the image) */
        size_t lo = w.span_lo < n ? (size_t)w.span_lo : n, hi = w.span_hi < n ? (size_t)w.span_hi : n;
        if (lo < hi)
            for (int k = 0; k < 5; k++)
                if (k != 3) memset(w.dcache + (size_t)k * n + lo, 0, hi - lo);
        memset(w.fflag, 0, n);
    } else {
        arena_drop(); /* an error part-way: no telling what is left in it */
    }
    if (g_arena_size > KEEP_ARENA) arena_drop();
    if (w.insn) cs_free(w.insn, 1);
    w_free(&w);
    PyBuffer_Release(&mem);
    PyBuffer_Release(&kinds);
    if (!result && !PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "native walk failed");
    return result;
}

/* Test hook: the fast path against capstone at every offset of mem (bytes up to the end). */
static PyObject *py_check_fast(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer mem, kinds;
    int bits;
    unsigned long long handle, p_malloc, p_iter, p_free;
    if (!PyArg_ParseTuple(args, "y*iKKKKy*", &mem, &bits, &handle, &p_malloc, &p_iter, &p_free, &kinds)) return NULL;
    W w;
    w_init(&w, &mem, bits, handle, p_malloc, p_iter, &kinds);
    cs_free_t cs_free = (cs_free_t)(uintptr_t)p_free;
    PyObject *bad = PyList_New(0);
    unsigned long long handled = 0;
    for (uint64_t a = 0; bad && w.insn && a < w.n; a++) {
        int fk = 0, ck = 0;
        int64_t fx = 0, cx = 0;
        bool fh = false, ch = false;
        int fs = fast_decode(&w, a, w.n, &fk, &fx, &fh);
        if (fs < 0) continue;
        handled++;
        int cs = cs_decode(&w, a, w.n, &ck, &cx, &ch);
        bool same = fs == cs && (fs == 0 || (fk == ck && fh == ch && (!fh || fx == cx)));
        if (!same && PyList_GET_SIZE(bad) < 100) {
            PyObject *t = Py_BuildValue("(KiiiiLL)", (unsigned long long)a, fs, cs, fk, ck, (long long)(fh ? fx : -1),
                                        (long long)(ch ? cx : -1));
            if (!t || PyList_Append(bad, t)) Py_CLEAR(bad);
            Py_XDECREF(t);
        }
    }
    if (w.insn) cs_free(w.insn, 1);
    PyBuffer_Release(&mem);
    PyBuffer_Release(&kinds);
    if (!bad) return NULL;
    return Py_BuildValue("(KN)", handled, bad);
}

/* find_anchors(mem, ranges, anchors, limit): for each anchor (bytes), for each [lo, hi) range,
 * every position p (ascending, overlapping ones included) with mem[p:p+len] == anchor inside
 * the range (hi clamped to len(mem)): what the loop `p = mem.find(a, lo, hi)` ... `mem.find(a,
 * p + 1, hi)` yields, in one pass over each range instead of one per anchor. None when the
 * anchors' counts as bytes.count gives them (non-overlapping, left to right), summed over
 * anchors and ranges, exceed `limit`. Anchors are at most 16 bytes. */
static PyObject *py_find_anchors(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer mem;
    PyObject *ranges, *anchors;
    long long limit;
    if (!PyArg_ParseTuple(args, "y*OOL", &mem, &ranges, &anchors, &limit)) return NULL;
    PyObject *result = NULL, *lists = NULL;
    Py_ssize_t na = PySequence_Length(anchors), nr = PySequence_Length(ranges);
    const uint8_t *m = mem.buf;
    uint64_t n = (uint64_t)mem.len;
    enum { MAX_ANCHORS = 64, MAX_LEN = 16 };
    const uint8_t *an[MAX_ANCHORS];
    Py_ssize_t alen[MAX_ANCHORS];
    PyObject *abytes[MAX_ANCHORS];
    Py_ssize_t got = 0;
    long long total = 0;
    if (na < 0 || nr < 0) goto done;
    if (na > MAX_ANCHORS) {
        PyErr_SetString(PyExc_ValueError, "find_anchors: too many anchors");
        goto done;
    }
    for (; got < na; got++) {
        abytes[got] = PySequence_GetItem(anchors, got);
        if (!abytes[got]) goto done;
        if (!PyBytes_Check(abytes[got]) || PyBytes_GET_SIZE(abytes[got]) < 1
            || PyBytes_GET_SIZE(abytes[got]) > MAX_LEN) {
            got++;
            PyErr_SetString(PyExc_ValueError, "find_anchors: anchors are bytes of 1 to 16");
            goto done;
        }
        an[got] = (const uint8_t *)PyBytes_AS_STRING(abytes[got]);
        alen[got] = PyBytes_GET_SIZE(abytes[got]);
    }
    bool first[256] = {false}; /* the anchors' first bytes */
    for (Py_ssize_t i = 0; i < na; i++) first[an[i][0]] = true;
    lists = PyList_New(na);
    if (!lists) goto done;
    for (Py_ssize_t i = 0; i < na; i++) {
        PyObject *per = PyList_New(nr);
        if (!per) goto done;
        PyList_SET_ITEM(lists, i, per);
        for (Py_ssize_t j = 0; j < nr; j++) {
            PyObject *l = PyList_New(0);
            if (!l) goto done;
            PyList_SET_ITEM(per, j, l);
        }
    }
    for (Py_ssize_t j = 0; j < nr; j++) {
        PyObject *t = PySequence_GetItem(ranges, j);
        unsigned long long lo, hi;
        if (!t) goto done;
        int okp = PyArg_ParseTuple(t, "KK", &lo, &hi);
        Py_DECREF(t);
        if (!okp) goto done;
        if (hi > n) hi = n;
        uint64_t next_free[MAX_ANCHORS]; /* bytes.count: the next match must start here or later */
        for (Py_ssize_t i = 0; i < na; i++) next_free[i] = lo;
        for (uint64_t p = lo; p < hi; p++) {
            uint8_t c = m[p];
            if (!first[c]) continue;
            for (Py_ssize_t i = 0; i < na; i++) {
                if (c != an[i][0] || p + (uint64_t)alen[i] > hi || memcmp(m + p, an[i], (size_t)alen[i]) != 0)
                    continue;
                if (p >= next_free[i]) {
                    next_free[i] = p + (uint64_t)alen[i];
                    if (++total > limit) {
                        Py_CLEAR(lists);
                        Py_INCREF(Py_None);
                        result = Py_None;
                        goto done;
                    }
                }
                PyObject *x = PyLong_FromUnsignedLongLong(p);
                int bad = !x || PyList_Append(PyList_GET_ITEM(PyList_GET_ITEM(lists, i), j), x);
                Py_XDECREF(x);
                if (bad) goto done;
            }
        }
    }
    result = lists;
    lists = NULL;
done:
    Py_XDECREF(lists);
    for (Py_ssize_t i = 0; i < got; i++) Py_XDECREF(abytes[i]);
    PyBuffer_Release(&mem);
    return result;
}

static uint64_t load_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* pointer_roots(mem, rvas, types, image_base, dir64, highlow): the sorted distinct targets
 * (value - image_base, modulo 2**64) below len(mem) of the base relocations of type dir64
 * (8-byte pointers) and highlow (4-byte) that lie whole inside mem; rvas: 8-byte unsigned
 * integers in native order (array("Q")), types: one byte each (scan.analysis.pointer_roots). */
static PyObject *py_pointer_roots(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer mem, rvas, types;
    unsigned long long base;
    unsigned int dir64, highlow;
    if (!PyArg_ParseTuple(args, "y*y*y*KII", &mem, &rvas, &types, &base, &dir64, &highlow)) return NULL;
    PyObject *out = NULL;
    uint64_t n = (uint64_t)mem.len, count = (uint64_t)types.len;
    uint64_t *bits = NULL;
    if ((uint64_t)rvas.len != count * 8) {
        PyErr_SetString(PyExc_ValueError, "pointer_roots: one 8-byte rva per type byte");
        goto done;
    }
    bits = calloc((size_t)(n / 64 + 1), sizeof(uint64_t));
    if (!bits) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *m = mem.buf, *ty = types.buf;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t rva, v;
        memcpy(&rva, (const uint8_t *)rvas.buf + 8 * i, 8);
        if (ty[i] == dir64 && rva <= n && n - rva >= 8) v = load_le(m + rva, 8);
        else if (ty[i] == highlow && rva <= n && n - rva >= 4) v = load_le(m + rva, 4);
        else continue;
        uint64_t t = v - (uint64_t)base;
        if (t < n) bits[t / 64] |= 1ULL << (t % 64);
    }
    out = PyList_New(0);
    for (uint64_t wi = 0; out && wi <= n / 64; wi++) {
        uint64_t word = bits[wi];
        while (word) {
            PyObject *x = PyLong_FromUnsignedLongLong(wi * 64 + (uint64_t)lowest_bit(word));
            word &= word - 1;
            if (!x || PyList_Append(out, x)) Py_CLEAR(out);
            Py_XDECREF(x);
            if (!out) break;
        }
    }
done:
    free(bits);
    PyBuffer_Release(&mem);
    PyBuffer_Release(&rvas);
    PyBuffer_Release(&types);
    return out;
}

/* disasm_lite(code, handle, cs_malloc, cs_disasm_iter, cs_free): [(address, size, mnemonic,
 * op_str)] from address 0 up to the first byte capstone cannot decode: what capstone's
 * Cs.disasm_lite(code, 0) yields, without the capstone Python package (signatures.tokens). */
static PyObject *py_disasm_lite(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer code;
    unsigned long long handle, p_malloc, p_iter, p_free;
    if (!PyArg_ParseTuple(args, "y*KKKK", &code, &handle, &p_malloc, &p_iter, &p_free)) return NULL;
    cs_insn5 *insn = ((cs_malloc_t)(uintptr_t)p_malloc)((size_t)handle);
    cs_disasm_iter_t iter = (cs_disasm_iter_t)(uintptr_t)p_iter;
    PyObject *out = insn ? PyList_New(0) : NULL;
    const uint8_t *p = code.buf;
    size_t left = (size_t)code.len;
    uint64_t addr = 0;
    while (out && left && iter((size_t)handle, &p, &left, &addr, insn)) {
        PyObject *t = Py_BuildValue("(KHss)", (unsigned long long)insn->address, insn->size, insn->mnemonic,
                                    insn->op_str);
        if (!t || PyList_Append(out, t)) Py_CLEAR(out);
        Py_XDECREF(t);
    }
    if (insn) ((cs_free_t)(uintptr_t)p_free)(insn, 1);
    else PyErr_NoMemory();
    PyBuffer_Release(&code);
    return out;
}

static PyMethodDef methods[] = {
    {"disasm_lite", py_disasm_lite, METH_VARARGS,
     "disasm_lite(code, handle, cs_malloc, cs_disasm_iter, cs_free) -> [(address, size, mnemonic, op_str)]"},
    {"pointer_roots", py_pointer_roots, METH_VARARGS,
     "pointer_roots(mem, rvas, types, image_base, dir64, highlow) -> sorted distinct targets inside mem"},
    {"find_anchors", py_find_anchors, METH_VARARGS,
     "find_anchors(mem, ranges, anchors, limit) -> [[positions per range] per anchor], or None over limit"},
    {"check_fast", py_check_fast, METH_VARARGS,
     "check_fast(mem, bits, handle, cs_malloc, cs_disasm_iter, cs_free, kinds) -> (handled, mismatches)"},
    {"discover", py_discover, METH_VARARGS,
     "discover(mem, bits, ranges, strong, weak, handle, cs_malloc, cs_disasm_iter, cs_free, kinds[, lean])\n"
     "-> (sizes, functions, calls, tails, sites, code_bytes): codemap.discover's walk in C; lean and no site:\n"
     "(None, number of functions, None, None, [], code_bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_walk", "Native recursive-descent code discovery.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__walk(void) { return PyModule_Create(&module); }
