/* test_http_limits.c — limits and timeouts against a raw client: 431 for a
 * head over max_header_size, 413 for a body over max_body_size before the
 * body is read, and the idle, header and body timeouts closing slow clients.
 */
#include "test_http_util.h"

static void echo(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    size_t n;
    const char *b = ioloop_http_request_body(req, &n);
    ioloop_http_response_send(req, 200, "text/plain", b, n);
}

static void start(tsrv_t *t, const ioloop_http_server_options_t *o)
{
    tsrv_init(t, o);
    tsrv_route(t, "/", (ioloop_http_route_t){.get = th_ok, .post = echo});
    tsrv_start(t);
}

static char *big_header_request(size_t value_len)
{
    char *s = malloc(value_len + 128);
    int n = sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
    memset(s + n, 'v', value_len);
    strcpy(s + n + value_len, "\r\n\r\n");
    return s;
}

static void test_431_over_max_header_size(void **state)
{
    (void)state;
    ioloop_http_server_options_t o = {.max_header_size = 4096};
    tsrv_t t;
    start(&t, &o);
    char *ok = big_header_request(3000);
    tresp_t r;
    tcli_request(t.port, ok, &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    char *bad = big_header_request(8000);
    tcli_expect_close(t.port, bad, strlen(bad), 431);
    free(ok);
    free(bad);
    tsrv_stop(&t);

    /* the default is 64 KiB */
    start(&t, NULL);
    ok = big_header_request(60000);
    tcli_request(t.port, ok, &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    bad = big_header_request(70000);
    tcli_expect_close(t.port, bad, strlen(bad), 431);
    free(ok);
    free(bad);
    tsrv_stop(&t);
}

static void test_431_too_many_headers(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    size_t cap = 64 * 1024;
    char *s = malloc(cap);
    size_t n = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 400; i++)
        n += (size_t)sprintf(s + n, "X-%d: 1\r\n", i);
    strcpy(s + n, "\r\n");
    tcli_expect_close(t.port, s, strlen(s), 431);
    free(s);
    tsrv_stop(&t);
}

static void test_413_before_body(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    /* 200 MiB announced, nothing sent: the answer comes without the body */
    const char *req = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 209715200\r\n\r\n";
    tcli_expect_close(t.port, req, strlen(req), 413);
    /* with Expect: 100-continue there is no 100 first */
    int fd = tcli_connect(t.port);
    tcli_send(fd, "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 209715200\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, false, true), 0);
    assert_int_equal(r.status, 413);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);

    ioloop_http_server_options_t o = {.max_body_size = 1000};
    start(&t, &o);
    char body[1001];
    memset(body, 'b', sizeof(body));
    char *cl = malloc(2000);
    int n = sprintf(cl, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n");
    memcpy(cl + n, body, 1000);
    cl[n + 1000] = '\0';
    tcli_request(t.port, cl, &r); /* exactly the limit: fine */
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 1000);
    tresp_free(&r);
    free(cl);
    /* chunked: the limit is counted as the chunks arrive */
    fd = tcli_connect(t.port);
    tcli_send(fd, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n");
    tcli_sendn(fd, body, 1000);
    tcli_send(fd, "\r\n1\r\nx\r\n0\r\n\r\n");
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 413);
    assert_true(tresp_has(&r, "Connection", "close"));
    tresp_free(&r);
    assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
    close(fd);
    tsrv_stop(&t);
}

/* A client that keeps sending after its 413: the server's FIN comes first and
 * what follows is read and dropped, so the client sees the whole 413 and a
 * clean end, never a reset (a plain close() with unread bytes sends RST). */
static void test_413_no_reset_while_client_sends(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 209715200\r\n\r\n");
    static char junk[256 * 1024]; /* sent at once: unread when the 413 goes out */
    size_t sent = 0;
    while (sent < sizeof(junk)) {
        ssize_t n = send(fd, junk + sent, sizeof(junk) - sent, MSG_NOSIGNAL);
        assert_true(n > 0);
        sent += (size_t)n;
    }
    tu_sleep_ms(100);
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 413);
    tresp_free(&r);
    assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
    close(fd);
    tsrv_stop(&t);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    ioloop_http_server_options_t o = {.idle_connection_timeout = IOLOOP_MSEC(200)};
    tsrv_t t;
    start(&t, &o);
    int64_t t0 = tu_now_ns();
    int fd = tcli_connect(t.port);
    assert_int_not_equal(tcli_closed(fd, 5000, NULL), 0);
    int64_t ms = (tu_now_ns() - t0) / 1000000;
    assert_true(ms >= 150);
    close(fd);
    /* after a request, too */
    fd = tcli_connect(t.port);
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    tresp_free(&r);
    assert_int_equal(tcli_closed(fd, 100, NULL), 0);
    assert_int_not_equal(tcli_closed(fd, 5000, NULL), 0);
    close(fd);
    tsrv_stop(&t);
}

static void test_header_timeout(void **state)
{
    (void)state;
    ioloop_http_server_options_t o = {.header_timeout = IOLOOP_MSEC(300)};
    tsrv_t t;
    start(&t, &o);
    int fd = tcli_connect(t.port);
    int64_t t0 = tu_now_ns();
    tcli_send(fd, "GET / HTTP/1.1\r\nHo");
    tu_sleep_ms(100);
    tcli_send(fd, "st: a\r\n"); /* trickling does not extend the deadline */
    assert_int_not_equal(tcli_closed(fd, 5000, NULL), 0);
    int64_t ms = (tu_now_ns() - t0) / 1000000;
    assert_true(ms >= 250 && ms < 4000);
    close(fd);
    /* a complete head in time is served */
    tresp_t r;
    tcli_request(t.port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    tsrv_stop(&t);
}

static void test_body_timeout(void **state)
{
    (void)state;
    ioloop_http_server_options_t o = {.body_timeout = IOLOOP_MSEC(300)};
    tsrv_t t;
    start(&t, &o);
    int fd = tcli_connect(t.port);
    int64_t t0 = tu_now_ns();
    tcli_send(fd, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    assert_int_not_equal(tcli_closed(fd, 5000, NULL), 0);
    int64_t ms = (tu_now_ns() - t0) / 1000000;
    assert_true(ms >= 250 && ms < 4000);
    close(fd);
    tsrv_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_431_over_max_header_size),
        cmocka_unit_test(test_431_too_many_headers),
        cmocka_unit_test(test_413_before_body),
        cmocka_unit_test(test_413_no_reset_while_client_sends),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_header_timeout),
        cmocka_unit_test(test_body_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
