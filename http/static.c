/* static.c — ioloop_http_static_route: files under a root directory, as
 * Tornado's StaticFileHandler and nginx serve them (see http.h for the
 * rules). The request path is checked on the loop (no "..", ".", empty
 * segments, backslash, encoded '/' or NUL); opening, fstat, the gzip_static
 * twin, a directory's index or listing and reading a small file run in one
 * executor job; the answer (conditional, range, headers) is decided back on
 * the loop, and a large body goes out with ioloop_stream_write_file.
 *
 * Threading rule: the route's state is made before serving and read-only
 * afterwards (any thread); a job belongs to one request: filled on the pool
 * thread, read on the request's loop after the future completes.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Files up to this size are read in the job and copied into the response:
 * one send for head and body (sendfile would add a syscall and a packet). */
#define STATIC_SMALL 32768

_Atomic(ioloop__http_static_hook_fn) ioloop__http_static_test_hook;
atomic_bool ioloop__http_static_no_openat2;

typedef struct loop_cache loop_cache_t;

typedef struct http_static {
    struct http_static *next;
    ioloop_time_t cache_valid;
    atomic_int refs; /* the server's, and one per executor job: a job may outlive ioloop_http_server_free */
    _Atomic(loop_cache_t *) caches; /* one per loop that served this route (pushed lock-free) */
    char *prefix;
    size_t prefix_len;
    int root_fd;     /* O_PATH directory */
    char *root_real; /* realpath(root_dir): the fallback beneath-check */
    char *cache_control;
    char *index;
    bool list_directories, follow_symlinks, gzip_static;
} http_static_t;

/* One request's work: inputs from the loop, results from the pool thread. */
typedef struct {
    const http_static_t *st;
    ioloop_http_request_t *req;
    ioloop_t *loop; /* req's (req must not be used after its finish) */
    char *rel;      /* decoded path under the root ("" for the root) */
    bool slash, accept_gzip, has_range;
    /* results */
    int status; /* 0: a file to serve, else the HTTP status (301, 403, 404, 500) */
    int fd;
    struct stat sb;
    const char *type_name; /* the name the Content-Type comes from */
    char *type_buf;
    bool gz_used, gz_exists;
    char *small; /* the whole file when it is small */
    size_t small_len;
    char *listing; /* a directory's HTML page */
    size_t listing_len;
} static_job_t;

/* ---- the path ------------------------------------------------------------------ */

/* Decodes raw (the path after the prefix) into a relative path: NULL (404)
 * for a bad escape, an encoded NUL or '/', a backslash, or a segment that is
 * empty, "." or ".." (only a final '/' may end in an empty one). *slash:
 * it ends with '/'. */
static char *decode_relative(const char *raw, bool *slash)
{
    size_t len = strlen(raw);
    if (len >= PATH_MAX)
        return NULL;
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = raw[i];
        if (ch == '%') {
            int hi = ioloop__http_hexval(raw[i + 1]); /* raw[len] is the NUL: -1 */
            int lo = hi >= 0 ? ioloop__http_hexval(raw[i + 2]) : -1;
            if (lo < 0)
                goto bad;
            ch = (char)(hi * 16 + lo);
            i += 2;
            if (ch == '\0' || ch == '/')
                goto bad; /* an encoded separator or NUL is never a file name here */
        }
        if (ch == '\\')
            goto bad;
        out[n++] = ch;
    }
    out[n] = '\0';
    *slash = n > 0 && out[n - 1] == '/';
    /* every segment must be a real name; only a final '/' leaves an empty one */
    const char *seg = out;
    while (n) {
        const char *end = strchr(seg, '/');
        size_t sl = end ? (size_t)(end - seg) : strlen(seg);
        bool final_empty = !end && sl == 0;
        if (!final_empty && (sl == 0 || (sl == 1 && seg[0] == '.') || (sl == 2 && seg[0] == '.' && seg[1] == '.')))
            goto bad;
        if (!end)
            break;
        seg = end + 1;
    }
    return out;
