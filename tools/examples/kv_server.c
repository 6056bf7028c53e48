/* kv_server.c — a sharded in-memory key-value server on the runtime.
 *
 *   kv_server [--port 6380] [--threads N]        (--port 0: the kernel picks)
 *
 * Protocol (inline, one command per line, Redis-style replies):
 *   SET key value\r\n  -> +OK\r\n          (value: the rest of the line)
 *   GET key\r\n        -> $<len>\r\n<value>\r\n, or $-1\r\n when missing
 *   DEL key\r\n        -> :1\r\n if it existed, else :0\r\n
 *   anything else      -> -ERR <why>\r\n
 *
 * Threading rule: one shard (a hash table) per loop, touched only by its
 * loop's thread, so no locks. A key belongs to shard hash(key) % loops. A
 * connection lives on the loop that accepted it; a request for another loop's
 * shard is posted there (ioloop_add_callback) and its reply posted back. The
 * connection keeps its requests in a queue and writes replies from the head
 * only, so pipelined replies leave in request order whatever finishes first.
 * Memory per connection is bounded: it stops reading while MAX_PENDING
 * requests await their replies or the output is at its limit (a client that
 * does not read), and resumes when replies are written / the output drains.
 * A client that half-closes (`printf 'GET a\r\n' | nc -N host 6380`) still
 * gets every reply: the stream is opened with half_close, and the connection
 * closes once the last reply has left.
 */
#define _GNU_SOURCE /* strdup, strncasecmp */
#include "ioloop/runtime.h"
#include "ioloop/stream.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    MAX_LINE = 64 * 1024,      /* a longer line closes the connection (-EMSGSIZE) */
    MAX_PENDING = 64,          /* requests read but not yet written, per connection */
    OUTPUT_LIMIT = 256 * 1024, /* the stream's max_write_buffer_size */
    INITIAL_BUCKETS = 1024,    /* per shard; doubles when the table is twice as full */
};

/* ---- a shard: one loop's hash table ---------------------------------------- */

typedef struct entry {
    struct entry *next;
    uint32_t hash;
    size_t key_len, value_len;
    char data[]; /* key, then value */
} entry_t;

typedef struct {
    entry_t **buckets;
    size_t bucket_count, entry_count;
} shard_t;

/* FNV-1a: picks the shard (hash % shards) and, with the other bits, the bucket. */
static uint32_t key_hash(const char *key, size_t len)
{
    uint32_t hash = 2166136261u;
    for (size_t i = 0; i < len; i++)
        hash = (hash ^ (unsigned char)key[i]) * 16777619u;
    return hash;
}

static entry_t **shard_find(shard_t *shard, uint32_t hash, const char *key, size_t key_len)
{
    entry_t **at = &shard->buckets[(hash >> 8) & (shard->bucket_count - 1)];
    while (*at && !((*at)->hash == hash && (*at)->key_len == key_len && !memcmp((*at)->data, key, key_len)))
        at = &(*at)->next;
    return at;
}

static void shard_grow(shard_t *shard)
{
    size_t count = shard->bucket_count * 2;
    entry_t **buckets = calloc(count, sizeof(*buckets));
    if (!buckets)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < shard->bucket_count; i++)
        for (entry_t *entry = shard->buckets[i], *next; entry; entry = next) {
            next = entry->next;
            entry_t **head = &buckets[(entry->hash >> 8) & (count - 1)];
            entry->next = *head;
            *head = entry;
        }
    free(shard->buckets);
    shard->buckets = buckets;
    shard->bucket_count = count;
}

static void shard_free(shard_t *shard)
{
    for (size_t i = 0; i < shard->bucket_count; i++)
        for (entry_t *entry = shard->buckets[i], *next; entry; entry = next) {
            next = entry->next;
            free(entry);
        }
    free(shard->buckets);
}

/* ---- requests and connections ---------------------------------------------- */

typedef enum { CMD_SET, CMD_GET, CMD_DEL } command_t;

typedef struct server {
    ioloop_runtime_t *runtime;
    int shard_count;
    shard_t *shards; /* shards[i] belongs to loop i */
} server_t;

typedef struct conn conn_t;

