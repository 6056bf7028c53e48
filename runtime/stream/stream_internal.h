/* stream_internal.h — what the files of ioloop_stream share: the stream's
 * structure, the per-loop home (stream list, block and entry caches), small
 * predicates, and the calls between the engine (stream.c), the input
 * (stream_read.c) and the output (stream_write.c); and, for the listener,
 * marking a stream as a counted connection.
 *
 * Threading rule: the stream's loop thread (as every stream call), or any
 * thread while that loop is not running.
 *
 * The read and write halves change state and may end the stream
 * (ioloop__stream_end); they run user callbacks only inside the engine's
 * frame (ioloop__stream_deliver, ioloop__stream_run_completions). Every API
 * call ends in ioloop__stream_update_io.
 */
#ifndef IOLOOP_RUNTIME_STREAM_INTERNAL_H
#define IOLOOP_RUNTIME_STREAM_INTERNAL_H

#include "internal.h"
#include "ioloop/stream.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

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
    /* a file range (ioloop_stream_write_file): len bytes from file_off of
     * file_fd (borrowed); with sendfile nothing is staged, else up to a block
     * is pread into `block` and sent from data/staged before reading more */
    bool file;
    bool file_copy; /* stage through the block (another transport, or sendfile refused the fd) */
    int file_fd;
    off_t file_off; /* next byte to send (sendfile) or to read (staged) */
    size_t staged;  /* bytes read into the block, not yet sent */
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
    bool read_clock_on; /* the read timeout runs: reading was wanted at the last update_io */

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

/* ---- small predicates (inline: on every event's path) ------------------------ */

static inline bool stream_owner_ok(const ioloop_stream_t *stream)
{
    return ioloop__on_loop_thread(stream->loop) || !atomic_load_explicit(&stream->loop->running, memory_order_acquire);
}

/* The loop's time; a loop that is not running (calls before start) has not
 * read its clock since it last ran, so read it now. */
static inline ioloop_time_t stream_now(ioloop_stream_t *stream)
{
    return ioloop__on_loop_thread(stream->loop) ? stream->loop->now : ioloop__clock_now(stream->loop);
}

static inline size_t stream_avail(const ioloop_stream_t *stream)
{
    return stream->in_end - stream->in_start;
}

static inline bool stream_reading_wanted(const ioloop_stream_t *stream)
{
    return !stream->ended && !stream->peer_eof && !stream->paused && stream->read_kind != READ_NONE &&
           stream_avail(stream) < stream->max_in && stream->out_bytes < stream->max_out;
}

static inline bool stream_completions_ready(const ioloop_stream_t *stream)
{
    return stream->comp_count && stream->comp[stream->comp_head].end <= stream->sent_total;
}

/* True when a pending read (or the consumer) can be called without new bytes. */
static inline bool stream_read_may_progress(const ioloop_stream_t *stream)
{
    if (stream->paused || stream->read_kind == READ_NONE)
        return false;
    if (stream->read_kind == READ_CONSUMER)
        return stream->consumer_fresh || stream->peer_eof;
    return !stream->read_checked && (stream_avail(stream) > 0 || stream->peer_eof);
}

static inline bool stream_flush_allowed(const ioloop_stream_t *stream)
{
    return !stream->ended && !stream->write_blocked && (!stream->cork || stream->shut_requested);
}

/* ---- stream.c: the engine and the end ---------------------------------------- */

/* The one decision at the end of every entry point (see stream.c). */
void ioloop__stream_update_io(ioloop_stream_t *stream);
/* Ends the stream with err (once; the callbacks run later). */
void ioloop__stream_end(ioloop_stream_t *stream, int err);

/* ---- stream_read.c: the input ------------------------------------------------ */

/* One recv into the input. True if it changed anything (bytes, EOF, an end). */
bool ioloop__stream_fill(ioloop_stream_t *stream);
/* Runs the pending read (or the consumer) once if it can. True if a callback ran or the stream ended. */
bool ioloop__stream_deliver(ioloop_stream_t *stream);
/* No read pending any more. */
void ioloop__stream_clear_read(ioloop_stream_t *stream);
/* Gives the input block back (to the loop's cache when it is a standard one). */
void ioloop__stream_input_release(ioloop_stream_t *stream);

/* ---- stream_write.c: the output ---------------------------------------------- */

/* Sends queued output until done or the socket is full; then a requested shutdown. May end the stream. */
void ioloop__stream_flush(ioloop_stream_t *stream);
/* Dones, releases and the drain callback that are due. True if a callback ran. */
bool ioloop__stream_run_completions(ioloop_stream_t *stream);
/* The oldest pending done callback (comp_count > 0). */
completion_t ioloop__stream_completion_pop(ioloop_stream_t *stream);
/* A sent or dropped entry: to the release list (borrowed) or the cache. */
void ioloop__stream_retire_entry(ioloop_stream_t *stream, out_entry_t *entry);
/* Runs every pending release callback. */
void ioloop__stream_run_releases(ioloop_stream_t *stream);

/* ---- for the listener -------------------------------------------------------- */

/* The stream is one of the loop's live_connections (the caller raised the
 * count): its end lowers it, as ioloop_connection_closed does. */
void ioloop__stream_count_connection(ioloop_stream_t *stream);
/* Replaces the transport of a stream that holds no input and has written
 * nothing (the PROXY header phase hands over to the connection's real
 * transport, TLS or the socket): the old ctx is destroyed, the new one
 * attached. 0, or the attach's error (the stream has then ended with it).
 * transport NULL: the socket. Loop thread, from a stream callback. */
int ioloop__stream_set_transport(ioloop_stream_t *stream, const ioloop_stream_transport_t *transport, void *ctx);

#endif
