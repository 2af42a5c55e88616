/* The HTTP connection manager network filter, HTTP/1.1 on both sides.
 *
 * One request at a time per downstream connection; pipelined requests wait in the input
 * buffer until the current response is complete (RFC 9112 9.3.2 allows this). Per request:
 * strict head parsing (km_http1_parse_request_head; errors answer 400/413/431/501/505 and
 * close, counted in downstream_rq_rx_parse_error), CONNECT and Upgrade refused with 403 (not
 * configurable yet, counted in downstream_rq_unsupported), the HTTP RBAC filter when the
 * chain has one (rbac.h: checked against the TLS peer's URI SANs, 403 "RBAC: access denied"
 * when refused, counted in http.<prefix>.rbac.*), routing with router.h (404 when no
 * route matches, direct responses answered locally), a weighted cluster (503 when the cluster
 * is not in the config), an endpoint from lb.h (503 when there is none), an upstream
 * connection from this worker's keep-alive pool or a new non-blocking connect (connect
 * timeout, one retry on another endpoint like the TCP proxy, then 503). Bodies stream in both
 * directions with at most about 64 KiB buffered per direction (reads stop at the mark):
 * Content-Length bodies as they are, chunked bodies decoded strictly and re-chunked, responses
 * delimited by close re-chunked for HTTP/1.1 clients. The route timeout (Envoy's default
 * 15 s, set by the snapshot builder; 0 = none) answers 504 when no response head came in time,
 * and resets the stream when it did.
 *
 * A cluster with cluster->http2 (h2c only) gets the request over the worker's upstream HTTP/2
 * connections instead (protocol translation, http2_proxy.c: km__dp_h2x_*): the body decoded
 * goes out as DATA, the response comes back with its Content-Length, else chunked (until close
 * for HTTP/1.0 clients); trailers are dropped; the downstream connection stays kept-alive.
 *
 * Config changes: each new request on a kept-alive connection uses the worker's current
 * config when its listener (same name and address) still exists there; when it was removed,
 * the connection finishes the request and closes (drain), as it does when mTLS was switched
 * on or off for the listener. An upstream connection goes back to the pool only when its
 * response was complete and both sides allow keep-alive (and is reused only while its cluster
 * keeps the transport, plaintext or TLS, it was made with); idle pool
 * connections are closed when the server closes or sends anything, or after 60 s. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/http1.h>
#include <km/common/util.h>
#include <km/dp/engine_int.h>
#include <km/dp/tls.h>
#include <km/dp/rbac.h>
#include <km/dp/router.h>

#define H_MAX_HEAD        (16u * 1024u)
#define H_HIGH            (64u * 1024u)  /* stop reading a side when its output passes this */
#define H_POOL_MAX        256            /* idle upstream connections per worker */
#define H_POOL_IDLE_MS    60000
#define H_MAX_ATTEMPTS    2
#define H_HEAD_OUT_MAX    (40u * 1024u)  /* serialized header fields we send */
#define H_IDLE_MS         3600000        /* kept-alive downstream connection without a request
                                            (Envoy's HCM idle_timeout default, 1 h) */

/* The worker's scratch buffer (64 KiB, free between events) holds the serialized header
 * fields (first 40 KiB) and the rewritten path (the rest) while a head is built. */
_Static_assert(H_HEAD_OUT_MAX + H_MAX_HEAD + 1 <= KM_DP_IO_CHUNK, "scratch too small");

struct hbuf {
    uint8_t *p; /* owned */
    size_t off, len, cap;
};

static bool
hbuf_reserve(struct hbuf *b, size_t n)
{
    if (b->cap - b->off - b->len >= n)
        return true;
    if (b->off > 0) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
        if (b->cap - b->len >= n)
            return true;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static bool
hbuf_add(struct hbuf *b, const void *data, size_t n)
{
    if (n == 0)
        return true;
    if (!hbuf_reserve(b, n))
        return false;
    memcpy(b->p + b->off + b->len, data, n);
    b->len += n;
    return true;
}

static void
hbuf_consume(struct hbuf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

static void
hbuf_free(struct hbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Frees an empty buffer's memory (idle keep-alive connections keep none). */
static void
hbuf_trim(struct hbuf *b)
{
    if (b->len == 0 && b->cap > 0)
        hbuf_free(b);
}

struct hconn;

/* An upstream connection: owned by a request (owner) or idle in its worker's pool. */
struct km_dp_uconn {
    struct km_dp_worker *w;        /* borrowed */
    int fd;
    struct km_io *io;              /* owned, NULL when nothing is awaited */
    struct km_timer *timer;        /* owned: connect timeout, pool idle timeout */
    char *cluster, *addr;          /* owned: the pool key */
    struct km_dp_stat_block *cst;  /* ref (km_dp_stats_ref): cluster stats */
    struct km_dp_stat_block *est;  /* ref: endpoint stats */
    bool connecting;
    bool eof;                      /* read EOF or hit an error: never reused */
    bool tls;                      /* TLS cluster: pooled for TLS clusters only */
    void *ssl;                     /* owned SSL * (direct TLS on fd, tls.c) or NULL */
    bool hs;                       /* connecting: TCP is up, the TLS handshake goes on */
    unsigned hs_want, rwant, wwant; /* TLS: what the handshake / last blocked read / write
                                       waits for (KM_IO_*), 0 = none */
    bool rd;                       /* may have bytes to read: set by a read event, cleared by
                                      a short read (level-triggered epoll reports the rest) */
    struct hconn *owner;           /* borrowed, NULL when pooled */
    struct km_dp_uconn *prev, *next; /* pool list */
};

struct hconn {
    struct km_dp_conn base;        /* first */
    int fd;
    void *ssl;                     /* owned SSL * (direct TLS on fd, tls.c) or NULL */
    unsigned d_rwant, d_wwant;     /* TLS: like km_dp_uconn.rwant / wwant */
    struct sockaddr_storage local; /* the address the client connected to (chain selection) */
    struct km_io *io;              /* owned, NULL when nothing is awaited */
    struct km_timer *timer;        /* owned: route timeout */
    struct hbuf din, dout, uin, uout;
    struct km_dp_uconn *up;        /* owned while a request uses it */
    struct km_dp_stat_block *hst;  /* borrowed (from pub) */
    bool d_eof;
    bool d_rd;                     /* may have bytes to read (like km_dp_uconn.rd) */
    bool d_woke;                   /* a downstream event came that no recv consumed yet */
    unsigned dev;                  /* events *io watches */
    bool closing;                  /* close once dout is flushed */
    /* the current request */
    bool active;
    bool req_done, resp_head_done, resp_done;
    bool keep_alive;               /* the downstream connection may go on after this one */
    bool req_head;                 /* HEAD request */
    int minor;                     /* downstream HTTP/1.<minor> */
    enum km_http1_body req_framing, resp_framing;
    uint64_t req_left, resp_left;
    struct km_http1_chunked req_ck, resp_ck;
    bool resp_rechunk;             /* the response body goes downstream chunked */
    bool resp_keep_alive_ok;       /* the upstream allows another request on its connection */
    int resp_status;
    long ci, ei;                   /* cluster / endpoint of the request, -1 = none */
    int attempts;
    bool reused;                   /* the upstream connection came from the pool */
    bool no_pool;                  /* connect afresh (after a stale pooled connection) */
    struct hbuf replay;            /* a bodiless request's upstream head, to resend once when
                                      a pooled connection turns out closed */
    bool h1_seen;                  /* an HTTP/1 request came: no HTTP/2 preface any more */
    struct km_dp_h2x *h2x;         /* owned: the request goes to an HTTP/2 cluster instead of
                                      up (http2_proxy.c translates) */
    struct km_timer *kick;         /* owned: runs the connection when h2x has news, or NULL */
};

static void h_run(struct hconn *c);
static void h_close(struct km_dp_conn *base);
static void h_handoff_h2(struct hconn *c);

/* ---- watchers ---- */

/* Sets the events watched on *io, creating or freeing the watcher: a socket with nothing to
 * wait for is not watched (epoll reports HUP and errors even without interest). */
static bool
h_watch(struct km_loop *loop, struct km_io **io, int fd, unsigned ev, km_io_fn fn, void *arg)
{
    if (ev == 0) {
        km_io_free(*io);
        *io = NULL;
        return true;
    }
    if (!*io) {
        *io = km_io_new(loop, fd, ev, fn, arg);
        return *io != NULL;
    }
    km_io_set(*io, ev);
    return true;
}

/* ---- upstream connections and the pool ---- */

static void
uconn_free(struct km_dp_uconn *u)
{
    size_t w = u->w->id;
    km_io_free(u->io);
    km_timer_free(u->timer);
    if (u->ssl) {
        if (!u->connecting)
            km__dp_tls_notify(u->ssl);
        km__dp_tls_free(u->ssl);
    }
    close(u->fd);
    km_dp_stat_add(u->cst, w, KM_DP_CS_CX_ACTIVE, -1);
    km_dp_stat_add(u->est, w, KM_DP_ES_CX_ACTIVE, -1);
    struct km_dp_stats *st = u->w->eng->stats;
    km_dp_stats_unref(st, u->cst);
    km_dp_stats_unref(st, u->est);
    free(u->cluster);
    free(u->addr);
    free(u);
}

static void
pool_unlink(struct km_dp_uconn *u)
{
    struct km_dp_worker *w = u->w;
    if (u->prev)
        u->prev->next = u->next;
    else
        w->idle = u->next;
    if (u->next)
        u->next->prev = u->prev;
    u->prev = u->next = NULL;
    w->nidle--;
}

static void uconn_on_event(struct km_io *io, int fd, unsigned events, void *arg);

/* A pooled connection keeps its watcher (uconn_on_event, which sees that it has no owner):
 * no epoll_ctl when it goes to the pool and comes back, which is every request. */
static void
pool_put(struct km_dp_uconn *u)
{
    struct km_dp_worker *w = u->w;
    u->owner = NULL;
    if (w->nidle >= H_POOL_MAX || w->draining ||
        !h_watch(w->loop, &u->io, u->fd, KM_IO_READ, uconn_on_event, u)) {
        uconn_free(u);
        return;
    }
    km_timer_arm(u->timer, H_POOL_IDLE_MS);
    u->next = w->idle;
    if (w->idle)
        w->idle->prev = u;
    w->idle = u;
    w->nidle++;
}

/* An idle connection to <addr> of <cluster>, made with the transport the cluster has now
 * (<tls>): a cluster switched to mTLS (or off it) never reuses the other kind. */
static struct km_dp_uconn *
pool_take(struct km_dp_worker *w, const char *cluster, const char *addr, bool tls)
{
    for (struct km_dp_uconn *u = w->idle; u; u = u->next) {
        if (u->tls == tls && strcmp(u->addr, addr) == 0 && strcmp(u->cluster, cluster) == 0) {
            pool_unlink(u);
            km_timer_stop(u->timer);
            return u; /* h_run sets what its watcher waits for */
        }
    }
    return NULL;
}

void
km__dp_http_worker_deinit(struct km_dp_worker *w)
{
    while (w->idle) {
        struct km_dp_uconn *u = w->idle;
        pool_unlink(u);
        uconn_free(u);
    }
}

/* ---- local replies ---- */

static void
h_count_status(struct hconn *c, int status)
{
    size_t w = c->base.w->id;
    if (!c->hst)
        return;
    if (status >= 200 && status < 300)
        km_dp_stat_inc(c->hst, w, KM_DP_HS_RQ_2XX);
    else if (status >= 400 && status < 500)
        km_dp_stat_inc(c->hst, w, KM_DP_HS_RQ_4XX);
    else if (status >= 500)
        km_dp_stat_inc(c->hst, w, KM_DP_HS_RQ_5XX);
}

static void h_end_request(struct hconn *c);

/* Answers the current request locally (or a request that could not be parsed). When the
 * request body was not read, the connection closes after the answer. */
static void
h_local_reply(struct hconn *c, int status, const char *body)
{
    char head[256];
    size_t blen = strlen(body);
    bool close_after = !c->keep_alive || !c->req_done || c->closing;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\ncontent-length: %zu\r\ncontent-type: text/plain\r\n"
                     "%s\r\n",
                     status, km_http1_reason(status), blen,
                     close_after ? "connection: close\r\n" : "");
    /* a partial response already sent cannot be replaced: just close */
    if (c->resp_head_done) {
        c->keep_alive = false;
        c->closing = true;
        c->resp_done = c->req_done = true;
        h_end_request(c);
        return;
    }
    if (!hbuf_add(&c->dout, head, (size_t)n) || (!c->req_head && !hbuf_add(&c->dout, body, blen)))
        close_after = true;
    h_count_status(c, status);
    c->resp_status = status;
    c->resp_head_done = c->resp_done = true;
    if (close_after) {
        c->keep_alive = false;
        c->closing = true;
        c->req_done = true;
    }
    h_end_request(c);
}

/* ---- request lifecycle ---- */

static void
h_release_upstream(struct hconn *c, bool reusable)
{
    struct km_dp_uconn *u = c->up;
    if (!u)
        return;
    c->up = NULL;
    if (reusable && !u->connecting && !u->eof && c->uin.len == 0)
        pool_put(u);
    else
        uconn_free(u);
}

static void
h_end_request(struct hconn *c)
{
    if (!c->active)
        return;
    struct km_dp_worker *w = c->base.w;
    c->active = false;
    km_timer_stop(c->timer);
    if (c->keep_alive)
        km_timer_arm(c->timer, H_IDLE_MS);
    hbuf_free(&c->replay);
    if (c->hst)
        km_dp_stat_add(c->hst, w->id, KM_DP_HS_RQ_ACTIVE, -1);
    if (c->ci >= 0 && c->ei >= 0) {
        struct km_dp_stat_block *est = c->base.pub->est[c->ci][c->ei];
        km_dp_stat_inc(est, w->id,
                       c->resp_status > 0 && c->resp_status < 500 ? KM_DP_ES_RQ_SUCCESS
                                                                   : KM_DP_ES_RQ_ERROR);
        km__dp_endpoint_done(c->base.pub, w->id, (size_t)c->ci, c->ei);
    }
    bool reusable = c->req_done && c->resp_done && c->resp_framing != KM_HTTP1_BODY_CLOSE &&
                    c->resp_keep_alive_ok;
    h_release_upstream(c, reusable);
    km__dp_h2x_free(c->h2x);
    c->h2x = NULL;
    hbuf_free(&c->uin);
    hbuf_free(&c->uout);
    c->ci = c->ei = -1;
    if (!c->keep_alive)
        c->closing = true;
}

/* ---- connecting ---- */

static void
uconn_on_timer(struct km_timer *t, void *arg);

/* Gets an upstream connection for the current request (pool or new connect), avoiding
 * endpoint <exclude>; answers 503 itself when there is none left to try. */
static void
h_connect(struct hconn *c, long exclude)
{
    struct km_dp_worker *w = c->base.w;
    struct km_dp_pub *pub = c->base.pub;
    const struct km_dp_cluster *cl = &pub->snap->clusters[c->ci];
    struct km_dp_stat_block *cst = pub->cst[c->ci];
    for (;;) {
        long ei = km__dp_endpoint_pick(pub, w->id, (size_t)c->ci, exclude);
        if (ei < 0) {
            km_dp_stat_inc(cst, w->id,
                           c->attempts == 0 ? KM_DP_CS_NONE_HEALTHY : KM_DP_CS_CONNECT_EXCEEDED);
            h_local_reply(c, 503, "no healthy upstream");
            return;
        }
        const struct km_dp_endpoint *ep = &cl->eps[ei];
        c->ei = ei;
        c->attempts++;
        struct km_dp_uconn *u = c->no_pool ? NULL : pool_take(w, cl->name, ep->addr_str,
                                                              cl->tls != NULL);
        c->reused = u != NULL;
        if (u) {
            u->owner = c;
            c->up = u;
            km_dp_stat_inc(pub->est[c->ci][ei], w->id, KM_DP_ES_RQ_TOTAL);
            return;
        }
        void *ssl = NULL;
        int fd = cl->tls ? km__dp_tls_connect_direct(w, pub, (size_t)c->ci, ei, &ssl)
                         : km__dp_connect_cluster(w, pub, (size_t)c->ci, ei);
        if (fd < 0) {
            km__dp_endpoint_done(pub, w->id, (size_t)c->ci, ei);
            c->ei = -1;
            km_dp_stat_inc(cst, w->id, KM_DP_CS_CONNECT_FAIL);
            km_dp_stat_inc(pub->est[c->ci][ei], w->id, KM_DP_ES_CONNECT_FAIL);
            if (c->attempts >= H_MAX_ATTEMPTS) {
                km_dp_stat_inc(cst, w->id, KM_DP_CS_CONNECT_EXCEEDED);
                h_local_reply(c, 503, "upstream connect error or disconnect/reset before "
                                      "headers. reset reason: connection failure");
                return;
            }
            exclude = ei;
            continue;
        }
        u = calloc(1, sizeof(*u));
        if (!u) {
            km__dp_tls_free(ssl);
            close(fd);
            h_local_reply(c, 503, "out of memory");
            return;
        }
        u->w = w;
        u->fd = fd;
        u->ssl = ssl;
        u->cluster = km_xstrdup(cl->name);
        u->addr = km_xstrdup(ep->addr_str);
        u->tls = cl->tls != NULL;
        u->cst = km_dp_stats_ref(w->eng->stats, KM_DP_STAT_CLUSTER, cl->name, NULL);
        u->est = km_dp_stats_ref(w->eng->stats, KM_DP_STAT_ENDPOINT, cl->name, ep->addr_str);
        km_dp_stat_inc(u->cst, w->id, KM_DP_CS_CX_TOTAL);
        km_dp_stat_inc(u->cst, w->id, KM_DP_CS_CX_ACTIVE);
        km_dp_stat_inc(u->est, w->id, KM_DP_ES_CX_TOTAL);
        km_dp_stat_inc(u->est, w->id, KM_DP_ES_CX_ACTIVE);
        u->connecting = true;
        u->rd = true;
        u->timer = km_timer_new(w->loop, cl->connect_timeout_ms ? cl->connect_timeout_ms : 5000,
                                uconn_on_timer, u);
        u->owner = c;
        c->up = u;
        return;
    }
}

static void
h_connect_failed(struct hconn *c, bool timeout)
{
    struct km_dp_worker *w = c->base.w;
    struct km_dp_pub *pub = c->base.pub;
    struct km_dp_stat_block *cst = pub->cst[c->ci];
    km_dp_stat_inc(cst, w->id, KM_DP_CS_CONNECT_FAIL);
    if (timeout)
        km_dp_stat_inc(cst, w->id, KM_DP_CS_CONNECT_TIMEOUT);
    km_dp_stat_inc(pub->est[c->ci][c->ei], w->id, KM_DP_ES_CONNECT_FAIL);
    struct km_dp_uconn *u = c->up;
    c->up = NULL;
    uconn_free(u);
    long failed = c->ei;
    km__dp_endpoint_done(pub, w->id, (size_t)c->ci, failed);
    c->ei = -1;
    if (c->attempts >= H_MAX_ATTEMPTS) {
        km_dp_stat_inc(cst, w->id, KM_DP_CS_CONNECT_EXCEEDED);
        h_local_reply(c, 503, "upstream connect error or disconnect/reset before headers. "
                              "reset reason: connection failure");
        return;
    }
    h_connect(c, failed);
}

static void
uconn_on_timer(struct km_timer *t, void *arg)
{
    struct km_dp_uconn *u = arg;
    struct hconn *c = u->owner;
    if (!c) {
        pool_unlink(u); /* idle too long in the pool */
        uconn_free(u);
        return;
    }
    if (!u->connecting)
        return;
    h_connect_failed(c, true);
    h_run(c);
}

static void
uconn_on_event(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct km_dp_uconn *u = arg;
    struct hconn *c = u->owner;
    if (!c) {
        /* pooled: an idle connection must stay silent; EOF, data or an error all end it */
        pool_unlink(u);
        uconn_free(u);
        return;
    }
    bool up = false;
    if ((events & KM_IO_READ) || (u->ssl && events))
        u->rd = true; /* TLS: an SSL_read may have waited for writability */
    if (u->connecting && !u->hs) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
            err = errno;
        if (err != 0) {
            h_connect_failed(c, false);
            h_run(c);
            return;
        }
        if (events & KM_IO_WRITE) {
            if (u->ssl)
                u->hs = true; /* TLS to the upstream, under the connect timeout */
            else
                up = true;
        }
    }
    if (u->connecting && u->hs) {
        int r = km__dp_tls_handshake_up(c->base.w, c->base.pub, (size_t)c->ci, u->ssl,
                                        &u->hs_want);
        if (r < 0) {
            h_connect_failed(c, false);
            h_run(c);
            return;
        }
        if (r > 0) {
            u->hs = false;
            up = true;
        }
    }
    if (up) {
        u->connecting = false;
        km_timer_stop(u->timer);
        km_dp_stat_inc(c->base.pub->est[c->ci][c->ei], c->base.w->id, KM_DP_ES_RQ_TOTAL);
    }
    h_run(c);
}

static void
h_on_route_timeout(struct km_timer *t, void *arg)
{
    struct hconn *c = arg;
    if (!c->active) {
        h_close(&c->base); /* idle kept-alive connection */
        return;
    }
    if (c->ci >= 0)
        km_dp_stat_inc(c->base.pub->cst[c->ci], c->base.w->id, KM_DP_CS_RQ_TIMEOUT);
    if (c->hst)
        km_dp_stat_inc(c->hst, c->base.w->id, KM_DP_HS_RQ_TIMEOUT);
    h_release_upstream(c, false);
    h_local_reply(c, 504, "upstream request timeout"); /* closes if the head was sent */
    h_run(c);
}

/* ---- HTTP RBAC ---- */

void
km__dp_peer_free(struct km_dp_peer *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nsans; i++)
        free(p->uri_sans[i]);
    free(p->uri_sans);
    free(p);
}

bool
km__dp_http_rbac_allow(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                       const struct km_dp_chain *chain, const struct km_dp_peer *peer)
{
    struct km_dp_rbac_result r;
    if (!chain || !chain->http_rbac)
        return true;
    km_dp_rbac_check(chain->http_rbac, peer && peer->authenticated,
                     peer ? (const char *const *)peer->uri_sans : NULL, peer ? peer->nsans : 0,
                     &r);
    const struct km_dp_listener *l = &pub->snap->listeners[lidx];
    struct km_dp_stat_block *rb = pub->hrst[pub->hst_off[lidx] + (size_t)(chain - l->chains)];
    if (rb) {
        km_dp_stat_inc(rb, w->id, r.allowed ? KM_DP_RS_ALLOWED : KM_DP_RS_DENIED);
        if (r.shadow_evaluated)
            km_dp_stat_inc(rb, w->id,
                           r.shadow_allowed ? KM_DP_RS_SHADOW_ALLOWED : KM_DP_RS_SHADOW_DENIED);
    }
    if (!r.allowed)
        km_log_debug("dp", "rbac: denied a request of %s on %s",
                     peer && peer->nsans ? peer->uri_sans[0] : "(no URI SAN)", l->name);
    return r.allowed;
}

/* ---- starting a request ---- */

/* A new request on a kept-alive connection uses the worker's current config when the
 * listener is still there; when it is gone the connection drains. */
static void
h_refresh_config(struct hconn *c)
{
    struct km_dp_worker *w = c->base.w;
    if (!w->pub || w->pub == c->base.pub)
        return;
    const struct km_dp_snapshot *s = w->pub->snap;
    const struct km_dp_listener *old = c->base.l;
    for (size_t i = 0; i < s->nlisteners; i++) {
        const struct km_dp_listener *l = &s->listeners[i];
        if (strcmp(l->name ? l->name : "", old->name ? old->name : "") != 0 ||
            strcmp(l->addr_str ? l->addr_str : "", old->addr_str ? old->addr_str : "") != 0)
            continue;
        const struct km_dp_chain *ch = km__dp_chain_select(l, &c->local);
        if (!ch || ch->kind != KM_DP_FILTER_HCM)
            break;
        /* mTLS switched on or off for the listener: this connection came with the other
         * transport, it finishes this request with its config and closes */
        if ((ch->tls != NULL) != (c->base.chain->tls != NULL))
            break;
        struct km_dp_pub *prev = c->base.pub;
        c->base.pub = km__dp_pub_ref(w->pub);
        c->base.l = l;
        c->base.chain = ch;
        c->base.lst = w->pub->lst[i]; /* the same block: same address */
        c->hst = w->pub->hst[w->pub->hst_off[i] + (size_t)(ch - l->chains)];
        km__dp_pub_unref(prev);
        return;
    }
    c->keep_alive = false;
}

static void
h_on_kick(struct km_timer *t, void *arg)
{
    h_run(arg);
}

static void
h_h2x_wake(void *arg)
{
    struct hconn *c = arg;
    km_timer_arm(c->kick, 0);
}

/* The request goes to an HTTP/2 cluster: http2_proxy.c translates it (route already done). */
static void
h_start_h2(struct hconn *c, const struct km_http1_request *req, const struct km_dp_route *r,
           const char *authority, const char *path, size_t plen)
{
    struct km_dp_worker *w = c->base.w;
    char *rpath = (char *)w->scratch;
    long rl = km_dp_route_rewrite_path(r, path, plen, rpath, H_MAX_HEAD + 1);
    if (rl < 0) {
        hbuf_consume(&c->din, req->head_len);
        h_local_reply(c, 431, "request head too large to forward");
        return;
    }
    const char *host = r->host_rewrite ? r->host_rewrite
                       : authority[0] ? authority
                                      : c->base.pub->snap->clusters[c->ci].name;
    if (!c->kick) {
        c->kick = km_timer_new(w->loop, 0, h_on_kick, c);
        km_timer_stop(c->kick);
    }
    km_dp_stat_inc(c->base.pub->cst[c->ci], w->id, KM_DP_CS_RQ_TOTAL);
    if (r->timeout_ms)
        km_timer_arm(c->timer, r->timeout_ms);
    c->h2x = km__dp_h2x_start(w, c->base.pub, (size_t)c->ci, req->method, req->method_len,
                              rl > 0 ? rpath : path, rl > 0 ? (size_t)rl : plen, host,
                              req->headers, req->nheaders, !c->req_done, h_h2x_wake, c);
    hbuf_consume(&c->din, req->head_len); /* after: the fields point into din */
}

static void
h_start(struct hconn *c, const struct km_http1_request *req)
{
    struct km_dp_worker *w = c->base.w;
    c->h1_seen = true;
    c->keep_alive = req->keep_alive;
    h_refresh_config(c);
    if (w->draining)
        c->keep_alive = false;
    c->active = true;
    c->req_done = c->resp_head_done = c->resp_done = false;
    c->resp_keep_alive_ok = c->resp_rechunk = false;
    c->resp_status = 0;
    c->ci = c->ei = -1;
    c->attempts = 0;
    c->reused = c->no_pool = false;
    km_timer_stop(c->timer);
    c->minor = req->minor_version;
    c->req_head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    c->req_framing = req->framing;
    c->req_left = req->content_length;
    if (c->req_framing == KM_HTTP1_BODY_LENGTH && c->req_left == 0)
        c->req_framing = KM_HTTP1_BODY_NONE;
    if (c->req_framing == KM_HTTP1_BODY_CHUNKED)
        km_http1_chunked_init(&c->req_ck, 0, 0);
    c->req_done = c->req_framing == KM_HTTP1_BODY_NONE;
    if (c->hst) {
        km_dp_stat_inc(c->hst, w->id, KM_DP_HS_RQ_TOTAL);
        km_dp_stat_inc(c->hst, w->id, KM_DP_HS_RQ_ACTIVE);
    }
    size_t head_len = req->head_len;
    bool is_connect = req->method_len == 7 && memcmp(req->method, "CONNECT", 7) == 0;
    if (is_connect || req->upgrade) {
        if (c->hst)
            km_dp_stat_inc(c->hst, w->id, KM_DP_HS_UNSUPPORTED);
        hbuf_consume(&c->din, head_len);
        h_local_reply(c, 403, "upgrade and CONNECT are not allowed");
        return;
    }
    if (!km__dp_http_rbac_allow(w, c->base.pub, (size_t)(c->base.l - c->base.pub->snap->listeners),
                                c->base.chain, c->base.peer)) {
        hbuf_consume(&c->din, head_len);
        h_local_reply(c, 403, "RBAC: access denied");
        return;
    }
    const struct km_dp_route_config *rc = c->base.chain->rc;
    char authority[1024], path[H_MAX_HEAD + 1];
    size_t alen = req->authority ? req->authority_len : 0;
    if (alen >= sizeof(authority))
        alen = sizeof(authority) - 1;
    memcpy(authority, req->authority ? req->authority : "", alen);
    authority[alen] = 0;
    size_t plen = req->path_len < H_MAX_HEAD ? req->path_len : H_MAX_HEAD;
    memcpy(path, req->path ? req->path : "", plen);
    path[plen] = 0;
    const struct km_dp_route *r =
        rc ? km_dp_route_match(rc, authority, path, req->headers, req->nheaders) : NULL;
    if (!r) {
        if (c->hst)
            km_dp_stat_inc(c->hst, w->id, KM_DP_HS_NO_ROUTE);
        hbuf_consume(&c->din, head_len);
        h_local_reply(c, 404, "");
        return;
    }
    if (r->direct_status) {
        hbuf_consume(&c->din, head_len);
        h_local_reply(c, (int)r->direct_status, "");
        return;
    }
    w->seq++;
    const struct km_dp_weighted *wc =
        km_dp_route_pick_cluster(r, w->seq * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)c);
    long ci = wc ? km__dp_cluster_index(c->base.pub->snap, wc->cluster) : -1;
    if (ci < 0) {
        if (c->hst)
            km_dp_stat_inc(c->hst, w->id, KM_DP_HS_NO_CLUSTER);
        hbuf_consume(&c->din, head_len);
        h_local_reply(c, 503, "cluster not found");
        return;
    }
    c->ci = ci;
    if (c->base.pub->snap->clusters[ci].http2) {
        h_start_h2(c, req, r, authority, path, plen);
        return;
    }
    /* the upstream request head */
    char *hdrs = (char *)w->scratch;
    char *rpath = (char *)w->scratch + H_HEAD_OUT_MAX;
    static const char *const drop[] = {"host", NULL};
    long hl = km_http1_serialize_headers(req->headers, req->nheaders, 0, drop, hdrs,
                                         H_HEAD_OUT_MAX);
    long rl = km_dp_route_rewrite_path(r, path, plen, rpath, H_MAX_HEAD + 1);
    bool ok = hl >= 0 && rl >= 0;
    if (ok) {
        /* HTTP/1.0 requests may come without a Host: the upstream gets the cluster's name */
        const char *host = r->host_rewrite ? r->host_rewrite
                           : authority[0] ? authority
                                          : c->base.pub->snap->clusters[ci].name;
        ok = hbuf_add(&c->uout, req->method, req->method_len) && hbuf_add(&c->uout, " ", 1) &&
             hbuf_add(&c->uout, rl > 0 ? rpath : path, rl > 0 ? (size_t)rl : plen) &&
             hbuf_add(&c->uout, " HTTP/1.1\r\nhost: ", 17) &&
             hbuf_add(&c->uout, host, strlen(host)) && hbuf_add(&c->uout, "\r\n", 2) &&
             hbuf_add(&c->uout, hdrs, (size_t)hl) &&
             (c->req_framing != KM_HTTP1_BODY_CHUNKED ||
              hbuf_add(&c->uout, "transfer-encoding: chunked\r\n", 28)) &&
             hbuf_add(&c->uout, "\r\n", 2);
    }
    hbuf_consume(&c->din, head_len);
    if (!ok) {
        h_local_reply(c, 431, "request head too large to forward");
        return;
    }
    if (c->req_framing == KM_HTTP1_BODY_NONE)
        hbuf_add(&c->replay, c->uout.p + c->uout.off, c->uout.len); /* best effort */
    km_dp_stat_inc(c->base.pub->cst[ci], w->id, KM_DP_CS_RQ_TOTAL);
    if (r->timeout_ms)
        km_timer_arm(c->timer, r->timeout_ms);
    h_connect(c, -1);
}

