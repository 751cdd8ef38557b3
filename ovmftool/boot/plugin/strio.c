/*
 * ovmftool boot-check TCG plugin (QEMU plugin API version 1, QEMU 7.2 and later):
 * executed string port I/O (INS/OUTS) in one boot.
 *
 * Arguments (-plugin strio.so,table=PATH,code=PATH[,query=FD]):
 *   table  a file this plugin mmaps (MAP_SHARED) and keeps current: one record per string I/O
 *          site in order of first translation, with translation, execution and memory-access
 *          counts. It survives QEMU being killed (the data is in the page cache).
 *   code   every translated block, appended: u64 vaddr, u16 n, n x u8 instruction sizes, the
 *          bytes, u32 record length (so the last block can be read from the end). boot-check
 *          maps code and detects a hang with it, as it did with QEMU's `-d in_asm` log.
 *   query  a socket: at the first memory access of each entry into a site (see below) the
 *          plugin sends {u32 site, u32 kind} and waits (at most 5 s) for one byte back, while
 *          boot-check reads the CPU's registers through QEMU's monitor (`info registers`).
 *          Plugin API 1 has no register read; at that point QEMU's copy of the registers is
 *          current (REP forms: the ECX test before the first iteration ends a TCG basic block,
 *          which writes every guest register back; INS: the I/O helper call before the store
 *          does), and RCX/RDX still hold the count and port on entry.
 *
 * An "inner" execution is one of the instruction inside a block that starts before it (an
 * entry); QEMU runs each further REP iteration as a block starting at the instruction ("first").
 * Single vCPU (boot-check boots one); counters are updated atomically anyway.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAGIC 0x4f49534fu /* "OSIO" */
#define TABLE_VERSION 1
#define MAX_SITES 1024
#define MAX_QUERIES 4096

struct header {            /* 64 bytes */
    uint32_t magic, version, nsites, overflow;
    uint32_t executed;     /* 1 once any site executed (--fail-fast polls it) */
    uint32_t queries, query_failed, site_size;
    uint8_t pad[32];
};

struct site {              /* 160 bytes */
    uint64_t vaddr;
    uint32_t translations, inner_translations;
    uint64_t exec_first, exec_inner; /* executions at a block's start / inside a block */
    uint64_t accesses;     /* the instruction's own memory accesses: units moved */
    uint64_t armed;        /* block generation + 1 of its last execution, until its access */
    uint32_t access_size;  /* bytes per access (from the memory callback) */
    uint32_t pending;      /* an entry whose first access is still to come: its kind + 1 */
    uint32_t zero_entries; /* entries that moved nothing (a count of 0) */
    uint32_t stray;        /* memory callbacks that were not this instruction's access */
    uint8_t rep, len, is_in, pad0, bytes[16];
    char disas[64];
    uint8_t pad[12];
};

static struct header *hdr;
/* +1 at the start of every block executed: a memory callback belongs to the instruction only in
 * the block execution that ran it. QEMU 7.2 can leave an instruction's memory callbacks
 * installed after its block is left through an exception, so that helpers' accesses (an
 * interrupt frame) reach them: those are not the instruction's. */
static uint64_t tbgen;
static struct site *sites;
static int code_fd = -1, query_fd = -1;
static uint8_t buf[1 << 16];
static size_t buf_len;
static struct timespec last_flush;

static void flush_code(void)
{
    size_t off = 0;
    while (off < buf_len) {
        ssize_t n = write(code_fd, buf + off, buf_len - off);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            break;
        }
        off += n;
    }
    buf_len = 0;
    clock_gettime(CLOCK_MONOTONIC, &last_flush);
}

static void put(const void *p, size_t n)
{
    if (buf_len + n > sizeof(buf)) {
        flush_code();
    }
    memcpy(buf + buf_len, p, n);
    buf_len += n;
}

/* INS/OUTS: opcode 6C-6F after legacy prefixes and, in 64-bit code, one REX byte. In 32-bit
 * code 40-4F are INC/DEC, whole instructions: an instruction that has one before 6C-6F can
 * only be 64-bit code. */
static int string_io(const uint8_t *b, size_t n, uint8_t *rep)
{
    size_t i = 0;
    *rep = 0;
    for (; i < n; i++) {
        uint8_t c = b[i];
        if (c == 0xF2 || c == 0xF3) {
            *rep = 1;
        } else if (!(c == 0x66 || c == 0x67 || c == 0xF0 || c == 0x2E || c == 0x36 || c == 0x3E ||
                     c == 0x26 || c == 0x64 || c == 0x65)) {
            break;
        }
    }
    if (i + 1 < n && (b[i] & 0xF0) == 0x40) {
        i++;
    }
    return i + 1 == n && b[i] >= 0x6C && b[i] <= 0x6F;
}

static void query(struct site *s, uint32_t kind)
{
    uint32_t msg[2] = {(uint32_t)(s - sites), kind};
    struct pollfd p = {query_fd, POLLIN, 0};
    char ack;
    if (query_fd < 0) {
        return;
    }
    if (hdr->queries >= MAX_QUERIES) {
        hdr->query_failed |= 2;
        return;
    }
    hdr->queries++;
    if (write(query_fd, msg, sizeof(msg)) != sizeof(msg) || poll(&p, 1, 5000) != 1 ||
        read(query_fd, &ack, 1) != 1) {
        hdr->query_failed |= 1; /* boot-check gone or not answering: stop asking */
        close(query_fd);
        query_fd = -1;
    }
}

static void exec_inner(unsigned int vcpu, void *ud)
{
    struct site *s = ud;
    __atomic_add_fetch(&s->exec_inner, 1, __ATOMIC_RELAXED);
    hdr->executed = 1;
    s->armed = tbgen + 1;
    s->zero_entries += s->pending != 0;
    s->pending = 2;
}

