/* The TCP proxy network filter: one downstream connection relayed to one upstream endpoint.
 *
 * States: CONNECTING (non-blocking connect under the cluster's connect timeout, retried once
 * on another healthy endpoint) then RELAY. Each direction moves bytes through the worker's
 * scratch buffer straight to the other socket; only what the other side does not take at once
 * is kept (at most KM_DP_IO_CHUNK bytes), and while such bytes are pending the source is not
 * read (backpressure). A read EOF becomes shutdown(SHUT_WR) on the other side once its pending
 * bytes are written; the pair closes when both directions are done, on an error, or after
 * idle_timeout_ms without traffic. A side with nothing to wait for is not watched (its epoll
 * HUP would otherwise fire forever while the other side drains).
 *
 * A TLS side (inbound after tls.c's handshake, or a cluster with a TLS context) reads and
 * writes through its SSL on the socket itself; its interest is what the SSL waits for, and the
 * upstream handshake runs in CONNECTING. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/util.h>
#include <km/dp/engine_int.h>
#include <km/dp/tls.h>

#define TCP_MAX_ATTEMPTS     2  /* connect attempts per downstream connection */
#define TCP_READS_PER_EVENT  4  /* fairness: at most 4 chunks per direction per event */
#define TCP_SPURIOUS_MAX     64 /* unwanted wakeups in a row before giving up on a pair */

struct tcp_side {
    int fd;
    struct km_io *io;   /* owned, NULL while there is nothing to wait for */
    bool eof;           /* read EOF from this side */
    bool shut;          /* we sent EOF (SHUT_WR) to this side */
    void *ssl;          /* owned SSL *: direct TLS on fd (tls.c), NULL for plaintext */
    unsigned rwant;     /* TLS: what the last blocked read waits for (KM_IO_*), 0 = none */
    unsigned wwant;     /* TLS: the same for the last blocked write */
};

struct tcp_pending {
    uint8_t *buf;       /* owned, NULL when empty */
    size_t off, len;
};

struct tcp_conn {
    struct km_dp_conn base;   /* first: the worker's list holds &base */
    struct tcp_side d, u;
    struct tcp_pending d2u, u2d;
    long ci;                  /* cluster index in base.pub */
    long ei;                  /* endpoint index, -1 before the first attempt */
    struct km_dp_stat_block *cst; /* borrowed (from pub) */
    struct km_dp_stat_block *est; /* borrowed (from pub), the current endpoint */
    int attempts;
    bool connecting, connected;
    bool handshaking;         /* connecting: TCP is up, the upstream TLS handshake goes on */
    unsigned hs_want;         /* what the handshake waits for (KM_IO_*) */
    struct km_timer *timer;   /* owned: connect timeout, then idle timeout */
    uint64_t last_ms;         /* last traffic, for the idle timeout */
    unsigned spurious;
};

static void tcp_attempt(struct tcp_conn *c, long exclude);
static void tcp_on_down(struct km_io *io, int fd, unsigned events, void *arg);
static void tcp_on_up(struct km_io *io, int fd, unsigned events, void *arg);

static void
tcp_close(struct km_dp_conn *base)
{
    struct tcp_conn *c = (struct tcp_conn *)base;
    size_t w = base->w->id;
    km_io_free(c->d.io);
    km_io_free(c->u.io);
    km_timer_free(c->timer);
    if (c->d.ssl && !c->d.shut)
        km__dp_tls_notify(c->d.ssl);
    km__dp_tls_free(c->d.ssl);
    if (c->d.fd != -1)
        close(c->d.fd);
    if (c->u.fd != -1) {
        if (c->u.ssl && c->connected && !c->u.shut)
            km__dp_tls_notify(c->u.ssl);
        km__dp_tls_free(c->u.ssl);
        close(c->u.fd);
        km_dp_stat_add(c->cst, w, KM_DP_CS_CX_ACTIVE, -1);
        km_dp_stat_add(c->est, w, KM_DP_ES_CX_ACTIVE, -1);
        km__dp_endpoint_done(base->pub, w, (size_t)c->ci, c->ei);
    }
    free(c->d2u.buf);
    free(c->u2d.buf);
    km__dp_conn_unlink(base);
    km__dp_pub_unref(base->pub);
    free(c);
}

