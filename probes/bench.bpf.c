/* bench.bpf.c: latency.bpf.c's per-call work in stages and variants, for
 * scripts/bench's decomposition only (built by gotrace.bpf.compiler as the
 * bench* builds, never shipped in the package).
 *
 * Two programs like latency's, gt_entry and gt_return, attached the same
 * way (the cookie is the function id). GT_BENCH_STAGE, given at build time,
 * says how much of latency's work they do:
 *
 *   1  nothing (empty programs: on perf-event links, the kernel's floor)
 *   3  the cookie, gt_config, the process filter and the g register
 *   4  3 + goid and stack.hi read from g: the goroutine key
 *   5  4 + the start map: entry stores the time, return finds and deletes it
 *   6  latency.bpf.c's whole work (as of this file), with these variants:
 *        GT_BENCH_ONE_READ=1    goid and stack.hi in one bpf_probe_read_user of the span between them
 *                               (the shipped gt_goroutine_key; without it, the two reads of before)
 *        GT_BENCH_START_HASH=1  the start map a preallocated plain hash, not an LRU hash
 *        GT_BENCH_HIST=1        one gt_hist update per call: each bucket's value is {count, sum_ns}
 *                               (the SUM slot becomes user space's sum over buckets)
 *        GT_BENCH_HIST=2        gt_hist a per-CPU array indexed by function and bucket (no tgid),
 *                               one update per call ({count, sum_ns} values)
 *        GT_BENCH_NO_FUNC_COUNTS=1  no per-function entry/return counters, no generation lookup
 *        GT_BENCH_START_ARRAY=1 the start map a direct-mapped array indexed by a hash of the key (a
 *                               colliding open call is lost: measures what the hash map costs, no more)
 *        GT_BENCH_START_ARRAY=2 that array in front of the start map: an entry claims its slot with a
 *                               compare-and-swap of a tag (a hash of the key), and uses the map only when
 *                               the slot is another open call's; a return looks in its slot, then the map
 *        GT_BENCH_NOEXIST=1     entry inserts its start with BPF_NOEXIST and looks for a stale start
 *                               only when that fails (one hash operation per entry, not two)
 *        GT_BENCH_NO_KTIME=1    no bpf_ktime_get_ns (latencies wrong: measures what the clock costs)
 *        GT_BENCH_GUARD=1       the cost guard's step of every hit (guard.h's gt_counted_hit: generation check,
 *                               shared per-function counter, per-CPU cost totals) instead of the per-CPU
 *                               counters and generation of issue 16's start (loaded as a DETACHABLE program)
 *        GT_BENCH_GUARD=2       that guard without its per-CPU cost totals
 */
#include "bpf_abi.h"
#include "gotrace.h"

#ifndef GT_BENCH_STAGE
#error "bench.bpf.c: compile with -DGT_BENCH_STAGE=1..6"
#endif
#ifndef GT_BENCH_ONE_READ
#define GT_BENCH_ONE_READ 0
#endif
#ifndef GT_BENCH_START_HASH
#define GT_BENCH_START_HASH 0
#endif
#ifndef GT_BENCH_HIST
#define GT_BENCH_HIST 0
#endif
#ifndef GT_BENCH_NO_FUNC_COUNTS
#define GT_BENCH_NO_FUNC_COUNTS 0
#endif
#ifndef GT_BENCH_START_ARRAY
#define GT_BENCH_START_ARRAY 0
#endif
#ifndef GT_BENCH_NO_KTIME
#define GT_BENCH_NO_KTIME 0
#endif
#ifndef GT_BENCH_GUARD
#define GT_BENCH_GUARD 0
#endif
#ifndef GT_BENCH_NOEXIST
#define GT_BENCH_NOEXIST 0
#endif
#define GT_BENCH_BPF_NOEXIST 1
#if GT_BENCH_NO_KTIME
#define gt_bench_now() 1000ULL
#else
#define gt_bench_now() bpf_ktime_get_ns()
#endif

