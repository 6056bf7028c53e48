/* test_runtime_threads.c — the runtime's loops and threads: each runtime
 * thread's ioloop_current() is its own loop, posts run on the right thread
 * exactly once (1M from 4 threads), broadcast, embedding, stop from a
 * foreign thread and from inside a loop, the default size and pinning.
 *
 * Threading rule: callbacks run on loop threads and poster threads only
 * post; both record into atomics (or bytes only one loop writes), and every
 * assertion is on the test's main thread after a bounded wait.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/runtime.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

enum { LOOPS = 4 };

static ioloop_runtime_t *start_runtime(int loops)
{
    ioloop_runtime_options_t opts = {.loops = loops, .executor_threads = 2};
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&opts, &rt), 0);
    assert_non_null(rt);
    assert_int_equal(ioloop_runtime_size(rt), loops);
    return rt;
}

/* Waits (bounded) until *counter reaches want. */
static void wait_for(_Atomic long *counter, long want, int timeout_ms)
{
    int64_t deadline = tu_now_ns() + (int64_t)timeout_ms * 1000000;
    while (atomic_load(counter) < want && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(counter), want);
}

/* ---- identity: current loop and thread ---------------------------------- */

typedef struct {
    ioloop_t *seen_current;
    pthread_t thread;
    ioloop_runtime_t *seen_runtime;
    _Atomic long *done;
} probe_t;

static void probe(ioloop_t *loop, void *arg)
{
    probe_t *p = arg;
    (void)loop;
    p->seen_current = ioloop_current();
    p->thread = pthread_self();
    p->seen_runtime = ioloop_runtime_current();
    atomic_fetch_add(p->done, 1);
}

static void test_current_is_own_loop(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = start_runtime(LOOPS);
    _Atomic long done = 0;
    probe_t probes[LOOPS] = {0};
    for (int i = 0; i < LOOPS; i++) {
        probes[i].done = &done;
        assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, i), probe, &probes[i]), 0);
    }
    wait_for(&done, LOOPS, 10000);
    for (int i = 0; i < LOOPS; i++) {
        assert_ptr_equal(probes[i].seen_current, ioloop_runtime_loop(rt, i));
        assert_ptr_equal(probes[i].seen_runtime, rt);
        assert_false(pthread_equal(probes[i].thread, pthread_self()));
        for (int j = 0; j < i; j++) {
            assert_ptr_not_equal(probes[i].seen_current, probes[j].seen_current);
            assert_false(pthread_equal(probes[i].thread, probes[j].thread));
        }
    }
    assert_null(ioloop_runtime_loop(rt, LOOPS));
    assert_null(ioloop_runtime_current()); /* this is not a runtime thread */
    ioloop_runtime_free(rt);
}

/* ---- 1M posts from 4 threads --------------------------------------------- */

enum { POSTERS = 4, POSTS_PER_THREAD = 250000 };

typedef struct {
    ioloop_runtime_t *rt;
    int id;
    unsigned char *hits; /* one byte per post, written by the loop that ran it */
    _Atomic long *ran;
} post_ctx_t;

typedef struct {
    post_ctx_t *ctx;
    int poster;
} poster_arg_t;

static post_ctx_t *g_post_ctx;

static void count_post(ioloop_t *loop, void *arg)
{
    (void)loop;
    uintptr_t index = (uintptr_t)arg; /* the post's number */
    g_post_ctx->hits[index]++;
    atomic_fetch_add_explicit(g_post_ctx->ran, 1, memory_order_relaxed);
}

static void *poster_main(void *arg)
{
    poster_arg_t *pa = arg;
    post_ctx_t *ctx = pa->ctx;
    int n = ioloop_runtime_size(ctx->rt);
    for (int k = 0; k < POSTS_PER_THREAD; k++) {
        /* Post k of poster p goes to loop (p + k) % n; loop i only ever
         * touches indexes with that residue, so hits[] bytes never race. */
        uintptr_t index = (uintptr_t)pa->poster * POSTS_PER_THREAD + (uintptr_t)k;
        int loop_index = (int)(index % (uintptr_t)n);
        while (ioloop_add_callback(ioloop_runtime_loop(ctx->rt, loop_index), count_post, (void *)index) == -ENOMEM)
            tu_sleep_ms(1);
    }
    return NULL;
}