static void
tcp_update(struct tcp_conn *c);

/* recv/send on a side: plaintext, or through its SSL (errno EAGAIN with the SSL's want). */
static ssize_t
side_recv(struct tcp_side *s, void *buf, size_t n)
{
    if (!s->ssl)
        return recv(s->fd, buf, n, 0);
    ssize_t r = km__dp_tls_recv(s->ssl, buf, n, &s->rwant);
    if (r >= 0)
        s->rwant = 0;
    return r;
}

static ssize_t
side_send(struct tcp_side *s, const void *buf, size_t n)
{
    if (!s->ssl)
        return send(s->fd, buf, n, MSG_NOSIGNAL);
    ssize_t r = km__dp_tls_send(s->ssl, buf, n, &s->wwant);
    if (r >= 0)
        s->wwant = 0;
    return r;
}

/* Moves bytes from <src> to <dst> through <p>. Returns false when the pair must close. */
static bool
tcp_pump(struct tcp_conn *c, struct tcp_side *src, struct tcp_side *dst, struct tcp_pending *p,
         bool src_is_down)
{
    struct km_dp_worker *w = c->base.w;
    size_t wid = w->id;
    /* 1. flush what is pending */
    while (p->len > 0) {
        ssize_t n = side_send(dst, p->buf + p->off, p->len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            return false;
        }
        p->off += (size_t)n;
        p->len -= (size_t)n;
        km_dp_stat_add(src_is_down ? c->cst : c->base.lst, wid,
                       src_is_down ? KM_DP_CS_TX_BYTES : KM_DP_LS_TX_BYTES, n);
        c->last_ms = km_loop_now_ms(w->loop);
    }
    if (p->buf) {
        free(p->buf);
        p->buf = NULL;
        p->off = 0;
    }
    /* 2. read and forward while the destination keeps up */
    for (int i = 0; i < TCP_READS_PER_EVENT && !src->eof; i++) {
        ssize_t n = side_recv(src, w->scratch, KM_DP_IO_CHUNK);
        if (n == 0) {
            src->eof = true;
            break;
        }
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return false;
        }
        km_dp_stat_add(src_is_down ? c->base.lst : c->cst, wid,
                       src_is_down ? KM_DP_LS_RX_BYTES : KM_DP_CS_RX_BYTES, n);
        c->last_ms = km_loop_now_ms(w->loop);
        size_t done = 0;
        while (done < (size_t)n) {
            ssize_t m = side_send(dst, w->scratch + done, (size_t)n - done);
            if (m == -1) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                return false;
            }
            done += (size_t)m;
        }
        if (done > 0)
            km_dp_stat_add(src_is_down ? c->cst : c->base.lst, wid,
                           src_is_down ? KM_DP_CS_TX_BYTES : KM_DP_LS_TX_BYTES, (int64_t)done);
        if (done < (size_t)n) {
            p->buf = malloc((size_t)n - done);
            if (!p->buf)
                return false; /* out of memory on a DP path: fail this pair only */
            memcpy(p->buf, w->scratch + done, (size_t)n - done);
            p->off = 0;
            p->len = (size_t)n - done;
            return true;
        }
    }
    /* 3. propagate EOF once everything read was written */
    if (src->eof && p->len == 0 && !dst->shut) {
        if (dst->ssl)
            km__dp_tls_notify(dst->ssl); /* close_notify first */
        if (shutdown(dst->fd, SHUT_WR) == -1 && errno != ENOTCONN)
            return false;
        dst->shut = true;
    }
    return true;
}