typedef struct request {
    struct request *next; /* the connection's queue, in arrival order */
    conn_t *conn;
    command_t command;
    int shard;
    bool answered;
    char *reply; /* malloc'd; handed to the stream, which frees it once sent */
    size_t reply_len;
    size_t key_len, value_len;
    char data[]; /* key, then value: a copy, since the line is only valid during the read callback */
} request_t;

struct conn {
    server_t *server;
    ioloop_stream_t *stream; /* NULL once the stream has closed */
    int loop_index;          /* the loop (and shard) this connection lives on */
    request_t *head, *tail;  /* requests not yet written, oldest first */
    int pending;             /* requests in the queue */
    int remote;              /* requests out on another loop: they point at us */
    bool reading;            /* a read_until is outstanding */
    bool peer_done;          /* the client will send nothing more (EOF) */
    bool finishing;          /* the close waits for the last reply to leave */
};

/* Builds the reply into request->reply (on the shard's loop); NULL on ENOMEM. */
static void shard_apply(shard_t *shard, request_t *request)
{
    const char *key = request->data;
    uint32_t hash = key_hash(key, request->key_len);
    entry_t **at = shard_find(shard, hash, key, request->key_len);
    char *reply = NULL;
    int len = 0;
    if (request->command == CMD_SET) {
        entry_t *entry = malloc(sizeof(*entry) + request->key_len + request->value_len), *old = *at;
        if (entry) {
            *entry = (entry_t){.next = old ? old->next : NULL,
                               .hash = hash,
                               .key_len = request->key_len,
                               .value_len = request->value_len};
            memcpy(entry->data, key, request->key_len + request->value_len);
            *at = entry; /* replaces the old entry, if any */
            free(old);
            if (!old && ++shard->entry_count > 2 * shard->bucket_count)
                shard_grow(shard);
            reply = strdup("+OK\r\n");
            len = 5;
        }
    } else if (request->command == CMD_GET && *at) {
        /* "$<len>\r\n" + value + "\r\n" */
        size_t size = 32 + (*at)->value_len;
        if ((reply = malloc(size)) != NULL) {
            len = snprintf(reply, size, "$%zu\r\n", (*at)->value_len);
            memcpy(reply + len, (*at)->data + (*at)->key_len, (*at)->value_len);
            len += (int)(*at)->value_len;
            memcpy(reply + len, "\r\n", 2);
            len += 2;
        }
    } else if (request->command == CMD_GET) {
        reply = strdup("$-1\r\n");
        len = 5;
    } else { /* CMD_DEL */
        entry_t *gone = *at;
        if (gone) {
            *at = gone->next;
            shard->entry_count--;
            free(gone);
        }
        reply = strdup(gone ? ":1\r\n" : ":0\r\n");
        len = 4;
    }
    request->reply = reply;
    request->reply_len = reply ? (size_t)len : 0;
}

static void conn_read_next(conn_t *conn);
static void conn_finish(conn_t *conn);

static void conn_free_if_done(conn_t *conn)
{
    if (conn->stream || conn->remote > 0)
        return; /* still open, or a shard still holds one of our requests */
    for (request_t *request = conn->head, *next; request; request = next) {
        next = request->next;
        free(request->reply);
        free(request);
    }
    free(conn);
}

static void release_reply(void *data, void *arg)
{
    (void)arg;
    free(data);
}

/* Writes the answered requests at the head of the queue, in order, while the
 * output has room; then reads on if it may. */
static void conn_flush(conn_t *conn)
{
    while (conn->stream && conn->head && conn->head->answered && ioloop_stream_writable(conn->stream)) {
        request_t *request = conn->head;
        if (!(conn->head = request->next))
            conn->tail = NULL;
        conn->pending--;
        int err = request->reply ? ioloop_stream_write_borrowed(conn->stream, request->reply, request->reply_len,
                                                                release_reply, NULL)
                                 : ioloop_stream_write(conn->stream, "-ERR out of memory\r\n", 20, NULL, NULL);
        free(request); /* the reply now belongs to the stream (released even on failure) */
        if (err < 0) {
            ioloop_stream_close(conn->stream); /* a reply lost would desync the client: end it */
            return;
        }
    }
    if (conn->peer_done)
        conn_finish(conn);
    else
        conn_read_next(conn);
}

