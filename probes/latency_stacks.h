/* latency_stacks.h: the part of latency.bpf.c built only into the `latency_stacks` object
 * (-DGT_CFG_STACKS=1): slow calls with their goroutine's return addresses, and histograms
 * per caller. See gotrace.h, "latency: slow calls and callers". gt_return calls
 * gt_stacks_return() once a call is matched; nothing else of the plain program changes.
 */
#ifndef GT_LATENCY_STACKS_H
#define GT_LATENCY_STACKS_H

GT_MAP(gt_slow_events, BPF_MAP_TYPE_RINGBUF, 0, 0, GT_SLOW_RINGBUF_PAGES * 4096, 0);
GT_MAP(gt_slow_rate, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_slow_rate), 1, 0);
GT_MAP(gt_slow_stats, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_SSTAT_N, 0);
GT_MAP(gt_entry_ips, BPF_MAP_TYPE_LRU_HASH, sizeof(struct gt_func_process), sizeof(__u64), GT_ENTRY_IPS_ENTRIES, 0);
/* Cumulative, as gt_hist; sized by the loader like it. */
GT_MAP(gt_caller_hist, BPF_MAP_TYPE_PERCPU_HASH, sizeof(struct gt_caller_key), sizeof(__u64), GT_HIST_MIN_ENTRIES,
       BPF_F_NO_PREALLOC);

#if GT_CFG_ARCH == GT_ARCH_AMD64
#define GT_FP_REG(ctx) ((ctx)->bp)
#else
#define GT_FP_REG(ctx) ((ctx)->regs[29])
#endif

static __always_inline void gt_slow_count(int stat)
{
    __u64 *slot = bpf_map_lookup_elem(&gt_slow_stats, &stat);
    if (slot)
        __sync_fetch_and_add(slot, 1);
}

/* The caller's return address at a `ret`: the word at SP (amd64), the link register (arm64). */
static __always_inline int gt_caller_return_address(struct pt_regs *ctx, __u64 *ra)
{
#if GT_CFG_ARCH == GT_ARCH_AMD64
    return bpf_probe_read_user(ra, sizeof(*ra), (void *)GT_SP_REG(ctx));
#else
    *ra = ctx->regs[30];
    return 0;
#endif
}

/* Counts a returned call into gt_caller_hist under its caller. */
static __always_inline void gt_caller_add(struct pt_regs *ctx, __u32 func_id, __u32 bucket, __u64 entry_ip)
{
    struct gt_caller_key ckey = {};
    __u64 one = 1;
    __u64 *slot;
    __u64 ra = 0;

    if (gt_caller_return_address(ctx, &ra) != 0) {
        gt_slow_count(GT_SSTAT_STACK_FAULT);
        return;
    }
    ckey.func_id = func_id;
    ckey.bucket = bucket;
    ckey.caller = ra - entry_ip;
    slot = bpf_map_lookup_elem(&gt_caller_hist, &ckey);
    if (slot) {
        __sync_fetch_and_add(slot, 1);
    } else if (bpf_map_update_elem(&gt_caller_hist, &ckey, &one, BPF_ANY) != 0) {
        slot = bpf_map_lookup_elem(&gt_caller_hist, &ckey);
        if (slot)
            __sync_fetch_and_add(slot, 1);
        else
            gt_slow_count(GT_SSTAT_CALLER_FULL);
    }
}

/* True when the rate limit lets one more slow call through in this one-second window. */
static __always_inline int gt_slow_rate_allows(__u32 max_rate, __u64 now_ns)
{
    struct gt_slow_rate *rate;
    int zero = 0;

    if (max_rate == 0)
        return 1;
    rate = bpf_map_lookup_elem(&gt_slow_rate, &zero);
    if (!rate)
        return 1;
    if (now_ns - rate->window_start_ns >= 1000000000ULL) {
        rate->window_start_ns = now_ns;
        rate->count = 0;
    }
    return __sync_fetch_and_add(&rate->count, 1) < max_rate;
}

/* Sends a slow call with its goroutine's return addresses (gotrace.h): [SP] (or LR), then the
 * frame-pointer chain, inside the goroutine's stack. */
