/* fuzz_proxy_protocol.c — libFuzzer target: the PROXY protocol header parser
 * (runtime/proxy_protocol.c, v1 text and v2 binary), a pure function.
 *
 * Threading rule: the fuzzer's thread; the parser has no state.
 *
 * Input: the bytes at the start of a connection. Checks beyond the
 * sanitizers: a result is 0, -EPROTO, -EMSGSIZE or a length within the input
 * and the limits; *out is written only on success, and then holds version 1
 * or 2 and addresses whose lengths and families agree (none when local);
 * every proper prefix of an accepted header asks for more bytes (0), so a
 * header split across reads at any byte parses the same (the listener feeds
 * it that way); and bytes after a header never change how long it is.
 */
#include "proxy_protocol.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_proxy_protocol: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);              \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static void check_addr(const struct sockaddr_storage *sa, socklen_t len)
{
    switch (sa->ss_family) {
    case AF_INET:
        FUZZ_CHECK(len == sizeof(struct sockaddr_in));
        break;
    case AF_INET6:
        FUZZ_CHECK(len == sizeof(struct sockaddr_in6));
        break;
    case AF_UNIX:
        FUZZ_CHECK(len >= offsetof(struct sockaddr_un, sun_path) && len <= sizeof(struct sockaddr_un));
        break;
    default:
        FUZZ_CHECK(!"an address family the parser does not make");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ioloop__proxy_header_t out, untouched;
    memset(&out, 0xa5, sizeof(out));
    memcpy(&untouched, &out, sizeof(out));
    ssize_t n = ioloop__proxy_header_parse(data, size, &out);
    if (n <= 0) {
        FUZZ_CHECK(n == 0 || n == -EPROTO || n == -EMSGSIZE);
        FUZZ_CHECK(memcmp(&out, &untouched, sizeof(out)) == 0);
        if (n == 0)
            FUZZ_CHECK(size < IOLOOP__PROXY_MAX); /* "need more" never past the longest header */
        return 0;
    }
    FUZZ_CHECK((size_t)n <= size && (size_t)n <= IOLOOP__PROXY_MAX);
    FUZZ_CHECK(out.version == 1 || out.version == 2);
    if (out.version == 1)
        FUZZ_CHECK((size_t)n <= IOLOOP__PROXY_V1_MAX);
    if (out.local) {
        FUZZ_CHECK(out.src_len == 0 && out.dst_len == 0);
    } else {
        check_addr(&out.src, out.src_len);
        check_addr(&out.dst, out.dst_len);
        FUZZ_CHECK(out.src.ss_family == out.dst.ss_family);
    }
    /* Split across reads: every prefix is a valid beginning. */
    for (size_t k = 0; k < (size_t)n; k++) {
        ioloop__proxy_header_t part;
        FUZZ_CHECK(ioloop__proxy_header_parse(data, k, &part) == 0);
    }
    /* The payload that follows is not the header's. */
    uint8_t *more = malloc((size_t)n + 16);
    if (more) {
        memcpy(more, data, (size_t)n);
        memset(more + n, 'G', 16);
        ioloop__proxy_header_t again;
        FUZZ_CHECK(ioloop__proxy_header_parse(more, (size_t)n + 16, &again) == n);
        FUZZ_CHECK(again.version == out.version && again.local == out.local && again.src_len == out.src_len &&
                   memcmp(&again.src, &out.src, out.src_len) == 0);
        free(more);
    }
    return 0;
}
