/* request.c — the request object: pooling, the checks a server MUST make on a
 * request head (RFC 9110/9112) beyond what llhttp enforces, and the accessors
 * (headers, path arguments, decoded query arguments, remote address).
 *
 * Threading rule: the loop thread that owns the request.
 *
 * Strings handed out point into the request's copy of its head: once the head
 * is complete the parser has consumed the byte after every span (':' after a
 * name, CR after a value, SP after the target), so a NUL is written there and
 * each span becomes a C string without a copy.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- pool --------------------------------------------------------------- */

/* A finished request joins the pool's FIFO only in the next loop iteration
 * (w->limbo until then), and is reused only once HTTP_QUARANTINE others
 * joined after it. Until then it keeps finished = true, so a stale pointer (a
 * late write, a duplicate completion) gets -EALREADY instead of writing into
 * another client's response (http.h states the guarantee). A full pool frees
 * its oldest, never the newest. */
ioloop_http_request_t *ioloop__http_request_get(http_worker_t *w)
{
    ioloop_http_request_t *r = NULL;
    if (w->nfree_reqs > HTTP_QUARANTINE) {
        r = w->free_reqs;
        w->free_reqs = r->next_free;
        if (!w->free_reqs)
            w->free_reqs_tail = NULL;
        w->nfree_reqs--;
        assert(r->finished);
    } else if (!(r = calloc(1, sizeof(*r)))) {
        return NULL;
    }
    /* Keep what is reusable (the header and argument arrays), reset the rest. */
    http_hdr_t *hdrs = r->hdrs;
    int hdrs_cap = r->hdrs_cap;
    http_arg_t *args = r->args;
    int args_cap = r->args_cap;
    memset(r, 0, sizeof(*r));
    r->hdrs = hdrs;
    r->hdrs_cap = hdrs_cap;
    r->args = args;
    r->args_cap = args_cap;
    r->w = w;
    r->status = 200;
    r->protocol = "http";
    w->live_reqs++;
    return r;
}

static void to_pool(http_worker_t *w, ioloop_http_request_t *req)
{
    req->next_free = NULL;
    if (w->free_reqs_tail)
        w->free_reqs_tail->next_free = req;
    else
        w->free_reqs = req;
    w->free_reqs_tail = req;
    w->nfree_reqs++;
    if (w->nfree_reqs > HTTP_REQ_POOL_KEEP) {
        ioloop_http_request_t *old = w->free_reqs;
        w->free_reqs = old->next_free;
        w->nfree_reqs--;
        free(old->hdrs);
        free(old->args);
        free(old);
    }
    ioloop__http_worker_release(w); /* may free a dead worker: the caller's last use of w */
}

/* Next iteration: the requests finished in the previous one join the pool. */
static void reap(ioloop_t *loop, void *arg)
{
    (void)loop;
    http_worker_t *w = arg;
    ioloop_http_request_t *req = w->limbo;
    w->limbo = w->limbo_tail = NULL;
    w->reap_posted = false;
    while (req) {
        ioloop_http_request_t *next = req->next_free;
        to_pool(w, req); /* each holds the worker until here */
        req = next;
    }
}

void ioloop__http_request_put(ioloop_http_request_t *req)
{
    req->finished = true; /* what a stale pointer sees from now on */
    req->c = NULL;
    if (req->refs > 0)
        return; /* a scheduled flush completion still points here; it puts */
    assert(!req->orphaned);
    http_worker_t *w = req->w;
    ioloop__hbuf_release(w, &req->body);
    ioloop__hbuf_release(w, &req->pbuf);
    ioloop__hbuf_release(w, &req->abuf);
    ioloop__hbuf_release(w, &req->rhdr);
    ioloop__hbuf_release(w, &req->rbody);
    ioloop__hbuf_release(w, &req->head_copy);
    ioloop__http_gzip_release(req);
    req->nhdrs = req->npargs = req->nargs = 0;
    req->args_parsed = true;
    req->next_free = NULL;
    if (w->limbo_tail)
        w->limbo_tail->next_free = req;
    else
        w->limbo = req;
    w->limbo_tail = req;
    if (!w->reap_posted) {
        if (ioloop_add_callback(w->loop, reap, w) == 0)
            w->reap_posted = true;
        else
            reap(w->loop, w); /* the loop is closing: no later iteration */
    }
}

/* ---- the head ----------------------------------------------------------- */

static bool is_host_char(unsigned char ch)
{
    /* reg-name / IP-literal / port characters (RFC 3986) */
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           strchr("-._~!$&'()*+,;=:[]%", ch) != NULL;
}

