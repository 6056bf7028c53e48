/* test_http_client_hostile.c — ioloop_http_fetch against a small hostile
 * server (raw sockets on a thread, one scripted behaviour per test):
 * malformed status lines, bad chunk sizes, header floods, an endless head, a
 * body over max_body_size (announced and chunked), a close and a reset
 * mid-body, a byte every 100 ms and a silent server (request_timeout), a
 * connect that never completes (connect_timeout), corrupt gzip, bytes after a
 * response (not reused), a close-delimited body after 1xx heads, the reuse
 * race (an idempotent request retried once, a POST not), a FIN that arrived
 * since the last poll (seen before reuse), a server that never reads a
 * streamed body (the producer held back: memory bounded), an IPv6 literal.
 * Threading rule: the client loop runs on the test's thread; the hostile
 * server on its own (hsrv in test_http_client_util.h).
 */
#include "test_http_client_util.h"

static ioloop_t *loop;
static hsrv_t srv;
static char base[64];

static int setup(void **state)
{
    (void)state;
    assert_int_equal(ioloop_new(NULL, &loop), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(ioloop_close(loop, false), 0); /* first: pooled connections end, the server's reads return */
    hsrv_stop(&srv);
    return 0;
}

static void serve(hsrv_fn fn)
{
    hsrv_start(&srv, fn, NULL);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d/", srv.port);
}

static void ok_response(int fd)
{
    hsends(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
}

/* The scripted behaviour runs for connections with index >= 1 as plain "ok"
 * answers, so a suite can check that the loop goes on serving. */
static void expect_error(const ioloop_http_client_request_t *req, int err, const char *words)
{
    tres_t r;
    cfetch(loop, req, &r);
    if (r.error != err || (words && !strstr(r.text, words)))
        fail_msg("got %d \"%s\", want %d \"%s\"", r.error, r.text, err, words ? words : "");
    tres_free(&r);
}

static void expect_get_error(int err, const char *words)
{
    expect_error(&(ioloop_http_client_request_t){.url = base}, err, words);
}

/* ---- behaviours -------------------------------------------------------------------- */

static const char *canned; /* what b_canned sends, then closes */

static void b_canned(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    hsends(fd, canned);
}

static void test_malformed_status_lines(void **state)
{
    (void)state;
    serve(b_canned);
    const char *bad[] = {"HTTP/1.1 2xx OK\r\n\r\n", "HTTP/1.1\r\n\r\n", "ICY 200 OK\r\n\r\n",
                         "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "\x01\x02\x03garbage\r\n\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        canned = bad[i];
        expect_get_error(-EPROTO, "malformed response");
    }
}

static void test_bad_chunk_sizes(void **state)
{
    (void)state;
    serve(b_canned);
    const char *bad[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabcde\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nab\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        canned = bad[i];
        expect_get_error(-EPROTO, "malformed response");
    }
}

static void b_header_flood(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    hsends(fd, "HTTP/1.1 200 OK\r\n");
    char line[64];
    for (int i = 0; i < 200000; i++) { /* ~4 MiB of headers, until the client hangs up */
        int n = snprintf(line, sizeof(line), "X-Flood-%d: v\r\n", i);
        if (send(fd, line, (size_t)n, MSG_NOSIGNAL) <= 0)
            return;
    }
}

static void b_endless_value(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    hsends(fd, "HTTP/1.1 200 OK\r\nX-Long: ");
    char block[4096];
    memset(block, 'v', sizeof(block));
    for (int i = 0; i < 4096; i++)
        if (send(fd, block, sizeof(block), MSG_NOSIGNAL) <= 0)
            return;
}

static void test_header_floods(void **state)
{
    (void)state;
    serve(b_header_flood);
    expect_get_error(-E2BIG, "lines");
    hsrv_stop(&srv);
    serve(b_endless_value);
    int64_t t0 = tu_now_ns();
    expect_get_error(-E2BIG, "head");
    assert_true(tu_now_ns() - t0 < IOLOOP_SEC(5)); /* refused at the limit, not after 16 MiB */
}

static void b_huge_announced(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    hsends(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n");
    char block[4096] = {0};
    for (int i = 0; i < 1024; i++)
        if (send(fd, block, sizeof(block), MSG_NOSIGNAL) <= 0)
            return;
}

static atomic_long chunked_sent; /* bytes b_huge_chunked got into its socket */

static void b_huge_chunked(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    hsends(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    char block[4096 + 16];
    int n = snprintf(block, sizeof(block), "1000\r\n");
    memset(block + n, 'x', 4096);
    memcpy(block + n + 4096, "\r\n", 2);
    for (int i = 0; i < 4096; i++) { /* 16 MiB, unless the client hangs up */
        ssize_t sent = send(fd, block, (size_t)n + 4098, MSG_NOSIGNAL);
        if (sent <= 0)
            return;
        atomic_fetch_add(&chunked_sent, sent);
    }
}

static void test_body_over_max_body_size(void **state)
{
    (void)state;
    serve(b_huge_announced);
    expect_error(&(ioloop_http_client_request_t){.url = base, .max_body_size = 1 << 20}, -EMSGSIZE, "max_body_size");
    hsrv_stop(&srv);
    serve(b_huge_chunked);
    atomic_store(&chunked_sent, 0);
    expect_error(&(ioloop_http_client_request_t){.url = base, .max_body_size = 1 << 20}, -EMSGSIZE, "max_body_size");
    hsrv_stop(&srv); /* the server is done sending */
    serve(b_canned);
    /* bounded: the client hung up past 1 MiB; the 16 MiB were never taken (the
     * socket buffers hold a few MiB at most) */
    assert_true(atomic_load(&chunked_sent) < 8L << 20);
}

static void b_close_mid_body(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    hsends(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this much");
}

static void b_reset_mid_body(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    hsends(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    tu_sleep_ms(50);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)); /* close() sends RST */
}

static void test_closed_mid_body(void **state)
{
    (void)state;
    serve(b_close_mid_body);
    expect_get_error(-ECONNRESET, "mid-body");
    hsrv_stop(&srv);
    serve(b_reset_mid_body);
    expect_get_error(-ECONNRESET, NULL);
}

static void b_byte_per_tick(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    for (size_t i = 0; i < 2000; i++) {
        char ch = i < strlen(resp) ? resp[i] : 'x';
        if (send(fd, &ch, 1, MSG_NOSIGNAL) != 1)
            return;
        tu_sleep_ms(100);
    }
}

static void b_silent(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    char buf[64];
    recv(fd, buf, sizeof(buf), 0); /* until the client gives up (or 10 s) */
}

static void test_request_timeouts(void **state)
{
    (void)state;
    serve(b_byte_per_tick);
    int64_t t0 = tu_now_ns();
    expect_error(&(ioloop_http_client_request_t){.url = base, .request_timeout = IOLOOP_MSEC(500)}, -ETIME,
                 "request timeout");
    int64_t took = tu_now_ns() - t0;
    assert_true(took >= IOLOOP_MSEC(400) && took < IOLOOP_SEC(3));
    hsrv_stop(&srv);
    serve(b_silent);
    expect_error(&(ioloop_http_client_request_t){.url = base, .request_timeout = IOLOOP_MSEC(300)}, -ETIME,
                 "request timeout");
}

static void test_connect_timeout(void **state)
{
    (void)state;
    serve(b_canned); /* for teardown */
    /* a listener whose accept queue is full and never drained: SYNs are dropped */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    int fillers[8];
    for (int i = 0; i < 8; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        connect(fillers[i], (struct sockaddr *)&sa, sizeof(sa));
    }
    tu_sleep_ms(50);
    char u[64];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/", ntohs(sa.sin_port));
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = u, .connect_timeout = IOLOOP_MSEC(300)}, &r);
    for (int i = 0; i < 8; i++)
        close(fillers[i]);
    close(lfd);
    if (r.error == -ETIME || r.error == 0) {
        tres_free(&r);
        skip(); /* this kernel completed the handshake anyway: nothing stalls */
    }
    assert_int_equal(r.error, -ETIMEDOUT);
    assert_non_null(strstr(r.text, "connect timeout"));
    tres_free(&r);
}

static void test_corrupt_gzip(void **state)
{
    (void)state;
    serve(b_canned);
    canned = "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 12\r\n\r\nnot gzip....";
    expect_error(&(ioloop_http_client_request_t){.url = base, .decompress = true}, -EBADMSG, "decompress");
    /* the start of a gzip header, then the body ends: truncated */
    canned = "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\n\x1f\x8b\x08";
    expect_error(&(ioloop_http_client_request_t){.url = base, .decompress = true}, -EBADMSG, "decompress");
}

/* Connection 0: one response with 5 extra bytes after it; then plain answers. */
static void b_extra_bytes(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head;
    if (index == 0)
        hsends(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA");
    else
        ok_response(fd);
    char h[4096];
    while (hread_head(fd, h, sizeof(h)))
        ok_response(fd);
}

static void test_bytes_after_response_not_reused(void **state)
{
    (void)state;
    serve(b_extra_bytes);
    tres_t r;
    cget(loop, base, &r);
    assert_int_equal(r.error, 0);
    assert_string_equal(r.body, "ok");
    tres_free(&r);
    cget(loop, base, &r);
    assert_int_equal(r.error, 0);
    assert_false(r.timing.reused);
    tres_free(&r);
    assert_int_equal(atomic_load(&srv.connections), 2);
}

static void test_close_delimited_and_informational(void **state)
{
    (void)state;
    serve(b_canned);
    canned = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
             "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the server closes";
    tres_t r;
    cget(loop, base, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "until the server closes");
    tres_free(&r);
    ioloop_http_client_stats_t st;
    ioloop_http_client_get_stats(loop, &st);
    assert_int_equal(st.idle, 0);
}

/* Connection 0 answers its first request, then closes on reading the next one
 * without a byte of answer: the race of a reused connection the server drops. */
static void b_drop_second(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head;
    ok_response(fd);
    char h[4096];
    if (index == 0) {
        hread_head(fd, h, sizeof(h));
        return; /* closed unanswered */
    }
    while (hread_head(fd, h, sizeof(h)))
        ok_response(fd);
}

static void test_reuse_race_is_retried_once(void **state)
{
    (void)state;
    serve(b_drop_second);
    tres_t r;
    cget(loop, base, &r);
    assert_int_equal(r.error, 0);
    tres_free(&r);
    cget(loop, base, &r); /* sent on the pooled connection, which the server drops */
    assert_int_equal(r.error, 0);
    assert_string_equal(r.body, "ok");
    tres_free(&r);
    ioloop_http_client_stats_t st;
    ioloop_http_client_get_stats(loop, &st);
    assert_int_equal(st.retries, 1);
    assert_int_equal(st.connections_opened, 2);
}

static void test_reuse_race_post_is_not_retried(void **state)
{
    (void)state;
    serve(b_drop_second);
    tres_t r;
    cget(loop, base, &r);
    tres_free(&r);
    cfetch(loop, &(ioloop_http_client_request_t){.url = base, .body = "x", .body_len = 1}, &r);
    assert_int_equal(r.error, -ECONNRESET);
    assert_non_null(strstr(r.text, "before the response"));
    tres_free(&r);
    ioloop_http_client_stats_t st;
    ioloop_http_client_get_stats(loop, &st);
    assert_int_equal(st.retries, 0);
}

/* Says keep-alive, and closes right after the response. */
static void b_close_after_response(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    ok_response(fd);
}

static tres_t second;

static void fetch_second(ioloop_t *l, const ioloop_http_client_response_t *resp, void *arg)
{
    tres_t *first = arg;
    first->stop = false;
    tres_cb(l, resp, first);
    tu_sleep_ms(50); /* the server's FIN is in, and the loop has not polled since */
    second.stop = true;
    assert_int_equal(ioloop_http_fetch(l, &(ioloop_http_client_request_t){.url = base}, tres_cb, &second, NULL), 0);
}

static void test_closed_idle_seen_before_reuse(void **state)
{
    (void)state;
    serve(b_close_after_response);
    tres_t first = {0};
    memset(&second, 0, sizeof(second));
    assert_int_equal(ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = base}, fetch_second, &first, NULL),
                     0);
    tspin(loop, 5000);
    assert_true(first.done && second.done);
    assert_int_equal(first.error, 0);
    assert_int_equal(second.error, 0);
    assert_false(second.timing.reused);
    tres_free(&first);
    tres_free(&second);
    ioloop_http_client_stats_t st;
    ioloop_http_client_get_stats(loop, &st);
    assert_int_equal(st.stale_closed, 1); /* seen by the check before reuse (poll), not by a failed request */
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.connections_opened, 2);
}

