/* bpf_abi.h: the little of the kernel's ABI that gotrace's BPF programs use,
 * restated so that they compile with plain `clang -target bpfel` and no
 * kernel headers, into one object per architecture that loads on every
 * kernel with these helpers and map types (none of it depends on a kernel
 * struct layout: only on pt_regs, which is stable UAPI per architecture).
 *
 * Numbers are those of include/uapi/linux/bpf.h (enum bpf_map_type, the
 * helper functions' numbers in __BPF_FUNC_MAPPER) and of the architectures'
 * uapi/asm/ptrace.h; they never change once a kernel has shipped them.
 *
 * Maps are declared in the legacy `maps` section as struct gt_map_def (the
 * shape of libbpf's old struct bpf_map_def): gotrace/bpf/elfobj.py reads
 * them and the relocations that refer to them; the kernel never sees this
 * section. The loader may change max_entries when it creates a map.
 *
 * The one compile-time setting is GT_CFG_ARCH (-DGT_CFG_ARCH=GT_ARCH_AMD64 or
 * GT_ARCH_ARM64): which pt_regs layout a probe's context has. Everything else
 * a program needs to know at run time is in its gt_config map (gotrace.h).
 */
#ifndef GT_BPF_ABI_H
#define GT_BPF_ABI_H

#define GT_ARCH_AMD64 1
#define GT_ARCH_ARM64 2

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* enum bpf_map_type */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_HASH 5
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_RINGBUF 27 /* Linux 5.8 */

/* map_flags */
#define BPF_F_NO_PREALLOC 1

struct gt_map_def {
    __u32 type;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
};

/* A map named NAME; max_entries is a default the loader may replace. */
#define GT_MAP(name, map_type, key_size_, value_size_, max_entries_, flags_) \
    struct gt_map_def name SEC("maps") = {                                   \
        .type = (map_type),                                                  \
        .key_size = (key_size_),                                             \
        .value_size = (value_size_),                                         \
        .max_entries = (max_entries_),                                       \
        .map_flags = (flags_),                                               \
    }

/* Helper functions, by number (a call instruction's imm). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)112;   /* Linux 5.5 */
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113; /* Linux 5.5 */
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size, __u64 flags) = (void *)130; /* 5.8 */
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131; /* 5.8 */
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;                  /* 5.8 */
static __u64 (*bpf_get_attach_cookie)(void *ctx) = (void *)174; /* Linux 5.15 */

#define BPF_ANY 0
#define BPF_EXIST 2 /* update only a key that is there */

/* The registers a uprobe's program sees (its context), per architecture:
 * x86_64's struct pt_regs (uapi/asm/ptrace.h, with the kernel's own field
 * names) and arm64's struct user_pt_regs. */
#if GT_CFG_ARCH == GT_ARCH_AMD64
struct pt_regs {
    unsigned long r15;
    unsigned long r14;
    unsigned long r13;
    unsigned long r12;
    unsigned long bp;
    unsigned long bx;
    unsigned long r11;
    unsigned long r10;
    unsigned long r9;
    unsigned long r8;
    unsigned long ax;
    unsigned long cx;
    unsigned long dx;
    unsigned long si;
    unsigned long di;
    unsigned long orig_ax;
    unsigned long ip;
    unsigned long cs;
    unsigned long flags;
    unsigned long sp;
    unsigned long ss;
};
#define PT_REGS_IP(ctx) ((ctx)->ip)
#elif GT_CFG_ARCH == GT_ARCH_ARM64
struct pt_regs {
    __u64 regs[31];
    __u64 sp;
    __u64 pc;
    __u64 pstate;
};
#define PT_REGS_IP(ctx) ((ctx)->pc)
#else
#error "gotrace: compile with -DGT_CFG_ARCH=GT_ARCH_AMD64 or GT_ARCH_ARM64"
#endif

#endif /* GT_BPF_ABI_H */