/* ---- bodies ---- */

static bool
h_add_chunk(struct hbuf *b, const uint8_t *data, size_t len)
{
    char head[19];
    size_t hl = km_http1_chunk_head(head, len);
    return hbuf_add(b, head, hl) && hbuf_add(b, data, len) && hbuf_add(b, "\r\n", 2);
}

/* Request body bytes (decoded) for the upstream: to uout (chunked again when <chunked>) or to
 * the HTTP/2 exchange. <last>: the body ends here. */
static bool
h_req_out(struct hconn *c, const uint8_t *data, size_t len, bool chunked, bool last)
{
    if (c->h2x) {
        km__dp_h2x_send(c->h2x, data, len, last);
        return true;
    }
    if (!chunked)
        return hbuf_add(&c->uout, data, len);
    if (len > 0 && !h_add_chunk(&c->uout, data, len))
        return false;
    return !last || hbuf_add(&c->uout, "0\r\n\r\n", 5);
}

static bool
h_req_room(const struct hconn *c)
{
    return c->h2x ? km__dp_h2x_room(c->h2x) > 0 : c->uout.len < H_HIGH;
}

/* Forwards request body bytes from din to uout (or h2x). Returns whether anything moved. */
static bool
h_move_req_body(struct hconn *c)
{
    if (!c->active || c->req_done || (!c->h2x && (!c->up || c->up->connecting)))
        return false;
    bool moved = false;
    while (c->din.len > 0 && h_req_room(c) && !c->req_done) {
        const uint8_t *in = c->din.p + c->din.off;
        if (c->req_framing == KM_HTTP1_BODY_LENGTH) {
            size_t n = c->din.len < c->req_left ? c->din.len : (size_t)c->req_left;
            if (!h_req_out(c, in, n, false, n == c->req_left)) {
                h_local_reply(c, 503, "out of memory");
                return true;
            }
            hbuf_consume(&c->din, n);
            c->req_left -= n;
            c->req_done = c->req_left == 0;
            moved = true;
            continue;
        }
        size_t consumed = 0, dlen = 0;
        const uint8_t *data = NULL;
        int st = 0;
        char err[128];
        int rc = km_http1_chunked_parse(&c->req_ck, in, c->din.len, &consumed, &data, &dlen, &st,
                                        err, sizeof(err));
        if (rc == KM_HTTP1_ERROR) {
            if (c->hst)
                km_dp_stat_inc(c->hst, c->base.w->id, KM_DP_HS_RX_PARSE_ERROR);
            h_local_reply(c, st ? st : 400, err);
            return true;
        }
        if (dlen > 0 && !h_req_out(c, data, dlen, true, false)) {
            h_local_reply(c, 503, "out of memory");
            return true;
        }
        hbuf_consume(&c->din, consumed);
        moved = moved || consumed > 0;
        if (rc == KM_HTTP1_DONE) {
            h_req_out(c, NULL, 0, true, true);
            c->req_done = true;
        } else if (consumed == 0) {
            break;
        }
    }
    return moved;
}

