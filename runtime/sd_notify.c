/* sd_notify.c — the service manager's readiness protocol (sd_notify(3)):
 * one datagram of "KEY=value" lines to the AF_UNIX socket NOTIFY_SOCKET
 * names, a path or "@name" for Linux's abstract namespace. Implemented here
 * rather than through libsystemd for the same reason as listen_fds.c.
 *
 * Threading rule: any thread; one socket per call (a notification is rare:
 * READY once, STOPPING once), so there is no state to share.
 */
#define _GNU_SOURCE
#include "ioloop/runtime.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int ioloop_sd_notify(const char *state)
{
    if (!state)
        return -EINVAL;
    const char *name = getenv("NOTIFY_SOCKET");
    if (!name || !*name)
        return 0; /* no manager listening: nothing to do */
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    if ((name[0] != '/' && name[0] != '@') || len >= sizeof(un.sun_path) || len < 2)
        return -EINVAL; /* systemd also hands out vsock addresses; we take only unix ones */
    memcpy(un.sun_path, name, len);
    if (name[0] == '@')
        un.sun_path[0] = '\0'; /* abstract: the name is the bytes after the NUL, unterminated */
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (name[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    ssize_t sent;
    do
        sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&un, addr_len);
    while (sent < 0 && errno == EINTR);
    int err = sent < 0 ? -errno : 0;
    close(fd);
    return err;
}
