/* gotrace.h: the one definition of constants and map layouts shared by the
 * BPF programs in probes/ and by user space (gotrace/header.py reads the
 * `#define GT_*` integer constants below; Python packs the structs with the
 * same layouts).
 *
 * Only plain `#define GT_NAME <integer>` lines are read by Python: keep every
 * constant user space needs in that form. The programs include bpf_abi.h
 * (types, helpers, map declarations) before this file.
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
 * Nothing about a run is compiled in: one object per architecture serves
 * every binary, Go version and process. User space writes the run's settings
 * to gt_config[0] (struct gt_config below) before attaching, and sizes the
 * maps that depend on the number of functions when it creates them.
 * The uprobe's BPF cookie is the traced function's id, 0..nfuncs-1.
 */
#define GT_MAX_FUNCS 65536
/* Open calls remembered at once. Not an LRU: a start is never dropped without a trace. A start left by a call
 * unwound by a panic is replaced by the next call at its key, or removed by user space once its goroutine has
 * exited (gt_exited); an entry that finds the map full counts as untimed (GT_FC_UNTIMED). */
#define GT_START_ENTRIES 65536
/* Goroutines seen exiting (runtime.goexit1): the last GT_EXITED_ENTRIES exits (a power of two), a ring. */
#define GT_EXITED_ENTRIES 65536
/* Distinct (function, bucket, process) keys the histogram map holds at once;
 * user space deletes the keys of processes that exited (every-process mode). */
#define GT_HIST_MIN_ENTRIES 65536
#define GT_HIST_ENTRIES_PER_FUNC 512
#define GT_HIST_MAX_ENTRIES 1048576

/* Per-function counters: gt_func_counts[func_id * GT_FC_N + GT_FC_*] (probes/guard.h counts the hits). */
#define GT_FC_ENTRIES 0 /* entry probe hits through a counting link (the cost guard's and `gotrace count`'s) */
#define GT_FC_RETURNS 1 /* return probe hits through a counting link */
#define GT_FC_UNTIMED 2 /* calls whose start could not be recorded: the start map was full */
#define GT_FC_PROBATION 3 /* entry hits while the function was on probation (GT_GEN_PROBATION): counted, not timed */
#define GT_FC_N 4

/* Global counters: gt_stats[GT_STAT_*]. */
#define GT_STAT_NO_GOROUTINE 0          /* g register was 0 (assembly, cgo callback) */
#define GT_STAT_READ_FAULT 1            /* g.goid or g.stack.hi could not be read */
#define GT_STAT_STALE_STARTS 2          /* an entry replaced a start left under its key (panic) */
#define GT_STAT_RETURNS_WITHOUT_ENTRY 3 /* no start under the key, or one of another function */
#define GT_STAT_START_UPDATE_FAILED 4   /* the start map refused an update */
#define GT_STAT_HIST_FULL 5             /* the histogram map had no room for a new bucket */
#define GT_STAT_N 6

/* gt_config[0], written by user space before the probes are attached. */
struct gt_config {
    __u32 target_tgid;     /* the process to trace; 0: every process running the binary */
    __u32 nfuncs;          /* functions traced: a cookie (function id) at or above is ignored */
    __u32 goid_offset;     /* byte offset of goid in runtime.g */
    __u32 stack_hi_offset; /* byte offset of stack.hi in runtime.g */
    /* latency's stack build only (GT_CFG_STACKS, see "latency: slow calls and callers"); 0 elsewhere */
    __u64 slow_ns;         /* a call at least this long is sent with its stack; 0: none is */
    __u32 slow_rate;       /* slow calls sent per second at most; 0: no limit */
    __u32 stack_depth;     /* return addresses read per slow call, 0..GT_SLOW_MAX_DEPTH */
    __u32 by;              /* GT_BY_*: what gt_caller_hist splits histograms by */
    __u32 start_slot_mask; /* latency: gt_start_slots holds mask + 1 slots (a power of two) */
};

