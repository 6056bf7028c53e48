/* test_thread_rules.c — the owner-only rule of ioloop.h enforced: every
 * owner-only call made from a foreign thread on a running loop returns -EPERM
 * (a handle or pointer: 0/NULL with errno EPERM) and does nothing, while the
 * same calls work on the loop's thread and, once it stopped, on the thread
 * that holds it; a runtime's loops refuse ioloop_start/ioloop_close from the
 * application; run_sync on a future another thread's loop owns fails instead
 * of hanging; ioloop_runtime_index and per-loop user data.
 *
 * Threading rule: cmocka asserts run on the main thread only; loop callbacks
 * record what they saw and the main thread checks it after they ran.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/runtime.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

static void never(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_fetch_add((_Atomic int *)arg, 1);
}

static void never_hook(ioloop_t *loop, const char *what, int err, void *arg)
{
    (void)loop, (void)what, (void)err;
    atomic_fetch_add((_Atomic int *)arg, 1);
}

static void never_done(ioloop_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add((_Atomic int *)arg, 1);
}

static ioloop_future_t *no_future(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    return NULL;
}

static void set_flag(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store((_Atomic int *)arg, 1);
}

/* Posts to loop and waits until it ran there: the loop is running. */
static void wait_running(ioloop_t *loop)
{
    _Atomic int ran = 0;
    assert_int_equal(ioloop_add_callback(loop, set_flag, &ran), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (!atomic_load(&ran) && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_true(atomic_load(&ran));
}

/* The owner-only calls, as made on the loop's own thread. */
typedef struct {
    ioloop_periodic_t *periodic;
    _Atomic int calls; /* of never / never_hook / never_done */
    int timer_ok, remove, periodic_start, periodic_stop, set_hook, report, unset_hook;
    _Atomic int done;
} owner_probe_t;

static void owner_calls(ioloop_t *loop, void *arg)
{
    owner_probe_t *p = arg;
    ioloop_timer_t timer = 0;
    p->timer_ok = ioloop_call_later(loop, IOLOOP_SEC(60), never, &p->calls, &timer) == 0 && timer != 0;
    p->remove = ioloop_remove_timeout(loop, timer);
    p->periodic_start = ioloop_periodic_start(p->periodic);
    p->periodic_stop = ioloop_periodic_stop(p->periodic);
    p->set_hook = ioloop_set_error_hook(loop, never_hook, &p->calls);
    p->report = ioloop_report_error(loop, "owner's report", -EIO); /* reaches the hook: 1 call */
    p->unset_hook = ioloop_set_error_hook(loop, NULL, NULL);
    atomic_store(&p->done, 1);
}

static void test_owner_only_calls_refused_from_foreign_thread(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    owner_probe_t p = {0};
    /* Not running yet: this thread holds it and may set it up. */
    assert_int_equal(ioloop_periodic_new(loop, IOLOOP_SEC(60), 0, never, &p.calls, &p.periodic), 0);
    assert_non_null(p.periodic);
    ioloop_future_t *future = NULL;
    assert_int_equal(ioloop_future_new(loop, &future), 0);
    assert_non_null(future);
    pthread_t thread = tu_start_loop_thread(loop);
    wait_running(loop);

    assert_int_equal(ioloop_call_at(loop, 0, never, &p.calls, NULL), -EPERM);
    assert_int_equal(ioloop_call_later(loop, 0, never, &p.calls, NULL), -EPERM);
    assert_int_equal(ioloop_remove_timeout(loop, 1), -EPERM);
    assert_int_equal(ioloop_close(loop, false), -EPERM);
    assert_int_equal(ioloop_start(loop), -EPERM);
    assert_int_equal(ioloop_run_sync(loop, no_future, NULL, 0, NULL), -EPERM);
    ioloop_periodic_t *refused = NULL;
    assert_int_equal(ioloop_periodic_new(loop, IOLOOP_SEC(1), 0, never, &p.calls, &refused), -EPERM);
    assert_null(refused);
    assert_int_equal(ioloop_periodic_start(p.periodic), -EPERM);
    assert_int_equal(ioloop_periodic_stop(p.periodic), -EPERM);
    assert_int_equal(ioloop_periodic_free(p.periodic), -EPERM);
    assert_int_equal(ioloop_set_error_hook(loop, never_hook, &p.calls), -EPERM);
    assert_int_equal(ioloop_report_error(loop, "foreign report", -EIO), -EPERM);
    assert_int_equal(ioloop_future_on_done(future, never_done, &p.calls), -EPERM);
    /* The any-thread calls still work. */
    assert_true(ioloop_id(loop) > 0);

    /* On the loop's own thread the same calls work. */
    assert_int_equal(ioloop_add_callback(loop, owner_calls, &p), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (!atomic_load(&p.done) && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_true(atomic_load(&p.done));
    assert_true(p.timer_ok);
    assert_int_equal(p.remove, 0);
    assert_int_equal(p.periodic_start, 0);
    assert_int_equal(p.periodic_stop, 0);
    assert_int_equal(p.set_hook, 0);
    assert_int_equal(p.report, 0);
    assert_int_equal(p.unset_hook, 0);

    /* Stopped: the holder may use it again. */
    tu_join_loop_thread(loop, thread);
    assert_int_equal(ioloop_future_on_done(future, never_done, &p.calls), 0);
    assert_int_equal(ioloop_periodic_free(p.periodic), 0);
    ioloop_future_unref(future);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(atomic_load(&p.calls), 1); /* only the owner's report reached a hook */
}

/* A runtime's loops: start and close are the runtime's; other owner-only
 * calls are loop i's thread's until the runtime is joined. */
typedef struct {
    _Atomic int index_seen[2];
    _Atomic int ran;
} index_probe_t;

static void note_index(ioloop_t *loop, void *arg)
{
    index_probe_t *p = arg;
    int i = ioloop_runtime_index(ioloop_current());
    if (i >= 0 && i < 2 && loop == ioloop_current())
        atomic_store(&p->index_seen[i], i + 100);
    atomic_fetch_add(&p->ran, 1);
}

static void test_runtime_loops_rules_and_index(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 2, .executor_threads = 1}, &rt), 0);
    index_probe_t p = {0};
    _Atomic int calls = 0;
    for (int i = 0; i < 2; i++) {
        ioloop_t *loop = ioloop_runtime_loop(rt, i);
        assert_int_equal(ioloop_runtime_index(loop), i);
        assert_int_equal(ioloop_add_callback(loop, note_index, &p), 0);
        /* Perhaps not running yet, but already its thread's. */
        assert_int_equal(ioloop_start(loop), -EPERM);
        assert_int_equal(ioloop_close(loop, false), -EPERM);
        assert_int_equal(ioloop_call_later(loop, 0, never, &calls, NULL), -EPERM);
        assert_int_equal(ioloop_set_error_hook(loop, never_hook, &calls), -EPERM);
    }
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (atomic_load(&p.ran) < 2 && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&p.index_seen[0]), 100);
    assert_int_equal(atomic_load(&p.index_seen[1]), 101);

    ioloop_t *mine = tu_loop_new(NULL);
    assert_int_equal(ioloop_runtime_index(mine), -ENOENT);
    ioloop_close(mine, false);

    ioloop_runtime_stop(rt);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    /* Joined: the thread holding the runtime may use the loops (not start or close them). */
    assert_int_equal(ioloop_call_later(ioloop_runtime_loop(rt, 0), IOLOOP_SEC(60), never, &calls, NULL), 0);
    assert_int_equal(ioloop_start(ioloop_runtime_loop(rt, 0)), -EPERM);
    assert_int_equal(ioloop_close(ioloop_runtime_loop(rt, 0), false), -EPERM);
    ioloop_runtime_free(rt);
    assert_int_equal(atomic_load(&calls), 0);
}