/* Ends a response that cannot be completed (upstream broke mid-body): the client sees the
 * connection close. */
static void
h_abort(struct hconn *c)
{
    c->keep_alive = false;
    c->closing = true;
    c->req_done = c->resp_done = true;
    c->resp_keep_alive_ok = false;
    h_end_request(c);
}

/* Writes the response head for the client (framing decided: resp_rechunk, keep_alive). */
static bool
h_put_resp_head(struct hconn *c, int status, const char *reason, size_t reason_len,
                const char *hdrs, size_t hl)
{
    if (c->closing)
        c->keep_alive = false;
    char line[96];
    int n = snprintf(line, sizeof(line), "HTTP/1.1 %d ", status);
    return hbuf_add(&c->dout, line, (size_t)n) &&
           hbuf_add(&c->dout, reason_len ? reason : km_http1_reason(status),
                    reason_len ? reason_len : strlen(km_http1_reason(status))) &&
           hbuf_add(&c->dout, "\r\n", 2) && hbuf_add(&c->dout, hdrs, hl) &&
           (!c->resp_rechunk || hbuf_add(&c->dout, "transfer-encoding: chunked\r\n", 28)) &&
           (c->keep_alive || hbuf_add(&c->dout, "connection: close\r\n", 19)) &&
           (!c->keep_alive || c->minor == 1 ||
            hbuf_add(&c->dout, "connection: keep-alive\r\n", 24)) &&
           hbuf_add(&c->dout, "\r\n", 2);
}

