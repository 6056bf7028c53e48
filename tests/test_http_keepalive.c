/* test_http_keepalive.c — connection management seen from a raw client:
 * keep-alive for HTTP/1.1 and (only when asked) HTTP/1.0, Connection: close,
 * no_keep_alive, pipelining answered strictly in order, streamed (chunked)
 * responses with flush completions, handlers finishing later (timer, another
 * thread), on_close when the client goes away, and a client resetting
 * mid-response without disturbing another connection.
 */
#include "test_http_util.h"

static tsrv_t srv;

/* ---- handlers ---- */

static atomic_int slow_answered;

static void finish_later(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_request_t *req = arg;
    atomic_fetch_add(&slow_answered, 1);
    ioloop_http_response_send(req, 200, "text/plain", "slow", 4);
}

static void slow(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(150), finish_later, req, NULL), 0);
}

static void fast(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "text/plain", "fast", 4);
}

/* Answers its query string, so pipelined responses can be told apart. */
static void echo(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    const char *q = ioloop_http_request_query(req);
    ioloop_http_response_send(req, 200, "text/plain", q, strlen(q));
}

static atomic_int flush_status = 99;

static void stream_part2(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_request_t *req = arg;
    ioloop_http_response_write(req, "part2", 5);
    ioloop_http_response_finish(req);
}

static void stream_flushed(ioloop_http_request_t *req, int status, void *arg)
{
    (void)arg;
    atomic_store(&flush_status, status);
    ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(20), stream_part2, req, NULL);
}

static void stream(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "Content-Type", "text/plain");
    ioloop_http_response_write(req, "part1", 5);
    assert_int_equal(ioloop_http_response_flush(req, stream_flushed, NULL), 0);
}

static void *other_thread(void *arg)
{
    ioloop_http_request_t *req = arg;
    tu_sleep_ms(50);
    /* the only call another thread makes: post to the request's loop */
    ioloop_add_callback(ioloop_http_request_loop(req), finish_later, req);
    return NULL;
}

static void threaded(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread, req), 0);
    pthread_detach(t);
}

static atomic_int closed_seen;

static void on_client_gone(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_true(ioloop_http_request_closed(req));
    /* the head is still readable after the connection went */
    if (strcmp(ioloop_http_request_path(req), "/hang") == 0)
        atomic_store(&closed_seen, 1);
    assert_int_equal(ioloop_http_response_write(req, "x", 1), -EPIPE);
    ioloop_http_response_finish(req);
}

static void hang(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_request_on_close(req, on_client_gone, NULL);
}

static atomic_int big_closed, big_epipe;
static int big_sent;
static char chunk[65536];

static void big_more(ioloop_http_request_t *req, int status, void *arg)
{
    (void)arg;
    if (status != 0) {
        atomic_store(&big_epipe, 1);
        ioloop_http_response_finish(req);
        return;
    }
    if (++big_sent == 4096) { /* 256 MiB: never reached before the reset */
        ioloop_http_response_finish(req);
        return;
    }
    ioloop_http_response_write(req, chunk, sizeof(chunk));
    ioloop_http_response_flush(req, big_more, NULL);
}

static void big_gone(ioloop_http_request_t *req, void *arg)
{
    (void)req;
    (void)arg;
    atomic_store(&big_closed, 1);
}

static void big(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    big_sent = 0;
    ioloop_http_request_on_close(req, big_gone, NULL);
    big_more(req, 0, NULL);
}

static void closing(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_http_response_header(req, "Connection", "close"), 0);
    assert_int_equal(ioloop_http_response_header(req, "Connection", "upgrade"), -EINVAL);
    assert_int_equal(ioloop_http_response_header(req, "Bad Name", "x"), -EINVAL);
    assert_int_equal(ioloop_http_response_header(req, "X-Split", "a\r\nInjected: 1"), -EINVAL);
    ioloop_http_response_send(req, 200, "text/plain", "bye", 3);
}

static int setup(void **state)
{
    (void)state;
    tsrv_init(&srv, NULL);
    tsrv_route(&srv, "/", (ioloop_http_route_t){.get = th_ok});
    tsrv_route(&srv, "/slow", (ioloop_http_route_t){.get = slow});
    tsrv_route(&srv, "/fast", (ioloop_http_route_t){.get = fast});
    tsrv_route(&srv, "/stream", (ioloop_http_route_t){.get = stream});
    tsrv_route(&srv, "/threaded", (ioloop_http_route_t){.get = threaded});
    tsrv_route(&srv, "/hang", (ioloop_http_route_t){.get = hang});
    tsrv_route(&srv, "/big", (ioloop_http_route_t){.get = big});
    tsrv_route(&srv, "/closing", (ioloop_http_route_t){.get = closing});
    tsrv_route(&srv, "/echo", (ioloop_http_route_t){.get = echo});
    tsrv_start(&srv);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tsrv_stop(&srv);
    return 0;
}

