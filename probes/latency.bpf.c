/* latency.bpf.c: per-goroutine call latency of Go functions, aggregated into
 * per-function log-linear histograms in the kernel.
 *
 * Two programs, each attached as plain uprobes (never uretprobes) at many
 * sites: gt_entry at each traced function's post-prologue entry site,
 * gt_return at each of its `ret` instructions. The uprobe's BPF cookie is
 * the function's id. A call is keyed by (tgid, goid, g.stack.hi - SP): the
 * goroutine survives thread migration, the distance from the stack top
 * survives stack copies and separates recursive calls.
 *
 * Configuration arrives as -D constants (see gotrace.h); no other text is
 * ever added to this file.
 */
#include <uapi/linux/ptrace.h>
#include "gotrace.h"

#if !defined(GT_CFG_ARCH) || !defined(GT_CFG_GOID_OFFSET) || \
    !defined(GT_CFG_STACK_HI_OFFSET) || !defined(GT_CFG_NFUNCS) || \
    !defined(GT_CFG_HIST_ENTRIES)
#error "gotrace: GT_CFG_* constants must be given by the loader"
#endif

BPF_TABLE("lru_hash", struct gt_start_key, struct gt_start_val, gt_starts, GT_START_ENTRIES);
/* Cumulative counts; user space reports differences between reads. No
 * preallocation: an element freed by user space is never reused under a
 * program still holding it. */
BPF_F_TABLE("percpu_hash", struct gt_hist_key, __u64, gt_hist, GT_CFG_HIST_ENTRIES, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(gt_func_counts, __u64, GT_CFG_NFUNCS * GT_FC_N);
BPF_PERCPU_ARRAY(gt_stats, __u64, GT_STAT_N);
BPF_ARRAY(gt_gen, __u32, 1);
BPF_ARRAY(gt_target, __u32, 1); /* tgid to trace, 0 for all; written by user space */

static __always_inline void gt_count(int stat)
{
    __u64 *slot = gt_stats.lookup(&stat);
    if (slot)
        __sync_fetch_and_add(slot, 1);
}

static __always_inline void gt_func_count(__u32 func_id, __u32 which)
{
    int index = func_id * GT_FC_N + which;
    __u64 *slot = gt_func_counts.lookup(&index);
    if (slot)
        __sync_fetch_and_add(slot, 1);
}

/* Adds n to gt_hist[{func_id, slot, tgid}]: a bucket's count or a GT_HIST_SLOT_* total. */
static __always_inline void gt_hist_add(__u32 func_id, __u32 slot, __u32 tgid, __u64 n)
{
    struct gt_hist_key hkey = {};
    __u64 *value;

    hkey.func_id = func_id;
    hkey.bucket = slot;
    hkey.tgid = tgid;
    value = gt_hist.lookup(&hkey);
    if (value) {
        __sync_fetch_and_add(value, n);
    } else if (gt_hist.update(&hkey, &n) != 0) {
        /* Another CPU may have created it meanwhile: per-CPU, so retry once. */
        value = gt_hist.lookup(&hkey);
        if (value)
            __sync_fetch_and_add(value, n);
        else
            gt_count(GT_STAT_HIST_FULL);
    }
}

/* Fills key for the current hit; 0 when it is not to be timed (counted). */
static __always_inline int gt_make_key(struct pt_regs *ctx, struct gt_start_key *key)
{
    int zero = 0;
    __u32 *target = gt_target.lookup(&zero);
    int status = gt_goroutine_key(ctx, target ? *target : 0, key);

    if (status == GT_KEY_NO_GOROUTINE)
        gt_count(GT_STAT_NO_GOROUTINE);
    else if (status == GT_KEY_READ_FAULT)
        gt_count(GT_STAT_READ_FAULT);
    return status == GT_KEY_OK;
}

static __always_inline __u32 gt_current_gen(void)
{
    int zero = 0;
    __u32 *gen = gt_gen.lookup(&zero);
    return gen ? *gen : 0;
}

int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_start_val val = {};
    struct gt_start_val *stale;

    if (func_id >= GT_CFG_NFUNCS || !gt_make_key(ctx, &key))
        return 0;
    gt_func_count(func_id, GT_FC_ENTRIES);
    stale = gt_starts.lookup(&key);
    if (stale) {
        gt_count(GT_STAT_STALE_STARTS);
        gt_hist_add(stale->func_id, GT_HIST_SLOT_UNWOUND, key.tgid, 1);
    }
    val.func_id = func_id;
    val.gen = gt_current_gen();
    val.start_ns = bpf_ktime_get_ns();
    if (gt_starts.update(&key, &val) != 0)
        gt_count(GT_STAT_START_UPDATE_FAILED);
    return 0;
}

int gt_return(struct pt_regs *ctx)
{
    __u64 now_ns = bpf_ktime_get_ns();
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_start_val *start;
    __u64 latency_ns;

    if (func_id >= GT_CFG_NFUNCS || !gt_make_key(ctx, &key))
        return 0;
    start = gt_starts.lookup(&key);
    if (!start) {
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    if (start->func_id != func_id) {
        /* A start left by a frame that never returned (panic): stale. */
        gt_hist_add(start->func_id, GT_HIST_SLOT_UNWOUND, key.tgid, 1);
        gt_starts.delete(&key);
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    latency_ns = now_ns - start->start_ns;
    if (start->gen == gt_current_gen())
        gt_func_count(func_id, GT_FC_RETURNS_SAME_GEN);
    gt_starts.delete(&key);
    gt_hist_add(func_id, gt_hist_bucket(latency_ns), key.tgid, 1);
    gt_hist_add(func_id, GT_HIST_SLOT_SUM, key.tgid, latency_ns);
    return 0;
}
