/* test_callbacks.c — ioloop_add_callback: ordering within iterations, the
 * own-thread cheap path, the cross-thread wakeup (latency and coalescing),
 * exactly-once delivery under contention, and posting while the loop closes.
 *
 * Threading rule: cmocka asserts run on the main thread only; helper threads
 * record what they saw and the main thread checks it after joining them. */
#define _GNU_SOURCE
#include "test_util.h"

#include "internal.h" /* white-box: whether the loop is asleep in poll */

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- 1. a callback added from a timer runs in the next iteration ---------- */

typedef struct {
    uint64_t timer_iteration, callback_iteration;
    int64_t timer_at, callback_at;
} iter_probe_t;

static uint64_t iterations(ioloop_t *loop)
{
    ioloop_stats_t st;
    ioloop_get_stats(loop, &st);
    return st.iterations;
}

static void probe_callback(ioloop_t *loop, void *arg)
{
    iter_probe_t *p = arg;
    p->callback_iteration = iterations(loop);
    p->callback_at = tu_now_ns();
    ioloop_stop(loop);
}

static void probe_timer(ioloop_t *loop, void *arg)
{
    iter_probe_t *p = arg;
    p->timer_iteration = iterations(loop);
    p->timer_at = tu_now_ns();
    assert_int_equal(ioloop_add_callback(loop, probe_callback, p), 0);
}

static void noop(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
}

static void test_callback_from_timer_runs_next_iteration(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    iter_probe_t p = {0};
    /* A far timer: if the callback waited for the poll timeout, it would
     * wait seconds. */
    assert_int_equal(ioloop_call_later(loop, IOLOOP_SEC(30), noop, NULL, NULL), 0);
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(1), probe_timer, &p, NULL), 0);
    tu_stop_after(loop, 10000);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(p.callback_iteration, p.timer_iteration + 1);
    assert_true(p.callback_at - p.timer_at < IOLOOP_MSEC(500));
    ioloop_close(loop, false);
}

/* ---- callbacks added while callbacks run wait for the next iteration ------ */

static void second(ioloop_t *loop, void *arg)
{
    ((uint64_t *)arg)[1] = iterations(loop);
    ioloop_stop(loop);
}

static void first(ioloop_t *loop, void *arg)
{
    ((uint64_t *)arg)[0] = iterations(loop);
    ioloop_add_callback(loop, second, arg);
}

static void test_callback_added_by_callback_waits_an_iteration(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    uint64_t seen[2] = {0, 0};
    ioloop_add_callback(loop, first, seen);
    tu_stop_after(loop, 10000);
    ioloop_start(loop);
    assert_int_equal(seen[1], seen[0] + 1);
    ioloop_close(loop, false);
}

/* ---- posts from the loop's own thread take the cheap path ----------------- */

typedef struct {
    int ran;
    int post_errors;
} own_posts_t;

static void own_post_child(ioloop_t *loop, void *arg)
{
    own_posts_t *p = arg;
    if (++p->ran == 101)
        ioloop_stop(loop);
}

static void own_post_parent(ioloop_t *loop, void *arg)
{
    own_posts_t *p = arg;
    p->ran++;
    for (int i = 0; i < 100; i++)
        p->post_errors += ioloop_add_callback(loop, own_post_child, p) != 0;
}

static void test_own_thread_posts_take_cheap_path(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    own_posts_t p = {0};
    assert_int_equal(ioloop_call_later(loop, 0, own_post_parent, &p, NULL), 0); /* from inside the loop */
    tu_stop_after(loop, 10000);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(p.ran, 101);
    assert_int_equal(p.post_errors, 0);
    ioloop_stats_t st;
    ioloop_get_stats(loop, &st);
    assert_int_equal(st.callbacks_run, 100);
    assert_int_equal(st.posts_received, 0); /* never through the cross-thread stack */
    assert_int_equal(st.wakeups_written, 0);
    ioloop_close(loop, false);
}

/* ---- 2. a post from another thread wakes a loop blocked in poll ----------- */