static bool
h_resp_head(struct hconn *c)
{
    struct km_http1_response r;
    int st = 0;
    char err[128];
    int rc = km_http1_parse_response(c->uin.p + c->uin.off, c->uin.len, NULL,
                                     c->req_head ? KM_HTTP1_REQ_HEAD : 0, &r, &st, err,
                                     sizeof(err));
    if (rc == KM_HTTP1_INCOMPLETE) {
        if (c->uin.len < H_MAX_HEAD)
            return false;
        rc = KM_HTTP1_ERROR;
    }
    if (rc == KM_HTTP1_ERROR || r.status == 101) {
        h_release_upstream(c, false);
        h_local_reply(c, 502, "upstream sent an invalid response");
        return true;
    }
    if (r.status < 200) {
        /* interim response (100 Continue): pass it on to an HTTP/1.1 client */
        if (c->minor == 1) {
            char line[64];
            int n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n\r\n", r.status,
                             km_http1_reason(r.status));
            hbuf_add(&c->dout, line, (size_t)n);
        }
        hbuf_consume(&c->uin, r.head_len);
        return true;
    }
    char *hdrs = (char *)c->base.w->scratch;
    long hl = km_http1_serialize_headers(r.headers, r.nheaders, 0, NULL, hdrs, H_HEAD_OUT_MAX);
    if (hl < 0) {
        h_release_upstream(c, false);
        h_local_reply(c, 502, "upstream response head too large");
        return true;
    }
    c->resp_framing = r.framing;
    c->resp_left = r.content_length;
    c->resp_keep_alive_ok = r.keep_alive;
    bool unframed = r.framing == KM_HTTP1_BODY_CHUNKED || r.framing == KM_HTTP1_BODY_CLOSE;
    c->resp_rechunk = unframed && c->minor == 1;
    if (unframed && c->minor == 0)
        c->keep_alive = false; /* an HTTP/1.0 client reads until close */
    bool ok = h_put_resp_head(c, r.status, r.reason, r.reason_len, hdrs, (size_t)hl);
    hbuf_consume(&c->uin, r.head_len);
    c->resp_head_done = true;
    c->resp_status = r.status;
    if (!ok) {
        h_abort(c);
        return true;
    }
    size_t w = c->base.w->id;
    struct km_dp_stat_block *cst = c->base.pub->cst[c->ci];
    if (r.status >= 200 && r.status < 300)
        km_dp_stat_inc(cst, w, KM_DP_CS_RQ_2XX);
    else if (r.status >= 400 && r.status < 500)
        km_dp_stat_inc(cst, w, KM_DP_CS_RQ_4XX);
    else if (r.status >= 500)
        km_dp_stat_inc(cst, w, KM_DP_CS_RQ_5XX);
    h_count_status(c, r.status);
    if (r.framing == KM_HTTP1_BODY_CHUNKED)
        km_http1_chunked_init(&c->resp_ck, 0, 0);
    if (r.framing == KM_HTTP1_BODY_NONE || (r.framing == KM_HTTP1_BODY_LENGTH && c->resp_left == 0))
        c->resp_done = true;
    return true;
}

