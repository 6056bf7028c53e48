/* peer_libuv.c — the benchmark workloads written the way a libuv program
 * would: uv_async_send plus a mutex-protected queue for cross-thread posts, a
 * uv_idle_t draining a plain queue for own-thread posts, uv_timer_t for
 * timers, uv_poll_t for the socketpairs. Built only when pkg-config found
 * libuv; otherwise the peer is listed with no workloads ("absent").
 *
 * Threading rule: each workload runs its uv_loop_t on the calling thread and
 * joins the one producer thread it may start.
 */
#define _GNU_SOURCE
#include "bench.h"

#ifdef IOLOOP_BENCH_HAVE_LIBUV
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

/* Closes every handle still open and the loop itself. */
static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int finish_loop(uv_loop_t *loop)
{
    uv_walk(loop, close_walk, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    return uv_loop_close(loop);
}

/* ---- own thread ------------------------------------------------------------ */

typedef struct {
    uv_loop_t loop;
    uv_idle_t idle;
    bench_queue_t q;
    size_t n, width, posted, run;
    int err;
} local_t;

static void local_post(local_t *s, void (*fn)(void *, void *), void *arg);

static void local_cb(void *ctx, void *arg)
{
    local_t *s = ctx;
    (void)arg;
    if (++s->run == s->n) {
        uv_stop(&s->loop);
        return;
    }
    if (s->posted < s->n) {
        s->posted++;
        local_post(s, local_cb, NULL);
    }
}

static void local_idle(uv_idle_t *idle)
{
    local_t *s = idle->data;
    bench_item_t *items;
    size_t n = bench_queue_take(&s->q, &items);
    for (size_t i = 0; i < n; i++)
        items[i].fn(s, items[i].arg);
    if (s->q.count == 0)
        uv_idle_stop(idle);
}

static void local_post(local_t *s, void (*fn)(void *, void *), void *arg)
{
    bool was_empty;
    if (bench_queue_push(&s->q, fn, arg, &was_empty) < 0) {
        s->err = -ENOMEM;
        uv_stop(&s->loop);
        return;
    }
    if (was_empty)
        uv_idle_start(&s->idle, local_idle);
}

static int uv_posts_local(size_t n, size_t width, double *seconds)
{
    local_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->n = n;
    s->width = width;
    uv_loop_init(&s->loop);
    uv_idle_init(&s->loop, &s->idle);
    s->idle.data = s;
    bench_queue_init(&s->q, false);
    for (; s->posted < width && s->posted < n; s->posted++)
        local_post(s, local_cb, NULL);
    double t0 = bench_now();
    uv_run(&s->loop, UV_RUN_DEFAULT);
    *seconds = bench_now() - t0;
    finish_loop(&s->loop);
    bench_queue_destroy(&s->q);
    int err = s->err ? s->err : s->run == n ? 0 : -EPROTO;
    free(s);
    return err;
}

/* ---- cross-thread: queue + uv_async_send ------------------------------------ */

/* Loop-side, shared and counter fields on separate cache lines (as for
 * ioloop in bench_callbacks.c). */
typedef struct {
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t start;
    uint64_t async_calls;
    const bench_options_t *o;
    size_t n, samples;
    _Atomic bool go;
    double *ns;
    int64_t t0, t1;
    int err;
    _Alignas(64) bench_queue_t q;
    _Alignas(64) _Atomic size_t run;
    _Atomic int64_t posted_at;
} remote_t;

static void remote_async(uv_async_t *async)
{
    remote_t *s = async->data;
    s->async_calls++;
    bench_item_t *items;
    size_t n = bench_queue_take(&s->q, &items);
    for (size_t i = 0; i < n; i++)
        items[i].fn(s, items[i].arg);
}

static void remote_started(uv_timer_t *t)
{
    atomic_store(&((remote_t *)t->data)->go, true);
}

static remote_t *remote_new(const bench_options_t *o)
{
    remote_t *s = aligned_alloc(_Alignof(remote_t), sizeof(*s));
    if (!s)
        return NULL;
    memset(s, 0, sizeof(*s));
    s->o = o;
    uv_loop_init(&s->loop);
    uv_async_init(&s->loop, &s->async, remote_async);
    s->async.data = s;
    uv_timer_init(&s->loop, &s->start);
    s->start.data = s;
    uv_timer_start(&s->start, remote_started, 0, 0);
    bench_queue_init(&s->q, true);
    return s;
}

static void remote_free(remote_t *s)
{
    finish_loop(&s->loop);
    bench_queue_destroy(&s->q);
    free(s);
}

static int remote_post(remote_t *s, void (*fn)(void *, void *), void *arg)
{
    int err = bench_queue_push(&s->q, fn, arg, NULL);
    if (!err)
        err = uv_async_send(&s->async);
    return err;
}

static void count_cb(void *ctx, void *arg)
{
    remote_t *s = ctx;
    (void)arg;
    size_t run = atomic_load_explicit(&s->run, memory_order_relaxed) + 1;
    atomic_store_explicit(&s->run, run, memory_order_relaxed);
    if (run == s->n) {
        s->t1 = bench_now_ns();
        uv_stop(&s->loop);
    }
}

static void *count_producer(void *arg)
{
    remote_t *s = arg;
    bench_pin_self(s->o->producer_cpu);
    while (!atomic_load(&s->go))
        sched_yield();
    size_t n = s->n;
    s->t0 = bench_now_ns();
    for (size_t i = 0; i < n; i++)
        if ((s->err = remote_post(s, count_cb, NULL)) != 0)
            break;
    return NULL;
}

static int uv_posts_remote(const bench_options_t *o, size_t n, bench_remote_t *out)
{
    remote_t *s = remote_new(o);
    if (!s)
        return -ENOMEM;
    s->n = n;
    pthread_t producer;
    int err = -pthread_create(&producer, NULL, count_producer, s);
    if (!err) {
        uv_run(&s->loop, UV_RUN_DEFAULT);
        pthread_join(producer, NULL);
        err = s->err;
    }
    out->seconds = (double)(s->t1 - s->t0) / 1e9;
    /* uv_async_send writes the eventfd only when it moves `pending` from 0
     * to 1, and each async callback resets it once: one call, one write. */
    out->wakeup_writes = (double)s->async_calls;
    out->loop_wakeups = (double)s->async_calls;
    remote_free(s);
    return err;
}

static void latency_cb(void *ctx, void *arg)
{
    remote_t *s = ctx;
    (void)arg;
    int64_t now = bench_now_ns();
    size_t i = atomic_load_explicit(&s->run, memory_order_relaxed);
    s->ns[i] = (double)(now - atomic_load_explicit(&s->posted_at, memory_order_relaxed));
    atomic_store_explicit(&s->run, i + 1, memory_order_release);
    if (i + 1 == s->samples)
        uv_stop(&s->loop);
}

static void *latency_producer(void *arg)
{
    remote_t *s = arg;
    bench_pin_self(s->o->producer_cpu);
    while (!atomic_load(&s->go))
        sched_yield();
    for (size_t i = 0; i < s->samples; i++) {
        nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
        atomic_store_explicit(&s->posted_at, bench_now_ns(), memory_order_relaxed);
        if ((s->err = remote_post(s, latency_cb, NULL)) != 0) {
            uv_stop(&s->loop); /* not thread-safe in general; only on this error path */
            break;
        }
        while (atomic_load_explicit(&s->run, memory_order_acquire) != i + 1)
            continue;
    }
    return NULL;
}

static int uv_wake_latency(const bench_options_t *o, size_t samples, double *ns)
{
    remote_t *s = remote_new(o);
    if (!s)
        return -ENOMEM;
    s->samples = samples;
    s->ns = ns;
    pthread_t producer;
    int err = -pthread_create(&producer, NULL, latency_producer, s);
    if (!err) {
        uv_run(&s->loop, UV_RUN_DEFAULT);
        pthread_join(producer, NULL);
        err = s->err;
    }
    remote_free(s);
    return err;
}

/* ---- timers ----------------------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_timer_t start;
    uv_timer_t *timers;
    size_t n, fired;
    double t0, seconds;
    int err;
} timers_t;

static void never_cb(uv_timer_t *t)
{
    ((timers_t *)t->data)->err = -EPROTO;
}

static void cancel_work(uv_timer_t *start)
{
    timers_t *s = start->data;
    double t0 = bench_now();
    for (size_t i = 0; i < s->n; i++)
        uv_timer_start(&s->timers[i], never_cb, bench_delay_ms(i, 1000, 1000), 0);
    for (size_t i = 0; i < s->n; i++)
        uv_timer_stop(&s->timers[i]);
    s->seconds = bench_now() - t0;
    uv_stop(&s->loop);
}

static void fire_cb(uv_timer_t *t)
{
    timers_t *s = t->data;
    if (++s->fired == s->n) {
        s->seconds = bench_now() - s->t0;
        uv_stop(&s->loop);
    }
}

static void fire_work(uv_timer_t *start)
{
    timers_t *s = start->data;
    s->t0 = bench_now();
    for (size_t i = 0; i < s->n; i++)
        uv_timer_start(&s->timers[i], fire_cb, bench_delay_ms(i, 0, 5), 0);
}

/* Timer handles are initialised before the clock starts: a libuv program
 * embeds and initialises them once, like a connection's timeout. */
static int run_timers(size_t n, uv_timer_cb work, double *seconds)
{
    timers_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->n = n;
    s->timers = malloc(n * sizeof(uv_timer_t));
    if (!s->timers) {
        free(s);
        return -ENOMEM;
    }
    uv_loop_init(&s->loop);
    for (size_t i = 0; i < n; i++) {
        uv_timer_init(&s->loop, &s->timers[i]);
        s->timers[i].data = s;
    }
    uv_timer_init(&s->loop, &s->start);
    s->start.data = s;
    uv_timer_start(&s->start, work, 0, 0);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    *seconds = s->seconds;
    finish_loop(&s->loop);
    int err = s->err;
    if (!err && work == fire_work && s->fired != n)
        err = -EPROTO;
    free(s->timers);
    free(s);
    return err;
}

static int uv_timers_cancel(size_t n, double *seconds)
{
    return run_timers(n, cancel_work, seconds);
}

static int uv_timers_fire(size_t n, double *seconds)
{
    return run_timers(n, fire_work, seconds);
}

/* ---- pipes (libevent's test/bench.c) ----------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_poll_t *polls;
    int *fds;
    int npipes;
    long count, fired, writes, failures;
} ring_t;

static void pipe_read(uv_poll_t *poll, int status, int events)
{
    (void)status, (void)events;
    ring_t *s = poll->loop->data;
    intptr_t widx = (intptr_t)poll->data + 1;
    unsigned char ch;
    ssize_t n = recv(s->fds[2 * ((intptr_t)poll->data)], &ch, sizeof(ch), 0);
    if (n >= 0)
        s->count += n;
    else
        s->failures++;
    if (s->writes) {
        if (widx >= s->npipes)
            widx -= s->npipes;
        if (send(s->fds[2 * widx + 1], "e", 1, 0) != 1)
            s->failures++;
        s->writes--;
        s->fired++;
    }
    if (s->count == s->fired)
        uv_stop(&s->loop);
}

static int uv_pipes(int npipes, int active, int writes, int runs, double *us)
{
    ring_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->npipes = npipes;
    s->fds = malloc(2 * (size_t)npipes * sizeof(int));
    s->polls = malloc((size_t)npipes * sizeof(uv_poll_t));
    int err = s->fds && s->polls ? bench_socketpairs(s->fds, npipes) : -ENOMEM;
    if (err) {
        free(s->fds), free(s->polls), free(s);
        return err;
    }
    uv_loop_init(&s->loop);
    s->loop.data = s;
    for (int i = 0; i < npipes && !err; i++) {
        err = uv_poll_init(&s->loop, &s->polls[i], s->fds[2 * i]);
        s->polls[i].data = (void *)(intptr_t)i;
        if (!err)
            err = uv_poll_start(&s->polls[i], UV_READABLE, pipe_read);
    }
    int space = npipes / active * 2;
    for (int r = 0; r <= runs && !err; r++) {
        s->count = s->fired = s->failures = 0;
        s->writes = writes;
        for (int i = 0; i < active; i++, s->fired++)
            (void)send(s->fds[i * space + 1], "e", 1, 0);
        double t0 = bench_now();
        uv_run(&s->loop, UV_RUN_DEFAULT);
        if (r > 0)
            us[r - 1] = (bench_now() - t0) * 1e6;
        if (s->failures)
            err = -EIO;
    }
    finish_loop(&s->loop);
    bench_close_all(s->fds, npipes);
    free(s->fds), free(s->polls), free(s);
    return err;
}

const bench_peer_t bench_peer_libuv = {
    .name = "libuv",
    .posts_local = uv_posts_local,
    .posts_remote = uv_posts_remote,
    .wake_latency = uv_wake_latency,
    .timers_cancel = uv_timers_cancel,
    .timers_fire = uv_timers_fire,
    .pipes = uv_pipes,
    .stream_echo = bench_libuv_stream_echo,
};
#else
const bench_peer_t bench_peer_libuv = {.name = "libuv"};
#endif
