/* test_http_strict.c — strict parsing: every request a server MUST reject
 * (RFC 9110/9112, request smuggling defences included) gets its 4xx (400
 * unless said otherwise), Connection: close, and a clean close — and a valid
 * request on the same shape still passes, so each check is shown to bite.
 */
#include "test_http_util.h"

static tsrv_t srv;

static void echo_body(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    size_t n;
    const char *b = ioloop_http_request_body(req, &n);
    ioloop_http_response_send(req, 200, "text/plain", b, n);
}

static int setup(void **state)
{
    (void)state;
    tsrv_init(&srv, NULL);
    tsrv_route(&srv, "/", (ioloop_http_route_t){.get = th_ok, .post = echo_body, .options = th_ok});
    tsrv_start(&srv);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tsrv_stop(&srv);
    return 0;
}

#define REJECT(raw, status) tcli_expect_close(srv.port, raw, sizeof(raw) - 1, status)

static void expect_ok(const char *raw, const char *body)
{
    tresp_t r;
    tcli_request(srv.port, raw, &r);
    assert_int_equal(r.status, 200);
    if (body)
        assert_string_equal(r.body, body);
    tresp_free(&r);
}

static void test_cl_and_te(void **state)
{
    (void)state;
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "abc");
}

static void test_duplicate_content_length(void **state)
{
    (void)state;
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd", 400);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", "abc");
}

static void test_te_not_chunked_last(void **state)
{
    (void)state;
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400);
    /* chunked last but another coding we do not implement: 501 */
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501);
    /* TE in HTTP/1.0 is faulty framing */
    REJECT("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
}

static void test_bad_chunked(void **state)
{
    (void)state;
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400);
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400);
}

static void test_invalid_header_name(void **state)
{
    (void)state;
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX(y): x\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a\r\n: novalue\r\n\r\n", 400);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nX-Ok_Name.1~: x\r\n\r\n", "ok");
}

static void test_invalid_header_value(void **state)
{
    (void)state;
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fz\r\n\r\n", 400);
    const char nul[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0z\r\n\r\n";
    tcli_expect_close(srv.port, nul, sizeof(nul) - 1, 400);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xc3\xa9\r\n\r\n", "ok"); /* HTAB, SP, obs-text */
}

static void test_bare_cr_and_lf(void **state)
{
    (void)state;
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\nHost: a\n\n", 400);
}

static void test_obs_fold(void **state)
{
    (void)state;
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400);
}

static void test_host(void **state)
{
    (void)state;
    REJECT("GET / HTTP/1.1\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400);
    REJECT("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    /* HTTP/1.0 may omit Host; an empty Host is allowed */
    expect_ok("GET / HTTP/1.0\r\n\r\n", "ok");
    expect_ok("GET / HTTP/1.1\r\nHost:\r\n\r\n", "ok");
    expect_ok("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "ok");
}

static void test_request_line(void **state)
{
    (void)state;
    REJECT("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
    REJECT("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT("GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT("GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400); /* TLS to a plain port */
    /* asterisk-form is valid for OPTIONS: routed on "*", unrouted here → 404, not 400 */
    tresp_t r;
    tcli_request(srv.port, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
}

static void test_expect_unknown(void **state)
{
    (void)state;
    REJECT("POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\nContent-Length: 1\r\n\r\nx", 417);
}

static void test_version(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET / HTTP/2.0\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_true(r.status == 505 || r.status == 400);
    assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
    tresp_free(&r);
    close(fd);
}

/* A rejected request on a keep-alive connection: the valid request before it
 * is answered, nothing after the bad one is. */
static void test_smuggled_second_request(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                  "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 400);
    tresp_free(&r);
    size_t extra = 99;
    assert_int_equal(tcli_closed(fd, 3000, &extra), 1);
    assert_int_equal(extra, 0);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cl_and_te),
        cmocka_unit_test(test_duplicate_content_length),
        cmocka_unit_test(test_te_not_chunked_last),
        cmocka_unit_test(test_bad_chunked),
        cmocka_unit_test(test_invalid_header_name),
        cmocka_unit_test(test_invalid_header_value),
        cmocka_unit_test(test_bare_cr_and_lf),
        cmocka_unit_test(test_obs_fold),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_request_line),
        cmocka_unit_test(test_expect_unknown),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_smuggled_second_request),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
