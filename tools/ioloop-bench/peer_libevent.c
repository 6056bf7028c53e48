/* peer_libevent.c — the benchmark workloads written the way a libevent 2.1
 * program would: for cross-thread posts a mutex-protected queue plus
 * event_active on a user event, with evthread_use_pthreads; for everything
 * single-threaded a base without locks (EVENT_BASE_FLAG_NOLOCK), evtimer
 * add/del for timers and EV_READ|EV_PERSIST events for the socketpairs.
 * Built only when pkg-config found libevent and libevent_pthreads; otherwise
 * the peer is listed with no workloads ("absent").
 *
 * Threading rule: each workload runs its event_base on the calling thread and
 * joins the one producer thread it may start.
 */
#define _GNU_SOURCE
#include "bench.h"

#ifdef IOLOOP_BENCH_HAVE_LIBEVENT
#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/thread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static pthread_once_t threads_once = PTHREAD_ONCE_INIT;

static void use_pthreads(void)
{
    (void)evthread_use_pthreads();
}

/* A base for one thread (no locks), or one that other threads may poke. */
static struct event_base *base_new(bool shared)
{
    if (shared)
        pthread_once(&threads_once, use_pthreads);
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return NULL;
    if (!shared)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

/* ---- own thread: a plain queue and a user event ------------------------------ */

/* Loop-side, shared and counter fields on separate cache lines (as for
 * ioloop in bench_callbacks.c). */
typedef struct {
    struct event_base *base;
    struct event *drain;
    size_t n, posted, run, samples;
    const bench_options_t *o;
    _Atomic bool go;
    double *ns;
    int64_t t0, t1;
    _Atomic int err;
    _Alignas(64) bench_queue_t q;
    _Alignas(64) _Atomic size_t done;
    _Atomic int64_t posted_at;
} posts_t;

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    posts_t *s = arg;
    bench_item_t *items;
    size_t n = bench_queue_take(&s->q, &items);
    for (size_t i = 0; i < n; i++)
        items[i].fn(s, items[i].arg);
}

static void post(posts_t *s, void (*fn)(void *, void *), void *arg)
{
    bool was_empty;
    if (bench_queue_push(&s->q, fn, arg, &was_empty) < 0) {
        s->err = -ENOMEM;
        return;
    }
    if (was_empty) /* an empty queue has no activation on its way */
        event_active(s->drain, EV_READ, 0);
}

static void started_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    atomic_store(&((posts_t *)arg)->go, true);
}

static posts_t *posts_new(bool shared, const bench_options_t *o)
{
    posts_t *s = aligned_alloc(_Alignof(posts_t), sizeof(*s));
    if (!s)
        return NULL;
    memset(s, 0, sizeof(*s));
    s->o = o;
    s->base = base_new(shared);
    s->drain = s->base ? event_new(s->base, -1, 0, drain_cb, s) : NULL;
    if (!s->drain) {
        if (s->base)
            event_base_free(s->base);
        free(s);
        return NULL;
    }
    bench_queue_init(&s->q, shared);
    return s;
}

static void posts_free(posts_t *s)
{
    event_free(s->drain);
    event_base_free(s->base);
    bench_queue_destroy(&s->q);
    free(s);
}

static void local_cb(void *ctx, void *arg)
{
    posts_t *s = ctx;
    (void)arg;
    if (++s->run == s->n) {
        event_base_loopbreak(s->base);
        return;
    }
    if (s->posted < s->n) {
        s->posted++;
        post(s, local_cb, NULL);
    }
}

static int ev_posts_local(size_t n, size_t width, double *seconds)
{
    posts_t *s = posts_new(false, NULL);
    if (!s)
        return -ENOMEM;
    s->n = n;
    for (; s->posted < width && s->posted < n; s->posted++)
        post(s, local_cb, NULL);
    double t0 = bench_now();
    event_base_loop(s->base, 0);
    *seconds = bench_now() - t0;
    int err = s->err ? s->err : s->run == n ? 0 : -EPROTO;
    posts_free(s);
    return err;
}

/* ---- cross-thread ------------------------------------------------------------- */

static void count_cb(void *ctx, void *arg)
{
    posts_t *s = ctx;
    (void)arg;
    size_t run = atomic_load_explicit(&s->done, memory_order_relaxed) + 1;
    atomic_store_explicit(&s->done, run, memory_order_relaxed);
    if (run == s->n) {
        s->t1 = bench_now_ns();
        event_base_loopbreak(s->base);
    }
}

