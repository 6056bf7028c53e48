/* test_listener_fds.c — listeners on inherited sockets (ioloop_listener_options_t
 * fds/nfds) and systemd's LISTEN_FDS protocol (ioloop_listen_fds): served on
 * one fd (EXCLUSIVE, DISPATCH) and on several (REUSEPORT, one per loop, two
 * ports), validation (no socket, not listening, datagram, closed fd,
 * EXCLUSIVE over several), the caller's fds left open, and the environment
 * rules (other pid, junk, too many, unset after taking).
 * Threading rule: the test thread owns the runtime; on_stream runs on the
 * loops and reports through atomics.
 */
#define _GNU_SOURCE
#include "ioloop/runtime.h"
#include "test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_int served[4]; /* connections per loop index */

static void greet_done(ioloop_stream_t *stream, int status, void *arg)
{
    (void)status, (void)arg;
    ioloop_stream_close(stream);
}

/* Says which loop took the connection ("0\n", "1\n"), then closes. */
static void on_stream(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer, socklen_t peer_len,
                      void *arg)
{
    (void)peer, (void)peer_len, (void)arg;
    int i = ioloop_runtime_index(loop);
    atomic_fetch_add(&served[i], 1);
    char line[8];
    int n = snprintf(line, sizeof(line), "%d\n", i);
    if (ioloop_stream_write(stream, line, (size_t)n, greet_done, NULL) != 0)
        ioloop_stream_close(stream);
}

/* A listening TCP socket on 127.0.0.1 (port 0: any; reuseport to share one). */
static int listening_socket(int port, bool reuseport, int *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int one = 1;
    if (reuseport)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 128), 0);
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    if (bound)
        *bound = ntohs(sa.sin_port);
    return fd;
}

/* Connects to port and returns the loop index the server named, or -1. */
static int ask(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int result = -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        char buf[8] = {0};
        if (recv(fd, buf, sizeof(buf) - 1, MSG_WAITALL) > 0)
            result = atoi(buf);
    }
    close(fd);
    return result;
}

static ioloop_runtime_t *start_runtime(int loops)
{
    for (int i = 0; i < 4; i++)
        atomic_store(&served[i], 0);
    ioloop_runtime_options_t ro = {.loops = loops, .executor_threads = 2};
    ioloop_runtime_t *rt;
    assert_int_equal(ioloop_runtime_start(&ro, &rt), 0);
    return rt;
}

static void stop_all(ioloop_runtime_t *rt, ioloop_listener_t *l)
{
    ioloop_listener_stop(l);
    ioloop_runtime_stop(rt);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    ioloop_listener_free(l);
    ioloop_runtime_free(rt);
}

static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

static void check_one_fd(ioloop_accept_mode_t asked, ioloop_accept_mode_t expected)
{
    ioloop_runtime_t *rt = start_runtime(2);
    int port;
    int fd = listening_socket(0, false, &port);
    ioloop_listener_options_t o = {.fds = &fd, .nfds = 1, .mode = asked, .on_stream = on_stream};
    ioloop_listener_t *l;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), 0);
    const char *backend = getenv("IOLOOP_BACKEND");
    if (expected != IOLOOP_ACCEPT_EXCLUSIVE || !backend || strcmp(backend, "poll") != 0)
        assert_int_equal(ioloop_listener_mode(l), expected);
    else
        assert_int_equal(ioloop_listener_mode(l), IOLOOP_ACCEPT_DISPATCH); /* no epoll: the fallback */
    assert_int_equal(ioloop_listener_port(l), port);
    for (int i = 0; i < 20; i++)
        assert_true(ask(port) >= 0);
    assert_int_equal(atomic_load(&served[0]) + atomic_load(&served[1]), 20);
    stop_all(rt, l);
    /* The listener worked on a duplicate: the caller's socket is still open
     * and still listening (a successor could take it over). */
    assert_true(fd_open(fd));
    int listening = 0;
    socklen_t len = sizeof(listening);
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len), 0);
    assert_int_equal(listening, 1);
    close(fd);
}

