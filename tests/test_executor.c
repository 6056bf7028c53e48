/* test_executor.c — ioloop_run_in_executor: two blocking jobs that wait on
 * each other both finish (the pool really runs them in parallel), done
 * callbacks run on the asking loop's thread, results and statuses come
 * back, queued work is cancelled by shutdown, the default pool has one
 * thread per CPU of the affinity mask (at least 2), and a loop outside any
 * runtime uses the process-wide pool.
 *
 * Threading rule: work functions run on pool threads and done callbacks on
 * loop threads; both only record into atomics, and every assertion is on
 * the test's main thread.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/runtime.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

/* ---- two jobs that wait on each other ------------------------------------- */

typedef struct {
    _Atomic int arrived;
    _Atomic int done;
    _Atomic int on_asking_thread;
    _Atomic int ok_results;
    ioloop_t *asking;
    pthread_t asking_thread;
    _Atomic int not_on_loop_thread; /* work must not run on the loop */
    _Atomic int submit_failed;      /* run_in_executor/on_done failed on the loop */
} rendezvous_t;

static void *meet(void *arg, int *status)
{
    rendezvous_t *r = arg;
    if (ioloop_runtime_current() == NULL)
        atomic_fetch_add(&r->not_on_loop_thread, 1);
    atomic_fetch_add(&r->arrived, 1);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(20);
    while (atomic_load(&r->arrived) < 2 && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    *status = atomic_load(&r->arrived) >= 2 ? 0 : -ETIMEDOUT;
    return r;
}

static void job_done(ioloop_future_t *f, void *arg)
{
    rendezvous_t *r = arg;
    if (ioloop_current() == r->asking && pthread_equal(pthread_self(), r->asking_thread))
        atomic_fetch_add(&r->on_asking_thread, 1);
    if (ioloop_future_status(f) == 0 && ioloop_future_result(f) == r)
        atomic_fetch_add(&r->ok_results, 1);
    ioloop_future_unref(f);
    atomic_fetch_add(&r->done, 1);
}

static void submit_two(ioloop_t *loop, void *arg)
{
    rendezvous_t *r = arg;
    r->asking = loop;
    r->asking_thread = pthread_self();
    for (int i = 0; i < 2; i++) {
        ioloop_future_t *f = NULL;
        assert_int_equal(ioloop_run_in_executor(loop, meet, r, &f), 0);
        if (!f || ioloop_future_on_done(f, job_done, r) != 0)
            atomic_fetch_add(&r->submit_failed, 1);
    }
}

static void test_jobs_waiting_on_each_other(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 2, .executor_threads = 2}, &rt), 0);
    rendezvous_t r = {0};
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 1), submit_two, &r), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(30);
    while (atomic_load(&r.done) < 2 && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&r.submit_failed), 0);
    assert_int_equal(atomic_load(&r.done), 2);
    assert_int_equal(atomic_load(&r.ok_results), 2);
    assert_int_equal(atomic_load(&r.on_asking_thread), 2);
    assert_int_equal(atomic_load(&r.not_on_loop_thread), 2);
    ioloop_runtime_free(rt);
}

/* ---- shutdown cancels queued work, waits for running work ----------------- */

typedef struct {
    _Atomic bool running;
    _Atomic bool release;
    _Atomic int first_status, second_status;
    _Atomic int second_ran;
    _Atomic int submitted;
    _Atomic int submit_failed;
} shutdown_t;

static void *hold_until_released(void *arg, int *status)
{
    shutdown_t *s = arg;
    atomic_store(&s->running, true);
    while (!atomic_load(&s->release))
        tu_sleep_ms(1);
    *status = 0;
    return NULL;
}

static void *never_runs(void *arg, int *status)
{
    atomic_store(&((shutdown_t *)arg)->second_ran, 1);
    *status = 0;
    return NULL;
}

static void first_done(ioloop_future_t *f, void *arg)
{
    atomic_store(&((shutdown_t *)arg)->first_status, ioloop_future_status(f) == 0 ? 1 : -1);
    ioloop_future_unref(f);
}

static void second_done(ioloop_future_t *f, void *arg)
{
    atomic_store(&((shutdown_t *)arg)->second_status, ioloop_future_status(f));
    ioloop_future_unref(f);
}

static void submit_held(ioloop_t *loop, void *arg)
{
    shutdown_t *s = arg;
    ioloop_future_t *f1 = NULL;
    assert_int_equal(ioloop_run_in_executor(loop, hold_until_released, s, &f1), 0);
    ioloop_future_t *f2 = NULL;
    assert_int_equal(ioloop_run_in_executor(loop, never_runs, s, &f2), 0);
    if (!f1 || !f2 || ioloop_future_on_done(f1, first_done, s) != 0 || ioloop_future_on_done(f2, second_done, s) != 0)
        atomic_store(&s->submit_failed, 1);
    atomic_store(&s->submitted, 1);
}

