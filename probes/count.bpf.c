/* count.bpf.c: calls per Go function, one uprobe per call.
 *
 * One program, gt_count_entry, attached as a plain uprobe at each traced
 * function's post-prologue entry site; the BPF cookie names the function and
 * its link's generation (gotrace.h, "The cost guard"). A call is an entry
 * hit: gt_counted_hit counts it in gt_func_counts[GT_FC_ENTRIES], which user
 * space reads as the calls. No goroutine key, no return probe: the cheapest
 * trace gotrace makes.
 *
 * The run's settings are in gt_config[0] (only target_tgid and nfuncs
 * matter here), written by user space before attaching.
 */
#include "bpf_abi.h"
#include "gotrace.h"
#include "guard.h"

char _license[] SEC("license") = "GPL";

SEC("uprobe/gt_count_entry")
int gt_count_entry(struct pt_regs *ctx)
{
    gt_counted_hit(ctx, (__u32)bpf_get_attach_cookie(ctx), GT_FC_ENTRIES);
    return 0;
}
