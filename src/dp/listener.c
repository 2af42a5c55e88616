/* Listening sockets (one per worker per listener, SO_REUSEPORT), accept, and filter chain
 * selection. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/util.h>
#include <km/dp/engine_int.h>
#include <km/dp/tls.h>

#define LISTENER_BACKLOG      1024
#define LISTENER_ACCEPT_BATCH 64
#define LISTENER_PAUSE_MS     100 /* after EMFILE/ENFILE/ENOMEM: stop accepting for a moment */

static uint16_t
listener_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

const struct km_dp_chain *
km__dp_chain_select(const struct km_dp_listener *l, const struct sockaddr_storage *local)
{
    uint16_t port = listener_port(local);
    const struct km_dp_chain *any = NULL;
    for (size_t i = 0; i < l->nchains; i++) {
        const struct km_dp_chain *ch = &l->chains[i];
        /* Without the first bytes (listeners that need them go through
         * km_dp_tls_chain_select): chains that require a server name or ALPN never match. */
        if (ch->nserver_names > 0 || ch->nalpn > 0)
            continue;
        if (ch->transport_protocol && strcmp(ch->transport_protocol, "raw_buffer") != 0)
            continue;
        if (ch->dest_port != 0 && ch->dest_port == port)
            return ch;
        if (ch->dest_port == 0 && !any)
            any = ch;
    }
    return any;
}

static void
listener_resume(struct km_timer *t, void *arg)
{
    struct km_dp_wlistener *wl = arg;
    km_timer_free(t);
    wl->pause = NULL;
    if (wl->io)
        km_io_set(wl->io, KM_IO_READ);
}

static void
listener_on_accept(struct km_io *io, int lfd, unsigned events, void *arg)
{
    struct km_dp_wlistener *wl = arg;
    struct km_dp_worker *w = wl->w;
    for (int i = 0; i < LISTENER_ACCEPT_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct km_dp_pub *pub = w->pub;
        struct km_dp_stat_block *lst = pub->lst[wl->idx];
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            /* out of descriptors or memory: count, pause this socket, let the others work */
            km_dp_stat_inc(lst, w->id, KM_DP_LS_OVERFLOW);
            km_io_set(io, 0);
            if (!wl->pause)
                wl->pause = km_timer_new(w->loop, LISTENER_PAUSE_MS, listener_resume, wl);
            return;
        }
        const struct km_dp_listener *l = &pub->snap->listeners[wl->idx];
        struct sockaddr_storage local;
        socklen_t sl = sizeof(local);
        memset(&local, 0, sizeof(local));
        if (getsockname(fd, (struct sockaddr *)&local, &sl) == -1) {
            close(fd);
            continue;
        }
        if (km_dp_tls_listener_inspects(l)) {
            /* chains match on TLS or not, SNI, ALPN: peek at the first bytes (tls.c) */
            km__dp_tls_accept(w, pub, wl->idx, NULL, fd, listener_port(&local));
            continue;
        }
        const struct km_dp_chain *ch = km__dp_chain_select(l, &local);
        if (!ch) {
            km_dp_stat_inc(lst, w->id, KM_DP_LS_NO_CHAIN);
            close(fd);
            continue;
        }
        if (ch->tls) {
            /* TLS handshake, peer verification and RBAC first (tls.c) */
            km__dp_tls_accept(w, pub, wl->idx, ch, fd, listener_port(&local));
            continue;
        }
        if (ch->kind == KM_DP_FILTER_TCP_PROXY)
            km__dp_tcp_accept(w, pub, wl->idx, ch, fd);
        else
            km__dp_http_accept(w, pub, wl->idx, ch, fd);
    }
}

struct km_dp_wlistener *
km__dp_listener_open(struct km_dp_worker *w, const struct km_dp_listener *l, size_t idx)
{
    const char *what = "socket";
    int one = 1;
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        goto fail;
    what = "setsockopt";
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1)
        goto fail;
    /* Accepted sockets inherit TCP_NODELAY (Linux): no Nagle delay on a response written in
     * two pieces (head, then body), and no setsockopt per connection. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (l->addr.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == -1)
        goto fail;
    what = "bind";
    if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) == -1)
        goto fail;
    what = "listen";
    if (listen(fd, LISTENER_BACKLOG) == -1)
        goto fail;
    struct km_dp_wlistener *wl = km_xcalloc(1, sizeof(*wl));
    wl->w = w;
    wl->name = km_xstrdup(l->name ? l->name : "");
    wl->addr_str = km_xstrdup(l->addr_str ? l->addr_str : "");
    wl->idx = idx;
    wl->fd = fd;
    wl->io = km_io_new(w->loop, fd, KM_IO_READ, listener_on_accept, wl);
    if (!wl->io) {
        free(wl->name);
        free(wl->addr_str);
        free(wl);
        what = "epoll_ctl";
        goto fail;
    }
    km_dp_stat_inc(w->eng->server, w->id, KM_DP_SV_LISTENERS_ACTIVE);
    return wl;
fail:;
    int err = errno;
    if (fd != -1)
        close(fd);
    km_dp_stat_inc(w->eng->server, w->id, KM_DP_SV_LISTENER_CREATE_FAIL);
    km_log_error("dp", "worker %zu: listener %s (%s): %s: %s", w->id, l->name ? l->name : "",
                 l->addr_str ? l->addr_str : "", what, strerror(err));
    return NULL;
}

void
km__dp_listener_close(struct km_dp_wlistener *wl)
{
    km_io_free(wl->io);
    km_timer_free(wl->pause);
    close(wl->fd);
    km_dp_stat_add(wl->w->eng->server, wl->w->id, KM_DP_SV_LISTENERS_ACTIVE, -1);
    free(wl->name);
    free(wl->addr_str);
    free(wl);
}