/* Reads the head and never reads the body. */
static void b_never_reads(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)head, (void)index;
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    tu_sleep_ms(1500);
}

typedef struct {
    uint64_t written;
    int refused;
} flood_t;

static int flood_producer(ioloop_http_fetch_t *fetch, void *arg)
{
    flood_t *f = arg;
    static char block[65536];
    for (;;) {
        int rc = ioloop_http_fetch_body_write(fetch, block, sizeof(block));
        if (rc == -ENOBUFS) {
            f->refused++;
            return 0; /* asked again once the output drained */
        }
        if (rc != 0)
            return 0;
        f->written += sizeof(block);
        if (f->written > (uint64_t)64 << 20)
            return 0;
    }
}

static void test_never_reading_server_bounds_the_producer(void **state)
{
    (void)state;
    serve(b_never_reads);
    flood_t f = {0};
    tres_t r;
    cfetch(
        loop,
        &(ioloop_http_client_request_t){
            .url = base, .body_producer = flood_producer, .body_producer_arg = &f, .request_timeout = IOLOOP_MSEC(500)},
        &r);
    assert_int_equal(r.error, -ETIME);
    tres_free(&r);
    assert_true(f.refused >= 1);
    assert_true(f.written < (uint64_t)16 << 20); /* the socket buffers and one write mark, not 64 MiB */
}

