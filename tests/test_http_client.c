/* test_http_client.c — ioloop_http_fetch against our own server (a one-loop
 * runtime on another thread): a GET with its head read back (status, reason,
 * headers by name and in order, effective URL, timing); keep-alive reuse
 * counted by the pool and by the server; POST/PUT bodies from a buffer and
 * from a producer (chunked and with a length); a HEAD; redirects 301/302/303
 * (to GET) and 307/308 (method and body kept), Authorization dropped across
 * hosts and kept within one, and a loop ending in -ELOOP; gzip inflated;
 * max_body_size; a streamed body paused and resumed; a request timeout;
 * cancels (also from the fetch's own callbacks); max_connections_per_host
 * with its queue and queue timeout; the pool's idle_timeout and
 * max_idle_per_host; an idle connection the server closed is not reused;
 * bad URLs; the loop's close ending every fetch.
 * Threading rule: the client loop runs on the test's thread, the server on
 * the runtime's; handlers touch only atomics.
 */
#include "test_http_client_util.h"
#include "test_http_util.h"

static tsrv_t srv;
static ioloop_t *loop;                        /* the client's */
static char base[64];                         /* "http://127.0.0.1:PORT" */
static atomic_int slow_started, slow_pending; /* /slow requests begun, and not finished yet */

/* ---- the server's handlers ------------------------------------------------------- */

static void h_hello(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "X-Test", "yes");
    ioloop_http_response_header(req, "X-Dup", "one");
    ioloop_http_response_header(req, "X-Dup", "two");
    ioloop_http_response_send(req, 200, "text/plain", "Hello, world", 12);
}

/* Echoes the body; says the method and the Authorization it got. */
static void h_echo(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    const char *auth = ioloop_http_request_header(req, "Authorization");
    const char *te = ioloop_http_request_header(req, "Transfer-Encoding");
    ioloop_http_response_header(req, "X-Method", ioloop_http_request_method(req));
    ioloop_http_response_header(req, "X-Auth", auth ? auth : "-");
    ioloop_http_response_header(req, "X-TE", te ? te : "-");
    size_t len = 0;
    const char *body = ioloop_http_request_body(req, &len);
    ioloop_http_response_send(req, 200, "application/octet-stream", body, len);
}

static void h_redirect(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    int code = atoi(ioloop_http_request_path_arg(req, 0));
    const char *to = ioloop_http_request_argument(req, "to", "/echo");
    ioloop_http_response_status(req, code);
    ioloop_http_response_header(req, "Location", to);
    ioloop_http_response_finish(req);
}

static void h_loop(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_status(req, 302);
    ioloop_http_response_header(req, "Location", "/loop");
    ioloop_http_response_finish(req);
}

static void slow_finish(ioloop_t *l, void *arg)
{
    (void)l;
    ioloop_http_response_send(arg, 200, "text/plain", "slow", 4);
    atomic_fetch_sub(&slow_pending, 1);
}

/* Answers after ?ms= milliseconds (default 1500). */
static void h_slow(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    atomic_fetch_add(&slow_started, 1);
    atomic_fetch_add(&slow_pending, 1);
    int ms = atoi(ioloop_http_request_argument(req, "ms", "1500"));
    ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(ms), slow_finish, req, NULL);
}

#define BIG (1024 * 1024)
static char *big_body;

static void h_big(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "application/octet-stream", big_body, BIG);
}

static const char text_body[] = "The quick brown fox jumps over the lazy dog. ";

static void h_text(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    for (int i = 0; i < 200; i++)
        ioloop_http_response_write(req, text_body, sizeof(text_body) - 1);
    ioloop_http_response_header(req, "Content-Type", "text/plain");
    ioloop_http_response_finish(req);
}

static int group_setup(void **state)
{
    (void)state;
    big_body = malloc(BIG);
    assert_non_null(big_body);
    for (size_t i = 0; i < BIG; i++)
        big_body[i] = (char)('a' + i % 26);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    free(big_body);
    return 0;
}

static ioloop_time_t idle_timeout; /* the server's idle_connection_timeout (0: its default) */