/* The HTTP/2 exchange's response to dout: Content-Length when the upstream gave one, else
 * chunked (HTTP/1.0 clients: until close); trailers are dropped. Returns whether anything
 * moved. */
static bool
h_move_resp_h2(struct hconn *c)
{
    bool moved = false;
    if (!c->resp_head_done) {
        char *hdrs = (char *)c->base.w->scratch;
        long hl = 0;
        int64_t clen = -1;
        int status = km__dp_h2x_head(c->h2x, hdrs, H_HEAD_OUT_MAX, &hl, &clen);
        if (status == 0)
            return false;
        if (hl < 0) {
            h_local_reply(c, 502, "upstream response head too large");
            return true;
        }
        bool bodiless = c->req_head || status == 204 || status == 304;
        c->resp_framing = bodiless    ? KM_HTTP1_BODY_NONE
                          : clen >= 0 ? KM_HTTP1_BODY_LENGTH
                          : c->minor == 1 ? KM_HTTP1_BODY_CHUNKED
                                          : KM_HTTP1_BODY_CLOSE;
        c->resp_left = clen >= 0 ? (uint64_t)clen : 0;
        c->resp_rechunk = c->resp_framing == KM_HTTP1_BODY_CHUNKED;
        if (c->resp_framing == KM_HTTP1_BODY_CLOSE)
            c->keep_alive = false;
        bool ok = h_put_resp_head(c, status, NULL, 0, hdrs, (size_t)hl);
        c->resp_head_done = true;
        c->resp_status = status;
        h_count_status(c, status); /* the cluster's counters: http2_proxy.c */
        if (!ok) {
            h_abort(c);
            return true;
        }
        moved = true;
    }
    while (!c->resp_done && c->dout.len < H_HIGH) {
        uint8_t *buf = c->base.w->scratch;
        size_t n = km__dp_h2x_read(c->h2x, buf, 16384);
        if (n > 0) {
            bool ok = true;
            if (c->resp_framing == KM_HTTP1_BODY_LENGTH) {
                size_t m = n < c->resp_left ? n : (size_t)c->resp_left;
                ok = hbuf_add(&c->dout, buf, m);
                c->resp_left -= m;
            } else if (c->resp_framing == KM_HTTP1_BODY_CHUNKED) {
                ok = h_add_chunk(&c->dout, buf, n);
            } else if (c->resp_framing == KM_HTTP1_BODY_CLOSE) {
                ok = hbuf_add(&c->dout, buf, n);
            }
            if (!ok) {
                h_abort(c);
                return true;
            }
            moved = true;
            continue;
        }
        int st = km__dp_h2x_state(c->h2x);
        if (st < 0 || (st > 0 && c->resp_framing == KM_HTTP1_BODY_LENGTH && c->resp_left > 0)) {
            h_abort(c); /* reset or truncated */
            return true;
        }
        if (st > 0) {
            if (c->resp_rechunk && !hbuf_add(&c->dout, "0\r\n\r\n", 5)) {
                h_abort(c);
                return true;
            }
            c->resp_done = true;
            moved = true;
        }
        break;
    }
    return moved;
}