/* Interest per side. A side with nothing to wait for is not watched at all: epoll reports HUP
 * (peer FIN after our own SHUT_WR) even without interest, and a side that is only waiting for
 * the other one to drain must not spin on it. Closes the pair when both directions are done
 * (or when a watcher cannot be created). Returns false when the pair was closed. */
/* What side <s> waits for (a TLS side: what its SSL waits for). */
static unsigned
tcp_interest(const struct tcp_conn *c, const struct tcp_side *s)
{
    bool down = s == &c->d;
    const struct tcp_pending *in = down ? &c->d2u : &c->u2d;  /* read from s into this */
    const struct tcp_pending *out = down ? &c->u2d : &c->d2u; /* written to s from this */
    unsigned ev = 0;
    if (c->connected && !s->eof && in->len == 0)
        ev |= s->rwant ? s->rwant : KM_IO_READ;
    if (out->len > 0)
        ev |= s->wwant ? s->wwant : KM_IO_WRITE;
    if (!down && c->connecting)
        ev |= c->handshaking && c->hs_want ? c->hs_want : KM_IO_WRITE;
    return ev;
}

static bool
tcp_finish_or_watch(struct tcp_conn *c)
{
    if (c->connected && c->d.eof && c->u.eof && c->d.shut && c->u.shut) {
        tcp_close(&c->base);
        return false;
    }
    struct tcp_side *sides[2] = {&c->d, &c->u};
    for (int i = 0; i < 2; i++) {
        struct tcp_side *s = sides[i];
        bool down = s == &c->d;
        if (s->fd == -1)
            continue;
        unsigned ev = tcp_interest(c, s);
        if (ev == 0) {
            km_io_free(s->io);
            s->io = NULL;
        } else if (!s->io) {
            s->io = km_io_new(c->base.w->loop, s->fd, ev, down ? tcp_on_down : tcp_on_up, c);
            if (!s->io) {
                tcp_close(&c->base);
                return false;
            }
        } else {
            km_io_set(s->io, ev);
        }
    }
    return true;
}

static void
tcp_update(struct tcp_conn *c)
{
    (void)tcp_finish_or_watch(c);
}

/* Is there a real error behind a wakeup we did not ask for? */
static bool
tcp_spurious_fatal(struct tcp_conn *c, int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 || err != 0)
        return true;
    return ++c->spurious > TCP_SPURIOUS_MAX;
}

static void
tcp_on_down(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct tcp_conn *c = arg;
    unsigned want = tcp_interest(c, &c->d);
    if ((events & want) == 0) {
        if (tcp_spurious_fatal(c, fd))
            tcp_close(&c->base);
        return;
    }
    c->spurious = 0;
    /* TLS: an SSL_read may wait for writability and an SSL_write for readability */
    unsigned ev = c->d.ssl ? KM_IO_READ | KM_IO_WRITE : events;
    if ((ev & KM_IO_WRITE) && !tcp_pump(c, &c->u, &c->d, &c->u2d, false)) {
        tcp_close(&c->base);
        return;
    }
    if ((ev & KM_IO_READ) && !tcp_pump(c, &c->d, &c->u, &c->d2u, true)) {
        tcp_close(&c->base);
        return;
    }
    tcp_update(c);
}

static void
tcp_arm_idle(struct tcp_conn *c)
{
    uint32_t idle = c->base.chain->idle_timeout_ms;
    if (idle == 0)
        km_timer_stop(c->timer);
    else
        km_timer_arm(c->timer, idle);
}

static void
tcp_connected(struct tcp_conn *c)
{
    c->connecting = false;
    c->connected = true;
    c->last_ms = km_loop_now_ms(c->base.w->loop);
    tcp_arm_idle(c);
}

/* The current attempt failed (refused, unreachable, timed out): count it, then retry on
 * another endpoint or give up. */
