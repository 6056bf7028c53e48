/* test_http_routing.c — routes (literal, patterns with path arguments, 404,
 * 405 + Allow), the request as a handler sees it (query arguments, headers
 * case-insensitively, version, remote address, xheaders, absolute-form
 * target) and HEAD. Raw-socket client side.
 */
#include "test_http_util.h"

#include <fcntl.h>

/* White-box (http/router.c): 1 if the pattern route was JIT compiled, 0 if
 * not, -ENOTSUP if this PCRE2 has no JIT. */
int ioloop__http_route_jit(const ioloop_http_server_t *s, const char *pattern);

static void echo_path_arg(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "%d:%s|%s", ioloop_http_request_path_arg_count(req),
                     ioloop_http_request_path_arg(req, 0),
                     ioloop_http_request_path_arg(req, 1) ? ioloop_http_request_path_arg(req, 1) : "-");
    ioloop_http_response_send(req, 200, "text/plain", buf, (size_t)n);
}

/* Every path argument as "len=value" (values cut at 16 bytes), and the host. */
static void echo_all_args(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%d", ioloop_http_request_path_arg_count(req));
    for (int i = 0; i < ioloop_http_request_path_arg_count(req); i++) {
        const char *a = ioloop_http_request_path_arg(req, i);
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, "|%zu=%.16s", strlen(a), a);
    }
    n += snprintf(buf + n, sizeof(buf) - (size_t)n, " host=%s", ioloop_http_request_host(req));
    ioloop_http_response_send(req, 200, "text/plain", buf, (size_t)n);
}

static void echo_info(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    const char *xs[4];
    int nx = ioloop_http_request_arguments(req, "x", xs, 4);
    const char *h = ioloop_http_request_header(req, "x-custom-HEADER");
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "m=%s p=%s q=%s v=%s name=[%s] x=%d last=%s miss=%s h=%s ip=%s proto=%s host=%s",
                     ioloop_http_request_method(req), ioloop_http_request_path(req), ioloop_http_request_query(req),
                     ioloop_http_request_version(req), ioloop_http_request_argument(req, "name", "none"), nx,
                     ioloop_http_request_argument(req, "x", "none"), ioloop_http_request_argument(req, "zz", "dflt"),
                     h ? h : "(null)", ioloop_http_request_remote_ip(req), ioloop_http_request_protocol(req),
                     ioloop_http_request_host(req));
    ioloop_http_response_send(req, 200, "text/plain", buf, (size_t)n);
}

/* Named groups by name and by index. */
static void echo_named(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    const char *user = ioloop_http_request_path_arg_named(req, "user");
    const char *id = ioloop_http_request_path_arg_named(req, "id");
    const char *none = ioloop_http_request_path_arg_named(req, "nope");
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "user=%s id=%s nope=%s n=%d [0]=%s [1]=%s", user ? user : "(null)",
                     id ? id : "(null)", none ? none : "(null)", ioloop_http_request_path_arg_count(req),
                     ioloop_http_request_path_arg(req, 0), ioloop_http_request_path_arg(req, 1));
    ioloop_http_response_send(req, 200, "text/plain", buf, (size_t)n);
}

static void hello(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_write(req, "Hello, world", 12);
    ioloop_http_response_finish(req);
}

static tsrv_t srv;

static int setup(void **state)
{
    (void)state;
    tsrv_init(&srv, NULL);
    tsrv_route(&srv, "/", (ioloop_http_route_t){.get = hello});
    tsrv_route(&srv, "/both", (ioloop_http_route_t){.get = th_ok, .post = th_ok});
    tsrv_route(&srv, "/info", (ioloop_http_route_t){.get = echo_info, .post = echo_info});
    tsrv_route(&srv, "/user/([0-9]+)", (ioloop_http_route_t){.get = echo_path_arg});
    tsrv_route(&srv, "^/file/(.*)/(v[0-9])$", (ioloop_http_route_t){.get = echo_path_arg});
    tsrv_route(&srv, "/n/(([a-z]+)/([0-9]*))", (ioloop_http_route_t){.get = echo_all_args});
    tsrv_route(&srv, "^/d/(\\d+)$", (ioloop_http_route_t){.get = echo_path_arg});
    tsrv_route(&srv, "/u/(?P<user>[^/]+)/posts/(?P<id>\\d+)", (ioloop_http_route_t){.get = echo_named});
    tsrv_route(&srv, "/lazy/(.*?)(/tail)?", (ioloop_http_route_t){.get = echo_all_args});
    tsrv_route(&srv, "/greedy/(.*)(/tail)?", (ioloop_http_route_t){.get = echo_all_args});
    tsrv_route(&srv, "/lazy2/(.*?)/(.*)", (ioloop_http_route_t){.get = echo_path_arg});
    tsrv_route(&srv, "/pre/[a-z]+", (ioloop_http_route_t){.get = th_ok});
    tsrv_route(&srv, "/x/(a|b)", (ioloop_http_route_t){.get = echo_path_arg});
    tsrv_start(&srv);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tsrv_stop(&srv);
    return 0;
}