typedef struct {
    ioloop_t *loop;
    _Atomic int64_t posted_at;
    int64_t ran_at;
    int post_result;
} wake_probe_t;

static void record_wake(ioloop_t *loop, void *arg)
{
    wake_probe_t *p = arg;
    p->ran_at = tu_now_ns();
    ioloop_stop(loop);
}

static void *post_after_sleep(void *arg)
{
    wake_probe_t *p = arg;
    /* Wait (bounded) until the loop is about to sleep or asleep in poll. */
    for (int i = 0; i < 10000 && !atomic_load(&p->loop->polling); i++)
        tu_sleep_ms(1);
    tu_sleep_ms(10);
    atomic_store(&p->posted_at, tu_now_ns());
    p->post_result = ioloop_add_callback(p->loop, record_wake, p);
    return NULL;
}

static void test_cross_thread_post_wakes_sleeping_loop(void **state)
{
    (void)state;
    wake_probe_t p = {.loop = tu_loop_new(NULL)};
    tu_stop_after(p.loop, 10000);
    pthread_t t;
    pthread_create(&t, NULL, post_after_sleep, &p);
    ioloop_start(p.loop);
    pthread_join(t, NULL);
    int64_t latency = p.ran_at - atomic_load(&p.posted_at);
    assert_int_equal(p.post_result, 0);
    assert_true(p.ran_at > 0);
    assert_true(latency < IOLOOP_SEC(5)); /* not the 10 s safety net */
    ioloop_stats_t st;
    ioloop_get_stats(p.loop, &st);
    assert_int_equal(st.wakeups_written, 1);
    assert_int_equal(st.posts_received, 1);
    ioloop_close(p.loop, false);
}

/* ---- 3. posts racing ioloop_close: each runs or returns an error ---------- */

enum { RACE_POSTS = 1000 };

typedef struct {
    ioloop_t *loop;
    _Atomic int accepted, refused, ran;
    _Atomic bool go;
} close_race_t;

static void count_run(ioloop_t *loop, void *arg)
{
    (void)loop;
    close_race_t *r = arg;
    atomic_fetch_add(&r->ran, 1);
}

static void *post_many(void *arg)
{
    close_race_t *r = arg;
    while (!atomic_load(&r->go))
        continue;
    for (int i = 0; i < RACE_POSTS; i++) {
        int err = ioloop_add_callback(r->loop, count_run, r);
        if (err == 0)
            atomic_fetch_add(&r->accepted, 1);
        else if (err == -ESHUTDOWN)
            atomic_fetch_add(&r->refused, 1);
        if (i % 50 == 0)
            sched_yield();
    }
    return NULL;
}

static void test_posts_while_closing(void **state)
{
    (void)state;
    for (int round = 0; round < 20; round++) {
        close_race_t r = {.loop = tu_loop_new(NULL)};
        ioloop_ref(r.loop); /* the poster's reference, valid across the close */
        pthread_t loop_thread = tu_start_loop_thread(r.loop);
        pthread_t poster;
        pthread_create(&poster, NULL, post_many, &r);
        atomic_store(&r.go, true);
        tu_sleep_ms(round % 3); /* close at different points of the stream */
        tu_join_loop_thread(r.loop, loop_thread);
        assert_int_equal(ioloop_close(r.loop, false), 0);
        pthread_join(poster, NULL);
        assert_int_equal(atomic_load(&r.accepted) + atomic_load(&r.refused), RACE_POSTS);
        assert_int_equal(atomic_load(&r.ran), atomic_load(&r.accepted));
        assert_int_equal(ioloop_add_callback(r.loop, count_run, &r), -ESHUTDOWN);
        ioloop_unref(r.loop);
    }
}

/* ---- 4. 4 producers x 250k posts: exactly once, few eventfd writes -------- */

enum { PRODUCERS = 4, POSTS_EACH = 250000, TOTAL_POSTS = PRODUCERS * POSTS_EACH };