static void *count_producer(void *arg)
{
    posts_t *s = arg;
    bench_pin_self(s->o->producer_cpu);
    while (!atomic_load(&s->go))
        sched_yield();
    size_t n = s->n;
    s->t0 = bench_now_ns();
    for (size_t i = 0; i < n && !atomic_load_explicit(&s->err, memory_order_relaxed); i++)
        post(s, count_cb, NULL);
    return NULL;
}

static void latency_cb(void *ctx, void *arg)
{
    posts_t *s = ctx;
    (void)arg;
    int64_t now = bench_now_ns();
    size_t i = atomic_load_explicit(&s->done, memory_order_relaxed);
    s->ns[i] = (double)(now - atomic_load_explicit(&s->posted_at, memory_order_relaxed));
    atomic_store_explicit(&s->done, i + 1, memory_order_release);
    if (i + 1 == s->samples)
        event_base_loopbreak(s->base);
}

static void *latency_producer(void *arg)
{
    posts_t *s = arg;
    bench_pin_self(s->o->producer_cpu);
    while (!atomic_load(&s->go))
        sched_yield();
    for (size_t i = 0; i < s->samples; i++) {
        nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
        atomic_store_explicit(&s->posted_at, bench_now_ns(), memory_order_relaxed);
        post(s, latency_cb, NULL);
        if (s->err) {
            event_base_loopbreak(s->base); /* thread-safe on a locking base */
            break;
        }
        while (atomic_load_explicit(&s->done, memory_order_acquire) != i + 1)
            continue;
    }
    return NULL;
}

static int run_remote(posts_t *s, void *(*producer_fn)(void *))
{
    struct timeval zero = {0, 0};
    event_base_once(s->base, -1, EV_TIMEOUT, started_cb, s, &zero);
    pthread_t producer;
    int err = -pthread_create(&producer, NULL, producer_fn, s);
    if (err)
        return err;
    /* Only a user event is involved: without this flag the loop would return
     * as soon as it finds nothing pending. */
    event_base_loop(s->base, EVLOOP_NO_EXIT_ON_EMPTY);
    pthread_join(producer, NULL);
    return s->err;
}

static int ev_posts_remote(const bench_options_t *o, size_t n, bench_remote_t *out)
{
    posts_t *s = posts_new(true, o);
    if (!s)
        return -ENOMEM;
    s->n = n;
    int err = run_remote(s, count_producer);
    out->seconds = (double)(s->t1 - s->t0) / 1e9;
    out->wakeup_writes = -1; /* libevent does not count its notify writes */
    out->loop_wakeups = -1;
    posts_free(s);
    return err;
}

static int ev_wake_latency(const bench_options_t *o, size_t samples, double *ns)
{
    posts_t *s = posts_new(true, o);
    if (!s)
        return -ENOMEM;
    s->samples = samples;
    s->ns = ns;
    int err = run_remote(s, latency_producer);
    posts_free(s);
    return err;
}

/* ---- timers -------------------------------------------------------------------- */

typedef struct {
    struct event_base *base;
    struct event *timers;
    size_t n, fired;
    double t0, seconds;
    int err;
} timers_t;

static struct timeval ms_tv(unsigned ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static void never_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    ((timers_t *)arg)->err = -EPROTO;
}

static void fire_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    timers_t *s = arg;
    if (++s->fired == s->n) {
        s->seconds = bench_now() - s->t0;
        event_base_loopbreak(s->base);
    }
}

static void cancel_work(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    timers_t *s = arg;
    double t0 = bench_now();
    for (size_t i = 0; i < s->n; i++) {
        struct timeval tv = ms_tv(bench_delay_ms(i, 1000, 1000));
        evtimer_add(&s->timers[i], &tv);
    }
    for (size_t i = 0; i < s->n; i++)
        evtimer_del(&s->timers[i]);
    s->seconds = bench_now() - t0;
    event_base_loopbreak(s->base);
}

static void fire_work(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    timers_t *s = arg;
    s->t0 = bench_now();
    for (size_t i = 0; i < s->n; i++) {
        struct timeval tv = ms_tv(bench_delay_ms(i, 0, 5));
        evtimer_add(&s->timers[i], &tv);
    }
}

