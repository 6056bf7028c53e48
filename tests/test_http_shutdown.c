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
    ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(200), finish_slow, req);
}

static void rsrv_start(rsrv_t *t, ioloop_accept_mode_t mode, bool on_signals)
{
    memset(t, 0, sizeof(*t));
    atomic_store(&slow_started, 0);
    t->server = ioloop_http_server_new(NULL);
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

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
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
    assert_int_equal(connect_port(t.port), -1);
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

/* ---- under load ---------------------------------------------------------- */

static atomic_int load_stop, load_done, load_cut, load_reset, load_closes, load_exited;

/* Keep-alive requests until the server says Connection: close, then a new
 * connection, until connecting fails (the listener is gone) or load_stop. */
static void *load_client(void *arg)
{
    int port = *(int *)arg;
    while (!atomic_load(&load_stop)) {
        int fd = connect_port(port);
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
        cmocka_unit_test(test_sigterm_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