/* Response head and body from uin to dout. Returns whether anything moved. */
static bool
h_move_resp(struct hconn *c)
{
    if (c->active && !c->resp_done && c->h2x)
        return h_move_resp_h2(c);
    if (!c->active || c->resp_done || !c->up || c->up->connecting)
        return false;
    bool moved = false;
    if (!c->resp_head_done) {
        if (c->uin.len == 0 || !h_resp_head(c))
            return false;
        moved = true;
        if (!c->active || c->resp_done || !c->resp_head_done)
            return true;
    }
    while (!c->resp_done && c->uin.len > 0 && c->dout.len < H_HIGH) {
        const uint8_t *in = c->uin.p + c->uin.off;
        bool ok = true;
        if (c->resp_framing == KM_HTTP1_BODY_LENGTH) {
            size_t n = c->uin.len < c->resp_left ? c->uin.len : (size_t)c->resp_left;
            ok = hbuf_add(&c->dout, in, n);
            hbuf_consume(&c->uin, n);
            c->resp_left -= n;
            c->resp_done = c->resp_left == 0;
        } else if (c->resp_framing == KM_HTTP1_BODY_CLOSE) {
            size_t n = c->uin.len;
            ok = c->resp_rechunk ? h_add_chunk(&c->dout, in, n) : hbuf_add(&c->dout, in, n);
            hbuf_consume(&c->uin, n);
        } else {
            size_t consumed = 0, dlen = 0;
            const uint8_t *data = NULL;
            int st = 0;
            char err[128];
            int rc = km_http1_chunked_parse(&c->resp_ck, in, c->uin.len, &consumed, &data, &dlen,
                                            &st, err, sizeof(err));
            if (rc == KM_HTTP1_ERROR) {
                h_abort(c);
                return true;
            }
            if (dlen > 0)
                ok = c->resp_rechunk ? h_add_chunk(&c->dout, data, dlen)
                                     : hbuf_add(&c->dout, data, dlen);
            hbuf_consume(&c->uin, consumed);
            if (rc == KM_HTTP1_DONE) {
                if (c->resp_rechunk)
                    ok = ok && hbuf_add(&c->dout, "0\r\n\r\n", 5);
                c->resp_done = true;
            } else if (consumed == 0) {
                break;
            }
        }
        if (!ok) {
            h_abort(c);
            return true;
        }
        moved = true;
    }
    return moved;
}

