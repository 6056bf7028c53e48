/* fuzz_http_chunked.c — libFuzzer target: the chunked decoder of request
 * bodies (llhttp's, through parse.c's on_body into a collected body or a
 * streamed route), behind a fixed "Transfer-Encoding: chunked" head, on the
 * same server connection as fuzz_http_request.
 *
 * Threading rule: the fuzzer's thread (fuzz_http_harness.c owns the loop).
 *
 * Input: the first byte's low bit picks the route (0: /echo collects the
 * body, 1: /stream gets it through on_body) and its other bits how the rest
 * arrives (0: one write, n: n bytes per loop iteration); the rest follows the
 * head as the body. Oracle: when a strict reading of RFC 9112 7.1 (below, a
 * test oracle only: the server decodes with llhttp) accepts the body and the
 * server completes the request, both must have decoded the same bytes; a
 * decoder that disagrees with the RFC on where a body ends is a request
 * smuggling bug. Sanitizer reports, leaks and hangs are findings too.
 */
#include "fuzz_http_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hexval(uint8_t ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int tchar(uint8_t ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int crlf(const uint8_t *p, size_t n, size_t i)
{
    return i + 1 < n && p[i] == '\r' && p[i + 1] == '\n';
}

/* The body a strict decoder reads from p (chunks, token extensions, a
 * trailer section of token: VCHAR/SP/HTAB lines), or -1 when it would
 * reject it or it is incomplete. */
static long strict_decode(const uint8_t *p, size_t n, uint8_t *out, size_t cap)
{
    size_t i = 0, o = 0;
    for (;;) {
        size_t len = 0;
        int digits = 0;
        for (; i < n && hexval(p[i]) >= 0; i++) {
            if (++digits > 7)
                return -1;
            len = len * 16 + (size_t)hexval(p[i]);
        }
        if (!digits)
            return -1;
        while (i < n && p[i] == ';') { /* chunk-ext = ";" token [ "=" token ] */
            size_t start = ++i;
            while (i < n && tchar(p[i]))
                i++;
            if (i == start)
                return -1;
            if (i < n && p[i] == '=') {
                start = ++i;
                while (i < n && tchar(p[i]))
                    i++;
                if (i == start)
                    return -1;
            }
        }
        if (!crlf(p, n, i))
            return -1;
        i += 2;
        if (len == 0)
            break;
        if (n - i < len + 2 || o + len > cap)
            return -1;
        memcpy(out + o, p + i, len);
        o += len;
        i += len;
        if (!crlf(p, n, i))
            return -1;
        i += 2;
    }
    while (!crlf(p, n, i)) { /* trailer fields, then the empty line */
        size_t start = i;
        while (i < n && tchar(p[i]))
            i++;
        if (i == start || i >= n || p[i] != ':')
            return -1;
        for (i++; i < n && ((p[i] >= 0x21 && p[i] <= 0x7e) || p[i] == ' ' || p[i] == '\t'); i++)
            ;
        if (!crlf(p, n, i))
            return -1;
        i += 2;
    }
    return (long)o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fuzz_http_seen_t seen;
    static uint8_t expect[FUZZ_BODY_MAX];
    static const char *const heads[2] = {
        "POST /echo HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /stream HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n",
    };
    if (size < 1)
        return 0;
    const char *head = heads[data[0] & 1];
    size_t head_len = strlen(head), body_len = size - 1;
    uint8_t *input = malloc(head_len + body_len);
    if (!input)
        return 0;
    memcpy(input, head, head_len);
    memcpy(input + head_len, data + 1, body_len);
    fuzz_http_run(input, head_len + body_len, data[0] >> 1, 0, &seen);
    free(input);

    long want = strict_decode(data + 1, body_len, expect, sizeof(expect));
    if (want >= 0 && seen.first_body_done) {
        if ((size_t)want != seen.first_body_len || memcmp(expect, seen.first_body, (size_t)want) != 0) {
            fprintf(stderr, "fuzz_http_chunked: the server decoded %zu bytes, a strict decoder %ld\n",
                    seen.first_body_len, want);
            abort();
        }
    }
    return 0;
}
