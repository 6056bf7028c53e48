/* test_http_shutdown.c — the runtime-wide graceful shutdown on SIGTERM, seen
 * from raw clients, on a 2-loop runtime: a request in flight is answered in
 * full with Connection: close, idle keep-alive connections get a clean EOF
 * (never a reset), the runtime joins by itself and every loop's
 * live_connections is back to 0; under a load of keep-alive clients, no
 * response that started is cut and no connection is reset. Also the same
 * shutdown through the API call, and its refusal to start twice.
 *
 * Signals: ioloop_http_server_shutdown_on_signals blocks SIGTERM/SIGINT in
 * this (the main) thread before any client thread is created, so the client
 * threads inherit the mask and the runtime's signalfd on loop 0 is the only
 * reader of the kill(getpid(), SIGTERM).
 */
#include "test_http_util.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/un.h>

typedef struct {
    ioloop_runtime_t *rt;
    ioloop_http_server_t *server;
    ioloop_listener_t *listener;
    int port;
} rsrv_t;

static atomic_int slow_started;

static void finish_slow(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_response_send(arg, 200, "text/plain", "slow", 4);
}

/* Finishes 200 ms later, from a timer. */
static void slow(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    atomic_store(&slow_started, 1);
    ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(200), finish_slow, req, NULL);
}

static void rsrv_start(rsrv_t *t, ioloop_accept_mode_t mode, bool on_signals)
{
    memset(t, 0, sizeof(*t));
    atomic_store(&slow_started, 0);
    assert_int_equal(ioloop_http_server_new(NULL, &t->server), 0);
    assert_non_null(t->server);
    ioloop_http_route_t ok = {.get = th_ok}, sl = {.get = slow};
    assert_int_equal(ioloop_http_server_route(t->server, "/", &ok), 0);
    assert_int_equal(ioloop_http_server_route(t->server, "/slow", &sl), 0);
    ioloop_runtime_options_t ro = {.loops = 2, .executor_threads = 2};
    assert_int_equal(ioloop_runtime_start(&ro, &t->rt), 0);
    assert_int_equal(ioloop_http_server_serve(t->server, t->rt, "127.0.0.1", 0, mode, &t->listener), 0);
    t->port = ioloop_listener_port(t->listener);
    if (on_signals)
        assert_int_equal(ioloop_http_server_shutdown_on_signals(t->server, t->rt, t->listener, IOLOOP_SEC(10)), 0);
}

/* After the runtime stopped by itself: nothing left open on any loop. */
static void rsrv_finish(rsrv_t *t)
{
    assert_int_equal(ioloop_runtime_join(t->rt), 0);
    for (int i = 0; i < ioloop_runtime_size(t->rt); i++) {
        ioloop_t *loop = ioloop_runtime_loop(t->rt, i);
        ioloop_stats_t st;
        ioloop_get_stats(loop, &st);
        assert_int_equal(st.live_connections, 0);
        assert_int_equal(ioloop_http_server_connections(t->server, loop), 0);
    }
    ioloop_listener_free(t->listener);
    ioloop_http_server_free(t->server);
    ioloop_runtime_free(t->rt);
}

static bool wait_flag(atomic_int *f, int ms)
{
    for (int i = 0; i < ms / 5 && !atomic_load(f); i++)
        tu_sleep_ms(5);
    return atomic_load(f) != 0;
}

enum { IDLE = 6 };

static void check_in_flight_and_idle(ioloop_accept_mode_t mode, bool by_signal)
{
    rsrv_t t;
    rsrv_start(&t, mode, by_signal);
    /* idle keep-alive connections (spread over both loops), each used once */
    int idle[IDLE];
    tresp_t r;
    for (int i = 0; i < IDLE; i++) {
        idle[i] = tcli_connect(t.port);
        tcli_send(idle[i], "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_int_equal(tcli_response(idle[i], &r), 0);
        assert_false(tresp_has(&r, "Connection", "close"));
        tresp_free(&r);
    }
    int busy = tcli_connect(t.port);
    tcli_send(busy, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(wait_flag(&slow_started, 5000));

    if (by_signal)
        assert_int_equal(kill(getpid(), SIGTERM), 0);
    else
        assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, IOLOOP_SEC(10)), 0);

    /* idle connections: a clean EOF, no bytes, no reset */
    for (int i = 0; i < IDLE; i++) {
        size_t extra = 99;
        assert_int_equal(tcli_closed(idle[i], 5000, &extra), 1);
        assert_int_equal(extra, 0);
    }
    /* the request in flight: answered in full, with Connection: close, then EOF */
    assert_int_equal(tcli_response(busy, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow");
    assert_true(tresp_has(&r, "Connection", "close"));
    tresp_free(&r);
    assert_int_equal(tcli_closed(busy, 5000, NULL), 1);
    close(busy);
    for (int i = 0; i < IDLE; i++)
        close(idle[i]);
    /* nobody is accepted any more */
    assert_int_equal(tcli_try_connect(t.port), -1);
    rsrv_finish(&t);
}

static void test_sigterm_answers_in_flight_closes_idle(void **state)
{
    (void)state;
    check_in_flight_and_idle(IOLOOP_ACCEPT_DEFAULT, true);
}

static void test_sigterm_dispatch_mode(void **state)
{
    (void)state;
    check_in_flight_and_idle(IOLOOP_ACCEPT_DISPATCH, true);
}

static void test_shutdown_call(void **state)
{
    (void)state;
    check_in_flight_and_idle(IOLOOP_ACCEPT_REUSEPORT, false);
}

static void test_shutdown_twice_refused(void **state)
{
    (void)state;
    rsrv_t t;
    rsrv_start(&t, IOLOOP_ACCEPT_DEFAULT, false);
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, 0), 0);
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, 0), -EALREADY);
    rsrv_finish(&t); /* nothing open: the runtime stops by itself */
}