static int setup(void **state)
{
    (void)state;
    ioloop_http_server_options_t o = {.gzip = true, .idle_connection_timeout = idle_timeout};
    tsrv_init(&srv, &o);
    tsrv_route(&srv, "/hello", (ioloop_http_route_t){.get = h_hello});
    tsrv_route(&srv, "/echo", (ioloop_http_route_t){.get = h_echo, .post = h_echo, .put = h_echo});
    tsrv_route(&srv, "/redirect/(\\d+)",
               (ioloop_http_route_t){.get = h_redirect, .post = h_redirect, .put = h_redirect});
    tsrv_route(&srv, "/loop", (ioloop_http_route_t){.get = h_loop});
    tsrv_route(&srv, "/slow", (ioloop_http_route_t){.get = h_slow});
    tsrv_route(&srv, "/big", (ioloop_http_route_t){.get = h_big});
    tsrv_route(&srv, "/text", (ioloop_http_route_t){.get = h_text});
    tsrv_start(&srv);
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", srv.port);
    assert_int_equal(ioloop_new(NULL, &loop), 0);
    atomic_store(&slow_started, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(ioloop_close(loop, false), 0);
    /* a handler must finish what it began: the server frees only finished requests */
    for (int i = 0; i < 300 && atomic_load(&slow_pending) > 0; i++)
        tu_sleep_ms(10);
    tsrv_stop(&srv);
    return 0;
}

static const char *url(const char *path)
{
    static char buf[8][256];
    static int i;
    char *b = buf[i++ % 8];
    snprintf(b, 256, "%s%s", base, path);
    return b;
}

static ioloop_http_client_stats_t stats(void)
{
    ioloop_http_client_stats_t st;
    assert_int_equal(ioloop_http_client_get_stats(loop, &st), 0);
    return st;
}

/* ---- tests -------------------------------------------------------------------- */

static void test_get(void **state)
{
    (void)state;
    tres_t r;
    cget(loop, url("/hello?x=1#frag"), &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.reason, "OK");
    assert_string_equal(r.body, "Hello, world");
    assert_string_equal(r.url, url("/hello?x=1"));
    assert_non_null(strstr(r.headers, "X-Test: yes\n"));
    /* repeated headers stay, in order */
    char *one = strstr(r.headers, "X-Dup: one\n"), *two = strstr(r.headers, "X-Dup: two\n");
    assert_true(one && two && one < two);
    assert_true(r.nheaders >= 5);
    assert_int_equal(r.redirects, 0);
    assert_true(r.timing.queue >= 0 && r.timing.connect >= r.timing.queue);
    assert_true(r.timing.first_byte >= r.timing.connect && r.timing.total >= r.timing.first_byte);
    assert_false(r.timing.reused);
    tres_free(&r);
}

static void get_header_cb(ioloop_t *l, const ioloop_http_client_response_t *resp, void *arg)
{
    (void)l;
    int *ok = arg;
    *ok = ioloop_http_client_response_header(resp, "x-TEST") != NULL &&
          strcmp(ioloop_http_client_response_header(resp, "CONTENT-TYPE"), "text/plain") == 0 &&
          ioloop_http_client_response_header(resp, "x-absent") == NULL &&
          ioloop_http_client_response_header_at(resp, 99, NULL, NULL) == -ENOENT;
    ioloop_stop(l);
}

static void test_header_lookup_is_case_insensitive(void **state)
{
    (void)state;
    int ok = -1;
    assert_int_equal(
        ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = url("/hello")}, get_header_cb, &ok, NULL), 0);
    tspin(loop, 5000);
    assert_int_equal(ok, 1);
}

static void test_keep_alive_reuse(void **state)
{
    (void)state;
    ioloop_http_server_stats_t before, after;
    ioloop_http_server_get_stats(srv.server, &before);
    for (int i = 0; i < 5; i++) {
        tres_t r;
        cget(loop, url("/hello"), &r);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.timing.reused, i > 0);
        if (i > 0)
            assert_int_equal(r.timing.connect, 0);
        tres_free(&r);
    }
    ioloop_http_client_stats_t st = stats();
    assert_int_equal(st.connections_opened, 1);
    assert_int_equal(st.connections_reused, 4);
    assert_int_equal(st.idle, 1);
    ioloop_http_server_get_stats(srv.server, &after);
    assert_int_equal(after.connections - before.connections, 1); /* the server saw one connection */
    assert_int_equal(after.requests - before.requests, 5);
    /* close_idle lets it go */
    assert_int_equal(ioloop_http_client_close_idle(loop), 0);
    tspin(loop, 20);
    assert_int_equal(stats().open, 0);
}

