/* test_emfile.c — out of fds: with RLIMIT_NOFILE lowered, a burst of
 * connections does not make the accepting loop spin (CPU time stays low
 * while the backlog cannot be accepted), and accepting resumes by itself once
 * fds are freed; for each accept mode.
 *
 * Threading rule: on_accept and close_held run on loop threads (each loop
 * touches only its own held[] row) and record; the main thread makes the
 * connections, changes RLIMIT_NOFILE and asserts.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/runtime.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum { LOOPS = 2, BURST = 60, HEADROOM = 8, MAX_HELD = BURST };

typedef struct {
    ioloop_runtime_t *rt;
    _Atomic long accepted;
    _Atomic bool release; /* phase 2: close at once */
    /* fds held in phase 1, per loop; each list touched by its loop only */
    int held[LOOPS][MAX_HELD];
    int nheld[LOOPS];
} server_t;

static int index_of(ioloop_runtime_t *rt, ioloop_t *loop)
{
    for (int i = 0; i < ioloop_runtime_size(rt); i++)
        if (ioloop_runtime_loop(rt, i) == loop)
            return i;
    return 0;
}

static void on_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len, void *arg)
{
    (void)peer, (void)peer_len;
    server_t *s = arg;
    atomic_fetch_add(&s->accepted, 1);
    int i = index_of(s->rt, loop);
    if (atomic_load(&s->release) || s->nheld[i] == MAX_HELD) {
        close(fd);
        ioloop_connection_closed(loop);
        return;
    }
    s->held[i][s->nheld[i]++] = fd;
}

static void close_held(ioloop_t *loop, void *arg)
{
    server_t *s = arg;
    int i = index_of(s->rt, loop);
    for (int k = 0; k < s->nheld[i]; k++) {
        close(s->held[i][k]);
        ioloop_connection_closed(loop);
    }
    s->nheld[i] = 0;
}

/* The highest fd number open now (the limit bounds fd numbers, not counts). */
static int highest_fd(void)
{
    int highest = 2;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && atoi(e->d_name) > highest)
            highest = atoi(e->d_name);
    closedir(d);
    return highest;
}

static void check_emfile(ioloop_accept_mode_t mode)
{
    server_t s = {0};
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = LOOPS}, &s.rt), 0);
    ioloop_listener_t *l = NULL;
    ioloop_listener_options_t lo = {.address = "127.0.0.1", .mode = mode, .on_accept = on_accept, .arg = &s};
    assert_int_equal(ioloop_listener_start(s.rt, &lo, &l), 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ioloop_listener_port(l))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);

    /* The clients' sockets exist before the limit drops: only the server
     * runs out. */
    int clients[BURST];
    for (int k = 0; k < BURST; k++) {
        clients[k] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(clients[k] >= 0);
    }
    struct rlimit saved, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    /* Fill the holes below the highest open fd, so the server really has
     * only HEADROOM fds to go. */
    int highest = highest_fd();
    int fillers[4096], nfill = 0;
    for (int fd; nfill < 4096 && (fd = dup(0)) >= 0;) {
        if (fd > highest) {
            close(fd);
            break;
        }
        fillers[nfill++] = fd;
    }
    low.rlim_cur = (rlim_t)highest + 1 + HEADROOM;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);

    for (int k = 0; k < BURST; k++)
        assert_int_equal(connect(clients[k], (struct sockaddr *)&addr, sizeof(addr)), 0);

    /* The backlog cannot be accepted now. A loop that spun on the readable
     * listening socket would burn a whole core; allow well under half. */
    tu_sleep_ms(200);
    int64_t cpu0 = tu_cpu_ns(), wall0 = tu_now_ns();
    tu_sleep_ms(600);
    int64_t cpu = tu_cpu_ns() - cpu0, wall = tu_now_ns() - wall0;
    long accepted_while_short = atomic_load(&s.accepted);
    print_message("mode %d: accepted %ld of %d under the limit, CPU %.0f%% of wall\n", ioloop_listener_mode(l),
                  accepted_while_short, BURST, 100.0 * (double)cpu / (double)wall);
    assert_true(accepted_while_short < BURST); /* the limit was really hit */
    assert_true(cpu < wall * 4 / 10);

    /* Free the fds: the listener must come back by itself. */
    atomic_store(&s.release, true);
    for (int i = 0; i < LOOPS; i++)
        assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(s.rt, i), close_held, &s), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (atomic_load(&s.accepted) < BURST && tu_now_ns() < deadline)
        tu_sleep_ms(5);
    assert_int_equal(atomic_load(&s.accepted), BURST);

    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
    for (int k = 0; k < nfill; k++)
        close(fillers[k]);
    for (int k = 0; k < BURST; k++)
        close(clients[k]);
    ioloop_listener_free(l);
    ioloop_runtime_free(s.rt);
}

static void test_emfile_reuseport(void **state)
{
    (void)state;
    check_emfile(IOLOOP_ACCEPT_REUSEPORT);
}

static void test_emfile_exclusive(void **state)
{
    (void)state;
    check_emfile(IOLOOP_ACCEPT_EXCLUSIVE);
}

static void test_emfile_dispatch(void **state)
{
    (void)state;
    check_emfile(IOLOOP_ACCEPT_DISPATCH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_emfile_reuseport),
        cmocka_unit_test(test_emfile_exclusive),
        cmocka_unit_test(test_emfile_dispatch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
