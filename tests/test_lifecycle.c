/* test_lifecycle.c — start/stop/close, nested start, current and instance,
 * the registry, concurrent create/close, the backend choice; a stop that
 * comes as the loop exits, a stop racing close, close from inside a callback,
 * what close runs, and the default error hook's line.
 *
 * Threading rule: cmocka asserts run on the main thread only; helper threads
 * record what they saw and the main thread checks it after joining them. */
#define _GNU_SOURCE
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void stop_loop(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

/* ---- 11. nested start fails; stop before start; current only while running */

typedef struct {
    int nested_result;
    ioloop_t *current_inside;
} nested_t;

static void try_nested_start(ioloop_t *loop, void *arg)
{
    nested_t *n = arg;
    n->nested_result = ioloop_start(loop);
    n->current_inside = ioloop_current();
    ioloop_stop(loop);
}

static void test_nested_start_fails(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    nested_t n = {0};
    ioloop_add_callback(loop, try_nested_start, &n);
    tu_stop_after(loop, 5000);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(n.nested_result, -EBUSY);
    assert_ptr_equal(n.current_inside, loop);
    ioloop_close(loop, false);
}

static void test_stop_before_start_returns_at_once(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int ran = 0;
    ioloop_call_later(loop, IOLOOP_SEC(10), stop_loop, &ran, NULL);
    ioloop_stop(loop);
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_start(loop), 0);
    assert_true(tu_now_ns() - t0 < IOLOOP_SEC(5));
    /* The stop was consumed: the next start runs until stopped again. */
    ioloop_add_callback(loop, stop_loop, NULL);
    assert_int_equal(ioloop_start(loop), 0);
    ioloop_close(loop, false);
}

typedef struct {
    ioloop_t *loop;
    ioloop_t *seen_on_other_thread;
    int start_on_other_thread;
} other_t;

static void *look_from_other_thread(void *arg)
{
    other_t *o = arg;
    o->seen_on_other_thread = ioloop_current();
    o->start_on_other_thread = ioloop_start(o->loop); /* already running elsewhere */
    return NULL;
}

static void check_from_other_thread(ioloop_t *loop, void *arg)
{
    other_t *o = arg;
    pthread_t t;
    pthread_create(&t, NULL, look_from_other_thread, o);
    pthread_join(t, NULL);
    ioloop_stop(loop);
}

static void test_current_only_while_running_here(void **state)
{
    (void)state;
    ioloop_t *mine = ioloop_current();
    assert_non_null(mine);
    assert_ptr_equal(ioloop_current(), mine); /* stable */
    ioloop_t *loop = tu_loop_new(NULL);
    assert_ptr_not_equal(ioloop_current(), loop);
    other_t o = {.loop = loop};
    ioloop_add_callback(loop, check_from_other_thread, &o);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_non_null(o.seen_on_other_thread);
    assert_ptr_not_equal(o.seen_on_other_thread, loop);
    assert_int_equal(o.start_on_other_thread, -EPERM);
    assert_ptr_equal(ioloop_current(), mine); /* back to this thread's own loop */
    ioloop_close(loop, false);
}

typedef struct {
    ioloop_t *inner;
    int result;
} two_loops_t;

static void start_inner(ioloop_t *loop, void *arg)
{
    two_loops_t *t = arg;
    t->result = ioloop_start(t->inner);
    ioloop_stop(loop);
}

static void test_second_loop_on_same_thread_refused(void **state)
{
    (void)state;
    two_loops_t t = {.inner = tu_loop_new(NULL), .result = 1};
    ioloop_t *outer = tu_loop_new(NULL);
    ioloop_add_callback(outer, start_inner, &t);
    tu_stop_after(outer, 5000);
    ioloop_start(outer);
    assert_int_equal(t.result, -EINVAL);
    ioloop_close(outer, false);
    ioloop_close(t.inner, false);
}

/* ---- 13. concurrent create/close, and the instance race ------------------- */

