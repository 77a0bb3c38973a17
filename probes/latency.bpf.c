/* latency.bpf.c: per-goroutine call latency of Go functions, aggregated into
 * per-function log-linear histograms in the kernel.
 *
 * Two programs, each attached as plain uprobes (never uretprobes) at many
 * sites: gt_entry at each traced function's post-prologue entry site,
 * gt_return at each of its `ret` instructions. The uprobe's BPF cookie is
 * the function's id and its link's generation; every hit goes through the
 * cost guard's gt_counted_hit first (guard.h). A call is keyed by (tgid,
 * goid, g.stack.hi - SP): the goroutine survives thread migration, the
 * distance from the stack top survives stack copies and separates recursive
 * calls.
 *
 * Every call whose start was recorded is returned (in gt_hist), unwound
 * (GT_HIST_SLOT_UNWOUND) or in flight (its start still in gt_starts, where
 * user space reads it). A start found stale (its frame was unwound by a
 * panic or runtime.Goexit and another call took its key) counts as unwound.
 * A third program, gt_goexit, on runtime.goexit1, notes each goroutine's
 * exit in gt_exited: user space then removes the starts that goroutine left
 * and counts them as unwound.
 *
 * Built with -DGT_CFG_STACKS=1 (the `latency_stacks` object), each matched
 * return also feeds --slow and --by caller (probes/latency_stacks.h).
 *
 * The run's settings are in gt_config[0] (see gotrace.h), written by user
 * space before attaching; the maps sized by the number of functions get
 * their size from the loader. Nothing about a run is compiled in.
 */
#include "bpf_abi.h"
#include "gotrace.h"
#include "guard.h"

/* Not an LRU: a start is never dropped without a trace (gotrace.h, GT_START_ENTRIES). */
GT_MAP(gt_starts, BPF_MAP_TYPE_HASH, sizeof(struct gt_start_key), sizeof(struct gt_start_val), GT_START_ENTRIES, 0);
GT_MAP(gt_exited, BPF_MAP_TYPE_LRU_HASH, sizeof(struct gt_goroutine), sizeof(__u64), GT_EXITED_ENTRIES, 0);
/* Cumulative counts; user space reports differences between reads. No
 * preallocation: an element freed by user space is never reused under a
 * program still holding it. Sized by the loader (GT_HIST_*). */
GT_MAP(gt_hist, BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct gt_hist_key), sizeof(__u64), GT_HIST_MIN_ENTRIES,
       BPF_F_NO_PREALLOC);
GT_MAP(gt_stats, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_STAT_N, 0);

char _license[] SEC("license") = "GPL";

#if GT_CFG_STACKS
#include "latency_stacks.h" /* the `latency_stacks` object: --slow and --by caller (gotrace.h) */
#endif

static __always_inline void gt_count(int stat)
{
    __u64 *slot = bpf_map_lookup_elem(&gt_stats, &stat);
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
    value = bpf_map_lookup_elem(&gt_hist, &hkey);
    if (value) {
        __sync_fetch_and_add(value, n);
    } else if (bpf_map_update_elem(&gt_hist, &hkey, &n, BPF_ANY) != 0) {
        /* Another CPU may have created it meanwhile: per-CPU, so retry once. */
        value = bpf_map_lookup_elem(&gt_hist, &hkey);
        if (value)
            __sync_fetch_and_add(value, n);
        else
            gt_count(GT_STAT_HIST_FULL);
    }
}

/* Fills key for the current hit; 0 when it is not to be timed (counted). */
static __always_inline int gt_make_key(struct pt_regs *ctx, __u32 func_id, struct gt_start_key *key)
{
    int status = gt_goroutine_key(ctx, func_id, key);

    if (status == GT_KEY_NO_GOROUTINE)
        gt_count(GT_STAT_NO_GOROUTINE);
    else if (status == GT_KEY_READ_FAULT)
        gt_count(GT_STAT_READ_FAULT);
    return status == GT_KEY_OK;
}

/* A start found stale: its call was unwound (panic, runtime.Goexit) and another call took its key. Not
 * counted for a detached function: its calls running when it was detached never had their return seen. */
static __always_inline void gt_unwound(__u32 func_id, __u32 tgid)
{
    if (!gt_detached(func_id))
        gt_hist_add(func_id, GT_HIST_SLOT_UNWOUND, tgid, 1);
}

SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_start_val val = {};
    struct gt_start_val *stale;

    if (!gt_counted_hit(ctx, func_id, GT_FC_ENTRIES) || !gt_make_key(ctx, func_id, &key))
        return 0;
#if GT_CFG_STACKS
    gt_stacks_entry(ctx, func_id, key.tgid);
#endif
    stale = bpf_map_lookup_elem(&gt_starts, &key);
    if (stale) {
        gt_count(GT_STAT_STALE_STARTS);
        gt_unwound(stale->func_id, key.tgid);
    }
    val.func_id = func_id;
    val.start_ns = bpf_ktime_get_ns();
    if (bpf_map_update_elem(&gt_starts, &key, &val, BPF_ANY) != 0) {
        gt_count(GT_STAT_START_UPDATE_FAILED);
        gt_func_count(func_id, GT_FC_UNTIMED);
    }
    return 0;
}

/* At runtime.goexit1: the current goroutine is ending; whatever start it left was unwound. */
SEC("uprobe/gt_goexit")
int gt_goexit(struct pt_regs *ctx)
{
    struct gt_start_key key = {};
    struct gt_goroutine goroutine = {};
    __u64 now_ns = bpf_ktime_get_ns();

    if (!gt_make_key(ctx, 0, &key))
        return 0;
    goroutine.goid = key.goid;
    goroutine.tgid = key.tgid;
    bpf_map_update_elem(&gt_exited, &goroutine, &now_ns, BPF_ANY);
    return 0;
}

SEC("uprobe/gt_return")
int gt_return(struct pt_regs *ctx)
{
    __u64 now_ns = bpf_ktime_get_ns();
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_start_val *start;
    __u64 latency_ns;

    if (!gt_counted_hit(ctx, func_id, GT_FC_RETURNS) || !gt_make_key(ctx, func_id, &key))
        return 0;
    start = bpf_map_lookup_elem(&gt_starts, &key);
    if (!start) {
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    if (start->func_id != func_id) {
        /* A start left by a frame that was unwound (panic) and whose key this return now has. */
        gt_unwound(start->func_id, key.tgid);
        bpf_map_delete_elem(&gt_starts, &key);
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    latency_ns = now_ns - start->start_ns;
    bpf_map_delete_elem(&gt_starts, &key);
    gt_hist_add(func_id, gt_hist_bucket(latency_ns), key.tgid, 1);
    gt_hist_add(func_id, GT_HIST_SLOT_SUM, key.tgid, latency_ns);
#if GT_CFG_STACKS
    gt_stacks_return(ctx, &key, func_id, now_ns, latency_ns);
#endif
    return 0;
}