static char host_seen[256];

static void b_host_echo(hsrv_t *s, int fd, const char *head, int index)
{
    (void)s, (void)index;
    const char *h = strstr(head, "\r\nHost: ");
    if (h)
        snprintf(host_seen, sizeof(host_seen), "%.*s", (int)strcspn(h + 8, "\r"), h + 8);
    ok_response(fd);
}

static void test_ipv6_literal(void **state)
{
    (void)state;
    if (!hsrv_start_family(&srv, b_host_echo, NULL, true)) {
        serve(b_canned); /* for teardown */
        skip();
    }
    char u[96];
    snprintf(u, sizeof(u), "http://[::1]:%d/v6?q=1", srv.port);
    tres_t r;
    cget(loop, u, &r);
    assert_int_equal(r.error, 0);
    assert_string_equal(r.body, "ok");
    assert_string_equal(r.url, u);
    tres_free(&r);
    char want[64];
    snprintf(want, sizeof(want), "[::1]:%d", srv.port);
    assert_string_equal(host_seen, want);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_malformed_status_lines),
        T(test_bad_chunk_sizes),
        T(test_header_floods),
        T(test_body_over_max_body_size),
        T(test_closed_mid_body),
        T(test_request_timeouts),
        T(test_connect_timeout),
        T(test_corrupt_gzip),
        T(test_bytes_after_response_not_reused),
        T(test_close_delimited_and_informational),
        T(test_reuse_race_is_retried_once),
        T(test_reuse_race_post_is_not_retried),
        T(test_closed_idle_seen_before_reuse),
        T(test_never_reading_server_bounds_the_producer),
        T(test_ipv6_literal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