/* ---- latency: slow calls and callers (issue 12) ----
 * latency.bpf.c built with -DGT_CFG_STACKS=1 (the object `latency_stacks`;
 * the code is in probes/latency_stacks.h) adds, at each return, after the
 * histogram: plain `latency` loads the object without it and pays nothing.
 *
 * The traced function's entry site, as a runtime address of the traced
 * process (minus its vaddr: a PIE's load bias), is what return addresses
 * are taken relative to. The entry probe keeps it per (function, process)
 * in gt_entry_ips (written when absent or different: a reused pid), and
 * the return probe looks it up: no state is added per call, and the
 * cookies stay the function ids.
 *
 * Slow calls: a call whose latency is at least slow_ns goes to the ring
 * buffer gt_slow_events as a struct gt_slow_event, with its goroutine's
 * return addresses: the word at SP at the `ret` (amd64; the link register
 * on arm64) is the caller's, then the frame-pointer chain from the caller's
 * frame pointer (the returning function restored it before its `ret`):
 * [fp] is the next frame pointer, [fp + 8] a return address. The walk stays
 * inside the goroutine's stack (SP .. g.stack.hi). At most slow_rate events
 * a second (0: no limit); drops are counted in gt_slow_stats.
 *
 * Callers (by == GT_BY_CALLER): every return also counts into
 * gt_caller_hist under (function, bucket, caller), caller being the
 * caller's return address minus the entry site's runtime address: exact,
 * the same in every process, PIE or not.
 */
#define GT_ENTRY_IPS_ENTRIES 65536  /* (function, process) pairs whose entry address is kept (LRU) */
#define GT_BY_NONE 0
#define GT_BY_CALLER 1

#define GT_SLOW_MAX_DEPTH 64          /* return addresses per slow call, at most */
#define GT_SLOW_RINGBUF_PAGES 256     /* ring buffer of 1 MiB: about 1800 slow calls */

/* Counters: gt_slow_stats[GT_SSTAT_*]. */
#define GT_SSTAT_EVENTS 0             /* slow calls sent */
#define GT_SSTAT_RATE_LIMITED 1       /* slow calls dropped by the rate limit */
#define GT_SSTAT_RINGBUF_FULL 2       /* slow calls dropped: ring buffer full (reader behind) */
#define GT_SSTAT_STACK_FAULT 3        /* a stack word could not be read (the stack is cut there) */
#define GT_SSTAT_CALLER_FULL 4        /* gt_caller_hist had no room for a new key */
#define GT_SSTAT_NO_ENTRY_IP 5        /* a return found no entry address of its (function, process): not counted */
#define GT_SSTAT_N 6

struct gt_slow_event {
    __u64 end_ns;      /* CLOCK_MONOTONIC at the return */
    __u64 latency_ns;
    __u64 goid;
    __u64 entry_ip;    /* runtime address of the traced function's entry site */
    __u32 tgid;
    __u32 func_id;
    __u32 nframes;     /* valid entries of pcs */
    __u32 reserved;
    __u64 pcs[GT_SLOW_MAX_DEPTH]; /* return addresses, the caller's first */
};

struct gt_func_process {
    __u32 func_id;
    __u32 tgid;
};

struct gt_caller_key {
    __u32 func_id;
    __u32 bucket;      /* a bucket index */
    __u64 caller;      /* the caller's return address - the entry site's (runtime addresses) */
};

struct gt_slow_rate {
    __u64 window_start_ns;
    __u64 count;
};

struct gt_start_key {
    __u64 goid;
    __u32 tgid;
    __u32 depth; /* g.stack.hi - SP: survives stack copies, separates recursion */
};

struct gt_start_val {
    __u64 start_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u32 func_id;
    __u32 reserved;
};

/* A goroutine's exit, an element of gt_exited: exit number `seq - 1` (gt_exited_next counts them) is at index
 * (seq - 1) % GT_EXITED_ENTRIES. seq is written last (an exchange, ordered after the other stores on every
 * architecture), so a reader that finds seq equal to the number it expects, before and after reading the rest,
 * read a whole record; 0: never written. A ring, not a hash: at a goroutine's exit, one atomic add and four
 * stores (an LRU hash insertion, which evicts the oldest entry once full, cost several times the probe's
 * program on a service that ends tens of thousands of goroutines a second). */
struct gt_exit_rec {
    __u64 goid;
    __u32 tgid;
    __u32 reserved;
    __u64 exit_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u64 seq;
};

