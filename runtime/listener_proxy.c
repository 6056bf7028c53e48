/* listener_proxy.c — the PROXY protocol phase of a listener's connection:
 * read the header through the stream, within proxy_timeout, then hand the
 * stream to on_stream with the address the header carries, on the
 * connection's real transport (TLS starts only after the header).
 *
 * Threading rule: everything runs on the loop that owns the connection
 * (ioloop__listener_hand_over's thread); the phase holds a listener
 * reference until it ends, so on_stream stays callable after a stop.
 *
 * How the header stays out of the payload: during the phase the stream's
 * transport is `header_transport`, which peeks at the socket (MSG_PEEK) and
 * takes from it only bytes that belong to the header (all of them while the
 * header is incomplete, since a v1 line ends at its first LF and a v2 header
 * at 16 + its length; only up to its end once it is complete). The stream's
 * consumer parses what it got; at the end the input holds exactly the
 * header, which is consumed, and the real transport replaces the peeking
 * one with nothing of the payload read yet: a ClientHello that arrived in
 * the same segment as the header is still in the socket for TLS.
 * The phase costs one allocation per connection (this struct with a copy of
 * the header so far, at most IOLOOP__PROXY_MAX bytes), freed when it ends.
 */
#define _GNU_SOURCE
#include "proxy_protocol.h"
#include "runtime_internal.h"
#include "stream_internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct proxy_phase {
    ioloop_listener_t *listener; /* one reference */
    int loop_index;              /* in the listener's loops: its in_header count */
    ioloop_stream_t *stream;
    ioloop_timer_t timer;
    struct sockaddr_storage peer; /* the real peer, kept for LOCAL */
    socklen_t peer_len;
    size_t have; /* header bytes taken from the socket so far (a copy is in hdr) */
    unsigned char hdr[IOLOOP__PROXY_MAX];
} proxy_phase_t;

/* ---- the peeking transport ----------------------------------------------- */

static ssize_t header_read(void *ctx, int fd, char *buf, size_t len)
{
    proxy_phase_t *phase = ctx;
    size_t room = sizeof(phase->hdr) - phase->have;
    if (room == 0)
        return -EPROTO; /* cannot happen: the parser said no long before */
    if (len > room)
        len = room;
    ssize_t n;
    do
        n = recv(fd, phase->hdr + phase->have, len, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return n == 0 ? 0 : errno == EWOULDBLOCK ? -EAGAIN : -errno;
    ioloop__proxy_header_t h;
    ssize_t r = ioloop__proxy_header_parse(phase->hdr, phase->have + (size_t)n, &h);
    size_t take = (size_t)n; /* incomplete or bad: every byte peeked is header (or garbage) */
    if (r > 0) {
        assert((size_t)r > phase->have); /* a shorter prefix was incomplete */
        take = (size_t)r - phase->have;
    }
    ssize_t got;
    do
        got = recv(fd, buf, take, 0); /* the bytes just peeked: the socket has them */
    while (got < 0 && errno == EINTR);
    if (got <= 0)
        return got == 0 ? 0 : errno == EWOULDBLOCK ? -EAGAIN : -errno;
    phase->have += (size_t)got;
    return got;
}

static ssize_t header_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    (void)ctx, (void)fd, (void)iov, (void)iovcnt;
    return -ENOTCONN; /* nothing is written before the header is in */
}

static int header_shutdown(void *ctx, int fd)
{
    (void)ctx;
    return shutdown(fd, SHUT_WR) < 0 ? -errno : 0;
}

static const ioloop_stream_transport_t header_transport = {
    .name = "proxy-header", .read = header_read, .writev = header_writev, .shutdown = header_shutdown,
    /* no destroy: the phase frees itself (phase_end), the stream only closes fd */
};

/* ---- the phase ------------------------------------------------------------- */

static void phase_free(proxy_phase_t *phase)
{
    atomic_fetch_sub_explicit(&phase->listener->in_header[phase->loop_index], 1, memory_order_relaxed);
    ioloop__listener_unref(phase->listener);
    free(phase);
}

/* The connection ended during the phase (EOF, reset, timeout, bad header,
 * the loop's close): nobody else knows it. */
static void on_phase_close(ioloop_stream_t *stream, int error, void *arg)
{
    (void)error;
    proxy_phase_t *phase = arg;
    if (phase->timer)
        ioloop_remove_timeout(ioloop_stream_loop(stream), phase->timer);
    phase_free(phase);
}

