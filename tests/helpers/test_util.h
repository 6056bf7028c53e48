/* test_util.h — helpers shared by the cmocka suites: time, sockets, threads,
 * ports and peer processes, PROXY protocol v2 headers.
 * Threading rule: every helper is safe from any thread unless it says so.
 */
#ifndef IOLOOP_TEST_UTIL_H
#define IOLOOP_TEST_UTIL_H

#include <setjmp.h> /* cmocka needs these before cmocka.h */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ioloop/ioloop.h"

/* CLOCK_MONOTONIC now, in ns. */
int64_t tu_now_ns(void);
/* Sleeps ms milliseconds. */
void tu_sleep_ms(int ms);
/* A connected AF_UNIX stream pair, both ends non-blocking and close-on-exec. */
void tu_socketpair(int fds[2]);
/* Process CPU time (user + system) in ns. */
int64_t tu_cpu_ns(void);
/* A new loop (opts may be NULL); fails the test if ioloop_new fails. */
ioloop_t *tu_loop_new(const ioloop_options_t *opts);
/* Stops `loop` after `ms` so that a failing test cannot hang (a safety net,
 * not an assertion). Loop thread, before or while it runs. */
void tu_stop_after(ioloop_t *loop, int ms);
/* Counts open file descriptors of this process. */
int tu_open_fds(void);
/* Runs ioloop_start(loop) on a new thread; tu_join_loop_thread stops the loop
 * and joins that thread. */
#include <pthread.h>
pthread_t tu_start_loop_thread(ioloop_t *loop);
void tu_join_loop_thread(ioloop_t *loop, pthread_t thread);

/* A TCP port on 127.0.0.1 that was free a moment ago (bound, then closed). */
int tu_free_port(void);
/* Whether something accepts connections on 127.0.0.1:port. */
bool tu_port_open(int port);
/* Spawns argv (found on PATH; stdout/stderr to /dev/null unless
 * IOLOOP_TEST_VERBOSE is set), then waits up to 10 s until port accepts:
 * its pid, or -1 if it did not start or never did (then it is killed). */
#include <sys/types.h>
pid_t tu_spawn(char *const argv[], int port);
/* Stops a tu_spawn child: SIGTERM, then SIGKILL after 3 s; reaps it. pid <= 0: nothing. */
void tu_kill(pid_t pid);

/* A PROXY protocol v2 header into buf: the 12-byte signature, ver_cmd,
 * fam, the length, then blen bytes of body (may be NULL when 0); returns
 * its length (16 + blen: buf must hold that). */
size_t tu_proxy_v2_header(unsigned char *buf, unsigned ver_cmd, unsigned fam, const void *body, size_t blen);

#endif
