/* fuzz_http_client_parse.c — libFuzzer target: the HTTP client's response
 * parser (http/client_parse.c: llhttp in response mode and its checks), fed
 * as a connection would: responses back to back, in slices.
 *
 * Threading rule: the fuzzer's thread; the parser touches no loop.
 *
 * Input: the first byte's low bit says the request was HEAD, its other bits
 * the slice size (0: all at once); the rest is what the server sent, then the
 * peer closes (eof). Checks beyond the sanitizers: the head's strings are
 * NUL-terminated inside the parser's buffer; no body byte for HEAD, 1xx, 204
 * or 304; a Content-Length body is never longer than the length, and exactly
 * as long when complete; feed never claims more than it was given, and an
 * error stays (every later feed returns it).
 */
#define _GNU_SOURCE
#include "client_parse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_http_client_parse: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

typedef struct {
    bool head_request;
    uint64_t body; /* body bytes of the current response */
    int completed;
} state_t;

static volatile size_t sink;

static void check_str(const ioloop__http_resp_t *rp, uint32_t off)
{
    FUZZ_CHECK(off < rp->cap);
    FUZZ_CHECK(memchr(rp->buf + off, '\0', rp->cap - off) != NULL);
    sink += strlen(rp->buf + off);
}

static bool bodiless(const ioloop__http_resp_t *rp, const state_t *st)
{
    return st->head_request || (rp->status >= 100 && rp->status < 200) || rp->status == 204 || rp->status == 304;
}

static int on_head(ioloop__http_resp_t *rp, void *arg)
{
    (void)arg;
    FUZZ_CHECK(rp->status >= 100 && rp->status <= 999);
    FUZZ_CHECK(rp->nheaders >= 0 && rp->nheaders <= 256);
    const char *reason = ioloop__http_resp_reason(rp);
    if (reason)
        sink += strlen(reason);
    for (int i = 0; i < rp->nheaders; i++) {
        check_str(rp, rp->headers[i].name_off);
        check_str(rp, rp->headers[i].value_off);
    }
    const char *cl = ioloop__http_resp_header(rp, "content-length");
    if (cl)
        sink += strlen(cl);
    sink += ioloop__http_resp_reusable(rp);
    return 0;
}

static int on_body(ioloop__http_resp_t *rp, const char *data, size_t len, void *arg)
{
    state_t *st = arg;
    FUZZ_CHECK(!bodiless(rp, st));
    FUZZ_CHECK(len > 0);
    sink += (unsigned char)data[0] + (unsigned char)data[len - 1];
    st->body += len;
    if (rp->content_length >= 0 && !rp->chunked)
        FUZZ_CHECK(st->body <= (uint64_t)rp->content_length);
    return 0;
}

static void on_complete(ioloop__http_resp_t *rp, void *arg)
{
    state_t *st = arg;
    if (rp->content_length >= 0 && !rp->chunked && !bodiless(rp, st))
        FUZZ_CHECK(st->body == (uint64_t)rp->content_length);
    st->completed++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ioloop__http_resp_callbacks_t cbs = {
        .on_head = on_head, .on_body = on_body, .on_complete = on_complete};
    if (size < 1)
        return 0;
    state_t st = {.head_request = data[0] & 1};
    size_t slice = data[0] >> 1;
    const char *p = (const char *)data + 1;
    size_t left = size - 1;
    ioloop__http_resp_t rp;
    ioloop__http_resp_init(&rp, 4096, 32, &cbs, &st);
    ioloop__http_resp_reset(&rp, st.head_request);
    while (left > 0) {
        size_t len = slice && slice < left ? slice : left;
        ssize_t n = ioloop__http_resp_feed(&rp, p, len);
        if (n < 0) {
            FUZZ_CHECK(ioloop__http_resp_feed(&rp, p, len) == n); /* the error stays */
            break;
        }
        FUZZ_CHECK((size_t)n <= len);
        if (rp.complete) {
            st.head_request = false; /* the next response answers a GET */
            st.body = 0;
            ioloop__http_resp_reset(&rp, false);
        } else if (n == 0) {
            break; /* nothing used and nothing completed: a stuck parser would loop here */
        }
        p += n;
        left -= (size_t)n;
    }
    int eof = ioloop__http_resp_eof(&rp);
    FUZZ_CHECK(eof == 0 || eof < 0);
    ioloop__http_resp_free(&rp);
    return 0;
}
