/* stream.c — ioloop_stream: a buffered stream over a connected socket
 * (Tornado's IOStream, libuv's uv_stream_t, h2o's socket buffers), and the
 * plain socket transport under it.
 *
 * Threading rule: a stream is touched only by its loop's thread (or any
 * thread while that loop is not running); other threads get -EPERM.
 *
 * Every entry point (fd event, deferred callback, timer, API call) ends in
 * update_io(): flush, read/write interest, deadline, and a deferred callback
 * when work is ready. User callbacks run only in a frame (pump), in a loop,
 * never by recursion; `busy` counts frames, and a call made inside one only
 * records. The end (finalize: read, dones, releases, close callback, free)
 * runs in a deferred callback, or in the loop's close hook (-ESHUTDOWN).
 * Semantics (EOF, buffers, timeouts) are written in stream.h.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "ioloop/runtime.h"
#include "stream_internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

enum {
    IN_BLOCK = 65536,   /* input block: one recv's worth; cached per loop */
    OUT_BLOCK = 16384,  /* copied-output block: small writes coalesce in it */
    CACHE_BLOCKS = 16,  /* input blocks a loop keeps for reuse (1 MiB) */
    CACHE_ENTRIES = 64, /* output entries (with their 16 KiB blocks) a loop keeps */
    READ_BUDGET = 16,   /* recvs per fd event, so one fast peer cannot starve the loop */
    IOV_BATCH = IOV_MAX < 1024 ? IOV_MAX : 1024,
    DELIM_INLINE = 16,
};
#define DEFAULT_MAX_IN ((size_t)100 * 1024 * 1024)
#define DEFAULT_MAX_OUT ((size_t)1024 * 1024)
#define NO_DEADLINE INT64_MAX

enum { READ_NONE, READ_UNTIL, READ_BYTES, READ_CLOSE, READ_CONSUMER };

/* One piece of queued output: copied bytes in a block, or a borrowed buffer. */
typedef struct out_entry {
    struct out_entry *next;
    const char *data; /* next byte to send */
    size_t len;       /* bytes left to send */
    char *block;      /* copied: owned block (OUT_BLOCK, or larger for one big write) */
    size_t cap, used; /* block capacity; bytes appended so far */
    const void *borrowed;
    ioloop_stream_release_fn release;
    void *release_arg;
} out_entry_t;

/* A write's done callback, due once `end` bytes (of all ever queued) left. */
typedef struct {
    ioloop_stream_write_fn fn;
    void *arg;
    uint64_t end;
} completion_t;

typedef struct stream_home {
    ioloop__close_hook_t hook; /* first: the hook is the home */
    ioloop_stream_t *streams;  /* every stream of the loop not yet freed */
    char *blocks[CACHE_BLOCKS];
    int nblocks;
    out_entry_t *entries;
    int nentries;
} stream_home_t;

struct ioloop_stream {
    ioloop_t *loop;
    stream_home_t *home;
    ioloop_stream_t *prev, *next;
    int fd;
    const ioloop_stream_transport_t *transport;
    void *transport_ctx;
    size_t max_in, max_out;
    ioloop_time_t idle_timeout, read_timeout, write_timeout;

    /* input: unconsumed bytes are in[in_start, in_end) */
    char *in;
    size_t in_cap, in_start, in_end;

    /* the pending read */
    int read_kind;
    bool partial;
    bool read_checked;   /* not satisfiable from the input as it is */
    bool consumer_fresh; /* bytes arrived since the consumer last ran */
    size_t want;         /* read_bytes: n; read_until: max_bytes */
    size_t scanned;      /* read_until: input searched without a match start */
    char *delim;
    size_t delim_len;
    char delim_inline[DELIM_INLINE];
    ioloop_stream_read_fn read_fn;
    ioloop_stream_data_fn data_fn;
    void *read_arg;
    ioloop_time_t read_since;

    /* output */
    out_entry_t *out_head, *out_tail;
    size_t out_bytes;
    out_entry_t *released_head, *released_tail; /* borrowed buffers to release */
    completion_t *comp;
    size_t comp_head, comp_count, comp_cap; /* ring, comp_cap a power of 2 */
    uint64_t queued_total, sent_total;
    int cork;
    bool write_blocked; /* the last writev was short or EAGAIN: wait for WRITE */
    bool drain_wanted;
    ioloop_stream_write_fn drain_fn;
    void *drain_arg;
    ioloop_time_t write_since;

    /* state */
    unsigned events; /* what the handler is registered for */
    bool handler_on;
    bool readable; /* the fd may have bytes: recv until short */
    int reads_left;
    bool paused, half_close, peer_eof, shut_requested, shut_done;
    bool ended, deferred, counted;
    int error;
    int busy; /* frames running user callbacks */
    ioloop_stream_close_fn close_fn;
    void *close_arg;
    ioloop_timer_t timer;
    ioloop_time_t timer_at, last_activity;
};

static void update_io(ioloop_stream_t *stream);
static void end_stream(ioloop_stream_t *stream, int err);

/* ---- the plain socket transport -------------------------------------------- */