char _license[] SEC("license") = "GPL";

#if GT_BENCH_STAGE == 1

SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    return 0;
}

SEC("uprobe/gt_return")
int gt_return(struct pt_regs *ctx)
{
    return 0;
}

#else /* stages 3-6 */

#define GT_BENCH_FUNCS 16
/* Its own per-function counter layout (latency's as of issue 16's start), so that gotrace.h may change. */
#define GT_BENCH_FC_ENTRIES 0
#define GT_BENCH_FC_RETURNS_SAME_GEN 1
#define GT_BENCH_FC_N 2
/* Its own start value (latency's as of issue 16's start). */
struct gt_bench_start_val {
    __u64 start_ns;
    __u32 func_id;
    __u32 gen;
};

GT_MAP(gt_stats, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_STAT_N, 0);
#if GT_BENCH_START_ARRAY
struct gt_bench_slot {
#if GT_BENCH_START_ARRAY == 2
    __u64 tag; /* 0: free; else gt_slot_tag() of the open call held */
#endif
    struct gt_start_key key;
    struct gt_bench_start_val val;
};
#define GT_BENCH_SLOTS_LOG2 16
GT_MAP(gt_start_slots, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_bench_slot), 1 << GT_BENCH_SLOTS_LOG2, 0);
#endif
#if GT_BENCH_START_HASH
GT_MAP(gt_starts, BPF_MAP_TYPE_HASH, sizeof(struct gt_start_key), sizeof(struct gt_bench_start_val), GT_START_ENTRIES, 0);
#else
GT_MAP(gt_starts, BPF_MAP_TYPE_LRU_HASH, sizeof(struct gt_start_key), sizeof(struct gt_bench_start_val), GT_START_ENTRIES, 0);
#endif
struct gt_bench_pair {
    __u64 count;
    __u64 sum_ns;
};
#if GT_BENCH_HIST == 0
GT_MAP(gt_hist, BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct gt_hist_key), sizeof(__u64), GT_HIST_MIN_ENTRIES,
       BPF_F_NO_PREALLOC);
#elif GT_BENCH_HIST == 1
GT_MAP(gt_hist, BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct gt_hist_key), sizeof(struct gt_bench_pair),
       GT_HIST_MIN_ENTRIES, BPF_F_NO_PREALLOC);
#else
#define GT_BENCH_SLOTS (GT_HIST_NBUCKETS + 2)
GT_MAP(gt_hist, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(struct gt_bench_pair),
       GT_BENCH_FUNCS * GT_BENCH_SLOTS, 0);
#endif
#if GT_BENCH_GUARD
#include "guard.h"
#else
GT_MAP(gt_func_counts, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_BENCH_FUNCS * GT_BENCH_FC_N, 0);
#endif
GT_MAP(gt_gen, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(__u32), 1, 0);

static __always_inline void gt_count(int stat)
{
    __u64 *slot = bpf_map_lookup_elem(&gt_stats, &stat);
    if (slot)
        __sync_fetch_and_add(slot, 1);
}

#if GT_BENCH_ONE_READ
#define gt_bench_key gt_goroutine_key /* the shipped key: one read of the span goid..stack.hi (gotrace.h) */
#else
/* The key as it was before issue 16: goid and stack.hi in two reads of g (what rows 4-6 measure). */
static __always_inline int gt_bench_key(struct pt_regs *ctx, __u32 func_id, struct gt_start_key *key)
{
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    __u64 g = GT_G_REG(ctx);
    __u64 tgid = bpf_get_current_pid_tgid() >> 32;
    __u64 goid = 0, stack_hi = 0;

    if (!cfg || func_id >= cfg->nfuncs)
        return GT_KEY_OTHER_PROCESS;
    if (cfg->target_tgid != 0 && tgid != cfg->target_tgid)
        return GT_KEY_OTHER_PROCESS;
    if (g == 0)
        return GT_KEY_NO_GOROUTINE;
    if (bpf_probe_read_user(&goid, sizeof(goid), (void *)(g + cfg->goid_offset)) != 0 ||
        bpf_probe_read_user(&stack_hi, sizeof(stack_hi), (void *)(g + cfg->stack_hi_offset)) != 0)
        return GT_KEY_READ_FAULT;
    key->goid = goid ? goid : (g | (1ULL << 63));
    key->tgid = (__u32)tgid;
    key->depth = (__u32)(stack_hi - GT_SP_REG(ctx));
    return GT_KEY_OK;
}
#endif

