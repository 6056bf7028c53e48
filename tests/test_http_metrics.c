/* test_http_metrics.c — ioloop_http_server_metrics_route: the Prometheus text
 * format (checked by a strict parser here, not by the server's code), the
 * counters moving by what was done, per-loop labels for every loop, scrapes
 * while loops stop and while another runtime serving the server is freed, and
 * hostile scrapers (never reading, one byte at a time, reset mid-response).
 * Threading rule: the test's threads are clients; handlers run on the
 * runtime's loops and talk to the test through atomics.
 */
#include "test_http_util.h"

#include "ioloop/websocket.h"

#include <ctype.h>
#include <fcntl.h>
#include <math.h>

/* ---- a strict parser of the text exposition format 0.0.4 ------------------ */

typedef struct {
    char name[128];
    char labels[256]; /* as written, without the braces: loop="0",code="2xx" */
    double value;
} sample_t;

typedef struct {
    char name[128];
    char type[16];
    bool help;
} family_t;

typedef struct {
    sample_t *samples;
    int n, cap;
    family_t families[64];
    int nfamilies;
} metrics_t;

static void metrics_free(metrics_t *m)
{
    free(m->samples);
    memset(m, 0, sizeof(*m));
}

#define PARSE_FAIL(line, ...)                                                                                          \
    do {                                                                                                               \
        fprintf(stderr, "metrics parse: " __VA_ARGS__);                                                                \
        fprintf(stderr, "\n  in line: %.200s\n", line);                                                                \
        fail();                                                                                                        \
    } while (0)