static ssize_t socket_read(void *ctx, int fd, char *buf, size_t len)
{
    (void)ctx;
    for (;;) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static ssize_t socket_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    (void)ctx;
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
#ifdef MSG_NOSIGNAL
    int flags = MSG_NOSIGNAL;
#else
    int flags = 0; /* SO_NOSIGPIPE was set at creation */
#endif
    for (;;) {
        /* One buffer (the usual echo or response): send() skips the kernel's
         * msghdr and iovec import, measurably cheaper than sendmsg. */
        ssize_t n = iovcnt == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, flags) : sendmsg(fd, &msg, flags);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static int socket_shutdown(void *ctx, int fd)
{
    (void)ctx;
    return shutdown(fd, SHUT_WR) < 0 ? -errno : 0;
}

const ioloop_stream_transport_t ioloop_stream_transport_socket = {
    .name = "socket",
    .read = socket_read,
    .writev = socket_writev,
    .shutdown = socket_shutdown,
};

/* ---- per-loop home: the stream list and the caches -------------------------- */

static void finalize(ioloop_stream_t *stream);

static void home_close(ioloop_t *loop, ioloop__close_hook_t *hook)
{
    (void)loop;
    stream_home_t *home = (stream_home_t *)hook;
    while (home->streams) {
        ioloop_stream_t *stream = home->streams;
        assert(stream->busy == 0);
        if (!stream->ended)
            end_stream(stream, -ESHUTDOWN);
        stream->deferred = false; /* every queued callback has run or was refused */
        finalize(stream);
    }
    for (int i = 0; i < home->nblocks; i++)
        free(home->blocks[i]);
    while (home->entries) {
        out_entry_t *entry = home->entries;
        home->entries = entry->next;
        free(entry->block);
        free(entry);
    }
    free(home);
}

static stream_home_t *home_for(ioloop_t *loop)
{
    stream_home_t *home = (stream_home_t *)ioloop__close_hook_find(loop, home_close);
    if (home)
        return home;
    home = calloc(1, sizeof(*home));
    if (!home)
        return NULL;
    home->hook.fn = home_close;
    ioloop__close_hook_add(loop, &home->hook);
    return home;
}

static char *block_take(stream_home_t *home)
{
    return home->nblocks ? home->blocks[--home->nblocks] : malloc(IN_BLOCK);
}

static void input_release(ioloop_stream_t *stream)
{
    stream_home_t *home = stream->home;
    if (stream->in_cap == IN_BLOCK && home->nblocks < CACHE_BLOCKS)
        home->blocks[home->nblocks++] = stream->in;
    else
        free(stream->in);
    stream->in = NULL;
    stream->in_cap = stream->in_start = stream->in_end = 0;
}

/* An entry; with_block: with an OUT_BLOCK block attached. NULL on ENOMEM. */
static out_entry_t *entry_take(stream_home_t *home, bool with_block)
{
    out_entry_t *entry = home->entries;
    if (entry) {
        home->entries = entry->next;
        home->nentries--;
    } else {
        entry = calloc(1, sizeof(*entry));
        if (!entry)
            return NULL;
    }
    if (with_block && !entry->block) {
        entry->block = malloc(OUT_BLOCK);
        if (!entry->block) {
            free(entry);
            return NULL;
        }
        entry->cap = OUT_BLOCK;
    }
    entry->next = NULL;
    entry->used = entry->len = 0;
    entry->data = entry->block;
    entry->borrowed = NULL;
    entry->release = NULL;
    return entry;
}

static void entry_put(stream_home_t *home, out_entry_t *entry)
{
    if (entry->block && entry->cap != OUT_BLOCK) {
        free(entry->block); /* one big write's block */
        entry->block = NULL;
        entry->cap = 0;
    }
    if (home->nentries >= CACHE_ENTRIES) {
        free(entry->block);
        free(entry);
        return;
    }
    entry->next = home->entries;
    home->entries = entry;
    home->nentries++;
}

/* ---- small helpers ---------------------------------------------------------- */

static bool owner_ok(const ioloop_stream_t *stream)
{
    return ioloop__on_loop_thread(stream->loop) || !atomic_load_explicit(&stream->loop->running, memory_order_acquire);
}

/* The loop's time; a loop that is not running (calls before start) has not
 * read its clock since it last ran, so read it now. */
static ioloop_time_t stream_now(ioloop_stream_t *stream)
{
    return ioloop__on_loop_thread(stream->loop) ? stream->loop->now : ioloop__clock_now(stream->loop);
}

static size_t avail(const ioloop_stream_t *stream)
{
    return stream->in_end - stream->in_start;
}

static void clear_read(ioloop_stream_t *stream)
{
    stream->read_kind = READ_NONE;
    stream->read_fn = NULL;
    stream->data_fn = NULL;
    if (stream->delim != stream->delim_inline)
        free(stream->delim);
    stream->delim = NULL;
    stream->delim_len = 0;
}

static void schedule(ioloop_stream_t *stream);

static bool reading_wanted(const ioloop_stream_t *stream)
{
    return !stream->ended && !stream->peer_eof && !stream->paused && stream->read_kind != READ_NONE &&
           avail(stream) < stream->max_in && stream->out_bytes < stream->max_out;
}

static bool completions_ready(const ioloop_stream_t *stream)
{
    return stream->comp_count && stream->comp[stream->comp_head].end <= stream->sent_total;
}

/* True when a pending read (or the consumer) can be called without new bytes. */
static bool read_may_progress(const ioloop_stream_t *stream)
{
    if (stream->paused || stream->read_kind == READ_NONE)
        return false;
    if (stream->read_kind == READ_CONSUMER)
        return stream->consumer_fresh || stream->peer_eof;
    return !stream->read_checked && (avail(stream) > 0 || stream->peer_eof);
}

static bool work_ready(const ioloop_stream_t *stream)
{
    return completions_ready(stream) || stream->released_head || (stream->drain_wanted && !stream->out_bytes) ||
           read_may_progress(stream);
}

/* Without half_close, a stream that saw EOF ends once no read can use what
 * is buffered: at once when nothing is buffered and nothing is pending. */
static void check_eof(ioloop_stream_t *stream)
{
    if (stream->peer_eof && !stream->half_close && !stream->ended && stream->read_kind == READ_NONE &&
        avail(stream) == 0)
        end_stream(stream, IOLOOP_EOF);
}

/* ---- input ------------------------------------------------------------------ */

/* Makes room for a recv; returns the bytes to ask for (0: out of memory, the
 * stream ended). */
static size_t input_room(ioloop_stream_t *stream)
{
    size_t have = avail(stream);
    if (!stream->in) {
        stream->in = block_take(stream->home);
        if (!stream->in) {
            end_stream(stream, -ENOMEM);
            return 0;
        }
        stream->in_cap = IN_BLOCK;
        stream->in_start = stream->in_end = 0;
    }
    size_t need = stream->read_kind == READ_BYTES && stream->want > have ? stream->want - have : 1;
    size_t room = stream->in_cap - stream->in_end;
    /* Compact only when a recv needs the room: the unconsumed tail moves to
     * the front, and that tail is short (a partial message), so moving it is
     * cheap and rare (never a memmove per message). */
    if (stream->in_start > 0 && (room < need || room < stream->in_cap / 4)) {
        memmove(stream->in, stream->in + stream->in_start, have);
        stream->in_start = 0;
        stream->in_end = have;
        room = stream->in_cap - have;
    }
    if (room < need && stream->in_cap < stream->max_in) {
        size_t cap = stream->in_cap * 2;
        while (cap < have + need && cap < stream->max_in)
            cap *= 2;
        if (cap > stream->max_in)
            cap = stream->max_in > have + 1 ? stream->max_in : have + 1;
        char *bigger = malloc(cap);
        if (!bigger) {
            end_stream(stream, -ENOMEM);
            return 0;
        }
        memcpy(bigger, stream->in + stream->in_start, have);
        input_release(stream);
        stream->in = bigger;
        stream->in_cap = cap;
        stream->in_end = have;
        room = cap - have;
    }
    size_t limit = stream->max_in - have; /* > 0: reading_wanted checked it */
    return room < limit ? room : limit;
}

/* One recv. Returns true if it changed anything (bytes, EOF or an end). */
static bool fill(ioloop_stream_t *stream)
{
    size_t len = input_room(stream);
    if (!len)
        return true;
    ssize_t n = stream->transport->read(stream->transport_ctx, stream->fd, stream->in + stream->in_end, len);
    if (n > 0) {
        stream->in_end += (size_t)n;
        stream->last_activity = stream_now(stream);
        stream->read_checked = false;
        stream->consumer_fresh = true;
        if ((size_t)n < len || --stream->reads_left <= 0)
            stream->readable = false; /* drained (level-triggered polling says if not) */
        if (stream->transport->pending && stream->transport->pending(stream->transport_ctx) > 0)
            stream->readable = true;
        return true;
    }
    stream->readable = false;
    if (n == 0) {
        stream->peer_eof = true;
        stream->read_checked = false;
        return true;
    }
    if (n == -EAGAIN)
        return false;
    end_stream(stream, (int)n);
    return true;
}

/* How many bytes the pending read takes now: >0, 0 if not yet, or an error
 * (negative) the stream ends with. */
static ssize_t read_satisfiable(ioloop_stream_t *stream)
{
    size_t have = avail(stream);
    const char *base = stream->in ? stream->in + stream->in_start : NULL;
    switch (stream->read_kind) {
    case READ_UNTIL: {
        size_t dlen = stream->delim_len;
        if (have >= dlen && have > stream->scanned) {
            const char *hit = memmem(base + stream->scanned, have - stream->scanned, stream->delim, dlen);
            if (hit) {
                size_t n = (size_t)(hit - base) + dlen;
                if (stream->want && n > stream->want)
                    return -EMSGSIZE;
                return (ssize_t)n;
            }
            stream->scanned = have - (dlen - 1);
        }
        if (stream->want && have >= stream->want)
            return -EMSGSIZE;
        break;
    }
    case READ_BYTES:
        if (!stream->partial && stream->want > stream->max_in && have > 0)
            return -ENOBUFS; /* can never fit: fail at the first byte, not at a full buffer */
        if (have >= stream->want || (stream->partial && have > 0))
            return (ssize_t)(have < stream->want ? have : stream->want);
        break;
    case READ_CLOSE:
        break;
    }
    return have >= stream->max_in ? -ENOBUFS : 0;
}

/* Runs the pending read (or the consumer) once if it can run. Returns true
 * if a callback ran or the stream ended. */
static bool deliver(ioloop_stream_t *stream)
{
    if (stream->paused || stream->read_kind == READ_NONE || stream->ended)
        return false;
    size_t have = avail(stream);
    const char *data = stream->in ? stream->in + stream->in_start : NULL;
    if (stream->read_kind == READ_CONSUMER) {
        if (stream->consumer_fresh) {
            stream->consumer_fresh = false;
            stream->read_since = stream_now(stream);
            stream->data_fn(stream, 0, stream->read_arg);
            return true;
        }
        if (!stream->peer_eof)
            return false;
        if (!stream->half_close) {
            end_stream(stream, IOLOOP_EOF);
            return true;
        }
        ioloop_stream_data_fn fn = stream->data_fn;
        void *arg = stream->read_arg;
        clear_read(stream);
        fn(stream, IOLOOP_EOF, arg);
        return true;
    }
    if (stream->read_checked)
        return false;
    ssize_t n = stream->read_kind == READ_CLOSE && stream->peer_eof ? (ssize_t)have : read_satisfiable(stream);
    if (n < 0) {
        end_stream(stream, (int)n);
        return true;
    }
    ioloop_stream_read_fn fn = stream->read_fn;
    void *arg = stream->read_arg;
    if (n == 0 && !(stream->read_kind == READ_CLOSE && stream->peer_eof)) {
        if (!stream->peer_eof) {
            stream->read_checked = true;
            return false;
        }
        if (!stream->half_close) {
            end_stream(stream, IOLOOP_EOF); /* the read gets EOF and the data when the stream ends */
            return true;
        }
        clear_read(stream);
        fn(stream, IOLOOP_EOF, data, have, arg); /* not consumed: still there for the next read */
        return true;
    }
    /* Consumed before the call (the call may read again, or consume); the
     * bytes stay in place until the next recv, which only a frame makes. */
    stream->in_start += (size_t)n;
    if (stream->in_start == stream->in_end)
        stream->in_start = stream->in_end = 0;
    stream->scanned = 0;
    clear_read(stream);
    fn(stream, 0, data ? data : "", (size_t)n, arg);
    return true;
}

/* ---- output ----------------------------------------------------------------- */

/* A sent (or dropped) entry: a borrowed one waits for its release callback,
 * a copied one goes back to the cache. */
static void retire_entry(ioloop_stream_t *stream, out_entry_t *entry)
{
    if (entry->release) {
        entry->next = NULL;
        if (stream->released_tail)
            stream->released_tail->next = entry;
        else
            stream->released_head = entry;
        stream->released_tail = entry;
    } else {
        entry_put(stream->home, entry);
    }
}

static void drop_sent(ioloop_stream_t *stream, size_t n)
{
    stream->sent_total += n;
    stream->out_bytes -= n;
    while (n) {
        out_entry_t *entry = stream->out_head;
        if (n < entry->len) {
            entry->data += n;
            entry->len -= n;
            break;
        }
        n -= entry->len;
        entry->len = 0;
        stream->out_head = entry->next;
        if (!stream->out_head)
            stream->out_tail = NULL;
        retire_entry(stream, entry);
    }
}

/* A zero-length borrowed write just queued at the tail: done at once. */
static void drop_empty_tail(ioloop_stream_t *stream)
{
    out_entry_t *entry = stream->out_tail, **link = &stream->out_head;
    while (*link != entry)
        link = &(*link)->next;
    *link = NULL;
    stream->out_tail = NULL;
    for (out_entry_t *e = stream->out_head; e; e = e->next)
        stream->out_tail = e;
    retire_entry(stream, entry);
}

static bool flush_allowed(const ioloop_stream_t *stream)
{
    return !stream->ended && !stream->write_blocked && (!stream->cork || stream->shut_requested);
}

/* Sends queued output until done or the socket is full; then a requested
 * shutdown. May end the stream. */
static void flush(ioloop_stream_t *stream)
{
    while (stream->out_bytes && flush_allowed(stream)) {
        struct iovec iov[IOV_BATCH];
        int count = 0;
        size_t total = 0;
        for (out_entry_t *entry = stream->out_head; entry && count < IOV_BATCH; entry = entry->next) {
            if (!entry->len)
                continue;
            iov[count++] = (struct iovec){.iov_base = (void *)entry->data, .iov_len = entry->len};
            total += entry->len;
        }
        ssize_t n = stream->transport->writev(stream->transport_ctx, stream->fd, iov, count);
        if (n == -EAGAIN) {
            stream->write_blocked = true;
            break;
        }
        if (n < 0) {
            end_stream(stream, (int)n);
            return;
        }
        drop_sent(stream, (size_t)n);
        stream->last_activity = stream->write_since = stream_now(stream);
        if ((size_t)n < total)
            stream->write_blocked = true; /* the socket is full: wait for WRITE */
    }
    if (stream->shut_requested && !stream->shut_done && !stream->out_bytes && !stream->ended) {
        stream->shut_done = true;
        int err = stream->transport->shutdown(stream->transport_ctx, stream->fd);
        if (err < 0 && err != -ENOTCONN)
            end_stream(stream, err);
    }
}

/* Makes room for one more done callback (the ring doubles; steady state
 * allocates nothing). 0 or -ENOMEM. */
static int completion_reserve(ioloop_stream_t *stream)
{
    if (stream->comp_count < stream->comp_cap)
        return 0;
    size_t cap = stream->comp_cap ? stream->comp_cap * 2 : 8;
    completion_t *ring = malloc(cap * sizeof(*ring));
    if (!ring)
        return -ENOMEM;
    for (size_t i = 0; i < stream->comp_count; i++)
        ring[i] = stream->comp[(stream->comp_head + i) & (stream->comp_cap - 1)];
    free(stream->comp);
    stream->comp = ring;
    stream->comp_cap = cap;
    stream->comp_head = 0;
    return 0;
}

/* After completion_reserve. */
static void completion_push(ioloop_stream_t *stream, ioloop_stream_write_fn fn, void *arg, uint64_t end)
{
    assert(stream->comp_count < stream->comp_cap);
    stream->comp[(stream->comp_head + stream->comp_count) & (stream->comp_cap - 1)] =
        (completion_t){.fn = fn, .arg = arg, .end = end};
    stream->comp_count++;
}

static completion_t completion_pop(ioloop_stream_t *stream)
{
    completion_t c = stream->comp[stream->comp_head];
    stream->comp_head = (stream->comp_head + 1) & (stream->comp_cap - 1);
    stream->comp_count--;
    return c;
}

static out_entry_t *released_pop(ioloop_stream_t *stream)
{
    out_entry_t *entry = stream->released_head;
    stream->released_head = entry->next;
    if (!stream->released_head)
        stream->released_tail = NULL;
    return entry;
}

/* Runs what finished writing: dones, then releases, then the drain callback.
 * Returns true if a callback ran. */
static bool run_completions(ioloop_stream_t *stream)
{
    bool ran = false;
    while (!stream->ended && completions_ready(stream)) {
        completion_t c = completion_pop(stream);
        c.fn(stream, 0, c.arg);
        ran = true;
    }
    while (!stream->ended && stream->released_head) {
        out_entry_t *entry = released_pop(stream);
        ioloop_stream_release_fn release = entry->release;
        void *data = (void *)entry->borrowed, *arg = entry->release_arg;
        entry_put(stream->home, entry);
        release(data, arg);
        ran = true;
    }
    if (!stream->ended && stream->drain_wanted && !stream->out_bytes) {
        stream->drain_wanted = false;
        if (stream->drain_fn) {
            stream->drain_fn(stream, 0, stream->drain_arg);
            ran = true;
        }
    }
    return ran;
}

/* ---- the engine -------------------------------------------------------------- */

/* Runs everything that can run now, user callbacks included, in a loop. */
static void pump(ioloop_stream_t *stream)
{
    stream->busy++;
    for (;;) {
        if (stream->out_bytes && flush_allowed(stream))
            flush(stream);
        else if (stream->shut_requested && !stream->shut_done)
            flush(stream);
        bool progress = run_completions(stream);
        if (!stream->ended && deliver(stream))
            continue;
        if (!stream->ended)
            check_eof(stream);
        if (stream->ended)
            break;
        if (stream->readable && reading_wanted(stream) && fill(stream))
            progress = true;
        if (!progress)
            break;
    }
    stream->busy--;
}

static void deferred_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_stream_t *stream = arg;
    stream->deferred = false;
    if (stream->ended) {
        finalize(stream);
        return;
    }
    stream->reads_left = READ_BUDGET;
    pump(stream);
    update_io(stream);
}

