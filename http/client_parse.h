/* client_parse.h — the HTTP client's response parser: llhttp in response mode
 * plus the checks llhttp leaves to us (field-name tokens, field-value
 * characters, head size and header count limits, 1xx skipped, 101 refused).
 * Pure: it takes bytes and calls back; no loop, no stream (so it is fuzzed
 * alone: tests/fuzz).
 *
 * Threading rule: one parser is used by one thread at a time.
 *
 * Use: init once, reset before each response (head_request: the request was
 * HEAD, so the response has no body), feed bytes until the complete callback
 * (feed stops right after it: what follows belongs to no request), eof when
 * the peer closed. The head (status, reason, headers) is copied into the
 * parser's own buffer, valid from on_head until the next reset.
 */
#ifndef IOLOOP_HTTP_CLIENT_PARSE_H
#define IOLOOP_HTTP_CLIENT_PARSE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct ioloop__http_resp ioloop__http_resp_t;

typedef struct {
    /* The final (non-1xx) head is complete. 0 to go on, a negative errno to stop. */
    int (*on_head)(ioloop__http_resp_t *rp, void *arg);
    /* Body bytes (de-chunked). 0 to go on, IOLOOP_HTTP_PAUSE (1) to stop
     * feeding after these bytes (feed returns what it used), a negative errno to stop. */
    int (*on_body)(ioloop__http_resp_t *rp, const char *data, size_t len, void *arg);
    /* The response is complete. */
    void (*on_complete)(ioloop__http_resp_t *rp, void *arg);
} ioloop__http_resp_callbacks_t;

typedef struct {
    uint32_t name_off, value_off; /* into buf, NUL-terminated */
} ioloop__http_resp_header_t;

struct ioloop__http_resp {
    llhttp_t parser;
    llhttp_settings_t settings;
    const ioloop__http_resp_callbacks_t *cbs;
    void *arg;
    /* limits */
    size_t max_header_size;
    int max_headers;
    /* the head: strings in buf */
    char *buf;
    size_t len, cap;
    ioloop__http_resp_header_t *headers;
    int nheaders, headers_cap;
    uint32_t reason_off;
    int status;
    uint8_t major, minor;
    bool in_value, head_done, complete, head_request, keep_alive, paused;
    size_t head_bytes;    /* bytes fed while the head was incomplete */
    size_t trailer_bytes; /* of the chunked body's trailers (ignored, but bounded) */
    uint64_t body_bytes;
    int64_t content_length; /* -1 when none */
    bool chunked;
    /* llhttp 8 (built without LLHTTP_STRICT_MODE) takes any two bytes after a
     * chunk's data for its CRLF: we check them (what is still to check at the
     * next feed's start, and where the current feed ends) */
    uint64_t chunk_left;
    int crlf_pending;
    const char *feed_end;
    /* the failure: a negative errno (-EPROTO, -E2BIG, or a callback's) and its words */
    int error;
    char error_text[128];
};

/* Sets up rp (limits: 0 means 64 KiB and 256 headers). */
void ioloop__http_resp_init(ioloop__http_resp_t *rp, size_t max_header_size, int max_headers,
                            const ioloop__http_resp_callbacks_t *cbs, void *arg);
/* Frees what rp holds (it may be init'ed again). */
void ioloop__http_resp_free(ioloop__http_resp_t *rp);
/* Before each response on a connection. */
void ioloop__http_resp_reset(ioloop__http_resp_t *rp, bool head_request);

/* Parses data: returns the bytes used (all of them unless the response
 * completed or on_body paused), or a negative errno: -EPROTO (malformed:
 * rp->error_text says how), -E2BIG (head over the limits), or a callback's
 * error. After an error, every call returns it again. */
ssize_t ioloop__http_resp_feed(ioloop__http_resp_t *rp, const char *data, size_t len);
/* Continues after on_body paused: then feed the rest, or, when nothing is
 * left, feed 0 bytes (a body paused on its last byte ends the message then). */
void ioloop__http_resp_resume(ioloop__http_resp_t *rp);
/* The peer closed: completes a close-delimited body (0), or says what was
 * cut: -ECONNRESET (error_text: before the head, in the head or mid-body). */
int ioloop__http_resp_eof(ioloop__http_resp_t *rp);

/* The head, after on_head. */
const char *ioloop__http_resp_reason(const ioloop__http_resp_t *rp);
const char *ioloop__http_resp_header(const ioloop__http_resp_t *rp, const char *name);
/* True when the connection may carry another request after this response
 * (HTTP/1.1 without Connection: close, or 1.0 with keep-alive; framed body). */
bool ioloop__http_resp_reusable(const ioloop__http_resp_t *rp);

#endif
