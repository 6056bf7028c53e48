/* stream_read.c — ioloop_stream's input: the buffer with a consumed offset
 * (one 64 KiB block from the loop's cache, grown by doubling only for one
 * larger message, compacted only when a recv needs room), the recv into it,
 * matching the pending read (until, bytes, until close, the consumer) and
 * running it, and the read calls (read_*, peek/consume, pause/resume).
 *
 * Threading rule: the stream's loop thread (or any thread while that loop is
 * not running); other threads get -EPERM or no effect. Read callbacks run
 * only from the engine's frame (ioloop__stream_deliver from pump).
 */
#define _GNU_SOURCE
#include "stream_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- the input buffer and its cache ---------------------------------------------- */

static char *block_take(stream_home_t *home)
{
    return home->nblocks ? home->blocks[--home->nblocks] : malloc(IN_BLOCK);
}

void ioloop__stream_input_release(ioloop_stream_t *stream)
{
    stream_home_t *home = stream->home;
    if (stream->in_cap == IN_BLOCK && home->nblocks < CACHE_BLOCKS)
        home->blocks[home->nblocks++] = stream->in;
    else
        free(stream->in);
    stream->in = NULL;
    stream->in_cap = stream->in_start = stream->in_end = 0;
}

void ioloop__stream_clear_read(ioloop_stream_t *stream)
{
    stream->read_kind = READ_NONE;
    stream->read_fn = NULL;
    stream->data_fn = NULL;
    if (stream->delim != stream->delim_inline)
        free(stream->delim);
    stream->delim = NULL;
    stream->delim_len = 0;
}

/* Makes room for a recv; returns the bytes to ask for (0: out of memory, the
 * stream ended). */
static size_t input_room(ioloop_stream_t *stream)
{
    size_t have = stream_avail(stream);
    if (!stream->in) {
        stream->in = block_take(stream->home);
        if (!stream->in) {
            ioloop__stream_end(stream, -ENOMEM);
            return 0;
        }
        stream->in_cap = IN_BLOCK;
        stream->in_start = stream->in_end = 0;
    }
    /* Only a whole read_bytes needs its n at once; a partial one takes what is there. */
    size_t need = stream->read_kind == READ_BYTES && !stream->partial && stream->want > have ? stream->want - have : 1;
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
            ioloop__stream_end(stream, -ENOMEM);
            return 0;
        }
        memcpy(bigger, stream->in + stream->in_start, have);
        ioloop__stream_input_release(stream);
        stream->in = bigger;
        stream->in_cap = cap;
        stream->in_end = have;
        room = cap - have;
    }
    size_t limit = stream->max_in - have; /* > 0: reading_wanted checked it */
    return room < limit ? room : limit;
}

/* One recv. Returns true if it changed anything (bytes, EOF or an end). */
bool ioloop__stream_fill(ioloop_stream_t *stream)
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
    ioloop__stream_end(stream, (int)n);
    return true;
}

/* ---- matching and running the pending read --------------------------------------- */

/* How many bytes the pending read takes now: >0, 0 if not yet, or an error
 * (negative) the stream ends with. */
static ssize_t read_satisfiable(ioloop_stream_t *stream)
{
    size_t have = stream_avail(stream);
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
bool ioloop__stream_deliver(ioloop_stream_t *stream)
{
    if (stream->paused || stream->read_kind == READ_NONE || stream->ended)
        return false;
    size_t have = stream_avail(stream);
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
            ioloop__stream_end(stream, IOLOOP_EOF);
            return true;
        }
        ioloop_stream_data_fn fn = stream->data_fn;
        void *arg = stream->read_arg;
        ioloop__stream_clear_read(stream);
        fn(stream, IOLOOP_EOF, arg);
        return true;
    }
    if (stream->read_checked)
        return false;
    ssize_t n = stream->read_kind == READ_CLOSE && stream->peer_eof ? (ssize_t)have : read_satisfiable(stream);
    if (n < 0) {
        ioloop__stream_end(stream, (int)n);
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
            ioloop__stream_end(stream, IOLOOP_EOF); /* the read gets EOF and the data when the stream ends */
            return true;
        }
        ioloop__stream_clear_read(stream);
        fn(stream, IOLOOP_EOF, data, have, arg); /* not consumed: still there for the next read */
        return true;
    }
    /* Consumed before the call (the call may read again, or consume); the
     * bytes stay in place until the next recv, which only a frame makes. */
    stream->in_start += (size_t)n;
    if (stream->in_start == stream->in_end)
        stream->in_start = stream->in_end = 0;
    stream->scanned = 0;
    ioloop__stream_clear_read(stream);
    fn(stream, 0, data ? data : "", (size_t)n, arg);
    return true;
}

