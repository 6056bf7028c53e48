/* test_http_client_parse.c — the HTTP client's response parser alone
 * (http/client_parse.c, compiled into this suite): framing by Content-Length,
 * chunked and close; HEAD/204/304 without a body; 1xx skipped; everything a
 * strict client refuses (malformed status lines, bad chunk sizes, duplicate or
 * conflicting lengths, header floods, oversized heads, control characters) is
 * an error naming the problem; a cut response says where it was cut; a paused
 * body resumes where it stopped, whole and in order, also fed a byte at a time.
 * Threading rule: the test's thread only (no loop).
 */
#include "client_parse.h"
#include "ioloop/http_client.h"
#include "test_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char body[65536];
    size_t body_len;
    int heads, completes;
    bool pause_each; /* pause after every body piece */
} sink_t;

static int s_head(ioloop__http_resp_t *rp, void *arg)
{
    (void)rp;
    ((sink_t *)arg)->heads++;
    return 0;
}

static int s_body(ioloop__http_resp_t *rp, const char *data, size_t len, void *arg)
{
    (void)rp;
    sink_t *s = arg;
    assert_true(s->body_len + len <= sizeof(s->body));
    memcpy(s->body + s->body_len, data, len);
    s->body_len += len;
    return s->pause_each ? IOLOOP_HTTP_PAUSE : 0;
}

static void s_complete(ioloop__http_resp_t *rp, void *arg)
{
    (void)rp;
    ((sink_t *)arg)->completes++;
}

static const ioloop__http_resp_callbacks_t cbs = {s_head, s_body, s_complete};

/* Feeds all of text (in pieces of `step` bytes, 0: at once); returns the last
 * feed result (bytes used by it, or the error) and the total used in *used. */
static ssize_t feed(ioloop__http_resp_t *rp, const char *text, size_t len, size_t step, size_t *used)
{
    size_t off = 0;
    ssize_t n = 0;
    while (off < len) {
        size_t piece = step && len - off > step ? step : len - off;
        n = ioloop__http_resp_feed(rp, text + off, piece);
        if (n < 0)
            break;
        if (rp->paused)
            ioloop__http_resp_resume(rp);
        off += (size_t)n;
        if ((size_t)n < piece && rp->complete)
            break;
        if (n == 0 && !rp->paused)
            break;
    }
    if (used)
        *used = off;
    return n;
}

static int parse(const char *text, bool head, size_t step, sink_t *s, ioloop__http_resp_t *rp)
{
    memset(s, 0, sizeof(*s));
    ioloop__http_resp_init(rp, 0, 0, &cbs, s);
    ioloop__http_resp_reset(rp, head);
    ssize_t n = feed(rp, text, strlen(text), step, NULL);
    return n < 0 ? (int)n : 0;
}

