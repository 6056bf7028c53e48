/* stream.h — a buffered stream over a connected socket, owned by one loop
 * (Tornado's IOStream, libuv's uv_stream_t), and TCP connections out
 * (Tornado's TCPClient).
 *
 * Threading rule: a stream belongs to the loop it was created on; every call
 * here is for that loop's thread (from another thread: -EPERM, or no effect
 * for the void calls). Every callback runs on that thread, never inline
 * inside the call that asked for it (so a callback may start the next read or
 * write without recursion).
 *
 * Memory: input is one buffer with a consumed offset (compacted only when a
 * read needs room); output is a queue of copied bytes and borrowed buffers.
 * After every event one function decides read interest, write interest and
 * the deadline: the socket is read only while a read is pending (or a
 * consumer is started), the input is below max_buffer_size and the output is
 * below max_write_buffer_size, so memory per stream stays bounded whatever the
 * peer does.
 *
 * Life cycle: a stream ends exactly once: by ioloop_stream_close, by the peer
 * (EOF without half_close, reset), by an error, a timeout, a full buffer, or
 * the loop's close. Then, in a later callback, the pending read gets the
 * error, pending writes' done callbacks get it, the close callback runs with
 * it, and the stream is freed: the pointer is invalid once the close callback
 * has returned.
 *
 * Errors: 0 or a negative errno; IOLOOP_EOF for the peer's clean end of
 * stream; ioloop_strerror names any of them. Once the stream has ended, the
 * read, write and shutdown calls return -EPIPE and the void calls do nothing.
 *
 * EOF is seen while reading (a stream that wants neither to read nor to
 * write is not polled, as in libuv). Without half_close the stream then ends
 * with IOLOOP_EOF as soon as no buffered byte can satisfy the pending read
 * (which gets IOLOOP_EOF and those bytes), or at once when nothing is
 * buffered and no read is pending.
 *
 * Memory: input is read in 64 KiB blocks from a per-loop cache (growing, by
 * doubling up to max_buffer_size, only for one larger message); a stream
 * holds its block only while it has unconsumed input, so idle streams hold
 * none. Copied writes coalesce in 16 KiB blocks; when nothing is queued a
 * write goes to the socket at once and only what it did not take is copied.
 */
#ifndef IOLOOP_STREAM_H
#define IOLOOP_STREAM_H

#include "ioloop/ioloop.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes beyond errno (negative, out of errno's range, as libuv does). */
#define IOLOOP_EOF (-4095)     /* the peer closed its side cleanly */
#define IOLOOP_ENONAME (-4094) /* a host name that does not resolve (EAI_NONAME, EAI_NODATA) */
#define IOLOOP_EDNS (-4093)    /* any other resolver failure (EAI_AGAIN, EAI_FAIL, ...) */
#define IOLOOP_ETLS (-4092)    /* a TLS protocol failure (handshake, alert, bad record, renegotiation) */
#define IOLOOP_ECERT (-4091)   /* the peer's certificate failed verification (ioloop_tls_error_message says why) */

/* A short text for 0, a negative errno or an IOLOOP_E* code ("end of
 * stream", "name not found", strerror's text otherwise). Any thread. */
IOLOOP_API const char *ioloop_strerror(int err);

typedef struct ioloop_stream ioloop_stream_t;

/* ---- transport: what moves bytes under the stream ----------------------- */

/* The stream calls these and nothing else to move bytes, so TLS (or a test
 * double) can sit under it. ctx is the transport's own state. All on the
 * loop thread. NULL in the options means the plain socket transport. */