bad:
    free(out);
    return NULL;
}

/* ---- the job (pool thread) -------------------------------------------------------- */

/* Opens rel under the root: never outside it unless follow_symlinks. fd or
 * a negative errno (-EXDEV: it leads outside). */
static int open_beneath(const http_static_t *st, const char *rel)
{
    const char *path = *rel ? rel : ".";
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK; /* a FIFO must not block the pool */
    if (st->follow_symlinks) {
        int fd = openat(st->root_fd, path, flags);
        return fd >= 0 ? fd : -errno;
    }
#ifdef SYS_openat2
    if (atomic_load_explicit(&ioloop__http_static_no_openat2, memory_order_relaxed))
        goto fallback;
    struct open_how how = {.flags = (uint64_t)flags, .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, st->root_fd, path, &how, sizeof(how));
    if (fd >= 0)
        return (int)fd;
    if (errno != ENOSYS && errno != EPERM) /* EPERM: a seccomp filter that does not know openat2 */
        return -errno;
#endif
#ifdef SYS_openat2
fallback:; /* a label before a declaration is C23: clang rejects it in C11 */
#endif
    /* No openat2: open, then check where the fd really is. */
    int ofd = openat(st->root_fd, path, flags);
    if (ofd < 0)
        return -errno;
    char link[64], real[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", ofd);
    ssize_t rl = readlink(link, real, sizeof(real) - 1);
    if (rl < 0) {
        close(ofd);
        return -EXDEV;
    }
    real[rl] = '\0';
    size_t root_len = strlen(st->root_real);
    if (strncmp(real, st->root_real, root_len) != 0 ||
        (real[root_len] != '\0' && real[root_len] != '/' && strcmp(st->root_real, "/") != 0)) {
        close(ofd);
        return -EXDEV;
    }
    return ofd;
}

static int status_of(int err)
{
    switch (err) {
    case -ENOENT:
    case -ENOTDIR:
    case -ENAMETOOLONG:
        return 404;
    case -EXDEV:
    case -ELOOP:
    case -EACCES:
    case -EPERM:
        return 403;
    default:
        return 500;
    }
}

/* Appends s with HTML's special characters escaped. */
static int buf_add(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap ? *cap : 4096;
        while (*len + n + 1 > ncap)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return -ENOMEM;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

static int buf_html(char **buf, size_t *len, size_t *cap, const char *s)
{
    int err = 0;
    for (; *s && !err; s++) {
        switch (*s) {
        case '&':
            err = buf_add(buf, len, cap, "&amp;", 5);
            break;
        case '<':
            err = buf_add(buf, len, cap, "&lt;", 4);
            break;
        case '>':
            err = buf_add(buf, len, cap, "&gt;", 4);
            break;
        case '"':
            err = buf_add(buf, len, cap, "&quot;", 6);
            break;
        case '\'':
            err = buf_add(buf, len, cap, "&#39;", 5);
            break;
        default:
            err = buf_add(buf, len, cap, s, 1);
        }
    }
    return err;
}

/* A name as a URL path segment: unreserved bytes as they are, the rest %XX. */
static int buf_url(char **buf, size_t *len, size_t *cap, const char *s)
{
    int err = 0;
    for (; *s && !err; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || strchr("-._~", ch)) {
            err = buf_add(buf, len, cap, s, 1);
        } else {
            char esc[4];
            snprintf(esc, sizeof(esc), "%%%02X", ch);
            err = buf_add(buf, len, cap, esc, 3);
        }
    }
    return err;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The listing page of the directory open at fd, titled with its path. */
static int list_directory(static_job_t *job, int fd, const char *shown_path)
{
    int dfd = dup(fd);
    DIR *dir = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!dir) {
        if (dfd >= 0)
            close(dfd);
        return -errno;
    }
    char **names = NULL;
    size_t count = 0, names_cap = 0;
    int err = 0;
    struct dirent *ent;
    while (!err && (ent = readdir(dir))) {
        if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
            continue;
        bool is_dir = ent->d_type == DT_DIR;
        if (ent->d_type == DT_UNKNOWN || ent->d_type == DT_LNK) {
            struct stat sb;
            is_dir = fstatat(fd, ent->d_name, &sb, 0) == 0 && S_ISDIR(sb.st_mode);
        }
        if (count == names_cap) {
            names_cap = names_cap ? names_cap * 2 : 64;
            char **nn = realloc(names, names_cap * sizeof(*names));
            if (!nn) {
                err = -ENOMEM;
                break;
            }
            names = nn;
        }
        size_t nl = strlen(ent->d_name);
        char *name = malloc(nl + 2);
        if (!name) {
            err = -ENOMEM;
            break;
        }
        memcpy(name, ent->d_name, nl);
        name[nl] = is_dir ? '/' : '\0';
        name[nl + 1] = '\0';
        names[count++] = name;
    }
    closedir(dir);
    if (!err)
        qsort(names, count, sizeof(*names), name_cmp);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (!err)
        err = buf_add(&buf, &len, &cap, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of ", 66);
    if (!err)
        err = buf_html(&buf, &len, &cap, shown_path);
    if (!err)
        err = buf_add(&buf, &len, &cap, "</title></head>\n<body><h1>Index of ", 35);
    if (!err)
        err = buf_html(&buf, &len, &cap, shown_path);
    if (!err)
        err = buf_add(&buf, &len, &cap, "</h1>\n<ul>\n", 11);
    for (size_t i = 0; i < count && !err; i++) {
        size_t nl = strlen(names[i]);
        bool is_dir = nl && names[i][nl - 1] == '/';
        if (is_dir)
            names[i][nl - 1] = '\0';
        err = buf_add(&buf, &len, &cap, "<li><a href=\"", 13);
        if (!err)
            err = buf_url(&buf, &len, &cap, names[i]);
        if (!err && is_dir)
            err = buf_add(&buf, &len, &cap, "/", 1);
        if (!err)
            err = buf_add(&buf, &len, &cap, "\">", 2);
        if (!err)
            err = buf_html(&buf, &len, &cap, names[i]);
        if (!err && is_dir)
            err = buf_add(&buf, &len, &cap, "/", 1);
        if (!err)
            err = buf_add(&buf, &len, &cap, "</a></li>\n", 10);
    }
    if (!err)
        err = buf_add(&buf, &len, &cap, "</ul>\n</body></html>\n", 21);
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    if (err) {
        free(buf);
        return err;
    }
    job->listing = buf;
    job->listing_len = len;
    return 0;
}

/* Opens path+suffix as a regular file; -ENOENT if it is not one. */
static int open_regular(const http_static_t *st, const char *path, const char *suffix, struct stat *sb)
{
    size_t pl = strlen(path), sl = strlen(suffix);
    char *full = malloc(pl + sl + 1);
    if (!full)
        return -ENOMEM;
    memcpy(full, path, pl);
    memcpy(full + pl, suffix, sl + 1);
    int fd = open_beneath(st, full);
    free(full);
    if (fd < 0)
        return fd;
    if (fstat(fd, sb) != 0 || !S_ISREG(sb->st_mode)) {
        close(fd);
        return -ENOENT;
    }
    return fd;
}

/* gzip_static: with name.gz beside name, note it (Vary), and serve it instead
 * of fd when the client takes gzip and asked no range. Returns the fd to serve. */
static int use_gzip_twin(const http_static_t *st, static_job_t *job, const char *name, int fd)
{
    struct stat gsb;
    int gfd = open_regular(st, name, ".gz", &gsb);
    if (gfd < 0)
        return fd;
    job->gz_exists = true;
    if (!job->accept_gzip || job->has_range) {
        close(gfd);
        return fd;
    }
    close(fd);
    job->sb = gsb;
    job->gz_used = true;
    return gfd;
}

static void *static_work(void *arg, int *status)
{
    static_job_t *job = arg;
    const http_static_t *st = job->st;
    *status = 0;
    ioloop__http_static_hook_fn hook = atomic_load_explicit(&ioloop__http_static_test_hook, memory_order_acquire);
    if (hook)
        hook(job->rel);
    int fd = open_beneath(st, job->rel);
    if (fd < 0) {
        job->status = status_of(fd);
        return job;
    }
    if (fstat(fd, &job->sb) != 0) {
        job->status = status_of(-errno);
        close(fd);
        return job;
    }
    job->type_name = job->rel;
    if (S_ISDIR(job->sb.st_mode)) {
        if (!job->slash && *job->rel) {
            job->status = 301;
            close(fd);
            return job;
        }
        int ifd = *st->index ? open_regular(st, job->rel, st->index, &job->sb) : -ENOENT;
        if (ifd >= 0) {
            close(fd);
            fd = ifd;
            size_t rl = strlen(job->rel), il = strlen(st->index);
            job->type_buf = malloc(rl + il + 1);
            if (job->type_buf) {
                memcpy(job->type_buf, job->rel, rl);
                memcpy(job->type_buf + rl, st->index, il + 1);
                job->type_name = job->type_buf;
            }
            /* the gzip twin of an index: index.html.gz */
            if (st->gzip_static && job->type_buf)
                fd = use_gzip_twin(st, job, job->type_buf, fd);
        } else if (st->list_directories && ifd == -ENOENT) {
            char *shown = malloc(st->prefix_len + strlen(job->rel) + 1);
            int err = shown ? 0 : -ENOMEM;
            if (shown) {
                memcpy(shown, st->prefix, st->prefix_len);
                strcpy(shown + st->prefix_len, job->rel);
                err = list_directory(job, fd, shown);
                free(shown);
            }
            close(fd);
            job->status = err ? 500 : 0;
            return job;
        } else {
            close(fd);
            job->status = ifd == -ENOENT ? 403 : status_of(ifd);
            return job;
        }
    } else if (!S_ISREG(job->sb.st_mode)) {
        close(fd);
        job->status = 404;
        return job;
    } else if (job->slash) {
        close(fd); /* "file/" names no directory */
        job->status = 404;
        return job;
    } else if (st->gzip_static) {
        fd = use_gzip_twin(st, job, job->rel, fd);
    }
    if (job->sb.st_size <= STATIC_SMALL) {
        size_t size = (size_t)job->sb.st_size;
        job->small = malloc(size ? size : 1);
        size_t got = 0;
        while (job->small && got < size) {
            ssize_t n = pread(fd, job->small + got, size - got, (off_t)got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break; /* shrank or failed: what was read is what it holds now */
            got += (size_t)n;
        }
        if (!job->small) {
            close(fd);
            job->status = 500;
            return job;
        }
        job->small_len = got;
        job->sb.st_size = (off_t)got;
        close(fd);
        fd = -1;
    }
    job->fd = fd;
    return job;
}

/* ---- the answer (loop thread) ---------------------------------------------------- */

static void static_free(http_static_t *st);

static void static_release(http_static_t *st)
{
    if (atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) == 1)
        static_free(st);
}

static void job_free(static_job_t *job)
{
    static_release((http_static_t *)job->st);
    if (job->fd >= 0)
        close(job->fd);
    free(job->rel);
    free(job->type_buf);
    free(job->small);
    free(job->listing);
    free(job);
}

/* An HTTP date (IMF-fixdate) to seconds; -1 if it is not one. */
static time_t parse_http_date(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end)
        return (time_t)-1;
    return timegm(&tm);
}

/* Does an If-None-Match list name etag? (weak comparison, RFC 9110 13.1.2) */
static bool etag_listed(const char *list, const char *etag)
{
    size_t el = strlen(etag);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (!strncmp(p, "W/", 2))
            p += 2;
        if (!strncmp(p, etag, el) && (p[el] == '\0' || p[el] == ',' || p[el] == ' ' || p[el] == '\t'))
            return true;
        while (*p && *p != ',')
            p++;
    }
    return false;
}

