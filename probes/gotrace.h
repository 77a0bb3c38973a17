/* gotrace.h: the one definition of constants and map layouts shared by the
 * BPF programs in probes/ and by user space (gotrace/probes_header.py reads the
 * `#define GT_*` integer constants below; bcc derives the struct layouts).
 *
 * Only plain `#define GT_NAME <integer>` lines are read by Python: keep every
 * constant user space needs in that form.
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
 * Compile-time configuration, given by user space as -D flags (numbers only,
 * validated before use): GT_CFG_ARCH (one of GT_ARCH_*), GT_CFG_GOID_OFFSET and
 * GT_CFG_STACK_HI_OFFSET (byte offsets in runtime.g), GT_CFG_NFUNCS (functions
 * traced), GT_CFG_TARGET_TGID (0: every process running the binary).
 * The uprobe's BPF cookie is the traced function's id, 0..GT_CFG_NFUNCS-1.
 */
#define GT_ARCH_AMD64 1
#define GT_ARCH_ARM64 2

#define GT_MAX_FUNCS 65536
/* Open calls remembered at once (LRU: calls lost to panics cannot fill it). */
#define GT_START_ENTRIES 65536
/* Distinct (function, bucket) pairs the histogram map holds over a whole run. */
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

struct gt_hist_key {
    __u32 func_id;
    __u32 bucket;
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

#endif /* GOTRACE_H */