static void
tcp_connect_failed(struct tcp_conn *c, bool timeout)
{
    size_t w = c->base.w->id;
    km_dp_stat_inc(c->cst, w, KM_DP_CS_CONNECT_FAIL);
    if (timeout)
        km_dp_stat_inc(c->cst, w, KM_DP_CS_CONNECT_TIMEOUT);
    km_dp_stat_inc(c->est, w, KM_DP_ES_CONNECT_FAIL);
    if (c->u.fd != -1) {
        km_io_free(c->u.io);
        c->u.io = NULL;
        km__dp_tls_free(c->u.ssl);
        c->u.ssl = NULL;
        c->handshaking = false;
        c->hs_want = 0;
        close(c->u.fd);
        c->u.fd = -1;
        km_dp_stat_add(c->cst, w, KM_DP_CS_CX_ACTIVE, -1);
        km_dp_stat_add(c->est, w, KM_DP_ES_CX_ACTIVE, -1);
        km__dp_endpoint_done(c->base.pub, w, (size_t)c->ci, c->ei);
    }
    c->connecting = false;
    if (c->attempts >= TCP_MAX_ATTEMPTS) {
        km_dp_stat_inc(c->cst, w, KM_DP_CS_CONNECT_EXCEEDED);
        tcp_close(&c->base);
        return;
    }
    tcp_attempt(c, c->ei);
}

static void
tcp_on_up(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct tcp_conn *c = arg;
    if (c->connecting) {
        if (!c->handshaking) {
            int err = 0;
            socklen_t len = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
                err = errno;
            if (err != 0) {
                tcp_connect_failed(c, false);
                return;
            }
            if (!(events & KM_IO_WRITE))
                return; /* not yet */
            if (!c->u.ssl) {
                tcp_connected(c);
                tcp_update(c);
                return;
            }
            c->handshaking = true; /* TLS to the upstream, under the connect timeout */
        }
        int r = km__dp_tls_handshake_up(c->base.w, c->base.pub, (size_t)c->ci, c->u.ssl,
                                        &c->hs_want);
        if (r < 0) {
            tcp_connect_failed(c, false);
            return;
        }
        if (r > 0) {
            c->handshaking = false;
            tcp_connected(c);
        }
        tcp_update(c);
        return;
    }
    unsigned want = tcp_interest(c, &c->u);
    if ((events & want) == 0) {
        if (tcp_spurious_fatal(c, fd))
            tcp_close(&c->base);
        return;
    }
    c->spurious = 0;
    unsigned ev = c->u.ssl ? KM_IO_READ | KM_IO_WRITE : events;
    if ((ev & KM_IO_WRITE) && !tcp_pump(c, &c->d, &c->u, &c->d2u, true)) {
        tcp_close(&c->base);
        return;
    }
    if ((ev & KM_IO_READ) && !tcp_pump(c, &c->u, &c->d, &c->u2d, false)) {
        tcp_close(&c->base);
        return;
    }
    tcp_update(c);
}

static void
tcp_on_timer(struct km_timer *t, void *arg)
{
    struct tcp_conn *c = arg;
    if (c->connecting) {
        tcp_connect_failed(c, true);
        return;
    }
    uint32_t idle = c->base.chain->idle_timeout_ms;
    uint64_t now = km_loop_now_ms(c->base.w->loop);
    if (idle == 0)
        return;
    if (now - c->last_ms >= idle) {
        km_dp_stat_inc(c->base.lst, c->base.w->id, KM_DP_LS_IDLE_TIMEOUT);
        tcp_close(&c->base);
        return;
    }
    km_timer_arm(t, idle - (now - c->last_ms)); /* lazily re-armed: not per byte */
}