static void test_content_length(void **state)
{
    (void)state;
    sink_t s;
    ioloop__http_resp_t rp;
    for (size_t step = 0; step <= 1; step++) { /* at once, and a byte at a time */
        assert_int_equal(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  spaced  \r\n\r\nhello", false, step, &s, &rp), 0);
        assert_true(rp.complete);
        assert_int_equal(rp.status, 200);
        assert_string_equal(ioloop__http_resp_reason(&rp), "OK");
        assert_string_equal(ioloop__http_resp_header(&rp, "x-a"), "spaced");
        assert_string_equal(ioloop__http_resp_header(&rp, "CONTENT-LENGTH"), "5");
        assert_null(ioloop__http_resp_header(&rp, "x-b"));
        assert_int_equal(s.body_len, 5);
        assert_memory_equal(s.body, "hello", 5);
        assert_int_equal(s.heads, 1);
        assert_int_equal(s.completes, 1);
        assert_true(ioloop__http_resp_reusable(&rp));
        ioloop__http_resp_free(&rp);
    }
}

static void test_chunked_and_trailing_bytes(void **state)
{
    (void)state;
    sink_t s;
    ioloop__http_resp_t rp;
    const char *text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nEXTRA";
    for (size_t step = 0; step <= 1; step++) {
        memset(&s, 0, sizeof(s));
        ioloop__http_resp_init(&rp, 0, 0, &cbs, &s);
        ioloop__http_resp_reset(&rp, false);
        size_t used = 0;
        ssize_t n = feed(&rp, text, strlen(text), step, &used);
        assert_true(n >= 0);
        assert_true(rp.complete);
        assert_true(rp.chunked);
        /* the bytes after the response are not used: they belong to no request */
        assert_int_equal(used, strlen(text) - 5);
        assert_int_equal(s.body_len, 19);
        assert_memory_equal(s.body, "abc0123456789abcdef", 19);
        assert_null(ioloop__http_resp_header(&rp, "trailer"));
        ioloop__http_resp_free(&rp);
    }
}

static void test_close_delimited(void **state)
{
    (void)state;
    sink_t s;
    ioloop__http_resp_t rp;
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", false, 0, &s, &rp), 0);
    assert_false(rp.complete);
    assert_int_equal(ioloop__http_resp_eof(&rp), 0);
    assert_true(rp.complete);
    assert_false(ioloop__http_resp_reusable(&rp)); /* the close was the framing */
    assert_int_equal(s.body_len, 13);
    ioloop__http_resp_free(&rp);
}

static void test_no_body_responses(void **state)
{
    (void)state;
    sink_t s;
    ioloop__http_resp_t rp;
    /* HEAD: a Content-Length describes the GET's body, none follows */
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true, 0, &s, &rp), 0);
    assert_true(rp.complete);
    assert_int_equal(s.body_len, 0);
    assert_true(ioloop__http_resp_reusable(&rp));
    ioloop__http_resp_free(&rp);
    const char *nobody[] = {"HTTP/1.1 204 No Content\r\n\r\n",
                            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 100\r\n\r\n"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(parse(nobody[i], false, 0, &s, &rp), 0);
        assert_true(rp.complete);
        assert_int_equal(s.body_len, 0);
        ioloop__http_resp_free(&rp);
    }
}

static void test_informational_skipped(void **state)
{
    (void)state;
    sink_t s;
    ioloop__http_resp_t rp;
    assert_int_equal(parse("HTTP/1.1 100 Continue\r\nX-Info: 1\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                           "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
                           false, 0, &s, &rp),
                     0);
    assert_true(rp.complete);
    assert_int_equal(rp.status, 201);
    assert_int_equal(rp.nheaders, 1); /* only the final head's */
    assert_null(ioloop__http_resp_header(&rp, "x-info"));
    assert_int_equal(s.heads, 1);
    assert_int_equal(s.completes, 1);
    assert_memory_equal(s.body, "ok", 2);
    ioloop__http_resp_free(&rp);
    /* a 101 to a request that asked for no upgrade */
    assert_int_equal(parse("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                           false, 0, &s, &rp),
                     -EPROTO);
    assert_non_null(strstr(rp.error_text, "101"));
    ioloop__http_resp_free(&rp);
}

static void expect_malformed(const char *text, int err, const char *words)
{
    sink_t s;
    ioloop__http_resp_t rp;
    for (size_t step = 0; step <= 1; step++) {
        int rc = parse(text, false, step, &s, &rp);
        if (rc == 0 && !rp.complete)
            rc = ioloop__http_resp_eof(&rp);
        if (rc != err || (words && !strstr(rp.error_text, words)))
            fail_msg("%s (step %zu): got %d \"%s\", want %d \"%s\"", text, step, rc, rp.error_text, err,
                     words ? words : "");
        assert_int_equal(s.completes, 0);
        /* an error sticks */
        assert_int_equal(ioloop__http_resp_feed(&rp, "x", 1), err);
        ioloop__http_resp_free(&rp);
    }
}

static void test_malformed_status_lines(void **state)
{
    (void)state;
    expect_malformed("HTTX/1.1 200 OK\r\n\r\n", -EPROTO, "malformed response");
    expect_malformed("HTTP/1.1 2000 OK\r\n\r\n", -EPROTO, "malformed response");
    expect_malformed("HTTP/1.1 OK\r\n\r\n", -EPROTO, "malformed response");
    expect_malformed("HTTP/2.0 200 OK\r\n\r\n", -EPROTO, "malformed response");
    expect_malformed("garbage\r\n\r\n", -EPROTO, "malformed response");
    expect_malformed("HTTP/1.1 200 OK\nContent-Length: 0\n\n\n", -EPROTO, "malformed response");
    expect_malformed("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", -EPROTO, "malformed response"); /* TLS to http */
}

static void test_bad_framing(void **state)
{
    (void)state;
    expect_malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", -EPROTO, "chunk");
    expect_malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", -EPROTO, NULL);
    /* llhttp 8 takes any two bytes after the data for its CRLF: we do not */
    expect_malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n", -EPROTO, "CRLF");
    expect_malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\rX0\r\n\r\n", -EPROTO, "CRLF");
    expect_malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", -EPROTO, NULL);
    expect_malformed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", -EPROTO,
                     "Content-Length");
    expect_malformed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", -EPROTO,
                     "Content-Length");
    expect_malformed("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", -EPROTO, NULL);
    expect_malformed("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", -EPROTO, NULL);
    expect_malformed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                     -EPROTO, NULL);
    expect_malformed("HTTP/1.1 200 OK\r\nX-A: a\x01z\r\nContent-Length: 0\r\n\r\n", -EPROTO, NULL);
    expect_malformed("HTTP/1.1 200 OK\r\nX(A): a\r\nContent-Length: 0\r\n\r\n", -EPROTO, NULL);
    expect_malformed("HTTP/1.1 200 OK\r\n Folded: a\r\nContent-Length: 0\r\n\r\n", -EPROTO, NULL);
}

