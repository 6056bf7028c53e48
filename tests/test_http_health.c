/* test_http_health.c — the health-check route and the drain delay, seen
 * from raw clients on a one-loop runtime: /healthz says 200 "ok" (GET and
 * HEAD, never cached); once ioloop_http_server_shutdown is called with a
 * drain_delay it says 503 "draining" while the listener still accepts and
 * other routes still answer; after the delay the listener closes and the
 * runtime stops by itself, hostile clients (stalled mid-head, pipelining
 * without reading) notwithstanding. Bad arguments are refused.
 */
#include "test_http_util.h"

static void start(tsrv_t *t, ioloop_time_t drain_delay)
{
    ioloop_http_server_options_t o = {.drain_delay = drain_delay};
    tsrv_init(t, &o);
    tsrv_route(t, "/", (ioloop_http_route_t){.get = th_ok});
    assert_int_equal(ioloop_http_server_health_route(t->server, "/healthz"), 0);
    tsrv_start(t);
}

static void get(int port, const char *raw, int status, const char *body)
{
    tresp_t r;
    tcli_request(port, raw, &r);
    assert_int_equal(r.status, status);
    assert_string_equal(r.body, body);
    assert_true(tresp_has(&r, "Cache-Control", "no-store"));
    tresp_free(&r);
}

static bool refused(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool no = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0;
    close(fd);
    return no;
}

static void test_health_ok(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, 0);
    assert_false(ioloop_http_server_draining(t.server));
    get(t.port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200, "ok");
    tresp_t r;
    int fd = tcli_connect(t.port);
    tcli_send(fd, "HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

/* The runtime stops by itself at the end of the shutdown: join, then free. */
static void finish(tsrv_t *t)
{
    assert_int_equal(ioloop_runtime_join(t->rt), 0);
    ioloop_listener_free(t->listener);
    ioloop_http_server_free(t->server);
    ioloop_runtime_free(t->rt);
}

static void test_drain_delay_says_503_while_serving(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, IOLOOP_MSEC(1500));
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, IOLOOP_SEC(5)), 0);
    assert_true(ioloop_http_server_draining(t.server));
    /* within the delay: new connections are still accepted and served */
    get(t.port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 503, "draining");
    tresp_t r;
    tcli_request(t.port, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    /* a second shutdown is refused as before */
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, 0), -EALREADY);
    if ((tu_now_ns() - t0) / 1000000 < 1000) /* the listener is open while the delay runs */
        assert_false(refused(t.port));
    /* after it: the listener is closed and the runtime stops by itself */
    finish(&t);
    assert_true((tu_now_ns() - t0) / 1000000 >= 1400);
    assert_true(refused(t.port));
}

/* Without a delay, shutdown stops the listener at once (as before). */
static void test_no_delay_stops_at_once(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, 0);
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, IOLOOP_SEC(5)), 0);
    finish(&t);
    assert_true((tu_now_ns() - t0) / 1000000 < 1000);
    assert_true(refused(t.port));
}

/* Hostile peers during the delay: one stalls mid-head, one pipelines
 * /healthz without ever reading. A normal client is still answered (503 on
 * /healthz, 200 on /), and the shutdown ends within delay + drain timeout
 * (generous bound): the delay adds to the drain, it does not suspend it. */
static void test_drain_delay_with_hostile_clients(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, IOLOOP_MSEC(300));
    int stalled = tcli_connect(t.port);
    tcli_send(stalled, "GET /healthz HTTP/1.1\r\nHo");
    int hog = tcli_connect(t.port);
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    setsockopt(hog, SOL_SOCKET, SO_SNDBUF, &(int){16384}, sizeof(int));
    for (int i = 0; i < 2000; i++) /* until its send buffer fills: never read */
        if (send(hog, req, sizeof(req) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            break;
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, IOLOOP_MSEC(700)), 0);
    get(t.port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 503, "draining");
    tresp_t r;
    tcli_request(t.port, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    finish(&t);
    int64_t took_ms = (tu_now_ns() - t0) / 1000000;
    assert_true(took_ms >= 250);  /* the delay was kept */
    assert_true(took_ms < 10000); /* 300 ms + 700 ms, with room for a loaded machine */
    assert_int_not_equal(tcli_closed(stalled, 5000, NULL), 0);
    close(stalled);
    close(hog);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    ioloop_http_server_t *s;
    assert_int_equal(ioloop_http_server_new(NULL, &s), 0);
    assert_int_equal(ioloop_http_server_health_route(s, "healthz"), -EINVAL);
    assert_int_equal(ioloop_http_server_health_route(NULL, "/healthz"), -EINVAL);
    assert_int_equal(ioloop_http_server_health_route(s, NULL), -EINVAL);
    assert_int_equal(ioloop_http_server_health_route(s, "/healthz"), 0);
    assert_int_equal(ioloop_http_server_health_route(s, "/healthz"), -EEXIST);
    ioloop_http_server_free(s);
    assert_int_equal(ioloop_http_server_new(&(ioloop_http_server_options_t){.drain_delay = -1}, &s), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_ok),
        cmocka_unit_test(test_drain_delay_says_503_while_serving),
        cmocka_unit_test(test_no_delay_stops_at_once),
        cmocka_unit_test(test_drain_delay_with_hostile_clients),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
