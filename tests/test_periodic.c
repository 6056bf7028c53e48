/* test_periodic.c — Tornado's PeriodicCallback rules on a fake clock: the
 * period runs start to start, overruns skip missed periods (no catch-up),
 * the clock stepping back is ignored, and jitter stays within its band.
 *
 * The fake clock advances a step (a tenth of the period) per read, so the loop always reaches the
 * next deadline by itself; each callback then sets it to "scheduled time +
 * how long this call took", exactly the simulation Tornado's own test runs.
 * Real-clock tests check stop and free from inside the callback, and a start
 * long after the loop last read its clock.
 *
 * Threading rule: single-threaded; each test runs its loop on the main thread. */
#include "test_util.h"

#include <errno.h>
#include <stdlib.h>

typedef struct {
    ioloop_time_t now, step;
    const int *durations;
    int n, calls;
    ioloop_time_t scheduled[64];
    ioloop_periodic_t *pc;
} sim_t;

static ioloop_time_t fake_clock(void *arg)
{
    sim_t *sim = arg;
    ioloop_time_t now = sim->now;
    sim->now += sim->step;
    return now;
}

static void body(ioloop_t *loop, void *arg)
{
    sim_t *sim = arg;
    ioloop_time_t scheduled = ioloop_periodic_scheduled(sim->pc);
    sim->scheduled[sim->calls] = scheduled;
    sim->now = scheduled + sim->durations[sim->calls]; /* this call "took" that long */
    if (++sim->calls == sim->n)
        ioloop_stop(loop);
}

static void simulate(const int *durations, int n, ioloop_time_t period, double jitter, sim_t *sim)
{
    *sim = (sim_t){.now = 1000, .step = period / 10, .durations = durations, .n = n};
    ioloop_options_t opts = {.clock = fake_clock, .clock_arg = sim};
    ioloop_t *loop = tu_loop_new(&opts);
    assert_non_null(loop);
    assert_int_equal(ioloop_time(loop), 1000);
    sim->now = 1000; /* the first start reads it again */
    assert_int_equal(ioloop_periodic_new(loop, period, jitter, body, sim, &sim->pc), 0);
    assert_non_null(sim->pc);
    assert_int_equal(ioloop_periodic_start(sim->pc), 0);
    assert_true(ioloop_periodic_is_running(sim->pc));
    ioloop_start(loop);
    ioloop_periodic_free(sim->pc);
    ioloop_close(loop, false);
}

static void expect_schedule(const int *durations, const int *expected, int n)
{
    sim_t sim;
    simulate(durations, n, 10, 0, &sim);
    assert_int_equal(sim.calls, n);
    for (int i = 0; i < n; i++)
        if (sim.scheduled[i] != expected[i])
            fail_msg("call %d scheduled at %lld, expected %d", i, (long long)sim.scheduled[i], expected[i]);
}

static void test_basic(void **state)
{
    (void)state;
    int durations[] = {0, 0, 0, 0, 0};
    int expected[] = {1010, 1020, 1030, 1040, 1050};
    expect_schedule(durations, expected, 5);
}

static void test_overrun_skips_missed_periods(void **state)
{
    (void)state;
    int durations[] = {9, 9, 10, 11, 20, 20, 35, 35, 0, 0, 0};
    int expected[] = {1010, 1020, 1030, 1050, 1070, 1100, 1130, 1170, 1210, 1220, 1230};
    expect_schedule(durations, expected, 11);
}

static void test_clock_backwards_ignored(void **state)
{
    (void)state;
    int small[] = {-2, -1, -3, -2, 0};
    int expected_small[] = {1010, 1020, 1030, 1040, 1050};
    expect_schedule(small, expected_small, 5);
    int big[] = {-100, 0, 0};
    int expected_big[] = {1010, 1020, 1030};
    expect_schedule(big, expected_big, 3);
}

static void test_jitter_band(void **state)
{
    (void)state;
    enum { N = 40 };
    int durations[N] = {0};
    sim_t sim;
    simulate(durations, N, 1000, 0.5, &sim);
    assert_int_equal(sim.calls, N);
    bool varied = false;
    for (int i = 1; i < N; i++) {
        ioloop_time_t gap = sim.scheduled[i] - sim.scheduled[i - 1];
        assert_true(gap >= 750 && gap <= 1250); /* 1000 * (1 +- 0.5/2) */
        if (gap != 1000)
            varied = true;
    }
    assert_true(varied);
}

