/* gotrace.h: the one definition of constants and map layouts shared by the
 * BPF programs in probes/ and by user space (gotrace/header.py reads the
 * `#define GT_*` integer constants below; Python packs the structs with the
 * same layouts).
 *
 * Only plain `#define GT_NAME <integer>` lines are read by Python: keep every
 * constant user space needs in that form. The programs include bpf_abi.h
 * (types, helpers, map declarations) before this file.
 */
#ifndef GOTRACE_H
#define GOTRACE_H

/* ---- Latency histogram: log-linear buckets over nanoseconds ----
 * Values below 2^GT_HIST_SUB_BITS ns get one bucket each. Above, each power of
 * two [2^e, 2^(e+1)) is split into 2^GT_HIST_SUB_BITS equal sub-buckets, so a
 * bucket is at most 1/2^GT_HIST_SUB_BITS of its lower bound wide (0.78%).
 * Values at or above 2^GT_HIST_MAX_EXP ns (about 4.9 hours) land in the last
 * bucket.
 *
 *   index(v) = v                                        if v < 2^S
 *            = ((e - S + 1) << S) + (v >> (e - S)) - 2^S   otherwise, e = floor(log2 v)
 */
#define GT_HIST_SUB_BITS 7
#define GT_HIST_MAX_EXP 44
#define GT_HIST_NBUCKETS 4864 /* (GT_HIST_MAX_EXP - GT_HIST_SUB_BITS + 1) << GT_HIST_SUB_BITS */

/* ---- Latency tracing (probes/latency.bpf.c) ----
 * Nothing about a run is compiled in: one object per architecture serves
 * every binary, Go version and process. User space writes the run's settings
 * to gt_config[0] (struct gt_config below) before attaching, and sizes the
 * maps that depend on the number of functions when it creates them.
 * The uprobe's BPF cookie is the traced function's id, 0..nfuncs-1.
 */
#define GT_MAX_FUNCS 65536
/* Open calls remembered at once (LRU: calls lost to panics cannot fill it). */
#define GT_START_ENTRIES 65536
/* Distinct (function, bucket, process) keys the histogram map holds at once;
 * user space deletes the keys of processes that exited (every-process mode). */
#define GT_HIST_MIN_ENTRIES 65536
#define GT_HIST_ENTRIES_PER_FUNC 512
#define GT_HIST_MAX_ENTRIES 1048576

/* Per-function counters: gt_func_counts[func_id * GT_FC_N + GT_FC_*]. */
#define GT_FC_ENTRIES 0        /* entry probe hits with a goroutine */
#define GT_FC_RETURNS_SAME_GEN 1 /* matched returns of calls entered in the current report */
#define GT_FC_N 2

/* Global counters: gt_stats[GT_STAT_*]. */
#define GT_STAT_NO_GOROUTINE 0          /* g register was 0 (assembly, cgo callback) */
#define GT_STAT_READ_FAULT 1            /* g.goid or g.stack.hi could not be read */
#define GT_STAT_STALE_STARTS 2          /* an entry replaced a start left under its key (panic) */
#define GT_STAT_RETURNS_WITHOUT_ENTRY 3 /* no start under the key, or one of another function */
#define GT_STAT_START_UPDATE_FAILED 4   /* the start map refused an update */
#define GT_STAT_HIST_FULL 5             /* the histogram map had no room for a new bucket */
#define GT_STAT_N 6

/* The report generation lives in gt_gen[0]; user space bumps it at each reset. */

/* gt_config[0], written by user space before the probes are attached. */
struct gt_config {
    __u32 target_tgid;     /* the process to trace; 0: every process running the binary */
    __u32 nfuncs;          /* functions traced: a cookie (function id) at or above is ignored */
    __u32 goid_offset;     /* byte offset of goid in runtime.g */
    __u32 stack_hi_offset; /* byte offset of stack.hi in runtime.g */
};

struct gt_start_key {
    __u64 goid;
    __u32 tgid;
    __u32 depth; /* g.stack.hi - SP: survives stack copies, separates recursion */
};

struct gt_start_val {
    __u64 start_ns;
    __u32 func_id;
    __u32 gen;
};

/* gt_hist keys: one per (function, bucket, process). Besides the bucket
 * indexes 0..GT_HIST_NBUCKETS-1, two slots per (function, process) hold
 * cumulative totals instead of a bucket's count: */
#define GT_HIST_SLOT_SUM 4864     /* sum of the latencies, ns (GT_HIST_NBUCKETS) */
#define GT_HIST_SLOT_UNWOUND 4865 /* calls found unwound: their start was replaced by a later entry at the
                                   * same goroutine depth, or met by another function's return (panics) */

