/* test_future.c — futures completed from any thread, done callbacks always
 * later on the loop's thread, and run_sync (result, timeout, a stop that is
 * not its own, and early returns that must leave nothing queued).
 *
 * Threading rule: cmocka asserts run on the main thread only; helper threads
 * record what they saw and the main thread checks it after joining them. */
#define _GNU_SOURCE
#include "test_util.h"

#include <errno.h>
#include <stdatomic.h>

typedef struct {
    ioloop_future_t *future;
    int delay_ms;
    int status;
    void *result;
} job_t;

static void *complete_later(void *arg)
{
    job_t *job = arg;
    tu_sleep_ms(job->delay_ms);
    ioloop_future_complete(job->future, job->status, job->result);
    ioloop_future_unref(job->future); /* the job's reference */
    return NULL;
}

static pthread_t job_thread;

/* run_sync's fn: starts a job on a thread and returns its future. */
static ioloop_future_t *start_job(ioloop_t *loop, void *arg)
{
    job_t *job = arg;
    assert_int_equal(ioloop_future_new(loop, &job->future), 0);
    ioloop_future_ref(job->future); /* one for run_sync, one for the job */
    pthread_create(&job_thread, NULL, complete_later, job);
    return job->future;
}

/* ---- 12. run_sync returns the result; a slow job times out ---------------- */

static void test_run_sync_returns_result(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    static int answer = 42;
    job_t job = {.delay_ms = 10, .status = 0, .result = &answer};
    void *result = NULL;
    assert_int_equal(ioloop_run_sync(loop, start_job, &job, IOLOOP_SEC(10), &result), 0);
    assert_ptr_equal(result, &answer);
    pthread_join(job_thread, NULL);
    ioloop_close(loop, false);
}

static void test_run_sync_passes_error_status(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    job_t job = {.delay_ms = 1, .status = -EPROTO};
    assert_int_equal(ioloop_run_sync(loop, start_job, &job, IOLOOP_SEC(10), NULL), -EPROTO);
    pthread_join(job_thread, NULL);
    ioloop_close(loop, false);
}

static void test_run_sync_timeout(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    job_t job = {.delay_ms = 1000};
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_run_sync(loop, start_job, &job, IOLOOP_MSEC(10), NULL), -ETIMEDOUT);
    assert_true(tu_now_ns() - t0 < IOLOOP_MSEC(900));
    pthread_join(job_thread, NULL); /* its late completion is queued on the loop */
    ioloop_close(loop, false);      /* ...and released here: ASan checks no leak */
}

/* ---- done callbacks: on the loop's thread, never inline ------------------- */

typedef struct {
    pthread_t loop_thread;
    bool on_loop_thread;
    bool inline_call;
    bool in_on_done;
    int calls;
} done_probe_t;

static void on_done(ioloop_future_t *f, void *arg)
{
    done_probe_t *p = arg;
    p->calls++;
    p->on_loop_thread = pthread_equal(pthread_self(), p->loop_thread);
    p->inline_call = p->in_on_done;
    assert_int_equal(ioloop_future_status(f), 7);
    ioloop_stop(ioloop_future_loop(f));
}

static void attach_to_completed(ioloop_t *loop, void *arg)
{
    done_probe_t *p = arg;
    ioloop_future_t *f = NULL;
    assert_int_equal(ioloop_future_new(loop, &f), 0);
    assert_int_equal(ioloop_future_complete(f, 7, NULL), 0);
    assert_int_equal(ioloop_future_complete(f, 8, NULL), -EALREADY); /* first wins */
    assert_true(ioloop_future_done(f));
    p->in_on_done = true;
    ioloop_future_on_done(f, on_done, p);
    p->in_on_done = false;
    ioloop_future_unref(f);
}

static void test_done_callback_never_inline(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    done_probe_t p = {.loop_thread = pthread_self()};
    ioloop_add_callback(loop, attach_to_completed, &p);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(p.calls, 1);
    assert_false(p.inline_call);
    assert_true(p.on_loop_thread);
    ioloop_close(loop, false);
}

static void *complete_from_thread(void *arg)
{
    ioloop_future_complete(arg, 7, NULL);
    return NULL;
}

