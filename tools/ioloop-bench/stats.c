/* stats.c — timing, medians and percentiles, CPU pinning, and the fd plumbing
 * (socketpairs, the descriptor limit) that several subcommands need.
 *
 * Threading rule: every function acts on its arguments or the calling thread
 * only; bench_max_pipes changes the process's RLIMIT_NOFILE (call it from the
 * main thread before any workload starts).
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double bench_now(void)
{
    return (double)bench_now_ns() / 1e9;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_percentile(double *v, size_t n, double p)
{
    if (n == 0)
        return 0.0 / 0.0;
    qsort(v, n, sizeof(*v), compare_double);
    /* Nearest rank: the smallest value with at least p% of samples at or below. */
    double rank = p / 100.0 * (double)n;
    size_t i = rank <= 1 ? 0 : (size_t)(rank + 0.999999) - 1;
    return v[i < n ? i : n - 1];
}

double bench_median(double *v, size_t n)
{
    if (n == 0)
        return 0.0 / 0.0;
    qsort(v, n, sizeof(*v), compare_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bench_pin_self(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    (void)sched_setaffinity(0, sizeof(set), &set); /* best effort: reported by main */
}

int bench_max_pipes(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Keep 64 descriptors for stdio, loops, eventfds and epoll. */
    long usable = (long)(rl.rlim_cur > 1000000 ? 1000000 : rl.rlim_cur) - 64;
    return usable > 0 ? (int)(usable / 2) : 0;
}

int bench_socketpairs(int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, &fds[2 * i]) < 0) {
            int err = -errno;
            bench_close_all(fds, i);
            return err;
        }
    }
    return 0;
}

void bench_close_all(int *fds, int n)
{
    for (int i = 0; i < 2 * n; i++)
        close(fds[i]);
}