enum { RANGE_NONE, RANGE_ONE, RANGE_UNSATISFIABLE };

static bool parse_u64(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *p = s;
    *out = v;
    return true;
}

/* One "bytes=" range against size (Tornado's rules: several ranges or a bad
 * one are ignored, the whole file is sent). */
static int parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *len)
{
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "bytes=", 6) != 0 || strchr(h, ','))
        return RANGE_NONE;
    const char *p = h + 6;
    while (*p == ' ')
        p++;
    uint64_t a = 0, b = 0;
    bool has_a = parse_u64(&p, &a);
    if (*p != '-')
        return RANGE_NONE;
    p++;
    bool has_b = parse_u64(&p, &b);
    while (*p == ' ')
        p++;
    if (*p || (!has_a && !has_b))
        return RANGE_NONE;
    if (!has_a) { /* the last b bytes */
        if (b == 0 || size == 0)
            return RANGE_UNSATISFIABLE;
        *start = b >= size ? 0 : size - b;
        *len = size - *start;
        return RANGE_ONE;
    }
    if (has_b && b < a)
        return RANGE_NONE; /* invalid: ignored */
    if (a >= size)
        return RANGE_UNSATISFIABLE;
    uint64_t last = has_b && b < size - 1 ? b : size - 1;
    *start = a;
    *len = last - a + 1;
    return RANGE_ONE;
}

