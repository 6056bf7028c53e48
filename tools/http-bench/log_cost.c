/* log_cost.c — the built-in access log's own cost, without a network: N
 * entries like helloworld's through ioloop_http_access_log_hook on one
 * thread (holding a loop nobody runs: its flush timers never fire, batches go
 * when full), then close. Prints the process CPU (the formatting thread and
 * the writer thread) per line. Built by tools/CMakeLists.txt (http-bench-log-cost), run by
 * tools/bench-access-log.
 *
 *   log_cost FILE N
 */
#define _GNU_SOURCE
#include "ioloop/http.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long n = atol(argv[2]);
    ioloop_t *loop;
    ioloop_http_access_log_t *log;
    if (ioloop_new(NULL, &loop) != 0 || ioloop_http_access_log_open(argv[1], IOLOOP_HTTP_LOG_COMMON, &log) != 0)
        return 1;
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ioloop_http_log_entry_t e = {
        .loop = loop,
        .method = "GET",
        .target = "/",
        .version = "HTTP/1.1",
        .host = "127.0.0.1:8888",
        .remote_ip = "127.0.0.1",
        .peer = (struct sockaddr *)&peer,
        .peer_len = sizeof(peer),
        .status = 200,
        .body_bytes = 12,
        .bytes = 129,
        .completed = true,
    };
    double t0 = cpu_seconds();
    for (long i = 0; i < n; i++)
        ioloop_http_access_log_hook(&e, log);
    ioloop_http_access_log_close(log);
    double t1 = cpu_seconds();
    printf("%.1f\n", (t1 - t0) * 1e9 / (double)n);
    ioloop_close(loop, false);
    return 0;
}