static bool valid_host(const char *h)
{
    for (; *h; h++)
        if (!is_host_char((unsigned char)*h))
            return false;
    return true;
}

int ioloop__http_request_head_done(http_conn_t *c, ioloop_http_request_t *req)
{
    const ioloop_http_server_options_t *o = &c->w->server->opts;
    llhttp_t *p = &c->parser;
    char *base = (char *)req->base; /* the request's copy of its head (parse.c) */
    req->method = llhttp_get_method(p);
    req->major = llhttp_get_http_major(p);
    req->minor = llhttp_get_http_minor(p);
    if (req->major != 1)
        return 505;
    if (req->minor > 1)
        req->minor = 1; /* a later 1.x is answered as 1.1 */

    const char *host_hdr = NULL;
    for (int i = 0; i < req->nhdrs; i++) {
        http_hdr_t *h = &req->hdrs[i];
        base[h->name_off + h->name_len] = '\0';
        base[h->val_off + h->val_len] = '\0';
        if (h->name_len == 4 && strcasecmp(base + h->name_off, "host") == 0)
            host_hdr = base + h->val_off;
    }

    /* The target: origin-form, absolute-form, or "*" for OPTIONS. */
    char *url = base + req->url_off;
    /* request-line = method SP request-target SP HTTP-version: exactly one SP
     * each side (RFC 9112 3; whitespace-tolerant parsing is only a MAY). */
    if (req->url_off < 2 || base[req->url_off - 1] != ' ' || base[req->url_off - 2] == ' ' ||
        url[req->url_len] != ' ' || url[req->url_len + 1] != 'H')
        return 400;
    url[req->url_len] = '\0';
    req->uri = url;
    char *path = url;
    if (req->method == HTTP_CONNECT)
        return 501;
    if (url[0] == '/') {
        path = url;
    } else if (url[0] == '*' && url[1] == '\0') {
        if (req->method != HTTP_OPTIONS)
            return 400;
    } else if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
        char *auth = strstr(url, "//") + 2;
        size_t alen = strcspn(auth, "/?#");
        if (ioloop__hbuf_reserve(c->w, &req->pbuf, 2 * (size_t)req->url_len + HTTP_MAX_PATH_ARGS + 8))
            return 503;
        memcpy(req->pbuf.data, auth, alen);
        req->pbuf.data[alen] = '\0';
        req->pbuf.len = alen + 1;
        req->host = req->pbuf.data; /* RFC 9112 3.2.2: the target's authority wins */
        path = auth + alen;
        if (*path != '/') {
            /* "http://h" or "http://h?q": the path is "/" and the query follows */
            path = *path == '?' ? path : path + strlen(path);
            req->path = "/";
        }
        if (!valid_host(req->host))
            return 400;
    } else {
        return 400;
    }
    char *q = strpbrk(path, "?#");
    if (q) {
        bool has_query = *q == '?';
        *q = '\0';
        req->query = has_query ? q + 1 : "";
        char *frag = has_query ? strchr(q + 1, '#') : NULL;
        if (frag)
            *frag = '\0';
    } else {
        req->query = "";
    }
    if (!req->path)
        req->path = path;

    /* RFC 9112 3.2: 400 for HTTP/1.1 without Host, for several Host lines,
     * and for an invalid Host value. */
    if (req->host_count > 1 || (req->minor == 1 && req->host_count == 0))
        return 400;
    if (host_hdr && !valid_host(host_hdr))
        return 400;
    if (!req->host)
        req->host = host_hdr ? host_hdr : "";

    /* Framing (RFC 9112 6): llhttp rejects CL with TE, duplicate CL and a TE
     * not ending in chunked; these are checked again here so that the rule
     * does not depend on the parser's version. */
    bool has_cl = (p->flags & F_CONTENT_LENGTH) != 0;
    bool has_te = req->te_count > 0 || (p->flags & F_TRANSFER_ENCODING);
    if (has_cl && has_te)
        return 400;
    if (has_te) {
        if (req->minor == 0)
            return 400; /* TE in HTTP/1.0: faulty framing (RFC 9112 6.1) */
        if (!(p->flags & F_CHUNKED))
            return 400;
        if (!req->te_chunked_only)
            return 501; /* a coding other than chunked: not implemented */
    }
    if (req->expect_other)
        return 417;
    req->has_body = (p->flags & F_CHUNKED) || (has_cl && p->content_length > 0);
    if (has_cl && p->content_length > o->max_body_size)
        return 413; /* before a byte of the body is read */
    req->keep_alive = !o->no_keep_alive && llhttp_should_keep_alive(p) && !p->upgrade;

    /* Route and method. */
    const http_route_t *route;
    int st = ioloop__http_router_match(c->w->server, req, &route);
    if (st)
        return st;
    req->route = route;
    req->head = req->method == HTTP_HEAD;
    if (!route) {
        req->fail_status = 404;
    } else {
        const ioloop_http_route_t *r = &route->route;
        ioloop_http_handler_fn fn = NULL;
        switch (req->method) {
        case HTTP_GET:
            fn = r->get;
            break;
        case HTTP_HEAD:
            fn = r->head ? r->head : r->get;
            break;
        case HTTP_POST:
            fn = r->post;
            break;
        case HTTP_PUT:
            fn = r->put;
            break;
        case HTTP_DELETE:
            fn = r->delete_;
            break;
        case HTTP_PATCH:
            fn = r->patch;
            break;
        case HTTP_OPTIONS:
            fn = r->options;
            break;
        default:
            break;
        }
        req->handler = fn;
        if (!fn)
            req->fail_status = 405;
        req->streaming = fn && r->on_body;
    }

    if (o->xheaders) {
        const char *ip = ioloop_http_request_header(req, "X-Real-IP");
        const char *fwd = ioloop_http_request_header(req, "X-Forwarded-For");
        if (!ip && fwd) {
            const char *last = strrchr(fwd, ',');
            ip = last ? last + 1 : fwd;
        }
        if (ip) {
            while (*ip == ' ' || *ip == '\t')
                ip++;
            size_t n = strcspn(ip, " \t");
            unsigned char tmp[sizeof(struct in6_addr)];
            if (n < sizeof(req->remote_ip)) {
                memcpy(req->remote_ip, ip, n);
                req->remote_ip[n] = '\0';
                if (inet_pton(AF_INET, req->remote_ip, tmp) == 1 || inet_pton(AF_INET6, req->remote_ip, tmp) == 1)
                    req->remote_ip_set = true;
            }
        }
        const char *proto = ioloop_http_request_header(req, "X-Scheme");
        if (!proto)
            proto = ioloop_http_request_header(req, "X-Forwarded-Proto");
        if (proto) {
            const char *last = strrchr(proto, ',');
            proto = last ? last + 1 : proto;
            while (*proto == ' ')
                proto++;
            if (strcasecmp(proto, "https") == 0)
                req->protocol = "https";
        }
    }

    /* 100 Continue only for a request that will be read (not for a 404/405:
     * the client need not send a body that is dropped). It is only queued
     * here: the connection sends it once head handling is over (a send here
     * could close the connection and recycle req under its callers). */
    if (req->expect_continue && req->has_body && req->minor == 1 && !req->fail_status) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (ioloop__hbuf_append(c->w, &c->out, cont, sizeof(cont) - 1))
            return 503;
    }
    return 0;
}