/* run_sync on a future of a loop another thread runs: its done callback
 * cannot be set from here, and run_sync says so instead of waiting forever. */
typedef struct {
    ioloop_t *other;
    ioloop_future_t *future;
} foreign_future_t;

static ioloop_future_t *future_of_other(ioloop_t *loop, void *arg)
{
    (void)loop;
    foreign_future_t *ff = arg;
    assert_int_equal(ioloop_future_new(ff->other, &ff->future), 0);
    ioloop_future_ref(ff->future); /* one for run_sync, one kept here */
    return ff->future;
}

static void test_run_sync_on_foreign_future_fails(void **state)
{
    (void)state;
    foreign_future_t ff = {.other = tu_loop_new(NULL)};
    pthread_t thread = tu_start_loop_thread(ff.other);
    wait_running(ff.other);
    ioloop_t *loop = tu_loop_new(NULL);
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_run_sync(loop, future_of_other, &ff, IOLOOP_SEC(20), NULL), -EPERM);
    assert_true(tu_now_ns() - t0 < IOLOOP_SEC(10)); /* not the timeout */
    ioloop_close(loop, false);
    tu_join_loop_thread(ff.other, thread);
    ioloop_future_unref(ff.future);
    ioloop_close(ff.other, false);
}

/* Per-loop user data: set before start or from the loop, read anywhere. */
typedef struct {
    ioloop_t *loop;
    void *seen;
} reader_t;

static void *read_user_data(void *arg)
{
    reader_t *r = arg;
    r->seen = ioloop_user_data(r->loop);
    return NULL;
}

static void set_from_loop(ioloop_t *loop, void *arg)
{
    ioloop_set_user_data(loop, arg);
    atomic_store((_Atomic int *)arg, 1);
}

static void test_user_data(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    assert_null(ioloop_user_data(loop));
    static int shard_a;
    static _Atomic int shard_b;
    ioloop_set_user_data(loop, &shard_a);
    pthread_t thread = tu_start_loop_thread(loop);
    reader_t r = {.loop = loop};
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, read_user_data, &r), 0);
    pthread_join(reader, NULL);
    assert_ptr_equal(r.seen, &shard_a);
    assert_int_equal(ioloop_add_callback(loop, set_from_loop, (void *)&shard_b), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (!atomic_load(&shard_b) && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_ptr_equal(ioloop_user_data(loop), (void *)&shard_b);
    tu_join_loop_thread(loop, thread);
    ioloop_close(loop, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_owner_only_calls_refused_from_foreign_thread),
        cmocka_unit_test(test_runtime_loops_rules_and_index),
        cmocka_unit_test(test_run_sync_on_foreign_future_fails),
        cmocka_unit_test(test_user_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