typedef struct {
    ioloop_t *loop;
    unsigned char *seen;
    size_t ran;
    int producer;
} flood_t;

static void mark_seen(ioloop_t *loop, void *arg);

static flood_t flood_state;

static void mark_seen(ioloop_t *loop, void *arg)
{
    size_t i = (size_t)(uintptr_t)arg;
    flood_state.seen[i]++;
    if (++flood_state.ran == TOTAL_POSTS)
        ioloop_stop(loop);
}

static _Atomic int produce_errors;

static void *produce(void *arg)
{
    size_t base = (size_t)(uintptr_t)arg * POSTS_EACH;
    for (size_t i = 0; i < POSTS_EACH; i++)
        if (ioloop_add_callback(flood_state.loop, mark_seen, (void *)(uintptr_t)(base + i)) != 0)
            atomic_fetch_add(&produce_errors, 1);
    return NULL;
}

static void test_four_producers_exactly_once(void **state)
{
    (void)state;
    flood_state = (flood_t){.loop = tu_loop_new(NULL), .seen = calloc(TOTAL_POSTS, 1)};
    tu_stop_after(flood_state.loop, 120000);
    pthread_t producers[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&producers[i], NULL, produce, (void *)(uintptr_t)i);
    ioloop_start(flood_state.loop);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(producers[i], NULL);
    assert_int_equal(atomic_load(&produce_errors), 0);
    assert_int_equal(flood_state.ran, TOTAL_POSTS);
    for (size_t i = 0; i < TOTAL_POSTS; i++)
        if (flood_state.seen[i] != 1)
            fail_msg("post %zu ran %d times", i, flood_state.seen[i]);
    ioloop_stats_t st;
    ioloop_get_stats(flood_state.loop, &st);
    print_message("eventfd writes: %llu for %d posts (%llu wakeups received)\n",
                  (unsigned long long)st.wakeups_written, TOTAL_POSTS, (unsigned long long)st.wakeups_received);
    assert_int_equal(st.posts_received, TOTAL_POSTS);
    assert_true(st.wakeups_written * 100 < TOTAL_POSTS); /* far fewer than posts */
    /* Coalesced: never more writes than the loop had wakeups (+1 in flight). */
    assert_true(st.wakeups_written <= st.wakeups_received + 1);
    free(flood_state.seen);
    ioloop_close(flood_state.loop, false);
}

/* ---- posting to a closed loop ------------------------------------------- */

static void test_post_to_closed_loop_fails(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_ref(loop);
    ioloop_close(loop, false);
    int ran = 0;
    assert_int_equal(ioloop_add_callback(loop, count_run, &ran), -ESHUTDOWN);
    assert_int_equal(ioloop_start(loop), -ESHUTDOWN);
    assert_int_equal(ioloop_close(loop, false), -ESHUTDOWN);
    assert_int_equal(ran, 0);
    ioloop_unref(loop);
}

/* ---- ordered posts: behind the cross-thread posts made before ------------- */

/* On the loop's thread, ioloop_add_callback takes the own-thread queue, which
 * runs before the posts of the same iteration; ioloop_add_callback_ordered
 * runs after a post another thread made before it. */
typedef struct {
    _Atomic int posted; /* the foreign post is made */
    _Atomic int log[4];
    _Atomic int n;
} ordered_probe_t;

static void log_tag(ioloop_t *loop, void *arg, int tag)
{
    (void)loop;
    ordered_probe_t *p = arg;
    int i = atomic_fetch_add(&p->n, 1);
    if (i < 4)
        atomic_store(&p->log[i], tag);
}

static void tag_foreign(ioloop_t *loop, void *arg)
{
    log_tag(loop, arg, 1);
}

static void tag_ordered(ioloop_t *loop, void *arg)
{
    log_tag(loop, arg, 2);
}

static void tag_plain(ioloop_t *loop, void *arg)
{
    log_tag(loop, arg, 3);
}