/* ---- accessors ---------------------------------------------------------- */

ioloop_t *ioloop_http_request_loop(const ioloop_http_request_t *req)
{
    return req->w->loop;
}

const char *ioloop_http_request_method(const ioloop_http_request_t *req)
{
    return llhttp_method_name((llhttp_method_t)req->method);
}

const char *ioloop_http_request_path(const ioloop_http_request_t *req)
{
    return req->finished ? NULL : req->path;
}

const char *ioloop_http_request_query(const ioloop_http_request_t *req)
{
    return req->finished ? NULL : req->query;
}

const char *ioloop_http_request_uri(const ioloop_http_request_t *req)
{
    return req->finished ? NULL : req->uri;
}

const char *ioloop_http_request_version(const ioloop_http_request_t *req)
{
    return req->minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
}

const char *ioloop_http_request_host(const ioloop_http_request_t *req)
{
    return req->finished ? NULL : req->host;
}

const char *ioloop_http_request_header(const ioloop_http_request_t *req, const char *name)
{
    if (req->finished)
        return NULL;
    size_t len = strlen(name);
    for (int i = 0; i < req->nhdrs; i++) {
        const http_hdr_t *h = &req->hdrs[i];
        if (h->name_len == len && strncasecmp(req->base + h->name_off, name, len) == 0)
            return req->base + h->val_off;
    }
    return NULL;
}

int ioloop_http_request_header_at(const ioloop_http_request_t *req, int i, const char **name, const char **value)
{
    if (req->finished)
        return -EALREADY;
    if (i < 0 || i >= req->nhdrs)
        return -ENOENT;
    *name = req->base + req->hdrs[i].name_off;
    *value = req->base + req->hdrs[i].val_off;
    return 0;
}

const char *ioloop_http_request_body(const ioloop_http_request_t *req, size_t *len)
{
    if (len)
        *len = req->finished ? 0 : req->body.len;
    if (req->finished)
        return NULL;
    return req->body.data ? req->body.data : "";
}

