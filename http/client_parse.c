/* client_parse.c — the HTTP client's response parser (client_parse.h):
 * llhttp in HTTP_RESPONSE mode, strict (no lenient flag), plus what llhttp
 * leaves to us, as http/parse.c does for requests: a field name must be a
 * token, a field value holds no control character, the head is bounded in
 * bytes and lines, HTTP/1.x only, 1xx heads are skipped and a 101 we never
 * asked for is refused. Duplicate Content-Length and Content-Length with
 * Transfer-Encoding are llhttp's own errors.
 *
 * Threading rule: none of its own (a parser is one connection's, on its loop).
 *
 * The head is copied as it arrives into one buffer that the parser keeps
 * across responses (a pooled connection reuses it: no allocation per
 * response once warm): "reason\0name\0value\0name\0value\0...".
 */
#define _GNU_SOURCE
#include "client_parse.h"

#include "ioloop/http_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_HEADER_SIZE ((size_t)64 * 1024)
#define DEFAULT_MAX_HEADERS 256

static int fail(ioloop__http_resp_t *rp, int err, const char *fmt, const char *detail)
{
    if (!rp->error) {
        rp->error = err;
        snprintf(rp->error_text, sizeof(rp->error_text), fmt, detail ? detail : "");
    }
    return -1;
}

/* Appends to the head buffer, within max_header_size. */
static int append(ioloop__http_resp_t *rp, const char *data, size_t len)
{
    if (rp->len + len + 1 > rp->max_header_size)
        return fail(rp, -E2BIG, "response head over %s bytes", "the limit of max_header_size");
    if (rp->len + len + 1 > rp->cap) {
        size_t cap = rp->cap ? rp->cap : 1024;
        while (cap < rp->len + len + 1)
            cap *= 2;
        char *buf = realloc(rp->buf, cap);
        if (!buf)
            return fail(rp, -ENOMEM, "out of memory%s", "");
        rp->buf = buf;
        rp->cap = cap;
    }
    memcpy(rp->buf + rp->len, data, len);
    rp->len += len;
    return 0;
}

static int terminate(ioloop__http_resp_t *rp)
{
    char nul = '\0';
    return append(rp, &nul, 1);
}

/* The head of one message (a 1xx or the final one) starts afresh. */
static void head_clear(ioloop__http_resp_t *rp)
{
    rp->len = 0;
    rp->nheaders = 0;
    rp->reason_off = 0;
    rp->status = 0;
    rp->in_value = false;
    if (rp->cap)
        rp->buf[0] = '\0';
}

/* ---- llhttp callbacks ---------------------------------------------------------- */

static int cb_message_begin(llhttp_t *p)
{
    ioloop__http_resp_t *rp = p->data;
    head_clear(rp);
    return 0;
}

static int cb_status(llhttp_t *p, const char *at, size_t len)
{
    return append(p->data, at, len);
}

static int cb_status_complete(llhttp_t *p)
{
    ioloop__http_resp_t *rp = p->data;
    if (rp->parser.http_major != 1)
        return fail(rp, -EPROTO, "malformed response: not HTTP/1.x%s", "");
    return terminate(rp);
}

/* Trailers are read and ignored, within max_header_size too. */
static int trailer(ioloop__http_resp_t *rp, size_t len)
{
    rp->trailer_bytes += len;
    if (rp->trailer_bytes > rp->max_header_size)
        return fail(rp, -E2BIG, "response trailers over %s bytes", "the limit of max_header_size");
    return 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    ioloop__http_resp_t *rp = p->data;
    if (rp->head_done)
        return trailer(rp, len);
    if (rp->len == 0 && terminate(rp) != 0) /* no reason phrase at all */
        return -1;
    if (rp->nheaders == 0 || rp->in_value) {
        if (rp->nheaders == rp->max_headers)
            return fail(rp, -E2BIG, "response head over %s lines", "the max_headers limit of");
        if (rp->nheaders == rp->headers_cap) {
            int cap = rp->headers_cap ? rp->headers_cap * 2 : 16;
            ioloop__http_resp_header_t *h = realloc(rp->headers, (size_t)cap * sizeof(*h));
            if (!h)
                return fail(rp, -ENOMEM, "out of memory%s", "");
            rp->headers = h;
            rp->headers_cap = cap;
        }
        rp->headers[rp->nheaders++] = (ioloop__http_resp_header_t){.name_off = (uint32_t)rp->len};
        rp->in_value = false;
    }
    return append(rp, at, len);
}

static bool is_tchar(unsigned char ch)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr(extra, ch));
}