static void wait_then_add(ioloop_t *loop, void *arg)
{
    ordered_probe_t *p = arg;
    while (!atomic_load(&p->posted)) /* the foreign post lands while we run */
        tu_sleep_ms(1);
    assert_int_equal(ioloop_add_callback_ordered(loop, tag_ordered, p), 0);
    assert_int_equal(ioloop_add_callback(loop, tag_plain, p), 0);
}

static void test_ordered_callback_runs_after_earlier_posts(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    ordered_probe_t p = {0};
    pthread_t thread = tu_start_loop_thread(loop);
    assert_int_equal(ioloop_add_callback(loop, wait_then_add, &p), 0);
    tu_sleep_ms(20); /* usually inside wait_then_add by now; either way the order holds */
    assert_int_equal(ioloop_add_callback(loop, tag_foreign, &p), 0);
    atomic_store(&p.posted, 1);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (atomic_load(&p.n) < 3 && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    tu_join_loop_thread(loop, thread);
    assert_int_equal(atomic_load(&p.n), 3);
    assert_int_equal(atomic_load(&p.log[0]), 3); /* own-thread queue first */
    assert_int_equal(atomic_load(&p.log[1]), 1); /* the foreign post ... */
    assert_int_equal(atomic_load(&p.log[2]), 2); /* ... before the ordered one */
    assert_int_equal(ioloop_add_callback_ordered(loop, tag_ordered, &p), 0);
    ioloop_ref(loop);
    assert_int_equal(ioloop_close(loop, false), 0); /* runs it */
    assert_int_equal(atomic_load(&p.n), 4);
    assert_int_equal(ioloop_add_callback_ordered(loop, tag_ordered, &p), -ESHUTDOWN);
    ioloop_unref(loop);
}

/* ---- a failed waker write does not silence later wakeups ------------------ */

static void set_ran(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store((_Atomic int *)arg, 1);
}

static bool wait_asleep(ioloop_t *loop)
{
    for (int k = 0; k < 5000; k++) {
        if (atomic_load(&loop->polling))
            return true;
        tu_sleep_ms(1);
    }
    return false;
}

/* White-box: the waker's write end is swapped for an fd that refuses writes
 * (EBADF), a post is made while the loop sleeps, then the waker is restored;
 * the next post must wake the loop. */
static void test_failed_wake_write_does_not_silence_wakeups(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(&(ioloop_options_t){.backend = IOLOOP_BACKEND_POLL}); /* a pipe waker */
    assert_int_not_equal(loop->wake_read_fd, loop->wake_write_fd);
    int refuse[2];
    assert_int_equal(pipe(refuse), 0);
    pthread_t thread = tu_start_loop_thread(loop);
    assert_true(wait_asleep(loop));
    int good = loop->wake_write_fd;
    loop->wake_write_fd = refuse[0]; /* a read end: write fails with EBADF */
    _Atomic int first = 0, second = 0;
    assert_int_equal(ioloop_add_callback(loop, set_ran, &first), 0);
    loop->wake_write_fd = good;
    /* The loop did not wake for the first post; the second wakes it. */
    assert_int_equal(ioloop_add_callback(loop, set_ran, &second), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(5);
    while (!atomic_load(&second) && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_true(atomic_load(&second));
    assert_true(atomic_load(&first));
    tu_join_loop_thread(loop, thread);
    ioloop_close(loop, false);
    close(refuse[0]);
    close(refuse[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_callback_from_timer_runs_next_iteration),
        cmocka_unit_test(test_callback_added_by_callback_waits_an_iteration),
        cmocka_unit_test(test_own_thread_posts_take_cheap_path),
        cmocka_unit_test(test_cross_thread_post_wakes_sleeping_loop),
        cmocka_unit_test(test_posts_while_closing),
        cmocka_unit_test(test_four_producers_exactly_once),
        cmocka_unit_test(test_post_to_closed_loop_fails),
        cmocka_unit_test(test_ordered_callback_runs_after_earlier_posts),
        cmocka_unit_test(test_failed_wake_write_does_not_silence_wakeups),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
