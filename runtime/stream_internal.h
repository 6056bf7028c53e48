/* stream_internal.h — what the runtime's other files (the listener) need from
 * the stream: marking a stream as a counted connection.
 *
 * Threading rule: the stream's loop thread (as every stream call).
 */
#ifndef IOLOOP_RUNTIME_STREAM_INTERNAL_H
#define IOLOOP_RUNTIME_STREAM_INTERNAL_H

#include "ioloop/stream.h"

/* The stream is one of the loop's live_connections (the caller raised the
 * count): its end lowers it, as ioloop_connection_closed does. */
void ioloop__stream_count_connection(ioloop_stream_t *stream);

#endif
