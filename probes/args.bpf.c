/* args.bpf.c: arguments and results of Go function calls, one ring-buffer
 * record per completed call.
 *
 * gt_args_entry runs at each traced function's post-prologue entry site and
 * gt_args_return at each of its `ret` instructions (plain uprobes, never
 * uretprobes); the uprobe's BPF cookie is the function's id and its link's
 * generation, and every hit goes through the cost guard's gt_counted_hit
 * first (guard.h), as latency's and count's do. What to read is
 * not compiled in: it is the function's capture plan in gt_arg_plans, a list
 * of numbered operations (probes/gotrace.h, "args"). The entry side fills a
 * pending record keyed like latency's starts, (tgid, goid, g.stack.hi - SP);
 * the return side joins it with the results and sends the whole call.
 *
 * The run's settings are in gt_config[0] (see gotrace.h), written by user
 * space before attaching, as are the plans; gt_arg_plans gets its size
 * (nfuncs * 2) from the loader. Nothing about a run is compiled in but the
 * capture loop's bound, GT_CFG_OPS_BOUND: the package ships one object per
 * bound (args16 ... args128) and a run loads the smallest that holds its
 * longest plan, since the verifier's work grows with the bound.
 */
#include "bpf_abi.h"
#define GT_NO_BUCKET_CODE
#include "gotrace.h"
#include "guard.h"

#ifndef GT_CFG_OPS_BOUND
#error "gotrace: GT_CFG_OPS_BOUND (16, 32, 64 or 128) must be given by the build"
#endif
#if GT_CFG_OPS_BOUND > GT_ARGS_MAX_OPS || GT_CFG_OPS_BOUND % 16
#error "gotrace: GT_CFG_OPS_BOUND must be a multiple of 16 up to GT_ARGS_MAX_OPS"
#endif

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

static __always_inline __u64 gt_word(__u8 *buf, __u32 off)
{
    __u64 value;
    __builtin_memcpy(&value, buf + off, 8);
    return value;
}

static __always_inline void gt_put_word(__u8 *buf, __u32 off, __u64 value)
{
    __builtin_memcpy(buf + off, &value, 8);
}

/* One read an operation decided on. It goes through a per-CPU map value on
 * its way from deciding (many branches) to reading (one helper call), so that
 * every way of deciding reaches the read in the same verifier state: the
 * verifier then checks the read once per operation, not once per way. */
struct gt_args_read {
    __u64 addr;
    __u64 n;       /* bytes to read */
    __u32 at;      /* where in the region */
    __u32 prefix;  /* GT_OPF_LEN_PREFIX: where the byte count goes; else GT_OP_NO_SRC */
    __u32 retry;   /* GT_OPF_PAGE_RETRY */
    __u32 reserved;
};
GT_MAP(gt_args_read_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(__u32), sizeof(struct gt_args_read), 1, 0);

/* GT_OP_DEREF (see gotrace.h): where and how much to read; 0 when nothing is to be read. */
static __always_inline int gt_deref_plan(__u8 *buf, struct gt_arg_op *op, __u32 src, __u32 dst, __u32 size,
                                         __u32 limit, struct gt_args_read *read)
{
    __u64 ptr, n = size, value;
    __u32 len_src = op->len_src;
    __u8 flags = op->flags;

    if (src > limit)
        return 0;
    ptr = gt_word(buf, src);
    if (ptr == 0)
        return 0;
    if (len_src != GT_OP_NO_SRC) {
        if (len_src > limit)
            return 0;
        value = gt_word(buf, len_src);
        if (flags & GT_OPF_MASK) {
            if (!((value >> (op->arg & 63)) & 1))
                return 0;
        } else if (flags & GT_OPF_IF_ZERO) {
            if (value != 0)
                return 0;
        } else if (flags & GT_OPF_IF_NONZERO) {
            if (value == 0)
                return 0;
        } else {
            if (value > 0xffffffffULL)
                value = 0xffffffffULL; /* a length this large is garbage; read `size` */
            value *= op->mul;
            if (value < n)
                n = value;
        }
    }
    read->addr = ptr + (__s64)op->offset;
    read->n = n;
    read->at = dst;
    read->prefix = GT_OP_NO_SRC;
    read->retry = flags & GT_OPF_PAGE_RETRY;
    if (flags & GT_OPF_LEN_PREFIX) {
        read->prefix = dst;
        read->at = dst + 8;
    }
    return 1;
}