static void schedule(ioloop_stream_t *stream)
{
    if (stream->deferred)
        return;
    int err = ioloop_add_callback(stream->loop, deferred_cb, stream);
    if (!err)
        stream->deferred = true;
    else if (err != -ESHUTDOWN) /* closing: the close hook finishes the stream */
        ioloop_report_error(stream->loop, "stream callback", err);
}

static int on_event(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)fd;
    ioloop_stream_t *stream = arg;
    if (events & (IOLOOP_WRITE | IOLOOP_ERROR))
        stream->write_blocked = false;
    if (events & (IOLOOP_READ | IOLOOP_ERROR))
        stream->readable = true;
    stream->reads_left = READ_BUDGET;
    pump(stream);
    if ((events & IOLOOP_ERROR) && !stream->ended && !reading_wanted(stream)) {
        /* Hang-up or error that nothing wanted to read or write: name the
         * error, or (a plain hang-up) stop watching until there is interest
         * again, or the loop would spin on it (epoll and poll always report it). */
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (getsockopt(stream->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr) {
            end_stream(stream, -soerr);
        } else {
            /* The peer is gone: read ahead what it left (bounded by
             * max_buffer_size) to learn of its EOF, so an idle stream ends
             * now rather than at its next read. Not while paused. */
            while (!stream->ended && !stream->paused && !stream->peer_eof && avail(stream) < stream->max_in &&
                   fill(stream))
                continue;
            if (!stream->ended)
                check_eof(stream);
        }
        if (!stream->ended) {
            ioloop_remove_handler(stream->loop, stream->fd);
            stream->handler_on = false;
            stream->events = 0;
        }
    }
    update_io(stream);
    return 0;
}

