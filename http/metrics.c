/* metrics.c — the server's per-loop counters of responses, bytes and request
 * durations, and the Prometheus route (text exposition format 0.0.4) that
 * serves them with each loop's own stats (ioloop_get_stats).
 *
 * Threading rule: the counters live in the server's worker for each loop and
 * are written only by that loop's thread, with a relaxed load and store (no
 * lock, no read-modify-write: HTTP_STAT_ADD). The scrape runs on whichever
 * loop got the request and reads every worker's and every loop's counters
 * with relaxed loads: a scrape is not one snapshot, each value is exact.
 * What it touches outlives loops that stop or close while it runs: workers
 * live until ioloop_http_server_free (whose order is after the loops
 * stopped), the loops are found by walking the registry under RCU (a closed
 * loop leaves it and is freed only after a grace period), and a worker's
 * labels were copied at its creation so its loop is never dereferenced.
 */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- counting (the loop thread, per finished response) -------------------- */

/* Upper bounds of the duration buckets in ns; the last bucket is +Inf. The
 * usual Prometheus spread, starting lower (a loop answers in microseconds). */
static const ioloop_time_t duration_bound[HTTP_DURATION_BUCKETS - 1] = {
    IOLOOP_USEC(500), IOLOOP_MSEC(1),    IOLOOP_USEC(2500), IOLOOP_MSEC(5),   IOLOOP_MSEC(10),
    IOLOOP_MSEC(25),  IOLOOP_MSEC(50),   IOLOOP_MSEC(100),  IOLOOP_MSEC(250), IOLOOP_MSEC(500),
    IOLOOP_SEC(1),    IOLOOP_MSEC(2500), IOLOOP_SEC(5),     IOLOOP_SEC(10),
};
static const char *const duration_le[HTTP_DURATION_BUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
};

static void count_response(http_worker_t *w, int status, uint64_t bytes)
{
    int cls = status / 100 - 1; /* the handler's status is 200..599, the server's 4xx/5xx */
    if (cls < 0)
        cls = 0;
    if (cls > 4)
        cls = 4;
    HTTP_STAT_INC(w, st_responses[cls]);
    HTTP_STAT_ADD(w, st_bytes_out, bytes);
}

void ioloop__http_metrics_finished(ioloop_http_request_t *req)
{
    http_worker_t *w = req->w;
    if (w->dead)
        return; /* the server is gone: nobody scrapes, and the loop may be closing */
    /* A file body goes to the stream after the head and is not in wire_bytes. */
    count_response(w, req->status, req->wire_bytes + (req->file_body ? req->body_sent : 0));
    ioloop_time_t duration = ioloop_time(w->loop) - req->start;
    if (duration < 0)
        duration = 0; /* a test clock that stepped back */
    int b = 0;
    while (b < HTTP_DURATION_BUCKETS - 1 && duration > duration_bound[b])
        b++;
    HTTP_STAT_INC(w, st_duration[b]);
    HTTP_STAT_ADD(w, st_duration_sum, (uint64_t)duration);
}

void ioloop__http_metrics_error(http_worker_t *w, int status, size_t bytes)
{
    if (!w->dead)
        count_response(w, status, bytes);
}

/* ---- the scrape ------------------------------------------------------------ */

typedef struct {
    const ioloop_t *loop;
    int index;   /* runtime index, or -1 */
    unsigned id; /* ioloop_id */
    ioloop_stats_t st;
} loop_row_t;

typedef struct {
    ioloop_runtime_t *rt;         /* the scraping thread's runtime, or NULL */
    const http_worker_t *workers; /* the server's: their loops are listed too */
    loop_row_t *rows;
    int n, cap;
} loop_walk_t;

/* Registry walk (under RCU: the loop cannot be freed during this call). */
static void collect_loop(ioloop_t *loop, void *arg)
{
    loop_walk_t *walk = arg;
    int index = ioloop_runtime_index(loop);
    bool in_runtime = walk->rt && index >= 0 && ioloop_runtime_loop(walk->rt, index) == loop;
    bool listed = in_runtime;
    for (const http_worker_t *w = walk->workers; w && !listed; w = w->next)
        listed = w->loop == loop; /* a pointer compared, never followed */
    if (!listed || walk->n == walk->cap)
        return;
    loop_row_t *row = &walk->rows[walk->n++];
    row->loop = loop;
    row->index = in_runtime ? index : -1;
    row->id = ioloop_id(loop);
    ioloop_get_stats(loop, &row->st);
}

/* Runtime loops by index, then the others by id. */
static int label_cmp(int ia, unsigned da, int ib, unsigned db)
{
    if ((ia < 0) != (ib < 0))
        return ia < 0 ? 1 : -1;
    if (ia >= 0 && ia != ib)
        return ia < ib ? -1 : 1;
    return da < db ? -1 : da > db;
}

static int row_cmp(const void *a, const void *b)
{
    const loop_row_t *x = a, *y = b;
    return label_cmp(x->index, x->id, y->index, y->id);
}

