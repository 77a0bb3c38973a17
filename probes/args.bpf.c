/* args.bpf.c: arguments and results of Go function calls, one ring-buffer
 * record per completed call.
 *
 * gt_args_entry runs at each traced function's post-prologue entry site and
 * gt_args_return at each of its `ret` instructions (plain uprobes, never
 * uretprobes); the uprobe's BPF cookie is the function's id. What to read is
 * not compiled in: it is the function's capture plan in gt_arg_plans, a list
 * of numbered operations (probes/gotrace.h, "args"). The entry side fills a
 * pending record keyed like latency's starts, (tgid, goid, g.stack.hi - SP);
 * the return side joins it with the results and sends the whole call.
 *
 * The run's settings are in gt_config[0] (see gotrace.h), written by user
 * space before attaching, as are the plans; gt_arg_plans gets its size
 * (nfuncs * 2) from the loader. Nothing about a run is compiled in.
 */
#include "bpf_abi.h"
#define GT_NO_BUCKET_CODE
#include "gotrace.h"

/* nfuncs * 2 plans (GT_SIDE_*), sized by the loader. */
GT_MAP(gt_arg_plans, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_arg_plan), 2, 0);
GT_MAP(gt_args_pending, BPF_MAP_TYPE_LRU_HASH, sizeof(struct gt_start_key), sizeof(struct gt_args_pending),
       GT_ARGS_PENDING, 0);
GT_MAP(gt_args_entry_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(struct gt_args_pending), 1, 0);
GT_MAP(gt_args_event_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(struct gt_args_event), 1, 0);
GT_MAP(gt_args_events, BPF_MAP_TYPE_RINGBUF, 0, 0, GT_ARGS_RINGBUF_PAGES * 4096, 0);
GT_MAP(gt_args_cfg, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(__u64), GT_ACFG_N, 0);
GT_MAP(gt_args_rate, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_args_rate), 1, 0);
GT_MAP(gt_args_stats, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(__u64), GT_ASTAT_N, 0);

char _license[] SEC("license") = "GPL";

static __always_inline void gt_count(int stat)
{
    __u64 *slot = bpf_map_lookup_elem(&gt_args_stats, &stat);
    if (slot)
        __sync_fetch_and_add(slot, 1);
}

/* Fills key for the current hit; 0 when it is not to be captured (counted). */
static __always_inline int gt_make_key(struct pt_regs *ctx, __u32 func_id, struct gt_start_key *key)
{
    int status = gt_goroutine_key(ctx, func_id, key);

    if (status == GT_KEY_NO_GOROUTINE)
        gt_count(GT_ASTAT_NO_GOROUTINE);
    else if (status == GT_KEY_READ_FAULT)
        gt_count(GT_ASTAT_READ_FAULT);
    return status == GT_KEY_OK;
}

/* The argument registers in ABI order (gotrace.abi: RAX RBX RCX RDI RSI R8 R9 R10 R11 / R0-R15). */
static __always_inline void gt_load_regs(struct pt_regs *ctx, __u64 *regs)
{
#if GT_CFG_ARCH == GT_ARCH_AMD64
    regs[0] = ctx->ax;
    regs[1] = ctx->bx;
    regs[2] = ctx->cx;
    regs[3] = ctx->di;
    regs[4] = ctx->si;
    regs[5] = ctx->r8;
    regs[6] = ctx->r9;
    regs[7] = ctx->r10;
    regs[8] = ctx->r11;
#else
#pragma unroll
    for (int i = 0; i < 16; i++)
        regs[i] = ctx->regs[i];
#endif
}

/* Runs the plan's operations into buf (data_size usable bytes plus
 * GT_ARGS_MAX_READ of slack); sets a bit in *ok / *fail per operation.
 * Unused slots are zero (kind 0) and do nothing: a fixed trip count keeps
 * the loop simple for the verifier. */