static void conn_sent_all(ioloop_stream_t *stream, int status, void *arg)
{
    (void)arg;
    if (status == 0)
        ioloop_stream_close(stream); /* nothing is queued: the kernel sends the rest, then FIN */
}

/* After the client's EOF: once every reply is queued, close when they have left. */
static void conn_finish(conn_t *conn)
{
    if (conn->finishing || conn->head || !conn->stream || !ioloop_stream_writable(conn->stream))
        return; /* replies to come, or the output drains first (conn_drained flushes again) */
    conn->finishing = true;
    /* An empty write: its done runs once everything queued before it has left. */
    if (ioloop_stream_write(conn->stream, "", 0, conn_sent_all, conn) < 0)
        ioloop_stream_close(conn->stream);
}

/* A reply came back from another loop's shard (on the connection's loop). */
static void request_answered(ioloop_t *loop, void *arg)
{
    (void)loop;
    request_t *request = arg;
    conn_t *conn = request->conn;
    request->answered = true;
    conn->remote--;
    if (conn->stream)
        conn_flush(conn);
    else
        conn_free_if_done(conn);
}

/* Runs on the shard's own loop: apply, then post the reply home. */
static void shard_run(ioloop_t *loop, void *arg)
{
    (void)loop;
    request_t *request = arg;
    server_t *server = request->conn->server;
    shard_apply(&server->shards[request->shard], request);
    ioloop_t *home = ioloop_runtime_loop(server->runtime, request->conn->loop_index);
    /* Refused only once the home loop has closed (runtime teardown, all loop
     * threads joined): then finish here, on the thread closing the loops. */
    if (ioloop_add_callback(home, request_answered, request) < 0)
        request_answered(home, request);
}

/* Splits "CMD key[ value]" (CRLF already cut) and queues the request. */
static void conn_handle_line(conn_t *conn, const char *line, size_t len)
{
    const char *space = memchr(line, ' ', len);
    size_t word = space ? (size_t)(space - line) : len;
    const char *key = space ? space + 1 : line + len;
    size_t rest = (size_t)(line + len - key);
    const char *key_end = memchr(key, ' ', rest);
    size_t key_len = key_end ? (size_t)(key_end - key) : rest;
    const char *value = key_end ? key_end + 1 : key + key_len;
    size_t value_len = (size_t)(line + len - value);
    const char *error = NULL;
    command_t command = CMD_GET;
    if (!space)
        error = "-ERR unknown command or wrong number of arguments\r\n";
    else if (word == 3 && !strncasecmp(line, "SET", 3) && key_end)
        command = CMD_SET;
    else if (word == 3 && !strncasecmp(line, "GET", 3) && !key_end)
        command = CMD_GET;
    else if (word == 3 && !strncasecmp(line, "DEL", 3) && !key_end)
        command = CMD_DEL;
    else
        error = "-ERR unknown command or wrong number of arguments\r\n";
    if (!error && key_len == 0)
        error = "-ERR empty key\r\n";
    if (error)
        key_len = value_len = 0;
    if (command != CMD_SET)
        value_len = 0;

    request_t *request = calloc(1, sizeof(*request) + key_len + value_len);
    if (!request) {
        ioloop_stream_close(conn->stream);
        return;
    }
    request->conn = conn;
    request->command = command;
    request->key_len = key_len;
    request->value_len = value_len;
    memcpy(request->data, key, key_len);
    memcpy(request->data + key_len, value, value_len);
    if (conn->tail)
        conn->tail->next = request;
    else
        conn->head = request;
    conn->tail = request;
    conn->pending++;

    if (error) {
        request->reply = strdup(error);
        request->reply_len = strlen(error);
        request->answered = true;
        return;
    }
    request->shard = (int)(key_hash(key, key_len) % (uint32_t)conn->server->shard_count);
    if (request->shard == conn->loop_index) { /* our own shard: no hop */
        shard_apply(&conn->server->shards[request->shard], request);
        request->answered = true;
        return;
    }
    conn->remote++;
    if (ioloop_add_callback(ioloop_runtime_loop(conn->server->runtime, request->shard), shard_run, request) < 0) {
        conn->remote--; /* the runtime is stopping */
        request->reply = strdup("-ERR shutting down\r\n");
        request->reply_len = 20;
        request->answered = true;
    }
}

