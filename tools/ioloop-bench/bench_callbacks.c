/* bench_callbacks.c — `ioloop-bench callbacks`: posting callbacks on the
 * loop's own thread and from another thread, the eventfd writes that cost,
 * and how fast a sleeping loop wakes for a post. Holds the ioloop side of
 * those workloads and the driver that runs all three libraries and prints the
 * table.
 *
 * Threading rule: each workload runs the loop on the calling thread; the
 * cross-thread ones start one producer thread (pinned to o->producer_cpu) and
 * join it before returning.
 */
#define _GNU_SOURCE
#include "bench.h"

#include "ioloop/ioloop.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* ---- own thread: `width` chains, each callback posts the next ------------- */

typedef struct {
    size_t n, width, posted, run;
} local_t;

static void local_cb(ioloop_t *loop, void *arg)
{
    local_t *s = arg;
    if (++s->run == s->n) {
        ioloop_stop(loop);
        return;
    }
    if (s->posted < s->n) {
        s->posted++;
        (void)ioloop_add_callback(loop, local_cb, s);
    }
}

static void local_seed(ioloop_t *loop, void *arg)
{
    local_t *s = arg;
    for (size_t i = 0; i < s->width && s->posted < s->n; i++, s->posted++)
        (void)ioloop_add_callback(loop, local_cb, s);
}

int bench_ioloop_posts_local(size_t n, size_t width, double *seconds)
{
    ioloop_t *loop;
    int lerr = ioloop_new(NULL, &loop);
    if (lerr)
        return lerr;
    local_t s = {.n = n, .width = width};
    int err = ioloop_add_callback(loop, local_seed, &s);
    double t0 = bench_now();
    if (!err)
        err = ioloop_start(loop);
    *seconds = bench_now() - t0;
    ioloop_close(loop, false);
    return err ? err : s.run == n ? 0 : -EPROTO;
}

/* ---- from another thread ------------------------------------------------- */

/* The counter the loop bumps sits on a cache line of its own, so that the
 * producer's reads of the rest never bounce it (likewise in the peers). */
typedef struct {
    ioloop_t *loop;
    const bench_options_t *o;
    size_t n;
    _Atomic bool go;
    int64_t t0;
    int err;
    _Alignas(64) _Atomic size_t run;
    int64_t t1;
} remote_t;

static void remote_cb(ioloop_t *loop, void *arg)
{
    remote_t *s = arg;
    size_t run = atomic_load_explicit(&s->run, memory_order_relaxed) + 1;
    atomic_store_explicit(&s->run, run, memory_order_relaxed);
    if (run == s->n) {
        s->t1 = bench_now_ns();
        ioloop_stop(loop);
    }
}

static void remote_started(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store(&((remote_t *)arg)->go, true);
}

static void *remote_producer(void *arg)
{
    remote_t *s = arg;
    bench_pin_self(s->o->producer_cpu);
    while (!atomic_load(&s->go))
        sched_yield();
    ioloop_t *loop = s->loop;
    size_t n = s->n;
    s->t0 = bench_now_ns();
    for (size_t i = 0; i < n; i++) {
        int err = ioloop_add_callback(loop, remote_cb, s);
        if (err) {
            s->err = err;
            ioloop_stop(loop);
            break;
        }
    }
    return NULL;
}

int bench_ioloop_posts_remote(const bench_options_t *o, size_t n, bench_remote_t *out)
{
    ioloop_t *loop;
    int lerr = ioloop_new(NULL, &loop);
    if (lerr)
        return lerr;
    remote_t s = {.loop = loop, .o = o, .n = n};
    pthread_t producer;
    int err = -pthread_create(&producer, NULL, remote_producer, &s);
    if (err) {
        ioloop_close(loop, false);
        return err;
    }
    ioloop_stats_t before, after;
    ioloop_get_stats(loop, &before);
    (void)ioloop_add_callback(loop, remote_started, &s);
    err = ioloop_start(loop);
    pthread_join(producer, NULL);
    ioloop_get_stats(loop, &after);
    ioloop_close(loop, false);
    if (err || s.err)
        return err ? err : s.err;
    out->seconds = (double)(s.t1 - s.t0) / 1e9;
    out->wakeup_writes = (double)(after.wakeups_written - before.wakeups_written);
    out->loop_wakeups = (double)(after.wakeups_received - before.wakeups_received);
    return 0;
}

