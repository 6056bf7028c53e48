/* hist.h — ioloop-load's latency histogram: HDR-style log-linear buckets.
 *
 * A value (nanoseconds, any uint64_t) falls in one of HIST_BUCKETS buckets:
 * exact below 2^(HIST_SUB_BITS+1), then each power of two split into
 * 2^HIST_SUB_BITS equal buckets, so a reported value is within 1/256 (0.4%)
 * of the true one wherever it lies, and nothing overflows (wrk's fixed array
 * loses pipelined runs' latencies). Counts are 64-bit. 7.3k buckets, 58 KiB.
 *
 * Threading rule: none inside; each loop records into its own histogram and
 * the main thread merges them after the loops have stopped.
 */
#ifndef IOLOOP_LOAD_HIST_H
#define IOLOOP_LOAD_HIST_H

#include <stdint.h>

enum {
    HIST_SUB_BITS = 7,
    HIST_BUCKETS = (64 - HIST_SUB_BITS) * (1 << HIST_SUB_BITS) + (1 << HIST_SUB_BITS),
};

typedef struct {
    uint64_t count;
    uint64_t min, max;
    double sum; /* for the mean: a double never overflows */
    uint64_t buckets[HIST_BUCKETS];
} hist_t;

void hist_init(hist_t *h);
void hist_record(hist_t *h, uint64_t value);
/* Adds every count of `from` to `into`. */
void hist_merge(hist_t *into, const hist_t *from);
/* The value at percentile p (0..100): the middle of the bucket that holds
 * the p-th ranked value, clamped to [min, max]; 0 when empty. Non-decreasing
 * in p. */
uint64_t hist_percentile(const hist_t *h, double p);
double hist_mean(const hist_t *h);

/* The bucket of a value and the lowest value and width of a bucket (exposed
 * for the tests). */
unsigned hist_index(uint64_t value);
uint64_t hist_bucket_low(unsigned index);
uint64_t hist_bucket_width(unsigned index);

#endif