static void test_million_posts_each_once(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = start_runtime(2);
    _Atomic long ran = 0;
    post_ctx_t ctx = {.rt = rt, .hits = calloc(POSTERS * POSTS_PER_THREAD, 1), .ran = &ran};
    assert_non_null(ctx.hits);
    g_post_ctx = &ctx;
    pthread_t threads[POSTERS];
    poster_arg_t args[POSTERS];
    for (int p = 0; p < POSTERS; p++) {
        args[p] = (poster_arg_t){&ctx, p};
        assert_int_equal(pthread_create(&threads[p], NULL, poster_main, &args[p]), 0);
    }
    for (int p = 0; p < POSTERS; p++)
        pthread_join(threads[p], NULL);
    wait_for(&ran, (long)POSTERS * POSTS_PER_THREAD, 120000);
    ioloop_runtime_stop(rt);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    for (long i = 0; i < (long)POSTERS * POSTS_PER_THREAD; i++)
        if (ctx.hits[i] != 1)
            fail_msg("post %ld ran %d times", i, ctx.hits[i]);
    uint64_t received = 0;
    for (int i = 0; i < 2; i++) {
        ioloop_stats_t st;
        ioloop_get_stats(ioloop_runtime_loop(rt, i), &st);
        received += st.posts_received;
    }
    assert_true(received >= (uint64_t)POSTERS * POSTS_PER_THREAD);
    ioloop_runtime_free(rt);
    free(ctx.hits);
}

/* ---- broadcast ------------------------------------------------------------ */

static void mark_loop(ioloop_t *loop, void *arg)
{
    _Atomic unsigned *mask = arg;
    ioloop_runtime_t *rt = ioloop_runtime_current();
    for (int i = 0; i < ioloop_runtime_size(rt); i++)
        if (ioloop_runtime_loop(rt, i) == loop)
            atomic_fetch_add(mask, 1u << (4 * i)); /* a nibble per loop: counts, not just sets */
}

typedef struct {
    ioloop_runtime_t *rt;
    _Atomic unsigned mask;
} bcast_t;

static ioloop_future_t *begin_broadcast(ioloop_t *loop, void *arg)
{
    bcast_t *b = arg;
    ioloop_future_t *made = NULL;
    assert_int_equal(ioloop_runtime_broadcast(b->rt, loop, mark_loop, &b->mask, &made), 0);
    return made;
}

static void test_broadcast_runs_once_everywhere(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = start_runtime(LOOPS);
    bcast_t b = {.rt = rt};
    ioloop_t *home = ioloop_current(); /* embedding: this thread's own loop */
    assert_int_equal(ioloop_run_sync(home, begin_broadcast, &b, IOLOOP_SEC(10), NULL), 0);
    assert_int_equal(atomic_load(&b.mask), 0x1111u);
    ioloop_runtime_free(rt);
}

/* ---- embedding: the registry sees every loop ------------------------------- */

typedef struct {
    ioloop_t *want[LOOPS + 1];
    int found[LOOPS + 1];
} registry_probe_t;

static void visit(ioloop_t *loop, void *arg)
{
    registry_probe_t *rp = arg;
    for (int i = 0; i <= LOOPS; i++)
        if (rp->want[i] == loop)
            rp->found[i]++;
}

static void test_embedding_registry_sees_all(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = start_runtime(LOOPS);
    registry_probe_t rp = {0};
    for (int i = 0; i < LOOPS; i++)
        rp.want[i] = ioloop_runtime_loop(rt, i);
    rp.want[LOOPS] = ioloop_current();
    for (int i = 0; i < LOOPS; i++)
        assert_ptr_not_equal(rp.want[LOOPS], rp.want[i]);
    ioloop_registry_foreach(visit, &rp);
    for (int i = 0; i <= LOOPS; i++)
        assert_int_equal(rp.found[i], 1);
    ioloop_runtime_free(rt);
}

/* ---- stop from a foreign thread, and from inside a loop -------------------- */

static void *stopper_main(void *arg)
{
    tu_sleep_ms(20);
    ioloop_runtime_stop(arg);
    return NULL;
}

static void test_stop_from_foreign_thread(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = start_runtime(LOOPS);
    pthread_t t;
    int64_t t0 = tu_now_ns();
    assert_int_equal(pthread_create(&t, NULL, stopper_main, rt), 0);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    assert_true(tu_now_ns() - t0 < IOLOOP_SEC(10));
    pthread_join(t, NULL);
    /* Every loop has left ioloop_start: a post is accepted but does not run
     * until free closes the loop (which runs it, so nothing is lost). */
    _Atomic long ran = 0;
    probe_t p = {.done = &ran};
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 1), probe, &p), 0);
    tu_sleep_ms(20);
    assert_int_equal(atomic_load(&ran), 0);
    ioloop_runtime_free(rt);
    assert_int_equal(atomic_load(&ran), 1);
}

