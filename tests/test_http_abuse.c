/* test_http_abuse.c — handlers and peers that misbehave or race the server's
 * teardown: completions that run after ioloop_http_server_free (the documented
 * order join, listener_free, server_free, runtime_free), a late write through
 * a stale request pointer, a handler whose body disagrees with its own
 * Content-Length, and a client that resets right after an Expect: 100-continue
 * head. Each must leave the server serving other clients; the use-after-free
 * cases are caught by ASan (tools/test runs this suite under it).
 * Threading rule: as test_http_util.h (handlers on the loop thread, the test
 * on the main thread, atomics between them).
 */
#include "test_http_util.h"

#include <stdint.h>

/* Reads until EOF (1), a reset (-1) or ms without it (0); what arrived is in buf. */
static int read_to_eof(int fd, char *buf, size_t cap, size_t *len, int ms)
{
    int64_t end = tu_now_ns() + (int64_t)ms * 1000000;
    *len = 0;
    for (;;) {
        int left = (int)((end - tu_now_ns()) / 1000000);
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            return 0;
        ssize_t n = recv(fd, buf + *len, cap - 1 - *len, MSG_DONTWAIT);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return -1;
        }
        *len += (size_t)n;
        if (*len == cap - 1)
            return 0;
    }
    buf[*len] = '\0';
    return 1;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The handler stores its results after the call that let the client go on. */
static int wait_value(atomic_int *v, int want)
{
    for (int i = 0; i < 300 && atomic_load(v) != want; i++)
        tu_sleep_ms(10);
    return atomic_load(v);
}

static void expect_served(int port)
{
    tresp_t r;
    tcli_request(port, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok");
    tresp_free(&r);
}

static void up_gone_finish(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_finish(req);
}

/* ---- F2 A: a flush completion queued when the runtime stops -------------- */

static atomic_int flushed_calls, flushed_status, flushed_finish_rc;

static void flushed(ioloop_http_request_t *req, int status, void *arg)
{
    (void)arg;
    atomic_fetch_add(&flushed_calls, 1);
    atomic_store(&flushed_status, status);
    atomic_store(&flushed_finish_rc, ioloop_http_response_finish(req) + 1000);
}

static void write_flush_stop(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_http_response_write(req, "hello", 5), 0);
    assert_int_equal(ioloop_http_response_flush(req, flushed, NULL), 0); /* sent now: the completion is queued */
    ioloop_runtime_stop(ioloop_runtime_current());                       /* a plain, non-draining stop */
}

static void test_flush_done_after_server_free(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/", (ioloop_http_route_t){.get = write_flush_stop});
    tsrv_start(&t);
    atomic_store(&flushed_calls, 0);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(ioloop_runtime_join(t.rt), 0); /* the handler stopped the runtime */
    tsrv_stop_server(&t);                           /* frees the server: the completion is still queued */
    assert_int_equal(atomic_load(&flushed_calls), 0);
    tsrv_free_runtime(&t); /* closing the loop runs it: on valid memory, once */
    assert_int_equal(atomic_load(&flushed_calls), 1);
    assert_int_equal(atomic_load(&flushed_status), 0);
    assert_int_equal(atomic_load(&flushed_finish_rc), 1000);
    close(fd);
}

/* ---- F2 B: an executor job whose client went away finishes after server_free */

static atomic_int job_started, job_done_calls, job_finish_rc;

static void *slow_job(void *arg, int *status)
{
    (void)arg;
    tu_sleep_ms(200);
    *status = 0;
    return NULL;
}

static void job_done(ioloop_future_t *f, void *arg)
{
    ioloop_http_request_t *req = arg;
    atomic_fetch_add(&job_done_calls, 1);
    atomic_store(&job_finish_rc, ioloop_http_response_finish(req) + 1000);
    ioloop_future_unref(f);
}