static void test_keepalive_11_default(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    for (int i = 0; i < 3; i++) {
        tcli_send(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        tresp_t r;
        assert_int_equal(tcli_response(fd, &r), 0);
        assert_int_equal(r.status, 200);
        assert_false(tresp_has(&r, "Connection", "close"));
        tresp_free(&r);
    }
    assert_int_equal(tcli_closed(fd, 100, NULL), 0);
    close(fd);
}

static void test_http10_closes_unless_asked(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET / HTTP/1.0\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(tresp_has(&r, "Connection", "close"));
    tresp_free(&r);
    assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
    close(fd);

    fd = tcli_connect(srv.port);
    for (int i = 0; i < 2; i++) {
        tcli_send(fd, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert_int_equal(tcli_response(fd, &r), 0);
        assert_int_equal(r.status, 200);
        assert_true(tresp_has(&r, "Connection", "keep-alive"));
        tresp_free(&r);
    }
    assert_int_equal(tcli_closed(fd, 100, NULL), 0);
    close(fd);
}

static void test_connection_close(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    /* the second request must not be answered */
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_true(tresp_has(&r, "Connection", "close"));
    tresp_free(&r);
    size_t extra = 1;
    assert_int_equal(tcli_closed(fd, 3000, &extra), 1);
    assert_int_equal(extra, 0);
    close(fd);
}

static void test_handler_closes(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET /closing HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_string_equal(r.body, "bye");
    assert_true(tresp_has(&r, "Connection", "close"));
    assert_false(tresp_has(&r, "Injected", "1"));
    tresp_free(&r);
    size_t extra = 1;
    assert_int_equal(tcli_closed(fd, 3000, &extra), 1);
    assert_int_equal(extra, 0);
    close(fd);
}

static void test_no_keep_alive_option(void **state)
{
    (void)state;
    ioloop_http_server_options_t o = {.no_keep_alive = true};
    tsrv_t t;
    tsrv_init(&t, &o);
    tsrv_route(&t, "/", (ioloop_http_route_t){.get = th_ok});
    tsrv_start(&t);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_true(tresp_has(&r, "Connection", "close"));
    tresp_free(&r);
    assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
    close(fd);
    tsrv_stop(&t);
}

static void test_pipelining_in_order(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n\r\n"
                  "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "slow");
    TCLI_EXPECT_BODY(fd, "fast");
    TCLI_EXPECT_BODY(fd, "ok");
    close(fd);
}

/* More pipelined bytes than a read buffer holds, behind a slow request: the
 * server stops reading while the handler runs, then answers all, in order. */
static void test_pipelining_many(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    const int n = 1500;
    size_t cap = (size_t)n * 64 + 64, len = 0;
    char *buf = malloc(cap);
    len += (size_t)sprintf(buf, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    for (int i = 0; i < n; i++)
        len += (size_t)sprintf(buf + len,
                               i % 2 ? "GET / HTTP/1.1\r\nHost: a\r\n\r\n" : "GET /fast HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(len > 40000);
    tcli_sendn(fd, buf, len);
    tresp_t r;
    TCLI_EXPECT_BODY(fd, "slow");
    for (int i = 0; i < n; i++) {
        assert_int_equal(tcli_response(fd, &r), 0);
        assert_string_equal(r.body, i % 2 ? "ok" : "fast");
        tresp_free(&r);
    }
    free(buf);
    close(fd);
}

/* 16 pipelined requests in one write: 16 responses in order, sent in a batch
 * (the server's send count grows by far less than 16). */
static void test_pipelined_batch_shares_sends(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    /* a first request, so that the connection is accepted and warm */
    tcli_send(fd, "GET /echo?warm HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    tresp_free(&r);
    char buf[2048];
    size_t len = 0;
    for (int i = 0; i < 16; i++)
        len += (size_t)sprintf(buf + len, "GET /echo?n=%d HTTP/1.1\r\nHost: a\r\n\r\n", i);
    ioloop_http_server_stats_t before, after;
    ioloop_http_server_get_stats(srv.server, &before);
    tcli_sendn(fd, buf, len);
    for (int i = 0; i < 16; i++) {
        char want[16];
        sprintf(want, "n=%d", i);
        assert_int_equal(tcli_response(fd, &r), 0);
        assert_string_equal(r.body, want);
        assert_false(tresp_has(&r, "Connection", "close"));
        tresp_free(&r);
    }
    ioloop_http_server_get_stats(srv.server, &after);
    assert_int_equal(after.requests - before.requests, 16);
    /* one send per read of the batch; a loaded machine may split the read */
    assert_true(after.sends - before.sends <= 4);
    close(fd);
}

/* A batch stopped by a handler that goes asynchronous: what was answered
 * before it goes out at once, the rest follows in order. */
static void test_pipelined_batch_then_async(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    int slow_before = atomic_load(&slow_answered);
    tcli_send(fd, "GET /echo?a HTTP/1.1\r\nHost: a\r\n\r\nGET /echo?b HTTP/1.1\r\nHost: a\r\n\r\n"
                  "GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /echo?c HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "a");
    TCLI_EXPECT_BODY(fd, "b");
    /* a and b were sent when /slow went asynchronous, not with its answer */
    assert_int_equal(atomic_load(&slow_answered), slow_before);
    TCLI_EXPECT_BODY(fd, "slow");
    TCLI_EXPECT_BODY(fd, "c");
    close(fd);
}

static void test_pipelining_byte_by_byte(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    const char *req = "GET /fast HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for (const char *p = req; *p; p++)
        tcli_sendn(fd, p, 1);
    TCLI_EXPECT_BODY(fd, "fast");
    TCLI_EXPECT_BODY(fd, "ok");
    close(fd);
}

static void test_streamed_response_is_chunked(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_true(r.chunked);
    assert_false(tresp_has(&r, "Content-Length", "10"));
    assert_string_equal(r.body, "part1part2");
    assert_int_equal(atomic_load(&flush_status), 0);
    tresp_free(&r);
    /* still usable after a chunked response */
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "ok");
    close(fd);
}

static void test_streamed_response_http10(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_false(r.chunked);
    assert_true(tresp_has(&r, "Connection", "close"));
    assert_string_equal(r.body, "part1part2"); /* read to EOF: close-delimited */
    tresp_free(&r);
    close(fd);
}

static void test_streamed_head(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "HEAD /stream HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_string_equal(r.body, "ok"); /* no stray chunk bytes from the HEAD */
    tresp_free(&r);
    close(fd);
}

static void test_finish_from_other_thread(void **state)
{
    (void)state;
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET /threaded HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "slow");
    TCLI_EXPECT_BODY(fd, "fast");
    close(fd);
}

static void test_on_close_when_client_leaves(void **state)
{
    (void)state;
    atomic_store(&closed_seen, 0);
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET /hang HTTP/1.1\r\nHost: a\r\n\r\n");
    tu_sleep_ms(50);
    assert_int_equal(atomic_load(&closed_seen), 0);
    close(fd);
    for (int i = 0; i < 300 && !atomic_load(&closed_seen); i++)
        tu_sleep_ms(10);
    assert_int_equal(atomic_load(&closed_seen), 1);
}

static void test_reset_mid_response(void **state)
{
    (void)state;
    atomic_store(&big_closed, 0);
    atomic_store(&big_epipe, 0);
    int a = tcli_connect(srv.port);
    int small = 4096;
    setsockopt(a, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    int b = tcli_connect(srv.port); /* an idle keep-alive neighbour */
    tcli_send(a, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    char buf[8192];
    size_t got = 0;
    while (got < 100000) {
        ssize_t n = recv(a, buf, sizeof(buf), 0);
        assert_true(n > 0);
        got += (size_t)n;
    }
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(a); /* RST */
    for (int i = 0; i < 300 && !(atomic_load(&big_closed) && atomic_load(&big_epipe)); i++)
        tu_sleep_ms(10);
    assert_int_equal(atomic_load(&big_closed), 1);
    assert_int_equal(atomic_load(&big_epipe), 1);
    tcli_send(b, "GET /fast HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    TCLI_EXPECT_BODY(b, "fast");
    close(b);
    /* and new connections are served */
    tcli_request(srv.port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
}

/* Requests a handler still holds when the server is freed stay valid until
 * it finishes them, even from callbacks that run as the loop closes (after
 * ioloop_http_server_free); the last finish frees what is left
 * (LeakSanitizer checks). */
static _Atomic(ioloop_http_request_t *) held[2];
static atomic_int held_n, held_finish_rc[2];

static void never(ioloop_http_request_t *req, void *arg)
{
    (void)arg; /* holds req: finished by finish_held, after server_free */
    atomic_store(&held[atomic_fetch_add(&held_n, 1)], req);
}

static void finish_held(ioloop_t *loop, void *arg)
{
    (void)loop;
    int i = (int)(intptr_t)arg;
    ioloop_http_request_t *req = atomic_load(&held[i]);
    assert_true(ioloop_http_request_closed(req));
    assert_int_equal(ioloop_http_response_write(req, "x", 1), -EPIPE);
    atomic_store(&held_finish_rc[i], ioloop_http_response_finish(req) + 1000);
}

static void test_unfinished_request_outlives_server_free(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/never", (ioloop_http_route_t){.get = never});
    tsrv_start(&t);
    atomic_store(&held_n, 0);
    int a = tcli_connect(t.port), b = tcli_connect(t.port);
    tcli_send(a, "GET /never HTTP/1.1\r\nHost: a\r\n\r\n");
    tcli_send(b, "GET /never HTTP/1.1\r\nHost: a\r\n\r\n");
    for (int i = 0; i < 500 && atomic_load(&held_n) < 2; i++)
        tu_sleep_ms(10);
    assert_int_equal(atomic_load(&held_n), 2);
    close(a); /* a's request is orphaned; b's is still open at server_free */
    tu_sleep_ms(50);
    tsrv_stop_server(&t);
    for (int i = 0; i < 2; i++) {
        atomic_store(&held_finish_rc[i], 0);
        assert_int_equal(ioloop_add_callback(t.loop, finish_held, (void *)(intptr_t)i), 0);
    }
    tsrv_free_runtime(&t); /* closing the loop runs finish_held */
    assert_int_equal(atomic_load(&held_finish_rc[0]), 1000);
    assert_int_equal(atomic_load(&held_finish_rc[1]), 1000);
    close(b);
}

/* A handler waiting for a flush the client never lets complete (it does not
 * read) when the server is freed: the completion runs once, with -EPIPE, as
 * the loop closes (the request and its worker still valid then: ASan checks). */
static atomic_int stuck_flush_calls, stuck_flush_status;

static void stuck_flushed(ioloop_http_request_t *req, int status, void *arg)
{
    (void)arg;
    atomic_fetch_add(&stuck_flush_calls, 1);
    atomic_store(&stuck_flush_status, status);
    ioloop_http_response_finish(req);
}

static void stuck(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    static char big[8 * 1024 * 1024];
    ioloop_http_response_write(req, big, sizeof(big));
    ioloop_http_response_flush(req, stuck_flushed, NULL);
}

static void test_waiting_flush_freed_with_server(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/stuck", (ioloop_http_route_t){.get = stuck});
    tsrv_start(&t);
    atomic_store(&stuck_flush_calls, 0);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "GET /stuck HTTP/1.1\r\nHost: a\r\n\r\n");
    tu_sleep_ms(100); /* the socket buffers are full: the flush waits */
    assert_int_equal(atomic_load(&stuck_flush_calls), 0);
    tsrv_stop_server(&t);
    assert_int_equal(atomic_load(&stuck_flush_calls), 0); /* never inline */
    tsrv_free_runtime(&t);
    assert_int_equal(atomic_load(&stuck_flush_calls), 1);
    assert_int_equal(atomic_load(&stuck_flush_status), -EPIPE);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keepalive_11_default),
        cmocka_unit_test(test_http10_closes_unless_asked),
        cmocka_unit_test(test_connection_close),
        cmocka_unit_test(test_handler_closes),
        cmocka_unit_test(test_no_keep_alive_option),
        cmocka_unit_test(test_pipelining_in_order),
        cmocka_unit_test(test_pipelining_many),
        cmocka_unit_test(test_pipelining_byte_by_byte),
        cmocka_unit_test(test_pipelined_batch_shares_sends),
        cmocka_unit_test(test_pipelined_batch_then_async),
        cmocka_unit_test(test_streamed_response_is_chunked),
        cmocka_unit_test(test_streamed_response_http10),
        cmocka_unit_test(test_streamed_head),
        cmocka_unit_test(test_finish_from_other_thread),
        cmocka_unit_test(test_on_close_when_client_leaves),
        cmocka_unit_test(test_reset_mid_response),
        cmocka_unit_test(test_unfinished_request_outlives_server_free),
        cmocka_unit_test(test_waiting_flush_freed_with_server),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
