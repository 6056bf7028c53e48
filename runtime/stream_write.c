/* stream_write.c — ioloop_stream's output: the queue of copied blocks (16
 * KiB, coalescing small writes; entries from the loop's cache) and borrowed
 * buffers, the writev that drains it, the ring of done callbacks (each due
 * once its bytes left), releases, the drain callback, cork and shutdown, and
 * the write calls. A write to an empty queue goes to the socket at once and
 * only what it did not take is copied.
 *
 * Threading rule: the stream's loop thread (or any thread while that loop is
 * not running); other threads get -EPERM or no effect. Done, release and
 * drain callbacks run only from the engine's frame (pump) or the end.
 */
#define _GNU_SOURCE
#include "stream_internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- the output queue and its cache ---------------------------------------------- */

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

/* A sent (or dropped) entry: a borrowed one waits for its release callback,
 * a copied one goes back to the cache. */
void ioloop__stream_retire_entry(ioloop_stream_t *stream, out_entry_t *entry)
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
        ioloop__stream_retire_entry(stream, entry);
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
    ioloop__stream_retire_entry(stream, entry);
}

/* Sends queued output until done or the socket is full; then a requested
 * shutdown. May end the stream. */
void ioloop__stream_flush(ioloop_stream_t *stream)
{
    while (stream->out_bytes && stream_flush_allowed(stream)) {
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
            ioloop__stream_end(stream, (int)n);
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
            ioloop__stream_end(stream, err);
    }
}

/* ---- completions ----------------------------------------------------------------- */

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

completion_t ioloop__stream_completion_pop(ioloop_stream_t *stream)
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
bool ioloop__stream_run_completions(ioloop_stream_t *stream)
{
    bool ran = false;
    while (!stream->ended && stream_completions_ready(stream)) {
        completion_t c = ioloop__stream_completion_pop(stream);
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

void ioloop__stream_run_releases(ioloop_stream_t *stream)
{
    while (stream->released_head) {
        out_entry_t *entry = released_pop(stream);
        ioloop_stream_release_fn release = entry->release;
        void *data = (void *)entry->borrowed, *arg = entry->release_arg;
        entry_put(stream->home, entry);
        release(data, arg);
    }
}

/* ---- the write calls ------------------------------------------------------------- */

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
            /* A borrowed tail may carry a cached entry's block: never append there. */
            if (!tail || tail->release || !tail->block || tail->used == tail->cap) {
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
    if (stream->out_head || !stream_flush_allowed(stream) || !total)
        return 0;
    ssize_t n =
        stream->transport->writev(stream->transport_ctx, stream->fd, iov, iovcnt < IOV_BATCH ? iovcnt : IOV_BATCH);
    if (n == -EAGAIN) {
        stream->write_blocked = true;
        return 0;
    }
    if (n < 0) {
        ioloop__stream_end(stream, (int)n);
        return -1;
    }
    stream->last_activity = stream->write_since = stream_now(stream);
    if ((size_t)n < total)
        stream->write_blocked = true;
    return n;
}

static int write_refused(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream))
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
    /* A total beyond ssize_t is no real buffer (writev(2) says EINVAL too);
     * a wrapped one would run done callbacks before their bytes left. */
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > (size_t)SSIZE_MAX - total)
            return -EINVAL;
        total += iov[i].iov_len;
    }
    int err = write_refused(stream);
    if (err)
        return err;
    /* Room first: once bytes are sent the write can no longer be refused. */
    if (done && completion_reserve(stream) < 0)
        return -ENOMEM;
    bool was_empty = !stream->out_bytes;
    ssize_t sent = write_now(stream, iov, iovcnt, total);
    if (sent < 0) {
        sent = 0; /* ended: the done callback gets the error */
    } else if ((size_t)sent < total) {
        if (queue_copy(stream, iov, iovcnt, (size_t)sent) < 0 && !stream->ended)
            ioloop__stream_end(stream, -ENOMEM); /* part of it may be gone already: the stream cannot go on */
        if (was_empty && !stream->ended)
            stream->write_since = stream_now(stream);
    }
    stream->sent_total += (uint64_t)sent;
    stream->queued_total += total;
    if (done)
        completion_push(stream, done, arg, stream->queued_total);
    if (stream->out_bytes >= stream->max_out)
        stream->drain_wanted = true;
    ioloop__stream_update_io(stream);
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
    if (!release || (len && !data) || len > (size_t)SSIZE_MAX)
        return -EINVAL; /* bad arguments: release is not called */
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
        ioloop__stream_retire_entry(stream, entry); /* refused: released later, as a callback */
        ioloop__stream_update_io(stream);
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
    ioloop__stream_update_io(stream);
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
    if (!stream_owner_ok(stream))
        return;
    stream->drain_fn = fn;
    stream->drain_arg = arg;
}

void ioloop_stream_cork(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream) || stream->ended)
        return;
    stream->cork++;
}

void ioloop_stream_uncork(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream) || !stream->cork)
        return;
    stream->cork--;
    if (!stream->cork) {
        stream->write_since = stream_now(stream); /* the write timeout does not run while corked */
        ioloop__stream_update_io(stream);
    }
}

int ioloop_stream_shutdown(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream))
        return -EPERM;
    if (stream->ended || stream->shut_requested)
        return -EPIPE;
    if (stream->cork)
        stream->write_since = stream_now(stream); /* the output moves from now (corked until here) */
    stream->shut_requested = true;
    ioloop__stream_update_io(stream);
    return 0;
}