static void test_one_fd_default(void **state)
{
    (void)state;
    check_one_fd(IOLOOP_ACCEPT_DEFAULT, IOLOOP_ACCEPT_EXCLUSIVE);
    check_one_fd(IOLOOP_ACCEPT_REUSEPORT, IOLOOP_ACCEPT_EXCLUSIVE); /* one socket cannot be per loop */
}

static void test_one_fd_dispatch(void **state)
{
    (void)state;
    check_one_fd(IOLOOP_ACCEPT_DISPATCH, IOLOOP_ACCEPT_DISPATCH);
}

/* Several fds: REUSEPORT, fd j on loop j. Two sockets on two different ports
 * show which loop owns which: every connection to port j lands on loop j. */
static void test_several_fds_reuseport(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = start_runtime(2);
    int ports[2];
    int fds[2] = {listening_socket(0, false, &ports[0]), listening_socket(0, false, &ports[1])};
    ioloop_listener_options_t o = {.fds = fds, .nfds = 2, .on_stream = on_stream};
    ioloop_listener_t *l;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), 0);
    assert_int_equal(ioloop_listener_mode(l), IOLOOP_ACCEPT_REUSEPORT);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(ask(ports[0]), 0);
        assert_int_equal(ask(ports[1]), 1);
    }
    stop_all(rt, l);
    close(fds[0]);
    close(fds[1]);

    /* One REUSEPORT group of two sockets (what a supervisor may pass). */
    rt = start_runtime(2);
    int port;
    fds[0] = listening_socket(0, true, &port);
    fds[1] = listening_socket(port, true, NULL);
    assert_int_equal(ioloop_listener_start(rt, &o, &l), 0);
    for (int i = 0; i < 40; i++)
        assert_true(ask(port) >= 0);
    assert_int_equal(atomic_load(&served[0]) + atomic_load(&served[1]), 40);
    stop_all(rt, l);
    close(fds[0]);
    close(fds[1]);
}

static void test_validation(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = start_runtime(1);
    ioloop_listener_t *l = (ioloop_listener_t *)&l;
    ioloop_listener_options_t o = {.on_stream = on_stream, .nfds = 1};

    int p[2];
    assert_int_equal(pipe(p), 0);
    o.fds = &p[0];
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -ENOTSOCK); /* a pipe */
    assert_null(l);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    o.fds = &devnull;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -ENOTSOCK); /* a character device */

    int bound = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* bound, never listen()ed */
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(bound, (struct sockaddr *)&sa, sizeof(sa)), 0);
    o.fds = &bound;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -EINVAL);
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    o.fds = &udp;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -EINVAL);
    int closed = dup(udp);
    close(closed);
    o.fds = &closed;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -EBADF);

    /* One bad fd among good ones fails the whole start, and nothing is taken. */
    int good = listening_socket(0, false, NULL);
    int mixed[2] = {good, p[1]};
    o.fds = mixed;
    o.nfds = 2;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -ENOTSOCK);
    int two[2] = {good, listening_socket(0, false, NULL)};
    o.fds = two;
    o.mode = IOLOOP_ACCEPT_EXCLUSIVE; /* several sockets: only REUSEPORT */
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -EINVAL);
    o.mode = IOLOOP_ACCEPT_DISPATCH;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -EINVAL);
    o.mode = IOLOOP_ACCEPT_DEFAULT;
    o.fds = NULL;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -EINVAL);
    o.nfds = -1;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), -EINVAL);

    /* Refusals never close what they were given. */
    int mine[] = {p[0], p[1], devnull, bound, udp, good, two[1]};
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++) {
        assert_true(fd_open(mine[i]));
        close(mine[i]);
    }
    ioloop_runtime_free(rt);
}

/* ---- ioloop_listen_fds ---------------------------------------------------- */

static void set_env(const char *pid, const char *n, const char *names)
{
    pid ? setenv("LISTEN_PID", pid, 1) : unsetenv("LISTEN_PID");
    n ? setenv("LISTEN_FDS", n, 1) : unsetenv("LISTEN_FDS");
    names ? setenv("LISTEN_FDNAMES", names, 1) : unsetenv("LISTEN_FDNAMES");
}

