/* Helpers shared by the data plane engine tests (see dp_util.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <km/dp/stats.h>

#include "dp_util.h"
#include "test.h"

uint64_t
dpt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void
dpt_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void
dpt_sin_loopback(struct sockaddr_in *sin, uint16_t port)
{
    memset(sin, 0, sizeof(*sin));
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

uint16_t
dpt_reserve_port(int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ASSERT(fd >= 0);
    ASSERT(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0);
    ASSERT(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == 0);
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    socklen_t sl = sizeof(sin);
    ASSERT(getsockname(fd, (struct sockaddr *)&sin, &sl) == 0);
    *fd_out = fd;
    return ntohs(sin.sin_port);
}

int
dpt_tconnect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, port);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

void
dpt_send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
        ASSERT(k > 0);
        b += k;
        n -= (size_t)k;
    }
}

void
dpt_publish_and_wait(struct km_dp_engine *e, struct km_dp_snapshot *s)
{
    km_dp_engine_publish(e, s);
    uint64_t end = dpt_now_ms() + 5000;
    while (km_dp_engine_applied_generation(e) < s->generation && dpt_now_ms() < end)
        dpt_sleep_ms(1);
    ASSERT(km_dp_engine_applied_generation(e) >= s->generation);
    km_dp_snapshot_unref(s); /* the engine holds its own reference */
}

int64_t
dpt_stat_of(struct km_dp_engine *e, const char *name)
{
    int64_t v = -1;
    if (!km_dp_stats_lookup(km_dp_engine_stats(e), name, &v))
        return -1;
    return v;
}
