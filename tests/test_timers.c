/* test_timers.c — call_at/call_later/remove_timeout: FIFO among equal
 * deadlines, cancellation (also of a timer due in the same run), stale
 * handles, churn, never firing early (also for a timer scheduled long after
 * the loop last read its clock), and a delay past the end of time.
 *
 * Threading rule: single-threaded; each test runs its loop on the main thread. */
#include "test_util.h"

#include "internal.h" /* white-box: the heap's size after churn */

#include <errno.h>

static void stop_now(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

static void count(ioloop_t *loop, void *arg)
{
    (void)loop;
    (*(int *)arg)++;
}

/* ---- 9. equal deadlines run in the order they were added ------------------ */

typedef struct {
    int order[100];
    int n;
} order_t;

static order_t order_log;

static void log_order(ioloop_t *loop, void *arg)
{
    (void)loop;
    order_log.order[order_log.n++] = (int)(intptr_t)arg;
}

static void test_equal_deadlines_fifo(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    order_log.n = 0;
    ioloop_time_t at = ioloop_time(loop) + IOLOOP_MSEC(5);
    for (intptr_t i = 0; i < 100; i++)
        assert_int_equal(ioloop_call_at(loop, at, log_order, (void *)i, NULL), 0);
    assert_int_equal(ioloop_call_at(loop, at + 1, stop_now, NULL, NULL), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(order_log.n, 100);
    for (int i = 0; i < 100; i++)
        assert_int_equal(order_log.order[i], i);
    ioloop_close(loop, false);
}

/* Deadlines run in deadline order, whatever the insertion order. */
static void test_deadline_order(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    order_log.n = 0;
    ioloop_time_t base = ioloop_time(loop);
    int delays[] = {7, 3, 9, 1, 5, 2, 8};
    for (int i = 0; i < 7; i++)
        ioloop_call_at(loop, base + IOLOOP_MSEC(delays[i]), log_order, (void *)(intptr_t)delays[i], NULL);
    ioloop_call_at(loop, base + IOLOOP_MSEC(20), stop_now, NULL, NULL);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    int expected[] = {1, 2, 3, 5, 7, 8, 9};
    assert_int_equal(order_log.n, 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(order_log.order[i], expected[i]);
    ioloop_close(loop, false);
}

/* ---- 8a. remove_timeout after the timer fired is harmless ----------------- */

typedef struct {
    ioloop_timer_t first;
    int first_runs, second_runs;
} stale_t;

static void schedule_second(ioloop_t *loop, void *arg)
{
    stale_t *s = arg;
    s->first_runs++;
    /* The first timer's slot is free now; a new timer may take it. */
    ioloop_timer_t second = 0;
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(2), count, &s->second_runs, &second), 0);
    assert_true(second != 0);
    assert_true(second != s->first);
    ioloop_remove_timeout(loop, s->first); /* stale: must not cancel `second` */
    ioloop_remove_timeout(loop, s->first);
    ioloop_call_later(loop, IOLOOP_MSEC(20), stop_now, NULL, NULL);
}

static void test_remove_after_fire_is_harmless(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    stale_t s = {0};
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(1), schedule_second, &s, &s.first), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(s.first_runs, 1);
    assert_int_equal(s.second_runs, 1);
    ioloop_remove_timeout(loop, 0);          /* the null handle */
    ioloop_remove_timeout(loop, ~0ull);      /* garbage */
    ioloop_close(loop, false);
}

/* ---- 8b. 2000 add-then-remove timers leave the loop healthy --------------- */

static void test_add_remove_churn(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int cancelled_runs = 0, live_runs = 0;
    for (int i = 0; i < 2000; i++) {
        ioloop_timer_t t = 0;
        assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(1 + i % 7), count, &cancelled_runs, &t), 0);
        assert_true(t != 0);
        ioloop_remove_timeout(loop, t);
    }
    /* Cancelled entries are compacted away, not kept until their deadline. */
    assert_true(loop->timers.count < 200);
    ioloop_call_later(loop, IOLOOP_MSEC(5), count, &live_runs, NULL);
    ioloop_call_later(loop, IOLOOP_MSEC(30), stop_now, NULL, NULL);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(cancelled_runs, 0);
    assert_int_equal(live_runs, 1);
    assert_int_equal(loop->timers.count, 1); /* only the safety-net timer is left */
    ioloop_close(loop, false);
}

/* ---- 8c. two timers due together, the first cancels the second ------------ */

typedef struct {
    ioloop_timer_t victim;
    int killer_runs, victim_runs;
} pair_t;

static void killer(ioloop_t *loop, void *arg)
{
    pair_t *p = arg;
    p->killer_runs++;
    ioloop_remove_timeout(loop, p->victim);
}

static void victim(ioloop_t *loop, void *arg)
{
    (void)loop;
    ((pair_t *)arg)->victim_runs++;
}

static void test_first_due_cancels_second_due(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    pair_t p = {0};
    ioloop_time_t at = ioloop_time(loop) + IOLOOP_MSEC(3);
    assert_int_equal(ioloop_call_at(loop, at, killer, &p, NULL), 0);
    assert_int_equal(ioloop_call_at(loop, at, victim, &p, &p.victim), 0);
    ioloop_call_at(loop, at + IOLOOP_MSEC(20), stop_now, NULL, NULL);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(p.killer_runs, 1);
    assert_int_equal(p.victim_runs, 0);
    ioloop_close(loop, false);
}