/* Runs the plan's operations into buf, one side's region: `limit` usable bytes
 * plus GT_ARGS_SLACK. Status byte i (at buf[i]) says what operation i did. A
 * fixed trip count, the loop index as the operation number and every
 * operation's state in the region keep the loop simple for the verifier; the
 * trip count is GT_CFG_OPS_BOUND, what the longest plan needs (rounded up to
 * 16), so the verifier's work follows the plans. */
static __always_inline void gt_capture(struct pt_regs *ctx, struct gt_arg_plan *plan, __u8 *buf, __u32 limit)
{
    __u64 regs[GT_ARGS_NREGS] = {};
    __u64 sp = GT_SP_REG(ctx);
    __u32 nops = plan->nops;
    struct gt_args_read *read;
    int zero = 0;

    read = bpf_map_lookup_elem(&gt_args_read_scratch, &zero);
    if (!read)
        return;
    gt_load_regs(ctx, regs);
#pragma unroll
    for (int k = 0; k < GT_CFG_OPS_BOUND / 8; k++)
        gt_put_word(buf, k * 8, 0);
    for (__u32 i = 0; i < GT_CFG_OPS_BOUND; i++) {
        struct gt_arg_op *op = &plan->ops[i];
        __u32 dst = op->dst, size = op->size, src = op->src, at, prefix;
        __u64 value, addr, n;
        __u8 status = GT_ST_OK;

        if (i >= nops)
            break;
        if (dst > limit || size > GT_ARGS_MAX_READ)
            continue;
        if (op->dep != GT_OP_NO_DEP && !(buf[op->dep & (GT_ARGS_MAX_OPS - 1)] & GT_ST_OK))
            continue;
        if (op->kind == GT_OP_REG) {
            value = regs[op->arg & (GT_ARGS_NREGS - 1)];
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
            buf[i] = GT_ST_OK;
            continue;
        }
        if (op->kind == GT_OP_STACK) {
            read->addr = sp + (__s64)op->offset;
            read->n = size;
            read->at = dst;
            read->prefix = GT_OP_NO_SRC;
            read->retry = 0;
        } else if (op->kind != GT_OP_DEREF || !gt_deref_plan(buf, op, src, dst, size, limit, read)) {
            continue;
        }
        /* The read, with everything reloaded from the scratch value (the
         * barrier keeps the compiler from forwarding the stored values). */
        asm volatile("" ::: "memory");
        addr = read->addr;
        n = read->n;
        at = read->at;
        prefix = read->prefix;
        if (prefix <= limit)
            gt_put_word(buf, prefix, 0);
        if (n == 0 || n > GT_ARGS_MAX_READ || at > limit + 8)
            continue;
        /* Sizes bounded by arithmetic, not by the branch above: every
         * kernel's verifier sees 1 <= n <= GT_ARGS_MAX_READ (a power of two). */
        n = ((n - 1) & (GT_ARGS_MAX_READ - 1)) + 1;
        if (bpf_probe_read_user(buf + at, n, (void *)addr) != 0) {
            __u64 room = 4096 - (addr & 4095);
            status = GT_ST_FAULT;
            if (read->retry && room < n) {
                n = ((room - 1) & (GT_ARGS_MAX_READ - 1)) + 1;
                if (bpf_probe_read_user(buf + at, n, (void *)addr) == 0)
                    status = GT_ST_OK;
            }
        }
        read->n = n;
        asm volatile("" ::: "memory");
        if (prefix <= limit && status == GT_ST_OK)
            gt_put_word(buf, prefix, read->n);
        buf[i] = status;
    }
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

/* Returns 1 when the entry instruction is also the function's `ret` (the
 * entry plan's GT_ARG_PLAN_ALSO_RETURN): the caller sends the call at once. */
static __always_inline int gt_on_entry(struct pt_regs *ctx, __u32 func_id)
{
    struct gt_start_key key = {};
    struct gt_args_pending *pending;
    struct gt_arg_plan *plan;
    int zero = 0;
    int plan_index;
    int also_return;

    if (!gt_make_key(ctx, func_id, &key))
        return 0;
    plan_index = func_id * 2 + GT_SIDE_ENTRY;
    plan = bpf_map_lookup_elem(&gt_arg_plans, &plan_index);
    pending = bpf_map_lookup_elem(&gt_args_entry_scratch, &zero);
    if (!plan || !pending)
        return 0;
    also_return = (plan->flags & GT_ARG_PLAN_ALSO_RETURN) != 0;
    pending->func_id = func_id;
    pending->entry_ip = PT_REGS_IP(ctx);
    gt_capture(ctx, plan, pending->data, GT_ARGS_DATA);
    if (bpf_map_lookup_elem(&gt_args_pending, &key))
        gt_count(GT_ASTAT_STALE_ENTRIES);
    pending->start_ns = bpf_ktime_get_ns();
    if (bpf_map_update_elem(&gt_args_pending, &key, pending, BPF_ANY) != 0)
        gt_count(GT_ASTAT_PENDING_FAILED);
    return also_return;
}


/* True when a call of latency_ns is at least the minimum latency asked for. */
static __always_inline int gt_slow_enough(__u64 latency_ns)
{
    int index = GT_ACFG_MIN_LATENCY_NS;
    __u64 *min_ns = bpf_map_lookup_elem(&gt_args_cfg, &index);

    return !min_ns || latency_ns >= *min_ns;
}

/* capture 0: the entry plan already captured the results (the entry
 * instruction is the `ret`): send what the entry side left. */
static __always_inline void gt_on_return(struct pt_regs *ctx, __u32 func_id, int capture)
{
    __u64 now_ns = bpf_ktime_get_ns();
    struct gt_start_key key = {};
    struct gt_args_pending *pending;
    struct gt_args_event *event;
    struct gt_arg_plan *plan;
    __u32 base, send;
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
    if (!gt_slow_enough(now_ns - pending->start_ns)) {
        bpf_map_delete_elem(&gt_args_pending, &key);
        gt_count(GT_ASTAT_FASTER);
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
    /* One verifier context for every base: no branch may make it a constant. */
    base = plan->base & ~7U;
    if (base > GT_ARGS_DATA) {
        bpf_map_delete_elem(&gt_args_pending, &key);
        return;
    }
    bpf_probe_read_kernel(event->data, base, pending->data);
    bpf_map_delete_elem(&gt_args_pending, &key);
    if (capture)
        gt_capture(ctx, plan, event->data + base, GT_RES_DATA);
    send = plan->send;
    if (send > GT_ARGS_DATA + GT_RES_DATA)
        send = GT_ARGS_DATA + GT_RES_DATA;
    send += __builtin_offsetof(struct gt_args_event, data);
    /* Flags 0: the kernel's adaptive wake-up. The reader is woken when a record
     * lands in a buffer it had emptied, so each call shows at once at a low call
     * rate, and a busy reader is not woken once per record at a high one. */
    if (bpf_ringbuf_output(&gt_args_events, event, send, 0) != 0)
        gt_count(GT_ASTAT_RINGBUF_FULL);
    else
        gt_count(GT_ASTAT_EVENTS);
}

SEC("uprobe/gt_args_entry")
int gt_args_entry(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);

    if (!gt_counted_hit(ctx, func_id, GT_FC_ENTRIES))
        return 0;
    if (gt_on_entry(ctx, func_id))
        gt_on_return(ctx, func_id, 0);
    return 0;
}

SEC("uprobe/gt_args_return")
int gt_args_return(struct pt_regs *ctx)
{
    __u32 func_id = (__u32)bpf_get_attach_cookie(ctx);

    if (!gt_counted_hit(ctx, func_id, GT_FC_RETURNS))
        return 0;
    gt_on_return(ctx, func_id, 1);
    return 0;
}