static int cb_header_field_complete(llhttp_t *p)
{
    ioloop__http_resp_t *rp = p->data;
    if (rp->head_done)
        return 0;
    ioloop__http_resp_header_t *h = &rp->headers[rp->nheaders - 1];
    const unsigned char *name = (const unsigned char *)rp->buf + h->name_off;
    size_t n = rp->len - h->name_off;
    if (n == 0)
        return fail(rp, -EPROTO, "malformed response: empty header name%s", "");
    for (size_t i = 0; i < n; i++)
        if (!is_tchar(name[i]))
            return fail(rp, -EPROTO, "malformed response: invalid character in a header name%s", "");
    if (terminate(rp) != 0)
        return -1;
    h->value_off = (uint32_t)rp->len;
    rp->in_value = true;
    return 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    ioloop__http_resp_t *rp = p->data;
    if (rp->head_done)
        return trailer(rp, len + 4); /* ": " and CRLF: a flood of empty lines counts too */
    return append(rp, at, len);
}

static int cb_header_value_complete(llhttp_t *p)
{
    ioloop__http_resp_t *rp = p->data;
    if (rp->head_done)
        return 0;
    ioloop__http_resp_header_t *h = &rp->headers[rp->nheaders - 1];
    if (!rp->in_value) { /* a value llhttp saw no byte of */
        if (terminate(rp) != 0)
            return -1;
        h->value_off = (uint32_t)rp->len;
        rp->in_value = true;
    }
    while (rp->len > h->value_off && (rp->buf[rp->len - 1] == ' ' || rp->buf[rp->len - 1] == '\t'))
        rp->len--;
    const unsigned char *v = (const unsigned char *)rp->buf + h->value_off;
    for (size_t i = 0; i < rp->len - h->value_off; i++)
        if ((v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
            return fail(rp, -EPROTO, "malformed response: control character in a header value%s", "");
    return terminate(rp);
}

static int cb_headers_complete(llhttp_t *p)
{
    ioloop__http_resp_t *rp = p->data;
    if (rp->head_done)
        return -1;
    if (rp->len == 0 && terminate(rp) != 0)
        return -1;
    rp->status = p->status_code;
    rp->major = p->http_major;
    rp->minor = p->http_minor;
    if (rp->status == 101)
        return fail(rp, -EPROTO, "malformed response: 101 Switching Protocols to a request that asked for no upgrade%s",
                    "");
    if (rp->status < 200)
        return 1; /* 1xx: no body whatever its head says; skipped, the final head follows */
    rp->head_done = true;
    rp->chunked = (p->flags & F_CHUNKED) != 0;
    rp->content_length = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    if (rp->cbs->on_head) {
        int rc = rp->cbs->on_head(rp, rp->arg);
        if (rc < 0) {
            rp->error = rc;
            if (!rp->error_text[0])
                snprintf(rp->error_text, sizeof(rp->error_text), "response refused by the header callback");
            return -1;
        }
    }
    /* 1: no body. llhttp would read a 204's or 304's Content-Length worth
     * of body (RFC 9110 6.4.1: they have none), and knows nothing of HEAD. */
    return rp->head_request || rp->status == 204 || rp->status == 304 ? 1 : 0;
}

static int cb_chunk_header(llhttp_t *p)
{
    ioloop__http_resp_t *rp = p->data;
    rp->chunk_left = p->content_length;
    return 0;
}

/* The CRLF after a chunk's data: checks what of it is in this feed (from at). */
static int check_crlf(ioloop__http_resp_t *rp, const char *at)
{
    while (rp->crlf_pending && at < rp->feed_end) {
        if (*at++ != "\r\n"[2 - rp->crlf_pending])
            return fail(rp, -EPROTO, "malformed response: no CRLF after a chunk's data%s", "");
        rp->crlf_pending--;
    }
    return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    ioloop__http_resp_t *rp = p->data;
    if (len == 0)
        return 0; /* llhttp reopens a span paused at its end as an empty one */
    if (rp->chunked) {
        rp->chunk_left -= len < rp->chunk_left ? len : rp->chunk_left;
        if (rp->chunk_left == 0) {
            rp->crlf_pending = 2;
            if (check_crlf(rp, at + len) != 0)
                return -1;
        }
    }
    rp->body_bytes += len;
    int rc = rp->cbs->on_body ? rp->cbs->on_body(rp, at, len, rp->arg) : 0;
    if (rc == IOLOOP_HTTP_PAUSE) {
        rp->paused = true;
        return HPE_PAUSED;
    }
    if (rc < 0) {
        rp->error = rc;
        if (!rp->error_text[0])
            snprintf(rp->error_text, sizeof(rp->error_text), "response body refused");
        return -1;
    }
    return 0;
}

static int cb_message_complete(llhttp_t *p)
{
    ioloop__http_resp_t *rp = p->data;
    if (!rp->head_done)
        return 0; /* the end of a 1xx */
    rp->complete = true;
    rp->keep_alive = llhttp_should_keep_alive(p);
    if (rp->cbs->on_complete)
        rp->cbs->on_complete(rp, rp->arg);
    return HPE_PAUSED; /* what follows belongs to no request */
}

/* ---- entry points ----------------------------------------------------------- */

void ioloop__http_resp_init(ioloop__http_resp_t *rp, size_t max_header_size, int max_headers,
                            const ioloop__http_resp_callbacks_t *cbs, void *arg)
{
    memset(rp, 0, sizeof(*rp));
    llhttp_settings_init(&rp->settings);
    rp->settings.on_message_begin = cb_message_begin;
    rp->settings.on_status = cb_status;
    rp->settings.on_status_complete = cb_status_complete;
    rp->settings.on_header_field = cb_header_field;
    rp->settings.on_header_field_complete = cb_header_field_complete;
    rp->settings.on_header_value = cb_header_value;
    rp->settings.on_header_value_complete = cb_header_value_complete;
    rp->settings.on_headers_complete = cb_headers_complete;
    rp->settings.on_body = cb_body;
    rp->settings.on_chunk_header = cb_chunk_header;
    rp->settings.on_message_complete = cb_message_complete;
    rp->cbs = cbs;
    rp->arg = arg;
    rp->max_header_size = max_header_size ? max_header_size : DEFAULT_MAX_HEADER_SIZE;
    rp->max_headers = max_headers > 0 ? max_headers : DEFAULT_MAX_HEADERS;
    ioloop__http_resp_reset(rp, false);
}

void ioloop__http_resp_free(ioloop__http_resp_t *rp)
{
    free(rp->buf);
    free(rp->headers);
    rp->buf = NULL;
    rp->headers = NULL;
    rp->cap = 0;
    rp->headers_cap = 0;
}

void ioloop__http_resp_reset(ioloop__http_resp_t *rp, bool head_request)
{
    llhttp_init(&rp->parser, HTTP_RESPONSE, &rp->settings);
    rp->parser.data = rp;
    head_clear(rp);
    rp->head_request = head_request;
    rp->head_done = rp->complete = rp->keep_alive = rp->paused = rp->chunked = false;
    rp->head_bytes = 0;
    rp->trailer_bytes = 0;
    rp->body_bytes = 0;
    rp->chunk_left = 0;
    rp->crlf_pending = 0;
    rp->content_length = -1;
    rp->error = 0;
    rp->error_text[0] = '\0';
    rp->major = rp->minor = 0;
}

ssize_t ioloop__http_resp_feed(ioloop__http_resp_t *rp, const char *data, size_t len)
{
    if (rp->error)
        return rp->error;
    if (rp->complete || rp->paused || (len == 0 && !rp->head_done))
        return 0;
    if (len == 0)
        data = ""; /* a body paused on its last byte: llhttp goes on to the message's end */
    rp->feed_end = data + len;
    if (rp->crlf_pending && check_crlf(rp, data) != 0)
        return rp->error;
    llhttp_errno_t err = llhttp_execute(&rp->parser, data, len);
    size_t used = len;
    if (err == HPE_PAUSED) {
        used = (size_t)(llhttp_get_error_pos(&rp->parser) - data);
        if (rp->paused)
            llhttp_resume(&rp->parser); /* feeding goes on after ioloop__http_resp_resume */
    } else if (err != HPE_OK) {
        if (!rp->error) {
            rp->error = -EPROTO;
            snprintf(rp->error_text, sizeof(rp->error_text), "malformed response: %s (%s)",
                     llhttp_get_error_reason(&rp->parser), llhttp_errno_name(err));
        }
        return rp->error;
    }
    if (!rp->head_done) {
        rp->head_bytes += used;
        if (rp->head_bytes > rp->max_header_size) {
            fail(rp, -E2BIG, "response head over %s bytes", "the limit of max_header_size");
            return rp->error;
        }
    }
    return (ssize_t)used;
}

void ioloop__http_resp_resume(ioloop__http_resp_t *rp)
{
    rp->paused = false;
}

int ioloop__http_resp_eof(ioloop__http_resp_t *rp)
{
    if (rp->error)
        return rp->error;
    if (rp->complete)
        return 0;
    if (!rp->head_done && rp->head_bytes == 0 && rp->len == 0) {
        fail(rp, -ECONNRESET, "connection closed before the response%s", "");
        return rp->error;
    }
    llhttp_errno_t err = llhttp_finish(&rp->parser);
    if (rp->complete && (err == HPE_OK || err == HPE_PAUSED))
        return 0;
    if (rp->error)
        return rp->error;
    fail(rp, -ECONNRESET, "connection closed %s", rp->head_done ? "mid-body" : "in the response head");
    return rp->error;
}

const char *ioloop__http_resp_reason(const ioloop__http_resp_t *rp)
{
    return rp->cap ? rp->buf + rp->reason_off : "";
}

const char *ioloop__http_resp_header(const ioloop__http_resp_t *rp, const char *name)
{
    for (int i = 0; i < rp->nheaders; i++)
        if (strcasecmp(rp->buf + rp->headers[i].name_off, name) == 0)
            return rp->buf + rp->headers[i].value_off;
    return NULL;
}

bool ioloop__http_resp_reusable(const ioloop__http_resp_t *rp)
{
    return rp->complete && rp->keep_alive && !rp->error;
}
