/* bench_pipes.c — `ioloop-bench pipes`: libevent's classic test/bench.c.
 * npipes socketpairs, a read handler on each; `active` of them (spread
 * evenly) get one byte; each read takes the byte and, while writes remain,
 * sends one to the next pair, so `active` bytes chase each other round the
 * ring for `writes` hops. A run is timed from the first byte sent to the
 * last byte read (registration is outside, as in bench.c). Holds the ioloop
 * side and the driver for all three libraries.
 *
 * Threading rule: everything runs on the calling thread (the loop's).
 */
#include "bench.h"

#include "ioloop/ioloop.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
    int *fds;
    int npipes;
    long count, fired, writes, failures;
} ring_t;

static ring_t ring;

static int pipe_read(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
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
        ioloop_stop(loop);
    return 0;
}

int bench_ioloop_pipes(int npipes, int active, int writes, int runs, double *us)
{
    int *fds = malloc(2 * (size_t)npipes * sizeof(int));
    if (!fds)
        return -ENOMEM;
    int err = bench_socketpairs(fds, npipes);
    if (err) {
        free(fds);
        return err;
    }
    ioloop_t *loop;
    err = ioloop_new(NULL, &loop);
    if (err)
        goto out;
    ring = (ring_t){.fds = fds, .npipes = npipes};
    for (int i = 0; i < npipes && !err; i++)
        err = ioloop_add_handler(loop, fds[2 * i], IOLOOP_READ, pipe_read, (void *)(intptr_t)i);
    int space = npipes / active * 2;
    /* Run 0 is the warm-up. */
    for (int r = 0; r <= runs && !err; r++) {
        ring.count = ring.failures = 0;
        ring.fired = 0;
        ring.writes = writes;
        for (int i = 0; i < active; i++, ring.fired++)
            (void)send(fds[i * space + 1], "e", 1, 0);
        double t0 = bench_now(); /* after the first bytes, as bench.c does */
        err = ioloop_start(loop);
        if (r > 0)
            us[r - 1] = (bench_now() - t0) * 1e6;
        if (!err && ring.failures)
            err = -EIO;
    }
    ioloop_close(loop, false);
out:
    bench_close_all(fds, npipes);
    free(fds);
    return err;
}

/* ---- the driver ------------------------------------------------------------ */

enum { LIBS = 1 + 2, MAX_SIZES = 3, MAX_ACTIVES = 2 };

static const bench_peer_t *lib(size_t i)
{
    return i == 0 ? &bench_ioloop_impl : bench_peers[i - 1];
}

int bench_pipes(const bench_options_t *o)
{
    /* A=1 is bench.c's default (one byte round the ring: the loop's cost per
     * iteration shows); A=100 keeps many fds ready per poll. */
    int sizes[MAX_SIZES] = {100, 1000, 10000}, actives[MAX_ACTIVES] = {1, 100};
    size_t nsizes = o->quick ? 2 : 3;
    int writes = o->quick ? 1000 : 10000, runs = o->quick ? 3 : 10;
    int limit = bench_max_pipes();
    int reps = o->repeat;
    size_t per_lib = (size_t)runs * (size_t)reps, nrows = 0;
    bench_row_t rows[MAX_SIZES * MAX_ACTIVES];
    char note[512] = "";
    int err = 0;
    unsigned both = (1u << BENCH_PEER_LIBUV) | (1u << BENCH_PEER_LIBEVENT);
    double *us = malloc((size_t)runs * sizeof(double));
    double *all[LIBS];
    for (size_t l = 0; l < LIBS; l++)
        all[l] = malloc(per_lib * sizeof(double));
    for (size_t s = 0; s < nsizes && !err; s++) {
        int npipes = sizes[s];
        if (npipes > limit) {
            snprintf(note + strlen(note), sizeof(note) - strlen(note),
                     "N=%d needs %d fds, RLIMIT_NOFILE allows %d socketpairs: ran N=%d.\n", npipes, 2 * npipes,
                     limit, limit);
            npipes = limit;
        }
        for (size_t a = 0; a < MAX_ACTIVES && !err; a++) {
            int active = actives[a] < npipes ? actives[a] : npipes;
            bench_row_t *row = &rows[nrows++];
            *row = (bench_row_t){.unit = "us/run", .sense = BENCH_LOWER_IS_BETTER, .target_mask = both,
                                 .target_ratio = 0.9, .verdict = -1};
            snprintf(row->workload, sizeof(row->workload), "N=%d A=%d W=%d", npipes, active, writes);
            /* Libraries take turns per rep, so noise spreads over all of them. */
            for (int r = 0; r < reps && !err; r++)
                for (size_t l = 0; l < LIBS && !err; l++) {
                    if (!lib(l)->pipes)
                        continue;
                    err = lib(l)->pipes(npipes, active, writes, runs, us);
                    if (err)
                        fprintf(stderr, "pipes: %s N=%d A=%d failed: %d\n", lib(l)->name, npipes, active, err);
                    for (int i = 0; i < runs; i++)
                        all[l][(size_t)r * (size_t)runs + (size_t)i] = us[i];
                }
            for (size_t l = 0; l < LIBS; l++)
                row->value[l] = lib(l)->pipes && !err ? bench_median(all[l], per_lib) : NAN;
        }
    }
    snprintf(note + strlen(note), sizeof(note) - strlen(note),
             "median of %d timed runs x %d reps (one warm-up run each); libuv = uv_poll_t, "
             "libevent = EV_READ|EV_PERSIST events, lock-free base.\n"
             "All three make the same recv/send/epoll_wait calls per hop: the kernel dominates.",
             runs, reps);
    bench_table_print("pipes (libevent test/bench.c)", note, rows, nrows);
    free(us);
    for (size_t l = 0; l < LIBS; l++)
        free(all[l]);
    return err;
}