static void send_error(ioloop_http_request_t *req, int status)
{
    char body[160];
    int n = snprintf(body, sizeof(body), "<html><title>%d: %s</title><body>%d: %s</body></html>", status,
                     ioloop__http_reason(status), status, ioloop__http_reason(status));
    ioloop_http_response_send(req, status, "text/html; charset=UTF-8", body, (size_t)n);
}

static void answer(static_job_t *job)
{
    ioloop_http_request_t *req = job->req;
    const http_static_t *st = job->st;
    if (job->status == 301) {
        const char *path = ioloop_http_request_path(req), *query = ioloop_http_request_query(req);
        size_t pl = strlen(path), ql = strlen(query);
        char *loc = malloc(pl + ql + 3);
        if (!loc) {
            send_error(req, 500);
            return;
        }
        memcpy(loc, path, pl);
        loc[pl] = '/';
        loc[pl + 1] = '\0';
        if (ql) {
            loc[pl + 1] = '?';
            memcpy(loc + pl + 2, query, ql + 1);
        }
        ioloop_http_response_status(req, 301);
        ioloop_http_response_header(req, "Location", loc);
        free(loc);
        ioloop_http_response_finish(req);
        return;
    }
    if (job->status) {
        send_error(req, job->status);
        return;
    }
    if (job->listing) {
        ioloop_http_response_send(req, 200, "text/html; charset=utf-8", job->listing, job->listing_len);
        return;
    }
    uint64_t size = (uint64_t)job->sb.st_size;
    char etag[80], lastmod[32];
    snprintf(etag, sizeof(etag), "\"%llx-%llx-%llx\"", (unsigned long long)job->sb.st_ino, (unsigned long long)size,
             (unsigned long long)job->sb.st_mtim.tv_sec * 1000000000ull + (unsigned long long)job->sb.st_mtim.tv_nsec);
    ioloop__http_format_date(job->sb.st_mtim.tv_sec, lastmod);
    ioloop_http_response_header(req, "ETag", etag);
    ioloop_http_response_header(req, "Last-Modified", lastmod);
    if (st->cache_control)
        ioloop_http_response_header(req, "Cache-Control", st->cache_control);
    if (job->gz_exists)
        ioloop_http_response_header(req, "Vary", "Accept-Encoding");

    /* conditional: If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2) */
    const char *inm = ioloop_http_request_header(req, "If-None-Match");
    const char *ims = ioloop_http_request_header(req, "If-Modified-Since");
    bool not_modified = false;
    if (inm) {
        not_modified = etag_listed(inm, etag);
    } else if (ims) {
        time_t since = parse_http_date(ims);
        not_modified = since != (time_t)-1 && job->sb.st_mtim.tv_sec <= since;
    }
    if (not_modified) {
        ioloop_http_response_status(req, 304);
        ioloop_http_response_finish(req); /* never a body (nor the gzip twin's) */
        return;
    }
    ioloop_http_response_header(req, "Accept-Ranges", "bytes");
    ioloop_http_response_header(req, "Content-Type", ioloop__http_mime_type(job->type_name));
    if (job->gz_used)
        ioloop_http_response_header(req, "Content-Encoding", "gzip");

    uint64_t start = 0, len = size;
    const char *range = job->gz_used ? NULL : ioloop_http_request_header(req, "Range");
    const char *if_range = ioloop_http_request_header(req, "If-Range");
    if (range && if_range && strcmp(if_range, etag) != 0 && strcmp(if_range, lastmod) != 0)
        range = NULL; /* the client's copy is another version: the whole file */
    int kind = range ? parse_range(range, size, &start, &len) : RANGE_NONE;
    char content_range[96];
    if (kind == RANGE_UNSATISFIABLE) {
        snprintf(content_range, sizeof(content_range), "bytes */%llu", (unsigned long long)size);
        ioloop_http_response_header(req, "Content-Range", content_range);
        ioloop_http_response_status(req, 416);
        ioloop_http_response_finish(req);
        return;
    }
    if (kind == RANGE_ONE) {
        snprintf(content_range, sizeof(content_range), "bytes %llu-%llu/%llu", (unsigned long long)start,
                 (unsigned long long)(start + len - 1), (unsigned long long)size);
        ioloop_http_response_header(req, "Content-Range", content_range);
        ioloop_http_response_status(req, 206);
    }
    if (job->small) {
        ioloop_http_response_write(req, job->small + start, (size_t)len);
        ioloop_http_response_finish(req);
        return;
    }
    int fd = job->fd;
    job->fd = -1;
    ioloop__http_gzip_finish_file(req, fd, (off_t)start, (size_t)len); /* the server's gzip option, else as is */
}