static void conn_read_line(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)stream;
    conn_t *conn = arg;
    conn->reading = false;
    if (status == IOLOOP_EOF) { /* half_close: answer what came (a partial last line is dropped) */
        conn->peer_done = true;
        conn_flush(conn);
        return;
    }
    if (status != 0) /* ended (reset, line too long, ...): the close callback follows */
        return;
    conn_handle_line(conn, data, len - 2); /* without the CRLF */
    conn_flush(conn);
}

/* Reads the next line unless the connection must wait: too many requests in
 * flight, or the client is not reading its replies (output at its limit). */
static void conn_read_next(conn_t *conn)
{
    if (!conn->stream || conn->reading || conn->pending >= MAX_PENDING || !ioloop_stream_writable(conn->stream))
        return;
    if (ioloop_stream_read_until(conn->stream, "\r\n", 2, MAX_LINE, conn_read_line, conn) == 0)
        conn->reading = true;
}

static void conn_drained(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    if (status == 0)
        conn_flush(arg);
}

static void conn_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream, (void)error;
    conn_t *conn = arg;
    conn->stream = NULL; /* freed by the stream once we return */
    conn_free_if_done(conn);
}

static void conn_accepted(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer, socklen_t peer_len,
                          void *arg)
{
    (void)peer, (void)peer_len;
    server_t *server = arg;
    conn_t *conn = calloc(1, sizeof(*conn));
    if (!conn) {
        ioloop_stream_close(stream);
        return;
    }
    conn->server = server;
    conn->stream = stream;
    while (ioloop_runtime_loop(server->runtime, conn->loop_index) != loop)
        conn->loop_index++;
    (void)ioloop_stream_set_nodelay(stream, true);
    ioloop_stream_set_close_callback(stream, conn_closed, conn);
    ioloop_stream_set_drain_callback(stream, conn_drained, conn);
    conn_read_next(conn);
}

int main(int argc, char **argv)
{
    int port = 6380;
    ioloop_runtime_options_t ro = {.pin = true, .handle_signals = true}; /* loops = 0: one per CPU */
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 < argc && !strcmp(argv[i], "--port") && atoi(argv[i + 1]) >= 0) {
            port = atoi(argv[i + 1]);
        } else if (i + 1 < argc && !strcmp(argv[i], "--threads") && atoi(argv[i + 1]) > 0) {
            ro.loops = atoi(argv[i + 1]);
        } else {
            fprintf(stderr, "usage: %s [--port 6380] [--threads N]\n", argv[0]);
            return 2;
        }
    }

    server_t server = {0};
    int err = ioloop_runtime_start(&ro, &server.runtime);
    if (err) {
        fprintf(stderr, "kv_server: %s\n", ioloop_strerror(err));
        return 1;
    }
    server.shard_count = ioloop_runtime_size(server.runtime);
    server.shards = calloc((size_t)server.shard_count, sizeof(*server.shards));
    for (int i = 0; server.shards && i < server.shard_count; i++) {
        server.shards[i].bucket_count = INITIAL_BUCKETS;
        if (!(server.shards[i].buckets = calloc(INITIAL_BUCKETS, sizeof(entry_t *))))
            err = -ENOMEM;
    }
    if (!server.shards)
        err = -ENOMEM;
    ioloop_listener_t *listener = NULL;
    ioloop_listener_options_t lo = {
        .address = "0.0.0.0",
        .port = port,
        .on_stream = conn_accepted,
        .stream = {.max_write_buffer_size = OUTPUT_LIMIT, .half_close = true},
        .arg = &server,
    };
    if (!err)
        err = ioloop_listener_start(server.runtime, &lo, &listener);
    if (!err) {
        printf("kv_server: listening on port %d with %d shard(s)\n", ioloop_listener_port(listener),
               server.shard_count);
        fflush(stdout);
        ioloop_runtime_join(server.runtime); /* until SIGINT/SIGTERM */
        ioloop_listener_free(listener);
    } else {
        fprintf(stderr, "kv_server: port %d: %s\n", port, ioloop_strerror(err));
    }
    ioloop_runtime_free(server.runtime); /* closes every stream; replies in flight finish */
    for (int i = 0; server.shards && i < server.shard_count; i++)
        shard_free(&server.shards[i]);
    free(server.shards);
    return err ? 1 : 0;
}
