/* access_log.c — the per-request log hook (ioloop_http_server_set_log) and
 * the built-in Common/Combined access log writer.
 *
 * Threading rule: the hook runs on the request's loop thread. A log keeps one
 * buffer per loop (found through a lock-free list and a per-thread cache),
 * touched only by that loop's thread; full buffers go, as batches, through a
 * mutex-protected queue to the log's writer thread, the only one that writes
 * to the fd. Counters are atomics. close runs once the loops stopped.
 *
 * Why a writer thread rather than the executor: one ordered consumer per log
 * keeps lines in order and needs no job per batch; and a write(2) to a
 * regular file cannot be made non-blocking, so it must leave the loop.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    LOG_BATCH = 128 * 1024, /* a loop's buffer, and the most one write(2) carries */
    LOG_MAX_QUEUED = 32,    /* batches waiting for the writer (4 MiB): beyond, drop */
    LOG_KEEP_FREE = 16,     /* spare batches kept for reuse */
    LOG_FIELD_MAX = 4096,   /* bytes of one field (target, referer, user agent) logged */
    LOG_LINE_FIXED = 256,   /* the rest of a line: address, date, method, status, size */
};
#define LOG_FLUSH_DELAY IOLOOP_MSEC(100)
#define LOG_CLOSE_PATIENCE_NS (2 * 1000000000LL)

/* ---- the hook ----------------------------------------------------------- */

void ioloop_http_server_set_log(ioloop_http_server_t *s, ioloop_http_log_fn fn, void *arg)
{
    s->log_fn = fn;
    s->log_arg = arg;
}

/* The peer's address as text. inet_ntop (an sprintf inside) cost more than
 * the rest of a log line, and a loop's clients repeat: one cached answer per
 * thread (a thread runs one loop). With xheaders the request already holds
 * the forwarded address as text. */
static const char *remote_ip(ioloop_http_request_t *req)
{
    static _Thread_local struct sockaddr_in6 last_peer;
    static _Thread_local char last_ip[64];
    if (req->remote_ip_set)
        return req->remote_ip;
    const struct sockaddr_in6 *sa = &req->peer;
    bool same = false;
    if (sa->sin6_family == AF_INET && last_peer.sin6_family == AF_INET)
        same = ((const struct sockaddr_in *)sa)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)&last_peer)->sin_addr.s_addr;
    else if (sa->sin6_family == AF_INET6 && last_peer.sin6_family == AF_INET6)
        same = memcmp(&sa->sin6_addr, &last_peer.sin6_addr, sizeof(sa->sin6_addr)) == 0;
    if (same)
        return last_ip;
    const char *ip = ioloop__http_remote_ip(req);
    if (sa->sin6_family == AF_INET || sa->sin6_family == AF_INET6) {
        memcpy(&last_peer, sa, sizeof(last_peer));
        snprintf(last_ip, sizeof(last_ip), "%s", ip);
    }
    return ip;
}

static const char *find_header(const ioloop_http_request_t *req, const char *name, size_t len)
{
    for (int i = 0; i < req->nhdrs; i++) {
        const http_hdr_t *h = &req->hdrs[i];
        if (h->name_len == len && strncasecmp(req->base + h->name_off, name, len) == 0)
            return req->base + h->val_off;
    }
    return NULL;
}

void ioloop__http_log_request(ioloop_http_request_t *req, bool completed)
{
    const ioloop_http_server_t *s = req->w->server;
    if (!s || !s->log_fn || !req->uri)
        return;
    /* Parsing cut the target at its '?' (path and query became two strings):
     * the log wants it as sent, so the '?' goes back for the call. */
    char *cut = NULL;
    if (req->query > req->uri && req->query <= req->uri + req->url_len && req->query[-1] == '\0')
        cut = (char *)req->query - 1;
    if (cut)
        *cut = '?';
    ioloop_http_log_entry_t e = {
        .loop = req->w->loop,
        .method = llhttp_method_name((llhttp_method_t)req->method),
        .target = req->uri,
        .version = req->minor == 0 ? "HTTP/1.0" : "HTTP/1.1",
        .host = req->host ? req->host : "",
        .referer = find_header(req, "Referer", 7),
        .user_agent = find_header(req, "User-Agent", 10),
        .remote_ip = remote_ip(req),
        .peer = (const struct sockaddr *)&req->peer,
        .peer_len = req->peer_len,
        .status = req->status,
        .body_bytes = req->head ? 0 : req->body_sent,
        .bytes = req->wire_bytes,
        .duration = ioloop_time(req->w->loop) - req->start,
        .completed = completed,
    };
    s->log_fn(&e, s->log_arg);
    if (cut)
        *cut = '\0';
}