typedef struct ioloop_stream_transport {
    const char *name;
    /* Reads up to len bytes: >0 bytes read, 0 end of stream, -EAGAIN, or a
     * negative errno. */
    ssize_t (*read)(void *ctx, int fd, char *buf, size_t len);
    /* Writes from iov: >0 bytes taken, -EAGAIN, or a negative errno (never
     * raises SIGPIPE). */
    ssize_t (*writev)(void *ctx, int fd, const struct iovec *iov, int iovcnt);
    /* Ends our side after everything was written (SHUT_WR, close_notify). */
    int (*shutdown)(void *ctx, int fd);
    /* The fd events the transport needs for the stream to make progress,
     * given the ones the stream wants (TLS may need READ to write). NULL: as
     * wanted. */
    unsigned (*events)(void *ctx, unsigned wanted);
    /* Bytes the transport already holds for read (the fd will not signal
     * them). NULL: 0. */
    size_t (*pending)(void *ctx);
    /* Frees ctx (the stream closes the fd afterwards). NULL: nothing. */
    void (*destroy)(void *ctx);
    /* Called once when the stream is made, before any I/O: the transport
     * learns its stream (TLS arms its handshake timeout with it, and may end
     * it with ioloop_stream_close). A negative errno fails ioloop_stream_new.
     * NULL: nothing. */
    int (*attach)(void *ctx, ioloop_stream_t *stream);
} ioloop_stream_transport_t;


/* The plain-socket transport (recv / writev with MSG_NOSIGNAL). */
IOLOOP_API extern const ioloop_stream_transport_t ioloop_stream_transport_socket;

/* For a transport's own code (libioloop-tls is one): the ctx the stream was
 * made with, or NULL for a NULL stream. Loop thread. */
IOLOOP_API void *ioloop_stream_transport_ctx(const ioloop_stream_t *stream);
/* For a transport's own code, outside the stream's calls into it (a
 * transport's timer, e.g. TLS's handshake timeout): ends the stream with err
 * (a negative errno or IOLOOP_E*; anything else is taken as -ECONNABORTED);
 * its callbacks run later, as for any end. Nothing if it already ended or
 * stream is NULL. Loop thread. */
IOLOOP_API void ioloop_stream_abort(ioloop_stream_t *stream, int err);

/* ---- creating ------------------------------------------------------------ */

typedef struct {
    size_t max_buffer_size;       /* input limit; 0: 100 MiB (Tornado). A read that cannot be
                                     satisfied within it closes the stream with -ENOBUFS. */
    size_t max_write_buffer_size; /* output high-water mark; 0: 1 MiB. At or above it, writes
                                     are refused with -ENOBUFS and the socket is not read. */
    ioloop_time_t idle_timeout;   /* close (-ETIMEDOUT) after this long with no byte either way; 0: none */
    ioloop_time_t read_timeout;   /* a pending read not satisfied within this (the consumer: no new
                                     byte for this long); not while paused; 0: none */
    ioloop_time_t write_timeout;  /* queued output that makes no progress for this long (not while
                                     corked); 0: none */
    bool half_close;              /* the peer's EOF does not close the stream: the pending read gets
                                     IOLOOP_EOF and writing goes on (close when done) */
    const ioloop_stream_transport_t *transport; /* NULL: ioloop_stream_transport_socket */
    void *transport_ctx;                        /* owned by the stream from creation (destroyed with it) */
} ioloop_stream_options_t;

/* Makes the transport of one new connection (fd connected or accepted) into
 * opts->transport / opts->transport_ctx, e.g. a TLS session per connection.
 * 0, or a negative errno (the connection is then closed). Loop thread. */
typedef int (*ioloop_transport_make_fn)(void *arg, int fd, ioloop_stream_options_t *opts);

/* Wraps a connected socket (made non-blocking and close-on-exec) in a stream
 * on `loop`, which owns fd from here: it is closed with the stream, and on
 * failure. opts may be NULL. Loop thread, or before the loop starts. 0 and
 * the stream in *out; -EBADF, -ENOMEM, -ESHUTDOWN (closed loop), -EPERM. */
IOLOOP_API int ioloop_stream_new(ioloop_t *loop, int fd, const ioloop_stream_options_t *opts, ioloop_stream_t **out);

