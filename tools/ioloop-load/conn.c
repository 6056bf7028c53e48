/* conn.c — one ioloop-load connection: connect, write a batch of requests,
 * frame the responses with llhttp (response mode), record each one's
 * latency, write the next batch when the last response is in; reconnect
 * whenever the connection ends (an error counted by kind, or the server's
 * Connection: close), as wrk does.
 *
 * The request bytes are built once (load_options_t.batch) and written as is;
 * the parser, the counters and the histogram are the worker's or the conn's,
 * so a request costs no allocation: one write per batch, reads as they come,
 * and one clock read per read callback that completes responses (they all
 * end at that instant, and the next batch is stamped with it too).
 *
 * Threading rule: everything here runs on the worker's loop thread.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "load.h"

#include <errno.h>
#include <time.h>

const char *const load_error_names[LOAD_ERR_KINDS] = {"connect", "read", "write", "timeout", "status", "parse"};

/* A failed connect is retried after this pause, so a refused port does not spin the loop. */
#define CONNECT_RETRY_DELAY IOLOOP_MSEC(10)

static void conn_connect(load_conn_t *conn);

ioloop_time_t load_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ioloop_time_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void count_error(load_conn_t *conn, int kind)
{
    if (!conn->worker->stopping)
        conn->worker->errors[kind]++;
}

/* ---- responses ------------------------------------------------------------------ */

static int on_message_complete(llhttp_t *parser)
{
    load_conn_t *conn = parser->data;
    load_worker_t *worker = conn->worker;
    int status = parser->status_code;
    if (status < 200)
        return 0; /* an interim 1xx response: the final one follows */
    if (conn->inflight <= 0)
        return -1; /* a response nobody asked for: llhttp stops with HPE_CB_MESSAGE_COMPLETE */
    conn->inflight--;
    conn->answered = true;
    if (!llhttp_should_keep_alive(parser))
        conn->close_after = true;
    if (worker->stopping)
        return 0;
    if (!conn->now)
        conn->now = load_clock();
    worker->requests++;
    if (status >= 400)
        worker->errors[LOAD_ERR_STATUS]++;
    hist_record(&worker->latency, (uint64_t)(conn->now - conn->sent_at));
    return 0;
}

/* Written once by load_settings_init, before any loop starts; read-only after. */
static llhttp_settings_t parser_settings;

void load_settings_init(void)
{
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_complete = on_message_complete;
}

/* ---- requests ------------------------------------------------------------------- */

static void send_batch(load_conn_t *conn)
{
    const load_options_t *opts = conn->worker->opts;
    conn->inflight = opts->pipeline;
    conn->sent_at = conn->now ? conn->now : load_clock();
    /* The stream writes straight to the socket when nothing is queued (a copy
     * only of what the kernel did not take). A failure ends the stream: the
     * close callback counts it. */
    int err = ioloop_stream_write(conn->stream, opts->batch, opts->batch_len, NULL, NULL);
    if (err < 0) {
        count_error(conn, LOAD_ERR_WRITE);
        ioloop_stream_close(conn->stream);
    }
}

static void on_data(ioloop_stream_t *stream, int status, void *arg)
{
    load_conn_t *conn = arg;
    if (status != 0) {
        /* The end: a close-delimited body ends at the peer's EOF. The close
         * callback follows and sorts out what the end means. */
        if (status == IOLOOP_EOF && llhttp_finish(&conn->parser) != HPE_OK)
            count_error(conn, LOAD_ERR_PARSE);
        return;
    }
    size_t len;
    const char *data = ioloop_stream_peek(stream, &len);
    if (!data)
        return;
    conn->worker->bytes += len;
    conn->now = 0;
    llhttp_errno_t err = llhttp_execute(&conn->parser, data, len);
    ioloop_stream_consume(stream, len);
    if (err != HPE_OK) {
        count_error(conn, LOAD_ERR_PARSE);
        ioloop_stream_close(stream);
    } else if (conn->close_after) {
        ioloop_stream_close(stream); /* the server ends it: a new connection, no error */
    } else if (conn->inflight == 0 && !conn->worker->stopping) {
        send_batch(conn);
    }
}