static void test_post_and_put_bodies(void **state)
{
    (void)state;
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/echo"), .body = "a=1&b=2", .body_len = 7}, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "a=1&b=2");
    assert_non_null(strstr(r.headers, "X-Method: POST\n"));
    tres_free(&r);
    cfetch(loop,
           &(ioloop_http_client_request_t){.url = url("/echo"), .method = "PUT", .body = big_body, .body_len = BIG},
           &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, BIG);
    assert_memory_equal(r.body, big_body, BIG);
    assert_non_null(strstr(r.headers, "X-Method: PUT\n"));
    tres_free(&r);
    /* an empty POST says Content-Length: 0 (the server would wait otherwise) */
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/echo"), .method = "POST"}, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    tres_free(&r);
    /* headers that would split the head are refused */
    ioloop_http_client_header_t bad = {"X-A", "1\r\nX-Injected: 1"};
    assert_int_equal(
        ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = url("/echo"), .headers = &bad, .nheaders = 1},
                          tres_cb, &r, NULL),
        -EINVAL);
}

/* A producer: 3 pieces, one per loop timer tick, written only when asked. */
typedef struct {
    int calls, pieces;
    ioloop_http_fetch_t *fetch;
    bool waiting;
} producer_t;

static void produce_later(ioloop_t *l, void *arg)
{
    (void)l;
    producer_t *p = arg;
    static const char *parts[] = {"first,", "second,", "third"};
    p->waiting = false;
    assert_int_equal(ioloop_http_fetch_body_write(p->fetch, parts[p->pieces], strlen(parts[p->pieces])), 0);
    if (++p->pieces == 3)
        assert_int_equal(ioloop_http_fetch_body_end(p->fetch), 0);
}

static int producer(ioloop_http_fetch_t *fetch, void *arg)
{
    producer_t *p = arg;
    p->calls++;
    p->fetch = fetch;
    assert_false(p->waiting); /* not asked again before the last write left */
    p->waiting = true;
    ioloop_call_later(loop, IOLOOP_MSEC(5), produce_later, p, NULL);
    return 0;
}

static void test_body_producer(void **state)
{
    (void)state;
    for (int with_length = 0; with_length <= 1; with_length++) {
        producer_t p = {0};
        tres_t r;
        cfetch(loop,
               &(ioloop_http_client_request_t){.url = url("/echo"),
                                               .body_producer = producer,
                                               .body_producer_arg = &p,
                                               .body_producer_length = with_length ? 18 : -1},
               &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "first,second,third");
        assert_non_null(strstr(r.headers, with_length ? "X-TE: -\n" : "X-TE: chunked\n"));
        assert_int_equal(p.calls, 3);
        tres_free(&r);
    }
}

static void test_head(void **state)
{
    (void)state;
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/hello"), .method = "HEAD"}, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_non_null(strstr(r.headers, "Content-Length: 12\n"));
    tres_free(&r);
    cget(loop, url("/hello"), &r); /* the same connection carries the next request */
    assert_string_equal(r.body, "Hello, world");
    assert_true(r.timing.reused);
    tres_free(&r);
}

static void test_redirects(void **state)
{
    (void)state;
    const int codes[] = {301, 302, 303, 307, 308};
    for (int i = 0; i < 5; i++) {
        char path[64];
        snprintf(path, sizeof(path), "/redirect/%d", codes[i]);
        tres_t r;
        cfetch(loop,
               &(ioloop_http_client_request_t){
                   .url = url(path), .body = "payload", .body_len = 7, .follow_redirects = true},
               &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.redirects, 1);
        assert_string_equal(r.url, url("/echo"));
        bool keep = codes[i] >= 307;
        assert_non_null(strstr(r.headers, keep ? "X-Method: POST\n" : "X-Method: GET\n"));
        assert_string_equal(r.body, keep ? "payload" : "");
        tres_free(&r);
    }
    /* not followed unless asked */
    tres_t r;
    cget(loop, url("/redirect/302"), &r);
    assert_int_equal(r.status, 302);
    assert_non_null(strstr(r.headers, "Location: /echo\n"));
    tres_free(&r);
}

