/* guard.h: the cost guard's maps and the first step of every hit of
 * latency's and count's probes (gotrace.h, "The cost guard": what is counted
 * and which link counts a hit). Include after gotrace.h; the maps sized by
 * the number of functions get their size from the loader.
 */
#ifndef GT_GUARD_H
#define GT_GUARD_H

/* nfuncs * GT_FC_N counters, shared by the CPUs and mapped into user space's memory: the cost guard reads
 * every function's hits four times a second, which for 60,000 functions takes ~2 ms from memory and ~170 ms
 * through a per-CPU map's batch lookup. (A shared counter costs a hit tens of ns when two CPUs hit one
 * function at once; a hit itself costs 1-12 us.) */
GT_MAP(gt_func_counts, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(__u64), GT_FC_N, GT_MAP_MMAPABLE);
/* nfuncs: the generation of the links that count for each function. */
GT_MAP(gt_active, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(__u32), 1, 0);
/* nfuncs + 2: ns per entry hit of each function, then per return hit, then per hit of a fixed probe (goexit). */
GT_MAP(gt_hit_cost, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(__u64), 2, GT_MAP_MMAPABLE);
GT_MAP(gt_cost, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_COST_N, 0);

static __always_inline void gt_func_count(__u32 func_id, __u32 which)
{
    int index = func_id * GT_FC_N + which;
    __u64 *slot = bpf_map_lookup_elem(&gt_func_counts, &index);
    if (slot)
        __sync_fetch_and_add(slot, 1);
}

static __always_inline void gt_cost_add(__u32 which, __u64 n)
{
    __u64 *slot = bpf_map_lookup_elem(&gt_cost, &which);
    if (slot)
        __sync_fetch_and_add(slot, n);
}

/* Whether this hit of func_id (the cookie's low half) counts: a hit of the
 * traced process through a link of the function's active generation. When
 * it does, it is counted (which: GT_FC_ENTRIES or GT_FC_RETURNS) with its
 * cost. An entry hit of a function on probation (GT_GEN_PROBATION) is
 * counted with its cost too, and in GT_FC_PROBATION, but does not count: 0. */
static __always_inline int gt_counted_hit(struct pt_regs *ctx, __u32 func_id, __u32 which)
{
    __u32 generation = (__u32)(bpf_get_attach_cookie(ctx) >> 32);
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    __u32 *active;
    __u32 cost_index;
    __u64 *ns;
    int counts = 1;

    if (!cfg || func_id >= cfg->nfuncs)
        return 0;
    if (cfg->target_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) != cfg->target_tgid)
        return 0;
    active = bpf_map_lookup_elem(&gt_active, &func_id);
    if (!active)
        return 0;
    if (*active != generation) {
        if (which != GT_FC_ENTRIES || *active != (generation | GT_GEN_PROBATION))
            return 0;
        counts = 0;
        gt_func_count(func_id, GT_FC_PROBATION);
    }
    gt_func_count(func_id, which);
    cost_index = which == GT_FC_ENTRIES ? func_id : cfg->nfuncs;
    ns = bpf_map_lookup_elem(&gt_hit_cost, &cost_index);
    gt_cost_add(GT_COST_HITS, 1);
    if (ns)
        gt_cost_add(GT_COST_NS, *ns);
    return counts;
}

/* A hit of a probe that is no traced function's (gotrace.h, GT_COST_FIXED_*): counted with its cost. */
static __always_inline void gt_fixed_hit(void)
{
    __u32 zero = 0, cost_index;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    __u64 *ns;

    if (!cfg)
        return;
    cost_index = cfg->nfuncs + 1;
    ns = bpf_map_lookup_elem(&gt_hit_cost, &cost_index);
    gt_cost_add(GT_COST_FIXED_HITS, 1);
    if (ns)
        gt_cost_add(GT_COST_FIXED_NS, *ns);
}

/* Whether func_id's probes are detached (its calls still open were never seen to return). */
static __always_inline int gt_detached(__u32 func_id)
{
    __u32 *active = bpf_map_lookup_elem(&gt_active, &func_id);
    return active && *active == GT_GEN_DETACHED;
}

#endif /* GT_GUARD_H */