static bool metric_name_ok(const char *s, size_t len)
{
    if (len == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
            return false;
    return true;
}

static family_t *family_find(metrics_t *m, const char *name)
{
    for (int i = 0; i < m->nfamilies; i++)
        if (!strcmp(m->families[i].name, name))
            return &m->families[i];
    return NULL;
}

/* The family a sample name belongs to, given the declared types. */
static family_t *family_of(metrics_t *m, const char *name)
{
    family_t *f = family_find(m, name);
    if (f && strcmp(f->type, "histogram") != 0)
        return f;
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    for (int i = 0; i < 3; i++) {
        size_t nl = strlen(name), sl = strlen(suffixes[i]);
        if (nl > sl && !strcmp(name + nl - sl, suffixes[i])) {
            char base[128];
            snprintf(base, sizeof(base), "%.*s", (int)(nl - sl), name);
            f = family_find(m, base);
            if (f && !strcmp(f->type, "histogram"))
                return f;
        }
    }
    return NULL;
}

/* Parses label pairs from p (just after '{') up to '}'; copies them to out. */
static const char *parse_labels(const char *line, const char *p, char *out, size_t cap)
{
    const char *start = p;
    char names[8][64];
    int nnames = 0;
    while (*p != '}') {
        const char *n = p;
        while (isalnum((unsigned char)*p) || *p == '_')
            p++;
        if (p == n || isdigit((unsigned char)*n))
            PARSE_FAIL(line, "bad label name");
        if (nnames == 8 || (size_t)(p - n) >= sizeof(names[0]))
            PARSE_FAIL(line, "too many or too long label names");
        snprintf(names[nnames], sizeof(names[0]), "%.*s", (int)(p - n), n);
        for (int i = 0; i < nnames; i++)
            if (!strcmp(names[i], names[nnames]))
                PARSE_FAIL(line, "duplicate label %s", names[i]);
        nnames++;
        if (*p++ != '=' || *p++ != '"')
            PARSE_FAIL(line, "label without =\"");
        while (*p != '"') {
            if (*p == '\0' || *p == '\n')
                PARSE_FAIL(line, "unterminated label value");
            if (*p == '\\') {
                p++;
                if (*p != '\\' && *p != '"' && *p != 'n')
                    PARSE_FAIL(line, "bad escape in label value");
            }
            p++;
        }
        p++;
        if (*p == ',')
            p++;
        else if (*p != '}')
            PARSE_FAIL(line, "expected , or } after a label");
    }
    if ((size_t)(p - start) >= cap)
        PARSE_FAIL(line, "labels too long for the test");
    snprintf(out, cap, "%.*s", (int)(p - start), start);
    return p + 1;
}

static double parse_value(const char *line, const char *s, size_t len)
{
    char buf[64];
    if (len == 0 || len >= sizeof(buf))
        PARSE_FAIL(line, "bad value");
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (!strcmp(buf, "+Inf"))
        return INFINITY;
    if (!strcmp(buf, "-Inf"))
        return -INFINITY;
    if (!strcmp(buf, "NaN"))
        return NAN;
    char *end;
    double v = strtod(buf, &end);
    if (*end || !isfinite(v) || (!isdigit((unsigned char)buf[0]) && buf[0] != '-'))
        PARSE_FAIL(line, "bad value %s", buf);
    return v;
}

/* The label set without le (a histogram series' key). */
static void without_le(const char *labels, char *out, size_t cap)
{
    const char *le = strstr(labels, "le=\"");
    if (!le) {
        snprintf(out, cap, "%s", labels);
        return;
    }
    const char *end = strchr(le + 4, '"') + 1;
    size_t before = (size_t)(le - labels);
    if (before && labels[before - 1] == ',')
        before--;
    snprintf(out, cap, "%.*s%s", (int)before, labels, *end == ',' && before == 0 ? end + 1 : end);
}

static const char *label_value(const char *labels, const char *name, char *out, size_t cap)
{
    char key[64];
    snprintf(key, sizeof(key), "%s=\"", name);
    const char *p = labels;
    while ((p = strstr(p, key)) && p != labels && p[-1] != ',')
        p++;
    if (!p)
        return NULL;
    p += strlen(key);
    size_t len = strcspn(p, "\"");
    snprintf(out, cap, "%.*s", (int)(len < cap ? len : cap - 1), p);
    return out;
}

/* Every histogram series: le increasing, counts cumulative, +Inf last and
 * equal to _count, a _sum. */
static void check_histograms(metrics_t *m)
{
    for (int f = 0; f < m->nfamilies; f++) {
        if (strcmp(m->families[f].type, "histogram"))
            continue;
        char bucket[160], sum[160], count[160];
        snprintf(bucket, sizeof(bucket), "%s_bucket", m->families[f].name);
        snprintf(sum, sizeof(sum), "%s_sum", m->families[f].name);
        snprintf(count, sizeof(count), "%s_count", m->families[f].name);
        for (int i = 0; i < m->n; i++) {
            if (strcmp(m->samples[i].name, count))
                continue;
            const char *key = m->samples[i].labels;
            double last_le = -INFINITY, last_count = 0;
            int buckets = 0;
            bool has_sum = false;
            for (int j = 0; j < m->n; j++) {
                char k[256], le[32];
                if (!strcmp(m->samples[j].name, sum) && !strcmp(m->samples[j].labels, key))
                    has_sum = true;
                if (strcmp(m->samples[j].name, bucket))
                    continue;
                without_le(m->samples[j].labels, k, sizeof(k));
                if (strcmp(k, key))
                    continue;
                assert_non_null(label_value(m->samples[j].labels, "le", le, sizeof(le)));
                double lev = !strcmp(le, "+Inf") ? INFINITY : strtod(le, NULL);
                assert_true(lev > last_le);                     /* buckets in increasing order */
                assert_true(m->samples[j].value >= last_count); /* cumulative */
                last_le = lev;
                last_count = m->samples[j].value;
                buckets++;
            }
            assert_true(buckets >= 2);
            assert_true(isinf(last_le));                    /* +Inf is the last */
            assert_true(last_count == m->samples[i].value); /* _count == the +Inf bucket */
            assert_true(has_sum);
        }
    }
}

/* Parses the whole exposition; fails the test at the first deviation. */
static void metrics_parse(const char *text, metrics_t *m)
{
    memset(m, 0, sizeof(*m));
    size_t tl = strlen(text);
    assert_true(tl > 0 && text[tl - 1] == '\n');
    int current = -1; /* the family whose samples are being read: they must be contiguous */
    for (const char *line = text; *line; line = strchr(line, '\n') + 1) {
        size_t len = strcspn(line, "\n");
        char copy[512];
        snprintf(copy, sizeof(copy), "%.*s", (int)len, line);
        if (len == 0)
            PARSE_FAIL(copy, "empty line");
        if (copy[0] == '#') {
            char kind[8], name[128];
            int off = 0;
            if (sscanf(copy, "# %7s %127s %n", kind, name, &off) < 2 || !metric_name_ok(name, strlen(name)))
                PARSE_FAIL(copy, "bad comment");
            family_t *f = family_find(m, name);
            if (!f) {
                assert_true(m->nfamilies < 64);
                f = &m->families[m->nfamilies++];
                snprintf(f->name, sizeof(f->name), "%s", name);
            }
            int index = (int)(f - m->families);
            if (current >= 0 && index != current) {
                for (int i = 0; i < m->n; i++)
                    if (family_of(m, m->samples[i].name) == f)
                        PARSE_FAIL(copy, "family %s comes back after others", name);
            }
            current = index;
            if (!strcmp(kind, "HELP")) {
                if (f->help || off == 0 || !copy[off])
                    PARSE_FAIL(copy, "HELP repeated or empty");
                f->help = true;
            } else if (!strcmp(kind, "TYPE")) {
                const char *t = copy + off;
                if (f->type[0] || (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram")))
                    PARSE_FAIL(copy, "TYPE repeated or unknown");
                for (int i = 0; i < m->n; i++)
                    if (family_of(m, m->samples[i].name) == f)
                        PARSE_FAIL(copy, "TYPE after a sample");
                snprintf(f->type, sizeof(f->type), "%s", t);
                if (!strcmp(t, "counter") && (strlen(name) < 6 || strcmp(name + strlen(name) - 6, "_total")))
                    PARSE_FAIL(copy, "a counter not named _total");
            } else {
                PARSE_FAIL(copy, "a comment that is neither HELP nor TYPE");
            }
            continue;
        }
        sample_t s = {0};
        const char *p = copy;
        while (*p && *p != '{' && *p != ' ')
            p++;
        if (!metric_name_ok(copy, (size_t)(p - copy)) || (size_t)(p - copy) >= sizeof(s.name))
            PARSE_FAIL(copy, "bad metric name");
        snprintf(s.name, sizeof(s.name), "%.*s", (int)(p - copy), copy);
        if (*p == '{')
            p = parse_labels(copy, p + 1, s.labels, sizeof(s.labels));
        if (*p++ != ' ')
            PARSE_FAIL(copy, "no space before the value");
        if (strchr(p, ' '))
            PARSE_FAIL(copy, "a timestamp or trailing field");
        s.value = parse_value(copy, p, strlen(p));
        family_t *f = family_of(m, s.name);
        if (!f || !f->type[0])
            PARSE_FAIL(copy, "a sample without a TYPE");
        if ((int)(f - m->families) != current)
            PARSE_FAIL(copy, "a sample outside its family's block");
        if (!strcmp(f->type, "histogram") && strstr(s.name, "_bucket") && !strstr(s.labels, "le=\""))
            PARSE_FAIL(copy, "a bucket without le");
        if (strcmp(f->type, "gauge") && s.value < 0)
            PARSE_FAIL(copy, "a negative counter");
        for (int i = 0; i < m->n; i++)
            if (!strcmp(m->samples[i].name, s.name) && !strcmp(m->samples[i].labels, s.labels))
                PARSE_FAIL(copy, "a duplicate series");
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 256;
            m->samples = realloc(m->samples, (size_t)m->cap * sizeof(*m->samples));
            assert_non_null(m->samples);
        }
        m->samples[m->n++] = s;
    }
    for (int i = 0; i < m->nfamilies; i++)
        assert_true(m->families[i].help && m->families[i].type[0]);
    check_histograms(m);
}

/* The value of one series; fails if absent. */
static double mget(const metrics_t *m, const char *name, const char *labels)
{
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->samples[i].name, name) && !strcmp(m->samples[i].labels, labels))
            return m->samples[i].value;
    fprintf(stderr, "no series %s{%s}\n", name, labels);
    fail();
    return 0;
}

