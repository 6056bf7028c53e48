/* echo_server.c — a TCP echo server on the runtime: one loop per core, each
 * connection a stream that writes back whatever it reads.
 *
 *   echo_server [--port 7000] [--threads N]      (--port 0: the kernel picks)
 *
 * Threading rule: main owns the runtime; a connection lives on the loop that
 * accepted it, and all its callbacks run there. Flow control: a stream whose
 * output reached its limit (a client that sends but does not read) is not
 * read again until the output has drained, so memory stays bounded. A
 * client that half-closes (nc -N) gets all its echo, then EOF.
 * SIGINT/SIGTERM stop the loops; open streams close with the runtime.
 */
#include "ioloop/runtime.h"
#include "ioloop/stream.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { READ_CHUNK = 64 * 1024, OUTPUT_LIMIT = 256 * 1024 };

static void echo_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg);

/* Asks for whatever arrives next (1..READ_CHUNK bytes). */
static void echo_read_next(ioloop_stream_t *stream)
{
    /* -EBUSY (a read already pending) and -EPIPE (ended) need nothing. */
    (void)ioloop_stream_read_bytes(stream, READ_CHUNK, true, echo_read, NULL);
}

static void echo_sent_all(ioloop_stream_t *stream, int status, void *arg)
{
    (void)arg;
    if (status == 0)
        ioloop_stream_close(stream); /* nothing is queued: the kernel sends the rest, then FIN */
}

static void echo_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)arg;
    if (status == IOLOOP_EOF) { /* the client sends no more (half_close): close once the echo has left */
        if (ioloop_stream_write(stream, "", 0, echo_sent_all, NULL) < 0)
            ioloop_stream_close(stream);
        return;
    }
    if (status != 0)
        return; /* the stream has ended (reset, ...); it frees itself */
    if (ioloop_stream_write(stream, data, len, NULL, NULL) < 0) {
        ioloop_stream_close(stream);
        return;
    }
    /* Back-pressure: with the output at its limit, read again only once it
     * has drained (echo_drained). */
    if (ioloop_stream_writable(stream))
        echo_read_next(stream);
}

static void echo_drained(ioloop_stream_t *stream, int status, void *arg)
{
    (void)arg;
    if (status == 0)
        echo_read_next(stream);
}

/* On the loop that accepted the connection; the stream is ours. */
static void echo_accepted(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer, socklen_t peer_len,
                          void *arg)
{
    (void)loop, (void)peer, (void)peer_len, (void)arg;
    (void)ioloop_stream_set_nodelay(stream, true);
    ioloop_stream_set_drain_callback(stream, echo_drained, NULL);
    echo_read_next(stream);
}

int main(int argc, char **argv)
{
    int port = 7000;
    ioloop_runtime_options_t ro = {.pin = true, .handle_signals = true}; /* loops = 0: one per CPU */
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 < argc && !strcmp(argv[i], "--port") && atoi(argv[i + 1]) >= 0) {
            port = atoi(argv[i + 1]);
        } else if (i + 1 < argc && !strcmp(argv[i], "--threads") && atoi(argv[i + 1]) > 0) {
            ro.loops = atoi(argv[i + 1]);
        } else {
            fprintf(stderr, "usage: %s [--port 7000] [--threads N]\n", argv[0]);
            return 2;
        }
    }

    ioloop_runtime_t *rt;
    int err = ioloop_runtime_start(&ro, &rt);
    if (err) {
        fprintf(stderr, "echo_server: %s\n", ioloop_strerror(err));
        return 1;
    }
    ioloop_listener_t *listener;
    ioloop_listener_options_t lo = {
        .address = "0.0.0.0",
        .port = port,
        .on_stream = echo_accepted,
        .stream = {.max_write_buffer_size = OUTPUT_LIMIT, .half_close = true},
    };
    err = ioloop_listener_start(rt, &lo, &listener);
    if (err) {
        fprintf(stderr, "echo_server: port %d: %s\n", port, ioloop_strerror(err));
        ioloop_runtime_free(rt);
        return 1;
    }
    printf("echo_server: listening on port %d with %d loop(s)\n", ioloop_listener_port(listener),
           ioloop_runtime_size(rt));
    fflush(stdout);

    ioloop_runtime_join(rt); /* until SIGINT/SIGTERM */
    ioloop_listener_free(listener);
    ioloop_runtime_free(rt); /* closes the loops, and with them every open stream */
    return 0;
}
