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
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <time.h>
#include <unistd.h>

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
    entry->file = entry->file_copy = false;
    entry->file_fd = -1;
    entry->staged = 0;
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

/* n bytes of a file entry left (fewer than its len). */
static void file_advance(out_entry_t *entry, size_t n)
{
    entry->len -= n;
    if (entry->file_copy) {
        entry->data += n;
        entry->staged -= n;
    } else {
        entry->file_off += (off_t)n;
    }
}

static void drop_sent(ioloop_stream_t *stream, size_t n)
{
    stream->sent_total += n;
    stream->out_bytes -= n;
    while (n) {
        out_entry_t *entry = stream->out_head;
        if (n < entry->len) {
            if (entry->file) {
                file_advance(entry, n);
                break;
            }
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

/* A zero-length borrowed or file write just queued at the tail: done at once. */
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

static void link_tail(ioloop_stream_t *stream, out_entry_t *entry)
{
    if (stream->out_tail)
        stream->out_tail->next = entry;
    else
        stream->out_head = entry;
    stream->out_tail = entry;
}

/* Queues a whole entry of len bytes (borrowed or file) behind what is
 * there; an empty one is done at once (released as a callback). */
static void queue_entry(ioloop_stream_t *stream, out_entry_t *entry, size_t len)
{
    entry->len = len;
    link_tail(stream, entry);
    stream->out_bytes += len;
    stream->queued_total += len;
    if (len == 0)
        drop_empty_tail(stream);
}

/* The end of a write call that queued an entry: the write timeout counts
 * from the first byte left waiting, a full queue wants a drain callback, and
 * the queue goes out at once unless corked or blocked. */
static void entry_queued(ioloop_stream_t *stream, bool was_empty)
{
    if (was_empty && stream->out_bytes)
        stream->write_since = stream_now(stream);
    if (stream->out_bytes >= stream->max_out)
        stream->drain_wanted = true;
    ioloop__stream_update_io(stream);
}

/* At most this much per sendfile call (nginx's sendfile_max_chunk): one
 * huge call keeps the loop away from its other streams, and copies more
 * than the caches hold before the peer reads any of it. */
#define SENDFILE_CHUNK ((size_t)2 * 1024 * 1024)

/* sendfile(2) without SIGPIPE: a socket the peer reset raises it and
 * sendfile has no MSG_NOSIGNAL, so the signal is blocked around the call and
 * one it raised is taken back (sigtimedwait), leaving a SIGPIPE that was
 * already pending alone. Costs two sigprocmask per call: one call moves up
 * to a socket buffer (megabytes on a fast path), small files never get here. */
static ssize_t sendfile_nosignal(int out_fd, int in_fd, off_t *off, size_t count)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
    ssize_t n;
    do
        n = sendfile(out_fd, in_fd, off, count);
    while (n < 0 && errno == EINTR);
    int err = n < 0 ? errno : 0;
    if (err == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return n;
}

/* Sends from the file entry at the head of the queue: sendfile on the plain
 * socket; for another transport (TLS), or an fd sendfile refuses, through a
 * staged block: pread at most one block, and write it (the same bytes at
 * the same address until the transport took them all, as TLS needs) before
 * reading more. So a file holds at most one block, whatever its size. Bytes
 * the transport took, -EAGAIN, or a negative errno (-EIO: the file ended
 * before the promised range). */
static ssize_t send_file_entry(ioloop_stream_t *stream, out_entry_t *entry)
{
    if (!entry->file_copy) {
        size_t want = entry->len < SENDFILE_CHUNK ? entry->len : SENDFILE_CHUNK;
        off_t off = entry->file_off;
        ssize_t n = sendfile_nosignal(stream->fd, entry->file_fd, &off, want);
        if (n > 0)
            return n;
        if (n == 0)
            return -EIO; /* the file is shorter than the range: the framing cannot be kept */
        if (errno == EAGAIN)
            return -EAGAIN;
        if (errno != EINVAL && errno != ENOSYS)
            return -errno;
        entry->file_copy = true; /* an fd sendfile cannot read from: stage instead */
    }
    if (!entry->staged) {
        if (!entry->block) {
            entry->block = malloc(OUT_BLOCK);
            if (!entry->block)
                return -ENOMEM;
            entry->cap = OUT_BLOCK;
        }
        size_t want = entry->len < entry->cap ? entry->len : entry->cap;
        ssize_t got;
        do
            got = pread(entry->file_fd, entry->block, want, entry->file_off);
        while (got < 0 && errno == EINTR);
        if (got < 0)
            return -errno;
        if (got == 0)
            return -EIO;
        entry->file_off += got;
        entry->staged = (size_t)got;
        entry->data = entry->block;
    }
    struct iovec iov = {.iov_base = (void *)entry->data, .iov_len = entry->staged};
    return stream->transport->writev(stream->transport_ctx, stream->fd, &iov, 1);
}

/* Sends queued output until done or the socket is full; then a requested
 * shutdown. May end the stream. Memory entries go out in writev batches up
 * to the next file entry, which goes alone. */
void ioloop__stream_flush(ioloop_stream_t *stream)
{
    while (stream->out_bytes && stream_flush_allowed(stream)) {
        struct iovec iov[IOV_BATCH];
        int count = 0;
        size_t total = 0;
        ssize_t n;
        out_entry_t *head = stream->out_head;
        while (head && !head->len && !head->file)
            head = head->next;
        if (head && head->file) {
            while (stream->out_head != head) { /* empty copied entries before it */
                out_entry_t *entry = stream->out_head;
                stream->out_head = entry->next;
                ioloop__stream_retire_entry(stream, entry);
            }
            n = send_file_entry(stream, head);
            /* a staged block counts as taken only as far as the transport took it */
            total = head->file_copy ? head->staged : head->len < SENDFILE_CHUNK ? head->len : SENDFILE_CHUNK;
        } else {
            for (out_entry_t *entry = stream->out_head; entry && count < IOV_BATCH && !entry->file;
                 entry = entry->next) {
                if (!entry->len)
                    continue;
                iov[count++] = (struct iovec){.iov_base = (void *)entry->data, .iov_len = entry->len};
                total += entry->len;
            }
            n = stream->transport->writev(stream->transport_ctx, stream->fd, iov, count);
        }
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
            /* A borrowed or file tail may carry a cached entry's block: never append there. */
            if (!tail || tail->release || tail->file || !tail->block || tail->used == tail->cap) {
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
                link_tail(stream, tail);
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
    queue_entry(stream, entry, len);
    drop_sent(stream, (size_t)sent); /* a fully sent entry moves to the released list */
    entry_queued(stream, was_empty);
    return 0;
}

int ioloop_stream_write_file(ioloop_stream_t *stream, int fd, off_t offset, size_t len, ioloop_stream_write_fn done,
                             void *arg)
{
    if (fd < 0)
        return -EBADF;
    if (offset < 0 || len > (size_t)SSIZE_MAX || (uint64_t)offset > (uint64_t)INT64_MAX - len)
        return -EINVAL;
    int err = write_refused(stream);
    if (err)
        return err;
    if (done && completion_reserve(stream) < 0)
        return -ENOMEM;
    out_entry_t *entry = entry_take(stream->home, false);
    if (!entry)
        return -ENOMEM;
    entry->file = true;
    entry->file_copy = stream->transport != &ioloop_stream_transport_socket;
    entry->file_fd = fd;
    entry->file_off = offset;
    entry->data = entry->block;
    bool was_empty = !stream->out_bytes;
    queue_entry(stream, entry, len); /* an empty one: done as soon as what precedes it */
    if (done)
        completion_push(stream, done, arg, stream->queued_total);
    entry_queued(stream, was_empty);
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