static bool mhas(const metrics_t *m, const char *name, const char *labels)
{
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->samples[i].name, name) && !strcmp(m->samples[i].labels, labels))
            return true;
    return false;
}

/* The sum of a metric over every series whose labels contain `with` (NULL: all). */
static double msum(const metrics_t *m, const char *name, const char *with)
{
    double v = 0;
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->samples[i].name, name) && (!with || strstr(m->samples[i].labels, with)))
            v += m->samples[i].value;
    return v;
}

/* Series of a metric whose labels contain `with` (NULL: all). */
static int mcount_with(const metrics_t *m, const char *name, const char *with)
{
    int n = 0;
    for (int i = 0; i < m->n; i++)
        n += !strcmp(m->samples[i].name, name) && (!with || strstr(m->samples[i].labels, with));
    return n;
}

static int mcount(const metrics_t *m, const char *name)
{
    return mcount_with(m, name, NULL);
}

/* ---- the server and a scrape ------------------------------------------------ */

static const char *const loop_families[] = {
    "ioloop_loop_iterations_total", "ioloop_loop_busy_seconds_total", "ioloop_loop_callbacks_total",
    "ioloop_loop_posts_total",      "ioloop_loop_wakeups_total",      "ioloop_loop_events_total",
    "ioloop_loop_timers_total",     "ioloop_loop_connections",        "ioloop_loop_longest_busy_seconds",
};

static void h_redirect(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_status(req, 302);
    ioloop_http_response_header(req, "Location", "/ok");
    ioloop_http_response_finish(req);
}

static void h_fail(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 500, "text/plain", "no", 2);
}

static void slow_finish(ioloop_t *loop, void *req)
{
    (void)loop;
    ioloop_http_response_send(req, 200, "text/plain", "late", 4);
}

/* A late handler: answers 30 ms later, from a timer. */
static void h_slow(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(30), slow_finish, req, NULL), 0);
}

static void msrv_start(tsrv_t *t, int loops)
{
    tsrv_init_loops(t, NULL, loops);
    assert_int_equal(ioloop_http_server_metrics_route(t->server, "/metrics"), 0);
    assert_int_equal(ioloop_http_server_route(t->server, "/ok", &(ioloop_http_route_t){.get = th_ok}), 0);
    assert_int_equal(ioloop_http_server_route(t->server, "/redirect", &(ioloop_http_route_t){.get = h_redirect}), 0);
    assert_int_equal(ioloop_http_server_route(t->server, "/fail", &(ioloop_http_route_t){.get = h_fail}), 0);
    assert_int_equal(ioloop_http_server_route(t->server, "/slow", &(ioloop_http_route_t){.get = h_slow}), 0);
    assert_int_equal(ioloop_http_websocket_route(t->server, "/ws", &(ioloop_websocket_route_t){0}), 0);
    /* EXCLUSIVE (with epoll): a loop stopped on purpose
     * (test_scrape_while_loops_stop) takes no connection. */
    tsrv_serve(t, IOLOOP_ACCEPT_EXCLUSIVE);
}

/* One request with Connection: close; returns the status and adds every
 * byte received (head and body: the whole response) to *bytes. */
