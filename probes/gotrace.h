/* gotrace.h: the one definition of constants and map layouts shared by the
 * BPF programs in probes/ and by user space (gotrace/probes_header.py reads the
 * `#define GT_*` integer constants below; bcc derives the struct layouts).
 *
 * Only plain `#define GT_NAME <integer>` lines are read by Python: keep every
 * constant user space needs in that form.
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

#endif /* GOTRACE_H */