/* ---- the small-file cache (cache_valid > 0) --------------------------------------------
 * Per loop and route, direct-mapped: CACHE_SLOTS entries of at most
 * STATIC_SMALL bytes (2 MiB per loop at most), each answered without the
 * executor until cache_valid after it was read (nginx's open_file_cache_valid:
 * a change to the file shows within that time). Only successful small files
 * are kept; errors always go to the executor. The loop's thread alone
 * touches its cache; the list of caches is pushed lock-free and freed with
 * the server. */
#define CACHE_SLOTS 64

typedef struct {
    char *rel; /* NULL: empty */
    bool accept_gzip;
    ioloop_time_t expires;
    static_job_t job; /* the answer: status 0, small, sb, type, gz flags */
} cache_entry_t;

struct loop_cache {
    loop_cache_t *next;
    ioloop_t *loop;
    cache_entry_t slots[CACHE_SLOTS];
};

static loop_cache_t *cache_of(http_static_t *st, ioloop_t *loop, bool create)
{
    for (loop_cache_t *c = atomic_load_explicit(&st->caches, memory_order_acquire); c; c = c->next)
        if (c->loop == loop)
            return c;
    if (!create)
        return NULL;
    loop_cache_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->next = atomic_load_explicit(&st->caches, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&st->caches, &c->next, c, memory_order_release, memory_order_relaxed))
        ;
    return c;
}

