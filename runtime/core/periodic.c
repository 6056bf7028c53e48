/* periodic.c — ioloop_periodic_*: Tornado's PeriodicCallback.
 *
 * Threading rule: loop thread only (or the thread that holds a loop nobody
 * runs); new/start/stop/free from another thread fail with EPERM. Freeing
 * from inside the callback is allowed: run() frees once the callback returns.
 *
 * Rules (Tornado 5+): the period runs from the start of one call to the start
 * of the next; a call that overruns skips the periods it missed, landing back
 * on a multiple of the original schedule (no catch-up burst); if the clock
 * stepped back, the next deadline still advances by one period instead of
 * repeating; jitter scales each period by a random factor in
 * [1 - jitter/2, 1 + jitter/2].
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

struct ioloop_periodic {
    ioloop_t *loop;
    ioloop_time_t period;
    double jitter;
    ioloop_callback_fn fn;
    void *arg;
    bool running;
    bool in_callback;  /* fn is running: a free from inside it is deferred */
    bool free_pending; /* freed from inside fn: run() frees after fn returns */
    ioloop_time_t next_timeout;
    ioloop_timer_t timer;
};

int ioloop_periodic_new(ioloop_t *loop, ioloop_time_t period, double jitter, ioloop_callback_fn fn, void *arg,
                        ioloop_periodic_t **out)
{
    *out = NULL;
    if (period <= 0 || !fn || jitter < 0 || jitter >= 1)
        return -EINVAL;
    if (ioloop__owner_check(loop))
        return -EPERM;
    ioloop_periodic_t *pc = calloc(1, sizeof(*pc));
    if (!pc)
        return -ENOMEM;
    *pc = (ioloop_periodic_t){.loop = loop, .period = period, .jitter = jitter, .fn = fn, .arg = arg};
    *out = pc;
    return 0;
}

static void update_next(ioloop_periodic_t *pc, ioloop_time_t now)
{
    ioloop_time_t period = pc->period;
    if (pc->jitter > 0) {
        double unit = (double)(ioloop__random(pc->loop) >> 11) * 0x1.0p-53; /* [0, 1) */
        period = (ioloop_time_t)((double)period * (1.0 + pc->jitter * (unit - 0.5)));
        if (period < 1)
            period = 1;
    }
    if (pc->next_timeout <= now)
        pc->next_timeout += ((now - pc->next_timeout) / period + 1) * period;
    else
        pc->next_timeout += period; /* the clock went back: still move on */
}

static void run(ioloop_t *loop, void *arg);

static int schedule_next(ioloop_periodic_t *pc, ioloop_time_t now)
{
    assert(pc->running && !pc->free_pending);
    update_next(pc, now);
    int err = ioloop_call_at(pc->loop, pc->next_timeout, run, pc, &pc->timer);
    if (err)
        pc->running = false;
    return err;
}

static void run(ioloop_t *loop, void *arg)
{
    ioloop_periodic_t *pc = arg;
    pc->timer = 0;
    if (!pc->running)
        return;
    pc->in_callback = true;
    pc->fn(loop, pc->arg);
    pc->in_callback = false;
    if (pc->free_pending) {
        free(pc);
        return;
    }
    /* The callback may have stopped (or restarted) us. Read the clock afresh:
     * how long the call took decides which periods were missed. */
    if (pc->running && !pc->timer) {
        int err = schedule_next(pc, ioloop__clock_now(loop));
        if (err)
            ioloop_report_error(loop, "periodic callback", err);
    }
}

int ioloop_periodic_start(ioloop_periodic_t *pc)
{
    int err = ioloop__owner_check(pc->loop);
    if (err)
        return err;
    if (pc->running)
        return -EALREADY;
    pc->running = true;
    /* A loop that is not running has not read its clock since it last ran
     * (or was made): the first period starts now, not then. */
    pc->next_timeout = ioloop__on_loop_thread(pc->loop) ? ioloop_time(pc->loop) : ioloop__clock_now(pc->loop);
    return schedule_next(pc, pc->next_timeout);
}

int ioloop_periodic_stop(ioloop_periodic_t *pc)
{
    int err = ioloop__owner_check(pc->loop);
    if (err)
        return err;
    pc->running = false;
    ioloop_remove_timeout(pc->loop, pc->timer);
    pc->timer = 0;
    return 0;
}

bool ioloop_periodic_is_running(const ioloop_periodic_t *pc)
{
    return pc->running;
}

ioloop_time_t ioloop_periodic_scheduled(const ioloop_periodic_t *pc)
{
    return pc->next_timeout;
}

int ioloop_periodic_free(ioloop_periodic_t *pc)
{
    if (!pc)
        return 0;
    int err = ioloop_periodic_stop(pc);
    if (err)
        return err; /* not this thread's: the loop may be running it */
    if (pc->in_callback)
        pc->free_pending = true; /* run() still holds pc: it frees on return */
    else
        free(pc);
    return 0;
}