/* ---- the read calls -------------------------------------------------------------- */

/* Whether a read (or the consumer) may start now: 0, or why not. */
static int read_refused(const ioloop_stream_t *stream, bool has_cb)
{
    if (!stream_owner_ok(stream))
        return -EPERM;
    if (!has_cb)
        return -EINVAL;
    if (stream->ended)
        return -EPIPE;
    if (stream->read_kind != READ_NONE)
        return -EBUSY;
    return 0;
}

/* Common checks and setup of a read request. */
static int read_begin(ioloop_stream_t *stream, int kind, ioloop_stream_read_fn cb, void *arg)
{
    int err = read_refused(stream, cb != NULL);
    if (err)
        return err;
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
        if (!stream_owner_ok(stream))
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
    ioloop__stream_update_io(stream);
    return 0;
}

int ioloop_stream_read_bytes(ioloop_stream_t *stream, size_t n, bool partial, ioloop_stream_read_fn cb, void *arg)
{
    if (!n || (!partial && n > (size_t)SSIZE_MAX))
        return -EINVAL; /* never met; and the input's doubling towards n must not wrap */
    int err = read_begin(stream, READ_BYTES, cb, arg);
    if (err)
        return err;
    stream->want = n;
    stream->partial = partial;
    ioloop__stream_update_io(stream);
    return 0;
}

int ioloop_stream_read_until_close(ioloop_stream_t *stream, ioloop_stream_read_fn cb, void *arg)
{
    int err = read_begin(stream, READ_CLOSE, cb, arg);
    if (err)
        return err;
    ioloop__stream_update_io(stream);
    return 0;
}

int ioloop_stream_read_start(ioloop_stream_t *stream, ioloop_stream_data_fn cb, void *arg)
{
    int err = read_refused(stream, cb != NULL);
    if (err)
        return err;
    stream->read_kind = READ_CONSUMER;
    stream->data_fn = cb;
    stream->read_arg = arg;
    stream->consumer_fresh = stream_avail(stream) > 0; /* what is buffered is new to this consumer */
    stream->read_since = stream_now(stream);
    ioloop__stream_update_io(stream);
    return 0;
}

void ioloop_stream_read_stop(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream) || stream->read_kind != READ_CONSUMER || stream->ended)
        return;
    ioloop__stream_clear_read(stream);
    ioloop__stream_update_io(stream);
}

const char *ioloop_stream_peek(const ioloop_stream_t *stream, size_t *len)
{
    size_t have = stream_owner_ok(stream) ? stream_avail(stream) : 0;
    if (len)
        *len = have;
    return have ? stream->in + stream->in_start : NULL;
}

void ioloop_stream_consume(ioloop_stream_t *stream, size_t n)
{
    if (!stream_owner_ok(stream))
        return;
    size_t have = stream_avail(stream);
    if (n > have)
        n = have;
    stream->in_start += n;
    if (stream->in_start == stream->in_end)
        stream->in_start = stream->in_end = 0;
    stream->scanned = stream->scanned > n ? stream->scanned - n : 0;
    ioloop__stream_update_io(stream);
}

void ioloop_stream_pause(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream) || stream->paused)
        return;
    stream->paused = true;
    ioloop__stream_update_io(stream);
}

void ioloop_stream_resume(ioloop_stream_t *stream)
{
    if (!stream_owner_ok(stream) || !stream->paused)
        return;
    stream->paused = false;
    stream->read_checked = false;
    stream->read_since = stream_now(stream);
    if (stream->read_kind == READ_CONSUMER && stream_avail(stream))
        stream->consumer_fresh = true; /* it may have left a whole message for later */
    ioloop__stream_update_io(stream);
}
