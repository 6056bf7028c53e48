/* bench_post.c — `ioloop-bench post`: the cost of handing work from one
 * loop to another with ioloop_add_callback.
 *
 *  - ping-pong: loop 0 posts to loop 1, which posts back; the round trip is
 *    timed N times: p50 and p99. Both loops sleep in poll between posts, so
 *    this includes the eventfd wakeup on each side.
 *  - one-way: loop 0 posts M callbacks to loop 1 (at most a window in
 *    flight, so memory stays bounded); posts per second until loop 1 ran the
 *    last one.
 * The peer, measured in the same run: the same two exchanges between two
 * plain threads through a bounded mutex + condition-variable queue of
 * (fn, arg) items that the receiver runs: the same handoff, with no loop
 * and no allocation (ioloop allocates one node per cross-thread post).
 *
 * Threading rule: runs on the calling thread; starts a 2-loop runtime and
 * the two peer threads, joins everything before returning.
 */
#define _GNU_SOURCE
#include "bench_runtime.h"

#include "ioloop/runtime.h"

#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { WINDOW = 4096 };

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void percentiles(int64_t *v, long n, double *p50, double *p99)
{
    qsort(v, (size_t)n, sizeof(v[0]), cmp_i64);
    *p50 = (double)v[n / 2] / 1e3;
    *p99 = (double)v[(n * 99) / 100] / 1e3;
}

static void wait_flag(_Atomic int *flag, int64_t timeout_ns)
{
    int64_t deadline = now_ns() + timeout_ns;
    while (!atomic_load(flag) && now_ns() < deadline)
        usleep(200);
}

/* ---- ioloop: ping-pong ------------------------------------------------------ */

typedef struct {
    ioloop_t *a, *b;
    long n, i;
    int64_t *rtt;
    int64_t t0;
    _Atomic int done;
    /* one-way */
    long m, posted;
    _Alignas(64) _Atomic long received;
    int64_t start, end;
} post_bench_t;

static void ping(ioloop_t *loop, void *arg);

static void pong(ioloop_t *loop, void *arg)
{
    (void)loop;
    post_bench_t *p = arg;
    p->rtt[p->i++] = now_ns() - p->t0;
    if (p->i == p->n) {
        atomic_store(&p->done, 1);
        return;
    }
    ping(p->a, p);
}

static void ping_received(ioloop_t *loop, void *arg)
{
    (void)loop;
    post_bench_t *p = arg;
    ioloop_add_callback(p->a, pong, p);
}

static void ping(ioloop_t *loop, void *arg)
{
    (void)loop;
    post_bench_t *p = arg;
    p->t0 = now_ns();
    ioloop_add_callback(p->b, ping_received, p);
}

/* ---- ioloop: one-way ---------------------------------------------------------- */

static void produce(ioloop_t *loop, void *arg);

static void count_one(ioloop_t *loop, void *arg)
{
    (void)loop;
    post_bench_t *p = arg;
    long r = atomic_load_explicit(&p->received, memory_order_relaxed) + 1;
    atomic_store_explicit(&p->received, r, memory_order_relaxed);
    if (r == p->m) {
        p->end = now_ns();
        atomic_store(&p->done, 1);
    } else if (r % (WINDOW / 2) == 0) {
        ioloop_add_callback(p->a, produce, p); /* credit: half the window drained */
    }
}

/* Posts until the window is full; the consumer's credits call it again, so
 * neither loop spins while the other works. */
static void produce(ioloop_t *loop, void *arg)
{
    (void)loop;
    post_bench_t *p = arg;
    long in_flight = p->posted - atomic_load_explicit(&p->received, memory_order_relaxed);
    while (p->posted < p->m && in_flight < WINDOW) {
        if (ioloop_add_callback(p->b, count_one, p) < 0)
            return;
        p->posted++;
        in_flight++;
    }
}

static void start_one_way(ioloop_t *loop, void *arg)
{
    post_bench_t *p = arg;
    p->start = now_ns();
    produce(loop, p);
}

/* ---- the peer: two threads, mutex + condvar queues ------------------------------ */

/* A bounded queue of (fn, arg) items, like a post, run by the consumer:
 * the same work as a callback handoff, minus the loop. */
typedef struct {
    void (*fn)(void *);
    void *arg;
} mq_item_t;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mq_item_t ring[WINDOW];
    long head, count;
} mq_t;

static void mq_init(mq_t *q)
{
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->head = q->count = 0;
}

static void mq_destroy(mq_t *q)
{
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
}

static void mq_push(mq_t *q, void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == WINDOW)
        pthread_cond_wait(&q->cond, &q->lock);
    q->ring[(q->head + q->count) % WINDOW] = (mq_item_t){fn, arg};
    q->count++;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* Pops one item and runs it. */
static void mq_run_one(mq_t *q)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == 0)
        pthread_cond_wait(&q->cond, &q->lock);
    mq_item_t item = q->ring[q->head];
    q->head = (q->head + 1) % WINDOW;
    q->count--;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    item.fn(item.arg);
}

static void peer_count(void *arg)
{
    ++*(long *)arg;
}

typedef struct {
    mq_t to_b, to_a;
    long n, ran_b, ran_a;
} peer_t;