/* gt_start_slots: a direct-mapped array in front of gt_starts (issue 16: an array element costs less
 * than a hash operation). A key's slot is (gt_slot_tag(key) >> 32) & start_slot_mask (gt_config; the
 * loader sizes the array to mask + 1 slots, GT_START_SLOTS unless a test asks for fewer). An entry claims
 * its slot with a compare-and-swap of tag from 0 (free) to its key's tag, and uses gt_starts only when
 * the slot holds another open call; a return looks in its slot first, then in gt_starts. A key's start
 * is in one place only: an entry that claims a slot removes a stale start of its key from gt_starts
 * (looked up only when hash_added - hash_deleted - the user's hash_removed says that gt_starts may hold a
 * key of this slot). User space never writes a slot: it accounts for a slot held by an exited goroutine
 * (unwound) or a detached function (never to return) and names that holder in gt_slot_reaped, which lets
 * the next colliding entry take the slot over (compare-and-swap from the holder's tag to 0, then from 0
 * to its own). Tag: h = goid * 0x9E3779B97F4A7C15 ^ depth * 0xC2B2AE3D27D4EB4F ^ tgid (mod 2^64),
 * tag = ((h ^ (h >> 29)) * 0xBF58476D1CE4E5B9) | 1: never 0. */
#define GT_START_SLOTS 8192

struct gt_start_slot {
    __u64 tag;          /* 0: free; else gt_slot_tag(key) of the open call held */
    struct gt_start_key key;
    struct gt_start_val val;
    __u64 hash_added;   /* starts of this slot's keys the programs put in gt_starts (counted first) */
    __u64 hash_deleted; /* ... the programs removed from gt_starts (counted after) */
};

/* gt_slot_reaped[index]: written by user space only. */
struct gt_slot_reaped {
    __u64 tag;          /* the holder user space has accounted for (tag and start_ns): may be taken over */
    __u64 start_ns;
    __u64 hash_removed; /* starts of this slot's keys user space removed from gt_starts (counted after) */
};

/* gt_hist keys: one per (function, bucket, process). Besides the bucket
 * indexes 0..GT_HIST_NBUCKETS-1, two slots per (function, process) hold
 * cumulative totals instead of a bucket's count: */
#define GT_HIST_SLOT_SUM 4864     /* sum of the latencies, ns (GT_HIST_NBUCKETS) */
#define GT_HIST_SLOT_UNWOUND 4865 /* calls found unwound: their start was replaced by a later entry at the
                                   * same goroutine depth, or met by another function's return (panics) */