static void *release_later(void *arg)
{
    tu_sleep_ms(300);
    atomic_store(&((shutdown_t *)arg)->release, true);
    return NULL;
}

static void test_shutdown_cancels_queued(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 1, .executor_threads = 1}, &rt), 0);
    shutdown_t s = {0};
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 0), submit_held, &s), 0);
    while (!atomic_load(&s.running) || !atomic_load(&s.submitted))
        tu_sleep_ms(1);
    ioloop_runtime_stop(rt);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_later, &s), 0);
    ioloop_runtime_free(rt); /* cancels the queued job, waits for the held one */
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&s.submit_failed), 0);
    assert_int_equal(atomic_load(&s.first_status), 1);
    assert_int_equal(atomic_load(&s.second_status), -ECANCELED);
    assert_int_equal(atomic_load(&s.second_ran), 0);
}

/* ---- the default pool size ----------------------------------------------- */

/* Jobs that each wait until `size` of them run at once, then stay a while:
 * with a pool of exactly `size` threads, `size` run together (the
 * rendezvous needs that many) and one more never joins them. */
typedef struct {
    int size;
    _Atomic int running, peak, arrived, done, submit_failed, timed_out;
} pool_probe_t;

static void *occupy(void *arg, int *status)
{
    pool_probe_t *p = arg;
    int now = atomic_fetch_add(&p->running, 1) + 1;
    int peak = atomic_load(&p->peak);
    while (now > peak && !atomic_compare_exchange_weak(&p->peak, &peak, now))
        ;
    atomic_fetch_add(&p->arrived, 1);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(20);
    while (atomic_load(&p->arrived) < p->size && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    if (atomic_load(&p->arrived) < p->size)
        atomic_fetch_add(&p->timed_out, 1);
    tu_sleep_ms(100); /* an extra pool thread would take the extra job by now */
    atomic_fetch_sub(&p->running, 1);
    *status = 0;
    return NULL;
}

static void occupy_done(ioloop_future_t *f, void *arg)
{
    ioloop_future_unref(f);
    atomic_fetch_add(&((pool_probe_t *)arg)->done, 1);
}

static void submit_occupy(ioloop_t *loop, void *arg)
{
    pool_probe_t *p = arg;
    for (int i = 0; i < p->size + 1; i++) {
        ioloop_future_t *f = NULL;
        assert_int_equal(ioloop_run_in_executor(loop, occupy, p, &f), 0);
        if (!f || ioloop_future_on_done(f, occupy_done, p) != 0)
            atomic_fetch_add(&p->submit_failed, 1);
    }
}

static void test_default_pool_is_affinity_cpus(void **state)
{
    (void)state;
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    pool_probe_t p = {.size = CPU_COUNT(&set) < 2 ? 2 : CPU_COUNT(&set)};
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 1}, &rt), 0); /* executor_threads 0 */
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 0), submit_occupy, &p), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(60);
    while (atomic_load(&p.done) < p.size + 1 && tu_now_ns() < deadline)
        tu_sleep_ms(5);
    assert_int_equal(atomic_load(&p.submit_failed), 0);
    assert_int_equal(atomic_load(&p.done), p.size + 1);
    assert_int_equal(atomic_load(&p.timed_out), 0); /* at least size threads */
    assert_int_equal(atomic_load(&p.peak), p.size); /* and no more */
    ioloop_runtime_free(rt);
}

/* ---- a loop that is not a runtime loop ---------------------------------- */

static void *square(void *arg, int *status)
{
    long *v = arg;
    *v = *v * *v;
    *status = 0;
    return v;
}

static ioloop_future_t *start_square(ioloop_t *loop, void *arg)
{
    ioloop_future_t *made = NULL;
    assert_int_equal(ioloop_run_in_executor(loop, square, arg, &made), 0);
    return made;
}

static void test_embedded_loop_uses_global_pool(void **state)
{
    (void)state;
    long v = 12;
    void *result = NULL;
    ioloop_t *loop = ioloop_current();
    assert_int_equal(ioloop_run_sync(loop, start_square, &v, IOLOOP_SEC(20), &result), 0);
    assert_ptr_equal(result, &v);
    assert_int_equal(v, 144);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobs_waiting_on_each_other),
        cmocka_unit_test(test_shutdown_cancels_queued),
        cmocka_unit_test(test_default_pool_is_affinity_cpus),
        cmocka_unit_test(test_embedded_loop_uses_global_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