static ioloop_time_t next_deadline(const ioloop_stream_t *stream)
{
    ioloop_time_t at = NO_DEADLINE;
    if (stream->idle_timeout)
        at = stream->last_activity + stream->idle_timeout;
    if (stream->read_timeout && stream->read_kind != READ_NONE && !stream->paused && !stream->peer_eof &&
        stream->read_since + stream->read_timeout < at)
        at = stream->read_since + stream->read_timeout;
    if (stream->write_timeout && stream->out_bytes && (!stream->cork || stream->shut_requested) &&
        stream->write_since + stream->write_timeout < at)
        at = stream->write_since + stream->write_timeout;
    return at;
}

static void on_timer(ioloop_t *loop, void *arg)
{
    ioloop_stream_t *stream = arg;
    stream->timer = 0;
    if (next_deadline(stream) <= loop->now)
        end_stream(stream, -ETIMEDOUT);
    update_io(stream); /* re-arms for a later deadline, or finishes */
}

/* The one decision, at the end of every entry point (outside frames): flush,
 * read/write interest, deadline, and whether a deferred pump is needed. */
static void update_io(ioloop_stream_t *stream)
{
    if (stream->busy)
        return; /* the frame calls it when it unwinds */
    if (!stream->ended &&
        ((stream->out_bytes && flush_allowed(stream)) || (stream->shut_requested && !stream->shut_done)))
        flush(stream);
    if (!stream->ended)
        check_eof(stream);
    if (stream->ended) {
        schedule(stream);
        return;
    }
    if (stream->in && stream->in_start == stream->in_end)
        input_release(stream); /* idle streams hold no input block */
    unsigned want = 0;
    if (reading_wanted(stream)) {
        want |= IOLOOP_READ;
        if (stream->transport->pending && stream->transport->pending(stream->transport_ctx) > 0) {
            stream->readable = true;
            schedule(stream);
        }
    }
    if (stream->out_bytes && stream->write_blocked && (!stream->cork || stream->shut_requested))
        want |= IOLOOP_WRITE;
    if (stream->transport->events)
        want = stream->transport->events(stream->transport_ctx, want);
    if (work_ready(stream))
        schedule(stream);
    if (want != stream->events || (!stream->handler_on && want)) {
        int err = stream->handler_on ? ioloop_update_handler(stream->loop, stream->fd, want)
                                     : ioloop__handler_add(stream->loop, stream->fd, want, on_event, stream);
        if (err < 0) {
            end_stream(stream, err);
            schedule(stream);
            return;
        }
        stream->handler_on = true;
        stream->events = want;
    }
    /* One timer per stream, moved only earlier: one that fires early
     * re-arms for the deadline then in force. */
    ioloop_time_t at = next_deadline(stream);
    if (at != NO_DEADLINE && (!stream->timer || at < stream->timer_at)) {
        if (stream->timer)
            ioloop_remove_timeout(stream->loop, stream->timer);
        stream->timer = ioloop_call_at(stream->loop, at, on_timer, stream);
        stream->timer_at = at;
        if (!stream->timer && errno != ESHUTDOWN)
            ioloop_report_error(stream->loop, "stream timer", -errno);
    }
}

