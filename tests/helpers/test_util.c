/* test_util.c — helpers shared by the cmocka suites (see test_util.h). */
#define _GNU_SOURCE
#include "test_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int64_t tu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void tu_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        continue;
}

void tu_socketpair(int fds[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
}

int64_t tu_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

static void stop_loop(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

ioloop_t *tu_loop_new(const ioloop_options_t *opts)
{
    ioloop_t *loop = NULL;
    assert_int_equal(ioloop_new(opts, &loop), 0);
    assert_non_null(loop);
    return loop;
}

void tu_stop_after(ioloop_t *loop, int ms)
{
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(ms), stop_loop, NULL, NULL), 0);
}

int tu_open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the DIR's own fd */
}

static void *loop_thread_main(void *arg)
{
    ioloop_start(arg);
    return NULL;
}

pthread_t tu_start_loop_thread(ioloop_t *loop)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, loop_thread_main, loop), 0);
    return t;
}

void tu_join_loop_thread(ioloop_t *loop, pthread_t thread)
{
    ioloop_stop(loop);
    pthread_join(thread, NULL);
}

int tu_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

bool tu_port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

pid_t tu_spawn(char *const argv[], int port)
{
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (!getenv("IOLOOP_TEST_VERBOSE")) {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    }
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return -1;
    for (int i = 0; i < 1000 && !tu_port_open(port); i++)
        tu_sleep_ms(10);
    if (!tu_port_open(port)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

void tu_kill(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        tu_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

size_t tu_proxy_v2_header(unsigned char *buf, unsigned ver_cmd, unsigned fam, const void *body, size_t blen)
{
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    memcpy(buf, sig, sizeof(sig));
    buf[12] = (unsigned char)ver_cmd;
    buf[13] = (unsigned char)fam;
    buf[14] = (unsigned char)(blen >> 8);
    buf[15] = (unsigned char)blen;
    if (blen)
        memcpy(buf + 16, body, blen);
    return 16 + blen;
}