static cache_entry_t *cache_slot(loop_cache_t *c, const char *rel, bool accept_gzip)
{
    uint32_t h = 2166136261u ^ (uint32_t)accept_gzip; /* FNV-1a */
    for (const char *p = rel; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return &c->slots[h & (CACHE_SLOTS - 1)];
}

static void cache_entry_clear(cache_entry_t *e)
{
    free(e->rel);
    free(e->job.small);
    free(e->job.type_buf);
    memset(e, 0, sizeof(*e));
}

/* Keeps a small file's answer (takes job->small and job->type_buf). */
static void cache_put(static_job_t *job)
{
    http_static_t *st = (http_static_t *)job->st;
    if (!st->cache_valid || job->status || !job->small || job->listing || (st->gzip_static && job->has_range))
        return; /* (a range skipped the gzip twin: not the answer for its key) */
    ioloop_t *loop = job->loop;
    loop_cache_t *c = cache_of(st, loop, true);
    if (!c)
        return;
    cache_entry_t *e = cache_slot(c, job->rel, job->accept_gzip);
    cache_entry_clear(e);
    e->rel = strdup(job->rel);
    if (!e->rel)
        return;
    e->accept_gzip = job->accept_gzip;
    e->expires = ioloop_time(loop) + st->cache_valid;
    e->job = *job;
    e->job.rel = e->rel;
    e->job.req = NULL;
    e->job.fd = -1;
    if (job->type_name == job->type_buf)
        e->job.type_name = e->job.type_buf;
    else
        e->job.type_name = e->rel;
    job->small = NULL;
    job->type_buf = NULL;
}

/* A fresh cached answer for rel, or NULL. */
static const static_job_t *cache_get(http_static_t *st, ioloop_t *loop, const char *rel, bool accept_gzip)
{
    loop_cache_t *c = cache_of(st, loop, false);
    if (!c)
        return NULL;
    cache_entry_t *e = cache_slot(c, rel, accept_gzip);
    if (!e->rel || e->accept_gzip != accept_gzip || strcmp(e->rel, rel) != 0)
        return NULL;
    if (ioloop_time(loop) >= e->expires) {
        cache_entry_clear(e);
        return NULL;
    }
    return &e->job;
}

static void cache_free_all(http_static_t *st)
{
    loop_cache_t *c = atomic_load_explicit(&st->caches, memory_order_acquire);
    while (c) {
        loop_cache_t *next = c->next;
        for (int i = 0; i < CACHE_SLOTS; i++)
            cache_entry_clear(&c->slots[i]);
        free(c);
        c = next;
    }
    atomic_store(&st->caches, NULL);
}

static void job_done(ioloop_future_t *f, void *arg)
{
    static_job_t *job = arg;
    if (ioloop_future_status(f) != 0 && !job->status)
        job->status = 503; /* the executor went away (the runtime is being freed) */
    ioloop_future_unref(f);
    if (ioloop_http_request_closed(job->req))
        ioloop_http_response_finish(job->req); /* the client left: nothing to answer */
    else
        answer(job);
    job->req = NULL; /* finished */
    cache_put(job);
    job_free(job);
}

/* Does Accept-Encoding allow gzip? (a q=0 refuses it) */
static bool accepts_gzip(const char *ae)
{
    if (!ae)
        return false;
    for (const char *p = ae; (p = strcasestr(p, "gzip")); p += 4) {
        if (p != ae && p[-1] != ' ' && p[-1] != ',' && p[-1] != '\t')
            continue;
        const char *q = p + 4;
        while (*q == ' ')
            q++;
        if (*q == ';') {
            const char *qv = strstr(q, "q=");
            const char *comma = strchr(q, ',');
            if (qv && (!comma || qv < comma) && strtod(qv + 2, NULL) == 0.0)
                return false;
        }
        return true;
    }
    return false;
}

static void static_get(ioloop_http_request_t *req, void *arg)
{
    http_static_t *st = arg;
    const char *path = ioloop_http_request_path(req);
    if (strncmp(path, st->prefix, st->prefix_len) != 0) {
        send_error(req, 404);
        return;
    }
    bool slash = false;
    char *rel = decode_relative(path + st->prefix_len, &slash);
    if (!rel) {
        send_error(req, 404);
        return;
    }
    bool accept_gzip = st->gzip_static && accepts_gzip(ioloop_http_request_header(req, "Accept-Encoding"));
    bool has_range = ioloop_http_request_header(req, "Range") != NULL;
    if (st->cache_valid && (!st->gzip_static || !has_range)) {
        const static_job_t *hit = cache_get(st, ioloop_http_request_loop(req), rel, accept_gzip);
        if (hit && hit->slash == slash) {
            static_job_t answer_job = *hit; /* answer only reads it: the entry keeps its buffers */
            answer_job.req = req;
            free(rel);
            answer(&answer_job);
            return;
        }
    }
    static_job_t *job = calloc(1, sizeof(*job));
    if (!job) {
        free(rel);
        send_error(req, 503);
        return;
    }
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
    job->st = st;
    job->req = req;
    job->loop = ioloop_http_request_loop(req);
    job->rel = rel;
    job->fd = -1;
    job->slash = slash;
    job->has_range = has_range;
    job->accept_gzip = accept_gzip;
    ioloop_future_t *f;
    if (ioloop_run_in_executor(ioloop_http_request_loop(req), static_work, job, &f) != 0) {
        job_free(job);
        send_error(req, 503);
        return;
    }
    if (ioloop_future_on_done(f, job_done, job) != 0) {
        /* cannot happen on the loop thread; the job may still be running: leak it rather than race */
        ioloop_future_unref(f);
        send_error(req, 500);
    }
}

/* ---- the route --------------------------------------------------------------------- */

static void static_free(http_static_t *st)
{
    cache_free_all(st);
    if (st->root_fd >= 0)
        close(st->root_fd);
    free(st->prefix);
    free(st->root_real);
    free(st->cache_control);
    free(st->index);
    free(st);
}

void ioloop__http_static_free_all(ioloop_http_server_t *s)
{
    while (s->statics) {
        http_static_t *st = s->statics;
        s->statics = st->next;
        static_release(st); /* jobs still running hold theirs */
    }
}

int ioloop_http_static_route(ioloop_http_server_t *s, const char *prefix, const char *root_dir,
                             const ioloop_http_static_options_t *opts)
{
    if (!s || !prefix || !root_dir || prefix[0] != '/' || prefix[strlen(prefix) - 1] != '/')
        return -EINVAL;
    ioloop_http_static_options_t none = {0};
    if (!opts)
        opts = &none;
    if (opts->cache_control) {
        for (const char *p = opts->cache_control; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return -EINVAL;
    }
    http_static_t *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->root_fd = open(root_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (st->root_fd < 0) {
        int err = -errno;
        free(st);
        return err;
    }
    st->prefix = strdup(prefix);
    st->prefix_len = strlen(prefix);
    st->root_real = realpath(root_dir, NULL);
    st->cache_control = opts->cache_control ? strdup(opts->cache_control) : NULL;
    st->index = strdup(opts->index ? opts->index : "index.html");
    st->list_directories = opts->list_directories;
    st->follow_symlinks = opts->follow_symlinks;
    st->gzip_static = opts->gzip_static;
    st->cache_valid = opts->cache_valid;
    atomic_init(&st->refs, 1);
    /* the pattern: the prefix with every regex character escaped, then anything */
    size_t pl = strlen(prefix);
    char *pattern = malloc(pl * 2 + 8);
    if (!st->prefix || !st->root_real || !st->index || (opts->cache_control && !st->cache_control) || !pattern) {
        free(pattern);
        static_free(st);
        return -ENOMEM;
    }
    size_t n = 0;
    pattern[n++] = '^';
    for (const char *p = prefix; *p; p++) {
        if (strchr(".[]()*+?{}|^$\\", *p))
            pattern[n++] = '\\';
        pattern[n++] = *p;
    }
    memcpy(pattern + n, ".*$", 4);
    ioloop_http_route_t route = {.get = static_get, .head = static_get, .arg = st};
    int err = ioloop_http_server_route(s, pattern, &route);
    free(pattern);
    if (err) {
        static_free(st);
        return err;
    }
    st->next = s->statics;
    s->statics = st;
    return 0;
}