static void test_completed_from_other_thread_runs_on_loop(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    done_probe_t p = {.loop_thread = pthread_self()};
    ioloop_future_t *f = NULL;
    assert_int_equal(ioloop_future_new(loop, &f), 0);
    ioloop_future_on_done(f, on_done, &p);
    pthread_t t;
    pthread_create(&t, NULL, complete_from_thread, f);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    pthread_join(t, NULL);
    assert_int_equal(p.calls, 1);
    assert_true(p.on_loop_thread);
    ioloop_future_unref(f);
    ioloop_close(loop, false);
}

/* A future may outlive its loop's close: completing it then is harmless. */
static void test_complete_after_loop_closed(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_future_t *f = NULL;
    assert_int_equal(ioloop_future_new(loop, &f), 0); /* holds a loop reference */
    ioloop_close(loop, false);
    assert_int_equal(ioloop_future_complete(f, 0, f), 0);
    assert_true(ioloop_future_done(f));
    assert_ptr_equal(ioloop_future_result(f), f);
    ioloop_future_unref(f);
}

/* ---- run_sync never leaves work queued that outlives its frame ----------- */

static int made_futures;

static ioloop_future_t *make_done_future(ioloop_t *loop, void *arg)
{
    made_futures++;
    ioloop_future_t *f = NULL;
    assert_int_equal(ioloop_future_new(loop, &f), 0);
    ioloop_future_complete(f, 0, arg);
    return f;
}

static void stop_loop(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

/* A stop made before run_sync does not cut it short, and nothing of it is
 * left queued for the loop's next start. */
static void test_run_sync_after_pending_stop(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    static int answer = 7;
    void *result = NULL;
    made_futures = 0;
    ioloop_stop(loop);
    assert_int_equal(ioloop_run_sync(loop, make_done_future, &answer, IOLOOP_SEC(10), &result), 0);
    assert_ptr_equal(result, &answer);
    assert_int_equal(made_futures, 1);
    ioloop_add_callback(loop, stop_loop, NULL);
    tu_stop_after(loop, 5000);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(made_futures, 1); /* run_sync's begin did not run again */
    ioloop_close(loop, false);
}

/* run_sync on a loop while another loop runs on this thread is refused
 * before anything is queued. */
typedef struct {
    ioloop_t *inner;
    int result;
} nested_sync_t;

static void run_sync_inside(ioloop_t *loop, void *arg)
{
    nested_sync_t *n = arg;
    n->result = ioloop_run_sync(n->inner, make_done_future, NULL, IOLOOP_SEC(1), NULL);
    ioloop_stop(loop);
}

static void test_run_sync_inside_other_loop_refused(void **state)
{
    (void)state;
    ioloop_t *outer = tu_loop_new(NULL);
    nested_sync_t n = {.inner = tu_loop_new(NULL), .result = 1};
    made_futures = 0;
    ioloop_add_callback(outer, run_sync_inside, &n);
    tu_stop_after(outer, 5000);
    assert_int_equal(ioloop_start(outer), 0);
    assert_int_equal(n.result, -EINVAL);
    /* Starting the inner loop later runs nothing that run_sync left. */
    ioloop_add_callback(n.inner, stop_loop, NULL);
    tu_stop_after(n.inner, 5000);
    assert_int_equal(ioloop_start(n.inner), 0);
    assert_int_equal(made_futures, 0);
    ioloop_close(n.inner, false);
    ioloop_close(outer, false);
}

/* Something other than the timeout stopping the loop is -ECANCELED. */
static ioloop_future_t *never_completes_stop_soon(ioloop_t *loop, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(5), stop_loop, NULL, NULL), 0);
    ioloop_future_t *made = NULL;
    assert_int_equal(ioloop_future_new(loop, &made), 0);
    return made;
}

static void test_run_sync_stopped_by_other_is_cancelled(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    assert_int_equal(ioloop_run_sync(loop, never_completes_stop_soon, NULL, IOLOOP_SEC(30), NULL), -ECANCELED);
    ioloop_close(loop, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_sync_returns_result),
        cmocka_unit_test(test_run_sync_passes_error_status),
        cmocka_unit_test(test_run_sync_timeout),
        cmocka_unit_test(test_done_callback_never_inline),
        cmocka_unit_test(test_completed_from_other_thread_runs_on_loop),
        cmocka_unit_test(test_complete_after_loop_closed),
        cmocka_unit_test(test_run_sync_after_pending_stop),
        cmocka_unit_test(test_run_sync_inside_other_loop_refused),
        cmocka_unit_test(test_run_sync_stopped_by_other_is_cancelled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