IOLOOP_API ioloop_t *ioloop_stream_loop(const ioloop_stream_t *stream);
IOLOOP_API int ioloop_stream_fd(const ioloop_stream_t *stream);
/* The transport's name: "socket", "tls", ... */
IOLOOP_API const char *ioloop_stream_transport_name(const ioloop_stream_t *stream);
/* True once the stream has ended (its callbacks may not have run yet). */
IOLOOP_API bool ioloop_stream_closed(const ioloop_stream_t *stream);
/* The error it ended with: 0 for a local close, IOLOOP_EOF, or a negative errno. */
IOLOOP_API int ioloop_stream_error(const ioloop_stream_t *stream);

/* ---- reading (one read outstanding at a time: another gets -EBUSY) ------- */

/* A completed read: status 0 and the data (valid only during the call, then
 * consumed), or the error the stream ended with and whatever was buffered
 * (not consumed; a read_until_close gets status 0 at the peer's EOF). After
 * ioloop_stream_close the status is -ECANCELED; with half_close, the peer's
 * EOF gives IOLOOP_EOF and the stream goes on (a later read gets buffered
 * bytes that satisfy it, else IOLOOP_EOF again). */
typedef void (*ioloop_stream_read_fn)(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg);

/* Reads until `delim` (delim_len bytes; the data includes it). max_bytes > 0
 * limits how far to look: past it without the delimiter the stream closes
 * with -EMSGSIZE (Tornado's UnsatisfiableReadError). */
IOLOOP_API int ioloop_stream_read_until(ioloop_stream_t *stream, const void *delim, size_t delim_len, size_t max_bytes,
                                        ioloop_stream_read_fn cb, void *arg);
/* Reads exactly n bytes, or with partial, between 1 and n (whatever is there).
 * n 0, or n beyond SSIZE_MAX without partial: -EINVAL. */
IOLOOP_API int ioloop_stream_read_bytes(ioloop_stream_t *stream, size_t n, bool partial, ioloop_stream_read_fn cb,
                                        void *arg);
/* Reads everything until the peer's EOF (status 0 then); bounded by max_buffer_size. */
IOLOOP_API int ioloop_stream_read_until_close(ioloop_stream_t *stream, ioloop_stream_read_fn cb, void *arg);

/* The consumer form, for protocols (HTTP, WebSocket): cb runs whenever new
 * bytes were added to the input (status 0), and once at the end (IOLOOP_EOF
 * or an error). It looks at the unconsumed input with ioloop_stream_peek and
 * consumes what it used; the rest stays for the next call. The input does not
 * move while the consumer is stopped or paused: what peek returned stays valid
 * until the next consume, read_start or resume. read_start and resume call
 * it again when input is buffered (it may hold a whole message). When the
 * unconsumed input reaches max_buffer_size, reading stops until it consumes
 * (no error). The end call (IOLOOP_EOF, -ECANCELED after a local close, or
 * the error) comes once; with half_close, IOLOOP_EOF also stops the consumer. */
typedef void (*ioloop_stream_data_fn)(ioloop_stream_t *stream, int status, void *arg);
IOLOOP_API int ioloop_stream_read_start(ioloop_stream_t *stream, ioloop_stream_data_fn cb, void *arg);
/* Ends the consumer form (the input stays buffered). */
IOLOOP_API void ioloop_stream_read_stop(ioloop_stream_t *stream);
/* The unconsumed input (NULL when empty) and its length. */
IOLOOP_API const char *ioloop_stream_peek(const ioloop_stream_t *stream, size_t *len);
/* Drops the first n unconsumed bytes (n is clamped to what is there). */
IOLOOP_API void ioloop_stream_consume(ioloop_stream_t *stream, size_t n);

/* Stops reading from the socket whatever is pending (flow control), and
 * resumes; a paused stream still writes. No read callback runs while paused.
 * Idempotent. */
IOLOOP_API void ioloop_stream_pause(ioloop_stream_t *stream);
IOLOOP_API void ioloop_stream_resume(ioloop_stream_t *stream);

/* ---- writing ------------------------------------------------------------- */

/* A write's completion: status 0 once its bytes left for the kernel, or the
 * error the stream ended with. Runs exactly once per accepted write. */