/* The upstream connection ended (EOF, reset or a failed send) before a response head:
 * resend a bodiless request once on a new connection when the connection came from the pool
 * (the server closed it while idle), else answer 503 like Envoy. */
static void
h_upstream_gone_before_head(struct hconn *c)
{
    if (c->reused && !c->no_pool && c->uin.len == 0 && c->replay.len > 0) {
        struct km_dp_worker *w = c->base.w;
        h_release_upstream(c, false);
        km__dp_endpoint_done(c->base.pub, w->id, (size_t)c->ci, c->ei);
        c->ei = -1;
        c->attempts = 0;
        c->no_pool = true;
        hbuf_free(&c->uout);
        if (!hbuf_add(&c->uout, c->replay.p + c->replay.off, c->replay.len)) {
            h_local_reply(c, 503, "out of memory");
            return;
        }
        h_connect(c, -1);
        return;
    }
    h_release_upstream(c, false);
    h_local_reply(c, 503, "upstream connect error or disconnect/reset before headers. "
                          "reset reason: connection termination");
}

/* After the upstream's EOF: once everything it sent was processed, end the response (a body
 * delimited by close) or cut it short (a truncated body). Returns whether anything changed. */
static bool
h_check_up_eof(struct hconn *c)
{
    if (!c->active || !c->up || !c->up->eof || c->resp_done)
        return false;
    if (!c->resp_head_done) {
        h_upstream_gone_before_head(c);
        return true;
    }
    if (c->uin.len > 0)
        return false; /* still being forwarded */
    if (c->resp_framing == KM_HTTP1_BODY_CLOSE) {
        if (c->resp_rechunk && !hbuf_add(&c->dout, "0\r\n\r\n", 5)) {
            h_abort(c);
            return true;
        }
        c->resp_done = true;
        c->resp_keep_alive_ok = false;
        return true;
    }
    h_abort(c); /* truncated body */
    return true;
}

/* ---- the driver ---- */

static bool
h_want_down_read(const struct hconn *c)
{
    if (c->d_eof || c->closing)
        return false;
    if (c->active)
        return !c->req_done && c->din.len < H_HIGH && c->uout.len < H_HIGH;
    return c->din.len < H_MAX_HEAD && c->dout.len < H_HIGH;
}

static bool
h_want_up_read(const struct hconn *c)
{
    return c->active && c->up && !c->up->connecting && !c->up->eof && !c->resp_done &&
           c->uin.len < H_HIGH && c->dout.len < H_HIGH;
}

static void
h_on_down(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct hconn *c = arg;
    if ((events & KM_IO_READ) || (c->ssl && events))
        c->d_rd = true; /* TLS: an SSL_read may have waited for writability */
    c->d_woke = true;
    h_run(c);
}

/* Sets what the downstream socket waits for. Lazily: a connection waiting for its upstream
 * (nothing to read or write downstream) keeps its read interest instead of dropping it and
 * adding it back at the end of the exchange (two epoll_ctl per request); if the client
 * sends or closes meanwhile, that one event (not consumed by a recv) drops it. */
static bool
h_watch_down(struct hconn *c, unsigned dev)
{
    bool woke = c->d_woke;
    c->d_woke = false;
    if (dev == 0 && c->io && c->dev == KM_IO_READ && c->active && !woke)
        return true;
    if (!h_watch(c->base.w->loop, &c->io, c->fd, dev, h_on_down, c))
        return false;
    c->dev = dev;
    return true;
}

/* Does everything that can be done without waiting, then sets what to wait for. */
static void
h_run(struct hconn *c)
{
    struct km_dp_worker *w = c->base.w;
    for (int round = 0; round < 64; round++) {
        bool progress = false;
        /* 1. answer downstream */
        if (c->dout.len > 0) {
            ssize_t n = c->ssl ? km__dp_tls_send(c->ssl, c->dout.p + c->dout.off, c->dout.len,
                                                 &c->d_wwant)
                               : send(c->fd, c->dout.p + c->dout.off, c->dout.len, MSG_NOSIGNAL);
            if (n > 0) {
                c->d_wwant = 0;
                hbuf_consume(&c->dout, (size_t)n);
                km_dp_stat_add(c->base.lst, w->id, KM_DP_LS_TX_BYTES, n);
                progress = true;
            } else if (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                h_close(&c->base);
                return;
            }
        }
        if (c->dout.len == 0) {
            hbuf_trim(&c->dout);
            if (c->closing && !c->active) {
                h_close(&c->base);
                return;
            }
        }
        /* 2. read downstream */
        if (c->d_rd && h_want_down_read(c) && hbuf_reserve(&c->din, 16384)) {
            size_t room = c->din.cap - c->din.off - c->din.len;
            uint8_t *at = c->din.p + c->din.off + c->din.len;
            ssize_t n = c->ssl ? km__dp_tls_recv(c->ssl, at, room, &c->d_rwant)
                               : recv(c->fd, at, room, 0);
            c->d_woke = false;
            if (n > 0) {
                /* a short read emptied the socket (TLS: and the SSL's buffer) */
                c->d_rd = (size_t)n == room || (c->ssl && km__dp_tls_pending(c->ssl) > 0);
                c->d_rwant = 0;
                c->din.len += (size_t)n;
                km_dp_stat_add(c->base.lst, w->id, KM_DP_LS_RX_BYTES, n);
                progress = true;
            } else if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                c->d_rd = false;
            } else if (n == 0 || errno != EINTR) {
                c->d_eof = true;
                c->keep_alive = false;
                if (c->active && !c->req_done) {
                    h_close(&c->base); /* the client gave up mid-request */
                    return;
                }
                progress = true;
            }
        }
        /* 3. the next request (or the HTTP/2 client preface: hand the connection over) */
        if (!c->active && !c->closing && c->din.len > 0 && !c->h1_seen &&
            c->base.chain->codec != KM_DP_CODEC_HTTP1) {
            int pf = km__dp_h2_preface(c->din.p + c->din.off, c->din.len);
            if (pf > 0 || c->base.chain->codec == KM_DP_CODEC_HTTP2) {
                h_handoff_h2(c);
                return;
            }
            if (pf == 0 && !c->d_eof)
                break; /* a prefix of the preface: wait for more */
        }
        if (!c->active && !c->closing && c->din.len > 0) {
            struct km_http1_request req;
            int st = 0;
            char err[128] = "";
            int rc = km_http1_parse_request_head(c->din.p + c->din.off, c->din.len, NULL, &req,
                                                 &st, err, sizeof(err));
            if (rc == KM_HTTP1_DONE) {
                h_start(c, &req);
                progress = true;
            } else if (rc == KM_HTTP1_ERROR || c->din.len >= H_MAX_HEAD) {
                if (c->hst)
                    km_dp_stat_inc(c->hst, w->id, KM_DP_HS_RX_PARSE_ERROR);
                c->active = true; /* so that the reply is accounted like a request */
                c->req_done = false;
                c->resp_head_done = c->resp_done = false;
                c->ci = c->ei = -1;
                c->keep_alive = false;
                if (c->hst)
                    km_dp_stat_inc(c->hst, w->id, KM_DP_HS_RQ_ACTIVE);
                h_local_reply(c, rc == KM_HTTP1_ERROR && st ? st : 431,
                              err[0] ? err : "request head too large");
                progress = true;
            }
        }
        if (!c->active && c->d_eof && !c->closing) {
            c->closing = true; /* nothing (complete) left to serve */
            progress = true;
        }
        /* 4. request body, upstream I/O, response */
        if (h_move_req_body(c))
            progress = true;
        struct km_dp_uconn *u = c->up;
        if (c->active && u && !u->connecting && !u->eof && c->uout.len > 0) {
            ssize_t n = u->ssl ? km__dp_tls_send(u->ssl, c->uout.p + c->uout.off, c->uout.len,
                                                 &u->wwant)
                               : send(u->fd, c->uout.p + c->uout.off, c->uout.len, MSG_NOSIGNAL);
            if (n > 0) {
                u->wwant = 0;
                hbuf_consume(&c->uout, (size_t)n);
                km_dp_stat_add(c->base.pub->cst[c->ci], w->id, KM_DP_CS_TX_BYTES, n);
                progress = true;
            } else if (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                u->eof = true;
                progress = true;
            }
        }
        if (h_want_up_read(c) && c->up->rd && hbuf_reserve(&c->uin, 16384)) {
            u = c->up;
            size_t room = c->uin.cap - c->uin.off - c->uin.len;
            uint8_t *at = c->uin.p + c->uin.off + c->uin.len;
            ssize_t n = u->ssl ? km__dp_tls_recv(u->ssl, at, room, &u->rwant)
                               : recv(u->fd, at, room, 0);
            if (n > 0) {
                u->rd = (size_t)n == room || (u->ssl && km__dp_tls_pending(u->ssl) > 0);
                u->rwant = 0;
                c->uin.len += (size_t)n;
                km_dp_stat_add(c->base.pub->cst[c->ci], w->id, KM_DP_CS_RX_BYTES, n);
                progress = true;
            } else if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                u->rd = false;
            } else if (n == 0 || errno != EINTR) {
                u->eof = true;
                progress = true;
            }
        }
        if (h_move_resp(c))
            progress = true;
        if (h_check_up_eof(c))
            progress = true;
        /* 5. the end of the exchange */
        if (c->active && c->resp_done) {
            if (!c->req_done) {
                c->keep_alive = false; /* the rest of the request body cannot be skipped */
                c->closing = true;
            }
            h_end_request(c);
            progress = true;
        }
        if (!progress)
            break;
    }
    /* what to wait for */
    unsigned dev = (h_want_down_read(c) ? KM_IO_READ | c->d_rwant : 0) |
                   (c->dout.len ? KM_IO_WRITE | c->d_wwant : 0);
    if (!h_watch_down(c, dev)) {
        h_close(&c->base);
        return;
    }
    struct km_dp_uconn *u = c->up;
    if (u) {
        unsigned uev = u->connecting ? (u->hs && u->hs_want ? u->hs_want : KM_IO_WRITE)
                       : u->eof      ? 0
                                     : ((h_want_up_read(c) ? KM_IO_READ | u->rwant : 0) |
                                        (c->uout.len ? KM_IO_WRITE | u->wwant : 0));
        if (!h_watch(w->loop, &u->io, u->fd, uev, uconn_on_event, u)) {
            h_close(&c->base);
            return;
        }
    }
    if (dev == 0 && !c->active && !c->closing && c->dout.len == 0)
        h_close(&c->base); /* nothing can happen any more */
}