/* Events are assigned before the clock starts: a libevent program embeds and
 * assigns them once, like a connection's timeout event. */
static int run_timers(size_t n, bool fire, double *seconds)
{
    timers_t s = {.n = n, .base = base_new(false), .timers = malloc(n * sizeof(struct event))};
    if (!s.base || !s.timers) {
        if (s.base)
            event_base_free(s.base);
        free(s.timers);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        evtimer_assign(&s.timers[i], s.base, fire ? fire_cb : never_cb, &s);
    struct timeval zero = {0, 0};
    event_base_once(s.base, -1, EV_TIMEOUT, fire ? fire_work : cancel_work, &s, &zero);
    event_base_loop(s.base, 0);
    *seconds = s.seconds;
    for (size_t i = 0; i < n; i++)
        evtimer_del(&s.timers[i]);
    event_base_free(s.base);
    free(s.timers);
    return s.err ? s.err : fire && s.fired != n ? -EPROTO : 0;
}

static int ev_timers_cancel(size_t n, double *seconds)
{
    return run_timers(n, false, seconds);
}

static int ev_timers_fire(size_t n, double *seconds)
{
    return run_timers(n, true, seconds);
}

/* ---- pipes (test/bench.c itself, on a lock-free base) --------------------------- */

typedef struct {
    struct event_base *base;
    struct event *events;
    int *fds;
    int npipes;
    long count, fired, writes, failures;
} ring_t;

static ring_t ring;

static void pipe_read(evutil_socket_t fd, short which, void *arg)
{
    (void)which;
    intptr_t widx = (intptr_t)arg + 1;
    unsigned char ch;
    ssize_t n = recv(fd, &ch, sizeof(ch), 0);
    if (n >= 0)
        ring.count += n;
    else
        ring.failures++;
    if (ring.writes) {
        if (widx >= ring.npipes)
            widx -= ring.npipes;
        if (send(ring.fds[2 * widx + 1], "e", 1, 0) != 1)
            ring.failures++;
        ring.writes--;
        ring.fired++;
    }
    if (ring.count == ring.fired)
        event_base_loopbreak(ring.base);
}

static int ev_pipes(int npipes, int active, int writes, int runs, double *us)
{
    ring = (ring_t){.npipes = npipes};
    ring.fds = malloc(2 * (size_t)npipes * sizeof(int));
    ring.events = malloc((size_t)npipes * sizeof(struct event));
    int err = ring.fds && ring.events ? bench_socketpairs(ring.fds, npipes) : -ENOMEM;
    if (err) {
        free(ring.fds), free(ring.events);
        return err;
    }
    ring.base = base_new(false);
    if (!ring.base)
        err = -ENOMEM;
    for (int i = 0; i < npipes && !err; i++) {
        struct event *ev = &ring.events[i];
        event_assign(ev, ring.base, ring.fds[2 * i], EV_READ | EV_PERSIST, pipe_read, (void *)(intptr_t)i);
        if (event_add(ev, NULL) < 0)
            err = -EIO;
    }
    int space = npipes / active * 2;
    for (int r = 0; r <= runs && !err; r++) {
        ring.count = ring.fired = ring.failures = 0;
        ring.writes = writes;
        for (int i = 0; i < active; i++, ring.fired++)
            (void)send(ring.fds[i * space + 1], "e", 1, 0);
        double t0 = bench_now();
        event_base_loop(ring.base, 0);
        if (r > 0)
            us[r - 1] = (bench_now() - t0) * 1e6;
        if (ring.failures)
            err = -EIO;
    }
    if (ring.base) {
        for (int i = 0; i < npipes; i++)
            event_del(&ring.events[i]);
        event_base_free(ring.base);
    }
    bench_close_all(ring.fds, npipes);
    free(ring.fds), free(ring.events);
    return err;
}

const bench_peer_t bench_peer_libevent = {
    .name = "libevent",
    .posts_local = ev_posts_local,
    .posts_remote = ev_posts_remote,
    .wake_latency = ev_wake_latency,
    .timers_cancel = ev_timers_cancel,
    .timers_fire = ev_timers_fire,
    .pipes = ev_pipes,
    .stream_echo = bench_libevent_stream_echo,
};
#else
const bench_peer_t bench_peer_libevent = {.name = "libevent"};
#endif
