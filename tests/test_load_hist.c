/* test_load_hist.c — ioloop-load's latency histogram (tools/ioloop-load/hist.c):
 * every uint64 value has a bucket (no overflow, unlike wrk's fixed array),
 * the buckets tile the range with no gap, the reported value is within
 * 1/256 of the true one, percentiles are exact where values are exact,
 * ordered, and survive a merge across loops. */
#include "test_util.h"

#include "../tools/ioloop-load/hist.c"

#include <stdlib.h>

static void test_buckets_tile_the_range(void **state)
{
    (void)state;
    /* each bucket starts where the previous one ended */
    for (unsigned i = 1; i < HIST_BUCKETS; i++)
        assert_int_equal(hist_bucket_low(i), hist_bucket_low(i - 1) + hist_bucket_width(i - 1));
    assert_int_equal(hist_index(0), 0);
    assert_int_equal(hist_index(255), 255);
    assert_int_equal(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
    assert_true(hist_bucket_low(HIST_BUCKETS - 1) + (hist_bucket_width(HIST_BUCKETS - 1) - 1) == UINT64_MAX);
}

static void test_value_in_its_bucket_and_error_bounded(void **state)
{
    (void)state;
    uint64_t x = 88172645463325252ull; /* xorshift: values over every magnitude */
    for (int n = 0; n < 200000; n++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t v = x >> (x % 64);
        unsigned i = hist_index(v);
        uint64_t low = hist_bucket_low(i), width = hist_bucket_width(i);
        assert_true(v >= low && v - low < width);
        uint64_t mid = low + (width - 1) / 2;
        double err = v > mid ? (double)(v - mid) : (double)(mid - v);
        assert_true(v < 256 ? err == 0 : err / (double)v <= 1.0 / 256);
    }
}

static void test_percentiles_exact_small_values(void **state)
{
    (void)state;
    hist_t *h = malloc(sizeof(*h));
    assert_non_null(h);
    hist_init(h);
    assert_int_equal(hist_percentile(h, 50), 0); /* empty */
    for (uint64_t v = 1; v <= 100; v++)
        hist_record(h, v);
    assert_int_equal(hist_percentile(h, 50), 50);
    assert_int_equal(hist_percentile(h, 90), 90);
    assert_int_equal(hist_percentile(h, 99), 99);
    assert_int_equal(hist_percentile(h, 99.9), 100);
    assert_int_equal(hist_percentile(h, 100), 100);
    assert_int_equal(hist_percentile(h, 0), 1);
    assert_true(hist_mean(h) == 50.5);
    free(h);
}

static void test_no_overflow_and_merge(void **state)
{
    (void)state;
    hist_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
    assert_non_null(a);
    assert_non_null(b);
    hist_init(a);
    hist_init(b);
    /* loop a: a million fast responses (pipelined, ~30 us); loop b: a few
     * very slow ones, one beyond any fixed range */
    for (int i = 0; i < 1000000; i++)
        hist_record(a, 30000 + (uint64_t)(i % 1000));
    hist_record(b, 5000000000ull);
    hist_record(b, UINT64_MAX);
    hist_merge(a, b);
    assert_int_equal(a->count, 1000002);
    assert_int_equal(a->max, UINT64_MAX);
    assert_int_equal(a->min, 30000);
    uint64_t p50 = hist_percentile(a, 50), p99 = hist_percentile(a, 99), p999 = hist_percentile(a, 99.9);
    assert_true(p50 >= 30000 && p50 <= 31000);
    assert_true(p50 <= p99 && p99 <= p999 && p999 <= hist_percentile(a, 99.9999) &&
                hist_percentile(a, 100) == UINT64_MAX);
    /* the slowest two are the top ranks */
    assert_true(hist_percentile(a, 99.99995) >= 4980000000ull);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_tile_the_range),
        cmocka_unit_test(test_value_in_its_bucket_and_error_bounded),
        cmocka_unit_test(test_percentiles_exact_small_values),
        cmocka_unit_test(test_no_overflow_and_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