static void offload(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_future_t *f = NULL;
    assert_int_equal(ioloop_run_in_executor(ioloop_http_request_loop(req), slow_job, NULL, &f), 0);
    assert_non_null(f);
    assert_int_equal(ioloop_future_on_done(f, job_done, req), 0);
    atomic_store(&job_started, 1);
}

static void test_executor_finish_after_server_free(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/job", (ioloop_http_route_t){.get = offload});
    tsrv_start(&t);
    atomic_store(&job_started, 0);
    atomic_store(&job_done_calls, 0);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "GET /job HTTP/1.1\r\nHost: a\r\n\r\n");
    for (int i = 0; i < 500 && !atomic_load(&job_started); i++)
        tu_sleep_ms(10);
    assert_int_equal(atomic_load(&job_started), 1);
    close(fd); /* the request is orphaned; the drain counts connections only */
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, 0), 0);
    assert_int_equal(ioloop_runtime_join(t.rt), 0); /* drained while the job runs */
    tsrv_stop_server(&t);
    assert_int_equal(atomic_load(&job_done_calls), 0);
    tsrv_free_runtime(&t); /* the executor completes the job, the loop's close runs job_done */
    assert_int_equal(atomic_load(&job_done_calls), 1);
    assert_int_equal(atomic_load(&job_finish_rc), 1000);
}

/* server_free with a connection in every state a request can be in: a head
 * half-read (the request never reached the application), a request held by
 * its handler, and an idle keep-alive connection. */
static void hold_forever(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_request_on_close(req, up_gone_finish, NULL);
}

