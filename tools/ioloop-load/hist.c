/* hist.c — the log-linear latency histogram (see hist.h).
 *
 * Index of v: with b = max(0, msb(v) - SUB_BITS), the bucket is
 * b * 2^SUB_BITS + (v >> b). For b = 0 that is v itself (exact, v < 2^(SUB_BITS+1));
 * for b >= 1, v >> b lies in [2^SUB_BITS, 2^(SUB_BITS+1)), so the ranges of
 * successive b follow each other with no gap and the last one ends at
 * HIST_BUCKETS - 1 for UINT64_MAX. A bucket's width is 2^b against values of
 * at least 2^(b+SUB_BITS): relative error at most 2^-SUB_BITS, half that
 * from the bucket's middle.
 *
 * Threading rule: none (see hist.h).
 */
#include "hist.h"

#include <assert.h>
#include <string.h>

void hist_init(hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

unsigned hist_index(uint64_t value)
{
    unsigned msb = value ? 63u - (unsigned)__builtin_clzll(value) : 0;
    unsigned b = msb > HIST_SUB_BITS ? msb - HIST_SUB_BITS : 0;
    unsigned index = (b << HIST_SUB_BITS) + (unsigned)(value >> b);
    assert(index < HIST_BUCKETS);
    return index;
}

uint64_t hist_bucket_low(unsigned index)
{
    unsigned b = index >> HIST_SUB_BITS;
    if (b <= 1) /* exact region: bucket i holds the value i */
        return index;
    b -= 1;
    uint64_t mantissa = index - (b << HIST_SUB_BITS); /* in [2^SUB, 2^(SUB+1)) */
    return mantissa << b;
}

uint64_t hist_bucket_width(unsigned index)
{
    unsigned b = index >> HIST_SUB_BITS;
    return b <= 1 ? 1 : (uint64_t)1 << (b - 1);
}

void hist_record(hist_t *h, uint64_t value)
{
    h->buckets[hist_index(value)]++;
    h->count++;
    h->sum += (double)value;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
}

void hist_merge(hist_t *into, const hist_t *from)
{
    if (!from->count)
        return;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->buckets[i] += from->buckets[i];
    into->count += from->count;
    into->sum += from->sum;
    if (from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
}

uint64_t hist_percentile(const hist_t *h, double p)
{
    if (!h->count)
        return 0;
    if (p <= 0)
        return h->min;
    if (p >= 100)
        return h->max;
    /* the rank of the p-th value, 1-based: ceil(p% of count) */
    double want = p / 100.0 * (double)h->count;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t width = hist_bucket_width(i);
            uint64_t value = hist_bucket_low(i) + (width - 1) / 2;
            if (value < h->min)
                value = h->min;
            if (value > h->max)
                value = h->max;
            return value;
        }
    }
    return h->max;
}

double hist_mean(const hist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
