/* test_posts_race.c — cross-thread posts racing the loop and its close: each
 * post runs exactly once or is refused with -ESHUTDOWN, posts from one thread
 * run in order, and the per-thread node cache is freed when posters exit
 * (ASan's leak check sees it). White-box on the recycling only through the
 * public API: the posters run long enough for nodes to go round many times.
 *
 * Threading rule: cmocka asserts run on the main thread only; poster threads
 * record counts and errors, checked by the main thread after joining them.
 */
#include "test_util.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

/* MAX_POSTS bounds each poster's work per round: under valgrind, which runs
 * one thread at a time, an unbounded poster could queue millions of posts in
 * one time slice before the loop gets to close. */
enum { POSTERS = 3, ROUNDS = 40, MAX_POSTS = 20000 };

typedef struct {
    ioloop_t *loop;
    int id;
    long accepted;
    int other_error;
    _Atomic bool *go;
} poster_t;

/* Loop-thread state, checked after each round. */
static long ran[POSTERS], last_seq[POSTERS], out_of_order;

static void count_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    uintptr_t v = (uintptr_t)arg;
    int id = (int)(v % POSTERS);
    long seq = (long)(v / POSTERS);
    if (seq != last_seq[id] + 1)
        out_of_order++;
    last_seq[id] = seq;
    ran[id]++;
}

static void *poster_main(void *arg)
{
    poster_t *p = arg;
    while (!atomic_load(p->go))
        sched_yield();
    for (long seq = 1; seq <= MAX_POSTS; seq++) {
        int err = ioloop_add_callback(p->loop, count_cb, (void *)(uintptr_t)(seq * POSTERS + p->id));
        if (err == -ESHUTDOWN)
            break;
        if (err) {
            p->other_error = err;
            break;
        }
        p->accepted++;
    }
    return NULL;
}

static void stop_cb(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

static void test_every_post_runs_once_in_order_or_is_refused(void **state)
{
    (void)state;
    long total = 0;
    for (int round = 0; round < ROUNDS; round++) {
        ioloop_t *loop = tu_loop_new(NULL);
        assert_non_null(loop);
        _Atomic bool go = false;
        poster_t posters[POSTERS];
        pthread_t threads[POSTERS];
        for (int i = 0; i < POSTERS; i++) {
            posters[i] = (poster_t){.loop = loop, .id = i, .go = &go};
            ran[i] = last_seq[i] = 0;
            assert_int_equal(pthread_create(&threads[i], NULL, poster_main, &posters[i]), 0);
        }
        out_of_order = 0;
        atomic_store(&go, true);
        /* Vary how long the loop runs, so the close lands at different points. */
        assert_int_equal(ioloop_call_later(loop, IOLOOP_USEC(200 + 97 * round), stop_cb, NULL, NULL), 0);
        tu_stop_after(loop, 5000);
        assert_int_equal(ioloop_start(loop), 0);
        ioloop_ref(loop); /* keep it for the post-after-close check */
        /* Posters are still posting: close runs what it accepted, refuses the rest. */
        assert_int_equal(ioloop_close(loop, false), 0);
        for (int i = 0; i < POSTERS; i++)
            assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_int_equal(ioloop_add_callback(loop, count_cb, (void *)(uintptr_t)POSTERS), -ESHUTDOWN);
        ioloop_unref(loop);
        for (int i = 0; i < POSTERS; i++) {
            assert_int_equal(posters[i].other_error, 0);
            assert_int_equal(ran[i], posters[i].accepted);
            total += posters[i].accepted; /* a poster may not get a CPU before the close */
        }
        assert_int_equal(out_of_order, 0);
    }
    assert_true(total > 1000); /* the race was really run */
}

/* A sleeping loop woken by bursts: eventfd writes never exceed the wake-ups
 * they cause by more than the one in flight, and every post runs. */
typedef struct {
    ioloop_t *loop;
    _Atomic long ran;
    long posts;
} burst_t;

static void burst_cb(ioloop_t *loop, void *arg)
{
    burst_t *b = arg;
    if (atomic_fetch_add(&b->ran, 1) + 1 == b->posts)
        ioloop_stop(loop);
}

static void *burst_main(void *arg)
{
    burst_t *b = arg;
    for (long i = 0; i < b->posts; i++) {
        if (i % 1000 == 0)
            tu_sleep_ms(1); /* let the loop fall asleep between bursts */
        if (ioloop_add_callback(b->loop, burst_cb, b) != 0)
            break;
    }
    return NULL;
}

static void test_wakeups_are_coalesced(void **state)
{
    (void)state;
    burst_t b = {.loop = tu_loop_new(NULL), .posts = 50000};
    assert_non_null(b.loop);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, burst_main, &b), 0);
    tu_stop_after(b.loop, 10000);
    assert_int_equal(ioloop_start(b.loop), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    ioloop_stats_t stats;
    ioloop_get_stats(b.loop, &stats);
    assert_int_equal(atomic_load(&b.ran), b.posts);
    assert_true(stats.wakeups_written >= 1);
    assert_true(stats.wakeups_written <= stats.wakeups_received + 1);
    assert_true(stats.wakeups_written < (uint64_t)b.posts / 10); /* coalesced, not one per post */
    assert_int_equal(ioloop_close(b.loop, false), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_post_runs_once_in_order_or_is_refused),
        cmocka_unit_test(test_wakeups_are_coalesced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