/* ---- the built-in writer ------------------------------------------------ */

typedef struct log_batch {
    struct log_batch *next;
    size_t len;
    uint32_t lines;
    char data[LOG_BATCH];
} log_batch_t;

/* One loop's buffer. */
typedef struct log_lbuf {
    ioloop_http_access_log_t *log;
    ioloop_t *loop;
    struct log_lbuf *next;
    log_batch_t *cur;
    bool timer_armed;
    time_t sec; /* the second `date` shows */
    char date[40];
    size_t date_len;
} log_lbuf_t;

struct ioloop_http_access_log {
    uint64_t id; /* validates the per-thread cache */
    int fd;
    bool owns_fd;
    ioloop_http_log_format_t format;
    _Atomic(log_lbuf_t *) lbufs;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond, done_cond;
    log_batch_t *queue, *queue_tail;
    int nqueued;
    log_batch_t *spare;
    int nspare;
    bool stop, done;
    atomic_bool abandon; /* close gave up waiting: drop what is left */
    _Atomic uint64_t lines_written, lines_dropped, writes, write_errors;
    atomic_int last_errno;
};

static void count(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

/* Writes one batch. EAGAIN (a non-blocking pipe whose reader is slow) waits
 * in poll, 100 ms at a time, until close says to give up. */
static int write_batch(ioloop_http_access_log_t *log, const log_batch_t *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = write(log->fd, b->data + off, b->len - off);
        if (n > 0) {
            off += (size_t)n;
            count(&log->writes, 1);
            continue;
        }
        int err = n < 0 ? errno : EIO;
        if (err == EINTR)
            continue;
        if (err == EAGAIN || err == EWOULDBLOCK) {
            if (atomic_load(&log->abandon))
                return -EAGAIN;
            struct pollfd p = {.fd = log->fd, .events = POLLOUT};
            poll(&p, 1, 100);
            continue;
        }
        if (err == EPIPE) {
            /* Blocked in this thread: take the SIGPIPE the write raised, so it is never pending. */
            sigset_t pipe_set;
            sigemptyset(&pipe_set);
            sigaddset(&pipe_set, SIGPIPE);
            struct timespec zero = {0, 0};
            sigtimedwait(&pipe_set, NULL, &zero);
        }
        count(&log->write_errors, 1);
        atomic_store(&log->last_errno, err);
        return -err;
    }
    return 0;
}

static void *writer_main(void *arg)
{
    ioloop_http_access_log_t *log = arg;
    pthread_mutex_lock(&log->mu);
    for (;;) {
        while (!log->queue && !log->stop)
            pthread_cond_wait(&log->cond, &log->mu);
        log_batch_t *list = log->queue;
        log->queue = log->queue_tail = NULL;
        log->nqueued = 0;
        if (!list && log->stop)
            break;
        pthread_mutex_unlock(&log->mu);
        for (log_batch_t *b = list; b; b = b->next) {
            if (write_batch(log, b) == 0)
                count(&log->lines_written, b->lines);
            else
                count(&log->lines_dropped, b->lines);
        }
        pthread_mutex_lock(&log->mu);
        while (list) {
            log_batch_t *b = list;
            list = b->next;
            if (log->nspare < LOG_KEEP_FREE) {
                b->next = log->spare;
                log->spare = b;
                log->nspare++;
            } else {
                free(b);
            }
        }
    }
    log->done = true;
    pthread_cond_broadcast(&log->done_cond);
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

/* A pipe, FIFO or terminal shares its open file description with whoever
 * gave us the fd (a shell's stdout): O_NONBLOCK there would change it for
 * them. Reopening it through /proc gives a description of our own. */
static int private_nonblocking(int fd, bool *owns)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return fd;
    if (!S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode))
        return fd; /* a regular file: the writer thread absorbs its blocking */
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int own = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK | O_APPEND);
    if (own < 0)
        return fd; /* no /proc (or a socket): blocking writes, still off the loop */
    if (*owns)
        close(fd);
    *owns = true;
    return own;
}