/* ---- the end ----------------------------------------------------------------- */

static void end_stream(ioloop_stream_t *stream, int err)
{
    if (stream->ended)
        return;
    stream->ended = true;
    stream->error = err;
    if (stream->handler_on)
        ioloop_remove_handler(stream->loop, stream->fd);
    stream->handler_on = false;
    if (stream->timer)
        ioloop_remove_timeout(stream->loop, stream->timer);
    stream->timer = 0;
    if (stream->transport->destroy)
        stream->transport->destroy(stream->transport_ctx);
    stream->transport_ctx = NULL;
    close(stream->fd);
    stream->fd = -1;
    if (stream->counted) {
        stream->counted = false;
        ioloop_connection_closed(stream->loop);
    }
}

static void run_releases(ioloop_stream_t *stream)
{
    while (stream->released_head) {
        out_entry_t *entry = released_pop(stream);
        ioloop_stream_release_fn release = entry->release;
        void *data = (void *)entry->borrowed, *arg = entry->release_arg;
        entry_put(stream->home, entry);
        release(data, arg);
    }
}

/* The callbacks of an ended stream, then its memory. */
static void finalize(ioloop_stream_t *stream)
{
    assert(stream->ended && !stream->busy);
    stream->busy++; /* calls made from the callbacks below only record */
    int err = stream->error;
    int cancel = err ? err : -ECANCELED;
    if (stream->read_kind == READ_CONSUMER) {
        ioloop_stream_data_fn fn = stream->data_fn;
        void *arg = stream->read_arg;
        clear_read(stream);
        fn(stream, cancel, arg);
    } else if (stream->read_kind != READ_NONE) {
        ioloop_stream_read_fn fn = stream->read_fn;
        void *arg = stream->read_arg;
        int status = stream->read_kind == READ_CLOSE && err == IOLOOP_EOF ? 0 : cancel;
        clear_read(stream);
        fn(stream, status, stream->in ? stream->in + stream->in_start : NULL, avail(stream), arg);
    }
    while (stream->comp_count) {
        completion_t c = completion_pop(stream);
        c.fn(stream, c.end <= stream->sent_total ? 0 : cancel, c.arg);
    }
    /* Unsent borrowed buffers join the released ones, in order. */
    while (stream->out_head) {
        out_entry_t *entry = stream->out_head;
        stream->out_head = entry->next;
        retire_entry(stream, entry);
    }
    stream->out_tail = NULL;
    stream->out_bytes = 0;
    run_releases(stream);
    if (stream->close_fn) {
        ioloop_stream_close_fn fn = stream->close_fn;
        stream->close_fn = NULL;
        fn(stream, err, stream->close_arg);
    }
    run_releases(stream);        /* refused borrowed writes made by the close callback */
    while (stream->comp_count) { /* writes are refused now: nothing new, but be exact */
        completion_t c = completion_pop(stream);
        c.fn(stream, cancel, c.arg);
    }
    if (stream->in)
        input_release(stream);
    clear_read(stream);
    free(stream->comp);
    stream_home_t *home = stream->home;
    if (stream->prev)
        stream->prev->next = stream->next;
    else
        home->streams = stream->next;
    if (stream->next)
        stream->next->prev = stream->prev;
    free(stream);
}