static __always_inline int gt_make_key(struct pt_regs *ctx, __u32 func_id, struct gt_start_key *key)
{
#if GT_BENCH_STAGE == 3
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    __u64 g = GT_G_REG(ctx);
    __u64 tgid = bpf_get_current_pid_tgid() >> 32;

    if (!cfg || func_id >= cfg->nfuncs)
        return 0;
    if (cfg->target_tgid != 0 && tgid != cfg->target_tgid)
        return 0;
    if (g == 0) {
        gt_count(GT_STAT_NO_GOROUTINE);
        return 0;
    }
    key->goid = g;
    key->tgid = (__u32)tgid;
    return 1;
#else
    int status = gt_bench_key(ctx, func_id, key);

    if (status == GT_KEY_NO_GOROUTINE)
        gt_count(GT_STAT_NO_GOROUTINE);
    else if (status == GT_KEY_READ_FAULT)
        gt_count(GT_STAT_READ_FAULT);
    return status == GT_KEY_OK;
#endif
}

#if GT_BENCH_STAGE == 6

#if GT_BENCH_GUARD
/* The cost guard's step of every hit (guard.h) instead of the counters below. */
static __always_inline int gt_bench_hit(struct pt_regs *ctx, __u32 func_id, __u32 which)
{
#if GT_BENCH_GUARD == 1
    return gt_counted_hit(ctx, func_id, which);
#else
    /* gt_counted_hit without the per-CPU cost totals (user space could compute them from gt_func_counts) */
    __u32 generation = (__u32)(bpf_get_attach_cookie(ctx) >> 32);
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    __u32 *active;

    if (!cfg || func_id >= cfg->nfuncs)
        return 0;
    if (cfg->target_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) != cfg->target_tgid)
        return 0;
    active = bpf_map_lookup_elem(&gt_active, &func_id);
    if (!active || *active != generation)
        return 0;
    gt_func_count(func_id, which);
    return 1;
#endif
}
#else
#define gt_bench_hit(ctx, func_id, which) 1
#endif

static __always_inline void gt_bench_func_count(__u32 func_id, __u32 which)
{
#if !GT_BENCH_NO_FUNC_COUNTS && !GT_BENCH_GUARD
    int index = func_id * GT_BENCH_FC_N + which;
    __u64 *slot = bpf_map_lookup_elem(&gt_func_counts, &index);
    if (slot)
        __sync_fetch_and_add(slot, 1);
#endif
}

static __always_inline __u32 gt_current_gen(void)
{
#if GT_BENCH_NO_FUNC_COUNTS || GT_BENCH_GUARD
    return 0;
#else
    int zero = 0;
    __u32 *gen = bpf_map_lookup_elem(&gt_gen, &zero);
    return gen ? *gen : 0;
#endif
}

#if GT_BENCH_HIST == 0
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
        value = bpf_map_lookup_elem(&gt_hist, &hkey);
        if (value)
            __sync_fetch_and_add(value, n);
        else
            gt_count(GT_STAT_HIST_FULL);
    }
}

static __always_inline void gt_hist_call(__u32 func_id, __u32 tgid, __u64 latency_ns)
{
    gt_hist_add(func_id, gt_hist_bucket(latency_ns), tgid, 1);
    gt_hist_add(func_id, GT_HIST_SLOT_SUM, tgid, latency_ns);
}