/* ---- wake-up latency: one post at a time to a loop that is asleep --------- */

typedef struct {
    ioloop_t *loop;
    const bench_options_t *o;
    size_t samples;
    double *ns;
    _Atomic int64_t posted_at;
    _Atomic size_t done;
    _Atomic bool go;
    int err;
} latency_t;

static void latency_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    latency_t *s = arg;
    int64_t now = bench_now_ns();
    size_t i = atomic_load_explicit(&s->done, memory_order_relaxed);
    s->ns[i] = (double)(now - atomic_load_explicit(&s->posted_at, memory_order_relaxed));
    atomic_store_explicit(&s->done, i + 1, memory_order_release);
}

static void latency_started(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store(&((latency_t *)arg)->go, true);
}

static void *latency_producer(void *arg)
{
    latency_t *s = arg;
    bench_pin_self(s->o->producer_cpu);
    while (!atomic_load(&s->go))
        sched_yield();
    for (size_t i = 0; i < s->samples; i++) {
        /* Give the loop time to go back to sleep in epoll_wait. */
        nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
        atomic_store_explicit(&s->posted_at, bench_now_ns(), memory_order_relaxed);
        int err = ioloop_add_callback(s->loop, latency_cb, s);
        if (err) {
            s->err = err;
            break;
        }
        while (atomic_load_explicit(&s->done, memory_order_acquire) != i + 1)
            continue; /* spinning on our own CPU: the loop runs on the other one */
    }
    ioloop_stop(s->loop);
    return NULL;
}

int bench_ioloop_wake_latency(const bench_options_t *o, size_t samples, double *ns)
{
    ioloop_t *loop;
    int lerr = ioloop_new(NULL, &loop);
    if (lerr)
        return lerr;
    latency_t s = {.loop = loop, .o = o, .samples = samples, .ns = ns};
    pthread_t producer;
    int err = -pthread_create(&producer, NULL, latency_producer, &s);
    if (err) {
        ioloop_close(loop, false);
        return err;
    }
    (void)ioloop_add_callback(loop, latency_started, &s);
    err = ioloop_start(loop);
    pthread_join(producer, NULL);
    ioloop_close(loop, false);
    return err ? err : s.err;
}

/* ---- the driver ------------------------------------------------------------ */

enum { LIBS = 1 + 2 };

static const bench_peer_t *lib(size_t i)
{
    return i == 0 ? &bench_ioloop_impl : bench_peers[i - 1];
}