static int log_start(int fd, bool owns, ioloop_http_log_format_t format, ioloop_http_access_log_t **out)
{
    static atomic_uint_fast64_t next_id = 1;
    *out = NULL;
    if (format != IOLOOP_HTTP_LOG_COMMON && format != IOLOOP_HTTP_LOG_COMBINED) {
        if (owns)
            close(fd);
        return -EINVAL;
    }
    ioloop_http_access_log_t *log = calloc(1, sizeof(*log));
    if (!log) {
        if (owns)
            close(fd);
        return -ENOMEM;
    }
    log->id = atomic_fetch_add(&next_id, 1);
    log->fd = private_nonblocking(fd, &owns);
    log->owns_fd = owns;
    log->format = format;
    atomic_init(&log->lbufs, NULL);
    pthread_mutex_init(&log->mu, NULL);
    pthread_cond_init(&log->cond, NULL);
    pthread_cond_init(&log->done_cond, NULL);
    /* The writer runs with every signal blocked: SIGPIPE from its writes
     * stays with it (and is consumed), and process signals go elsewhere. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&log->thread, NULL, writer_main, log);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        if (log->owns_fd)
            close(log->fd);
        pthread_mutex_destroy(&log->mu);
        pthread_cond_destroy(&log->cond);
        pthread_cond_destroy(&log->done_cond);
        free(log);
        return -err;
    }
    *out = log;
    return 0;
}

int ioloop_http_access_log_open(const char *path, ioloop_http_log_format_t format, ioloop_http_access_log_t **out)
{
    if (!path || !out)
        return -EINVAL;
    if (strcmp(path, "-") == 0)
        return log_start(STDOUT_FILENO, false, format, out);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    return log_start(fd, true, format, out);
}

int ioloop_http_access_log_open_fd(int fd, ioloop_http_log_format_t format, ioloop_http_access_log_t **out)
{
    if (fd < 0 || !out)
        return -EINVAL;
    return log_start(fd, false, format, out);
}

/* Hands lb's batch to the writer (loop thread; or close, once loops stopped).
 * force: queue it whatever the queue's length (close). */
static void handoff(log_lbuf_t *lb, bool force)
{
    ioloop_http_access_log_t *log = lb->log;
    log_batch_t *b = lb->cur;
    if (!b || b->len == 0)
        return;
    pthread_mutex_lock(&log->mu);
    if (log->nqueued >= LOG_MAX_QUEUED && !force) {
        pthread_mutex_unlock(&log->mu);
        count(&log->lines_dropped, b->lines); /* the writer is far behind: keep memory bounded */
        b->len = 0;
        b->lines = 0;
        return;
    }
    b->next = NULL;
    if (log->queue_tail)
        log->queue_tail->next = b;
    else
        log->queue = b;
    log->queue_tail = b;
    log->nqueued++;
    log_batch_t *fresh = log->spare;
    if (fresh) {
        log->spare = fresh->next;
        log->nspare--;
    }
    pthread_cond_signal(&log->cond);
    pthread_mutex_unlock(&log->mu);
    if (!fresh)
        fresh = malloc(sizeof(*fresh)); /* NULL: the next line tries again */
    if (fresh) {
        fresh->len = 0;
        fresh->lines = 0;
    }
    lb->cur = fresh;
}

static void on_flush_timer(ioloop_t *loop, void *arg)
{
    (void)loop;
    log_lbuf_t *lb = arg;
    lb->timer_armed = false;
    handoff(lb, false);
}

/* This thread's buffer for log on loop: a thread runs one loop. */
static log_lbuf_t *lbuf_for(ioloop_http_access_log_t *log, ioloop_t *loop)
{
    static _Thread_local ioloop_http_access_log_t *last_log;
    static _Thread_local uint64_t last_id;
    static _Thread_local log_lbuf_t *last_lb;
    if (last_log == log && last_id == log->id && last_lb->loop == loop)
        return last_lb;
    log_lbuf_t *lb = atomic_load_explicit(&log->lbufs, memory_order_acquire);
    while (lb && lb->loop != loop)
        lb = lb->next;
    if (!lb) {
        if (!(lb = calloc(1, sizeof(*lb))))
            return NULL;
        lb->log = log;
        lb->loop = loop;
        lb->sec = -1;
        lb->next = atomic_load_explicit(&log->lbufs, memory_order_relaxed);
        while (!atomic_compare_exchange_weak_explicit(&log->lbufs, &lb->next, lb, memory_order_release,
                                                      memory_order_relaxed))
            ;
    }
    last_log = log;
    last_id = log->id;
    last_lb = lb;
    return lb;
}

/* "[27/Nov/2026:18:56:40 +0000]" in local time, by hand (no locale). */
static void format_date(log_lbuf_t *lb, time_t now)
{
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    lb->sec = now;
    if (!localtime_r(&now, &tm)) {
        lb->date_len = (size_t)snprintf(lb->date, sizeof(lb->date), "[-]");
        return;
    }
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    lb->date_len = (size_t)snprintf(lb->date, sizeof(lb->date), "[%02d/%s/%04d:%02d:%02d:%02d %c%02ld%02ld]",
                                    tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
                                    sign, off / 60, off % 60);
}

/* Copies s (at most LOG_FIELD_MAX bytes of it) escaped as nginx does:
 * '"', '\\', control and non-ASCII bytes become \xHH. Room: 4 * LOG_FIELD_MAX + 3. */
static char *put_escaped(char *o, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i = 0;
    for (; s[i] && i < LOG_FIELD_MAX; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = 'x';
            *o++ = hex[ch >> 4];
            *o++ = hex[ch & 15];
        } else {
            *o++ = (char)ch;
        }
    }
    if (s[i]) {
        memcpy(o, "...", 3);
        o += 3;
    }
    return o;
}