static void
h_close(struct km_dp_conn *base)
{
    struct hconn *c = (struct hconn *)base;
    if (c->active) {
        c->req_done = false; /* not reusable */
        h_end_request(c);
    }
    h_release_upstream(c, false);
    km_io_free(c->io);
    km_timer_free(c->timer);
    km_timer_free(c->kick);
    if (c->ssl) {
        km__dp_tls_notify(c->ssl);
        km__dp_tls_free(c->ssl);
    }
    if (c->fd != -1)
        close(c->fd);
    hbuf_free(&c->din);
    hbuf_free(&c->dout);
    hbuf_free(&c->uin);
    hbuf_free(&c->uout);
    hbuf_free(&c->replay);
    km__dp_conn_unlink(base);
    km__dp_pub_unref(base->pub);
    km__dp_peer_free(base->peer);
    free(c);
}

/* HTTP/2 with prior knowledge: http2_proxy.c takes the socket, the bytes read so far and our
 * place in the worker's list; this connection goes away without closing the socket. */
static void
h_handoff_h2(struct hconn *c)
{
    km_io_free(c->io);
    c->io = NULL;
    int fd = c->fd;
    if (c->ssl) {
        /* HTTP/2 over TLS found here (no ALPN): http2_proxy.c gets a TLS pipe (tls.c) */
        fd = km__dp_tls_relay(c->base.w, c->base.pub, c->fd, c->ssl);
        c->ssl = NULL;
        c->fd = -1;
        if (fd < 0) {
            h_close(&c->base);
            return;
        }
    }
    km__dp_h2_takeover(&c->base, fd, &c->local, c->din.p + c->din.off, c->din.len);
    km_timer_free(c->timer);
    hbuf_free(&c->din);
    hbuf_free(&c->dout);
    hbuf_free(&c->uin);
    hbuf_free(&c->uout);
    hbuf_free(&c->replay);
    km__dp_pub_unref(c->base.pub);
    km__dp_peer_free(c->base.peer); /* NULL: km__dp_h2_takeover moved it */
    free(c);
}

static void
h_drain(struct km_dp_conn *base)
{
    struct hconn *c = (struct hconn *)base;
    c->keep_alive = false;
    if (!c->active && c->dout.len == 0) {
        h_close(base);
        return;
    }
    if (!c->active)
        c->closing = true; /* an answer is being flushed */
}

void
km__dp_http_accept(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                   const struct km_dp_chain *chain, int fd)
{
    km__dp_http_accept_peer(w, pub, lidx, chain, fd, NULL);
}

void
km__dp_http_accept_peer(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                        const struct km_dp_chain *chain, int fd, struct km_dp_peer *peer)
{
    km__dp_http_accept_tls(w, pub, lidx, chain, fd, NULL, peer);
}

void
km__dp_http_accept_tls(struct km_dp_worker *w, struct km_dp_pub *pub, size_t lidx,
                       const struct km_dp_chain *chain, int fd, void *ssl, struct km_dp_peer *peer)
{
    struct hconn *c = calloc(1, sizeof(*c));
    if (!c) {
        km_dp_stat_inc(pub->lst[lidx], w->id, KM_DP_LS_OVERFLOW);
        km__dp_peer_free(peer);
        km__dp_tls_free(ssl);
        close(fd);
        return;
    }
    c->ssl = ssl;
    c->base.peer = peer;
    c->base.pub = km__dp_pub_ref(pub);
    c->base.l = &pub->snap->listeners[lidx];
    c->base.chain = chain;
    c->base.lst = pub->lst[lidx];
    c->base.close = h_close;
    c->base.drain = h_drain;
    c->fd = fd;
    c->d_rd = true;
    c->ci = c->ei = -1;
    socklen_t sl = sizeof(c->local);
    if (getsockname(fd, (struct sockaddr *)&c->local, &sl) == -1)
        memset(&c->local, 0, sizeof(c->local));
    c->hst = pub->hst[pub->hst_off[lidx] + (size_t)(chain - c->base.l->chains)];
    km__dp_conn_link(w, &c->base);
    c->timer = km_timer_new(w->loop, H_IDLE_MS, h_on_route_timeout, c);
    h_run(c);
}