/* Starts a connect attempt to a healthy endpoint other than <exclude>. */
static void
tcp_attempt(struct tcp_conn *c, long exclude)
{
    struct km_dp_worker *w = c->base.w;
    struct km_dp_pub *pub = c->base.pub;
    for (;;) {
        long ei = km__dp_endpoint_pick(pub, w->id, (size_t)c->ci, exclude);
        if (ei < 0) {
            if (c->attempts == 0)
                km_dp_stat_inc(c->cst, w->id, KM_DP_CS_NONE_HEALTHY);
            else
                km_dp_stat_inc(c->cst, w->id, KM_DP_CS_CONNECT_EXCEEDED);
            tcp_close(&c->base);
            return;
        }
        c->ei = ei;
        c->est = pub->est[c->ci][ei];
        c->attempts++;
        km_dp_stat_inc(c->cst, w->id, KM_DP_CS_CX_TOTAL);
        km_dp_stat_inc(c->est, w->id, KM_DP_ES_CX_TOTAL);
        void *ssl = NULL;
        int fd = pub->snap->clusters[c->ci].tls
                     ? km__dp_tls_connect_direct(w, pub, (size_t)c->ci, ei, &ssl)
                     : km__dp_connect_cluster(w, pub, (size_t)c->ci, ei);
        if (fd >= 0) {
            c->u.fd = fd;
            c->u.ssl = ssl;
            km_dp_stat_inc(c->cst, w->id, KM_DP_CS_CX_ACTIVE);
            km_dp_stat_inc(c->est, w->id, KM_DP_ES_CX_ACTIVE);
            c->u.io = km_io_new(w->loop, fd, KM_IO_WRITE, tcp_on_up, c);
            if (!c->u.io) {
                tcp_close(&c->base); /* closes u.fd and ends the endpoint's count */
                return;
            }
            c->connecting = true;
            uint32_t to = pub->snap->clusters[c->ci].connect_timeout_ms;
            km_timer_arm(c->timer, to ? to : 5000);
            tcp_update(c);
            return;
        }
        /* immediate failure (refused, no route, out of descriptors) */
        km__dp_endpoint_done(pub, w->id, (size_t)c->ci, ei);
        km_dp_stat_inc(c->cst, w->id, KM_DP_CS_CONNECT_FAIL);
        km_dp_stat_inc(c->est, w->id, KM_DP_ES_CONNECT_FAIL);
        if (c->attempts >= TCP_MAX_ATTEMPTS) {
            km_dp_stat_inc(c->cst, w->id, KM_DP_CS_CONNECT_EXCEEDED);
            tcp_close(&c->base);
            return;
        }
        exclude = ei;
    }
}

void
km__dp_tcp_accept(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                  const struct km_dp_chain *chain, int fd)
{
    km__dp_tcp_accept_tls(w, pub, lidx, chain, fd, NULL);
}

void
km__dp_tcp_accept_tls(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                      const struct km_dp_chain *chain, int fd, void *ssl)
{
    struct tcp_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        km_dp_stat_inc(pub->lst[lidx], w->id, KM_DP_LS_OVERFLOW);
        km__dp_tls_free(ssl);
        close(fd);
        return;
    }
    c->d.ssl = ssl;
    c->base.pub = km__dp_pub_ref(pub);
    c->base.l = &pub->snap->listeners[lidx];
    c->base.chain = chain;
    c->base.lst = pub->lst[lidx];
    c->base.close = tcp_close;
    c->d.fd = fd;
    c->u.fd = -1;
    c->ei = -1;
    km__dp_conn_link(w, &c->base);
    c->timer = km_timer_new(w->loop, 0, tcp_on_timer, c);
    km_timer_stop(c->timer);
    /* the downstream is watched once the upstream is connected (tcp_finish_or_watch) */
    c->ci = km__dp_weighted_pick(pub->snap, chain->clusters, chain->nclusters,
                                 chain->total_weight, ++w->seq * (w->id + 1));
    if (c->ci < 0) {
        /* the cluster is not (yet) known: Envoy closes the connection too */
        km_dp_stat_inc(c->base.lst, w->id, KM_DP_LS_NO_CLUSTER);
        tcp_close(&c->base);
        return;
    }
    c->cst = pub->cst[c->ci];
    tcp_attempt(c, -1);
}
