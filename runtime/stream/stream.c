/* stream.c — ioloop_stream's life cycle (Tornado's IOStream, libuv's
 * uv_stream_t, h2o's socket): creation, accessors, controls, the per-loop
 * home and its close hook, the engine, timeouts and the end. Input is in
 * stream_read.c, output in stream_write.c, the plain socket in stream_socket.c.
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
 */
#define _GNU_SOURCE
#include "stream_internal.h"

#include "ioloop/runtime.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define DEFAULT_MAX_IN ((size_t)100 * 1024 * 1024)
#define DEFAULT_MAX_OUT ((size_t)1024 * 1024)
#define NO_DEADLINE INT64_MAX

static void finalize(ioloop_stream_t *stream);
static void schedule(ioloop_stream_t *stream);

/* ---- per-loop home: the stream list and the caches ------------------------------- */

static void home_close(ioloop_t *loop, ioloop__close_hook_t *hook)
{
    (void)loop;
    stream_home_t *home = (stream_home_t *)hook;
    while (home->streams) {
        ioloop_stream_t *stream = home->streams;
        assert(stream->busy == 0);
        if (!stream->ended)
            ioloop__stream_end(stream, -ESHUTDOWN);
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

/* ---- readiness ------------------------------------------------------------------- */

static bool work_ready(const ioloop_stream_t *stream)
{
    return stream_completions_ready(stream) || stream->released_head || (stream->drain_wanted && !stream->out_bytes) ||
           stream_read_may_progress(stream);
}

/* Without half_close, a stream that saw EOF ends once no read can use what
 * is buffered: at once when nothing is buffered and nothing is pending. */
static void check_eof(ioloop_stream_t *stream)
{
    if (stream->peer_eof && !stream->half_close && !stream->ended && stream->read_kind == READ_NONE &&
        stream_avail(stream) == 0)
        ioloop__stream_end(stream, IOLOOP_EOF);
}

/* ---- the engine ------------------------------------------------------------------ */

/* Runs everything that can run now, user callbacks included, in a loop. */
static void pump(ioloop_stream_t *stream)
{
    stream->busy++;
    for (;;) {
        if (stream->out_bytes && stream_flush_allowed(stream))
            ioloop__stream_flush(stream);
        else if (stream->shut_requested && !stream->shut_done)
            ioloop__stream_flush(stream);
        bool progress = ioloop__stream_run_completions(stream);
        if (!stream->ended && ioloop__stream_deliver(stream))
            continue;
        if (!stream->ended)
            check_eof(stream);
        if (stream->ended)
            break;
        if (stream->readable && stream_reading_wanted(stream) && ioloop__stream_fill(stream))
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
    ioloop__stream_update_io(stream);
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
    /* A transport that maps interest (TLS reads to write, or writes to read)
     * may need either event for either direction: both get another try. */
    unsigned either = stream->transport->events ? IOLOOP_READ | IOLOOP_WRITE : 0u;
    if (events & (IOLOOP_WRITE | IOLOOP_ERROR | either))
        stream->write_blocked = false;
    if (events & (IOLOOP_READ | IOLOOP_ERROR | either))
        stream->readable = true;
    stream->reads_left = READ_BUDGET;
    pump(stream);
    if ((events & IOLOOP_ERROR) && !stream->ended && !stream_reading_wanted(stream)) {
        /* Hang-up or error that nothing wanted to read or write: name the
         * error, or (a plain hang-up) stop watching until there is interest
         * again, or the loop would spin on it (epoll and poll always report it). */
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (getsockopt(stream->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr) {
            ioloop__stream_end(stream, -soerr);
        } else {
            /* The peer is gone: read ahead what it left (bounded by
             * max_buffer_size) to learn of its EOF, so an idle stream ends
             * now rather than at its next read. Not while paused, nor while
             * input waits with no read pending (a stopped consumer's view
             * must not move; such a stream does not end at EOF anyway). */
            bool held = stream->read_kind == READ_NONE && stream_avail(stream) > 0;
            while (!held && !stream->ended && !stream->paused && !stream->peer_eof &&
                   stream_avail(stream) < stream->max_in && ioloop__stream_fill(stream))
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
    ioloop__stream_update_io(stream);
    return 0;
}

static ioloop_time_t next_deadline(const ioloop_stream_t *stream)
{
    ioloop_time_t at = NO_DEADLINE;
    if (stream->idle_timeout)
        at = stream->last_activity + stream->idle_timeout;
    /* Only while the socket is being read: a stop of our own (input full for
     * a consumer that holds it, output above its mark) is not the peer's delay. */
    if (stream->read_timeout && stream->read_clock_on && stream->read_since + stream->read_timeout < at)
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
        ioloop__stream_end(stream, -ETIMEDOUT);
    ioloop__stream_update_io(stream); /* re-arms for a later deadline, or finishes */
}

/* The one decision, at the end of every entry point (outside frames): flush,
 * read/write interest, deadline, and whether a deferred pump is needed. */
void ioloop__stream_update_io(ioloop_stream_t *stream)
{
    if (stream->busy)
        return; /* the frame calls it when it unwinds */
    if (!stream->ended &&
        ((stream->out_bytes && stream_flush_allowed(stream)) || (stream->shut_requested && !stream->shut_done)))
        ioloop__stream_flush(stream);
    if (!stream->ended)
        check_eof(stream);
    if (stream->ended) {
        schedule(stream);
        return;
    }
    if (stream->in && stream->in_start == stream->in_end)
        ioloop__stream_input_release(stream); /* idle streams hold no input block */
    unsigned want = 0;
    bool reading = stream_reading_wanted(stream);
    if (reading && !stream->read_clock_on)
        stream->read_since = stream_now(stream); /* reading again: the read timeout starts over */
    stream->read_clock_on = reading;
    if (reading) {
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
            ioloop__stream_end(stream, err);
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
        int err = ioloop_call_at(stream->loop, at, on_timer, stream, &stream->timer);
        stream->timer_at = at;
        if (err && err != -ESHUTDOWN)
            ioloop_report_error(stream->loop, "stream timer", err);
    }
}

/* ---- the end --------------------------------------------------------------------- */

void ioloop__stream_end(ioloop_stream_t *stream, int err)
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
        ioloop__stream_clear_read(stream);
        fn(stream, cancel, arg);
    } else if (stream->read_kind != READ_NONE) {
        ioloop_stream_read_fn fn = stream->read_fn;
        void *arg = stream->read_arg;
        int status = stream->read_kind == READ_CLOSE && err == IOLOOP_EOF ? 0 : cancel;
        ioloop__stream_clear_read(stream);
        fn(stream, status, stream->in ? stream->in + stream->in_start : NULL, stream_avail(stream), arg);
    }
    while (stream->comp_count) {
        completion_t c = ioloop__stream_completion_pop(stream);
        c.fn(stream, c.end <= stream->sent_total ? 0 : cancel, c.arg);
    }
    /* Unsent borrowed buffers join the released ones, in order. */
    while (stream->out_head) {
        out_entry_t *entry = stream->out_head;
        stream->out_head = entry->next;
        ioloop__stream_retire_entry(stream, entry);
    }
    stream->out_tail = NULL;
    stream->out_bytes = 0;
    ioloop__stream_run_releases(stream);
    if (stream->close_fn) {
        ioloop_stream_close_fn fn = stream->close_fn;
        stream->close_fn = NULL;
        fn(stream, err, stream->close_arg);
    }
    ioloop__stream_run_releases(stream); /* refused borrowed writes made by the close callback */
    while (stream->comp_count) {         /* writes are refused now: nothing new, but be exact */
        completion_t c = ioloop__stream_completion_pop(stream);
        c.fn(stream, cancel, c.arg);
    }
    if (stream->in)
        ioloop__stream_input_release(stream);
    ioloop__stream_clear_read(stream);
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

/* ---- creating and accessors ------------------------------------------------------ */

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
    if (transport->attach && (err = transport->attach(stream->transport_ctx, stream)) < 0) {
        /* Nothing armed yet but what attach armed, which destroy undoes. */
        if (transport->destroy)
            transport->destroy(stream->transport_ctx);
        close(fd);
        free(stream);
        *out = NULL;
        return err;
    }
    /* The handler is registered at the first interest (update_io): a
     * registration with no events would cost an epoll_ctl per connection. */
    ioloop_time_t now = ioloop__on_loop_thread(loop) ? loop->now : ioloop__clock_now(loop);
    stream->last_activity = stream->read_since = stream->write_since = now;
    stream->next = home->streams;
    if (home->streams)
        home->streams->prev = stream;
    home->streams = stream;
    *out = stream;
    ioloop__stream_update_io(stream); /* arms the idle timer */
    return 0;
}

void ioloop_stream_abort(ioloop_stream_t *stream, int err)
{
    if (!stream || stream->ended)
        return;
    /* The close callback reports an end as an error: an error it must be. */
    ioloop__stream_end(stream, err < 0 ? err : -ECONNABORTED);
    ioloop__stream_update_io(stream); /* schedules the callbacks (not inside a frame: that one does) */
}

void *ioloop_stream_transport_ctx(const ioloop_stream_t *stream)
{
    return stream ? stream->transport_ctx : NULL;
}

const char *ioloop_stream_transport_name(const ioloop_stream_t *stream)
{
    return stream->transport->name ? stream->transport->name : "";
}

void ioloop__stream_count_connection(ioloop_stream_t *stream)
{
    stream->counted = true;
}

int ioloop__stream_set_transport(ioloop_stream_t *stream, const ioloop_stream_transport_t *transport, void *ctx)
{
    if (!transport)
        transport = &ioloop_stream_transport_socket;
    if (stream->ended) {
        if (transport->destroy)
            transport->destroy(ctx);
        return -EPIPE;
    }
    /* No byte of the old transport may leak into the new one. */
    assert(stream_avail(stream) == 0 && stream->queued_total == 0);
    const ioloop_stream_transport_t *old = stream->transport;
    void *old_ctx = stream->transport_ctx;
    stream->transport = transport;
    stream->transport_ctx = ctx;
    if (old->destroy)
        old->destroy(old_ctx);
    int err = transport->attach ? transport->attach(ctx, stream) : 0;
    if (err < 0)
        ioloop__stream_end(stream, err); /* destroys ctx; the frame we are in schedules the callbacks */
    return err < 0 ? err : 0;
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

/* ---- controls and closing -------------------------------------------------------- */

int ioloop_stream_set_nodelay(ioloop_stream_t *stream, bool on)
{
    if (!stream_owner_ok(stream))
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
    if (!stream_owner_ok(stream) || stream->ended)
        return;
    stream->idle_timeout = idle > 0 ? idle : 0;
    stream->read_timeout = read > 0 ? read : 0;
    stream->write_timeout = write > 0 ? write : 0;
    ioloop_time_t now = ioloop__on_loop_thread(stream->loop) ? stream_now(stream) : ioloop__clock_now(stream->loop);
    stream->last_activity = stream->read_since = stream->write_since = now;
    ioloop__stream_update_io(stream);
}

void ioloop_stream_set_close_callback(ioloop_stream_t *stream, ioloop_stream_close_fn fn, void *arg)
{
    if (!stream_owner_ok(stream))
        return;
    stream->close_fn = fn;
    stream->close_arg = arg;
}

void ioloop_stream_close(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream) || stream->ended)
        return;
    ioloop__stream_end(stream, 0);
    ioloop__stream_update_io(stream);
}