/* Runs on its own thread: counts what went wrong for the main thread. */
static void *create_close_ten(void *arg)
{
    int *failures = arg;
    for (int i = 0; i < 10; i++) {
        ioloop_t *loop = tu_loop_new(NULL);
        if (!loop) {
            ++*failures;
            continue;
        }
        ioloop_add_callback(loop, stop_loop, NULL);
        *failures += ioloop_start(loop) != 0;
        *failures += ioloop_close(loop, true) != 0;
    }
    return NULL;
}

static void test_two_threads_create_and_close(void **state)
{
    (void)state;
    int fds_before = tu_open_fds();
    int failures[2] = {0, 0};
    pthread_t a, b;
    pthread_create(&a, NULL, create_close_ten, &failures[0]);
    pthread_create(&b, NULL, create_close_ten, &failures[1]);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    assert_int_equal(failures[0] + failures[1], 0);
    assert_int_equal(tu_open_fds(), fds_before); /* epoll fds and wakers closed */
}

static pthread_barrier_t instance_barrier;

static void *race_instance(void *arg)
{
    pthread_barrier_wait(&instance_barrier);
    *(ioloop_t **)arg = ioloop_instance();
    return NULL;
}

static void test_instance_race(void **state)
{
    (void)state;
    enum { RACERS = 8 };
    pthread_t t[RACERS];
    ioloop_t *got[RACERS];
    pthread_barrier_init(&instance_barrier, NULL, RACERS);
    for (int i = 0; i < RACERS; i++)
        pthread_create(&t[i], NULL, race_instance, &got[i]);
    for (int i = 0; i < RACERS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&instance_barrier);
    assert_non_null(got[0]);
    for (int i = 1; i < RACERS; i++)
        assert_ptr_equal(got[i], got[0]);
    assert_ptr_equal(ioloop_instance(), got[0]);
    /* Closing the instance clears it; the next call makes a new one. */
    assert_int_equal(ioloop_close(got[0], false), 0);
    ioloop_t *fresh = ioloop_instance();
    assert_non_null(fresh);
    ioloop_close(fresh, false);
}

/* ---- the registry --------------------------------------------------------- */

typedef struct {
    ioloop_t *want[3];
    int found[3];
    int total;
} census_t;

static void census(ioloop_t *loop, void *arg)
{
    census_t *c = arg;
    c->total++;
    for (int i = 0; i < 3; i++)
        if (c->want[i] == loop)
            c->found[i]++;
}

static void *census_from_thread(void *arg)
{
    ioloop_registry_foreach(census, arg);
    return NULL;
}