static __always_inline void gt_capture(struct pt_regs *ctx, struct gt_arg_plan *plan, __u8 *buf,
                                       __u32 data_size, __u32 *ok, __u32 *fail)
{
    __u64 regs[GT_ARGS_NREGS] = {};
    __u64 sp = GT_SP_REG(ctx);
    __u32 done = 0, faulted = 0;

    gt_load_regs(ctx, regs);
    for (__u32 i = 0; i < GT_ARGS_MAX_OPS; i++) {
        struct gt_arg_op *op;
        __u32 dst, size;
        __u64 value = 0, ptr = 0, n;

        op = &plan->ops[i];
        dst = op->dst;
        size = op->size;
        if (dst > data_size || size > GT_ARGS_MAX_READ)
            continue;
        if (op->kind == GT_OP_REG) {
            value = regs[op->reg & (GT_ARGS_NREGS - 1)];
            if (size == 8)
                __builtin_memcpy(buf + dst, &value, 8);
            else if (size == 4)
                __builtin_memcpy(buf + dst, &value, 4);
            else if (size == 2)
                __builtin_memcpy(buf + dst, &value, 2);
            else if (size == 1)
                __builtin_memcpy(buf + dst, &value, 1);
            else
                continue;
            done |= 1U << i;
        } else if (op->kind == GT_OP_STACK) {
            if (size == 0)
                continue;
            if (bpf_probe_read_user(buf + dst, size, (void *)(sp + (__s64)op->offset)) == 0)
                done |= 1U << i;
            else
                faulted |= 1U << i;
        } else if (op->kind == GT_OP_DEREF) {
            __u32 src = op->src;
            if (src > data_size)
                continue;
            if (op->dep != GT_OP_NO_DEP && !(done & (1U << (op->dep & 31))))
                continue;
            __builtin_memcpy(&ptr, buf + src, 8);
            if (ptr == 0)
                continue;
            n = size;
            if (op->len_src != GT_OP_NO_SRC) {
                __u32 len_src = op->len_src;
                if (len_src > data_size)
                    continue;
                __builtin_memcpy(&value, buf + len_src, 8);
                if (value >> 40)
                    value = (__u64)1 << 40; /* a length this large is garbage; read `size` */
                value <<= (op->shift & 7);
                if (value < n)
                    n = value;
            }
            n &= 0x1ff;
            if (n == 0 || n > GT_ARGS_MAX_READ)
                continue;
            if (bpf_probe_read_user(buf + dst, n, (void *)(ptr + (__s64)op->offset)) == 0)
                done |= 1U << i;
            else
                faulted |= 1U << i;
        }
    }
    *ok = done;
    *fail = faulted;
}

/* True when the rate limit lets one more event through in this one-second window. */
static __always_inline int gt_rate_allows(__u64 now_ns)
{
    int zero = GT_ACFG_MAX_RATE;
    __u64 *max_rate = bpf_map_lookup_elem(&gt_args_cfg, &zero);
    struct gt_args_rate *rate;
    int first = 0;

    if (!max_rate || *max_rate == 0)
        return 1;
    rate = bpf_map_lookup_elem(&gt_args_rate, &first);
    if (!rate)
        return 1;
    if (now_ns - rate->window_start_ns >= 1000000000ULL) {
        rate->window_start_ns = now_ns;
        rate->count = 0;
    }
    return __sync_fetch_and_add(&rate->count, 1) < *max_rate;
}