const char *ioloop_http_request_remote_ip(ioloop_http_request_t *req)
{
    return req->finished ? NULL : ioloop__http_remote_ip(req);
}

const char *ioloop__http_remote_ip(ioloop_http_request_t *req)
{
    if (!req->remote_ip_set) {
        const struct sockaddr_in6 *sa = &req->peer;
        req->remote_ip[0] = '\0';
        if (sa->sin6_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, req->remote_ip, sizeof(req->remote_ip));
        else if (sa->sin6_family == AF_INET6)
            inet_ntop(AF_INET6, &sa->sin6_addr, req->remote_ip, sizeof(req->remote_ip));
        req->remote_ip_set = true;
    }
    return req->remote_ip;
}

const char *ioloop_http_request_protocol(const ioloop_http_request_t *req)
{
    return req->protocol;
}

int ioloop_http_request_path_arg_count(const ioloop_http_request_t *req)
{
    return req->finished ? -EALREADY : req->npargs;
}

const char *ioloop_http_request_path_arg(const ioloop_http_request_t *req, int i)
{
    return !req->finished && i >= 0 && i < req->npargs ? req->pargs[i] : NULL;
}

/* Splits "a=1&b=2" into decoded name/value pairs appended to req->args. */
static int parse_pairs(ioloop_http_request_t *req, const char *s, size_t len)
{
    const char *end = s + len;
    while (s < end) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        const char *pe = amp ? amp : end;
        if (pe > s) {
            const char *eq = memchr(s, '=', (size_t)(pe - s));
            const char *ne = eq ? eq : pe;
            if (req->nargs == req->args_cap) {
                int cap = req->args_cap ? req->args_cap * 2 : 8;
                http_arg_t *n = realloc(req->args, (size_t)cap * sizeof(*n));
                if (!n)
                    return -ENOMEM;
                req->args = n;
                req->args_cap = cap;
            }
            char *dst = req->abuf.data + req->abuf.len;
            size_t n1 = ioloop__http_unquote(dst, s, (size_t)(ne - s), true);
            char *val = dst + n1 + 1;
            size_t n2 = eq ? ioloop__http_unquote(val, eq + 1, (size_t)(pe - eq - 1), true) : (*val = '\0', 0);
            /* A %00 would cut the C string short (and "a.php%00.jpg" pass a
             * suffix check as "a.php"): such a pair is dropped, as if absent. */
            if (!memchr(dst, '\0', n1) && !memchr(val, '\0', n2)) {
                req->abuf.len += n1 + n2 + 2;
                req->args[req->nargs++] = (http_arg_t){dst, val};
            }
        }
        s = pe + 1;
    }
    return 0;
}

static int parse_args(ioloop_http_request_t *req)
{
    if (req->args_parsed)
        return 0;
    req->args_parsed = true;
    size_t qlen = strlen(req->query), blen = 0;
    const char *ct = ioloop_http_request_header(req, "Content-Type");
    bool form = ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0 && req->body.len;
    if (form)
        blen = req->body.len;
    /* Decoding never lengthens; each pair adds two NULs: reserve once, so the
     * pointers handed out never move. */
    if (qlen + blen == 0)
        return 0;
    if (ioloop__hbuf_reserve(req->w, &req->abuf, 3 * (qlen + blen) + 4))
        return -ENOMEM;
    int err = parse_pairs(req, req->query, qlen);
    if (!err && form)
        err = parse_pairs(req, req->body.data, blen);
    return err;
}

const char *ioloop_http_request_argument(ioloop_http_request_t *req, const char *name, const char *def)
{
    if (req->finished || parse_args(req) != 0)
        return def;
    for (int i = req->nargs - 1; i >= 0; i--)
        if (strcmp(req->args[i].name, name) == 0)
            return req->args[i].value;
    return def;
}

int ioloop_http_request_arguments(ioloop_http_request_t *req, const char *name, const char **values, int max)
{
    if (req->finished)
        return -EALREADY;
    int err = parse_args(req);
    if (err)
        return err;
    int n = 0;
    for (int i = 0; i < req->nargs; i++) {
        if (strcmp(req->args[i].name, name) == 0) {
            if (n < max)
                values[n] = req->args[i].value;
            n++;
        }
    }
    return n;
}

void ioloop_http_request_on_close(ioloop_http_request_t *req, ioloop_http_close_fn fn, void *arg)
{
    if (req->finished)
        return;
    req->on_close = fn;
    req->on_close_arg = arg;
}

bool ioloop_http_request_closed(const ioloop_http_request_t *req)
{
    return req->closed || req->finished;
}
