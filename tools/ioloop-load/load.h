/* load.h — ioloop-load's shared types: the run's options (built once by
 * main, read-only afterwards), one worker per loop, one conn per connection.
 *
 * Threading rule: a worker and its conns belong to one runtime loop; only
 * that loop's thread touches them until the loops have stopped, when the main
 * thread reads the counters and merges the histograms. The options and the
 * request bytes are shared read-only by every loop.
 */
#ifndef IOLOOP_LOAD_H
#define IOLOOP_LOAD_H

#include "hist.h"

#include "ioloop/ioloop.h"
#include "ioloop/stream.h"

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct load_worker load_worker_t;

typedef struct {
    const char *host; /* as connected to (no brackets) */
    int port;
    bool tls;
    int connections;
    int pipeline; /* requests per batch: one write, then wait for all their responses (wrk's lua pipelining) */
    int threads;
    double duration;       /* seconds */
    ioloop_time_t timeout; /* no byte for this long with requests in flight: a timeout error */
    const char *batch;     /* `pipeline` requests, back to back */
    size_t batch_len;
    ioloop_tcp_connect_options_t connect; /* shared: the TLS transport maker, if any, is per connect */
} load_options_t;

/* Errors by kind (what wrk reports, plus parse: a response llhttp refused). */
enum {
    LOAD_ERR_CONNECT, /* refused, unreachable, timed out, or the TLS handshake failed */
    LOAD_ERR_READ,    /* reset, or the peer closed with responses missing */
    LOAD_ERR_WRITE,
    LOAD_ERR_TIMEOUT,
    LOAD_ERR_STATUS, /* a response whose status is not 2xx or 3xx */
    LOAD_ERR_PARSE,
    LOAD_ERR_KINDS,
};
extern const char *const load_error_names[LOAD_ERR_KINDS];

typedef enum {
    CONN_IDLE,       /* not connected, nothing pending (between attempts, or done) */
    CONN_CONNECTING, /* ioloop_tcp_connect in progress */
    CONN_OPEN,       /* a stream with a batch in flight */
} conn_state_t;

typedef struct {
    load_worker_t *worker;
    conn_state_t state;
    ioloop_stream_t *stream;
    ioloop_tcp_connect_t *connecting;
    llhttp_t parser;
    int inflight;          /* responses still expected for the current batch */
    bool close_after;      /* the last response said the connection ends (Connection: close) */
    bool answered;         /* a response came on this connection (a TLS failure before: a connect error) */
    ioloop_time_t sent_at; /* when the current batch was written (CLOCK_MONOTONIC ns) */
    ioloop_time_t now;     /* the clock as read once per read callback (0: not read yet) */
} load_conn_t;

struct load_worker {
    ioloop_t *loop;
    const load_options_t *opts;
    load_conn_t *conns;
    int nconns;
    bool stopping;     /* set on the loop by load_worker_finish: nothing is counted or restarted after it */
    uint64_t requests; /* responses completed (any status) */
    uint64_t bytes;    /* response bytes read */
    uint64_t errors[LOAD_ERR_KINDS];
    hist_t latency; /* ns, from the batch's write to the response's last byte */
};

/* On the worker's loop: opens every connection of the worker. */
void load_worker_start(ioloop_t *loop, void *worker);
/* On the worker's loop: stops counting, closes the connections (their close
 * callbacks run later and only account). */
void load_worker_finish(load_worker_t *worker);

/* Once, before any loop starts: the parser callbacks every connection shares. */
void load_settings_init(void);

/* CLOCK_MONOTONIC in ns. */
ioloop_time_t load_clock(void);

#endif