static void exec_first(unsigned int vcpu, void *ud)
{
    struct site *s = ud;
    __atomic_add_fetch(&s->exec_first, 1, __ATOMIC_RELAXED);
    hdr->executed = 1;
    s->armed = tbgen + 1;
    /* an entry as far as is known yet (boot-check decides at the end, from inner_translations) */
    if (!s->rep || s->inner_translations == 0) {
        s->zero_entries += s->pending != 0;
        s->pending = 1;
    }
}

static void mem_access(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud)
{
    struct site *s = ud;
    unsigned size = 1u << qemu_plugin_mem_size_shift(info);
    /* one access per execution (QEMU runs one REP iteration per block execution): INS stores,
     * OUTS loads, a byte for INSB/OUTSB */
    if (s->armed != tbgen + 1 || qemu_plugin_mem_is_store(info) != s->is_in ||
        (size == 1) != ((s->bytes[s->len - 1] & 1) == 0)) {
        s->stray++;
        return;
    }
    s->armed = 0;
    __atomic_add_fetch(&s->accesses, 1, __ATOMIC_RELAXED);
    s->access_size = size;
    if (s->pending) {
        uint32_t kind = s->pending - 1;
        s->pending = 0;
        query(s, kind);
    }
}

static struct site *site_at(uint64_t vaddr, const uint8_t *b, size_t n, uint8_t rep,
                            const struct qemu_plugin_insn *insn)
{
    uint32_t i;
    for (i = 0; i < hdr->nsites; i++) {
        if (sites[i].vaddr == vaddr) {
            return &sites[i];
        }
    }
    if (hdr->nsites >= MAX_SITES) {
        hdr->overflow = 1;
        return NULL;
    }
    struct site *s = &sites[hdr->nsites];
    char *d = qemu_plugin_insn_disas(insn);
    s->vaddr = vaddr;
    s->rep = rep;
    s->len = n < sizeof(s->bytes) ? n : sizeof(s->bytes);
    memcpy(s->bytes, b, s->len);
    s->is_in = b[n - 1] <= 0x6D;
    if (d) {
        strncpy(s->disas, d, sizeof(s->disas) - 1);
        free(d);
    }
    __atomic_store_n(&hdr->nsites, hdr->nsites + 1, __ATOMIC_RELEASE);
    return s;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb), i;
    uint64_t start = qemu_plugin_tb_vaddr(tb);
    uint16_t n16 = n > 0xFFFF ? 0xFFFF : n;
    uint32_t total = 8 + 2 + n16 + 4;
    struct timespec now;

    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &tbgen, 1);
    put(&start, 8);
    put(&n16, 2);
    for (i = 0; i < n16; i++) {
        uint8_t sz = qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i));
        put(&sz, 1);
    }
    for (i = 0; i < n16; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint8_t *b = qemu_plugin_insn_data(insn);
        size_t len = qemu_plugin_insn_size(insn);
        uint8_t rep;
        put(b, len);
        total += len;
        if (string_io(b, len, &rep)) {
            struct site *s = site_at(qemu_plugin_insn_vaddr(insn), b, len, rep, insn);
            if (s == NULL) {
                continue;
            }
            s->translations++;
            if (i > 0) {
                s->inner_translations++;
            }
            qemu_plugin_register_vcpu_insn_exec_cb(insn, i > 0 ? exec_inner : exec_first,
                                                   QEMU_PLUGIN_CB_NO_REGS, s);
            qemu_plugin_register_vcpu_mem_cb(insn, mem_access, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, s);
        }
    }
    put(&total, 4);
    clock_gettime(CLOCK_MONOTONIC, &now);
    /* boot-check watches this file's size for a hang: never hold back more than 0.2 s of it */
    if ((now.tv_sec - last_flush.tv_sec) * 1000000000L + (now.tv_nsec - last_flush.tv_nsec) > 200000000L) {
        flush_code();
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    flush_code();
}

static void c_exit(void)
{
    if (buf_len) {
        flush_code();
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    const char *table = NULL, *code = NULL;
    size_t size = sizeof(struct header) + MAX_SITES * sizeof(struct site);
    int i, fd;

    for (i = 0; i < argc; i++) {
        if (strncmp(argv[i], "table=", 6) == 0) {
            table = argv[i] + 6;
        } else if (strncmp(argv[i], "code=", 5) == 0) {
            code = argv[i] + 5;
        } else if (strncmp(argv[i], "query=", 6) == 0) {
            query_fd = atoi(argv[i] + 6);
        } else {
            fprintf(stderr, "ovmftool strio plugin: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    if (table == NULL || code == NULL) {
        fprintf(stderr, "ovmftool strio plugin: table= and code= are required\n");
        return -1;
    }
    fd = open(table, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, size) != 0) {
        fprintf(stderr, "ovmftool strio plugin: %s: %s\n", table, strerror(errno));
        return -1;
    }
    hdr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (hdr == MAP_FAILED) {
        fprintf(stderr, "ovmftool strio plugin: mmap %s: %s\n", table, strerror(errno));
        return -1;
    }
    sites = (struct site *)(hdr + 1);
    hdr->version = TABLE_VERSION;
    hdr->site_size = sizeof(struct site);
    code_fd = open(code, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    if (code_fd < 0) {
        fprintf(stderr, "ovmftool strio plugin: %s: %s\n", code, strerror(errno));
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &last_flush);
    atexit(c_exit);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    __atomic_store_n(&hdr->magic, MAGIC, __ATOMIC_RELEASE);
    return 0;
}

_Static_assert(sizeof(struct header) == 64, "header layout");
_Static_assert(sizeof(struct site) == 160, "site layout");