/* ---- creating and accessors ------------------------------------------------- */

int ioloop_stream_new(ioloop_t *loop, int fd, const ioloop_stream_options_t *opts, ioloop_stream_t **out)
{
    static const ioloop_stream_options_t defaults = {0};
    if (!opts)
        opts = &defaults;
    const ioloop_stream_transport_t *transport = opts->transport ? opts->transport : &ioloop_stream_transport_socket;
    int err = 0;
    if (!loop || !out)
        err = -EINVAL;
    else if (fd < 0)
        err = -EBADF;
    else if (!ioloop__on_loop_thread(loop) && atomic_load_explicit(&loop->running, memory_order_acquire))
        err = -EPERM;
    else if (atomic_load_explicit(&loop->state, memory_order_acquire) != IOLOOP__OPEN)
        err = -ESHUTDOWN;
    else if (!transport->read || !transport->writev || !transport->shutdown)
        err = -EINVAL;
    if (!err) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0)
            err = -errno;
        else if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            err = -errno;
        int fdflags = err ? 0 : fcntl(fd, F_GETFD);
        if (!err && !(fdflags & FD_CLOEXEC))
            fcntl(fd, F_SETFD, fdflags | FD_CLOEXEC);
#if !defined(MSG_NOSIGNAL) && defined(SO_NOSIGPIPE)
        int one = 1;
        if (!err)
            setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
#endif
    }
    stream_home_t *home = err ? NULL : home_for(loop);
    ioloop_stream_t *stream = home ? calloc(1, sizeof(*stream)) : NULL;
    if (!err && !stream)
        err = -ENOMEM;
    if (err) {
        free(stream);
        if (transport->destroy)
            transport->destroy(opts->transport_ctx);
        if (fd >= 0 && err != -EBADF)
            close(fd);
        if (out)
            *out = NULL;
        return err;
    }
    stream->loop = loop;
    stream->home = home;
    stream->fd = fd;
    stream->transport = transport;
    stream->transport_ctx = opts->transport_ctx;
    stream->max_in = opts->max_buffer_size ? opts->max_buffer_size : DEFAULT_MAX_IN;
    stream->max_out = opts->max_write_buffer_size ? opts->max_write_buffer_size : DEFAULT_MAX_OUT;
    stream->idle_timeout = opts->idle_timeout > 0 ? opts->idle_timeout : 0;
    stream->read_timeout = opts->read_timeout > 0 ? opts->read_timeout : 0;
    stream->write_timeout = opts->write_timeout > 0 ? opts->write_timeout : 0;
    stream->half_close = opts->half_close;
    /* The handler is registered at the first interest (update_io): a
     * registration with no events would cost an epoll_ctl per connection. */
    ioloop_time_t now = ioloop__on_loop_thread(loop) ? loop->now : ioloop__clock_now(loop);
    stream->last_activity = stream->read_since = stream->write_since = now;
    stream->next = home->streams;
    if (home->streams)
        home->streams->prev = stream;
    home->streams = stream;
    *out = stream;
    update_io(stream); /* arms the idle timer */
    return 0;
}

void ioloop__stream_count_connection(ioloop_stream_t *stream)
{
    stream->counted = true;
}

ioloop_t *ioloop_stream_loop(const ioloop_stream_t *stream)
{
    return stream->loop;
}

int ioloop_stream_fd(const ioloop_stream_t *stream)
{
    return stream->fd;
}

bool ioloop_stream_closed(const ioloop_stream_t *stream)
{
    return stream->ended;
}

int ioloop_stream_error(const ioloop_stream_t *stream)
{
    return stream->error;
}

/* ---- reading ------------------------------------------------------------------ */

/* Common checks and setup of a read request. */
static int read_begin(ioloop_stream_t *stream, int kind, ioloop_stream_read_fn cb, void *arg)
{
    if (!owner_ok(stream))
        return -EPERM;
    if (!cb)
        return -EINVAL;
    if (stream->ended)
        return -EPIPE;
    if (stream->read_kind != READ_NONE)
        return -EBUSY;
    stream->read_kind = kind;
    stream->read_fn = cb;
    stream->read_arg = arg;
    stream->read_checked = false;
    stream->scanned = 0;
    stream->read_since = stream_now(stream);
    return 0;
}