static void test_redirect_drops_authorization_across_hosts(void **state)
{
    (void)state;
    ioloop_http_client_header_t auth = {"Authorization", "Bearer secret"};
    char path[160];
    tres_t r;
    /* same origin: kept */
    cfetch(loop,
           &(ioloop_http_client_request_t){
               .url = url("/redirect/302"), .headers = &auth, .nheaders = 1, .follow_redirects = true},
           &r);
    assert_non_null(strstr(r.headers, "X-Auth: Bearer secret\n"));
    tres_free(&r);
    /* 127.0.0.1 -> localhost: another host, the credentials stay behind */
    snprintf(path, sizeof(path), "/redirect/302?to=http://localhost:%d/echo", srv.port);
    cfetch(loop,
           &(ioloop_http_client_request_t){.url = url(path), .headers = &auth, .nheaders = 1, .follow_redirects = true},
           &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "X-Auth: -\n"));
    tres_free(&r);
}

static void test_too_many_redirects(void **state)
{
    (void)state;
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/loop"), .follow_redirects = true, .max_redirects = 3},
           &r);
    assert_int_equal(r.error, -ELOOP);
    assert_int_equal(r.status, 302);
    assert_int_equal(r.redirects, 3);
    assert_non_null(strstr(r.text, "redirects"));
    tres_free(&r);
}

static void test_request_timeout(void **state)
{
    (void)state;
    tres_t r;
    int64_t t0 = tu_now_ns();
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/slow"), .request_timeout = IOLOOP_MSEC(200)}, &r);
    int64_t took = tu_now_ns() - t0;
    assert_int_equal(r.error, -ETIME);
    assert_non_null(strstr(r.text, "request timeout"));
    assert_true(took >= IOLOOP_MSEC(150) && took < IOLOOP_SEC(1));
    tres_free(&r);
    /* the connection it used is not reused mid-response; others are fine */
    cget(loop, url("/hello"), &r);
    assert_int_equal(r.status, 200);
    assert_false(r.timing.reused);
    tres_free(&r);
}

static void test_decompress(void **state)
{
    (void)state;
    size_t want = 200 * (sizeof(text_body) - 1);
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/text"), .decompress = true}, &r);
    assert_int_equal(r.error, 0);
    assert_non_null(strstr(r.headers, "Content-Encoding: gzip\n"));
    assert_int_equal(r.body_len, want);
    assert_memory_equal(r.body, text_body, sizeof(text_body) - 1);
    tres_free(&r);
    /* without decompress: no Accept-Encoding, a plain body */
    cget(loop, url("/text"), &r);
    assert_null(strstr(r.headers, "Content-Encoding"));
    assert_int_equal(r.body_len, want);
    tres_free(&r);
    /* the inflated size counts against max_body_size (a bomb stays bounded) */
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/text"), .decompress = true, .max_body_size = 4000}, &r);
    assert_int_equal(r.error, -EMSGSIZE);
    tres_free(&r);
}

static void test_max_body_size(void **state)
{
    (void)state;
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/big"), .max_body_size = 1000}, &r);
    assert_int_equal(r.error, -EMSGSIZE);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.text, "max_body_size"));
    tres_free(&r);
}

typedef struct {
    size_t got;
    int pieces;
    bool paused;
    int bad; /* data while paused */
    bool ok;
} stream_sink_t;

static stream_sink_t sink;

static void resume_later(ioloop_t *l, void *arg)
{
    (void)l;
    ioloop_http_fetch_t *fetch = arg;
    sink.paused = false;
    assert_int_equal(ioloop_http_fetch_resume(fetch), 0);
}