struct gt_hist_key {
    __u32 func_id;
    __u32 bucket; /* a bucket index, or a GT_HIST_SLOT_* */
    __u32 tgid;
};

#ifndef GT_NO_BUCKET_CODE
/* Index of the log-linear bucket holding v nanoseconds (formula above). */
static __always_inline __u32 gt_floor_log2(__u64 v)
{
    __u32 e = 0;
    if (v >> 32) { v >>= 32; e += 32; }
    if (v >> 16) { v >>= 16; e += 16; }
    if (v >> 8) { v >>= 8; e += 8; }
    if (v >> 4) { v >>= 4; e += 4; }
    if (v >> 2) { v >>= 2; e += 2; }
    if (v >> 1) { e += 1; }
    return e;
}

static __always_inline __u32 gt_hist_bucket(__u64 v)
{
    __u32 e;
    if (v < (1ULL << GT_HIST_SUB_BITS))
        return (__u32)v;
    if (v >= (1ULL << GT_HIST_MAX_EXP))
        return GT_HIST_NBUCKETS - 1;
    e = gt_floor_log2(v);
    return ((e - GT_HIST_SUB_BITS + 1) << GT_HIST_SUB_BITS)
           + (__u32)(v >> (e - GT_HIST_SUB_BITS)) - (1U << GT_HIST_SUB_BITS);
}
#endif /* GT_NO_BUCKET_CODE */

/* ---- args ---- (probes/args.bpf.c; user side gotrace/capture/plan.py, gotrace/trace/args.py)
 * Per traced function, user space puts two capture plans in gt_arg_plans
 * (index func_id * 2 + GT_SIDE_*): lists of numbered read operations, never
 * C text. Each operation fills bytes of a side's buffer: value images in Go's
 * memory layout (from registers or from the stack at SP), then memory behind
 * pointers found in those images (string bytes, slice elements, an itab's
 * type word, an interface's data). The run's settings are in gt_config[0]
 * (as for latency); gt_arg_plans holds nfuncs * 2 plans.
 */
#define GT_SIDE_ENTRY 0
#define GT_SIDE_RETURN 1
#define GT_ARGS_MAX_OPS 32      /* operations per side; ok/fail masks are 32 bits */
#define GT_ARGS_DATA 1024       /* bytes a plan may fill on the entry side */
#define GT_RES_DATA 512         /* ... and on the return side */
#define GT_ARGS_MAX_READ 256    /* bytes one operation may read (also the --str-len maximum) */
#define GT_ARGS_BUF 1280        /* GT_ARGS_DATA + GT_ARGS_MAX_READ: slack lets the verifier bound every write */
#define GT_RES_BUF 768          /* GT_RES_DATA + GT_ARGS_MAX_READ */
#define GT_ARGS_PENDING 4096    /* calls entered and not yet returned (LRU) */
#define GT_ARGS_RINGBUF_PAGES 8192 /* ring buffer of 32 MiB: ~16000 calls, a second of reader stall */
#define GT_ARGS_NREGS 16        /* registers copied for operations: amd64 RAX..R11 (9), arm64 R0-R15 */

/* Operation kinds. */
#define GT_OP_REG 1     /* buf[dst, dst+size) = low `size` (1,2,4,8) bytes of register `reg` */
#define GT_OP_STACK 2   /* buf[dst, dst+size) = `size` bytes at SP + offset */
#define GT_OP_DEREF 3   /* p = u64 at buf[src]; n = size, or min(size, (u64 at buf[len_src]) << shift);
                         * buf[dst, dst+n) = n bytes at p + offset; skipped when p == 0, n == 0,
                         * or operation `dep` did not succeed */
#define GT_OP_NO_SRC 65535
/* Entry-site cookie bit: the entry instruction is also a `ret` (a function
 * whose whole body is `ret`): one probe does both captures. */
#define GT_ARGS_COOKIE_ALSO_RETURN 2147483648
#define GT_OP_NO_DEP 255

/* The rate limit lives in gt_args_cfg[GT_ACFG_MAX_RATE] (events per second, 0: none). */
#define GT_ACFG_MAX_RATE 0
#define GT_ACFG_N 1

/* Global counters: gt_args_stats[GT_ASTAT_*]. */
#define GT_ASTAT_NO_GOROUTINE 0
#define GT_ASTAT_READ_FAULT 1          /* g.goid or g.stack.hi unreadable */
#define GT_ASTAT_RETURNS_WITHOUT_ENTRY 2 /* entry lost (evicted, or entered before tracing began) */
#define GT_ASTAT_STALE_ENTRIES 3       /* an entry replaced one never returned from (panic) */
#define GT_ASTAT_PENDING_FAILED 4      /* the pending-call map refused an update */
#define GT_ASTAT_RINGBUF_FULL 5        /* a completed call dropped: ring buffer full (reader too slow) */
#define GT_ASTAT_RATE_LIMITED 6        /* a completed call dropped by the rate limit */
#define GT_ASTAT_EVENTS 7              /* completed calls sent to user space */
#define GT_ASTAT_N 8

