/* bench.h — what the ioloop-bench subcommands share: options, the peer
 * vtable (the same workloads written for ioloop, libuv and libevent), timing,
 * medians/percentiles, CPU pinning and the result table.
 *
 * Threading rule: the helpers are plain functions; each workload runs its
 * loop on the calling thread and starts at most one producer thread, which it
 * joins before returning.
 */
#ifndef IOLOOP_BENCH_H
#define IOLOOP_BENCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int repeat;       /* measurements per figure; the median is reported */
    bool quick;       /* small sizes, for the CTest smoke check */
    int loop_cpu;     /* CPU for the loop thread, -1 when not pinned */
    int producer_cpu; /* CPU for producer threads, -1 when not pinned */
} bench_options_t;

/* Wake-up latency samples, in nanoseconds. */
typedef struct {
    double *ns;
    size_t count;
} bench_samples_t;

/* Cross-thread post result. */
typedef struct {
    double seconds;         /* first post to last callback run */
    double wakeup_writes;   /* eventfd/pipe writes, -1 when the library does not say */
    double loop_wakeups;    /* times the loop woke for posts, -1 when unknown */
} bench_remote_t;

/* One implementation of every workload. A function returns 0 or a negative
 * errno; NULL means the workload is not written for this library. */
typedef struct {
    const char *name;
    /* n callbacks, each posted from a callback on the loop's own thread
     * (width chains of n/width callbacks); *seconds is the loop's run time. */
    int (*posts_local)(size_t n, size_t width, double *seconds);
    /* n callbacks posted from a producer thread as fast as it can. */
    int (*posts_remote)(const bench_options_t *o, size_t n, bench_remote_t *out);
    /* One post at a time to a sleeping loop: time from post to callback. */
    int (*wake_latency)(const bench_options_t *o, size_t samples, double *ns);
    /* n timers scheduled (delays spread over 1..2 s), then all cancelled. */
    int (*timers_cancel)(size_t n, double *seconds);
    /* n timers scheduled with delays 0..4 ms, run until all fired. */
    int (*timers_fire)(size_t n, double *seconds);
    /* libevent's test/bench.c: npipes socketpairs, `active` of them written
     * first, `writes` reads that each pass a byte on; `runs` timed runs, each
     * run's microseconds stored in us[]. */
    int (*pipes)(int npipes, int active, int writes, int runs, double *us);
    /* `ioloop-bench stream`: an echo server on the calling thread over n
     * connected TCP sockets (fds, which it owns and closes), written with the
     * library's buffered stream: each read is written back. Returns once
     * every peer has closed its end. */
    int (*stream_echo)(const int *fds, int n);
} bench_peer_t;

extern const bench_peer_t bench_ioloop_impl;
/* The peers, always in this order. A peer pkg-config did not find at build
 * time is still listed, with every workload NULL, and reported as absent. */
extern const bench_peer_t bench_peer_libuv, bench_peer_libevent;
enum { BENCH_PEER_LIBUV = 0, BENCH_PEER_LIBEVENT = 1 };
extern const bench_peer_t *const bench_peers[];
extern const size_t bench_peer_count;

/* ---- the ioloop side of each workload (bench_*.c) ----------------------- */
int bench_ioloop_posts_local(size_t n, size_t width, double *seconds);
int bench_ioloop_posts_remote(const bench_options_t *o, size_t n, bench_remote_t *out);
int bench_ioloop_wake_latency(const bench_options_t *o, size_t samples, double *ns);
int bench_ioloop_timers_cancel(size_t n, double *seconds);
int bench_ioloop_timers_fire(size_t n, double *seconds);
int bench_ioloop_pipes(int npipes, int active, int writes, int runs, double *us);
int bench_ioloop_stream_echo(const int *fds, int n);
/* The peers' stream echo (peer_libuv_stream.c, peer_libevent_stream.c). */
int bench_libuv_stream_echo(const int *fds, int n);
int bench_libevent_stream_echo(const int *fds, int n);
/* Read size of every stream echo server: the same for all three libraries. */
enum { BENCH_STREAM_READ = 64 * 1024 };