static void test_literal_200(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "Hello, world");
    assert_true(tresp_has(&r, "Content-Length", "12"));
    char date[64];
    assert_true(tresp_header(&r, "Date", date, sizeof(date)));
    assert_non_null(strstr(date, "GMT"));
    tresp_free(&r);
}

static void test_404(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    tcli_request(srv.port, "GET /user/abc HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    /* a literal is matched exactly, not as a prefix */
    tcli_request(srv.port, "GET /both/x HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
}

static void test_405_allow(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "DELETE /both HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 405);
    assert_true(tresp_has(&r, "Allow", "GET, HEAD, POST"));
    tresp_free(&r);
    tcli_request(srv.port, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &r);
    assert_int_equal(r.status, 405);
    assert_true(tresp_has(&r, "Allow", "GET, HEAD"));
    tresp_free(&r);
    tcli_request(srv.port, "POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
}

static void test_path_args(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET /user/42 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "1:42|-");
    tresp_free(&r);
    tcli_request(srv.port, "GET /file/a%20b/c/v7 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "2:a b/c|v7");
    tresp_free(&r);
    /* anchored at both ends */
    tcli_request(srv.port, "GET /user/42/more HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
}

/* Nested groups overlap: their decoded copies need more room than the path
 * (ASan caught the overflow with a 9 KB path). */
static void test_nested_groups(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET /n/abc/123 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "3|7=abc/123|3=abc|3=123 host=x");
    tresp_free(&r);
    char *raw = malloc(20000);
    assert_non_null(raw);
    const char *prefixes[] = {"GET /n/", "GET http://example.com/n/"};
    for (int k = 0; k < 2; k++) {
        size_t n = (size_t)sprintf(raw, "%s", prefixes[k]);
        memset(raw + n, 'a', 9000);
        n += 9000;
        sprintf(raw + n, "/%s HTTP/1.1\r\nHost: x\r\n\r\n", k ? "123" : "1");
        tcli_request(srv.port, raw, &r);
        assert_int_equal(r.status, 200);
        if (k == 0)
            assert_string_equal(r.body, "3|9002=aaaaaaaaaaaaaaaa|9000=aaaaaaaaaaaaaaaa|1=1 host=x");
        else /* the absolute form's host lives in the same buffer as the arguments */
            assert_string_equal(r.body, "3|9004=aaaaaaaaaaaaaaaa|9000=aaaaaaaaaaaaaaaa|3=123 host=example.com");
        tresp_free(&r);
    }
    free(raw);
}

/* %00 would end a C string early: 400 in a path argument; a query argument
 * holding one is dropped (as if absent). */
static void test_nul_in_arguments(void **state)
{
    (void)state;
    const char *nul_path[] = {"GET /file/a%00b/v1 HTTP/1.1\r\nHost: x\r\n\r\n",
                              "GET /file/%00/v1 HTTP/1.1\r\nHost: x\r\n\r\n"};
    for (int i = 0; i < 2; i++)
        tcli_expect_close(srv.port, nul_path[i], strlen(nul_path[i]), 400);
    tresp_t r;
    tcli_request(srv.port, "GET /file/a%2500b/v1 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200); /* an encoded '%' is not a NUL */
    assert_string_equal(r.body, "2:a%00b|v1");
    tresp_free(&r);
    tcli_request(srv.port, "GET /info?name=evil.php%00.jpg&x=1&x%00=2 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "name=[none] x=1 last=1 "));
    tresp_free(&r);
    tcli_request(srv.port, "GET /user/42 HTTP/1.1\r\nHost: x\r\n\r\n", &r); /* others are still served */
    assert_string_equal(r.body, "1:42|-");
    tresp_free(&r);
}

static void test_query_and_headers(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port,
                 "GET /info?name=a+b%21%2F&x=1&x=2 HTTP/1.1\r\nHost: x\r\nX-CUSTOM-header: Some Value \r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "m=GET p=/info q=name=a+b%21%2F&x=1&x=2 v=HTTP/1.1 name=[a b!/] x=2 last=2 miss=dflt "
                                "h=Some Value ip=127.0.0.1 proto=http host=x");
    tresp_free(&r);
}

static void test_form_body_arguments(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port,
                 "POST /info?x=q HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 "Content-Length: 15\r\n\r\nname=%C3%A9&x=b",
                 &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "name=[\xc3\xa9] x=2 last=b"));
    tresp_free(&r);
}

static void test_absolute_form(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET http://example.com:80/info?name=z HTTP/1.1\r\nHost: other\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "p=/info q=name=z "));
    assert_non_null(strstr(r.body, "host=example.com:80"));
    tresp_free(&r);
    tcli_request(srv.port, "GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "Hello, world");
    tresp_free(&r);
}

static void test_head(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /both HTTP/1.1\r\nHost: x\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
    assert_int_equal(r.status, 200);
    assert_true(tresp_has(&r, "Content-Length", "12"));
    tresp_free(&r);
    /* had the HEAD response carried a body, this would read "Hello, world" */
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok");
    tresp_free(&r);
    close(fd);
}

static void test_xheaders(void **state)
{
    (void)state;
    ioloop_http_server_options_t o = {.xheaders = true};
    tsrv_t x;
    tsrv_init(&x, &o);
    tsrv_route(&x, "/info", (ioloop_http_route_t){.get = echo_info});
    tsrv_start(&x);
    tresp_t r;
    tcli_request(x.port,
                 "GET /info HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1, 203.0.113.9\r\n"
                 "X-Forwarded-Proto: https\r\n\r\n",
                 &r);
    assert_non_null(strstr(r.body, "ip=203.0.113.9 proto=https"));
    tresp_free(&r);
    tcli_request(x.port, "GET /info HTTP/1.1\r\nHost: x\r\nX-Real-IP: 2001:db8::1\r\n\r\n", &r);
    assert_non_null(strstr(r.body, "ip=2001:db8::1 proto=http"));
    tresp_free(&r);
    tcli_request(x.port, "GET /info HTTP/1.1\r\nHost: x\r\nX-Real-IP: not-an-ip\r\n\r\n", &r);
    assert_non_null(strstr(r.body, "ip=127.0.0.1"));
    tresp_free(&r);
    tsrv_stop(&x);
    /* without xheaders the header is not trusted */
    tcli_request(srv.port, "GET /info HTTP/1.1\r\nHost: x\r\nX-Real-IP: 10.9.9.9\r\n\r\n", &r);
    assert_non_null(strstr(r.body, "ip=127.0.0.1"));
    tresp_free(&r);
}

/* A server fed an accepted fd directly (the runtime listener's path). */
static int fed_fd;

static void feed(ioloop_t *loop, void *arg)
{
    ioloop_http_server_accept(loop, fed_fd, NULL, 0, arg);
}

static void test_accept_fed_fd(void **state)
{
    (void)state;
    int sv[2];
    tu_socketpair(sv);
    fed_fd = sv[0];
    /* not handed over by the listener, so live_connections never counted it,
     * yet its close is reported like any other */
    srv.expect_live--;
    assert_int_equal(ioloop_add_callback(srv.loop, feed, srv.server), 0);
    tcli_blocking(sv[1]);
    tcli_send(sv[1], "GET /info?name=u HTTP/1.1\r\nHost: x\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(sv[1], &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "name=[u]"));
    assert_non_null(strstr(r.body, "ip= ")); /* no IP peer */
    tresp_free(&r);
    close(sv[1]);
}

static void test_route_errors(void **state)
{
    (void)state;
    ioloop_http_server_t *s = NULL;
    assert_int_equal(ioloop_http_server_new(NULL, &s), 0);
    ioloop_http_route_t r = {.get = th_ok};
    assert_string_equal(ioloop_http_server_last_error(s), "");
    assert_int_equal(ioloop_http_server_route(s, "/a", &r), 0);
    assert_int_equal(ioloop_http_server_route(s, "/a", &r), -EEXIST);
    assert_int_equal(ioloop_http_server_route(s, "/b/([0-9]+", &r), -EINVAL);
    /* the message quotes the pattern and PCRE2's reason */
    const char *msg = ioloop_http_server_last_error(s);
    assert_non_null(strstr(msg, "\"/b/([0-9]+\""));
    assert_non_null(strstr(msg, "missing closing parenthesis"));
    assert_int_equal(ioloop_http_server_route(s, "/c/(?P<x>a)(?P<x>b)", &r), -EINVAL);
    assert_non_null(strstr(ioloop_http_server_last_error(s), "\"/c/(?P<x>a)(?P<x>b)\""));
    assert_int_equal(ioloop_http_server_route(s, "/d/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)(m)(n)(o)(p)(q)", &r),
                     -EINVAL);
    assert_non_null(strstr(ioloop_http_server_last_error(s), "more than 16"));
    /* the failed routes left nothing behind: a good one still goes in */
    assert_int_equal(ioloop_http_server_route(s, "/e/(\\d+)", &r), 0);
    ioloop_http_server_free(s);
}

/* Python syntax: \d is a digit (POSIX ERE read it as a literal 'd'). */
static void test_pcre_digit(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET /d/42 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "1:42|-");
    tresp_free(&r);
    tcli_request(srv.port, "GET /d/ddd HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
}

static void test_pcre_named_groups(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET /u/ann%20b/posts/7 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "user=ann b id=7 nope=(null) n=2 [0]=ann b [1]=7");
    tresp_free(&r);
    tcli_request(srv.port, "GET /u/ann/posts/x HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    /* a literal route's request has no named arguments */
    tcli_request(srv.port, "GET /info HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
}

/* .*? is lazy: with the optional tail, the lazy group leaves "/tail" to it,
 * the greedy one takes it all. */
static void test_pcre_lazy(void **state)
{
    (void)state;
    tresp_t r;
    tcli_request(srv.port, "GET /lazy/a/b/tail HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "2|3=a/b|5=/tail host=x");
    tresp_free(&r);
    tcli_request(srv.port, "GET /greedy/a/b/tail HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "2|8=a/b/tail|0= host=x"); /* the unmatched group reads as "" */
    tresp_free(&r);
    tcli_request(srv.port, "GET /lazy2/a/b/c HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "2:a|b/c");
    tresp_free(&r);
}

/* Tornado's anchors: the start always (re.match), the end by the appended
 * '$' (or the pattern's own). */
static void test_pcre_anchors(void **state)
{
    (void)state;
    const struct {
        const char *target;
        int status;
    } cases[] = {
        {"/pre/abc", 200}, {"/pre/abc/", 404}, {"/pre/abc1", 404}, {"/x/pre/abc", 404},
        {"/d/42/", 404},   {"/d/42x", 404},    {"/x/d/42", 404},   {"/x/a", 200},
        {"/x/ab", 404},    {"/x/b", 200},      {"/PRE/abc", 404},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char raw[256];
        snprintf(raw, sizeof(raw), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", cases[i].target);
        tresp_t r;
        tcli_request(srv.port, raw, &r);
        if (r.status != cases[i].status)
            fail_msg("%s: %d, expected %d", cases[i].target, r.status, cases[i].status);
        tresp_free(&r);
    }
}

/* The routes are JIT compiled (where PCRE2 has a JIT for this CPU). */
static void test_pcre_jit(void **state)
{
    (void)state;
    if (ioloop__http_route_jit(srv.server, "^/d/(\\d+)$") == -ENOTSUP)
        skip();
    assert_int_equal(ioloop__http_route_jit(srv.server, "^/d/(\\d+)$"), 1);
    assert_int_equal(ioloop__http_route_jit(srv.server, "/u/(?P<user>[^/]+)/posts/(?P<id>\\d+)"), 1);
    assert_int_equal(ioloop__http_route_jit(srv.server, "/both"), 0); /* a literal: hashed, never compiled */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_200),       cmocka_unit_test(test_404),
        cmocka_unit_test(test_405_allow),         cmocka_unit_test(test_path_args),
        cmocka_unit_test(test_query_and_headers), cmocka_unit_test(test_form_body_arguments),
        cmocka_unit_test(test_absolute_form),     cmocka_unit_test(test_head),
        cmocka_unit_test(test_xheaders),          cmocka_unit_test(test_route_errors),
        cmocka_unit_test(test_accept_fed_fd),     cmocka_unit_test(test_nested_groups),
        cmocka_unit_test(test_nul_in_arguments),  cmocka_unit_test(test_pcre_digit),
        cmocka_unit_test(test_pcre_named_groups), cmocka_unit_test(test_pcre_lazy),
        cmocka_unit_test(test_pcre_anchors),      cmocka_unit_test(test_pcre_jit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