/* Puts `fd` at fds 3 and 4 (saving whatever was there) for the test's life. */
typedef struct {
    int saved[2];
} fd_slots_t;

static void occupy_3_4(fd_slots_t *slots, int fd)
{
    for (int i = 0; i < 2; i++) {
        slots->saved[i] = fcntl(3 + i, F_DUPFD_CLOEXEC, 100); /* -1 when it was free */
        assert_int_equal(dup2(fd, 3 + i), 3 + i);
    }
}

static void restore_3_4(fd_slots_t *slots)
{
    for (int i = 0; i < 2; i++) {
        if (slots->saved[i] >= 0) {
            dup2(slots->saved[i], 3 + i);
            close(slots->saved[i]);
        } else {
            close(3 + i);
        }
    }
}

static void test_listen_fds_env(void **state)
{
    (void)state;
    int sock = listening_socket(0, false, NULL);
    fd_slots_t slots;
    occupy_3_4(&slots, sock);
    int fds[4] = {-1, -1, -1, -1};
    char me[16], other[16];
    snprintf(me, sizeof(me), "%d", (int)getpid());
    snprintf(other, sizeof(other), "%d", (int)getpid() + 1);

    set_env(NULL, NULL, NULL); /* not activated */
    assert_int_equal(ioloop_listen_fds(fds, 4), 0);
    set_env(other, "2", NULL); /* meant for another process: left alone */
    assert_int_equal(ioloop_listen_fds(fds, 4), 0);
    assert_string_equal(getenv("LISTEN_FDS"), "2");
    set_env(me, "two", NULL);
    assert_int_equal(ioloop_listen_fds(fds, 4), -EINVAL);
    set_env(me, "2x", NULL);
    assert_int_equal(ioloop_listen_fds(fds, 4), -EINVAL);
    set_env("-1", "2", NULL);
    assert_int_equal(ioloop_listen_fds(fds, 4), -EINVAL);
    set_env(me, "2", NULL);
    assert_int_equal(ioloop_listen_fds(fds, 1), -E2BIG); /* no room: nothing taken */
    assert_string_equal(getenv("LISTEN_FDS"), "2");
    set_env(me, "3", NULL); /* fd 5 is not ours to have */
    if (fcntl(5, F_GETFD) < 0)
        assert_int_equal(ioloop_listen_fds(fds, 4), -EBADF);

    fcntl(3, F_SETFD, 0); /* as the manager passes them: inheritable */
    set_env(me, "2", "http:https");
    assert_int_equal(ioloop_listen_fds(fds, 4), 2);
    assert_int_equal(fds[0], 3);
    assert_int_equal(fds[1], 4);
    assert_true(fcntl(3, F_GETFD) & FD_CLOEXEC); /* a child we start will not inherit them */
    assert_null(getenv("LISTEN_PID"));           /* taken: a second call (or a child) finds nothing */
    assert_null(getenv("LISTEN_FDS"));
    assert_null(getenv("LISTEN_FDNAMES"));
    assert_int_equal(ioloop_listen_fds(fds, 4), 0);
    assert_int_equal(ioloop_listen_fds(NULL, 1), -EINVAL);

    /* The fds it found make a listener. */
    ioloop_runtime_t *rt = start_runtime(1);
    int port;
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    getsockname(3, (struct sockaddr *)&sa, &len);
    port = ntohs(sa.sin_port);
    ioloop_listener_options_t o = {.fds = fds, .nfds = 1, .on_stream = on_stream};
    ioloop_listener_t *l;
    assert_int_equal(ioloop_listener_start(rt, &o, &l), 0);
    assert_int_equal(ask(port), 0);
    stop_all(rt, l);
    restore_3_4(&slots);
    close(sock);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_fd_default),        cmocka_unit_test(test_one_fd_dispatch),
        cmocka_unit_test(test_several_fds_reuseport), cmocka_unit_test(test_validation),
        cmocka_unit_test(test_listen_fds_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