static char *put_cstr(char *o, const char *s)
{
    size_t n = strlen(s);
    memcpy(o, s, n);
    return o + n;
}

static char *put_u64(char *o, uint64_t v)
{
    char tmp[24];
    int i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(o, tmp + i, sizeof(tmp) - (size_t)i);
    return o + (sizeof(tmp) - (size_t)i);
}

/* Room for s through put_escaped. */
static size_t escaped_room(const char *s)
{
    size_t n = s ? strnlen(s, LOG_FIELD_MAX) : 0;
    return 4 * n + 3 + 3; /* \xHH each, "...", quotes */
}

/* The worst case of one line (the fixed part: address, date, version, status, size, spaces). */
#define LOG_LINE_MAX (LOG_LINE_FIXED + 4 * (4 * LOG_FIELD_MAX + 6))
_Static_assert(LOG_LINE_MAX < LOG_BATCH, "a line always fits an empty batch");

void ioloop_http_access_log_hook(const ioloop_http_log_entry_t *e, void *arg)
{
    ioloop_http_access_log_t *log = arg;
    log_lbuf_t *lb = lbuf_for(log, e->loop);
    if (!lb) {
        count(&log->lines_dropped, 1);
        return;
    }
    size_t need = LOG_LINE_FIXED + escaped_room(e->method) + escaped_room(e->target) + escaped_room(e->referer) +
                  escaped_room(e->user_agent);
    assert(need <= LOG_LINE_MAX);
    if (lb->cur && lb->cur->len + need > LOG_BATCH)
        handoff(lb, false);
    if (!lb->cur) {
        if (!(lb->cur = malloc(sizeof(*lb->cur)))) {
            count(&log->lines_dropped, 1);
            return;
        }
        lb->cur->len = 0;
        lb->cur->lines = 0;
    }
    time_t now = time(NULL);
    if (now != lb->sec)
        format_date(lb, now);
    log_batch_t *b = lb->cur;
    char *start = b->data + b->len, *o = start;
    o = e->remote_ip && e->remote_ip[0] ? put_escaped(o, e->remote_ip) : put_cstr(o, "-");
    o = put_cstr(o, " - - ");
    memcpy(o, lb->date, lb->date_len);
    o += lb->date_len;
    o = put_cstr(o, " \"");
    o = put_escaped(o, e->method);
    *o++ = ' ';
    o = put_escaped(o, e->target);
    *o++ = ' ';
    o = put_cstr(o, e->version);
    o = put_cstr(o, "\" ");
    o = put_u64(o, (uint64_t)(e->status > 0 ? e->status : 0));
    *o++ = ' ';
    o = e->body_bytes ? put_u64(o, e->body_bytes) : put_cstr(o, "-");
    if (log->format == IOLOOP_HTTP_LOG_COMBINED) {
        o = put_cstr(o, " \"");
        o = e->referer ? put_escaped(o, e->referer) : put_cstr(o, "-");
        o = put_cstr(o, "\" \"");
        o = e->user_agent ? put_escaped(o, e->user_agent) : put_cstr(o, "-");
        *o++ = '"';
    }
    *o++ = '\n';
    assert((size_t)(o - start) <= need);
    b->len += (size_t)(o - start);
    b->lines++;
    if (!lb->timer_armed) {
        /* The batch goes at the latest LOG_FLUSH_DELAY after its first line. */
        lb->timer_armed = ioloop_call_later(e->loop, LOG_FLUSH_DELAY, on_flush_timer, lb, NULL) == 0;
        if (!lb->timer_armed)
            handoff(lb, false); /* no timer (the loop is closing): send it now */
    }
}