static void test_limits(void **state)
{
    (void)state;
    /* a header flood: more lines than max_headers */
    size_t cap = 400 * 16 + 64, off = 0;
    char *flood = malloc(cap);
    assert_non_null(flood);
    off += (size_t)snprintf(flood + off, cap - off, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 300; i++)
        off += (size_t)snprintf(flood + off, cap - off, "X-%d: v\r\n", i);
    snprintf(flood + off, cap - off, "\r\n");
    expect_malformed(flood, -E2BIG, "lines");
    free(flood);
    /* a head over max_header_size: one huge value, and many small pieces */
    size_t big = 70 * 1024;
    char *huge = malloc(big + 64);
    assert_non_null(huge);
    int n = snprintf(huge, 64, "HTTP/1.1 200 OK\r\nX-Big: ");
    memset(huge + n, 'a', big);
    strcpy(huge + n + big, "\r\n\r\n");
    expect_malformed(huge, -E2BIG, "head");
    /* an endless status line */
    memcpy(huge, "HTTP/1.1 200 ", 13);
    memset(huge + 13, 'r', big);
    huge[13 + big] = '\0';
    expect_malformed(huge, -E2BIG, "head");
    free(huge);
    /* endless trailers after a chunked body: bounded like a head */
    size_t tcap = 80 * 1024 + 128, toff = 0;
    char *trailers = malloc(tcap);
    assert_non_null(trailers);
    toff += (size_t)snprintf(trailers, tcap, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n");
    while (toff + 32 < tcap - 64)
        toff += (size_t)snprintf(trailers + toff, tcap - toff, "X-T: %zu\r\n", toff);
    snprintf(trailers + toff, tcap - toff, "\r\n");
    expect_malformed(trailers, -E2BIG, "trailers");
    free(trailers);
    /* a smaller limit is obeyed */
    sink_t s = {0};
    ioloop__http_resp_t rp;
    ioloop__http_resp_init(&rp, 64, 2, &cbs, &s);
    ioloop__http_resp_reset(&rp, false);
    const char *three = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_int_equal(ioloop__http_resp_feed(&rp, three, strlen(three)), -E2BIG);
    ioloop__http_resp_free(&rp);
}

static void test_cut_responses(void **state)
{
    (void)state;
    sink_t s;
    ioloop__http_resp_t rp;
    ioloop__http_resp_init(&rp, 0, 0, &cbs, &s);
    ioloop__http_resp_reset(&rp, false);
    assert_int_equal(ioloop__http_resp_eof(&rp), -ECONNRESET);
    assert_non_null(strstr(rp.error_text, "before the response"));
    ioloop__http_resp_free(&rp);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Le", false, 0, &s, &rp), 0);
    assert_int_equal(ioloop__http_resp_eof(&rp), -ECONNRESET);
    assert_non_null(strstr(rp.error_text, "head"));
    ioloop__http_resp_free(&rp);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false, 0, &s, &rp), 0);
    assert_int_equal(ioloop__http_resp_eof(&rp), -ECONNRESET);
    assert_non_null(strstr(rp.error_text, "mid-body"));
    ioloop__http_resp_free(&rp);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", false, 0, &s, &rp), 0);
    assert_int_equal(ioloop__http_resp_eof(&rp), -ECONNRESET);
    ioloop__http_resp_free(&rp);
}

