/* kv_client.c — a client for kv_server, on ioloop_tcp_connect and a stream.
 *
 *   kv_client [--host 127.0.0.1] [--port 6380] COMMAND...
 *       COMMAND: SET key value | GET key | DEL key; several are pipelined
 *       (all sent at once) and each reply is printed in order, redis-cli
 *       style: OK, the value, (nil), (integer) N, (error) ...
 *   kv_client [--host H] [--port P] --bench N
 *       N pipelined operations (SET k<i> v<i>, then GET k<i>, alternating),
 *       at most WINDOW in flight; checks every reply, prints ops/s.
 *
 * Threading rule: one loop, on the main thread; everything runs there. Exit
 * status: 0 when every reply came (and, with --bench, was right), 1 else.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "ioloop/ioloop.h"
#include "ioloop/stream.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_REPLY_LINE = 1024, WINDOW = 256 };

typedef struct {
    ioloop_t *loop;
    ioloop_stream_t *stream;
    const char *host;
    int port;
    char **commands; /* command mode: the words after the options */
    int word_count;
    long total, sent, answered; /* operations */
    bool bench;
    long wrong;     /* --bench: replies that were not the expected ones */
    double started; /* --bench: seconds, when connected */
    int exit_status;
} client_t;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* How many words command i starts with (0: not a command). */
static int command_words(const char *word)
{
    if (!strcmp(word, "SET"))
        return 3;
    return !strcmp(word, "GET") || !strcmp(word, "DEL") ? 2 : 0;
}

/* ---- sending ---------------------------------------------------------------- */

/* Command mode: every command as one line, all queued at once (pipelined). */
static void send_commands(client_t *client)
{
    ioloop_stream_cork(client->stream); /* one writev for the lot */
    for (int i = 0; i < client->word_count;) {
        int words = command_words(client->commands[i]);
        for (int w = 0; w < words; w++) {
            const char *word = client->commands[i + w];
            (void)ioloop_stream_write(client->stream, word, strlen(word), NULL, NULL);
            (void)ioloop_stream_write(client->stream, w + 1 < words ? " " : "\r\n", w + 1 < words ? 1 : 2, NULL, NULL);
        }
        i += words;
        client->sent++;
    }
    ioloop_stream_uncork(client->stream);
}

/* --bench: tops the pipeline up to WINDOW operations in flight. */
static void send_bench(client_t *client)
{
    char line[64];
    ioloop_stream_cork(client->stream);
    while (client->sent < client->total && client->sent - client->answered < WINDOW &&
           ioloop_stream_writable(client->stream)) {
        long key = client->sent / 2;
        int len = client->sent % 2 == 0 ? snprintf(line, sizeof(line), "SET k%ld v%ld\r\n", key, key)
                                        : snprintf(line, sizeof(line), "GET k%ld\r\n", key);
        if (ioloop_stream_write(client->stream, line, (size_t)len, NULL, NULL) < 0)
            break;
        client->sent++;
    }
    ioloop_stream_uncork(client->stream);
}

/* ---- receiving -------------------------------------------------------------- */

static void read_reply(client_t *client);

/* One whole reply: its type ('+', '-', ':', '$'), and the text or value (NULL for a miss). */
static void reply_done(client_t *client, char type, const char *text, size_t len)
{
    long op = client->answered++;
    if (client->bench) {
        char expected[64];
        int want = op % 2 == 0 ? snprintf(expected, sizeof(expected), "OK")
                               : snprintf(expected, sizeof(expected), "v%ld", op / 2);
        if (!text || (type != '+' && type != '$') || len != (size_t)want || memcmp(text, expected, len))
            client->wrong++;
    } else if (type == '$') {
        if (text)
            printf("%.*s\n", (int)len, text);
        else
            printf("(nil)\n");
    } else {
        printf("%s%.*s\n", type == ':' ? "(integer) " : type == '-' ? "(error) " : "", (int)len, text);
    }
    if (client->answered == client->total) {
        ioloop_stream_close(client->stream); /* conn_closed stops the loop */
        return;
    }
    if (client->bench)
        send_bench(client);
    read_reply(client);
}

static void value_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)stream;
    if (status == 0)
        reply_done(arg, '$', data, len - 2); /* without its CRLF */
}