typedef struct {
    ioloop_runtime_t *rt;
    _Atomic int join_result; /* what join returned inside the loop */
} inside_t;

static void stop_from_inside(ioloop_t *loop, void *arg)
{
    (void)loop;
    inside_t *in = arg;
    atomic_store(&in->join_result, ioloop_runtime_join(in->rt)); /* a loop must not wait for itself */
    ioloop_runtime_stop(in->rt);
}

static void test_stop_from_inside_a_loop(void **state)
{
    (void)state;
    inside_t in = {.rt = start_runtime(LOOPS), .join_result = 1};
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(in.rt, 2), stop_from_inside, &in), 0);
    assert_int_equal(ioloop_runtime_join(in.rt), 0);
    assert_int_equal(atomic_load(&in.join_result), -EDEADLK);
    ioloop_runtime_free(in.rt);
}

/* ---- pinning ------------------------------------------------------------- */

typedef struct {
    ioloop_runtime_t *rt;
    _Atomic int ncpus[LOOPS]; /* CPUs in loop i's thread's affinity mask */
    _Atomic int cpu[LOOPS];   /* the first of them */
} affinity_probe_t;

static void read_affinity(ioloop_t *loop, void *arg)
{
    affinity_probe_t *p = arg;
    int i = 0;
    while (i < LOOPS && ioloop_runtime_loop(p->rt, i) != loop)
        i++;
    cpu_set_t set;
    if (i == LOOPS || pthread_getaffinity_np(pthread_self(), sizeof(set), &set) != 0)
        return;
    atomic_store(&p->ncpus[i], CPU_COUNT(&set));
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &set)) {
            atomic_store(&p->cpu[i], cpu);
            break;
        }
}

static ioloop_future_t *begin_affinity(ioloop_t *loop, void *arg)
{
    affinity_probe_t *p = arg;
    ioloop_future_t *made = NULL;
    assert_int_equal(ioloop_runtime_broadcast(p->rt, loop, read_affinity, p, &made), 0);
    return made;
}

/* pin = true: loop i's thread may run only on the i-th CPU of the process's
 * mask (modulo its size); pin = false: on all of them. */
static void test_pinning_is_applied(void **state)
{
    (void)state;
    cpu_set_t allowed;
    assert_int_equal(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
    int cpus[CPU_SETSIZE], n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &allowed))
            cpus[n++] = cpu;
    /* Where the sandbox forbids pinning, the runtime's best effort cannot
     * show: find out with a thread of our own. */
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[0], &one);
    if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) != 0) {
        print_message("pinning is not permitted here: skipped\n");
        skip();
    }
    assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof(allowed), &allowed), 0);

    for (int pin = 0; pin <= 1; pin++) {
        affinity_probe_t p = {0};
        ioloop_runtime_options_t opts = {.loops = LOOPS, .pin = pin, .executor_threads = 2};
        assert_int_equal(ioloop_runtime_start(&opts, &p.rt), 0);
        ioloop_t *home = ioloop_current();
        assert_int_equal(ioloop_run_sync(home, begin_affinity, &p, IOLOOP_SEC(10), NULL), 0);
        for (int i = 0; i < LOOPS; i++) {
            if (pin) {
                assert_int_equal(atomic_load(&p.ncpus[i]), 1);
                assert_int_equal(atomic_load(&p.cpu[i]), cpus[i % n]);
            } else {
                assert_int_equal(atomic_load(&p.ncpus[i]), n);
            }
        }
        ioloop_runtime_free(p.rt);
    }
}

static void test_default_size_is_affinity_cpus(void **state)
{
    (void)state;
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    ioloop_runtime_t *rt = NULL;
    ioloop_runtime_options_t opts = {.pin = true};
    assert_int_equal(ioloop_runtime_start(&opts, &rt), 0);
    assert_int_equal(ioloop_runtime_size(rt), CPU_COUNT(&set));
    ioloop_runtime_free(rt);
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = -1}, &rt), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_current_is_own_loop),
        cmocka_unit_test(test_million_posts_each_once),
        cmocka_unit_test(test_broadcast_runs_once_everywhere),
        cmocka_unit_test(test_embedding_registry_sees_all),
        cmocka_unit_test(test_stop_from_foreign_thread),
        cmocka_unit_test(test_stop_from_inside_a_loop),
        cmocka_unit_test(test_default_size_is_affinity_cpus),
        cmocka_unit_test(test_pinning_is_applied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