int ioloop_stream_read_until(ioloop_stream_t *stream, const void *delim, size_t delim_len, size_t max_bytes,
                             ioloop_stream_read_fn cb, void *arg)
{
    if (!delim || !delim_len)
        return -EINVAL;
    char *copy = stream->delim_inline;
    if (delim_len > DELIM_INLINE) {
        if (!owner_ok(stream))
            return -EPERM;
        if (stream->read_kind != READ_NONE)
            return -EBUSY;
        copy = malloc(delim_len);
        if (!copy)
            return -ENOMEM;
    }
    int err = read_begin(stream, READ_UNTIL, cb, arg);
    if (err) {
        if (copy != stream->delim_inline)
            free(copy);
        return err;
    }
    memcpy(copy, delim, delim_len);
    stream->delim = copy;
    stream->delim_len = delim_len;
    stream->want = max_bytes;
    update_io(stream);
    return 0;
}

int ioloop_stream_read_bytes(ioloop_stream_t *stream, size_t n, bool partial, ioloop_stream_read_fn cb, void *arg)
{
    if (!n)
        return -EINVAL;
    int err = read_begin(stream, READ_BYTES, cb, arg);
    if (err)
        return err;
    stream->want = n;
    stream->partial = partial;
    update_io(stream);
    return 0;
}

int ioloop_stream_read_until_close(ioloop_stream_t *stream, ioloop_stream_read_fn cb, void *arg)
{
    int err = read_begin(stream, READ_CLOSE, cb, arg);
    if (err)
        return err;
    update_io(stream);
    return 0;
}

int ioloop_stream_read_start(ioloop_stream_t *stream, ioloop_stream_data_fn cb, void *arg)
{
    if (!owner_ok(stream))
        return -EPERM;
    if (!cb)
        return -EINVAL;
    if (stream->ended)
        return -EPIPE;
    if (stream->read_kind != READ_NONE)
        return -EBUSY;
    stream->read_kind = READ_CONSUMER;
    stream->data_fn = cb;
    stream->read_arg = arg;
    stream->consumer_fresh = avail(stream) > 0; /* what is buffered is new to this consumer */
    stream->read_since = stream_now(stream);
    update_io(stream);
    return 0;
}

void ioloop_stream_read_stop(ioloop_stream_t *stream)
{
    if (!owner_ok(stream) || stream->read_kind != READ_CONSUMER || stream->ended)
        return;
    clear_read(stream);
    update_io(stream);
}

const char *ioloop_stream_peek(const ioloop_stream_t *stream, size_t *len)
{
    size_t have = owner_ok(stream) ? avail(stream) : 0;
    if (len)
        *len = have;
    return have ? stream->in + stream->in_start : NULL;
}

void ioloop_stream_consume(ioloop_stream_t *stream, size_t n)
{
    if (!owner_ok(stream))
        return;
    size_t have = avail(stream);
    if (n > have)
        n = have;
    stream->in_start += n;
    if (stream->in_start == stream->in_end)
        stream->in_start = stream->in_end = 0;
    stream->scanned = stream->scanned > n ? stream->scanned - n : 0;
    update_io(stream);
}

void ioloop_stream_pause(ioloop_stream_t *stream)
{
    if (!owner_ok(stream) || stream->paused)
        return;
    stream->paused = true;
    update_io(stream);
}

void ioloop_stream_resume(ioloop_stream_t *stream)
{
    if (!owner_ok(stream) || !stream->paused)
        return;
    stream->paused = false;
    stream->read_checked = false;
    stream->read_since = stream_now(stream);
    if (stream->read_kind == READ_CONSUMER && avail(stream))
        stream->consumer_fresh = true; /* it may have left a whole message for later */
    update_io(stream);
}

/* ---- writing ------------------------------------------------------------------ */

/* Appends copies of iov (from `skip` bytes in) to the queue. */
static int queue_copy(ioloop_stream_t *stream, const struct iovec *iov, int iovcnt, size_t skip)
{
    for (int i = 0; i < iovcnt; i++) {
        const char *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        p += skip;
        len -= skip;
        skip = 0;
        while (len) {
            out_entry_t *tail = stream->out_tail;
            if (!tail || !tail->block || tail->used == tail->cap) {
                bool big = len > OUT_BLOCK;
                tail = entry_take(stream->home, !big);
                if (!tail)
                    return -ENOMEM;
                if (big) {
                    free(tail->block);
                    tail->block = malloc(len);
                    if (!tail->block) {
                        free(tail);
                        return -ENOMEM;
                    }
                    tail->cap = len;
                    tail->data = tail->block;
                }
                if (stream->out_tail)
                    stream->out_tail->next = tail;
                else
                    stream->out_head = tail;
                stream->out_tail = tail;
            }
            size_t room = tail->cap - tail->used;
            size_t take = len < room ? len : room;
            memcpy(tail->block + tail->used, p, take);
            tail->used += take;
            tail->len += take;
            stream->out_bytes += take;
            p += take;
            len -= take;
        }
    }
    return 0;
}

/* Tries the socket at once when nothing is queued (no copy for what it
 * takes). Returns the bytes sent, or -1 if the stream ended. */
static ssize_t write_now(ioloop_stream_t *stream, const struct iovec *iov, int iovcnt, size_t total)
{
    if (stream->out_head || !flush_allowed(stream) || !total)
        return 0;
    ssize_t n =
        stream->transport->writev(stream->transport_ctx, stream->fd, iov, iovcnt < IOV_BATCH ? iovcnt : IOV_BATCH);
    if (n == -EAGAIN) {
        stream->write_blocked = true;
        return 0;
    }
    if (n < 0) {
        end_stream(stream, (int)n);
        return -1;
    }
    stream->last_activity = stream->write_since = stream_now(stream);
    if ((size_t)n < total)
        stream->write_blocked = true;
    return n;
}

static int write_refused(ioloop_stream_t *stream)
{
    if (!owner_ok(stream))
        return -EPERM;
    if (stream->ended || stream->shut_requested)
        return -EPIPE;
    if (stream->out_bytes >= stream->max_out) {
        stream->drain_wanted = true;
        return -ENOBUFS;
    }
    return 0;
}