static int request_close(int port, const char *path, size_t *bytes)
{
    char raw[256];
    snprintf(raw, sizeof(raw), "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    int fd = tcli_connect(port);
    tcli_send(fd, raw);
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    if (bytes)
        *bytes += tcli_got;
    int status = r.status;
    tresp_free(&r);
    close(fd);
    return status;
}

/* Scrapes over a fresh connection into *m; the response's size goes to
 * *bytes if not NULL. Returns 0, or -1 if the server went away first (the
 * connection refused, reset, or closed before a full response). */
static int scrape_try(int port, metrics_t *m, size_t *bytes)
{
    int fd = tcli_try_connect(port);
    if (fd < 0)
        return -1;
    const char *raw = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    if (send(fd, raw, strlen(raw), MSG_NOSIGNAL) != (ssize_t)strlen(raw)) {
        close(fd);
        return -1;
    }
    tresp_t r;
    int rc = tcli_response(fd, &r);
    close(fd);
    if (rc != 0)
        return -1;
    if (r.status != 200)
        fprintf(stderr, "scrape: %s\n", r.head);
    assert_int_equal(r.status, 200);
    assert_true(tresp_has(&r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8"));
    assert_int_equal(strlen(r.body), r.body_len); /* text, no NUL */
    metrics_parse(r.body, m);
    if (bytes)
        *bytes += tcli_got;
    tresp_free(&r);
    return 0;
}

static void scrape(int port, metrics_t *m, size_t *bytes)
{
    assert_int_equal(scrape_try(port, m, bytes), 0);
}

/* ---- tests ------------------------------------------------------------------ */

/* The exposition parses strictly; HEAD gets the head alone; a non-literal
 * path is refused. */
static void test_format(void **state)
{
    (void)state;
    tsrv_t t;
    msrv_start(&t, 2);
    for (int i = 0; i < 4; i++)
        assert_int_equal(request_close(t.port, "/ok", NULL), 200);
    metrics_t m;
    scrape(t.port, &m, NULL);
    static const char *const http_families[] = {
        "ioloop_http_connections_accepted_total", "ioloop_http_requests_total",
        "ioloop_http_response_bytes_total",       "ioloop_http_responses_total",
        "ioloop_http_request_duration_seconds",
    };
    for (size_t i = 0; i < sizeof(loop_families) / sizeof(loop_families[0]); i++)
        assert_non_null(family_find(&m, loop_families[i]));
    for (size_t i = 0; i < sizeof(http_families) / sizeof(http_families[0]); i++)
        assert_non_null(family_find(&m, http_families[i]));
    assert_string_equal(family_find(&m, "ioloop_http_request_duration_seconds")->type, "histogram");
    assert_string_equal(family_find(&m, "ioloop_loop_connections")->type, "gauge");
    /* the buckets named in the brief, first and last finite */
    int series = mcount(&m, "ioloop_http_request_duration_seconds_count");
    assert_true(series >= 1);
    assert_int_equal(mcount_with(&m, "ioloop_http_request_duration_seconds_bucket", "le=\"0.0005\""), series);
    assert_int_equal(mcount_with(&m, "ioloop_http_request_duration_seconds_bucket", "le=\"10\""), series);
    assert_int_equal(mcount(&m, "ioloop_http_request_duration_seconds_bucket"), 15 * series);
    assert_true(msum(&m, "ioloop_http_responses_total", "code=\"2xx\"") >= 4);
    metrics_free(&m);

    tresp_t r;
    int fd = tcli_connect(t.port);
    tcli_send(fd, "HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
    close(fd);
    assert_int_equal(r.status, 200);
    assert_true(tresp_has(&r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8"));
    tresp_free(&r);

    assert_int_equal(ioloop_http_server_metrics_route(t.server, "/metrics"), -EEXIST);
    assert_int_equal(ioloop_http_server_metrics_route(t.server, "/m(.*)"), -EINVAL);
    assert_int_equal(ioloop_http_server_metrics_route(t.server, "metrics"), -EINVAL);
    assert_int_equal(ioloop_http_server_metrics_route(NULL, "/x"), -EINVAL);
    tsrv_stop(&t);
}

static void spin_50ms(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    int64_t end = tu_now_ns() + 50 * 1000000LL;
    while (tu_now_ns() < end)
        ;
}

static atomic_int posted_ran;

static void count_post(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    atomic_fetch_add(&posted_ran, 1);
}

/* Every counter moves by what was done between two scrapes. */
static void test_counters_move(void **state)
{
    (void)state;
    enum { N = 7, POSTS = 50 };
    tsrv_t t;
    msrv_start(&t, 2);
    metrics_t a, b;
    size_t scrape_a_bytes = 0, bytes = 0;
    scrape(t.port, &a, &scrape_a_bytes);
    int64_t t0 = tu_now_ns();
    for (int i = 0; i < N; i++) {
        assert_int_equal(request_close(t.port, "/ok", &bytes), 200);
        assert_int_equal(request_close(t.port, "/redirect", &bytes), 302);
        assert_int_equal(request_close(t.port, "/fail", &bytes), 500);
        assert_int_equal(request_close(t.port, "/slow", &bytes), 200);
        assert_int_equal(request_close(t.port, "/nowhere", &bytes), 404);
        /* a request the parser rejects: the server's own 400 */
        int fd = tcli_connect(t.port);
        tcli_send(fd, "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        tresp_t r;
        assert_int_equal(tcli_response(fd, &r), 0);
        assert_int_equal(r.status, 400);
        bytes += tcli_got;
        assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
        tresp_free(&r);
        close(fd);
    }
    /* a WebSocket handshake: its 101 is a response too */
    int ws = tcli_connect(t.port);
    tcli_send(ws, "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    tresp_t wr;
    assert_int_equal(tcli_response_ex(ws, &wr, true, true), 0);
    assert_int_equal(wr.status, 101);
    bytes += tcli_got;
    tresp_free(&wr);
    /* loop 1: a 50 ms busy callback and posts from this thread */
    ioloop_t *loop1 = ioloop_runtime_loop(t.rt, 1);
    atomic_store(&posted_ran, 0);
    ioloop_stats_t st0;
    ioloop_get_stats(loop1, &st0);
    ioloop_time_t busy_before = st0.busy_time;
    assert_int_equal(ioloop_add_callback(loop1, spin_50ms, NULL), 0);
    for (int i = 0; i < POSTS; i++)
        assert_int_equal(ioloop_add_callback(loop1, count_post, NULL), 0);
    while (atomic_load(&posted_ran) < POSTS)
        tu_sleep_ms(1);
    /* Posts to a loop that is awake need no wakeup: these find it asleep
     * (idle 20 ms before each; one of five is enough on a loaded machine). */
    for (int i = 0; i < 5; i++) {
        tu_sleep_ms(20);
        assert_int_equal(ioloop_add_callback(loop1, count_post, NULL), 0);
    }
    while (atomic_load(&posted_ran) < POSTS + 5)
        tu_sleep_ms(1);
    /* The busy time is added when the iteration ends, which may come a while
     * after its callbacks ran on a loaded machine: wait (bounded) for it. */
    ioloop_stats_t st1;
    int64_t busy_end = tu_now_ns() + 5 * 1000000000LL;
    do {
        ioloop_get_stats(loop1, &st1);
    } while (st1.busy_time - busy_before < IOLOOP_MSEC(50) && tu_now_ns() < busy_end && (tu_sleep_ms(1), 1));
    /* three idle keep-alive connections are live during the scrape */
    int idle[3];
    for (int i = 0; i < 3; i++) {
        idle[i] = tcli_connect(t.port);
        tcli_send(idle[i], "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n");
        TCLI_EXPECT_BODY(idle[i], "ok");
    }
    scrape(t.port, &b, NULL);
    double elapsed = (double)(tu_now_ns() - t0) / 1e9;

#define DELTA(name, labels) (mget(&b, name, labels) - mget(&a, name, labels))
#define DELTA_SUM(name, with) (msum(&b, name, with) - msum(&a, name, with))
    const char *resp = "ioloop_http_responses_total";
    assert_true(DELTA_SUM(resp, "code=\"1xx\"") == 1); /* the WebSocket handshake's 101 */
    assert_true(DELTA_SUM(resp, "code=\"2xx\"") == 2 * N + 1 + 3); /* ok, slow, scrape a, the idle three */
    assert_true(DELTA_SUM(resp, "code=\"3xx\"") == N);
    assert_true(DELTA_SUM(resp, "code=\"4xx\"") == 2 * N); /* 404 and 400 */
    assert_true(DELTA_SUM(resp, "code=\"5xx\"") == N);
    /* Requests and connections are counted when they arrive, so scrape a's
     * were already in a, and scrape b's are in b; a response is counted once
     * finished, after its body was formatted: scrape a's is in b, b's in
     * neither. Requests reaching a handler or the router: all but the 400s. */
    assert_true(DELTA_SUM("ioloop_http_requests_total", NULL) == 5 * N + 1 + 3 + 1); /* + the handshake */
    /* connections: the 6N, the WebSocket's, the idle three, scrape b's */
    assert_true(DELTA_SUM("ioloop_http_connections_accepted_total", NULL) == 6 * N + 1 + 3 + 1);
    /* bytes: exactly what the clients received (scrape a's response included;
     * the idle connections' three responses are as long as an /ok one) */
    size_t ok_bytes = 0;
    int fd = tcli_connect(t.port);
    tcli_send(fd, "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    ok_bytes = tcli_got;
    tresp_free(&r);
    close(fd);
    assert_true(DELTA_SUM("ioloop_http_response_bytes_total", NULL) == (double)(bytes + scrape_a_bytes + 3 * ok_bytes));
    /* the histogram: every finished request, and the slow ones above 25 ms */
    const char *h = "ioloop_http_request_duration_seconds";
    assert_true(DELTA_SUM("ioloop_http_request_duration_seconds_count", NULL) == 5 * N + 1 + 1 + 3);
    double over_25ms = DELTA_SUM("ioloop_http_request_duration_seconds_bucket", "le=\"+Inf\"") -
                       DELTA_SUM("ioloop_http_request_duration_seconds_bucket", "le=\"0.025\"");
    assert_true(over_25ms >= N);
    assert_true(DELTA_SUM("ioloop_http_request_duration_seconds_sum", NULL) >= N * 0.030);
    (void)h;
    /* the loops: posts and their wakeups, the busy callback, timers, connections */
    assert_true(DELTA("ioloop_loop_posts_total", "loop=\"1\"") >= POSTS + 5);
    assert_true(DELTA("ioloop_loop_wakeups_total", "loop=\"1\"") >= 1);
    assert_true(DELTA("ioloop_loop_wakeups_total", "loop=\"1\"") <= POSTS + 5 + 2 * 6 * N); /* not one per post */
    assert_true(DELTA("ioloop_loop_callbacks_total", "loop=\"1\"") >= POSTS + 5 + 1);
    double busy1 = DELTA("ioloop_loop_busy_seconds_total", "loop=\"1\"");
    assert_true(busy1 >= 0.050);
    assert_true(busy1 <= elapsed);
    assert_true(DELTA_SUM("ioloop_loop_busy_seconds_total", NULL) <= 2 * elapsed);
    assert_true(mget(&b, "ioloop_loop_longest_busy_seconds", "loop=\"1\"") >= 0.050);
    assert_true(DELTA_SUM("ioloop_loop_timers_total", NULL) >= N);
    assert_true(DELTA_SUM("ioloop_loop_iterations_total", NULL) > 0);
    assert_true(DELTA_SUM("ioloop_loop_events_total", NULL) >= 6 * N);
    assert_true(msum(&b, "ioloop_loop_connections", NULL) >= 3 + 1); /* the idle three and the scrape's */
    /* ioloop_http_server_get_stats reads the same counters */
    ioloop_http_server_stats_t st;
    ioloop_http_server_get_stats(t.server, &st);
    assert_true((double)st.responses[2] == msum(&b, resp, "code=\"3xx\""));
    assert_true((double)st.responses[4] == msum(&b, resp, "code=\"5xx\""));
    assert_true((double)st.bytes_out >= msum(&b, "ioloop_http_response_bytes_total", NULL));
#undef DELTA
#undef DELTA_SUM
    for (int i = 0; i < 3; i++)
        close(idle[i]);
    close(ws);
    metrics_free(&a);
    metrics_free(&b);
    tsrv_stop(&t);
}

/* Every loop of the runtime has its label, served on it or not; a loop of
 * the application's own (ioloop_http_server_accept) is labelled by its id. */
static void accept_on_app_loop(ioloop_t *loop, void *arg)
{
    tsrv_t *t = arg;
    int fd = (int)(intptr_t)ioloop_user_data(loop);
    ioloop_http_server_accept(loop, fd, NULL, 0, t->server);
}

static void test_labels_every_loop(void **state)
{
    (void)state;
    tsrv_t t;
    msrv_start(&t, 4);
    /* an application's loop, on its own thread, served one request */
    ioloop_t *app;
    assert_int_equal(ioloop_new(NULL, &app), 0);
    pthread_t app_thread = tu_start_loop_thread(app);
    int pair[2];
    tu_socketpair(pair);
    ioloop_set_user_data(app, (void *)(intptr_t)pair[0]);
    assert_int_equal(ioloop_add_callback(app, accept_on_app_loop, &t), 0);
    tcli_blocking(pair[1]);
    tcli_send(pair[1], "GET /fail HTTP/1.1\r\nHost: t\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(pair[1], &r), 0);
    assert_int_equal(r.status, 500);
    tresp_free(&r);

    metrics_t m;
    scrape(t.port, &m, NULL);
    char labels[64];
    for (size_t f = 0; f < sizeof(loop_families) / sizeof(loop_families[0]); f++) {
        for (int i = 0; i < 4; i++) {
            snprintf(labels, sizeof(labels), "loop=\"%d\"", i);
            assert_true(mhas(&m, loop_families[f], labels));
        }
        snprintf(labels, sizeof(labels), "loop=\"id%u\"", ioloop_id(app));
        assert_true(mhas(&m, loop_families[f], labels));
        assert_int_equal(mcount(&m, loop_families[f]), 5);
    }
    snprintf(labels, sizeof(labels), "loop=\"id%u\",code=\"5xx\"", ioloop_id(app));
    assert_true(mget(&m, "ioloop_http_responses_total", labels) == 1);
    snprintf(labels, sizeof(labels), "loop=\"id%u\"", ioloop_id(app));
    assert_true(mget(&m, "ioloop_http_request_duration_seconds_count", labels) == 1);
    /* the scrape's own loop has the server's counters under its index */
    assert_true(msum(&m, "ioloop_http_connections_accepted_total", "loop=\"") >= 2);
    metrics_free(&m);

    close(pair[1]);
    tu_join_loop_thread(app, app_thread);
    ioloop_runtime_stop(t.rt);
    assert_int_equal(ioloop_runtime_join(t.rt), 0);
    ioloop_listener_free(t.listener);
    ioloop_http_server_free(t.server);
    assert_int_equal(ioloop_close(app, false), 0);
    ioloop_runtime_free(t.rt);
}

/* ---- scraped while loops stop ------------------------------------------------- */

typedef struct {
    int port;
    atomic_bool stop;   /* stop after the scrape in flight */
    atomic_int ok;      /* scrapes that came back whole (and parsed) */
    atomic_bool failed; /* the server went away (an expected end) */
    bool stop_on_failure;
} scraper_t;

static void *scraper_main(void *arg)
{
    scraper_t *s = arg;
    while (!atomic_load(&s->stop)) {
        metrics_t m;
        if (scrape_try(s->port, &m, NULL) != 0) {
            atomic_store(&s->failed, true);
            if (s->stop_on_failure)
                break;
            tu_sleep_ms(1);
            continue;
        }
        metrics_free(&m);
        atomic_fetch_add(&s->ok, 1);
    }
    return NULL;
}

static void wait_scrapes(scraper_t *s, int more)
{
    int target = atomic_load(&s->ok) + more;
    int64_t end = tu_now_ns() + 20 * 1000000000LL;
    while (atomic_load(&s->ok) < target && tu_now_ns() < end)
        tu_sleep_ms(1);
    if (atomic_load(&s->ok) < target)
        fprintf(stderr, "scrapes: %d of %d, failed %d\n", atomic_load(&s->ok), target, atomic_load(&s->failed));
    assert_true(atomic_load(&s->ok) >= target);
}

/* A loop of the scraping runtime stops: its stats stay readable and frozen. */
static void test_scrape_while_loops_stop(void **state)
{
    (void)state;
    tsrv_t t;
    msrv_start(&t, 2);
    scraper_t sc = {.port = t.port};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, scraper_main, &sc), 0);
    wait_scrapes(&sc, 5);
    /* One loop stops first, when the other accepts every connection: with
     * EXCLUSIVE (epoll). The poll backend falls back to DISPATCH, which would
     * hand connections to the stopped loop: there the runtime stops whole. */
    if (ioloop_listener_mode(t.listener) == IOLOOP_ACCEPT_EXCLUSIVE) {
        ioloop_stop(ioloop_runtime_loop(t.rt, 1)); /* its thread returns from its loop */
        wait_scrapes(&sc, 20);
        metrics_t a, b;
        scrape(t.port, &a, NULL);
        tu_sleep_ms(20);
        scrape(t.port, &b, NULL);
        assert_true(mget(&b, "ioloop_loop_iterations_total", "loop=\"1\"") ==
                    mget(&a, "ioloop_loop_iterations_total", "loop=\"1\""));
        assert_true(mget(&b, "ioloop_loop_iterations_total", "loop=\"0\"") >
                    mget(&a, "ioloop_loop_iterations_total", "loop=\"0\""));
        metrics_free(&a);
        metrics_free(&b);
    }
    /* The scraper ends before the runtime stops: a connection it made after
     * the stop would wait in the backlog for its 5 s timeout.
     * test_scrape_during_shutdown stops a runtime under scrapers. (A scrape
     * that loop 1 accepted just as it stopped is never answered: sc.failed
     * may be set, and the scrapes after it count.) */
    atomic_store(&sc.stop, true);
    pthread_join(th, NULL);
    tsrv_stop(&t);
}

/* The graceful shutdown of every loop (ioloop_http_server_shutdown) under a
 * scraper that stops at the first refused or cut scrape. */
static void test_scrape_during_shutdown(void **state)
{
    (void)state;
    tsrv_t t;
    msrv_start(&t, 2);
    scraper_t sc[2] = {{.port = t.port, .stop_on_failure = true}, {.port = t.port, .stop_on_failure = true}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, scraper_main, &sc[i]), 0);
    wait_scrapes(&sc[0], 10);
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, IOLOOP_SEC(2)), 0);
    assert_int_equal(ioloop_runtime_join(t.rt), 0); /* the drain ended every loop */
    for (int i = 0; i < 2; i++) {
        atomic_store(&sc[i].stop, true);
        pthread_join(th[i], NULL);
    }
    ioloop_listener_free(t.listener);
    ioloop_http_server_free(t.server);
    ioloop_runtime_free(t.rt);
}

/* A second runtime serving the same server is freed (its loops closed and
 * freed) while the first one is scraped in a tight loop: its loops leave the
 * scrape, its workers' counters stay, labelled by loop id. */
static void test_scrape_while_other_runtime_freed(void **state)
{
    (void)state;
    tsrv_t t;
    msrv_start(&t, 1);
    ioloop_runtime_t *rt2;
    ioloop_listener_t *l2;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 2, .executor_threads = 2}, &rt2), 0);
    assert_int_equal(ioloop_http_server_serve(t.server, rt2, "127.0.0.1", 0, IOLOOP_ACCEPT_REUSEPORT, &l2), 0);
    int port2 = ioloop_listener_port(l2);
    unsigned ids[2] = {ioloop_id(ioloop_runtime_loop(rt2, 0)), ioloop_id(ioloop_runtime_loop(rt2, 1))};
    for (int i = 0; i < 40; i++)
        assert_int_equal(request_close(port2, "/fail", NULL), 500);
    /* every connection to rt2 closed before its loops close */
    for (int i = 0; i < 2; i++) {
        ioloop_stats_t st;
        int64_t end = tu_now_ns() + 5 * 1000000000LL;
        do {
            ioloop_get_stats(ioloop_runtime_loop(rt2, i), &st);
        } while (st.live_connections && tu_now_ns() < end && (tu_sleep_ms(1), 1));
        assert_int_equal(st.live_connections, 0);
    }
    scraper_t sc = {.port = t.port};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, scraper_main, &sc), 0);
    wait_scrapes(&sc, 5);
    metrics_t m;
    scrape(t.port, &m, NULL);
    assert_int_equal(mcount(&m, "ioloop_loop_iterations_total"), 3); /* rt's loop 0, rt2's two by id */
    metrics_free(&m);

    ioloop_runtime_stop(rt2);
    assert_int_equal(ioloop_runtime_join(rt2), 0);
    ioloop_listener_free(l2);
    ioloop_runtime_free(rt2); /* closes rt2's loops: they leave the registry and are freed */
    wait_scrapes(&sc, 20);
    scrape(t.port, &m, NULL);
    assert_int_equal(mcount(&m, "ioloop_loop_iterations_total"), 1);
    assert_true(mhas(&m, "ioloop_loop_iterations_total", "loop=\"0\""));
    double fails = 0;
    char labels[64];
    for (int i = 0; i < 2; i++) { /* the kernel spread the 40 over rt2's sockets */
        snprintf(labels, sizeof(labels), "loop=\"id%u\",code=\"5xx\"", ids[i]);
        if (mhas(&m, "ioloop_http_responses_total", labels))
            fails += mget(&m, "ioloop_http_responses_total", labels);
    }
    assert_true(fails == 40);
    metrics_free(&m);
    atomic_store(&sc.stop, true);
    pthread_join(th, NULL);
    assert_false(atomic_load(&sc.failed));
    tsrv_stop(&t);
}

