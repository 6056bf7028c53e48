/* ws_client.c — ioloop_websocket_connect: the client side of the handshake
 * (RFC 6455 4.1). The URL is split by the HTTP client's parser (client_url.c,
 * on the ws/wss scheme pair), ioloop_tcp_connect connects (with a TLS
 * transport for wss://), the upgrade request goes out with a random key and
 * our offers (subprotocols, permessage-deflate), and the response head is
 * parsed with llhttp in response mode and checked: 101, Upgrade, Connection,
 * Sec-WebSocket-Accept, and only what we offered. Anything else is -EPROTO.
 *
 * Threading rule: the connect and its callbacks run on the loop's thread.
 */
#define _GNU_SOURCE
#include "client_internal.h"
#include "internal.h"
#include "ws_internal.h"

#ifdef IOLOOP_HTTP_HAVE_TLS
#include "ioloop/tls.h"
#endif

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { WS_HEAD_MAX = 16384 };

typedef struct {
    ioloop_t *loop;
    ioloop_websocket_options_t options;
    ioloop_websocket_handlers_t handlers;
    void *handlers_arg;
    ioloop_websocket_connect_fn cb;
    void *arg;
    char *url_text; /* the parsed URL's own copy (client_url_t.text) */
    char *request;
    size_t request_len;
    char accept[29];
    bool offered_deflate;
    char *protocols; /* offered subprotocols, NUL-separated, "" at the end */
    ioloop_tcp_connect_t *tc;
    ioloop_stream_t *stream;
    ioloop_timer_t timer;
    bool timed_out;
    /* the response head */
    llhttp_t parser;
    char field[64];
    size_t field_len;
    int which; /* the header being read: index into values, or -1 */
    char values[5][256];
    size_t values_len[5];
} ws_connect_t;

enum { H_UPGRADE, H_CONNECTION, H_ACCEPT, H_EXTENSIONS, H_PROTOCOL };
static const char *const interesting[5] = {"upgrade", "connection", "sec-websocket-accept", "sec-websocket-extensions",
                                           "sec-websocket-protocol"};

static void connect_free(ws_connect_t *wc)
{
    if (wc->timer)
        ioloop_remove_timeout(wc->loop, wc->timer);
    free(wc->url_text);
    free(wc->request);
    free(wc->protocols);
    free(wc);
}

static void finish(ws_connect_t *wc, int status)
{
    if (wc->stream) {
        ioloop_stream_set_close_callback(wc->stream, NULL, NULL);
        ioloop_stream_close(wc->stream);
    }
    wc->cb(wc->loop, status, NULL, wc->arg);
    connect_free(wc);
}

/* ---- the response head ----------------------------------------------------- */

static int on_field(llhttp_t *p, const char *at, size_t len)
{
    ws_connect_t *wc = p->data;
    if (wc->field_len + len >= sizeof(wc->field))
        len = sizeof(wc->field) - 1 - wc->field_len;
    memcpy(wc->field + wc->field_len, at, len);
    wc->field_len += len;
    return 0;
}

static int on_field_complete(llhttp_t *p)
{
    ws_connect_t *wc = p->data;
    wc->field[wc->field_len] = '\0';
    wc->which = -1;
    for (int i = 0; i < 5; i++)
        if (strcasecmp(wc->field, interesting[i]) == 0)
            wc->which = i;
    wc->field_len = 0;
    if (wc->which >= 0 && wc->values_len[wc->which]) { /* a repeated header: the values joined */
        size_t *vl = &wc->values_len[wc->which];
        if (*vl + 2 < sizeof(wc->values[0])) {
            memcpy(wc->values[wc->which] + *vl, ", ", 2);
            *vl += 2;
        }
    }
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t len)
{
    ws_connect_t *wc = p->data;
    if (wc->which < 0)
        return 0;
    size_t *vl = &wc->values_len[wc->which];
    if (*vl + len >= sizeof(wc->values[0]))
        return -1; /* longer than any valid answer */
    memcpy(wc->values[wc->which] + *vl, at, len);
    *vl += len;
    wc->values[wc->which][*vl] = '\0';
    return 0;
}

static const llhttp_settings_t response_settings = {
    .on_header_field = on_field,
    .on_header_field_complete = on_field_complete,
    .on_header_value = on_value,
};

