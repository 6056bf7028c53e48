/* test_close_hooks.c — ioloop_close_hook_add/find (ioloop.h), the per-loop
 * state of the layers above the loop: ioloop_close runs every hook once,
 * newest first, after the loop's last callbacks and with ioloop_current()
 * returning the loop; a hook added by another hook while they run still
 * runs; find returns the newest hook with a fn that has not run; bad
 * arguments, another thread and a closed loop are refused.
 * Threading rule: the test's thread, plus one runtime loop thread for -EPERM.
 */
#include "ioloop/runtime.h"
#include "test_util.h"

#include <errno.h>
#include <string.h>

typedef struct {
    ioloop_close_hook_t hook; /* first */
    int id;
} state_t;

static int order[8], norder;
static ioloop_t *current_seen;
static int callbacks_before; /* callbacks that had run when the first hook ran */
static int callbacks_run;
static state_t late = {.id = 9};

static void record(ioloop_t *loop, ioloop_close_hook_t *hook)
{
    state_t *s = (state_t *)hook;
    if (norder == 0) {
        current_seen = ioloop_current();
        callbacks_before = callbacks_run;
    }
    order[norder++] = s->id;
    (void)loop;
}

static void record_and_add(ioloop_t *loop, ioloop_close_hook_t *hook)
{
    record(loop, hook);
    late.hook.fn = record;
    assert_int_equal(ioloop_close_hook_add(loop, &late.hook), 0); /* runs too */
}

static void other_fn(ioloop_t *loop, ioloop_close_hook_t *hook)
{
    record(loop, hook);
}

static void count_callback(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    callbacks_run++;
}

static void test_hooks_run_once_newest_first(void **state)
{
    (void)state;
    ioloop_t *loop;
    assert_int_equal(ioloop_new(NULL, &loop), 0);
    state_t a = {.hook.fn = record, .id = 1}, b = {.hook.fn = other_fn, .id = 2},
            c = {.hook.fn = record_and_add, .id = 3};
    assert_null(ioloop_close_hook_find(loop, record));
    assert_int_equal(ioloop_close_hook_add(loop, &a.hook), 0);
    assert_int_equal(ioloop_close_hook_add(loop, &b.hook), 0);
    assert_int_equal(ioloop_close_hook_add(loop, &c.hook), 0);
    assert_ptr_equal(ioloop_close_hook_find(loop, record), &a.hook);
    assert_ptr_equal(ioloop_close_hook_find(loop, other_fn), &b.hook);
    assert_int_equal(ioloop_close_hook_add(loop, &(ioloop_close_hook_t){0}), -EINVAL);
    assert_int_equal(ioloop_close_hook_add(loop, NULL), -EINVAL);
    assert_int_equal(ioloop_add_callback(loop, count_callback, NULL), 0);
    norder = 0;
    callbacks_run = 0;
    ioloop_ref(loop);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(norder, 4);
    assert_int_equal(order[0], 3);
    assert_int_equal(order[1], 9); /* added by hook 3 while the hooks ran */
    assert_int_equal(order[2], 2);
    assert_int_equal(order[3], 1);
    assert_ptr_equal(current_seen, loop);
    assert_int_equal(callbacks_before, 1); /* the loop's last callbacks ran first */
    state_t d = {.hook.fn = record, .id = 4};
    assert_int_equal(ioloop_close_hook_add(loop, &d.hook), -ESHUTDOWN);
    assert_null(ioloop_close_hook_find(loop, record));
    ioloop_unref(loop);
}

static void test_other_thread_refused(void **state)
{
    (void)state;
    ioloop_runtime_t *rt;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 1}, &rt), 0);
    ioloop_t *loop = ioloop_runtime_loop(rt, 0);
    state_t a = {.hook.fn = record, .id = 1};
    assert_int_equal(ioloop_close_hook_add(loop, &a.hook), -EPERM);
    assert_null(ioloop_close_hook_find(loop, record));
    ioloop_runtime_stop(rt);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    ioloop_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hooks_run_once_newest_first),
        cmocka_unit_test(test_other_thread_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