/* A timer never fires before its deadline. */
typedef struct {
    ioloop_time_t due;
    ioloop_time_t fired_at;
} early_t;

static void record_fire(ioloop_t *loop, void *arg)
{
    early_t *e = arg;
    e->fired_at = tu_now_ns();
    ioloop_stop(loop);
    (void)loop;
}

static void test_never_early(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    early_t e = {0};
    int64_t start = tu_now_ns();
    ioloop_call_later(loop, IOLOOP_MSEC(30), record_fire, &e, NULL);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_true(e.fired_at - start >= IOLOOP_MSEC(30));
    ioloop_close(loop, false);
}

/* A timer added by a due callback runs in a later run even if already due. */
typedef struct {
    int runs;
    uint64_t iteration[2];
} due_probe_t;

static uint64_t iterations(ioloop_t *loop)
{
    ioloop_stats_t st;
    ioloop_get_stats(loop, &st);
    return st.iterations;
}

static void add_already_due(ioloop_t *loop, void *arg)
{
    due_probe_t *p = arg;
    p->iteration[p->runs++] = iterations(loop);
    if (p->runs == 1)
        ioloop_call_at(loop, ioloop_time(loop) - 1, add_already_due, p, NULL);
    else
        ioloop_stop(loop);
}

static void test_timer_added_while_running_is_not_run_in_same_pass(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    due_probe_t p = {0};
    ioloop_call_later(loop, 0, add_already_due, &p, NULL);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(p.runs, 2);
    assert_int_equal(p.iteration[1], p.iteration[0] + 1); /* the next pass, not the same one */
    ioloop_close(loop, false);
}

/* Tornado's order: a timer made with call_later(0) from a callback runs after
 * the callbacks that callback queued ahead of it (1, 2, then T), and after a
 * callback queued behind it in the same callback (3): callbacks first, then
 * due timers, and a timer added in an iteration is due in the next one. */
static void order_then_stop(ioloop_t *loop, void *arg)
{
    log_order(loop, arg);
    ioloop_stop(loop);
}

static void queue_1_2_t_3(ioloop_t *loop, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_add_callback(loop, log_order, (void *)1), 0);
    assert_int_equal(ioloop_add_callback(loop, log_order, (void *)2), 0);
    assert_int_equal(ioloop_call_later(loop, 0, order_then_stop, (void *)100, NULL), 0);
    assert_int_equal(ioloop_add_callback(loop, log_order, (void *)3), 0);
}

static void test_call_later_zero_runs_after_queued_callbacks(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    order_log.n = 0;
    assert_int_equal(ioloop_add_callback(loop, queue_1_2_t_3, NULL), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(order_log.n, 4);
    assert_int_equal(order_log.order[0], 1);
    assert_int_equal(order_log.order[1], 2);
    assert_int_equal(order_log.order[2], 3);
    assert_int_equal(order_log.order[3], 100);
    ioloop_close(loop, false);
}

/* A delay measured from when call_later is called, even if the loop has not
 * read its clock for a while (it was made, or last ran, long ago). */
static void test_call_later_before_start_uses_fresh_time(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    early_t e = {0};
    tu_sleep_ms(300); /* the loop's cached time is now 300 ms old */
    int64_t start = tu_now_ns();
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(200), record_fire, &e, NULL), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_true(e.fired_at - start >= IOLOOP_MSEC(200));
    ioloop_close(loop, false);
}

/* A delay past the end of time means never, not "wrapped into the past". */
static void test_huge_delay_never_fires(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int runs = 0;
    assert_int_equal(ioloop_call_later(loop, INT64_MAX, count, &runs, NULL), 0);
    assert_int_equal(ioloop_call_later(loop, INT64_MAX - 1, count, &runs, NULL), 0);
    ioloop_call_later(loop, IOLOOP_MSEC(20), stop_now, NULL, NULL);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(runs, 0);
    ioloop_close(loop, false);
}

static void test_call_at_on_closed_loop(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_ref(loop);
    ioloop_close(loop, false);
    int runs = 0;
    ioloop_timer_t refused = 1;
    assert_int_equal(ioloop_call_later(loop, 1, count, &runs, &refused), -ESHUTDOWN);
    assert_true(refused == 0);
    ioloop_unref(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_deadlines_fifo),
        cmocka_unit_test(test_deadline_order),
        cmocka_unit_test(test_remove_after_fire_is_harmless),
        cmocka_unit_test(test_add_remove_churn),
        cmocka_unit_test(test_first_due_cancels_second_due),
        cmocka_unit_test(test_never_early),
        cmocka_unit_test(test_timer_added_while_running_is_not_run_in_same_pass),
        cmocka_unit_test(test_call_later_zero_runs_after_queued_callbacks),
        cmocka_unit_test(test_call_at_on_closed_loop),
        cmocka_unit_test(test_call_later_before_start_uses_fresh_time),
        cmocka_unit_test(test_huge_delay_never_fires),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