static int on_stream_body(ioloop_http_fetch_t *fetch, const char *data, size_t len, void *arg)
{
    stream_sink_t *s = arg;
    if (s->paused)
        s->bad++;
    for (size_t i = 0; i < len; i++)
        if (data[i] != big_body[s->got + i]) {
            s->ok = false;
            break;
        }
    s->got += len;
    s->pieces++;
    s->paused = true;
    ioloop_call_later(loop, IOLOOP_MSEC(1), resume_later, fetch, NULL);
    return IOLOOP_HTTP_PAUSE;
}

static void test_streaming_with_pause(void **state)
{
    (void)state;
    sink = (stream_sink_t){.ok = true};
    stream_sink_t *sp = &sink;
    tres_t r;
    cfetch(
        loop,
        &(ioloop_http_client_request_t){.url = url("/big"), .streaming_callback = on_stream_body, .callback_arg = sp},
        &r);
    stream_sink_t s = sink;
    if (r.error)
        fail_msg("%d %s", r.error, r.text);
    assert_int_equal(r.body_len, 0); /* streamed, not buffered */
    assert_int_equal(s.got, BIG);
    assert_true(s.ok);
    assert_int_equal(s.bad, 0);
    assert_true(s.pieces >= 2);
    tres_free(&r);
}

static void cancel_later(ioloop_t *l, void *arg)
{
    (void)l;
    ioloop_http_fetch_cancel(arg);
}

static void test_cancel(void **state)
{
    (void)state;
    tres_t r = {.stop = true};
    ioloop_http_fetch_t *fetch = NULL;
    assert_int_equal(ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = url("/slow")}, tres_cb, &r, &fetch),
                     0);
    assert_non_null(fetch);
    ioloop_call_later(loop, IOLOOP_MSEC(50), cancel_later, fetch, NULL);
    tspin(loop, 3000);
    assert_true(r.done);
    assert_int_equal(r.error, -ECANCELED);
    tres_free(&r);
}

static int cancel_in_stream(ioloop_http_fetch_t *fetch, const char *data, size_t len, void *arg)
{
    (void)data, (void)len;
    (*(int *)arg)++;
    ioloop_http_fetch_cancel(fetch); /* from inside the parser's frame */
    return 0;
}

static int refuse_head(ioloop_http_fetch_t *fetch, const ioloop_http_client_response_t *resp, void *arg)
{
    (void)fetch, (void)arg;
    return ioloop_http_client_response_status(resp) == 200 ? -EPERM : 0;
}

static void test_cancel_from_callbacks(void **state)
{
    (void)state;
    int pieces = 0;
    tres_t r;
    cfetch(loop,
           &(ioloop_http_client_request_t){
               .url = url("/big"), .streaming_callback = cancel_in_stream, .callback_arg = &pieces},
           &r);
    assert_int_equal(r.error, -ECANCELED);
    assert_int_equal(pieces, 1);
    tres_free(&r);
    cfetch(loop, &(ioloop_http_client_request_t){.url = url("/big"), .header_callback = refuse_head}, &r);
    assert_int_equal(r.error, -EPERM);
    assert_int_equal(r.status, 200);
    tres_free(&r);
    cget(loop, url("/hello"), &r); /* the loop goes on */
    assert_string_equal(r.body, "Hello, world");
    tres_free(&r);
}