static void *peer_echo(void *arg)
{
    peer_t *p = arg;
    for (long i = 0; i < p->n; i++) {
        mq_run_one(&p->to_b);
        mq_push(&p->to_a, peer_count, &p->ran_a);
    }
    return NULL;
}

static void *peer_sink(void *arg)
{
    peer_t *p = arg;
    for (long i = 0; i < p->n; i++)
        mq_run_one(&p->to_b);
    return NULL;
}

static void usage(void)
{
    printf("usage: ioloop-bench post [--round-trips N] [--posts M] [--pin]\n"
           "  cross-loop ping-pong latency and one-way post throughput between two loops,\n"
           "  next to the same exchanges between two threads through a mutex+condvar queue\n");
}

int bench_post_main(int argc, char **argv)
{
    long n = 20000, m = 1000000;
    int pin = 0;
    static const struct option longopts[] = {{"round-trips", required_argument, 0, 'n'},
                                             {"posts", required_argument, 0, 'm'},
                                             {"pin", no_argument, 0, 'p'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    optind = 1;
    for (int ch; (ch = getopt_long(argc, argv, "n:m:ph", longopts, NULL)) != -1;) {
        switch (ch) {
        case 'n':
            n = atol(optarg);
            break;
        case 'm':
            m = atol(optarg);
            break;
        case 'p':
            pin = 1;
            break;
        case 'h':
            usage();
            return 0;
        default:
            usage();
            return 2;
        }
    }
    if (n < 100 || n > 100000000 || m < 1 || m > 1000000000) {
        usage();
        return 2;
    }
    int64_t *rtt = malloc(sizeof(int64_t) * (size_t)n);
    if (!rtt)
        return 1;

    /* ioloop */
    ioloop_runtime_t *rt = NULL;
    int err = ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 2, .pin = pin, .executor_threads = 1}, &rt);
    if (err) {
        fprintf(stderr, "post: %s\n", strerror(-err));
        free(rtt);
        return 1;
    }
    post_bench_t *p = aligned_alloc(64, sizeof(*p));
    memset(p, 0, sizeof(*p));
    p->a = ioloop_runtime_loop(rt, 0);
    p->b = ioloop_runtime_loop(rt, 1);
    p->n = n;
    p->rtt = rtt;
    ioloop_add_callback(p->a, ping, p);
    wait_flag(&p->done, 120 * 1000000000LL);
    int ok_pingpong = atomic_load(&p->done);
    double io_p50 = 0, io_p99 = 0;
    if (ok_pingpong)
        percentiles(rtt, n, &io_p50, &io_p99);

    atomic_store(&p->done, 0);
    p->m = m;
    ioloop_add_callback(p->a, start_one_way, p);
    wait_flag(&p->done, 120 * 1000000000LL);
    int ok_oneway = atomic_load(&p->done);
    double io_rate = ok_oneway ? (double)m / ((double)(p->end - p->start) / 1e9) : 0;
    ioloop_runtime_stop(rt);
    ioloop_runtime_join(rt);
    ioloop_runtime_free(rt);
    free(p);

    /* peer: ping-pong */
    peer_t *qp = calloc(1, sizeof(peer_t)); /* two rings: too big for the stack */
    if (!qp) {
        free(rtt);
        return 1;
    }
    qp->n = n;
    mq_init(&qp->to_a);
    mq_init(&qp->to_b);
    pthread_t t;
    pthread_create(&t, NULL, peer_echo, qp);
    for (long i = 0; i < n; i++) {
        int64_t t0 = now_ns();
        mq_push(&qp->to_b, peer_count, &qp->ran_b);
        mq_run_one(&qp->to_a);
        rtt[i] = now_ns() - t0;
    }
    pthread_join(t, NULL);
    double peer_p50, peer_p99;
    percentiles(rtt, n, &peer_p50, &peer_p99);
    /* peer: one-way */
    qp->n = m;
    pthread_create(&t, NULL, peer_sink, qp);
    int64_t t0 = now_ns();
    for (long i = 0; i < m; i++)
        mq_push(&qp->to_b, peer_count, &qp->ran_b);
    pthread_join(t, NULL);
    double peer_rate = (double)m / ((double)(now_ns() - t0) / 1e9);
    mq_destroy(&qp->to_a);
    mq_destroy(&qp->to_b);
    free(rtt);
    free(qp);

    printf("post: %ld round trips, %ld one-way posts (window %d)\n", n, m, WINDOW);
    printf("%-28s %12s %12s %16s\n", "", "rtt p50 us", "rtt p99 us", "one-way posts/s");
    printf("%-28s %12.1f %12.1f %16.0f\n", "ioloop (2 loops)", io_p50, io_p99, io_rate);
    printf("%-28s %12.1f %12.1f %16.0f\n", "peer: mutex+condvar threads", peer_p50, peer_p99, peer_rate);
    if (peer_p50 > 0 && peer_rate > 0)
        printf("ratio ioloop/peer: p50 %.2fx, p99 %.2fx, throughput %.2fx\n", io_p50 / peer_p50, io_p99 / peer_p99,
               io_rate / peer_rate);
    return ok_pingpong && ok_oneway ? 0 : 1;
}