typedef void (*ioloop_stream_write_fn)(ioloop_stream_t *stream, int status, void *arg);
/* A borrowed buffer's release: the stream no longer needs data. */
typedef void (*ioloop_stream_release_fn)(void *data, void *arg);

/* Queues a copy of data (done may be NULL). 0; -EINVAL for sizes beyond
 * SSIZE_MAX (in all, for writev); -ENOBUFS when the output is
 * already at or above max_write_buffer_size (nothing queued: wait for the
 * drain callback); -EPIPE once the stream ended or was shut down; -ENOMEM. A
 * single write may take the output past the mark. */
IOLOOP_API int ioloop_stream_write(ioloop_stream_t *stream, const void *data, size_t len, ioloop_stream_write_fn done,
                                   void *arg);
/* The same for several buffers, as one write. */
IOLOOP_API int ioloop_stream_writev(ioloop_stream_t *stream, const struct iovec *iov, int iovcnt,
                                    ioloop_stream_write_fn done, void *arg);
/* Zero-copy: data is borrowed until release(data, arg) runs (exactly once,
 * after the bytes left or the stream ended; also when refused: later, as a
 * callback, except for -EPERM and -ENOMEM, where it runs before the return;
 * -EINVAL for bad arguments, where it does not run). */
IOLOOP_API int ioloop_stream_write_borrowed(ioloop_stream_t *stream, const void *data, size_t len,
                                            ioloop_stream_release_fn release, void *arg);

/* Zero-copy file bytes: len bytes of fd from offset, queued in order with the
 * other writes. On the plain socket transport they go with sendfile(2) (the
 * page cache straight to the socket); on any other transport (TLS) at most
 * one 16 KiB block at a time is pread and handed to the transport's writev,
 * and the next one read only once it took all of it. The bytes count in the
 * output (write_queue_size, max_write_buffer_size) without being in memory,
 * so a large file is paced by the peer and memory stays flat.
 * fd is borrowed: keep it open and do not change the range until done runs
 * (exactly once, as for any write: status 0 once the last byte left, or the
 * error the stream ended with); then close it. done may be NULL only if the
 * fd outlives the stream. A file that ends before offset + len ends the
 * stream with -EIO (the peer's framing could not be kept), a read error with
 * its errno. Returns as ioloop_stream_write does (refused: done does not
 * run, fd stays the caller's), -EBADF for fd < 0, -EINVAL for a negative
 * offset or a range beyond SSIZE_MAX / INT64_MAX. */
IOLOOP_API int ioloop_stream_write_file(ioloop_stream_t *stream, int fd, off_t offset, size_t len,
                                        ioloop_stream_write_fn done, void *arg);

/* Bytes queued and not yet taken by the kernel. */
IOLOOP_API size_t ioloop_stream_write_queue_size(const ioloop_stream_t *stream);
/* True while a write would be accepted (output below max_write_buffer_size). */
IOLOOP_API bool ioloop_stream_writable(const ioloop_stream_t *stream);
/* fn runs each time the output has fully drained after it reached
 * max_write_buffer_size (or a write was refused). NULL: none. */
IOLOOP_API void ioloop_stream_set_drain_callback(ioloop_stream_t *stream, ioloop_stream_write_fn fn, void *arg);

/* Cork: writes only queue until uncork, which sends them in as few writev
 * calls as possible (pipelined responses in one send). Nested calls count. */
IOLOOP_API void ioloop_stream_cork(ioloop_stream_t *stream);
IOLOOP_API void ioloop_stream_uncork(ioloop_stream_t *stream);

/* ---- controls and closing ------------------------------------------------ */

/* TCP_NODELAY on or off (0, or -ENOTSUP for a non-TCP socket). */
IOLOOP_API int ioloop_stream_set_nodelay(ioloop_stream_t *stream, bool on);
/* Changes the timeouts (0: none); they apply from now. */
IOLOOP_API void ioloop_stream_set_timeouts(ioloop_stream_t *stream, ioloop_time_t idle, ioloop_time_t read,
                                           ioloop_time_t write);