static __always_inline void gt_hist_unwound(__u32 func_id, __u32 tgid)
{
    gt_hist_add(func_id, GT_HIST_SLOT_UNWOUND, tgid, 1);
}
#elif GT_BENCH_HIST == 1
/* gt_hist[{func_id, slot, tgid}] += {count, sum_ns}; per-CPU, so plain adds. */
static __always_inline void gt_hist_pair(__u32 func_id, __u32 slot, __u32 tgid, __u64 count, __u64 sum_ns)
{
    struct gt_hist_key hkey = {};
    struct gt_bench_pair *value;
    struct gt_bench_pair init = {count, sum_ns};

    hkey.func_id = func_id;
    hkey.bucket = slot;
    hkey.tgid = tgid;
    value = bpf_map_lookup_elem(&gt_hist, &hkey);
    if (value) {
        value->count += count;
        value->sum_ns += sum_ns;
    } else if (bpf_map_update_elem(&gt_hist, &hkey, &init, BPF_ANY) != 0) {
        value = bpf_map_lookup_elem(&gt_hist, &hkey);
        if (value) {
            value->count += count;
            value->sum_ns += sum_ns;
        } else {
            gt_count(GT_STAT_HIST_FULL);
        }
    }
}

static __always_inline void gt_hist_call(__u32 func_id, __u32 tgid, __u64 latency_ns)
{
    gt_hist_pair(func_id, gt_hist_bucket(latency_ns), tgid, 1, latency_ns);
}

static __always_inline void gt_hist_unwound(__u32 func_id, __u32 tgid)
{
    gt_hist_pair(func_id, GT_HIST_SLOT_UNWOUND, tgid, 1, 0);
}
#else
static __always_inline void gt_hist_slot(__u32 func_id, __u32 slot, __u64 sum_ns)
{
    __u32 index = func_id * GT_BENCH_SLOTS + slot;
    struct gt_bench_pair *value = bpf_map_lookup_elem(&gt_hist, &index);

    if (value) {
        value->count += 1;
        value->sum_ns += sum_ns;
    } else {
        gt_count(GT_STAT_HIST_FULL);
    }
}

static __always_inline void gt_hist_call(__u32 func_id, __u32 tgid, __u64 latency_ns)
{
    gt_hist_slot(func_id, gt_hist_bucket(latency_ns), latency_ns);
}

static __always_inline void gt_hist_unwound(__u32 func_id, __u32 tgid)
{
    gt_hist_slot(func_id, GT_HIST_SLOT_UNWOUND, 0);
}
#endif

#if GT_BENCH_START_ARRAY
static __always_inline __u64 gt_slot_tag(const struct gt_start_key *key)
{
    __u64 h = (key->goid * 0x9E3779B97F4A7C15ULL) ^ ((__u64)key->depth * 0xC2B2AE3D27D4EB4FULL) ^ key->tgid;
    return (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ULL | 1;
}

static __always_inline __u32 gt_slot_index(const struct gt_start_key *key)
{
    return (__u32)(gt_slot_tag(key) >> (64 - GT_BENCH_SLOTS_LOG2));
}

static __always_inline int gt_same_key(const struct gt_start_key *a, const struct gt_start_key *b)
{
    return a->goid == b->goid && a->tgid == b->tgid && a->depth == b->depth;
}
#endif

#if GT_BENCH_START_ARRAY == 2
SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_bench_start_val val = {};
    struct gt_bench_start_val *stale;
    struct gt_bench_slot *slot;
    __u64 tag, old;
    __u32 index;

    if (!gt_bench_hit(ctx, func_id, GT_FC_ENTRIES) || !gt_make_key(ctx, func_id, &key))
        return 0;
    gt_bench_func_count(func_id, GT_BENCH_FC_ENTRIES);
    val.func_id = func_id;
    val.gen = gt_current_gen();
    tag = gt_slot_tag(&key);
    index = (__u32)(tag >> (64 - GT_BENCH_SLOTS_LOG2));
    slot = bpf_map_lookup_elem(&gt_start_slots, &index);
    if (slot) {
        old = __sync_val_compare_and_swap(&slot->tag, 0, tag);
        if (old == 0 || (old == tag && gt_same_key(&slot->key, &key))) {
            if (old != 0) {
                gt_count(GT_STAT_STALE_STARTS);
                gt_hist_unwound(slot->val.func_id, key.tgid);
            }
            slot->key = key;
            slot->val = val;
            slot->val.start_ns = gt_bench_now();
            return 0;
        }
    }
    stale = bpf_map_lookup_elem(&gt_starts, &key);
    if (stale) {
        gt_count(GT_STAT_STALE_STARTS);
        gt_hist_unwound(stale->func_id, key.tgid);
    }
    val.start_ns = gt_bench_now();
    if (bpf_map_update_elem(&gt_starts, &key, &val, BPF_ANY) != 0)
        gt_count(GT_STAT_START_UPDATE_FAILED);
    return 0;
}

