/* latency.bpf.c: per-goroutine call latency of Go functions, aggregated into
 * per-function log-linear histograms in the kernel.
 *
 * Two programs, each attached as plain uprobes (never uretprobes) at many
 * sites: gt_entry at each traced function's post-prologue entry site,
 * gt_return at each of its `ret` instructions. The uprobe's BPF cookie is
 * the function's id. A call is keyed by (tgid, goid, g.stack.hi - SP): the
 * goroutine survives thread migration, the distance from the stack top
 * survives stack copies and separates recursive calls. A call's start is
 * kept in its key's slot of gt_start_slots when that is free (or holds a
 * stale start of the same key), else in gt_starts (gotrace.h).
 *
 * The run's settings are in gt_config[0] (see gotrace.h), written by user
 * space before attaching; the maps sized by the number of functions get
 * their size from the loader. Nothing about a run is compiled in.
 */
#include "bpf_abi.h"
#include "gotrace.h"

GT_MAP(gt_start_slots, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_start_slot), GT_START_SLOTS, 0);
GT_MAP(gt_starts, BPF_MAP_TYPE_LRU_HASH, sizeof(struct gt_start_key), sizeof(struct gt_start_val), GT_START_ENTRIES, 0);
/* Cumulative counts; user space reports differences between reads. No
 * preallocation: an element freed by user space is never reused under a
 * program still holding it. Sized by the loader (GT_HIST_*). */
GT_MAP(gt_hist, BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct gt_hist_key), sizeof(__u64), GT_HIST_MIN_ENTRIES,
       BPF_F_NO_PREALLOC);
/* nfuncs * GT_FC_N counters, sized by the loader. */
GT_MAP(gt_func_counts, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_FC_N, 0);
GT_MAP(gt_stats, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_STAT_N, 0);
GT_MAP(gt_gen, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(__u32), 1, 0);

char _license[] SEC("license") = "GPL";

static __always_inline void gt_count(int stat)
{
    __u64 *slot = bpf_map_lookup_elem(&gt_stats, &stat);
    if (slot)
        __sync_fetch_and_add(slot, 1);
}

static __always_inline void gt_func_count(__u32 func_id, __u32 which)
{
    int index = func_id * GT_FC_N + which;
    __u64 *slot = bpf_map_lookup_elem(&gt_func_counts, &index);
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

static __always_inline __u32 gt_current_gen(void)
{
    int zero = 0;
    __u32 *gen = bpf_map_lookup_elem(&gt_gen, &zero);
    return gen ? *gen : 0;
}

/* A key's tag in gt_start_slots: a 64-bit mix of the key, never 0; its top bits are the slot's index. */
static __always_inline __u64 gt_slot_tag(const struct gt_start_key *key)
{
    __u64 h = (key->goid * 0x9E3779B97F4A7C15ULL) ^ ((__u64)key->depth * 0xC2B2AE3D27D4EB4FULL) ^ key->tgid;
    return ((h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ULL) | 1;
}

static __always_inline struct gt_start_slot *gt_slot(__u64 tag)
{
    __u32 index = (__u32)(tag >> (64 - GT_START_SLOTS_LOG2));
    return bpf_map_lookup_elem(&gt_start_slots, &index);
}

static __always_inline int gt_same_key(const struct gt_start_key *a, const struct gt_start_key *b)
{
    return a->goid == b->goid && a->tgid == b->tgid && a->depth == b->depth;
}

SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_start_val val = {};
    struct gt_start_val *stale;
    struct gt_start_slot *slot;
    __u64 tag, held;

    if (!gt_make_key(ctx, func_id, &key))
        return 0;
    gt_func_count(func_id, GT_FC_ENTRIES);
    val.func_id = func_id;
    val.gen = gt_current_gen();
    tag = gt_slot_tag(&key);
    slot = gt_slot(tag);
    if (slot) {
        held = __sync_val_compare_and_swap(&slot->tag, 0, tag);
        if (held == 0 || (held == tag && gt_same_key(&slot->key, &key))) {
            if (held != 0) {
                /* A start left under this key by a frame that never returned (panic): stale. */
                gt_count(GT_STAT_STALE_STARTS);
                gt_hist_add(slot->val.func_id, GT_HIST_SLOT_UNWOUND, key.tgid, 1);
            }
            slot->key = key;
            slot->val = val;
            slot->val.start_ns = bpf_ktime_get_ns();
            return 0;
        }
    }
    /* The slot holds another open call: the hash map. */
    stale = bpf_map_lookup_elem(&gt_starts, &key);
    if (stale) {
        gt_count(GT_STAT_STALE_STARTS);
        gt_hist_add(stale->func_id, GT_HIST_SLOT_UNWOUND, key.tgid, 1);
    }
    val.start_ns = bpf_ktime_get_ns();
    if (bpf_map_update_elem(&gt_starts, &key, &val, BPF_ANY) != 0)
        gt_count(GT_STAT_START_UPDATE_FAILED);
    return 0;
}

SEC("uprobe/gt_return")
int gt_return(struct pt_regs *ctx)
{
    __u64 now_ns = bpf_ktime_get_ns();
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_start_val start;
    struct gt_start_val *found;
    struct gt_start_slot *slot;
    __u64 latency_ns, tag;

    if (!gt_make_key(ctx, func_id, &key))
        return 0;
    tag = gt_slot_tag(&key);
    slot = gt_slot(tag);
    if (slot && slot->tag == tag && gt_same_key(&slot->key, &key)) {
        start = slot->val;
        __sync_fetch_and_and(&slot->tag, 0); /* free the slot, once read */
    } else {
        found = bpf_map_lookup_elem(&gt_starts, &key);
        if (!found) {
            gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
            return 0;
        }
        start = *found;
        bpf_map_delete_elem(&gt_starts, &key);
    }
    if (start.func_id != func_id) {
        /* A start left by a frame that never returned (panic): stale. */
        gt_hist_add(start.func_id, GT_HIST_SLOT_UNWOUND, key.tgid, 1);
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    latency_ns = now_ns - start.start_ns;
    if (start.gen == gt_current_gen())
        gt_func_count(func_id, GT_FC_RETURNS_SAME_GEN);
    gt_hist_add(func_id, gt_hist_bucket(latency_ns), key.tgid, 1);
    gt_hist_add(func_id, GT_HIST_SLOT_SUM, key.tgid, latency_ns);
    return 0;
}