/* ---- DISPATCH: the drain is ordered behind the hand-offs ------------------- */

/* Review F7: on the loop that passes the fence last and posts the drain to
 * itself, the drain must not run before connections handed to that loop just
 * before (the backlog the listener's stop accepted). 2 loops, DISPATCH on a
 * unix socket, 8 requests queued in the backlog; loop 1 takes its fence
 * together with a 300 ms callback, so loop 0's stop hands loop 1 its share
 * while loop 1 is busy, and loop 1's fence is the last. Every request is
 * answered, with Connection: close. */
static void finish_slower(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_response_send(arg, 200, "text/plain", "slower", 6);
}

static void slower(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(400), finish_slower, req, NULL);
}

static atomic_int held, hold_loop_0, hold_loop_1, sleeping;

static void hold_loop(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_fetch_add(&held, 1);
    while (atomic_load((atomic_int *)arg))
        tu_sleep_ms(1);
}

static void sleep_300ms(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    atomic_store(&sleeping, 1);
    tu_sleep_ms(300);
}

static int connect_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

typedef struct {
    int fd;
    bool answered, told_to_close;
} queued_client_t;

static void *read_answer(void *arg)
{
    queued_client_t *c = arg;
    tresp_t r;
    if (tcli_response(c->fd, &r) == 0) {
        c->answered = r.status == 200 && strcmp(r.body, "slower") == 0;
        c->told_to_close = tresp_has(&r, "Connection", "close");
        tresp_free(&r);
    }
    close(c->fd);
    return NULL;
}

static void test_dispatch_drain_after_handoffs(void **state)
{
    (void)state;
    enum { QUEUED_REQUESTS = 8 };
    char path[64], address[80];
    snprintf(path, sizeof(path), "/tmp/ioloop-test-drain-%d.sock", (int)getpid());
    snprintf(address, sizeof(address), "unix:%s", path);
    rsrv_t t = {0};
    assert_int_equal(ioloop_http_server_new(NULL, &t.server), 0);
    ioloop_http_route_t sl = {.get = slower};
    assert_int_equal(ioloop_http_server_route(t.server, "/slower", &sl), 0);
    ioloop_runtime_options_t ro = {.loops = 2, .executor_threads = 1};
    assert_int_equal(ioloop_runtime_start(&ro, &t.rt), 0);
    assert_int_equal(ioloop_http_server_serve(t.server, t.rt, address, 0, IOLOOP_ACCEPT_DISPATCH, &t.listener), 0);
    assert_int_equal(ioloop_listener_mode(t.listener), IOLOOP_ACCEPT_DISPATCH);

    /* Both loops held: the requests wait in the backlog, and loop 1 takes
     * the 300 ms callback and its fence in one batch. */
    atomic_store(&held, 0);
    atomic_store(&sleeping, 0);
    atomic_store(&hold_loop_0, 1);
    atomic_store(&hold_loop_1, 1);
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(t.rt, 0), hold_loop, &hold_loop_0), 0);
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(t.rt, 1), hold_loop, &hold_loop_1), 0);
    for (int k = 0; k < 5000 && atomic_load(&held) < 2; k++)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&held), 2);
    int fds[QUEUED_REQUESTS];
    for (int k = 0; k < QUEUED_REQUESTS; k++) {
        fds[k] = connect_unix(path);
        assert_true(fds[k] >= 0);
        tcli_send(fds[k], "GET /slower HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(t.rt, 1), sleep_300ms, NULL), 0);
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, IOLOOP_SEC(10)), 0);
    /* Loop 1 first, into its batch of the 300 ms callback and the fence;
     * then loop 0, whose stop hands loop 1 its share meanwhile. */
    atomic_store(&hold_loop_1, 0);
    for (int k = 0; k < 5000 && !atomic_load(&sleeping); k++)
        tu_sleep_ms(1);
    assert_true(atomic_load(&sleeping));
    atomic_store(&hold_loop_0, 0);

    /* One reader per connection, each closing once answered: no connection
     * waits for the client to read another first. */
    queued_client_t clients[QUEUED_REQUESTS];
    pthread_t readers[QUEUED_REQUESTS];
    for (int k = 0; k < QUEUED_REQUESTS; k++) {
        clients[k] = (queued_client_t){.fd = fds[k]};
        assert_int_equal(pthread_create(&readers[k], NULL, read_answer, &clients[k]), 0);
    }
    int answered = 0, told_to_close = 0;
    for (int k = 0; k < QUEUED_REQUESTS; k++) {
        pthread_join(readers[k], NULL);
        answered += clients[k].answered;
        told_to_close += clients[k].told_to_close;
    }
    assert_int_equal(answered, QUEUED_REQUESTS);
    assert_int_equal(told_to_close, QUEUED_REQUESTS);
    rsrv_finish(&t);
    struct stat st;
    assert_int_equal(stat(path, &st), -1);
}