/* Real clock: stop() from inside the callback ends it; it can be restarted. */
typedef struct {
    int runs;
    ioloop_periodic_t *pc;
} stop_probe_t;

static void stop_loop(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

static void stop_at_three(ioloop_t *loop, void *arg)
{
    stop_probe_t *p = arg;
    if (++p->runs == 3) {
        ioloop_periodic_stop(p->pc);
        /* Run on for 25 periods: a stopped callback must not run again. */
        ioloop_call_later(loop, IOLOOP_MSEC(50), stop_loop, NULL, NULL);
    }
}

static void test_stop_inside_callback(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    stop_probe_t p = {0};
    assert_int_equal(ioloop_periodic_new(loop, IOLOOP_MSEC(2), 0, stop_at_three, &p, &p.pc), 0);
    ioloop_periodic_start(p.pc);
    assert_int_equal(ioloop_periodic_start(p.pc), -EALREADY);
    tu_stop_after(loop, 20000);
    ioloop_start(loop);
    assert_int_equal(p.runs, 3);
    assert_false(ioloop_periodic_is_running(p.pc));
    ioloop_periodic_free(p.pc);
    ioloop_close(loop, false);
}

/* Freeing the periodic callback from inside its own callback is allowed. */
typedef struct {
    int runs;
    ioloop_periodic_t *pc;
} free_probe_t;

static void free_self(ioloop_t *loop, void *arg)
{
    free_probe_t *p = arg;
    p->runs++;
    ioloop_periodic_free(p->pc); /* under ASan, any later touch of pc fails */
    ioloop_call_later(loop, IOLOOP_MSEC(20), stop_loop, NULL, NULL);
}

static void test_free_inside_callback(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    free_probe_t p = {0};
    assert_int_equal(ioloop_periodic_new(loop, IOLOOP_MSEC(2), 0, free_self, &p, &p.pc), 0);
    assert_non_null(p.pc);
    assert_int_equal(ioloop_periodic_start(p.pc), 0);
    tu_stop_after(loop, 20000);
    ioloop_start(loop);
    assert_int_equal(p.runs, 1);
    ioloop_close(loop, false);
}

/* The first period is measured from the start, not from when the loop last
 * read its clock. */
typedef struct {
    int64_t started, first_run;
    ioloop_periodic_t *pc;
} first_probe_t;

static void note_first(ioloop_t *loop, void *arg)
{
    first_probe_t *p = arg;
    p->first_run = tu_now_ns();
    ioloop_periodic_stop(p->pc);
    ioloop_stop(loop);
}

static void test_start_long_after_new(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    first_probe_t p = {0};
    assert_int_equal(ioloop_periodic_new(loop, IOLOOP_MSEC(200), 0, note_first, &p, &p.pc), 0);
    tu_sleep_ms(300); /* the loop's cached time is now 300 ms old */
    p.started = tu_now_ns();
    assert_int_equal(ioloop_periodic_start(p.pc), 0);
    tu_stop_after(loop, 20000);
    ioloop_start(loop);
    assert_true(p.first_run - p.started >= IOLOOP_MSEC(200));
    ioloop_periodic_free(p.pc);
    ioloop_close(loop, false);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int runs = 0;
    ioloop_periodic_t *pc = (ioloop_periodic_t *)&runs; /* must be reset to NULL */
    assert_int_equal(ioloop_periodic_new(loop, 0, 0, (ioloop_callback_fn)stop_loop, &runs, &pc), -EINVAL);
    assert_null(pc);
    assert_int_equal(ioloop_periodic_new(loop, 10, 1.5, (ioloop_callback_fn)stop_loop, &runs, &pc), -EINVAL);
    assert_int_equal(ioloop_periodic_new(loop, 10, 0, NULL, &runs, &pc), -EINVAL);
    ioloop_close(loop, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_overrun_skips_missed_periods),
        cmocka_unit_test(test_clock_backwards_ignored),
        cmocka_unit_test(test_jitter_band),
        cmocka_unit_test(test_stop_inside_callback),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_free_inside_callback),
        cmocka_unit_test(test_start_long_after_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