/* ---- connection life ------------------------------------------------------------ */

static void on_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    load_conn_t *conn = arg;
    conn->stream = NULL;
    conn->state = CONN_IDLE;
    if (conn->worker->stopping)
        return;
    if (error == IOLOOP_EOF) {
        /* The server closed: fine between responses it announced with
         * Connection: close, a read error with responses still missing. */
        if (conn->inflight > 0 && !conn->close_after)
            count_error(conn, LOAD_ERR_READ);
    } else if (error == -ETIMEDOUT) {
        count_error(conn, LOAD_ERR_TIMEOUT);
    } else if (error == -EPIPE) {
        count_error(conn, LOAD_ERR_WRITE);
    } else if (error == IOLOOP_ECERT || (error == IOLOOP_ETLS && !conn->answered)) {
        count_error(conn, LOAD_ERR_CONNECT); /* the TLS handshake is part of connecting (as in wrk) */
    } else if (error != 0) {
        count_error(conn, LOAD_ERR_READ); /* reset, TLS failure, ... */
    }
    conn_connect(conn);
}

static void retry_connect(ioloop_t *loop, void *arg)
{
    (void)loop;
    load_conn_t *conn = arg;
    if (!conn->worker->stopping && conn->state == CONN_IDLE)
        conn_connect(conn);
}

static void connect_failed(load_conn_t *conn)
{
    conn->state = CONN_IDLE;
    count_error(conn, LOAD_ERR_CONNECT);
    /* No timer (out of memory, the loop closing): the connection stays down. */
    if (!conn->worker->stopping)
        (void)ioloop_call_later(conn->worker->loop, CONNECT_RETRY_DELAY, retry_connect, conn, NULL);
}

static void on_connected(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    (void)loop;
    load_conn_t *conn = arg;
    conn->connecting = NULL;
    if (conn->worker->stopping) {
        conn->state = CONN_IDLE;
        if (stream)
            ioloop_stream_close(stream);
        return;
    }
    if (status != 0) {
        connect_failed(conn);
        return;
    }
    conn->stream = stream;
    conn->state = CONN_OPEN;
    conn->close_after = false;
    conn->answered = false;
    conn->inflight = 0;
    conn->now = 0;
    llhttp_init(&conn->parser, HTTP_RESPONSE, &parser_settings);
    conn->parser.data = conn;
    ioloop_stream_set_close_callback(stream, on_closed, conn);
    if (ioloop_stream_read_start(stream, on_data, conn) < 0) {
        count_error(conn, LOAD_ERR_READ);
        ioloop_stream_close(stream);
        return;
    }
    send_batch(conn);
}

static void conn_connect(load_conn_t *conn)
{
    const load_options_t *opts = conn->worker->opts;
    conn->state = CONN_CONNECTING;
    int err = ioloop_tcp_connect(conn->worker->loop, opts->host, opts->port, &opts->connect, on_connected, conn,
                                 &conn->connecting);
    if (err < 0) {
        conn->connecting = NULL;
        connect_failed(conn);
    }
}

void load_worker_start(ioloop_t *loop, void *arg)
{
    load_worker_t *worker = arg;
    worker->loop = loop;
    for (int i = 0; i < worker->nconns; i++) {
        worker->conns[i].worker = worker;
        conn_connect(&worker->conns[i]);
    }
}

void load_worker_finish(load_worker_t *worker)
{
    worker->stopping = true;
    for (int i = 0; i < worker->nconns; i++) {
        load_conn_t *conn = &worker->conns[i];
        if (conn->state == CONN_CONNECTING && conn->connecting)
            ioloop_tcp_connect_cancel(conn->connecting);
        else if (conn->state == CONN_OPEN && conn->stream)
            ioloop_stream_close(conn->stream);
    }
}