/* The close callback: runs exactly once, after the stream ended, with its
 * error (0 for ioloop_stream_close). Setting it again replaces it. */
typedef void (*ioloop_stream_close_fn)(ioloop_stream_t *stream, int error, void *arg);
IOLOOP_API void ioloop_stream_set_close_callback(ioloop_stream_t *stream, ioloop_stream_close_fn fn, void *arg);

/* Half-close: once the queued output has gone, ends our side (FIN); reading
 * goes on. Later writes get -EPIPE. 0, or -EPIPE if already ended. */
IOLOOP_API int ioloop_stream_shutdown(ioloop_stream_t *stream);
/* Ends the stream now (queued output is dropped: its done callbacks get
 * -ECANCELED; the close callback gets 0). Idempotent. The fd is closed at
 * once; the callbacks run later. */
IOLOOP_API void ioloop_stream_close(ioloop_stream_t *stream);

/* ---- TCP connections out (Tornado's TCPClient) -------------------------- */

typedef struct ioloop_tcp_connect ioloop_tcp_connect_t;

typedef struct {
    ioloop_time_t timeout;              /* name lookup + connect; 0: 20 s */
    ioloop_time_t happy_eyeballs_delay; /* RFC 8305 "connection attempt delay"; 0: 250 ms */
    int family;                         /* AF_UNSPEC (0, both), AF_INET or AF_INET6 */
    const char *source_address;         /* bind to this local address first (a literal IPv4/IPv6
                                           address; it restricts the family); NULL: any */
    int source_port;                    /* with source_address (or alone: the wildcard); 0: any */
    bool nodelay;                       /* TCP_NODELAY on the connected socket */
    ioloop_transport_make_fn make_transport; /* with it, the winning connection's transport (TLS:
                                                ioloop_tls_client_options fills these two) */
    void *make_transport_arg;
    ioloop_stream_options_t stream;     /* options of the stream handed out */
} ioloop_tcp_connect_options_t;

/* The result: status 0 and a stream the callee owns, or a negative errno
 * (-ECONNREFUSED, -ETIMEDOUT, -ENETUNREACH, IOLOOP_ENONAME, ...) and NULL, or
 * -ECANCELED after ioloop_tcp_connect_cancel, or -ESHUTDOWN when the loop
 * closes first (then during ioloop_close). Runs exactly once. When every
 * address failed, status is the first attempt's error (the most preferred
 * address's); a bind to the source address fails with its own errno
 * (-EADDRINUSE, -EADDRNOTAVAIL). opts->stream.transport_ctx is taken as
 * ioloop_stream_new takes it: the stream gets it, or it is destroyed before
 * cb gets an error (or before ioloop_tcp_connect returns one). */
typedef void (*ioloop_tcp_connect_fn)(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg);

/* Connects to host:port ("example.com", "127.0.0.1", "::1", "[::1]", or
 * "unix:/path" with port, family, source and nodelay ignored). Names are
 * resolved with getaddrinfo on the executor, never on the loop thread
 * ("invalid" and names under it fail at once, RFC 6761); with several
 * addresses, families are interleaved and the next attempt starts every
 * happy_eyeballs_delay, or at once when one fails, until one connects (RFC
 * 8305). Loop thread, or before the loop starts. 0 (and, if out is not NULL,
 * a handle valid until cb runs), or -EINVAL / -ENOMEM, -EPERM from another
 * thread, -ESHUTDOWN on a closed loop; every other failure reaches cb. */
IOLOOP_API int ioloop_tcp_connect(ioloop_t *loop, const char *host, int port, const ioloop_tcp_connect_options_t *opts,
                                  ioloop_tcp_connect_fn cb, void *arg, ioloop_tcp_connect_t **out);
/* Abandons a connect in progress: cb runs (later) with -ECANCELED, also if
 * it had connected and cb had not run yet. A lookup still running finishes
 * on its pool thread and is dropped. Loop thread. */
IOLOOP_API void ioloop_tcp_connect_cancel(ioloop_tcp_connect_t *conn);

#ifdef __cplusplus
}
#endif
#endif