/* ---- hostile scrapers ---------------------------------------------------------- */

/* One that pipelines scrapes and never reads, one that sends its request a
 * byte at a time, one that resets mid-response: the server stops reading the
 * first (its output is bounded), answers the slow one, survives the reset,
 * and serves a normal scrape all along. */
static void test_hostile_scrapers(void **state)
{
    (void)state;
    tsrv_t t;
    msrv_start(&t, 1);
    /* never reads: ~20 MB of padded requests, whose answers would be ~100 MB */
    int never = tcli_connect(t.port);
    fcntl(never, F_SETFL, fcntl(never, F_GETFL) | O_NONBLOCK);
    char req[1200];
    int rl = snprintf(req, sizeof(req), "GET /metrics HTTP/1.1\r\nHost: t\r\nX-Pad: %01024d\r\n\r\n", 0);
    size_t sent = 0, total = (size_t)rl * 20000;
    int64_t progress = tu_now_ns();
    while (sent < total && tu_now_ns() - progress < 500 * 1000000LL) { /* until 0.5 s without progress */
        ssize_t n = send(never, req + sent % (size_t)rl, (size_t)rl - sent % (size_t)rl, MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            progress = tu_now_ns();
        } else {
            tu_sleep_ms(5);
        }
    }
    assert_true(sent < total); /* the server stopped reading it */

    /* resets after sending a few scrapes */
    int reset = tcli_connect(t.port);
    for (int i = 0; i < 20; i++)
        tcli_send(reset, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    char some[100];
    assert_true(recv(reset, some, sizeof(some), 0) > 0); /* mid-response */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(reset, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(reset);

    /* one byte at a time, a normal scrape between bytes */
    const char *slow = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    int slowfd = tcli_connect(t.port);
    for (size_t i = 0; slow[i]; i++) {
        tcli_sendn(slowfd, slow + i, 1);
        if (i % 8 == 0) {
            metrics_t m;
            scrape(t.port, &m, NULL);
            assert_true(msum(&m, "ioloop_loop_connections", NULL) >= 3); /* never, slow, this one */
            metrics_free(&m);
        } else {
            tu_sleep_ms(2);
        }
    }
    tresp_t r;
    assert_int_equal(tcli_response(slowfd, &r), 0);
    assert_int_equal(r.status, 200);
    metrics_t m;
    metrics_parse(r.body, &m);
    metrics_free(&m);
    tresp_free(&r);
    close(slowfd);
    close(never);
    /* the reset and the never-reading connections went away: the loop's gauge says so */
    int64_t end = tu_now_ns() + 5 * 1000000000LL;
    double live;
    do {
        scrape(t.port, &m, NULL);
        live = msum(&m, "ioloop_loop_connections", NULL);
        metrics_free(&m);
    } while (live > 1 && tu_now_ns() < end && (tu_sleep_ms(10), 1));
    assert_true(live == 1);
    tsrv_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_counters_move),
        cmocka_unit_test(test_labels_every_loop),
        cmocka_unit_test(test_scrape_while_loops_stop),
        cmocka_unit_test(test_scrape_during_shutdown),
        cmocka_unit_test(test_scrape_while_other_runtime_freed),
        cmocka_unit_test(test_hostile_scrapers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