/* A worker as labelled in this scrape. */
typedef struct {
    const http_worker_t *w;
    int index; /* its loop's index in the scraping runtime, or -1: labelled by id */
} worker_row_t;

static int worker_cmp(const void *a, const void *b)
{
    const worker_row_t *x = a, *y = b;
    return label_cmp(x->index, x->w->label_id, y->index, y->w->label_id);
}

/* The body, formatted in chunks into the response. */
typedef struct {
    ioloop_http_request_t *req;
    int err;
    size_t len;
    char buf[4096];
} out_t;

static void out_flush(out_t *o)
{
    if (o->len && !o->err)
        o->err = ioloop_http_response_write(o->req, o->buf, o->len);
    o->len = 0;
}

__attribute__((format(printf, 2, 3))) static void out_printf(out_t *o, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, sizeof(o->buf) - o->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof(o->buf) - o->len) {
            o->len += (size_t)n;
            return;
        }
        out_flush(o); /* no room: send what is there and format again (a line is far below 4 KiB) */
    }
}

static void out_family(out_t *o, const char *name, const char *type, const char *help)
{
    out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* loop="3" or loop="id7" */
static void label(char *dst, size_t size, int index, unsigned id)
{
    if (index >= 0)
        snprintf(dst, size, "loop=\"%d\"", index);
    else
        snprintf(dst, size, "loop=\"id%u\"", id);
}

/* ns as exact decimal seconds */
static void out_seconds(out_t *o, const char *name, const char *labels, uint64_t ns)
{
    out_printf(o, "%s{%s} %llu.%09llu\n", name, labels, (unsigned long long)(ns / 1000000000u),
               (unsigned long long)(ns % 1000000000u));
}

typedef struct {
    const char *name, *type, *help;
    size_t offset; /* into ioloop_stats_t */
    bool ns;       /* a time in ns, shown in seconds */
    bool is_signed;
} loop_metric_t;

#define LOOP_METRIC(n, t, h, field, ns, sg)                                                                            \
    {                                                                                                                  \
        n, t, h, offsetof(ioloop_stats_t, field), ns, sg                                                               \
    }
static const loop_metric_t loop_metrics[] = {
    LOOP_METRIC("ioloop_loop_iterations_total", "counter", "Loop iterations completed.", iterations, false, false),
    LOOP_METRIC("ioloop_loop_busy_seconds_total", "counter",
                "Time spent running callbacks, timers and handlers (not blocked in poll).", busy_time, true, false),
    LOOP_METRIC("ioloop_loop_callbacks_total", "counter", "Callbacks run, own-thread and posted.", callbacks_run, false,
                false),
    LOOP_METRIC("ioloop_loop_posts_total", "counter", "Callbacks posted from other threads.", posts_received, false,
                false),
    LOOP_METRIC("ioloop_loop_wakeups_total", "counter", "Wakeup writes (eventfd) made by posters to this loop.",
                wakeups_written, false, false),
    LOOP_METRIC("ioloop_loop_events_total", "counter", "Fd handler calls.", events_dispatched, false, false),
    LOOP_METRIC("ioloop_loop_timers_total", "counter", "Timer callbacks run.", timers_fired, false, false),
    LOOP_METRIC("ioloop_loop_connections", "gauge", "Live connections on this loop.", live_connections, false, true),
    LOOP_METRIC("ioloop_loop_longest_busy_seconds", "gauge", "Longest busy stretch of one iteration.", longest_busy,
                true, false),
};

static void write_loop_metrics(out_t *o, const loop_row_t *rows, int n)
{
    for (size_t m = 0; m < sizeof(loop_metrics) / sizeof(loop_metrics[0]); m++) {
        const loop_metric_t *lm = &loop_metrics[m];
        out_family(o, lm->name, lm->type, lm->help);
        for (int i = 0; i < n; i++) {
            char lab[32];
            label(lab, sizeof(lab), rows[i].index, rows[i].id);
            const char *field = (const char *)&rows[i].st + lm->offset;
            if (lm->is_signed || lm->ns) {
                int64_t v;
                memcpy(&v, field, sizeof(v));
                if (lm->ns)
                    out_seconds(o, lm->name, lab, v > 0 ? (uint64_t)v : 0);
                else
                    out_printf(o, "%s{%s} %lld\n", lm->name, lab, (long long)v);
            } else {
                uint64_t v;
                memcpy(&v, field, sizeof(v));
                out_printf(o, "%s{%s} %llu\n", lm->name, lab, (unsigned long long)v);
            }
        }
    }
}

#define LOAD(w, field) atomic_load_explicit(&(w)->field, memory_order_relaxed)

static void write_http_metrics(out_t *o, const worker_row_t *workers, int n)
{
    char lab[32];
    static const struct {
        const char *name, *help;
        size_t offset;
    } counters[] = {
        {"ioloop_http_connections_accepted_total", "Connections accepted by the server.",
         offsetof(http_worker_t, st_connections)},
        {"ioloop_http_requests_total", "Requests dispatched to a handler (or answered 404/405).",
         offsetof(http_worker_t, st_requests)},
        {"ioloop_http_response_bytes_total", "Bytes queued for clients: heads, framing and bodies.",
         offsetof(http_worker_t, st_bytes_out)},
    };
    for (size_t m = 0; m < sizeof(counters) / sizeof(counters[0]); m++) {
        out_family(o, counters[m].name, "counter", counters[m].help);
        for (int i = 0; i < n; i++) {
            const _Atomic uint64_t *p = (const _Atomic uint64_t *)((const char *)workers[i].w + counters[m].offset);
            label(lab, sizeof(lab), workers[i].index, workers[i].w->label_id);
            out_printf(o, "%s{%s} %llu\n", counters[m].name, lab,
                       (unsigned long long)atomic_load_explicit(p, memory_order_relaxed));
        }
    }
    out_family(o, "ioloop_http_responses_total", "counter",
               "Responses by status class, the server's own (400, 413, ...) included.");
    for (int i = 0; i < n; i++) {
        label(lab, sizeof(lab), workers[i].index, workers[i].w->label_id);
        for (int c = 0; c < 5; c++)
            out_printf(o, "ioloop_http_responses_total{%s,code=\"%dxx\"} %llu\n", lab, c + 1,
                       (unsigned long long)LOAD(workers[i].w, st_responses[c]));
    }
    const char *h = "ioloop_http_request_duration_seconds";
    out_family(o, h, "histogram",
               "Time from the loop iteration that read a request's first byte to the one that finished it.");
    for (int i = 0; i < n; i++) {
        label(lab, sizeof(lab), workers[i].index, workers[i].w->label_id);
        uint64_t cumulative = 0;
        for (int b = 0; b < HTTP_DURATION_BUCKETS; b++) {
            cumulative += LOAD(workers[i].w, st_duration[b]);
            out_printf(o, "%s_bucket{%s,le=\"%s\"} %llu\n", h, lab, duration_le[b], (unsigned long long)cumulative);
        }
        uint64_t sum = LOAD(workers[i].w, st_duration_sum);
        out_printf(o, "%s_sum{%s} %llu.%09llu\n", h, lab, (unsigned long long)(sum / 1000000000u),
                   (unsigned long long)(sum % 1000000000u));
        /* _count from the same bucket reads: it equals the +Inf bucket by construction. */
        out_printf(o, "%s_count{%s} %llu\n", h, lab, (unsigned long long)cumulative);
    }
}

static void metrics_get(ioloop_http_request_t *req, void *arg)
{
    ioloop_http_server_t *s = arg;
    ioloop_runtime_t *rt = ioloop_runtime_current();
    /* Workers are pushed at the head and never removed before server_free:
     * the list from this head on is fixed. */
    http_worker_t *head = atomic_load_explicit(&s->workers, memory_order_acquire);
    int nworkers = 0;
    for (http_worker_t *w = head; w; w = w->next)
        nworkers++;
    /* A scrape is rare: its two arrays are allocated, sized before the walk
     * (nothing allocates under the RCU read lock). */
    loop_walk_t walk = {.rt = rt, .workers = head, .cap = nworkers + (rt ? ioloop_runtime_size(rt) : 0)};
    walk.rows = malloc((size_t)(walk.cap ? walk.cap : 1) * sizeof(*walk.rows));
    worker_row_t *workers = malloc((size_t)(nworkers ? nworkers : 1) * sizeof(*workers));
    if (!walk.rows || !workers) {
        free(walk.rows);
        free(workers);
        ioloop_http_response_send(req, 503, "text/plain", "out of memory\n", 14);
        return;
    }
    ioloop_registry_foreach(collect_loop, &walk);
    qsort(walk.rows, (size_t)walk.n, sizeof(*walk.rows), row_cmp);
    int nw = 0;
    for (http_worker_t *w = head; w; w = w->next) {
        /* Labelled by runtime index only when its loop is one of this
         * runtime's (a pointer compared, the loop never followed): a server
         * serving several runtimes gets distinct labels. */
        bool in_runtime = rt && w->label_index >= 0 && ioloop_runtime_loop(rt, w->label_index) == w->loop;
        workers[nw++] = (worker_row_t){.w = w, .index = in_runtime ? w->label_index : -1};
    }
    qsort(workers, (size_t)nw, sizeof(*workers), worker_cmp);

    ioloop_http_response_header(req, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    ioloop_http_response_header(req, "Cache-Control", "no-store");
    out_t o = {.req = req};
    write_loop_metrics(&o, walk.rows, walk.n);
    write_http_metrics(&o, workers, nw);
    out_flush(&o);
    free(walk.rows);
    free(workers);
    ioloop_http_response_finish(req);
}

int ioloop_http_server_metrics_route(ioloop_http_server_t *s, const char *path)
{
    if (!s || !path || path[0] != '/' || strpbrk(path, "[]()*+?{}|^$\\"))
        return -EINVAL; /* a pattern would be a regular expression (http.h) */
    return ioloop_http_server_route(s, path, &(ioloop_http_route_t){.get = metrics_get, .arg = s});
}