static void test_keep_alive_rules(void **state)
{
    (void)state;
    sink_t s;
    ioloop__http_resp_t rp;
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false, 0, &s, &rp), 0);
    assert_false(ioloop__http_resp_reusable(&rp));
    ioloop__http_resp_free(&rp);
    assert_int_equal(parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, 0, &s, &rp), 0);
    assert_false(ioloop__http_resp_reusable(&rp));
    ioloop__http_resp_free(&rp);
    assert_int_equal(parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", false, 0, &s, &rp),
                     0);
    assert_true(ioloop__http_resp_reusable(&rp));
    ioloop__http_resp_free(&rp);
}

static void test_pause_resumes_in_order(void **state)
{
    (void)state;
    sink_t s = {.pause_each = true};
    ioloop__http_resp_t rp;
    ioloop__http_resp_init(&rp, 0, 0, &cbs, &s);
    ioloop__http_resp_reset(&rp, false);
    const char *text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    size_t len = strlen(text), off = 0;
    int pauses = 0;
    while (!rp.complete) {
        ssize_t n = ioloop__http_resp_feed(&rp, text + off, len - off);
        assert_true(n >= 0);
        off += (size_t)n;
        if (rp.paused) {
            pauses++;
            /* paused: feeding does nothing until resumed */
            assert_int_equal(ioloop__http_resp_feed(&rp, text + off, len - off), 0);
            ioloop__http_resp_resume(&rp);
        }
    }
    assert_int_equal(pauses, 2);
    assert_int_equal(off, len);
    assert_int_equal(s.body_len, 5);
    assert_memory_equal(s.body, "abcde", 5);
    /* paused on the last body byte: the message ends on a feed of nothing */
    s.body_len = 0;
    ioloop__http_resp_reset(&rp, false);
    const char *cl = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_int_equal(ioloop__http_resp_feed(&rp, cl, strlen(cl)), (ssize_t)strlen(cl));
    assert_true(rp.paused);
    assert_false(rp.complete);
    ioloop__http_resp_resume(&rp);
    assert_int_equal(ioloop__http_resp_feed(&rp, "", 0), 0);
    assert_true(rp.complete);
    assert_true(ioloop__http_resp_reusable(&rp));
    /* the parser is reused for the next response on the connection */
    s.pause_each = false;
    s.body_len = 0;
    ioloop__http_resp_reset(&rp, false);
    const char *next = "HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx";
    assert_int_equal(ioloop__http_resp_feed(&rp, next, strlen(next)), (ssize_t)strlen(next));
    assert_true(rp.complete);
    assert_int_equal(rp.status, 404);
    assert_string_equal(ioloop__http_resp_reason(&rp), "Not Found");
    ioloop__http_resp_free(&rp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_chunked_and_trailing_bytes),
        cmocka_unit_test(test_close_delimited),
        cmocka_unit_test(test_no_body_responses),
        cmocka_unit_test(test_informational_skipped),
        cmocka_unit_test(test_malformed_status_lines),
        cmocka_unit_test(test_bad_framing),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_cut_responses),
        cmocka_unit_test(test_keep_alive_rules),
        cmocka_unit_test(test_pause_resumes_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
