/* peer_libuv_stream.c — `ioloop-bench stream`'s echo server the way a libuv
 * program writes it: each socket a uv_tcp_t (uv_tcp_open), uv_read_start
 * into a per-connection buffer, and each read written back with
 * uv_try_write; only a rest the socket did not take is copied and queued
 * with uv_write (the buffer is reused by the next read). That is the
 * cheapest correct libuv echo: no allocation per message. Built only with
 * libuv (IOLOOP_BENCH_HAVE_LIBUV).
 *
 * Threading rule: the uv_loop_t runs on the calling thread.
 */
#define _GNU_SOURCE
#include "bench.h"

#ifdef IOLOOP_BENCH_HAVE_LIBUV
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

typedef struct {
    uv_tcp_t tcp; /* first: the handle's address is the connection's */
    int *open;
    char buffer[BENCH_STREAM_READ];
} uv_echo_t;

typedef struct {
    uv_write_t req;
    char data[]; /* the rest of one read */
} uv_echo_write_t;

static void uv_echo_freed(uv_handle_t *handle)
{
    uv_echo_t *conn = (uv_echo_t *)handle;
    (*conn->open)--; /* the loop ends when no handle is left */
    free(conn);
}

static void uv_echo_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    uv_echo_t *conn = (uv_echo_t *)handle;
    *buf = uv_buf_init(conn->buffer, sizeof(conn->buffer));
}

static void uv_echo_written(uv_write_t *req, int status)
{
    if (status < 0 && !uv_is_closing((uv_handle_t *)req->handle))
        uv_close((uv_handle_t *)req->handle, uv_echo_freed);
    free(req);
}

static void uv_echo_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    if (nread == 0)
        return; /* EAGAIN */
    if (nread < 0) {
        if (!uv_is_closing((uv_handle_t *)stream))
            uv_close((uv_handle_t *)stream, uv_echo_freed);
        return;
    }
    uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
    int done = uv_try_write(stream, &out, 1);
    if (done == UV_EAGAIN || done == UV_ENOSYS)
        done = 0; /* nothing taken, or writes already queued: queue it all */
    if (done < 0) {
        uv_close((uv_handle_t *)stream, uv_echo_freed);
        return;
    }
    if (done == nread)
        return;
    size_t rest = (size_t)nread - (size_t)done;
    uv_echo_write_t *w = malloc(sizeof(*w) + rest);
    if (!w) {
        uv_close((uv_handle_t *)stream, uv_echo_freed);
        return;
    }
    memcpy(w->data, buf->base + done, rest);
    out = uv_buf_init(w->data, (unsigned)rest);
    if (uv_write(&w->req, stream, &out, 1, uv_echo_written) < 0) {
        free(w);
        uv_close((uv_handle_t *)stream, uv_echo_freed);
    }
}

int bench_libuv_stream_echo(const int *fds, int n)
{
    uv_loop_t loop;
    int err = uv_loop_init(&loop), open = 0;
    for (int i = 0; i < n; i++) {
        uv_echo_t *conn = err ? NULL : malloc(sizeof(*conn));
        if (!conn || uv_tcp_init(&loop, &conn->tcp) < 0) {
            free(conn);
            close(fds[i]);
            err = err ? err : -ENOMEM;
            continue;
        }
        conn->open = &open;
        open++;
        if ((err = uv_tcp_open(&conn->tcp, fds[i])) < 0 ||
            (err = uv_read_start((uv_stream_t *)&conn->tcp, uv_echo_alloc, uv_echo_read)) < 0) {
            uv_close((uv_handle_t *)&conn->tcp, uv_echo_freed); /* closes fds[i] */
            continue;
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT); /* until every connection has closed */
    int rc = uv_loop_close(&loop);
    return err ? err : rc;
}
#endif