static void test_registry_lists_live_loops(void **state)
{
    (void)state;
    census_t c = {0};
    for (int i = 0; i < 3; i++)
        c.want[i] = tu_loop_new(NULL);
    pthread_t t; /* a thread with no loop of its own may walk it */
    pthread_create(&t, NULL, census_from_thread, &c);
    pthread_join(t, NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(c.found[i], 1);
    ioloop_close(c.want[1], false);
    census_t after = {.want = {c.want[0], c.want[1], c.want[2]}};
    ioloop_registry_foreach(census, &after);
    assert_int_equal(after.found[0], 1);
    assert_int_equal(after.found[1], 0);
    assert_int_equal(after.found[2], 1);
    ioloop_close(c.want[0], false);
    ioloop_close(c.want[2], false);
}

/* ---- backends -------------------------------------------------------------- */

static void test_backend_choice(void **state)
{
    (void)state;
    const char *env = getenv("IOLOOP_BACKEND");
    ioloop_t *loop = tu_loop_new(NULL);
    if (env)
        assert_string_equal(ioloop_backend_name(loop), env);
    ioloop_close(loop, false);
    ioloop_options_t poll_opts = {.backend = IOLOOP_BACKEND_POLL};
    loop = tu_loop_new(&poll_opts);
    assert_string_equal(ioloop_backend_name(loop), "poll");
    ioloop_close(loop, false);
    ioloop_options_t kq = {.backend = IOLOOP_BACKEND_KQUEUE};
#ifdef __linux__
    ioloop_t *none = (ioloop_t *)&kq; /* must be reset to NULL */
    assert_int_equal(ioloop_new(&kq, &none), -ENOSYS);
    assert_null(none);
#else
    (void)kq;
#endif
}

static void test_time_is_cached_per_iteration(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_time_t a = ioloop_time(loop);
    tu_sleep_ms(5);
    assert_int_equal(ioloop_time(loop), a); /* not re-read until the loop runs */
    ioloop_add_callback(loop, stop_loop, NULL);
    ioloop_start(loop);
    assert_true(ioloop_time(loop) >= a + IOLOOP_MSEC(5));
    ioloop_close(loop, false);
}

/* ---- a stop that comes while the loop is on its way out is kept ---------- */

/* The clock is user code the loop calls on its way out of an iteration that a
 * stop ended: a stop made there is one "arriving as the loop exits", meant for
 * the next start. */
typedef struct {
    ioloop_t *loop;
    bool armed;
    int late_stops;
} late_clock_t;

static ioloop_time_t late_stop_clock(void *arg)
{
    late_clock_t *c = arg;
    if (c->armed) {
        c->armed = false;
        c->late_stops++;
        ioloop_stop(c->loop);
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return IOLOOP_SEC(ts.tv_sec) + ts.tv_nsec;
}

static void stop_and_arm(ioloop_t *loop, void *arg)
{
    ((late_clock_t *)arg)->armed = true;
    ioloop_stop(loop);
}

static void note_safety_net(ioloop_t *loop, void *arg)
{
    *(bool *)arg = true;
    ioloop_stop(loop);
}

static void test_stop_during_exit_is_kept_for_next_start(void **state)
{
    (void)state;
    late_clock_t c = {0};
    ioloop_options_t opts = {.clock = late_stop_clock, .clock_arg = &c};
    ioloop_t *loop = c.loop = tu_loop_new(&opts);
    ioloop_add_callback(loop, stop_and_arm, &c);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(c.late_stops, 1);
    /* That late stop makes this start return at once, not the safety net. */
    bool net_fired = false;
    ioloop_call_later(loop, IOLOOP_SEC(3), note_safety_net, &net_fired, NULL);
    assert_int_equal(ioloop_start(loop), 0);
    assert_false(net_fired);
    ioloop_close(loop, false);
}

/* ---- close: refused from inside, runs accepted callbacks as the loop ------ */

typedef struct {
    int close_result;
    ioloop_t *current_in_close_callback;
    int post_in_close_callback;
    int ran;
} close_probe_t;

static void try_close_inside(ioloop_t *loop, void *arg)
{
    close_probe_t *p = arg;
    p->close_result = ioloop_close(loop, false);
    ioloop_stop(loop);
}

static void test_close_from_inside_callback_is_busy(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    close_probe_t p = {.close_result = 1};
    ioloop_add_callback(loop, try_close_inside, &p);
    tu_stop_after(loop, 5000);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(p.close_result, -EBUSY);
    assert_int_equal(ioloop_close(loop, false), 0); /* still open after the refusal */
}

static void run_at_close(ioloop_t *loop, void *arg)
{
    close_probe_t *p = arg;
    p->ran++;
    p->current_in_close_callback = ioloop_current();
    p->post_in_close_callback = ioloop_add_callback(loop, run_at_close, p);
}

static void test_close_runs_accepted_callbacks_as_the_loop(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    close_probe_t p = {0};
    assert_int_equal(ioloop_add_callback(loop, run_at_close, &p), 0);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(p.ran, 1);
    assert_ptr_equal(p.current_in_close_callback, loop);
    assert_int_equal(p.post_in_close_callback, -ESHUTDOWN);
    ioloop_t *mine = ioloop_current();
    assert_ptr_not_equal(mine, loop); /* the thread's running loop is restored */
}

/* ---- ioloop_current after the thread's own loop was closed --------------- */

static void *current_after_close(void *arg)
{
    ioloop_t **seen = arg;
    seen[0] = ioloop_current();
    ioloop_close(seen[0], false);
    seen[1] = ioloop_current();
    if (seen[1])
        seen[2] = ioloop_add_callback(seen[1], stop_loop, NULL) == 0 ? seen[1] : NULL;
    return NULL;
}

static void test_current_replaces_closed_own_loop(void **state)
{
    (void)state;
    ioloop_t *seen[3] = {NULL, NULL, NULL};
    pthread_t t;
    pthread_create(&t, NULL, current_after_close, seen);
    pthread_join(t, NULL);
    assert_non_null(seen[0]);
    assert_non_null(seen[1]);
    assert_ptr_not_equal(seen[1], seen[0]);
    assert_ptr_equal(seen[2], seen[1]); /* the new one takes posts */
}

/* ---- the default error hook ---------------------------------------------- */

static void test_default_error_hook_names_the_loop(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(pipefd[1], STDERR_FILENO), STDERR_FILENO);
    ioloop_report_error(loop, "probe", -EIO);
    ioloop_report_error(loop, "peer", -ECONNRESET); /* a normal close: no line */
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(pipefd[1]);
    char got[256] = {0};
    ssize_t n = read(pipefd[0], got, sizeof(got) - 1);
    close(pipefd[0]);
    assert_true(n > 0);
    char want[128];
    snprintf(want, sizeof(want), "ioloop[%u]: probe: %s\n", ioloop_id(loop), strerror(EIO));
    assert_string_equal(got, want);
    ioloop_close(loop, false);
}

/* ---- stops from another thread racing close ------------------------------ */

typedef struct {
    ioloop_t *loop;
    _Atomic bool done;
} stopper_t;

static void *stop_until_done(void *arg)
{
    stopper_t *s = arg;
    while (!atomic_load(&s->done))
        ioloop_stop(s->loop);
    return NULL;
}

/* A stop's waker write must never land on a closed fd or on whatever file
 * took its number: sockets opened right after the close receive nothing. */
static void test_stop_racing_close(void **state)
{
    (void)state;
    int stray_bytes = 0;
    for (int round = 0; round < 100; round++) {
        stopper_t s = {.loop = tu_loop_new(NULL)};
        assert_non_null(s.loop);
        ioloop_ref(s.loop); /* the stopper's reference, valid across the close */
        pthread_t t;
        pthread_create(&t, NULL, stop_until_done, &s);
        tu_sleep_ms(round % 2);
        assert_int_equal(ioloop_close(s.loop, false), 0);
        int pairs[3][2]; /* take the numbers the waker and the poller had */
        for (int i = 0; i < 3; i++)
            tu_socketpair(pairs[i]);
        tu_sleep_ms(1);
        atomic_store(&s.done, true);
        pthread_join(t, NULL);
        for (int i = 0; i < 3; i++) {
            char buf[16];
            for (int end = 0; end < 2; end++) {
                if (read(pairs[i][end], buf, sizeof(buf)) > 0)
                    stray_bytes++;
                close(pairs[i][end]);
            }
        }
        ioloop_unref(s.loop);
    }
    assert_int_equal(stray_bytes, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nested_start_fails),
        cmocka_unit_test(test_stop_before_start_returns_at_once),
        cmocka_unit_test(test_current_only_while_running_here),
        cmocka_unit_test(test_second_loop_on_same_thread_refused),
        cmocka_unit_test(test_two_threads_create_and_close),
        cmocka_unit_test(test_instance_race),
        cmocka_unit_test(test_registry_lists_live_loops),
        cmocka_unit_test(test_backend_choice),
        cmocka_unit_test(test_time_is_cached_per_iteration),
        cmocka_unit_test(test_stop_during_exit_is_kept_for_next_start),
        cmocka_unit_test(test_close_from_inside_callback_is_busy),
        cmocka_unit_test(test_close_runs_accepted_callbacks_as_the_loop),
        cmocka_unit_test(test_current_replaces_closed_own_loop),
        cmocka_unit_test(test_default_error_hook_names_the_loop),
        cmocka_unit_test(test_stop_racing_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