int bench_callbacks(const bench_options_t *o)
{
    size_t n_local = o->quick ? 20000 : 1000000, width = 1000;
    size_t n_remote = o->quick ? 20000 : 1000000;
    size_t samples = o->quick ? 200 : 5000;
    int reps = o->repeat;

    double *local_rate[LIBS], *remote_rate[LIBS], *writes_per_m[LIBS], *writes_per_wake[LIBS], *p50[LIBS],
        *p99[LIBS];
    double *lat = malloc(samples * sizeof(*lat));
    for (size_t l = 0; l < LIBS; l++) {
        local_rate[l] = calloc((size_t)reps, sizeof(double));
        remote_rate[l] = calloc((size_t)reps, sizeof(double));
        writes_per_m[l] = calloc((size_t)reps, sizeof(double));
        writes_per_wake[l] = calloc((size_t)reps, sizeof(double));
        p50[l] = calloc((size_t)reps, sizeof(double));
        p99[l] = calloc((size_t)reps, sizeof(double));
    }
    bool present[LIBS];
    int err = 0;
    for (size_t l = 0; l < LIBS; l++)
        present[l] = lib(l)->posts_local != NULL;

    /* Rep -1 is the warm-up (a tenth of the size, not recorded). Within a rep
     * the libraries take turns, so a noisy moment hits one rep of each. */
    for (int r = -1; r < reps && !err; r++) {
        size_t scale = r < 0 ? 10 : 1;
        for (size_t l = 0; l < LIBS && !err; l++) {
            if (!present[l])
                continue;
            const bench_peer_t *impl = lib(l);
            double seconds = 0;
            bench_remote_t rem = {0};
            err = impl->posts_local(n_local / scale, width, &seconds);
            if (!err)
                err = impl->posts_remote(o, n_remote / scale, &rem);
            if (!err)
                err = impl->wake_latency(o, samples / scale, lat);
            if (err) {
                fprintf(stderr, "callbacks: %s failed: %d\n", impl->name, err);
                break;
            }
            if (r < 0)
                continue;
            local_rate[l][r] = (double)n_local / seconds / 1e6;
            remote_rate[l][r] = (double)n_remote / rem.seconds / 1e6;
            writes_per_m[l][r] = rem.wakeup_writes < 0 ? -1 : rem.wakeup_writes * 1e6 / (double)n_remote;
            writes_per_wake[l][r] = rem.wakeup_writes < 0 || rem.loop_wakeups <= 0
                                        ? -1
                                        : rem.wakeup_writes / rem.loop_wakeups;
            p50[l][r] = bench_percentile(lat, samples, 50) / 1000;
            p99[l][r] = bench_percentile(lat, samples, 99) / 1000;
        }
    }

    bench_row_t rows[6] = {
        {.unit = "Mposts/s", .sense = BENCH_HIGHER_IS_BETTER, .verdict = -1},
        {.unit = "Mposts/s", .sense = BENCH_HIGHER_IS_BETTER, .target_mask = 1u << BENCH_PEER_LIBUV,
         .target_ratio = 2.0, .verdict = -1},
        {.unit = "writes", .sense = BENCH_INFO, .verdict = -1},
        {.unit = "writes", .sense = BENCH_INFO, .target_text = "ioloop <= 1", .verdict = -1},
        {.unit = "us", .sense = BENCH_LOWER_IS_BETTER, .verdict = -1},
        {.unit = "us", .sense = BENCH_LOWER_IS_BETTER, .verdict = -1},
    };
    snprintf(rows[0].workload, sizeof(rows[0].workload), "posts on loop thread, %zu x%zu", n_local, width);
    snprintf(rows[1].workload, sizeof(rows[1].workload), "posts from another thread, %zu", n_remote);
    snprintf(rows[2].workload, sizeof(rows[2].workload), "eventfd writes per 1M cross-thread posts");
    snprintf(rows[3].workload, sizeof(rows[3].workload), "eventfd writes per loop wake-up");
    snprintf(rows[4].workload, sizeof(rows[4].workload), "wake-up latency p50, %zu posts", samples);
    snprintf(rows[5].workload, sizeof(rows[5].workload), "wake-up latency p99, %zu posts", samples);
    double **series[6] = {local_rate, remote_rate, writes_per_m, writes_per_wake, p50, p99};
    for (size_t i = 0; i < 6; i++)
        for (size_t l = 0; l < LIBS; l++)
            rows[i].value[l] = present[l] && !err ? bench_median(series[i][l], (size_t)reps) : NAN;
    if (!err && !isnan(rows[3].value[0]))
        rows[3].verdict = rows[3].value[0] >= 0 && rows[3].value[0] <= 1.0;

    bench_table_print("callbacks",
                      "cross-thread peers: libuv = mutex-protected queue + uv_async_send; libevent = "
                      "mutex-protected queue + event_active (evthread_use_pthreads).\n"
                      "own-thread peers: libuv = plain queue drained by a uv_idle_t; libevent = plain queue + "
                      "event_active. eventfd writes: ioloop exact; libuv = async callbacks (one per write).",
                      rows, 6);
    for (size_t l = 0; l < LIBS; l++) {
        free(local_rate[l]), free(remote_rate[l]), free(writes_per_m[l]);
        free(writes_per_wake[l]), free(p50[l]), free(p99[l]);
    }
    free(lat);
    return err;
}