SEC("uprobe/gt_return")
int gt_return(struct pt_regs *ctx)
{
    __u64 now_ns = gt_bench_now();
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_bench_start_val *start;
    struct gt_bench_start_val held;
    struct gt_bench_slot *slot;
    __u64 tag;
    __u32 index;

    if (!gt_bench_hit(ctx, func_id, GT_FC_RETURNS) || !gt_make_key(ctx, func_id, &key))
        return 0;
    tag = gt_slot_tag(&key);
    index = (__u32)(tag >> (64 - GT_BENCH_SLOTS_LOG2));
    slot = bpf_map_lookup_elem(&gt_start_slots, &index);
    if (slot && slot->tag == tag && gt_same_key(&slot->key, &key)) {
        held = slot->val;
        __sync_fetch_and_and(&slot->tag, 0); /* free the slot, after reading it */
        start = &held;
    } else {
        start = bpf_map_lookup_elem(&gt_starts, &key);
        if (!start) {
            gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
            return 0;
        }
        held = *start;
        bpf_map_delete_elem(&gt_starts, &key);
    }
    if (held.func_id != func_id) {
        gt_hist_unwound(held.func_id, key.tgid);
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    if (held.gen == gt_current_gen())
        gt_bench_func_count(func_id, GT_BENCH_FC_RETURNS_SAME_GEN);
    gt_hist_call(func_id, key.tgid, now_ns - held.start_ns);
    return 0;
}

#elif GT_BENCH_START_ARRAY == 1

SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_bench_slot *slot;
    __u32 index;

    if (!gt_bench_hit(ctx, func_id, GT_FC_ENTRIES) || !gt_make_key(ctx, func_id, &key))
        return 0;
    gt_bench_func_count(func_id, GT_BENCH_FC_ENTRIES);
    index = gt_slot_index(&key);
    slot = bpf_map_lookup_elem(&gt_start_slots, &index);
    if (!slot)
        return 0;
    if (slot->val.start_ns && gt_same_key(&slot->key, &key)) {
        gt_count(GT_STAT_STALE_STARTS);
        gt_hist_unwound(slot->val.func_id, key.tgid);
    }
    slot->key = key;
    slot->val.func_id = func_id;
    slot->val.gen = gt_current_gen();
    slot->val.start_ns = gt_bench_now();
    return 0;
}