static bool has_token(const char *value, const char *token)
{
    size_t tl = strlen(token);
    for (const char *p = value; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t t = n;
        while (t && (p[t - 1] == ' ' || p[t - 1] == '\t'))
            t--;
        if (t == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p += n;
    }
    return false;
}

static void on_head(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    ws_connect_t *wc = arg;
    if (status != 0) {
        finish(wc, status == IOLOOP_EOF || status == -EMSGSIZE ? -EPROTO : status);
        return;
    }
    llhttp_init(&wc->parser, HTTP_RESPONSE, &response_settings);
    wc->parser.data = wc;
    wc->which = -1;
    llhttp_errno_t err = llhttp_execute(&wc->parser, data, len);
    if ((err != HPE_OK && err != HPE_PAUSED_UPGRADE) || wc->parser.status_code != 101 ||
        !has_token(wc->values[H_UPGRADE], "websocket") || !has_token(wc->values[H_CONNECTION], "upgrade") ||
        strcmp(wc->values[H_ACCEPT], wc->accept) != 0) {
        finish(wc, -EPROTO);
        return;
    }
    ioloop__ws_deflate_t deflate = {0};
    const char *ext = wc->values_len[H_EXTENSIONS] ? wc->values[H_EXTENSIONS] : NULL;
    if (ext && (!wc->offered_deflate || ioloop__ws_deflate_response(ext, &wc->options, &deflate) != 0)) {
        finish(wc, -EPROTO);
        return;
    }
    const char *proto = wc->values_len[H_PROTOCOL] ? wc->values[H_PROTOCOL] : NULL;
    if (proto) {
        bool offered = false;
        for (const char *p = wc->protocols; p && *p; p += strlen(p) + 1)
            offered |= strcmp(p, proto) == 0;
        if (!offered) {
            finish(wc, -EPROTO);
            return;
        }
    }
    ioloop_stream_set_close_callback(stream, NULL, NULL);
    wc->stream = NULL;
    ioloop_websocket_t *ws;
    int rc = ioloop__ws_new(stream, false, &wc->options, &wc->handlers, wc->handlers_arg, &deflate, proto, ext, &ws);
    if (rc != 0) {
        finish(wc, rc);
        return;
    }
    wc->cb(wc->loop, 0, ws, wc->arg);
    if (wc->handlers.on_open)
        wc->handlers.on_open(ws, NULL, wc->handlers_arg);
    ioloop__ws_start(ws);
    connect_free(wc);
}

static void on_early_close(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    ws_connect_t *wc = arg;
    wc->stream = NULL; /* it is gone: finish must not close it */
    finish(wc, wc->timed_out ? -ETIMEDOUT : error ? error : -EPROTO);
}

static void on_connected(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    (void)loop;
    ws_connect_t *wc = arg;
    wc->tc = NULL;
    if (status != 0) {
        finish(wc, wc->timed_out ? -ETIMEDOUT : status);
        return;
    }
    wc->stream = stream;
    ioloop_stream_set_close_callback(stream, on_early_close, wc);
    int err = ioloop_stream_write(stream, wc->request, wc->request_len, NULL, NULL);
    if (!err)
        err = ioloop_stream_read_until(stream, "\r\n\r\n", 4, WS_HEAD_MAX, on_head, wc);
    if (err) {
        /* A TLS handshake that failed inside the write ended the stream: its
         * error (IOLOOP_ECERT, IOLOOP_ETLS) says more than the write's -EPIPE. */
        int ended = ioloop_stream_closed(stream) ? ioloop_stream_error(stream) : 0;
        ioloop_stream_set_close_callback(stream, NULL, NULL);
        finish(wc, ended && ended != IOLOOP_EOF ? ended : err);
    }
}

static void on_timeout(ioloop_t *loop, void *arg)
{
    (void)loop;
    ws_connect_t *wc = arg;
    wc->timer = 0;
    wc->timed_out = true;
    if (wc->tc)
        ioloop_tcp_connect_cancel(wc->tc); /* on_connected follows with -ECANCELED */
    else if (wc->stream)
        ioloop_stream_close(wc->stream); /* on_early_close follows */
}

/* ---- the URL and the request -------------------------------------------------- */

/* The URL: client_url.c's parser on the ws/wss scheme pair, plus the
 * authority as written (the Host header, RFC 6455 4.1). */
typedef struct {
    client_url_t url;
    const char *authority; /* into the caller's URL text */
    int authority_len;
} ws_url_t;

/* 0, -EINVAL (malformed, or another scheme), -ENOMEM; u->url.text is the caller's */
static int parse_url(const char *text, ws_url_t *u)
{
    /* a fragment has no place in a WebSocket URI (RFC 6455 3): refused, not dropped */
    if (strchr(text, '#'))
        return -EINVAL;
    int rc = ioloop__client_url_parse_as(&u->url, text, "ws", "wss");
    if (rc != 0)
        return rc == -ENOMEM ? rc : -EINVAL;
    u->authority = strstr(text, "://") + 3;
    u->authority_len = (int)strcspn(u->authority, "/?");
    return 0;
}

/* A header line given by the application: "Name: value" without CR/LF. */
static bool header_ok(const char *h)
{
    return h && strchr(h, ':') && !strpbrk(h, "\r\n");
}

static int build_request(ws_connect_t *wc, const ws_url_t *u, const ioloop_websocket_connect_options_t *opts)
{
    uint8_t raw[16];
    char key[25];
    ioloop__ws_random(raw, sizeof(raw));
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    if (ioloop__ws_accept_key(key, 24, wc->accept) != 0)
        return -EINVAL;
    size_t cap = 1024 + strlen(u->url.target) + (size_t)u->authority_len + (opts->origin ? strlen(opts->origin) : 0);
    size_t plen = 1;
    for (int i = 0; i < opts->nsubprotocols; i++) {
        if (!opts->subprotocols[i] || !*opts->subprotocols[i] || strpbrk(opts->subprotocols[i], ", \t\r\n"))
            return -EINVAL;
        plen += strlen(opts->subprotocols[i]) + 1;
    }
    cap += plen * 2;
    for (const char *const *h = opts->headers; h && *h; h++) {
        if (!header_ok(*h))
            return -EINVAL;
        cap += strlen(*h) + 2;
    }
    if (opts->origin && strpbrk(opts->origin, "\r\n"))
        return -EINVAL;
    if (!(wc->request = malloc(cap)) || !(wc->protocols = calloc(1, plen)))
        return -ENOMEM;
    char *p = wc->request, *end = wc->request + cap;
    p += snprintf(p, (size_t)(end - p),
                  "GET %s HTTP/1.1\r\nHost: %.*s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                  u->url.target, u->authority_len, u->authority, key);
    if (opts->origin)
        p += snprintf(p, (size_t)(end - p), "Origin: %s\r\n", opts->origin);
    if (opts->nsubprotocols) {
        p += snprintf(p, (size_t)(end - p), "Sec-WebSocket-Protocol: ");
        char *q = wc->protocols;
        for (int i = 0; i < opts->nsubprotocols; i++) {
            p += snprintf(p, (size_t)(end - p), "%s%s", i ? ", " : "", opts->subprotocols[i]);
            size_t n = strlen(opts->subprotocols[i]);
            memcpy(q, opts->subprotocols[i], n + 1);
            q += n + 1;
        }
        p += snprintf(p, (size_t)(end - p), "\r\n");
    }
    if (opts->options.compression) {
        char offer[128];
        ioloop__ws_deflate_offer(&opts->options, offer, sizeof(offer));
        p += snprintf(p, (size_t)(end - p), "Sec-WebSocket-Extensions: %s\r\n", offer);
        wc->offered_deflate = true;
    }
    for (const char *const *h = opts->headers; h && *h; h++)
        p += snprintf(p, (size_t)(end - p), "%s\r\n", *h);
    p += snprintf(p, (size_t)(end - p), "\r\n");
    wc->request_len = (size_t)(p - wc->request);
    return 0;
}

#ifdef IOLOOP_HTTP_HAVE_TLS
/* The default wss:// context: verifying, on the system's roots, built once
 * and kept for the process (contexts are shared read-only by every loop). */
static pthread_once_t default_tls_once = PTHREAD_ONCE_INIT;
static ioloop_tls_context_t *default_tls;
static void default_tls_make(void)
{
    if (ioloop_tls_context_new(&(ioloop_tls_options_t){.server = false}, &default_tls) != 0)
        default_tls = NULL;
}
#endif

int ioloop_websocket_connect(ioloop_t *loop, const char *url, const ioloop_websocket_connect_options_t *opts,
                             ioloop_websocket_connect_fn cb, void *arg)
{
    static const ioloop_websocket_connect_options_t defaults;
    if (!loop || !url || !cb)
        return -EINVAL;
    if (!opts)
        opts = &defaults;
    ws_url_t u = {0};
    int err = parse_url(url, &u);
    if (err)
        return err;
    ws_connect_t *wc = calloc(1, sizeof(*wc));
    if (!wc) {
        free(u.url.text.data);
        return -ENOMEM;
    }
    wc->url_text = u.url.text.data;
    wc->loop = loop;
    wc->options = opts->options;
    wc->handlers = opts->handlers;
    wc->handlers_arg = opts->arg;
    wc->cb = cb;
    wc->arg = arg;
    err = build_request(wc, &u, opts);
    if (err) {
        connect_free(wc);
        return err;
    }
    ioloop_time_t timeout = opts->connect_timeout ? opts->connect_timeout : IOLOOP_SEC(20);
    ioloop_tcp_connect_options_t tco = {
        .timeout = timeout,
        .nodelay = true,
        .stream = {.max_write_buffer_size = opts->options.max_write_buffer_size, .half_close = true},
    };
    if (u.url.tls) {
#ifdef IOLOOP_HTTP_HAVE_TLS
        ioloop_tls_context_t *ctx = opts->tls;
        if (!ctx) {
            pthread_once(&default_tls_once, default_tls_make);
            ctx = default_tls;
        }
        if (!ctx || (err = ioloop_tls_client_options(ctx, u.url.host, &tco)) != 0) {
            connect_free(wc);
            return ctx ? err : -ENOMEM;
        }
#else
        connect_free(wc);
        return -ENOTSUP;
#endif
    }
    err = ioloop_call_later(loop, timeout, on_timeout, wc, &wc->timer);
    if (err) {
        connect_free(wc);
        return err;
    }
    err = ioloop_tcp_connect(loop, u.url.host, u.url.port, &tco, on_connected, wc, &wc->tc);
    if (err) {
        connect_free(wc);
        return err;
    }
    return 0;
}