static void test_server_free_with_partial_heads(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/ok", (ioloop_http_route_t){.get = th_ok});
    tsrv_route(&t, "/hold", (ioloop_http_route_t){.get = hold_forever});
    tsrv_start(&t);
    int partial[3], held = tcli_connect(t.port), idle = tcli_connect(t.port);
    for (int i = 0; i < 3; i++) {
        partial[i] = tcli_connect(t.port);
        tcli_send(partial[i], "GET /ok HTTP/1.1\r\nHo");
    }
    tcli_send(held, "GET /hold HTTP/1.1\r\nHost: a\r\n\r\n");
    tcli_send(idle, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(idle, "ok");
    /* Accepted-connection count: get_stats is the any-thread reader
     * (ioloop_http_server_connections belongs to the loop's thread). */
    ioloop_http_server_stats_t stats = {0};
    for (int i = 0; i < 500 && (ioloop_http_server_get_stats(t.server, &stats), stats.connections < 5); i++)
        tu_sleep_ms(10);
    tu_sleep_ms(50); /* the partial heads were read (nothing to wait on from here) */
    tsrv_stop(&t);
    for (int i = 0; i < 3; i++)
        close(partial[i]);
    close(held);
    close(idle);
}

/* ---- F5: a late write through a stale pointer ----------------------------- */

static _Atomic(ioloop_http_request_t *) old_a, held_b;
static atomic_int late_write_rc, late_flush_rc, late_status_rc, late_header_rc, late_finish_rc, late_done;

static void answer_a(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    atomic_store(&old_a, req);
    ioloop_http_response_send(req, 200, "text/plain", "A", 1);
}

static void hold_b(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    atomic_store(&held_b, req);
}

static void late(ioloop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
    ioloop_http_request_t *a = atomic_load(&old_a);
    atomic_store(&late_write_rc, ioloop_http_response_write(a, "LEAKED-FROM-A ", 14));
    atomic_store(&late_flush_rc, ioloop_http_response_flush(a, NULL, NULL));
    atomic_store(&late_status_rc, ioloop_http_response_status(a, 500));
    atomic_store(&late_header_rc, ioloop_http_response_header(a, "X-Leak", "1"));
    atomic_store(&late_finish_rc, ioloop_http_response_finish(a));
    assert_null(ioloop_http_request_path(a));
    assert_null(ioloop_http_request_header(a, "Host"));
    atomic_store(&late_done, 1);
    ioloop_http_response_send(atomic_load(&held_b), 200, "text/plain", "B", 1);
}

static void test_write_after_finish_is_refused(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/a", (ioloop_http_route_t){.get = answer_a});
    tsrv_route(&t, "/b", (ioloop_http_route_t){.get = hold_b});
    tsrv_route(&t, "/ok", (ioloop_http_route_t){.get = th_ok});
    tsrv_start(&t);
    atomic_store(&held_b, NULL);
    atomic_store(&late_done, 0);
    int fa = tcli_connect(t.port), fb = tcli_connect(t.port);
    tcli_send(fa, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    TCLI_EXPECT_BODY(fa, "A");
    tcli_send(fb, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    for (int i = 0; i < 500 && !atomic_load(&held_b); i++)
        tu_sleep_ms(10);
    assert_non_null(atomic_load(&held_b));
    assert_int_equal(ioloop_add_callback(t.loop, late, NULL), 0);
    TCLI_EXPECT_BODY(fb, "B"); /* and not "LEAKED-FROM-A B" */
    assert_int_equal(atomic_load(&late_done), 1);
    assert_int_equal(atomic_load(&late_write_rc), -EALREADY);
    assert_int_equal(atomic_load(&late_flush_rc), -EALREADY);
    assert_int_equal(atomic_load(&late_status_rc), -EALREADY);
    assert_int_equal(atomic_load(&late_header_rc), -EALREADY);
    assert_int_equal(atomic_load(&late_finish_rc), -EALREADY);
    /* both connections (and new ones) go on being served */
    tcli_send(fa, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
    TCLI_EXPECT_BODY(fa, "ok");
    tcli_send(fb, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
    TCLI_EXPECT_BODY(fb, "ok");
    expect_served(t.port);
    close(fa);
    close(fb);
    tsrv_stop(&t);
}

/* A burst of pipelined requests answered in one loop iteration: no request
 * object is handed out twice in it, so a stale pointer used in the same
 * iteration as its finish can never be another live request. */
static ioloop_http_request_t *burst_first;
static atomic_int burst_n, burst_reused;

static void burst(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    if (atomic_fetch_add(&burst_n, 1) == 0)
        burst_first = req;
    else if (req == burst_first)
        atomic_fetch_add(&burst_reused, 1);
    ioloop_http_response_send(req, 200, "text/plain", "p", 1);
}

static void test_no_reuse_within_an_iteration(void **state)
{
    tsrv_t *t = *state;
    enum { N = 100 };
    static const char one[] = "GET /burst HTTP/1.1\r\nHost: a\r\n\r\n";
    char *all = malloc(N * (sizeof(one) - 1) + 1);
    assert_non_null(all);
    for (int i = 0; i < N; i++)
        memcpy(all + i * (sizeof(one) - 1), one, sizeof(one) - 1);
    atomic_store(&burst_n, 0);
    atomic_store(&burst_reused, 0);
    int fd = tcli_connect(t->port);
    tcli_sendn(fd, all, N * (sizeof(one) - 1));
    free(all);
    for (int i = 0; i < N; i++)
        TCLI_EXPECT_BODY(fd, "p");
    close(fd);
    assert_int_equal(atomic_load(&burst_n), N);
    assert_int_equal(atomic_load(&burst_reused), 0);
}

/* ---- F6: a body that disagrees with the handler's Content-Length ----------- */

static atomic_int cl_write_rc, cl_finish_rc;

static void cl_overrun(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_http_response_header(req, "Content-Length", "3"), 0);
    atomic_store(&cl_write_rc, ioloop_http_response_write(req, "hello", 5));
    atomic_store(&cl_finish_rc, ioloop_http_response_finish(req));
}

static void cl_short(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_http_response_header(req, "Content-Length", "5"), 0);
    assert_int_equal(ioloop_http_response_write(req, "abc", 3), 0);
    assert_int_equal(ioloop_http_response_flush(req, NULL, NULL), 0);
    atomic_store(&cl_finish_rc, ioloop_http_response_finish(req));
}

static void cl_exact(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_http_response_header(req, "Content-Length", "5"), 0);
    assert_int_equal(ioloop_http_response_write(req, "ab", 2), 0);
    assert_int_equal(ioloop_http_response_flush(req, NULL, NULL), 0);
    assert_int_equal(ioloop_http_response_write(req, "cde", 3), 0);
    atomic_store(&cl_finish_rc, ioloop_http_response_finish(req));
}

/* Two pipelined requests to path: the first response is the only one on the
 * wire (never a second parsed out of its bytes), then the connection closes. */
static void expect_one_response_then_close(int port, const char *path, const char *body)
{
    char req[256];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: a\r\n\r\nGET %s HTTP/1.1\r\nHost: a\r\n\r\n", path, path);
    int fd = tcli_connect(port);
    tcli_send(fd, req);
    char buf[8192];
    size_t len;
    assert_int_equal(read_to_eof(fd, buf, sizeof(buf), &len, 3000), 1);
    assert_int_equal(count_of(buf, "HTTP/1.1 "), 1);
    const char *b = strstr(buf, "\r\n\r\n");
    assert_non_null(b);
    assert_string_equal(b + 4, body);
    close(fd);
}

static void test_content_length_overrun_closes(void **state)
{
    tsrv_t *t = *state;
    atomic_store(&cl_finish_rc, 1);
    expect_one_response_then_close(t->port, "/cl-overrun", "");
    assert_int_equal(atomic_load(&cl_write_rc), -EMSGSIZE);
    assert_int_equal(wait_value(&cl_finish_rc, -EPROTO), -EPROTO);
    expect_served(t->port);
}

static void test_content_length_short_closes(void **state)
{
    tsrv_t *t = *state;
    atomic_store(&cl_finish_rc, 1);
    expect_one_response_then_close(t->port, "/cl-short", "abc");
    assert_int_equal(wait_value(&cl_finish_rc, -EPROTO), -EPROTO);
    expect_served(t->port);
}

static void test_content_length_exact_keeps_alive(void **state)
{
    tsrv_t *t = *state;
    atomic_store(&cl_finish_rc, 1);
    int fd = tcli_connect(t->port);
    tcli_send(fd, "GET /cl-exact HTTP/1.1\r\nHost: a\r\n\r\nGET /cl-exact HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "abcde");
    assert_int_equal(wait_value(&cl_finish_rc, 0), 0);
    TCLI_EXPECT_BODY(fd, "abcde");
    close(fd);
}

/* ---- defect 12: Expect: 100-continue, then the client resets -------------- */

static atomic_int prepare_calls, prepare_bad, gate_open, gate_waiting;

static void up_gone(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_finish(req);
}

static void up_prepare(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    atomic_fetch_add(&prepare_calls, 1);
    /* a request already closed and recycled under us would show it here */
    if (ioloop_http_request_closed(req) || ioloop_http_response_header(req, "X-Prepared", "1") != 0 ||
        ioloop_http_request_path(req) == NULL)
        atomic_fetch_add(&prepare_bad, 1);
    ioloop_http_request_on_close(req, up_gone, NULL);
}

static int up_body(ioloop_http_request_t *req, const char *data, size_t len, void *arg)
{
    (void)req, (void)data, (void)len, (void)arg;
    return 0;
}

static void up_post(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "text/plain", "up", 2);
}

/* Holds the loop until the client has sent its head and reset: the server
 * then reads a head whose connection is already gone. */
static void gate(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    atomic_store(&gate_waiting, 1);
    for (int i = 0; i < 300 && !atomic_load(&gate_open); i++)
        tu_sleep_ms(10);
}

static void test_expect_continue_client_reset(void **state)
{
    tsrv_t *t = *state;
    atomic_store(&prepare_calls, 0);
    atomic_store(&prepare_bad, 0);
    for (int round = 0; round < 5; round++) {
        atomic_store(&gate_open, 0);
        atomic_store(&gate_waiting, 0);
        int fd = tcli_connect(t->port);
        assert_int_equal(ioloop_add_callback(t->loop, gate, NULL), 0);
        for (int i = 0; i < 300 && !atomic_load(&gate_waiting); i++)
            tu_sleep_ms(10);
        tcli_send(fd, "POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(fd); /* RST: the 100 Continue cannot be sent */
        atomic_store(&gate_open, 1);
        expect_served(t->port);
    }
    assert_int_equal(atomic_load(&prepare_calls), 5);
    assert_int_equal(atomic_load(&prepare_bad), 0);
    /* a well-behaved upload still gets its 100 first */
    int fd = tcli_connect(t->port);
    tcli_send(fd, "POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, false, true), 0);
    assert_int_equal(r.status, 100);
    tresp_free(&r);
    tcli_send(fd, "abcd");
    TCLI_EXPECT_BODY(fd, "up");
    close(fd);
}

/* Defect 15: a response finished in prepare, before the body arrived: the
 * server closes after it (the body is never read), so it says so. */
static void early_prepare(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 401, "text/plain", "no", 2);
}

static void test_early_answer_says_close(void **state)
{
    tsrv_t *t = *state;
    int fd = tcli_connect(t->port);
    tcli_send(fd, "POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 401);
    assert_true(tresp_has(&r, "Connection", "close"));
    tresp_free(&r);
    assert_int_not_equal(tcli_closed(fd, 3000, NULL), 0);
    close(fd);
    expect_served(t->port);
}

/* No 100 Continue for a request that gets 404 or 405: its body is dropped. */
static void test_no_continue_before_404_405(void **state)
{
    tsrv_t *t = *state;
    const char *reqs[] = {
        "POST /nowhere HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /ok HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd",
    };
    const int want[] = {404, 405};
    for (int i = 0; i < 2; i++) {
        int fd = tcli_connect(t->port);
        tcli_send(fd, reqs[i]);
        tresp_t r;
        assert_int_equal(tcli_response_ex(fd, &r, false, true), 0);
        assert_int_equal(r.status, want[i]); /* the first response: no 100 before it */
        tresp_free(&r);
        close(fd);
    }
    expect_served(t->port);
}

static int setup(void **state)
{
    static tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/ok", (ioloop_http_route_t){.get = th_ok});
    tsrv_route(&t, "/burst", (ioloop_http_route_t){.get = burst});
    tsrv_route(&t, "/early", (ioloop_http_route_t){.post = up_post, .prepare = early_prepare, .on_body = up_body});
    tsrv_route(&t, "/cl-overrun", (ioloop_http_route_t){.get = cl_overrun});
    tsrv_route(&t, "/cl-short", (ioloop_http_route_t){.get = cl_short});
    tsrv_route(&t, "/cl-exact", (ioloop_http_route_t){.get = cl_exact});
    tsrv_route(&t, "/up", (ioloop_http_route_t){.post = up_post, .prepare = up_prepare, .on_body = up_body});
    tsrv_start(&t);
    *state = &t;
    return 0;
}

static int teardown(void **state)
{
    tsrv_stop(*state);
    return 0;
}

int main(void)
{
    const struct CMUnitTest own_server[] = {
        cmocka_unit_test(test_flush_done_after_server_free),
        cmocka_unit_test(test_executor_finish_after_server_free),
        cmocka_unit_test(test_write_after_finish_is_refused),
        cmocka_unit_test(test_server_free_with_partial_heads),
    };
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_content_length_overrun_closes),    cmocka_unit_test(test_content_length_short_closes),
        cmocka_unit_test(test_content_length_exact_keeps_alive), cmocka_unit_test(test_expect_continue_client_reset),
        cmocka_unit_test(test_no_continue_before_404_405),       cmocka_unit_test(test_no_reuse_within_an_iteration),
        cmocka_unit_test(test_early_answer_says_close),
    };
    int failed = cmocka_run_group_tests_name("own server", own_server, NULL, NULL);
    return failed + cmocka_run_group_tests_name("shared server", shared, setup, teardown);
}
