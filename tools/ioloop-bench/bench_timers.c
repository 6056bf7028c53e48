/* bench_timers.c — `ioloop-bench timers`: n timers scheduled then all
 * cancelled, and n timers scheduled and run. Holds the ioloop side of both
 * workloads and the driver that runs all three libraries and prints the table.
 *
 * Threading rule: everything runs on the calling thread (the loop's).
 */
#include "bench.h"

#include "ioloop/ioloop.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    size_t n, fired;
    ioloop_timer_t *handles;
    double seconds;
    int err;
} timers_t;

static void never_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ((timers_t *)arg)->err = -EPROTO; /* a cancelled timer ran */
}

static void cancel_work(ioloop_t *loop, void *arg)
{
    timers_t *s = arg;
    double t0 = bench_now();
    for (size_t i = 0; i < s->n; i++) {
        s->err = ioloop_call_later(loop, IOLOOP_MSEC(bench_delay_ms(i, 1000, 1000)), never_cb, s, &s->handles[i]);
        if (s->err)
            break;
    }
    for (size_t i = 0; i < s->n; i++)
        ioloop_remove_timeout(loop, s->handles[i]);
    s->seconds = bench_now() - t0;
    ioloop_stop(loop);
}

int bench_ioloop_timers_cancel(size_t n, double *seconds)
{
    ioloop_t *loop;
    int lerr = ioloop_new(NULL, &loop);
    if (lerr)
        return lerr;
    timers_t s = {.n = n, .handles = calloc(n, sizeof(ioloop_timer_t))};
    int err = s.handles ? ioloop_add_callback(loop, cancel_work, &s) : -ENOMEM;
    if (!err)
        err = ioloop_start(loop);
    ioloop_close(loop, false);
    free(s.handles);
    *seconds = s.seconds;
    return err ? err : s.err;
}

static double fire_t0;

static void fire_cb(ioloop_t *loop, void *arg)
{
    timers_t *s = arg;
    if (++s->fired == s->n) {
        s->seconds = bench_now() - fire_t0;
        ioloop_stop(loop);
    }
}

static void fire_work(ioloop_t *loop, void *arg)
{
    timers_t *s = arg;
    fire_t0 = bench_now();
    for (size_t i = 0; i < s->n; i++)
        if ((s->err = ioloop_call_later(loop, IOLOOP_MSEC(bench_delay_ms(i, 0, 5)), fire_cb, s, NULL)) != 0) {
            ioloop_stop(loop);
            return;
        }
}

int bench_ioloop_timers_fire(size_t n, double *seconds)
{
    ioloop_t *loop;
    int lerr = ioloop_new(NULL, &loop);
    if (lerr)
        return lerr;
    timers_t s = {.n = n};
    int err = ioloop_add_callback(loop, fire_work, &s);
    if (!err)
        err = ioloop_start(loop);
    ioloop_close(loop, false);
    *seconds = s.seconds;
    return err ? err : s.err ? s.err : s.fired == n ? 0 : -EPROTO;
}

/* ---- the driver ------------------------------------------------------------ */

enum { LIBS = 1 + 2 };

static const bench_peer_t *lib(size_t i)
{
    return i == 0 ? &bench_ioloop_impl : bench_peers[i - 1];
}

int bench_timers(const bench_options_t *o)
{
    size_t n = o->quick ? 20000 : 1000000;
    int reps = o->repeat;
    double *cancel_ms[LIBS], *fire_ms[LIBS];
    bool present[LIBS];
    for (size_t l = 0; l < LIBS; l++) {
        cancel_ms[l] = calloc((size_t)reps, sizeof(double));
        fire_ms[l] = calloc((size_t)reps, sizeof(double));
        present[l] = lib(l)->timers_cancel != NULL;
    }
    int err = 0;
    for (int r = -1; r < reps && !err; r++) {
        size_t size = r < 0 ? n / 10 : n; /* rep -1: warm-up, not recorded */
        for (size_t l = 0; l < LIBS && !err; l++) {
            if (!present[l])
                continue;
            double cancel = 0, fire = 0;
            err = lib(l)->timers_cancel(size, &cancel);
            if (!err)
                err = lib(l)->timers_fire(size, &fire);
            if (err) {
                fprintf(stderr, "timers: %s failed: %d\n", lib(l)->name, err);
                break;
            }
            if (r >= 0) {
                cancel_ms[l][r] = cancel * 1e3;
                fire_ms[l][r] = fire * 1e3;
            }
        }
    }
    unsigned both = (1u << BENCH_PEER_LIBUV) | (1u << BENCH_PEER_LIBEVENT);
    bench_row_t rows[2] = {
        {.unit = "ms", .sense = BENCH_LOWER_IS_BETTER, .target_mask = both, .target_ratio = 0.9, .verdict = -1},
        {.unit = "ms", .sense = BENCH_LOWER_IS_BETTER, .target_mask = both, .target_ratio = 0.9, .verdict = -1},
    };
    snprintf(rows[0].workload, sizeof(rows[0].workload), "%zu schedule (1-2 s) + cancel", n);
    snprintf(rows[1].workload, sizeof(rows[1].workload), "%zu schedule (0-4 ms) + fire", n);
    for (size_t l = 0; l < LIBS; l++) {
        rows[0].value[l] = present[l] && !err ? bench_median(cancel_ms[l], (size_t)reps) : NAN;
        rows[1].value[l] = present[l] && !err ? bench_median(fire_ms[l], (size_t)reps) : NAN;
        free(cancel_ms[l]);
        free(fire_ms[l]);
    }
    bench_table_print("timers",
                      "libuv = uv_timer_start/stop; libevent = evtimer_add/del on a lock-free base "
                      "(EVENT_BASE_FLAG_NOLOCK); all scheduled from one callback, all due when it returns.",
                      rows, 2);
    return err;
}