struct gt_arg_op {
    __u8 kind;   /* GT_OP_* */
    __u8 reg;    /* GT_OP_REG: register number (ABI order) */
    __u8 shift;  /* GT_OP_DEREF: log2 of the element size applied to the length word */
    __u8 dep;    /* GT_OP_DEREF: index of the operation that must have succeeded, or GT_OP_NO_DEP */
    __u16 dst;
    __u16 size;
    __u16 src;
    __u16 len_src;
    __s32 offset;
};

struct gt_arg_plan {
    __u32 nops;
    __u32 reserved;
    struct gt_arg_op ops[GT_ARGS_MAX_OPS];
};

struct gt_args_pending {
    __u64 start_ns;
    __u32 func_id;
    __u32 ok_mask;   /* bit i: operation i completed */
    __u32 fail_mask; /* bit i: operation i's memory read faulted */
    __u32 reserved;
    __u64 entry_ip;  /* runtime address of the entry site: gives a PIE's load bias */
    __u8 data[GT_ARGS_BUF];
};

struct gt_args_event {
    __u64 start_ns;
    __u64 end_ns;
    __u64 goid;
    __u64 entry_ip;
    __u32 tgid;
    __u32 func_id;
    __u32 args_ok;
    __u32 args_fail;
    __u32 res_ok;
    __u32 res_fail;
    __u8 args[GT_ARGS_BUF];
    __u8 res[GT_RES_BUF];
};

struct gt_args_rate {
    __u64 window_start_ns;
    __u64 count;
};

/* ---- BPF programs only: the run's settings and the goroutine a probe hit runs on ----
 * Compiled where the build gives GT_CFG_ARCH (never in user-space builds of
 * this header). Keys pair an entry with its return: (tgid, goid,
 * g.stack.hi - SP); g is in R14 on amd64 and R28 on arm64 in every Go
 * (ABIInternal) function. At the post-prologue entry site and at a `ret`, SP
 * points at the same return address.
 */
#ifdef GT_CFG_ARCH
#if GT_CFG_ARCH == GT_ARCH_AMD64
#define GT_G_REG(ctx) ((ctx)->r14)
#define GT_SP_REG(ctx) ((ctx)->sp)
#elif GT_CFG_ARCH == GT_ARCH_ARM64
#define GT_G_REG(ctx) ((ctx)->regs[28])
#define GT_SP_REG(ctx) ((ctx)->sp)
#else
#error "gotrace: unsupported GT_CFG_ARCH"
#endif

GT_MAP(gt_config, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_config), 1, 0);

enum gt_key_status {
    GT_KEY_OK = 1,
    GT_KEY_OTHER_PROCESS = 0,  /* not the traced process, or not a function of this run */
    GT_KEY_NO_GOROUTINE = -1,  /* g register was 0 (assembly, cgo callback) */
    GT_KEY_READ_FAULT = -2,    /* g.goid or g.stack.hi could not be read */
};

/* Fills *key for a hit of function func_id (the probe's cookie). One array
 * lookup (inlined by the verifier) gives the run's settings. */
static __always_inline int gt_goroutine_key(struct pt_regs *ctx, __u32 func_id, struct gt_start_key *key)
{
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    __u64 g = GT_G_REG(ctx);
    __u64 stack_hi = 0;
    __u64 goid = 0;
    __u64 tgid = bpf_get_current_pid_tgid() >> 32;

    if (!cfg || func_id >= cfg->nfuncs)
        return GT_KEY_OTHER_PROCESS;
    if (cfg->target_tgid != 0 && tgid != cfg->target_tgid)
        return GT_KEY_OTHER_PROCESS;
    if (g == 0)
        return GT_KEY_NO_GOROUTINE;
    if (bpf_probe_read_user(&goid, sizeof(goid), (void *)(g + cfg->goid_offset)) != 0 ||
        bpf_probe_read_user(&stack_hi, sizeof(stack_hi), (void *)(g + cfg->stack_hi_offset)) != 0)
        return GT_KEY_READ_FAULT;
    key->goid = goid;
    key->tgid = (__u32)tgid;
    key->depth = (__u32)(stack_hi - GT_SP_REG(ctx));
    return GT_KEY_OK;
}
#endif /* GT_CFG_ARCH */

#endif /* GOTRACE_H */