static __always_inline void gt_on_entry(struct pt_regs *ctx, __u32 func_id)
{
    struct gt_start_key key = {};
    struct gt_args_pending *pending;
    struct gt_arg_plan *plan;
    int zero = 0;
    int plan_index;

    if (!gt_make_key(ctx, func_id, &key))
        return;
    plan_index = func_id * 2 + GT_SIDE_ENTRY;
    plan = bpf_map_lookup_elem(&gt_arg_plans, &plan_index);
    pending = bpf_map_lookup_elem(&gt_args_entry_scratch, &zero);
    if (!plan || !pending)
        return;
    pending->func_id = func_id;
    pending->entry_ip = PT_REGS_IP(ctx);
    gt_capture(ctx, plan, pending->data, GT_ARGS_DATA, &pending->ok_mask, &pending->fail_mask);
    if (bpf_map_lookup_elem(&gt_args_pending, &key))
        gt_count(GT_ASTAT_STALE_ENTRIES);
    pending->start_ns = bpf_ktime_get_ns();
    if (bpf_map_update_elem(&gt_args_pending, &key, pending, BPF_ANY) != 0)
        gt_count(GT_ASTAT_PENDING_FAILED);
}


static __always_inline void gt_on_return(struct pt_regs *ctx, __u32 func_id)
{
    __u64 now_ns = bpf_ktime_get_ns();
    struct gt_start_key key = {};
    struct gt_args_pending *pending;
    struct gt_args_event *event;
    struct gt_arg_plan *plan;
    int zero = 0;
    int plan_index;

    if (!gt_make_key(ctx, func_id, &key))
        return;
    pending = bpf_map_lookup_elem(&gt_args_pending, &key);
    if (!pending) {
        gt_count(GT_ASTAT_RETURNS_WITHOUT_ENTRY);
        return;
    }
    if (pending->func_id != func_id) {
        /* Left by a frame that never returned (panic): stale. */
        bpf_map_delete_elem(&gt_args_pending, &key);
        gt_count(GT_ASTAT_RETURNS_WITHOUT_ENTRY);
        return;
    }
    if (!gt_rate_allows(now_ns)) {
        bpf_map_delete_elem(&gt_args_pending, &key);
        gt_count(GT_ASTAT_RATE_LIMITED);
        return;
    }
    plan_index = func_id * 2 + GT_SIDE_RETURN;
    plan = bpf_map_lookup_elem(&gt_arg_plans, &plan_index);
    event = bpf_map_lookup_elem(&gt_args_event_scratch, &zero);
    if (!plan || !event) {
        bpf_map_delete_elem(&gt_args_pending, &key);
        return;
    }
    event->start_ns = pending->start_ns;
    event->end_ns = now_ns;
    event->goid = key.goid;
    event->entry_ip = pending->entry_ip;
    event->tgid = key.tgid;
    event->func_id = func_id;
    event->args_ok = pending->ok_mask;
    event->args_fail = pending->fail_mask;
    bpf_probe_read_kernel(event->args, sizeof(event->args), pending->data);
    bpf_map_delete_elem(&gt_args_pending, &key);
    gt_capture(ctx, plan, event->res, GT_RES_DATA, &event->res_ok, &event->res_fail);
    /* Flags 0: the kernel's adaptive wake-up. The reader is woken when a record
     * lands in a buffer it had emptied, so each call shows at once at a low call
     * rate, and a busy reader is not woken once per record at a high one. */
    if (bpf_ringbuf_output(&gt_args_events, event, sizeof(*event), 0) != 0)
        gt_count(GT_ASTAT_RINGBUF_FULL);
    else
        gt_count(GT_ASTAT_EVENTS);
}

SEC("uprobe/gt_args_entry")
int gt_args_entry(struct pt_regs *ctx)
{
    __u64 cookie = bpf_get_attach_cookie(ctx);
    __u32 func_id = (__u32)cookie & ~(__u32)GT_ARGS_COOKIE_ALSO_RETURN;

    gt_on_entry(ctx, func_id);
    if (cookie & GT_ARGS_COOKIE_ALSO_RETURN)
        gt_on_return(ctx, func_id);
    return 0;
}

SEC("uprobe/gt_args_return")
int gt_args_return(struct pt_regs *ctx)
{
    gt_on_return(ctx, (__u32)bpf_get_attach_cookie(ctx));
    return 0;
}