void ioloop_http_access_log_get_stats(const ioloop_http_access_log_t *log, ioloop_http_access_log_stats_t *out)
{
    ioloop_http_access_log_t *l = (ioloop_http_access_log_t *)log;
    out->lines_written = atomic_load_explicit(&l->lines_written, memory_order_relaxed);
    out->lines_dropped = atomic_load_explicit(&l->lines_dropped, memory_order_relaxed);
    out->writes = atomic_load_explicit(&l->writes, memory_order_relaxed);
    out->write_errors = atomic_load_explicit(&l->write_errors, memory_order_relaxed);
    out->last_errno = atomic_load_explicit(&l->last_errno, memory_order_relaxed);
}

void ioloop_http_access_log_close(ioloop_http_access_log_t *log)
{
    if (!log)
        return;
    for (log_lbuf_t *lb = atomic_load(&log->lbufs); lb; lb = lb->next)
        handoff(lb, true);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += LOG_CLOSE_PATIENCE_NS / 1000000000LL;
    pthread_mutex_lock(&log->mu);
    log->stop = true;
    pthread_cond_signal(&log->cond);
    while (!log->done) {
        if (pthread_cond_timedwait(&log->done_cond, &log->mu, &deadline) == ETIMEDOUT) {
            atomic_store(&log->abandon, true); /* a pipe nobody reads: drop the rest */
            while (!log->done)
                pthread_cond_wait(&log->done_cond, &log->mu);
        }
    }
    pthread_mutex_unlock(&log->mu);
    pthread_join(log->thread, NULL);
    log_lbuf_t *lb = atomic_load(&log->lbufs);
    while (lb) {
        log_lbuf_t *next = lb->next;
        free(lb->cur);
        free(lb);
        lb = next;
    }
    while (log->spare) {
        log_batch_t *b = log->spare;
        log->spare = b->next;
        free(b);
    }
    if (log->owns_fd)
        close(log->fd);
    pthread_mutex_destroy(&log->mu);
    pthread_cond_destroy(&log->cond);
    pthread_cond_destroy(&log->done_cond);
    free(log);
}