SEC("uprobe/gt_return")
int gt_return(struct pt_regs *ctx)
{
    __u64 now_ns = gt_bench_now();
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_bench_slot *slot;
    __u64 latency_ns;
    __u32 index;

    if (!gt_bench_hit(ctx, func_id, GT_FC_RETURNS) || !gt_make_key(ctx, func_id, &key))
        return 0;
    index = gt_slot_index(&key);
    slot = bpf_map_lookup_elem(&gt_start_slots, &index);
    if (!slot || !slot->val.start_ns || !gt_same_key(&slot->key, &key)) {
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    if (slot->val.func_id != func_id) {
        gt_hist_unwound(slot->val.func_id, key.tgid);
        slot->val.start_ns = 0;
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    latency_ns = now_ns - slot->val.start_ns;
    if (slot->val.gen == gt_current_gen())
        gt_bench_func_count(func_id, GT_BENCH_FC_RETURNS_SAME_GEN);
    slot->val.start_ns = 0;
    gt_hist_call(func_id, key.tgid, latency_ns);
    return 0;
}

#else /* the start map */

SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_bench_start_val val = {};
    struct gt_bench_start_val *stale;

    if (!gt_bench_hit(ctx, func_id, GT_FC_ENTRIES) || !gt_make_key(ctx, func_id, &key))
        return 0;
    gt_bench_func_count(func_id, GT_BENCH_FC_ENTRIES);
#if GT_BENCH_NOEXIST
    val.func_id = func_id;
    val.gen = gt_current_gen();
    val.start_ns = gt_bench_now();
    if (bpf_map_update_elem(&gt_starts, &key, &val, GT_BENCH_BPF_NOEXIST) == 0)
        return 0;
#endif
    stale = bpf_map_lookup_elem(&gt_starts, &key);
    if (stale) {
        gt_count(GT_STAT_STALE_STARTS);
        gt_hist_unwound(stale->func_id, key.tgid);
    }
    val.func_id = func_id;
    val.gen = gt_current_gen();
    val.start_ns = gt_bench_now();
    if (bpf_map_update_elem(&gt_starts, &key, &val, BPF_ANY) != 0)
        gt_count(GT_STAT_START_UPDATE_FAILED);
    return 0;
}

SEC("uprobe/gt_return")
int gt_return(struct pt_regs *ctx)
{
    __u64 now_ns = gt_bench_now();
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};
    struct gt_bench_start_val *start;
    __u64 latency_ns;

    if (!gt_bench_hit(ctx, func_id, GT_FC_RETURNS) || !gt_make_key(ctx, func_id, &key))
        return 0;
    start = bpf_map_lookup_elem(&gt_starts, &key);
    if (!start) {
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    if (start->func_id != func_id) {
        gt_hist_unwound(start->func_id, key.tgid);
        bpf_map_delete_elem(&gt_starts, &key);
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    latency_ns = now_ns - start->start_ns;
    if (start->gen == gt_current_gen())
        gt_bench_func_count(func_id, GT_BENCH_FC_RETURNS_SAME_GEN);
    bpf_map_delete_elem(&gt_starts, &key);
    gt_hist_call(func_id, key.tgid, latency_ns);
    return 0;
}
#endif /* the start map */

#else /* stages 3-5 */

SEC("uprobe/gt_entry")
int gt_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};

    if (!gt_make_key(ctx, func_id, &key))
        return 0;
#if GT_BENCH_STAGE >= 5
    struct gt_bench_start_val val = {};
    val.func_id = func_id;
    val.start_ns = bpf_ktime_get_ns();
    if (bpf_map_update_elem(&gt_starts, &key, &val, BPF_ANY) != 0)
        gt_count(GT_STAT_START_UPDATE_FAILED);
#endif
    return 0;
}

SEC("uprobe/gt_return")
int gt_return(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);
    struct gt_start_key key = {};

    if (!gt_make_key(ctx, func_id, &key))
        return 0;
#if GT_BENCH_STAGE >= 5
    __u64 now_ns = bpf_ktime_get_ns();
    struct gt_bench_start_val *start = bpf_map_lookup_elem(&gt_starts, &key);
    if (!start) {
        gt_count(GT_STAT_RETURNS_WITHOUT_ENTRY);
        return 0;
    }
    if (now_ns < start->start_ns)
        gt_count(GT_STAT_READ_FAULT);
    bpf_map_delete_elem(&gt_starts, &key);
#endif
    return 0;
}

#endif /* stage */
#endif /* stages 3-6 */
