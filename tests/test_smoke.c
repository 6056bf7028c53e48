/* test_smoke.c — the loop starts, runs a callback and a timer, and stops. */
#include "test_util.h"

static void on_timer(ioloop_t *loop, void *arg)
{
    (*(int *)arg)++;
    ioloop_stop(loop);
}

static void on_callback(ioloop_t *loop, void *arg)
{
    (*(int *)arg)++;
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(1), on_timer, arg, NULL), 0);
}

static void test_callback_then_timer(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    assert_non_null(loop);
    int n = 0;
    assert_int_equal(ioloop_add_callback(loop, on_callback, &n), 0);
    tu_stop_after(loop, 5000);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ioloop_close(loop, false), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_callback_then_timer)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