static void on_phase_timeout(ioloop_t *loop, void *arg)
{
    (void)loop;
    proxy_phase_t *phase = arg;
    phase->timer = 0;
    ioloop_stream_abort(phase->stream, -ETIMEDOUT);
}

static void on_header_bytes(ioloop_stream_t *stream, int status, void *arg)
{
    proxy_phase_t *phase = arg;
    if (status != 0) { /* EOF (half_close keeps the stream) or an error */
        ioloop_stream_close(stream);
        return;
    }
    size_t len;
    const char *data = ioloop_stream_peek(stream, &len);
    ioloop__proxy_header_t h;
    ssize_t r = ioloop__proxy_header_parse(data, len, &h);
    if (r == 0)
        return; /* more to come */
    if (r < 0) {
        ioloop__stream_end(stream, (int)r); /* -EPROTO / -EMSGSIZE; this frame schedules the callbacks */
        return;
    }
    assert((size_t)r == len); /* the transport took nothing past the header */

    ioloop_listener_t *l = phase->listener;
    ioloop_t *loop = ioloop_stream_loop(stream);
    ioloop_stream_consume(stream, len);
    ioloop_stream_read_stop(stream);
    ioloop_stream_set_close_callback(stream, NULL, NULL);
    if (phase->timer)
        ioloop_remove_timeout(loop, phase->timer);
    phase->timer = 0;

    /* The connection's own transport, made now (no TLS session for a peer
     * that never sent a header), then attached (TLS arms its handshake). */
    ioloop_stream_options_t so = l->stream_opts;
    int err = 0;
    if (l->make_transport && (err = l->make_transport(l->make_transport_arg, ioloop_stream_fd(stream), &so)) != 0) {
        ioloop_report_error(loop, "accepted stream transport", err);
        ioloop__stream_end(stream, err);
    } else {
        err = ioloop__stream_set_transport(stream, so.transport, so.transport_ctx);
    }
    if (!err) {
        const struct sockaddr *peer = h.local ? (const struct sockaddr *)&phase->peer : (const struct sockaddr *)&h.src;
        socklen_t peer_len = h.local ? phase->peer_len : h.src_len;
        l->on_stream(loop, stream, peer, peer_len, l->arg);
    }
    phase_free(phase);
}

void ioloop__listener_proxy_start(ioloop_listener_t *l, ioloop_t *loop, int fd, const struct sockaddr *peer,
                                  socklen_t peer_len)
{
    proxy_phase_t *phase = calloc(1, sizeof(*phase));
    if (!phase) {
        close(fd);
        ioloop_report_error(loop, "PROXY header phase", -ENOMEM);
        return;
    }
    if (peer_len > sizeof(phase->peer))
        peer_len = sizeof(phase->peer);
    if (peer && peer_len)
        memcpy(&phase->peer, peer, peer_len);
    phase->peer_len = peer_len;
    phase->listener = l;
    ioloop__listener_ref(l);
    /* Counted until the phase ends either way: a graceful shutdown waits
     * for these before it drains (ioloop_listener_pending). */
    for (phase->loop_index = 0; l->loops[phase->loop_index] != loop; phase->loop_index++)
        assert(phase->loop_index + 1 < l->nloops);
    atomic_fetch_add_explicit(&l->in_header[phase->loop_index], 1, memory_order_relaxed);

    ioloop_stream_options_t so = l->stream_opts;
    so.transport = &header_transport;
    so.transport_ctx = phase;
    if (so.max_buffer_size && so.max_buffer_size < IOLOOP__PROXY_MAX)
        so.max_buffer_size = IOLOOP__PROXY_MAX; /* the header must fit, whatever the limit after it */
    ioloop_stream_t *stream;
    int err = ioloop_stream_new(loop, fd, &so, &stream); /* closes fd on failure */
    if (err) {
        ioloop_report_error(loop, "accepted stream", err);
        phase_free(phase);
        return;
    }
    phase->stream = stream;
    /* Counted from now: a connection still sending its header is live too
     * (DISPATCH balances on it, and a drain sees it in the stats). */
    IOLOOP__STAT_ADD(loop, live_connections, 1);
    ioloop__stream_count_connection(stream);
    ioloop_stream_set_close_callback(stream, on_phase_close, phase);
    if (ioloop_call_later(loop, l->proxy_timeout, on_phase_timeout, phase, &phase->timer) != 0) {
        ioloop_stream_close(stream); /* no timer (no memory): a silent peer would stay forever */
        return;
    }
    if ((err = ioloop_stream_read_start(stream, on_header_bytes, phase)) != 0)
        ioloop_stream_close(stream);
}