/* ---- under load ---------------------------------------------------------- */

static atomic_int load_stop, load_done, load_cut, load_reset, load_closes, load_exited;

/* Keep-alive requests until the server says Connection: close, then a new
 * connection, until connecting fails (the listener is gone) or load_stop. */
static void *load_client(void *arg)
{
    int port = *(int *)arg;
    while (!atomic_load(&load_stop)) {
        int fd = tcli_try_connect(port);
        if (fd < 0)
            break;
        for (;;) {
            if (send(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27, MSG_NOSIGNAL) != 27) {
                if (errno == ECONNRESET)
                    atomic_fetch_add(&load_reset, 1);
                break;
            }
            tresp_t r;
            if (tcli_response(fd, &r) != 0) {
                if (tcli_errno == ECONNRESET)
                    atomic_fetch_add(&load_reset, 1);
                else if (tcli_got > 0)
                    atomic_fetch_add(&load_cut, 1);
                break;
            }
            bool close_now = tresp_has(&r, "Connection", "close");
            if (r.status == 200 && strcmp(r.body, "ok") == 0)
                atomic_fetch_add(&load_done, 1);
            else
                atomic_fetch_add(&load_cut, 1);
            tresp_free(&r);
            if (close_now) {
                atomic_fetch_add(&load_closes, 1);
                /* the server closes after it: a clean EOF, never a reset */
                if (tcli_closed(fd, 5000, NULL) == -1)
                    atomic_fetch_add(&load_reset, 1);
                break;
            }
        }
        close(fd);
    }
    atomic_fetch_add(&load_exited, 1);
    return NULL;
}

static void test_sigterm_under_load(void **state)
{
    (void)state;
    rsrv_t t;
    rsrv_start(&t, IOLOOP_ACCEPT_DEFAULT, true); /* blocks SIGTERM here, before the clients start */
    atomic_store(&load_stop, 0);
    atomic_store(&load_done, 0);
    atomic_store(&load_cut, 0);
    atomic_store(&load_reset, 0);
    atomic_store(&load_closes, 0);
    atomic_store(&load_exited, 0);
    enum { CLIENTS = 6 };
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, load_client, &t.port), 0);
    tu_sleep_ms(300);
    int before = atomic_load(&load_done);
    assert_int_equal(kill(getpid(), SIGTERM), 0);
    /* the clients end by themselves once connecting is refused; bounded anyway */
    int64_t end = tu_now_ns() + 15 * 1000000000LL;
    while (tu_now_ns() < end && atomic_load(&load_exited) < CLIENTS)
        tu_sleep_ms(10);
    atomic_store(&load_stop, 1);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(th[i], NULL);
    fprintf(stderr, "load: %d responses before SIGTERM, %d in all, %d told to close\n", before, atomic_load(&load_done),
            atomic_load(&load_closes));
    assert_true(before > 0);
    assert_int_equal(atomic_load(&load_exited), CLIENTS); /* refused once the listener closed */
    assert_true(atomic_load(&load_closes) > 0);           /* told Connection: close */
    assert_int_equal(atomic_load(&load_cut), 0);
    assert_int_equal(atomic_load(&load_reset), 0);
    rsrv_finish(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm_answers_in_flight_closes_idle),
        cmocka_unit_test(test_sigterm_dispatch_mode),
        cmocka_unit_test(test_shutdown_call),
        cmocka_unit_test(test_shutdown_twice_refused),
        cmocka_unit_test(test_dispatch_drain_after_handoffs),
        cmocka_unit_test(test_sigterm_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
