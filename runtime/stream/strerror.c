/* strerror.c — ioloop_strerror: names 0, a negative errno, or an IOLOOP_E*
 * code from stream.h.
 *
 * Threading rule: any thread (glibc's strerrordesc_np returns static text;
 * elsewhere strerror, which is thread-safe for known codes on the BSDs).
 */
#define _GNU_SOURCE
#include "ioloop/stream.h"

#include <string.h>

const char *ioloop_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case IOLOOP_EOF:
        return "end of stream";
    case IOLOOP_ENONAME:
        return "name not found";
    case IOLOOP_EDNS:
        return "name resolution failed";
    case IOLOOP_ETLS:
        return "TLS failure";
    case IOLOOP_ECERT:
        return "certificate verification failed";
    default:
        break;
    }
    if (err > 0 || err <= -4096)
        return "unknown error";
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    const char *text = strerrordesc_np(-err);
    return text ? text : "unknown error";
#else
    return strerror(-err);
#endif
}