/* The delay of the i-th timer in the timer workloads, in ms in [base,
 * base+span): the same pseudo-random sequence for every library. */
static inline unsigned bench_delay_ms(size_t i, unsigned base, unsigned span)
{
    uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return base + (unsigned)(x % span);
}

/* ---- subcommands -------------------------------------------------------- */
int bench_callbacks(const bench_options_t *o);
int bench_timers(const bench_options_t *o);
int bench_pipes(const bench_options_t *o);
int bench_stream(const bench_options_t *o);

/* ---- helpers (stats.c) --------------------------------------------------- */
double bench_now(void);                      /* monotonic seconds */
int64_t bench_now_ns(void);                  /* monotonic nanoseconds */
double bench_median(double *v, size_t n);    /* sorts v */
double bench_percentile(double *v, size_t n, double p); /* sorts v; p in [0,100] */
void bench_pin_self(int cpu);                /* no-op for cpu < 0 */
/* Largest npipes the fd limit allows (raises the soft limit to the hard one). */
int bench_max_pipes(void);
/* Fills the socketpair array (2*n fds, nonblocking); 0 or -errno. */
int bench_socketpairs(int *fds, int n);
void bench_close_all(int *fds, int n);

/* ---- the peers' post queue (post_queue.c) ---------------------------------
 * What a libuv or libevent program writes to hand callbacks to a loop: an
 * array of (fn, arg) under a mutex (none for the own-thread variant) that the
 * loop swaps out whole. Generous to the peers: no allocation per post. */
typedef struct {
    void (*fn)(void *ctx, void *arg);
    void *arg;
} bench_item_t;

typedef struct {
    bool locked;
    pthread_mutex_t lock;
    bench_item_t *items, *spare;
    size_t count, capacity, spare_capacity;
} bench_queue_t;

void bench_queue_init(bench_queue_t *q, bool locked);
void bench_queue_destroy(bench_queue_t *q);
/* Appends; *was_empty tells whether the queue was empty (may be NULL).
 * Returns 0 or -ENOMEM. Any thread when locked. */
int bench_queue_push(bench_queue_t *q, void (*fn)(void *, void *), void *arg, bool *was_empty);
/* Takes everything queued; the array stays valid until the next take.
 * Consumer thread only. */
size_t bench_queue_take(bench_queue_t *q, bench_item_t **items);

/* ---- the result table (table.c) ----------------------------------------- */
enum { BENCH_MAX_LIBS = 3 };

typedef enum {
    BENCH_LOWER_IS_BETTER,  /* times */
    BENCH_HIGHER_IS_BETTER, /* throughputs */
    BENCH_INFO,             /* counts: no ratio */
} bench_sense_t;

typedef struct {
    char workload[48];
    const char *unit;
    bench_sense_t sense;
    /* [0] ioloop, then bench_peers order; NaN: library absent; negative: the
     * library does not expose this figure ("n/a"). */
    double value[BENCH_MAX_LIBS];
    /* Target: the ratio ioloop/peer must be <= target_ratio (times) or >=
     * target_ratio (rates) against every peer in target_mask (bit
     * BENCH_PEER_x); 0: no target. */
    unsigned target_mask;
    double target_ratio;
    const char *target_text; /* overrides the generated text when set */
    int verdict;             /* -1 none, 0 FAIL, 1 PASS; set by bench_row_judge */
} bench_row_t;

void bench_table_print(const char *title, const char *note, bench_row_t *rows, size_t n);
/* Computes the verdict from the values (unless the caller set one). */
void bench_row_judge(bench_row_t *row);
/* Counts FAIL rows across the run; ioloop-bench prints the total at the end. */
extern int bench_failures;

#endif