static __always_inline void gt_slow_send(struct pt_regs *ctx, struct gt_config *cfg, struct gt_start_key *key,
                                         __u32 func_id, __u64 entry_ip, __u64 end_ns, __u64 latency_ns)
{
    __u32 depth = cfg->stack_depth;
    __u64 sp = GT_SP_REG(ctx);
    __u64 fp = GT_FP_REG(ctx);
    __u64 stack_hi = sp + key->depth;
    struct gt_slow_event *event;
    __u32 n = 0;

    if (!gt_slow_rate_allows(cfg->slow_rate, end_ns)) {
        gt_slow_count(GT_SSTAT_RATE_LIMITED);
        return;
    }
    event = bpf_ringbuf_reserve(&gt_slow_events, sizeof(*event), 0);
    if (!event) {
        gt_slow_count(GT_SSTAT_RINGBUF_FULL);
        return;
    }
    event->end_ns = end_ns;
    event->latency_ns = latency_ns;
    event->goid = key->goid;
    event->entry_ip = entry_ip;
    event->tgid = key->tgid;
    event->func_id = func_id;
    event->reserved = 0;
    if (depth > 0) {
        if (gt_caller_return_address(ctx, &event->pcs[0]) == 0)
            n = 1;
        else
            gt_slow_count(GT_SSTAT_STACK_FAULT);
    }
    for (__u32 i = 1; i < GT_SLOW_MAX_DEPTH; i++) {
        __u64 frame[2]; /* the saved frame pointer, then the return address */

        if (n != i || i >= depth)
            break;
        /* inside the goroutine's stack; on arm64 the caller's frame pointer is 8 below SP at the `ret` */
        if (fp + 16 <= sp || fp + sizeof(frame) > stack_hi || (fp & 7))
            break;
        if (bpf_probe_read_user(frame, sizeof(frame), (void *)fp) != 0) {
            gt_slow_count(GT_SSTAT_STACK_FAULT);
            break;
        }
        if (frame[1] == 0)
            break;
        event->pcs[i] = frame[1];
        n = i + 1;
        if (frame[0] <= fp)
            break;
        fp = frame[0];
    }
    event->nframes = n;
    bpf_ringbuf_submit(event, 0);
    gt_slow_count(GT_SSTAT_EVENTS);
}

/* The hook in gt_entry: keeps the entry site's runtime address of (func_id, tgid). */
static __always_inline void gt_stacks_entry(struct pt_regs *ctx, __u32 func_id, __u32 tgid)
{
    struct gt_func_process fp = {.func_id = func_id, .tgid = tgid};
    __u64 ip = PT_REGS_IP(ctx);
    __u64 *known = bpf_map_lookup_elem(&gt_entry_ips, &fp);

    if (!known || *known != ip)
        bpf_map_update_elem(&gt_entry_ips, &fp, &ip, BPF_ANY);
}

/* The hook in gt_return: a matched call of func_id that took latency_ns, returning now. */
static __always_inline void gt_stacks_return(struct pt_regs *ctx, struct gt_start_key *key, __u32 func_id,
                                             __u64 end_ns, __u64 latency_ns)
{
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    struct gt_func_process fp = {.func_id = func_id, .tgid = key->tgid};
    __u64 *entry_ip;

    if (!cfg)
        return;
    if (cfg->by != GT_BY_CALLER && (cfg->slow_ns == 0 || latency_ns < cfg->slow_ns))
        return;
    entry_ip = bpf_map_lookup_elem(&gt_entry_ips, &fp);
    if (!entry_ip) {
        gt_slow_count(GT_SSTAT_NO_ENTRY_IP);
        return;
    }
    if (cfg->by == GT_BY_CALLER)
        gt_caller_add(ctx, func_id, gt_hist_bucket(latency_ns), *entry_ip);
    if (cfg->slow_ns != 0 && latency_ns >= cfg->slow_ns)
        gt_slow_send(ctx, cfg, key, func_id, *entry_ip, end_ns, latency_ns);
}

#endif /* GT_LATENCY_STACKS_H */
