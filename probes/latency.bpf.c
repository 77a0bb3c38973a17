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
 * calls. A call's start is kept in its key's slot of gt_start_slots when
 * that is free, else in gt_starts (gotrace.h, "gt_start_slots").
 *
 * Every call whose start was recorded is returned (in gt_hist), unwound
 * (GT_HIST_SLOT_UNWOUND) or in flight (its start still in a slot or in
 * gt_starts, where user space reads it). A start found stale (its frame was unwound by a
 * panic or runtime.Goexit and another call took its key) counts as unwound.
 * A third program, gt_goexit, on runtime.goexit1, notes each goroutine's
 * exit in the ring gt_exited: user space then removes the starts that
 * goroutine left and counts them as unwound.
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

/* Sized by the loader: start_slot_mask + 1 slots; user space reads them from memory (no copy per sweep). */
GT_MAP(gt_start_slots, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_start_slot), GT_START_SLOTS,
       GT_MAP_MMAPABLE);
GT_MAP(gt_slot_reaped, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_slot_reaped), GT_START_SLOTS, 0);
/* Not an LRU: a start is never dropped without a trace (gotrace.h, GT_START_ENTRIES). */
GT_MAP(gt_starts, BPF_MAP_TYPE_HASH, sizeof(struct gt_start_key), sizeof(struct gt_start_val), GT_START_ENTRIES, 0);
/* The last goroutine exits (gotrace.h, gt_exit_rec) and their count; user space reads both from memory. */
GT_MAP(gt_exited, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_exit_rec), GT_EXITED_ENTRIES, GT_MAP_MMAPABLE);
GT_MAP(gt_exited_next, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(__u64), 1, GT_MAP_MMAPABLE);
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

/* A key's tag in gt_start_slots (gotrace.h): a 64-bit mix of the key, never 0. */
static __always_inline __u64 gt_slot_tag(const struct gt_start_key *key)
{
    __u64 h = (key->goid * 0x9E3779B97F4A7C15ULL) ^ ((__u64)key->depth * 0xC2B2AE3D27D4EB4FULL) ^ key->tgid;
    return ((h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ULL) | 1;
}

static __always_inline struct gt_start_slot *gt_slot(__u64 tag, __u32 *index)
{
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);

    if (!cfg)
        return 0;
    *index = (__u32)(tag >> 32) & cfg->start_slot_mask;
    return bpf_map_lookup_elem(&gt_start_slots, index);
}

static __always_inline int gt_same_key(const struct gt_start_key *a, const struct gt_start_key *b)
{
    return a->goid == b->goid && a->tgid == b->tgid && a->depth == b->depth;
}

/* Whether user space has accounted for the slot's holder (tag, start_ns): it may be taken over. */
static __always_inline int gt_slot_reaped_holder(__u32 index, __u64 tag, __u64 start_ns)
{
    struct gt_slot_reaped *reaped = bpf_map_lookup_elem(&gt_slot_reaped, &index);
    return reaped && reaped->tag == tag && reaped->start_ns == start_ns;
}

/* An entry has just claimed its slot: a start of its key left in gt_starts (its call was unwound) is stale.
 * Looked up only when gt_starts may hold a start of this slot's keys. */
static __always_inline void gt_drop_hashed_start(__u32 index, struct gt_start_slot *slot, struct gt_start_key *key)
{
    struct gt_slot_reaped *reaped;
    struct gt_start_val *stale;
    __u64 held = slot->hash_added - slot->hash_deleted;
    __u32 stale_func_id;

    if (held == 0)
        return;
    reaped = bpf_map_lookup_elem(&gt_slot_reaped, &index);
    if (reaped && held <= reaped->hash_removed)
        return;
    stale = bpf_map_lookup_elem(&gt_starts, key);
    if (!stale)
        return;
    stale_func_id = stale->func_id;
    if (bpf_map_delete_elem(&gt_starts, key) == 0) {
        __sync_fetch_and_add(&slot->hash_deleted, 1);
        gt_count(GT_STAT_STALE_STARTS);
        gt_unwound(stale_func_id, key->tgid);
    }
}