struct gt_hist_key {
    __u32 func_id;
    __u32 bucket; /* a bucket index, or a GT_HIST_SLOT_* */
    __u32 tgid;
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

/* ---- args ---- (probes/args.bpf.c; user side gotrace/capture/plan.py, gotrace/trace/args.py)
 * Per traced function, user space puts two capture plans in gt_arg_plans
 * (index func_id * 2 + GT_SIDE_*): lists of numbered read operations, never
 * C text. Each side (entry: receiver and parameters; return: results) has a
 * region of bytes: GT_ARGS_MAX_OPS status bytes (one per operation, GT_ST_*),
 * then what the operations fill: value images in Go's memory layout (from
 * registers or from the stack at SP), then memory behind pointers found in
 * bytes already filled (string bytes, slice elements, what a pointer points
 * to, map headers and groups, interface type descriptors and values).
 * Operations run in order; one that names a `dep` runs only when that
 * operation's status has GT_ST_OK. The entry region travels with the call in
 * gt_args_pending; at return the event's data holds it at 0 and the return
 * region at the return plan's `base`, and `send` bytes of data go to the ring
 * buffer. The run's settings are in gt_config[0] (as for latency);
 * gt_arg_plans holds nfuncs * 2 plans. GT_CFG_OPS_BOUND, given at build time,
 * is how many operations the capture loop runs at most (16, 32, 64 or 128:
 * one shipped object each; a run loads the smallest that holds its longest
 * plan, since the verifier's work grows with the bound).
 */
#define GT_SIDE_ENTRY 0
#define GT_SIDE_RETURN 1
#define GT_ARGS_MAX_OPS 128     /* operations per side; also the status bytes at the start of a region */
#define GT_ARGS_DATA 3072       /* bytes of the entry region (status bytes included) */
#define GT_RES_DATA 2048        /* bytes of the return region */
#define GT_ARGS_MAX_READ 512    /* bytes one read may copy (a power of two: the BPF side masks with it) */
#define GT_ARGS_SLACK 576       /* GT_ARGS_MAX_READ + 64: room past a region's end that lets the verifier bound every write */
#define GT_ARGS_BUF 3648        /* GT_ARGS_DATA + GT_ARGS_SLACK */
#define GT_EVENT_DATA 5696      /* GT_ARGS_DATA + GT_RES_DATA + GT_ARGS_SLACK */
#define GT_ARGS_PENDING 2048    /* calls entered and not yet returned (LRU) */
#define GT_ARGS_RINGBUF_PAGES 2048 /* ring buffer of 8 MiB: ~20,000 small calls (records are sized to their plan); user space maps it twice (16 MiB resident) */
#define GT_ARGS_NREGS 16        /* registers copied for operations: amd64 RAX..R11 (9), arm64 R0-R15 */

/* Operation kinds. Offsets named `src`, `len_src` and `dst` are in the side's region. */
#define GT_OP_REG 1     /* region[dst, dst+size) = low `size` (1,2,4,8) bytes of register number `arg` */
#define GT_OP_STACK 2   /* region[dst, dst+size) = `size` bytes at SP + offset */
#define GT_OP_DEREF 3   /* p = u64 at src; n = size, or min(size, (u64 at len_src) * mul) when len_src is
                         * not GT_OP_NO_SRC and no condition flag is set; region[dst, dst+n) = n bytes at
                         * p + offset. Skipped (status 0) when p == 0, n == 0, or a condition fails.
                         * Interfaces, maps, pointers and slices are all chains of these (gotrace.capture.plan). */
#define GT_OP_NO_SRC 65535
#define GT_OP_NO_DEP 65535

/* Operation flags (GT_OP_DEREF). A condition reads the u64 at len_src (then no length word). */
#define GT_OPF_MASK 1          /* run only when bit `arg` of the word is set */
#define GT_OPF_IF_ZERO 2       /* run only when the word is 0 */
#define GT_OPF_IF_NONZERO 4    /* run only when the word is not 0 */
#define GT_OPF_LEN_PREFIX 8    /* region[dst, dst+8) = the number of bytes read (0: none); the bytes at dst + 8 */
#define GT_OPF_PAGE_RETRY 16   /* when the read faults, read again up to the end of the page (with GT_OPF_LEN_PREFIX) */

/* Status bytes. */
#define GT_ST_OK 1        /* the operation's read completed */
#define GT_ST_FAULT 2     /* its read faulted (nothing usable was read) */

/* gt_arg_plan.flags of an entry plan: the entry instruction is also a `ret`
 * (a function whose whole body is `ret`): its one probe sends the call at
 * once. Its entry plan captures the results too (the registers hold both at
 * that instant); its return plan has no operations. (A flag of the plan, not
 * of the cookie, whose low half must be the function's id for the cost
 * guard, guard.h.) */
#define GT_ARG_PLAN_ALSO_RETURN 1

/* Settings in gt_args_cfg[GT_ACFG_*], written by user space. */
#define GT_ACFG_MAX_RATE 0        /* events per second, 0: no limit */
#define GT_ACFG_MIN_LATENCY_NS 1  /* calls faster than this are not sent (0: all are) */
#define GT_ACFG_N 2

/* Global counters: gt_args_stats[GT_ASTAT_*]. */
#define GT_ASTAT_NO_GOROUTINE 0
#define GT_ASTAT_READ_FAULT 1          /* g.goid or g.stack.hi unreadable */
#define GT_ASTAT_RETURNS_WITHOUT_ENTRY 2 /* entry lost (evicted, or entered before tracing began) */
#define GT_ASTAT_STALE_ENTRIES 3       /* an entry replaced one never returned from (panic) */
#define GT_ASTAT_PENDING_FAILED 4      /* the pending-call map refused an update */
#define GT_ASTAT_RINGBUF_FULL 5        /* a completed call dropped: ring buffer full (reader too slow) */
#define GT_ASTAT_RATE_LIMITED 6        /* a completed call dropped by the rate limit */
#define GT_ASTAT_EVENTS 7              /* completed calls sent to user space */
#define GT_ASTAT_FASTER 8              /* completed calls faster than the minimum latency, not sent */
#define GT_ASTAT_N 9

struct gt_arg_op {
    __u8 kind;     /* GT_OP_* */
    __u8 arg;      /* REG: register number (ABI order); DEREF with GT_OPF_MASK: bit number */
    __u8 flags;    /* GT_OPF_* */
    __u8 reserved;
    __u16 dep;     /* index of the operation that must have GT_ST_OK, or GT_OP_NO_DEP */
    __u16 dst;
    __u16 size;
    __u16 src;
    __u16 len_src;
    __u16 mul;
    __s32 offset;
};

struct gt_arg_plan {
    __u32 nops;
    __u32 base;    /* return plan: where the return region starts in the event's data */
    __u32 send;    /* return plan: bytes of the event's data sent */
    __u32 flags;   /* entry plan: GT_ARG_PLAN_* */
    struct gt_arg_op ops[GT_ARGS_MAX_OPS];
};

struct gt_args_pending {
    __u64 start_ns;
    __u32 func_id;
    __u32 reserved;
    __u64 entry_ip;  /* runtime address of the entry site: gives a PIE's load bias */
    __u8 data[GT_ARGS_BUF];
};

struct gt_args_event {
    __u64 start_ns;
    __u64 end_ns;
    __u64 goid;
    __u64 entry_ip;
    __u32 tgid;
    __u32 func_id;
    __u8 data[GT_EVENT_DATA];
};

struct gt_args_rate {
    __u64 window_start_ns;
    __u64 count;
};

/* ---- The cost guard (probes/guard.h; user side gotrace/trace/guard.py, cost.py) ----
 * Every hit of latency's and count's probes goes through gt_counted_hit:
 * it counts the hit per function in gt_func_counts (GT_FC_ENTRIES,
 * GT_FC_RETURNS: an array user space maps into its memory) and, per CPU, in gt_cost[GT_COST_*] with what it costs:
 * gt_hit_cost[func_id] ns for an entry hit of the function (by the kind of
 * its entry instruction), gt_hit_cost[nfuncs] ns for a return hit, written
 * by user space before attaching (gotrace/trace/cost.py measures them). So
 * the probes' cost over a window is one cheap read of gt_cost.
 * A probe that is not a traced function's (latency's on runtime.goexit1)
 * counts its hits in GT_COST_FIXED_*, at gt_hit_cost[nfuncs + 1] ns each:
 * part of what the probes cost, not something the guard can detach.
 */
#define GT_COST_HITS 0
#define GT_COST_NS 1
#define GT_COST_FIXED_HITS 2
#define GT_COST_FIXED_NS 3
#define GT_COST_N 4
#define GT_MAP_MMAPABLE 1024 /* BPF_F_MMAPABLE: gt_func_counts and gt_hit_cost are read and written through memory */

/* Which link counts a hit. A site's BPF cookie is (generation << 32) |
 * func_id. gt_active[func_id] holds the generation of the links that count
 * for the function (0 at first); a hit through a link of another generation
 * is ignored. To detach some functions of a link for real, user space
 * attaches a new link for the others with the next generation, switches
 * their gt_active entries, then closes the old link: each hit is counted
 * once, never twice, never lost. A detached function's entry is
 * GT_GEN_DETACHED: nothing counts for it while its traps are removed. */
#define GT_GEN_DETACHED 4294967295
/* gt_active[func_id] = generation | GT_GEN_PROBATION: the function is on
 * probation. Only its entry links exist; their hits are counted with their
 * cost, and nothing else happens (no call is timed), so that the cost guard
 * learns how often the function runs for the price of an entry hit (about a
 * tenth of a timed call's) before it decides whether the function's calls
 * may be timed. Link generations stay below it. */
#define GT_GEN_PROBATION 2147483648

/* ---- BPF programs only: the run's settings and the goroutine a probe hit runs on ----
 * Compiled where the build gives GT_CFG_ARCH (never in user-space builds of
 * this header). Keys pair an entry with its return: (tgid, goid,
 * g.stack.hi - SP); g is in R14 on amd64 and R28 on arm64 in every Go
 * (ABIInternal) function. At the post-prologue entry site and at a `ret`, SP
 * points at the same return address.
 */
#ifdef GT_CFG_ARCH
#if GT_CFG_ARCH == GT_ARCH_AMD64
#define GT_G_REG(ctx) ((ctx)->r14)
#define GT_SP_REG(ctx) ((ctx)->sp)
#elif GT_CFG_ARCH == GT_ARCH_ARM64
#define GT_G_REG(ctx) ((ctx)->regs[28])
#define GT_SP_REG(ctx) ((ctx)->sp)
#else
#error "gotrace: unsupported GT_CFG_ARCH"
#endif

GT_MAP(gt_config, BPF_MAP_TYPE_ARRAY, sizeof(__u32), sizeof(struct gt_config), 1, 0);

#define GT_G_SPAN 256 /* bytes of g one read may cover in gt_goroutine_key (a power of two) */

enum gt_key_status {
    GT_KEY_OK = 1,
    GT_KEY_OTHER_PROCESS = 0,  /* not the traced process, or not a function of this run */
    GT_KEY_NO_GOROUTINE = -1,  /* g register was 0 (assembly, cgo callback) */
    GT_KEY_READ_FAULT = -2,    /* g.goid or g.stack.hi could not be read */
};

/* Fills *key for a hit of function func_id (the probe's cookie). One array
 * lookup (inlined by the verifier) gives the run's settings. */
static __always_inline int gt_goroutine_key(struct pt_regs *ctx, __u32 func_id, struct gt_start_key *key)
{
    __u32 zero = 0;
    struct gt_config *cfg = bpf_map_lookup_elem(&gt_config, &zero);
    __u64 g = GT_G_REG(ctx);
    __u64 stack_hi = 0;
    __u64 goid = 0;
    __u64 tgid = bpf_get_current_pid_tgid() >> 32;
    __u64 span[GT_G_SPAN / 8] = {};
    __u32 lo, goid_at, hi_at, size;

    if (!cfg || func_id >= cfg->nfuncs)
        return GT_KEY_OTHER_PROCESS;
    if (cfg->target_tgid != 0 && tgid != cfg->target_tgid)
        return GT_KEY_OTHER_PROCESS;
    if (g == 0)
        return GT_KEY_NO_GOROUTINE;
    /* One read of g from the lower of the two fields to past the higher (stack.hi at 8, goid at 152-160 in
     * Go 1.17-1.27): each bpf_probe_read_user has a fixed cost that dwarfs copying 160 bytes (issue 16,
     * scripts/bench: about 0.5-1% of the floor). Two reads when the span does not fit (a modified runtime). */
    lo = cfg->goid_offset < cfg->stack_hi_offset ? cfg->goid_offset : cfg->stack_hi_offset;
    goid_at = cfg->goid_offset - lo;
    hi_at = cfg->stack_hi_offset - lo;
    size = (goid_at > hi_at ? goid_at : hi_at) + 8;
    if (size <= GT_G_SPAN && ((goid_at | hi_at) & 7) == 0) {
        if (bpf_probe_read_user(span, size, (void *)(g + lo)) != 0)
            return GT_KEY_READ_FAULT;
        goid = span[(goid_at / 8) & (GT_G_SPAN / 8 - 1)];
        stack_hi = span[(hi_at / 8) & (GT_G_SPAN / 8 - 1)];
    } else if (bpf_probe_read_user(&goid, sizeof(goid), (void *)(g + cfg->goid_offset)) != 0 ||
               bpf_probe_read_user(&stack_hi, sizeof(stack_hi), (void *)(g + cfg->stack_hi_offset)) != 0) {
        return GT_KEY_READ_FAULT;
    }
    /* goid 0: a system stack (g0 of each thread, gsignal), not a goroutine; every thread has its own and
     * none moves, so the g's address tells them apart (bit 63: never a goid). */
    key->goid = goid ? goid : (g | (1ULL << 63));
    key->tgid = (__u32)tgid;
    key->depth = (__u32)(stack_hi - GT_SP_REG(ctx));
    return GT_KEY_OK;
}
#endif /* GT_CFG_ARCH */

#endif /* GOTRACE_H */