static void test_queue_per_host(void **state)
{
    (void)state;
    assert_int_equal(ioloop_http_client_configure(loop, &(ioloop_http_client_options_t){.max_connections_per_host = 2}),
                     0);
    tres_t r[6];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 6; i++)
        assert_int_equal(
            ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = url("/slow?ms=100")}, tres_cb, &r[i], NULL),
            0);
    ioloop_http_client_stats_t st = stats();
    assert_int_equal(st.open, 2);
    assert_int_equal(st.queued, 4);
    twait(loop, r, 6);
    int waited = 0;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(r[i].error, 0);
        assert_string_equal(r[i].body, "slow");
        assert_true(r[i].timing.queue >= 0 && r[i].timing.first_byte >= r[i].timing.queue);
        waited += r[i].timing.queue >= IOLOOP_MSEC(50); /* behind a 100 ms answer */
        tres_free(&r[i]);
    }
    assert_int_equal(waited, 4);
    st = stats();
    assert_int_equal(st.connections_opened, 2);
    assert_int_equal(st.connections_reused, 4);
    /* a queue timeout: one connection, busy for 600 ms */
    assert_int_equal(ioloop_http_client_close_idle(loop), 0);
    tspin(loop, 20);
    assert_int_equal(ioloop_http_client_configure(loop, &(ioloop_http_client_options_t){.max_connections_per_host = 1}),
                     0);
    tres_t a = {0}, b = {0};
    assert_int_equal(
        ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = url("/slow?ms=600")}, tres_cb, &a, NULL), 0);
    assert_int_equal(ioloop_http_fetch(
                         loop, &(ioloop_http_client_request_t){.url = url("/hello"), .queue_timeout = IOLOOP_MSEC(100)},
                         tres_cb, &b, NULL),
                     0);
    while (!a.done || !b.done)
        tspin(loop, 20);
    assert_int_equal(b.error, -EAGAIN);
    assert_non_null(strstr(b.text, "queue timeout"));
    assert_int_equal(a.error, 0);
    tres_free(&a);
    tres_free(&b);
}

static void test_client_idle_limits(void **state)
{
    (void)state;
    assert_int_equal(
        ioloop_http_client_configure(
            loop, &(ioloop_http_client_options_t){.idle_timeout = IOLOOP_MSEC(100), .max_idle_per_host = 1}),
        0);
    tres_t r[3];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = url("/slow?ms=50")}, tres_cb, &r[i], NULL),
            0);
    twait(loop, r, 3);
    for (int i = 0; i < 3; i++)
        tres_free(&r[i]);
    tspin(loop, 20); /* the close callbacks of the two let go */
    ioloop_http_client_stats_t st = stats();
    assert_int_equal(st.connections_opened, 3);
    assert_int_equal(st.idle, 1); /* max_idle_per_host: the other two closed */
    assert_int_equal(st.open, 1);
    tspin(loop, 400); /* our idle_timeout, not the server's (an hour), closes the last one */
    st = stats();
    assert_int_equal(st.open, 0);
    assert_int_equal(st.stale_closed, 0);
}

static int setup_short_idle(void **state)
{
    idle_timeout = IOLOOP_MSEC(300);
    int rc = setup(state);
    idle_timeout = 0;
    return rc;
}

static void test_idle_connection_closed_by_server(void **state)
{
    (void)state;
    tres_t r;
    cget(loop, url("/hello"), &r);
    tres_free(&r);
    assert_int_equal(stats().idle, 1);
    /* the server's idle_connection_timeout (300 ms) closes it */
    tspin(loop, 600);
    ioloop_http_client_stats_t st = stats();
    assert_int_equal(st.idle, 0);
    assert_int_equal(st.stale_closed, 1);
    cget(loop, url("/hello"), &r);
    assert_int_equal(r.status, 200);
    assert_false(r.timing.reused);
    tres_free(&r);
    st = stats();
    assert_int_equal(st.connections_opened, 2);
    assert_int_equal(st.retries, 0);
}

static void test_bad_urls(void **state)
{
    (void)state;
    tres_t r;
    const char *invalid[] = {"http://",          "127.0.0.1/",           "http://a b/",  "http://host:99999/",
                             "http://host:0/",   "http://user@host/",    "http://[::1/", "http://host:8x/",
                             "http://host/\x01", "http://[fe80::1]x:80/"};
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
        if (ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = invalid[i]}, tres_cb, &r, NULL) != -EINVAL)
            fail_msg("%s accepted", invalid[i]);
    /* another scheme, the WebSocket client's included (the parser is shared, not its schemes) */
    const char *other[] = {"ftp://host/", "ws://host/", "wss://host/", "httpx://host/"};
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
        if (ioloop_http_fetch(loop, &(ioloop_http_client_request_t){.url = other[i]}, tres_cb, &r, NULL) !=
            -EPROTONOSUPPORT)
            fail_msg("%s not refused as a scheme", other[i]);
    assert_int_equal(ioloop_http_fetch(loop, NULL, tres_cb, &r, NULL), -EINVAL);
    /* a refused connection is an error naming it */
    int port = tu_free_port();
    char u[64];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/", port);
    cget(loop, u, &r);
    assert_int_equal(r.error, -ECONNREFUSED);
    assert_non_null(strstr(r.text, "connect"));
    assert_int_equal(r.status, 0);
    tres_free(&r);
}