static void line_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    client_t *client = arg;
    if (status != 0)
        return; /* the close callback reports it */
    len -= 2;   /* the CRLF */
    if (data[0] == '$') {
        long value_len = strtol(data + 1, NULL, 10);
        if (value_len < 0)
            reply_done(client, '$', NULL, 0);
        else if (ioloop_stream_read_bytes(stream, (size_t)value_len + 2, false, value_read, client) < 0)
            ioloop_stream_close(stream);
    } else if (len > 0 && (data[0] == '+' || data[0] == '-' || data[0] == ':')) {
        reply_done(client, data[0], data + 1, len - 1);
    } else {
        fprintf(stderr, "kv_client: unexpected reply '%.*s'\n", (int)len, data);
        client->exit_status = 1;
        ioloop_stream_close(stream);
    }
}

static void read_reply(client_t *client)
{
    if (ioloop_stream_read_until(client->stream, "\r\n", 2, MAX_REPLY_LINE, line_read, client) < 0)
        ioloop_stream_close(client->stream);
}

/* ---- connection ------------------------------------------------------------- */

static void conn_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    client_t *client = arg;
    if (client->answered < client->total) {
        fprintf(stderr, "kv_client: connection ended after %ld of %ld replies: %s\n", client->answered, client->total,
                ioloop_strerror(error));
        client->exit_status = 1;
    }
    client->stream = NULL;
    ioloop_stop(client->loop);
}

static void connected(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    client_t *client = arg;
    if (status != 0) {
        fprintf(stderr, "kv_client: %s:%d: %s\n", client->host, client->port, ioloop_strerror(status));
        client->exit_status = 1;
        ioloop_stop(loop);
        return;
    }
    client->stream = stream;
    ioloop_stream_set_close_callback(stream, conn_closed, client);
    client->started = now_seconds();
    if (client->bench)
        send_bench(client);
    else
        send_commands(client);
    read_reply(client);
}

static void start(ioloop_t *loop, void *arg)
{
    client_t *client = arg;
    ioloop_tcp_connect_options_t opts = {
        .timeout = IOLOOP_SEC(5),
        .nodelay = true,
        .stream = {.idle_timeout = IOLOOP_SEC(10)}, /* a server that stops answering: -ETIMEDOUT */
    };
    int err = ioloop_tcp_connect(loop, client->host, client->port, &opts, connected, client, NULL);
    if (err) {
        fprintf(stderr, "kv_client: %s\n", ioloop_strerror(err));
        client->exit_status = 1;
        ioloop_stop(loop);
    }
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--host 127.0.0.1] [--port 6380] (SET key value | GET key | DEL key)...\n"
            "       %s [--host 127.0.0.1] [--port 6380] --bench N\n",
            argv0, argv0);
    return 2;
}

int main(int argc, char **argv)
{
    client_t client = {.host = "127.0.0.1", .port = 6380};
    int i = 1;
    for (; i + 1 < argc && !strncmp(argv[i], "--", 2); i += 2) {
        if (!strcmp(argv[i], "--host"))
            client.host = argv[i + 1];
        else if (!strcmp(argv[i], "--port") && atoi(argv[i + 1]) > 0)
            client.port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--bench") && atol(argv[i + 1]) > 0)
            client.bench = true, client.total = atol(argv[i + 1]);
        else
            return usage(argv[0]);
    }
    client.commands = argv + i;
    client.word_count = argc - i;
    if (client.bench != (client.word_count == 0))
        return usage(argv[0]);
    for (int w = 0; w < client.word_count; client.total++) {
        int words = command_words(client.commands[w]);
        if (!words || w + words > client.word_count)
            return usage(argv[0]);
        w += words;
    }

    int lerr = ioloop_new(NULL, &client.loop);
    if (lerr) {
        fprintf(stderr, "kv_client: %s\n", ioloop_strerror(lerr));
        return 1;
    }
    ioloop_add_callback(client.loop, start, &client); /* connect from the loop's own thread */
    ioloop_start(client.loop);                        /* until the stream closes */
    ioloop_close(client.loop, false);
    if (client.bench && client.exit_status == 0) {
        double seconds = now_seconds() - client.started;
        printf("kv_client: %ld ops in %.3f s: %.0f ops/s (%d in flight), %ld wrong\n", client.total, seconds,
               (double)client.total / seconds, WINDOW, client.wrong);
        if (client.wrong)
            client.exit_status = 1;
    }
    return client.exit_status;
}