/* Puts the start in the key's slot; 0 when the slot holds another open call. */
static __always_inline int gt_slot_start(struct gt_start_key *key, __u64 tag, __u32 func_id)
{
    struct gt_start_slot *slot;
    __u32 index = 0;
    __u64 held;

    slot = gt_slot(tag, &index);
    if (!slot)
        return 0;
    held = __sync_val_compare_and_swap(&slot->tag, 0, tag);
    if (held != 0) {
        int own = held == tag && gt_same_key(&slot->key, key); /* a start of this key: its call was unwound */
        __u32 stale_func_id = slot->val.func_id;

        if (!own && !gt_slot_reaped_holder(index, held, slot->val.start_ns))
            return 0;
        /* Free it (only one CPU can), then claim it like a free one. */
        if (__sync_val_compare_and_swap(&slot->tag, held, 0) != held)
            return 0;
        if (own) {
            gt_count(GT_STAT_STALE_STARTS);
            gt_unwound(stale_func_id, key->tgid);
        }
        if (__sync_val_compare_and_swap(&slot->tag, 0, tag) != 0)
            return 0;
    }
    gt_drop_hashed_start(index, slot, key);
    slot->val.func_id = func_id;
    slot->val.start_ns = bpf_ktime_get_ns();
    asm volatile("" ::: "memory"); /* the key last: user space takes a slot whose key gives its tag as whole */
    slot->key = *key;
    return 1;
}

SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_start_val val = {};
    struct gt_start_val *stale;
    struct gt_start_slot *slot;
    __u32 index = 0;
    __u64 tag;

    if (!gt_counted_hit(ctx, func_id, GT_FC_ENTRIES) || !gt_make_key(ctx, func_id, &key))
        return 0;
#if GT_CFG_STACKS
    gt_stacks_entry(ctx, func_id, key.tgid);
#endif
    tag = gt_slot_tag(&key);
    if (gt_slot_start(&key, tag, func_id))
        return 0;
    /* The slot holds another open call: gt_starts. */
    slot = gt_slot(tag, &index);
    stale = bpf_map_lookup_elem(&gt_starts, &key);
    if (stale) {
        gt_count(GT_STAT_STALE_STARTS);
        gt_unwound(stale->func_id, key.tgid);
    }
    val.func_id = func_id;
    val.start_ns = bpf_ktime_get_ns();
    /* Replacing the stale start keeps gt_starts' count of this slot's keys; a new key adds one (counted
     * first), also when user space removed the stale start meanwhile (a detached function's). */
    if (stale && bpf_map_update_elem(&gt_starts, &key, &val, BPF_EXIST) == 0)
        return 0;
    if (slot)
        __sync_fetch_and_add(&slot->hash_added, 1);
    if (bpf_map_update_elem(&gt_starts, &key, &val, BPF_ANY) != 0) {
        if (slot)
            __sync_fetch_and_add(&slot->hash_deleted, 1);
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
    struct gt_exit_rec *rec;
    __u64 now_ns = bpf_ktime_get_ns();
    __u64 *next, seq;
    __u32 zero = 0, index;

    gt_fixed_hit(); /* the trap was paid, whatever follows */
    if (!gt_make_key(ctx, 0, &key))
        return 0;
    next = bpf_map_lookup_elem(&gt_exited_next, &zero);
    if (!next)
        return 0;
    seq = __sync_fetch_and_add(next, 1);
    index = (__u32)seq & (GT_EXITED_ENTRIES - 1);
    rec = bpf_map_lookup_elem(&gt_exited, &index);
    if (!rec)
        return 0;
    rec->goid = key.goid;
    rec->tgid = key.tgid;
    rec->exit_ns = now_ns;
    __sync_lock_test_and_set(&rec->seq, seq + 1);
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
    __u32 index = 0;
    __u64 latency_ns, tag;

    if (!gt_counted_hit(ctx, func_id, GT_FC_RETURNS) || !gt_make_key(ctx, func_id, &key))
        return 0;
    tag = gt_slot_tag(&key);
    slot = gt_slot(tag, &index);
    if (slot && slot->tag == tag && gt_same_key(&slot->key, &key)) {
        start = slot->val;
        /* Free the slot, once read; a slot taken over meanwhile (reaped by user space) was not this call's. */
        if (__sync_val_compare_and_swap(&slot->tag, tag, 0) != tag) {
            gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
            return 0;
        }
    } else {
        found = bpf_map_lookup_elem(&gt_starts, &key);
        if (!found) {
            gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
            return 0;
        }
        start = *found;
        if (bpf_map_delete_elem(&gt_starts, &key) == 0 && slot)
            __sync_fetch_and_add(&slot->hash_deleted, 1);
    }
    if (start.func_id != func_id) {
        /* A start left by a frame that was unwound (panic) and whose key this return now has. */
        gt_unwound(start.func_id, key.tgid);
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    latency_ns = now_ns - start.start_ns;
    gt_hist_add(func_id, gt_hist_bucket(latency_ns), key.tgid, 1);
    gt_hist_add(func_id, GT_HIST_SLOT_SUM, key.tgid, latency_ns);
#if GT_CFG_STACKS
    gt_stacks_return(ctx, &key, func_id, now_ns, latency_ns);
#endif
    return 0;
}