static void loop_close_ends_fetches(ioloop_t *other);

static void test_loop_close_ends_fetches(void **state)
{
    (void)state;
    for (int stream_first = 0; stream_first <= 1; stream_first++) {
        ioloop_t *other = NULL;
        assert_int_equal(ioloop_new(NULL, &other), 0);
        if (stream_first) {
            /* a stream made before the first fetch: the loop's close then ends
             * the pool before the streams (its close hook is the newer) */
            int fds[2];
            tu_socketpair(fds);
            ioloop_stream_t *stream;
            assert_int_equal(ioloop_stream_new(other, fds[0], NULL, &stream), 0);
            close(fds[1]);
        }
        loop_close_ends_fetches(other);
    }
}

static void loop_close_ends_fetches(ioloop_t *other)
{
    tres_t r = {0}, idle = {0};
    /* one idle pooled connection and one fetch in flight when the loop closes */
    cfetch(other, &(ioloop_http_client_request_t){.url = url("/hello")}, &idle);
    tres_free(&idle);
    assert_int_equal(ioloop_http_fetch(other, &(ioloop_http_client_request_t){.url = url("/slow")}, tres_cb, &r, NULL),
                     0);
    tspin(other, 100);
    assert_false(r.done);
    assert_int_equal(ioloop_close(other, false), 0);
    assert_true(r.done);
    assert_int_equal(r.error, -ESHUTDOWN);
    tres_free(&r);
}

/* A queued fetch, a connecting one and a busy one when the loop closes: each ends once. */
static void test_loop_close_with_queue(void **state)
{
    (void)state;
    ioloop_t *other = NULL;
    assert_int_equal(ioloop_new(NULL, &other), 0);
    int fds[2];
    tu_socketpair(fds);
    ioloop_stream_t *stream;
    assert_int_equal(ioloop_stream_new(other, fds[0], NULL, &stream), 0);
    close(fds[1]);
    assert_int_equal(
        ioloop_http_client_configure(other, &(ioloop_http_client_options_t){.max_connections_per_host = 1}), 0);
    tres_t r[3];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            ioloop_http_fetch(other, &(ioloop_http_client_request_t){.url = url("/slow")}, tres_cb, &r[i], NULL), 0);
    tspin(other, 100);
    assert_int_equal(ioloop_close(other, false), 0);
    for (int i = 0; i < 3; i++) {
        assert_true(r[i].done);
        assert_int_equal(r[i].error, -ESHUTDOWN);
        tres_free(&r[i]);
    }
}

static void test_other_thread_is_refused(void **state)
{
    (void)state;
    /* the server's loop is running on its own thread: this thread is not its owner */
    tres_t r;
    assert_int_equal(
        ioloop_http_fetch(srv.loop, &(ioloop_http_client_request_t){.url = url("/hello")}, tres_cb, &r, NULL), -EPERM);
    ioloop_http_client_stats_t st;
    assert_int_equal(ioloop_http_client_get_stats(srv.loop, &st), -EPERM);
    assert_int_equal(ioloop_http_client_configure(srv.loop, &(ioloop_http_client_options_t){0}), -EPERM);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_get),
        T(test_header_lookup_is_case_insensitive),
        T(test_keep_alive_reuse),
        T(test_post_and_put_bodies),
        T(test_body_producer),
        T(test_head),
        T(test_redirects),
        T(test_redirect_drops_authorization_across_hosts),
        T(test_too_many_redirects),
        T(test_request_timeout),
        T(test_decompress),
        T(test_max_body_size),
        T(test_streaming_with_pause),
        T(test_cancel),
        T(test_cancel_from_callbacks),
        T(test_queue_per_host),
        T(test_client_idle_limits),
        cmocka_unit_test_setup_teardown(test_idle_connection_closed_by_server, setup_short_idle, teardown),
        T(test_bad_urls),
        T(test_loop_close_ends_fetches),
        T(test_loop_close_with_queue),
        T(test_other_thread_is_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