int ioloop_stream_writev(ioloop_stream_t *stream, const struct iovec *iov, int iovcnt, ioloop_stream_write_fn done,
                         void *arg)
{
    if (iovcnt < 0 || (iovcnt && !iov))
        return -EINVAL;
    int err = write_refused(stream);
    if (err)
        return err;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    /* Room first: once bytes are sent the write can no longer be refused. */
    if (done && completion_reserve(stream) < 0)
        return -ENOMEM;
    bool was_empty = !stream->out_bytes;
    ssize_t sent = write_now(stream, iov, iovcnt, total);
    if (sent < 0) {
        sent = 0; /* ended: the done callback gets the error */
    } else if ((size_t)sent < total) {
        if (queue_copy(stream, iov, iovcnt, (size_t)sent) < 0 && !stream->ended)
            end_stream(stream, -ENOMEM); /* part of it may be gone already: the stream cannot go on */
        if (was_empty && !stream->ended)
            stream->write_since = stream_now(stream);
    }
    stream->sent_total += (uint64_t)sent;
    stream->queued_total += total;
    if (done)
        completion_push(stream, done, arg, stream->queued_total);
    if (stream->out_bytes >= stream->max_out)
        stream->drain_wanted = true;
    update_io(stream);
    return 0;
}

int ioloop_stream_write(ioloop_stream_t *stream, const void *data, size_t len, ioloop_stream_write_fn done, void *arg)
{
    if (len && !data)
        return -EINVAL;
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    return ioloop_stream_writev(stream, &iov, 1, done, arg);
}

int ioloop_stream_write_borrowed(ioloop_stream_t *stream, const void *data, size_t len,
                                 ioloop_stream_release_fn release, void *arg)
{
    if (!release || (len && !data))
        return -EINVAL;
    int err = write_refused(stream);
    out_entry_t *entry = err == -EPERM ? NULL : entry_take(stream->home, false);
    if (!entry) {
        release((void *)data, arg); /* no way to defer it: another thread, or no memory */
        return err ? err : -ENOMEM;
    }
    entry->borrowed = data;
    entry->release = release;
    entry->release_arg = arg;
    if (err) {
        retire_entry(stream, entry); /* refused: released later, as a callback */
        update_io(stream);
        return err;
    }
    bool was_empty = !stream->out_bytes;
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    ssize_t sent = write_now(stream, &iov, 1, len);
    if (sent < 0)
        sent = 0; /* ended: released when the stream finishes */
    entry->data = data;
    entry->len = len;
    if (stream->out_tail)
        stream->out_tail->next = entry;
    else
        stream->out_head = entry;
    stream->out_tail = entry;
    stream->out_bytes += len;
    stream->queued_total += len;
    if (len == 0) {
        /* Nothing to send: it is done at once (released as a callback). */
        drop_empty_tail(stream);
    }
    drop_sent(stream, (size_t)sent); /* a fully sent entry moves to the released list */
    if (was_empty && stream->out_bytes)
        stream->write_since = stream_now(stream);
    if (stream->out_bytes >= stream->max_out)
        stream->drain_wanted = true;
    update_io(stream);
    return 0;
}

size_t ioloop_stream_write_queue_size(const ioloop_stream_t *stream)
{
    return stream->out_bytes;
}

bool ioloop_stream_writable(const ioloop_stream_t *stream)
{
    return !stream->ended && !stream->shut_requested && stream->out_bytes < stream->max_out;
}

void ioloop_stream_set_drain_callback(ioloop_stream_t *stream, ioloop_stream_write_fn fn, void *arg)
{
    if (!owner_ok(stream))
        return;
    stream->drain_fn = fn;
    stream->drain_arg = arg;
}

void ioloop_stream_cork(ioloop_stream_t *stream)
{
    if (!owner_ok(stream) || stream->ended)
        return;
    stream->cork++;
}

void ioloop_stream_uncork(ioloop_stream_t *stream)
{
    if (!owner_ok(stream) || !stream->cork)
        return;
    stream->cork--;
    if (!stream->cork)
        update_io(stream);
}

/* ---- controls and closing ------------------------------------------------------ */

int ioloop_stream_set_nodelay(ioloop_stream_t *stream, bool on)
{
    if (!owner_ok(stream))
        return -EPERM;
    if (stream->ended)
        return -EPIPE;
    int value = on;
    if (setsockopt(stream->fd, IPPROTO_TCP, TCP_NODELAY, &value, sizeof(value)) == 0)
        return 0;
    if (errno == EOPNOTSUPP || errno == ENOPROTOOPT || errno == EINVAL || errno == ENOTSOCK)
        return -ENOTSUP;
    return -errno;
}

void ioloop_stream_set_timeouts(ioloop_stream_t *stream, ioloop_time_t idle, ioloop_time_t read, ioloop_time_t write)
{
    if (!owner_ok(stream) || stream->ended)
        return;
    stream->idle_timeout = idle > 0 ? idle : 0;
    stream->read_timeout = read > 0 ? read : 0;
    stream->write_timeout = write > 0 ? write : 0;
    ioloop_time_t now = ioloop__on_loop_thread(stream->loop) ? stream_now(stream) : ioloop__clock_now(stream->loop);
    stream->last_activity = stream->read_since = stream->write_since = now;
    update_io(stream);
}

void ioloop_stream_set_close_callback(ioloop_stream_t *stream, ioloop_stream_close_fn fn, void *arg)
{
    if (!owner_ok(stream))
        return;
    stream->close_fn = fn;
    stream->close_arg = arg;
}

int ioloop_stream_shutdown(ioloop_stream_t *stream)
{
    if (!owner_ok(stream))
        return -EPERM;
    if (stream->ended || stream->shut_requested)
        return -EPIPE;
    stream->shut_requested = true;
    update_io(stream);
    return 0;
}

void ioloop_stream_close(ioloop_stream_t *stream)
{
    if (!owner_ok(stream) || stream->ended)
        return;
    end_stream(stream, 0);
    update_io(stream);
}
