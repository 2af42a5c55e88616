/* HTTP/2 in the HTTP connection manager (nghttp2), both sides, and the protocol translation.
 *
 * Downstream. http_proxy.c hands a connection over (km__dp_h2_takeover) when its chain's codec
 * is HTTP2, or AUTO and the first bytes are the client preface "PRI * HTTP/2.0" (h2c with prior
 * knowledge; TLS/ALPN comes with mTLS). The connection runs an nghttp2 server session; each
 * stream is an exchange (struct xs): its pseudo-headers and fields are routed with router.h
 * using the worker's newest config (when the listener is still there), then proxied to the
 * cluster: HTTP/2 when cluster->http2, else HTTP/1.1 (a gRPC request, content-type
 * application/grpc*, to an HTTP/1.1 cluster is answered UNAVAILABLE). Local replies (404, 503,
 * 504, ...) are HTTP/2 responses, and for gRPC requests trailers-only responses whose
 * grpc-status follows Envoy's mapping (404 -> 12 UNIMPLEMENTED, 503 -> 14 UNAVAILABLE, 504 ->
 * 4 DEADLINE_EXCEEDED, ...).
 *
 * Upstream HTTP/2. Per worker, connections by (cluster, endpoint address) multiplex streams;
 * one takes new streams while it has fewer than the peer's SETTINGS_MAX_CONCURRENT_STREAMS
 * (at most 128) and did not send GOAWAY, else another one is opened. Idle connections close
 * after 60 s. A connect failure or timeout is retried once on another endpoint; a stream
 * refused (REFUSED_STREAM, GOAWAY) before any request body byte left is retried the same way.
 *
 * HTTP/1.1 downstream requests to HTTP/2 clusters (struct km_dp_h2x, engine_int.h): http_proxy.c
 * routes the request and hands it over as an exchange without a d2conn (xs.h1): the request
 * line and fields become pseudo-headers and lowercased fields (hop-by-hop ones dropped), the
 * decoded body goes out as DATA; the HTTP/1 connection is woken (a deferred callback) and takes
 * the response head, body and end from here; trailers are dropped. Errors before the head are
 * local responses like above (503), a reset after it cuts the response short.
 *
 * Upstream HTTP/1.1 for HTTP/2 streams: one connection per exchange (not pooled), the request
 * body chunked unless a content-length came, the response body decoded (Content-Length,
 * chunked, until close) into DATA frames, hop-by-hop fields dropped, names lowercased.
 *
 * Flow control: both sessions run without automatic WINDOW_UPDATE; received DATA is consumed
 * (the window reopened) only when the other side took the bytes, so a stream buffers at most
 * its window (64 KiB) per direction; HTTP/1.1 upstream reads stop at 64 KiB buffered. Data
 * providers defer when their buffer is empty and are resumed when bytes arrive. Trailers
 * (grpc-status, grpc-message) are forwarded; RST_STREAM travels both ways (a client cancel
 * resets the upstream stream, an upstream reset after the response head resets the client's
 * stream, before it answers 503); drain sends GOAWAY and lets the streams finish.
 *
 * Reentrancy: work that touches another connection's session only submits to it and arms that
 * connection's zero-delay "kick" timer; each connection pumps its own session. */
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/h2conn.h>
#include <km/common/http1.h>
#include <km/common/util.h>
#include <km/dp/engine_int.h>
#include <km/dp/router.h>

#define X_HIGH            (64u * 1024u) /* buffered bytes per direction (HTTP/1.1 sides) */
#define X_OUT_HIGH        (256u * 1024u) /* a session's serialized output not yet written */
#define X_MAX_FIELDS      128
#define X_MAX_HEAD        (64u * 1024u)
#define X_CONN_WINDOW     (1 << 20)
#define X_DOWN_STREAMS    256
#define X_UP_MAX_STREAMS  128u
#define X_UP_IDLE_MS      60000
#define X_MAX_ATTEMPTS    2
#define X_READ_CHUNK      16384

static const uint8_t x_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

int
km__dp_h2_preface(const uint8_t *p, size_t n)
{
    size_t plen = sizeof(x_preface) - 1;
    size_t k = n < plen ? n : plen;
    if (memcmp(p, x_preface, k) != 0)
        return -1;
    return n >= plen ? 1 : 0;
}

static void
x_timer_stop(struct km_timer *t)
{
    if (t)
        km_timer_stop(t);
}

/* ---- header lists (owned copies, NUL terminated) ---- */

struct hdrs {
    nghttp2_nv *nv;
    size_t n, cap, bytes;
};

static int
hdrs_add(struct hdrs *h, const void *name, size_t nl, const void *value, size_t vl)
{
    if (h->n >= X_MAX_FIELDS || h->bytes + nl + vl + 32 > X_MAX_HEAD)
        return -1;
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 16;
        h->nv = km_xrealloc(h->nv, h->cap * sizeof(*h->nv));
    }
    uint8_t *p = km_xmalloc(nl + vl + 2);
    memcpy(p, name, nl);
    p[nl] = 0;
    memcpy(p + nl + 1, value, vl);
    p[nl + 1 + vl] = 0;
    h->nv[h->n++] = (nghttp2_nv){.name = p, .namelen = nl, .value = p + nl + 1, .valuelen = vl};
    h->bytes += nl + vl + 32;
    return 0;
}

static int
hdrs_adds(struct hdrs *h, const char *name, const char *value)
{
    return hdrs_add(h, name, strlen(name), value, strlen(value));
}

static void
hdrs_free(struct hdrs *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->nv[i].name);
    free(h->nv);
    memset(h, 0, sizeof(*h));
}

static const char *
hdrs_get(const struct hdrs *h, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < h->n; i++)
        if (h->nv[i].namelen == nl && memcmp(h->nv[i].name, name, nl) == 0)
            return (const char *)h->nv[i].value;
    return NULL;
}

/* Hop-by-hop fields that never cross into HTTP/2 (RFC 9113 8.2.2). */
static bool
x_hop_by_hop(const char *n, size_t l)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection",
                                      "transfer-encoding", "upgrade", "te", "host"};
    for (size_t i = 0; i < KM_ARRAY_LEN(hop); i++)
        if (strlen(hop[i]) == l && strncasecmp(hop[i], n, l) == 0)
            return true;
    return false;
}

/* ---- types ---- */

struct d2conn;
struct u1;

enum { UP_NONE = 0, UP_H2, UP_H1 };

/* One proxied request/response (an HTTP/2 downstream stream). */
struct xs {
    struct km_dp_worker *w;           /* borrowed */
    struct km_dp_pub *pub;            /* ref: the config this exchange uses */
    struct km_dp_stat_block *hst;     /* borrowed (from pub), may be NULL */
    /* downstream */
    struct d2conn *dc;                /* NULL once the downstream stream is gone */
    int32_t did;
    struct xs *dprev, *dnext;
    /* request */
    struct hdrs rq;
    char *upath, *uauth;              /* owned: rewritten :path / :authority, or NULL */
    bool started, grpc, head_req, rq_end, rq_sent_any;
    struct km_bq rqb;                 /* request body not yet sent upstream */
    /* response */
    int status;
    char status_str[8];
    struct hdrs rs, tr;               /* response fields (no :status), trailers */
    bool rs_head, rs_head_sent, rs_end, local, counted;
    struct km_bq rsb;                 /* response body not yet sent downstream */
    bool d_deferred, u_deferred;
    /* upstream */
    int ukind;
    long ci, ei;
    bool ep_active;
    int attempts;
    struct km_dp_h2up *uc;            /* borrowed while the upstream stream exists */
    int32_t uid;
    struct xs *uprev, *unext;
    struct u1 *u1;                    /* owned: HTTP/1.1 upstream */
    struct km_timer *timer;           /* owned: route timeout */
    /* an HTTP/1.1 downstream (http_proxy.c, struct km_dp_h2x) instead of dc */
    bool h1;                          /* the HTTP/1 connection still holds the exchange */
    bool h1_err;                      /* reset after the head went: the response is cut short */
    void (*wake)(void *arg);          /* asks the HTTP/1 connection to look again (deferred) */
    void *wake_arg;
};

/* An exchange for an HTTP/1.1 downstream request (http_proxy.c). */
struct km_dp_h2x {
    struct xs x;                      /* first: freed as the exchange */
};

/* A downstream HTTP/2 connection. */
struct d2conn {
    struct km_dp_conn base;           /* first */
    int fd;
    struct sockaddr_storage local;
    struct km_io *io;                 /* owned */
    struct km_timer *kick;            /* owned */
    nghttp2_session *h2;              /* owned */
    struct km_bq out;
    struct xs *streams;
    int depth;
    bool dead, draining;
};

/* An upstream HTTP/2 connection (the worker's list). */
struct km_dp_h2up {
    struct km_dp_worker *w;           /* borrowed */
    int fd;
    struct km_io *io;                 /* owned */
    struct km_timer *timer;           /* owned: connect timeout, then idle timeout */
    struct km_timer *kick;            /* owned */
    nghttp2_session *h2;              /* owned */
    struct km_bq out;
    char *cluster, *addr;             /* owned */
    struct km_dp_stat_block *cst, *est; /* refs */
    bool connecting, dead, listed;
    bool tls;                         /* through a TLS pipe (the cluster's transport) */
    bool settings_seen;               /* the peer's SETTINGS arrived: its stream limit is known */
    int depth;
    size_t nstreams;                  /* streams attached (submitted or waiting for SETTINGS) */
    struct xs *streams;
    struct km_dp_h2up *prev, *next;
};

/* An HTTP/1.1 upstream connection of one exchange. */
struct u1 {
    struct xs *x;                     /* borrowed (owner) */
    int fd;
    struct km_io *io;                 /* owned */
    struct km_timer *timer;           /* owned: connect timeout */
    struct km_timer *kick;            /* owned */
    struct km_dp_stat_block *cst, *est; /* refs */
    bool connecting, eof, chunked_req, final_sent, head_done;
    struct km_bq out, in;
    enum km_http1_body framing;
    uint64_t left;
    struct km_http1_chunked ck;
};

static void xs_connect(struct xs *x, long exclude);
static void u2_unlink_stream(struct km_dp_h2up *uc, struct xs *x);
static void u2_dispatch(struct km_dp_h2up *uc);
static void xs_push_down(struct xs *x);
static void xs_local_reply(struct xs *x, int status, const char *msg);
static void xs_maybe_free(struct xs *x);
static void d2_kick(struct d2conn *dc);
static void u2_kick(struct km_dp_h2up *uc);
static void u1_free(struct xs *x);
static void u1_kick(struct u1 *u);

/* The downstream side (HTTP/2 stream or HTTP/1.1 connection) is still there. */
static bool
xs_down(const struct xs *x)
{
    return x->dc || x->h1;
}

static void
xs_wake_h1(struct xs *x)
{
    if (x->h1 && x->wake)
        x->wake(x->wake_arg);
}

/* ---- stats ---- */

static void
x_count_class(struct km_dp_stat_block *b, size_t w, int status, size_t i2, size_t i4, size_t i5)
{
    if (!b)
        return;
    if (status >= 200 && status < 300)
        km_dp_stat_inc(b, w, i2);
    else if (status >= 400 && status < 500)
        km_dp_stat_inc(b, w, i4);
    else if (status >= 500)
        km_dp_stat_inc(b, w, i5);
}

/* Ends the request's hold on its endpoint (least request) and counts its outcome. */
static void
xs_endpoint_done(struct xs *x, bool ok)
{
    if (!x->ep_active)
        return;
    x->ep_active = false;
    km_dp_stat_inc(x->pub->est[x->ci][x->ei], x->w->id, ok ? KM_DP_ES_RQ_SUCCESS
                                                            : KM_DP_ES_RQ_ERROR);
    km__dp_endpoint_done(x->pub, x->w->id, (size_t)x->ci, x->ei);
}

/* ---- flow control between the two sides ---- */

/* <n> request body bytes left for upstream: reopen the downstream window. */
static void
xs_rq_consumed(struct xs *x, size_t n)
{
    if (n == 0)
        return;
    x->rq_sent_any = true;
    xs_wake_h1(x);
    if (!x->dc)
        return;
    if (nghttp2_session_consume(x->dc->h2, x->did, n) != 0)
        nghttp2_session_consume_connection(x->dc->h2, n);
    d2_kick(x->dc);
}

/* <n> response body bytes went downstream: reopen the upstream window or read on. */
static void
xs_rs_consumed(struct xs *x, size_t n)
{
    if (n == 0)
        return;
    if (x->ukind == UP_H2 && x->uc) {
        if (nghttp2_session_consume(x->uc->h2, x->uid, n) != 0)
            nghttp2_session_consume_connection(x->uc->h2, n);
        u2_kick(x->uc);
    } else if (x->ukind == UP_H1 && x->u1) {
        u1_kick(x->u1);
    }
}

/* Drops the buffered response body (nobody will send it): credit its upstream connection. */
static void
xs_drop_rsb(struct xs *x)
{
    size_t n = x->rsb.len;
    km_bq_deinit(&x->rsb);
    if (n && x->ukind == UP_H2 && x->uc)
        nghttp2_session_consume_connection(x->uc->h2, n);
}

static void
xs_drop_rqb(struct xs *x)
{
    size_t n = x->rqb.len;
    km_bq_deinit(&x->rqb);
    if (n && x->dc)
        nghttp2_session_consume_connection(x->dc->h2, n);
}

/* New request body bytes or its end: wake the upstream side. */
static void
xs_notify_up(struct xs *x)
{
    if (x->ukind == UP_H2 && x->uc && x->uid > 0) {
        if (x->u_deferred) {
            x->u_deferred = false;
            nghttp2_session_resume_data(x->uc->h2, x->uid);
        }
        u2_kick(x->uc);
    } else if (x->ukind == UP_H1 && x->u1) {
        u1_kick(x->u1);
    }
}

/* ---- the upstream side goes away ---- */

/* Cancels whatever runs upstream (client gone, local reply, timeout). */
static void
xs_up_cancel(struct xs *x)
{
    if (x->ukind == UP_H2 && x->uc && x->uid == 0) {
        u2_unlink_stream(x->uc, x); /* never submitted */
        x->uc = NULL;
    } else if (x->ukind == UP_H2 && x->uc) {
        nghttp2_submit_rst_stream(x->uc->h2, NGHTTP2_FLAG_NONE, x->uid, NGHTTP2_CANCEL);
        u2_kick(x->uc);
    } else if (x->ukind == UP_H1 && x->u1) {
        u1_free(x);
    }
    xs_endpoint_done(x, false);
}

static void
xs_reset_down(struct xs *x, uint32_t code)
{
    if (x->h1) {
        x->h1_err = true;
        xs_wake_h1(x);
    }
    if (!x->dc)
        return;
    nghttp2_submit_rst_stream(x->dc->h2, NGHTTP2_FLAG_NONE, x->did, code);
    d2_kick(x->dc);
}

/* The upstream side ended: normally (the response is complete) or not (<why> for the local
 * reply, <code> the HTTP/2 error for a reset). <retry>: the request may go elsewhere. */
static void
xs_up_ended(struct xs *x, bool retry, uint32_t code, const char *why)
{
    if (x->local || !xs_down(x)) {
        xs_endpoint_done(x, false);
        return;
    }
    if (x->rs_end) {
        xs_endpoint_done(x, x->status > 0 && x->status < 500);
        xs_push_down(x);
        return;
    }
    xs_endpoint_done(x, false);
    if (!x->rs_head) {
        if (retry && !x->rq_sent_any && x->attempts < X_MAX_ATTEMPTS) {
            xs_connect(x, x->ei);
            return;
        }
        xs_local_reply(x, 503, why);
        return;
    }
    xs_reset_down(x, code == NGHTTP2_NO_ERROR ? NGHTTP2_INTERNAL_ERROR : code);
}

/* ---- local replies and the response head downstream ---- */

static int
x_grpc_status_of(int http)
{
    switch (http) {
    case 400: return KM_GRPC_INTERNAL;
    case 401: return KM_GRPC_UNAUTHENTICATED;
    case 403: return KM_GRPC_PERMISSION_DENIED;
    case 404: return KM_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503: return KM_GRPC_UNAVAILABLE;
    case 504: return KM_GRPC_DEADLINE_EXCEEDED;
    default: return KM_GRPC_UNKNOWN;
    }
}

static void
xs_local_reply(struct xs *x, int status, const char *msg)
{
    if (x->rs_head_sent) {
        xs_up_cancel(x);
        xs_reset_down(x, NGHTTP2_INTERNAL_ERROR);
        x->local = true;
        return;
    }
    x->local = true;
    xs_up_cancel(x);
    xs_drop_rsb(x);
    hdrs_free(&x->rs);
    hdrs_free(&x->tr);
    char buf[32];
    if (x->grpc) {
        /* trailers-only */
        x->status = 200;
        snprintf(buf, sizeof(buf), "%d", x_grpc_status_of(status));
        char *enc = km_grpc_pct_encode(msg);
        hdrs_adds(&x->rs, "content-type", "application/grpc");
        hdrs_adds(&x->rs, "grpc-status", buf);
        if (enc[0])
            hdrs_adds(&x->rs, "grpc-message", enc);
        free(enc);
    } else {
        x->status = status;
        size_t n = x->head_req ? 0 : strlen(msg);
        snprintf(buf, sizeof(buf), "%zu", strlen(msg));
        hdrs_adds(&x->rs, "content-type", "text/plain");
        hdrs_adds(&x->rs, "content-length", buf);
        km_bq_push(&x->rsb, msg, n);
    }
    x->rs_head = x->rs_end = true;
    xs_push_down(x);
}

static ssize_t
d_resp_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
            uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct xs *x = source->ptr;
    size_t n = km_bq_pop(&x->rsb, buf, length);
    if (x->rsb.len == 0 && x->rs_end) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (x->tr.n > 0 &&
            nghttp2_submit_trailer(session, stream_id, x->tr.nv, x->tr.n) == 0)
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    } else if (n == 0) {
        x->d_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    xs_rs_consumed(x, n);
    return (ssize_t)n;
}

/* Moves what the response has to the downstream session. */
static void
xs_push_down(struct xs *x)
{
    struct d2conn *dc = x->dc;
    if (x->h1 && x->rs_head)
        xs_wake_h1(x); /* http_proxy.c takes the response from here */
    if (!dc || !x->rs_head)
        return;
    if (!x->rs_head_sent) {
        x->rs_head_sent = true;
        if (!x->counted) {
            x->counted = true;
            x_count_class(x->hst, x->w->id, x->status, KM_DP_HS_RQ_2XX, KM_DP_HS_RQ_4XX,
                          KM_DP_HS_RQ_5XX);
        }
        snprintf(x->status_str, sizeof(x->status_str), "%d", x->status);
        nghttp2_nv *nv = km_xcalloc(x->rs.n + 1, sizeof(*nv));
        nv[0] = (nghttp2_nv){.name = (uint8_t *)":status", .namelen = 7,
                             .value = (uint8_t *)x->status_str,
                             .valuelen = strlen(x->status_str)};
        memcpy(nv + 1, x->rs.nv, x->rs.n * sizeof(*nv));
        int rc;
        if (x->rs_end && x->rsb.len == 0 && x->tr.n == 0) {
            rc = nghttp2_submit_response(dc->h2, x->did, nv, x->rs.n + 1, NULL);
        } else {
            nghttp2_data_provider dp = {.source.ptr = x, .read_callback = d_resp_read};
            rc = nghttp2_submit_response(dc->h2, x->did, nv, x->rs.n + 1, &dp);
        }
        free(nv);
        if (rc != 0)
            xs_reset_down(x, NGHTTP2_INTERNAL_ERROR);
    } else if (x->d_deferred && (x->rsb.len > 0 || x->rs_end)) {
        x->d_deferred = false;
        nghttp2_session_resume_data(dc->h2, x->did);
    }
    d2_kick(dc);
}

/* ---- the exchange ---- */

static void
xs_on_timeout(struct km_timer *t, void *arg)
{
    struct xs *x = arg;
    if (x->ci >= 0)
        km_dp_stat_inc(x->pub->cst[x->ci], x->w->id, KM_DP_CS_RQ_TIMEOUT);
    if (x->hst)
        km_dp_stat_inc(x->hst, x->w->id, KM_DP_HS_RQ_TIMEOUT);
    xs_local_reply(x, 504, "upstream request timeout"); /* resets when the head went out */
}

static void
xs_free(struct xs *x)
{
    if (x->u1)
        u1_free(x);
    xs_endpoint_done(x, false);
    if (x->started && x->hst)
        km_dp_stat_add(x->hst, x->w->id, KM_DP_HS_RQ_ACTIVE, -1);
    km_timer_free(x->timer);
    hdrs_free(&x->rq);
    hdrs_free(&x->rs);
    hdrs_free(&x->tr);
    free(x->upath);
    free(x->uauth);
    km_bq_deinit(&x->rqb);
    km_bq_deinit(&x->rsb);
    km__dp_pub_unref(x->pub);
    free(x);
}

static void
xs_maybe_free(struct xs *x)
{
    if (!xs_down(x) && !x->uc)
        xs_free(x);
}

static void d2_drain(struct km_dp_conn *base);

/* The config for a new stream: the worker's newest when the listener is still there (a
 * kept-alive connection follows route changes); returns the chain to route with. */
static const struct km_dp_chain *
xs_pick_config(struct xs *x, size_t *lidx)
{
    struct d2conn *dc = x->dc;
    struct km_dp_worker *w = x->w;
    struct km_dp_pub *pub = dc->base.pub;
    const struct km_dp_chain *chain = dc->base.chain;
    size_t li = (size_t)(dc->base.l - pub->snap->listeners);
    if (w->pub && w->pub != pub) {
        const struct km_dp_snapshot *s = w->pub->snap;
        const struct km_dp_listener *old = dc->base.l;
        for (size_t i = 0; i < s->nlisteners; i++) {
            const struct km_dp_listener *l = &s->listeners[i];
            if (strcmp(l->name ? l->name : "", old->name ? old->name : "") != 0 ||
                strcmp(l->addr_str ? l->addr_str : "", old->addr_str ? old->addr_str : "") != 0)
                continue;
            const struct km_dp_chain *ch = km__dp_chain_select(l, &dc->local);
            /* mTLS switched on or off: the connection keeps its config and drains */
            if (ch && (ch->tls != NULL) != (dc->base.chain->tls != NULL)) {
                d2_drain(&dc->base);
                break;
            }
            if (ch && ch->kind == KM_DP_FILTER_HCM) {
                pub = w->pub;
                chain = ch;
                li = i;
            }
            break;
        }
    }
    x->pub = km__dp_pub_ref(pub);
    *lidx = li;
    x->hst = pub->hst ? pub->hst[pub->hst_off[li] +
                                 (size_t)(chain - pub->snap->listeners[li].chains)]
                      : NULL;
    return chain;
}

/* The request head is complete: route it. */
static void
xs_start(struct xs *x)
{
    struct km_dp_worker *w = x->w;
    size_t li = 0;
    const struct km_dp_chain *chain = xs_pick_config(x, &li);
    x->started = true;
    if (x->hst) {
        km_dp_stat_inc(x->hst, w->id, KM_DP_HS_RQ_TOTAL);
        km_dp_stat_inc(x->hst, w->id, KM_DP_HS_RQ_ACTIVE);
    }
    const char *method = hdrs_get(&x->rq, ":method");
    const char *path = hdrs_get(&x->rq, ":path");
    const char *auth = hdrs_get(&x->rq, ":authority");
    const char *ct = hdrs_get(&x->rq, "content-type");
    if (!auth)
        auth = hdrs_get(&x->rq, "host");
    x->grpc = ct && strncasecmp(ct, "application/grpc", 16) == 0;
    x->head_req = method && strcmp(method, "HEAD") == 0;
    if (!method || !path || strcmp(method, "CONNECT") == 0) {
        if (x->hst)
            km_dp_stat_inc(x->hst, w->id, KM_DP_HS_UNSUPPORTED);
        xs_local_reply(x, 403, "CONNECT is not allowed");
        return;
    }
    if (!km__dp_http_rbac_allow(w, x->pub, li, chain, x->dc->base.peer)) {
        xs_local_reply(x, 403, "RBAC: access denied"); /* gRPC: PERMISSION_DENIED */
        return;
    }
    const struct km_dp_route_config *rc = chain ? chain->rc : NULL;
    struct km_http1_header hh[X_MAX_FIELDS];
    size_t nh = 0;
    for (size_t i = 0; i < x->rq.n && nh < X_MAX_FIELDS; i++, nh++)
        hh[nh] = (struct km_http1_header){.name = (const char *)x->rq.nv[i].name,
                                          .name_len = x->rq.nv[i].namelen,
                                          .value = (const char *)x->rq.nv[i].value,
                                          .value_len = x->rq.nv[i].valuelen};
    const struct km_dp_route *r = rc ? km_dp_route_match(rc, auth ? auth : "", path, hh, nh) : NULL;
    if (!r) {
        if (x->hst)
            km_dp_stat_inc(x->hst, w->id, KM_DP_HS_NO_ROUTE);
        xs_local_reply(x, 404, "");
        return;
    }
    if (r->direct_status) {
        xs_local_reply(x, (int)r->direct_status, "");
        return;
    }
    w->seq++;
    const struct km_dp_weighted *wc =
        km_dp_route_pick_cluster(r, w->seq * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)x);
    long ci = wc ? km__dp_cluster_index(x->pub->snap, wc->cluster) : -1;
    if (ci < 0) {
        if (x->hst)
            km_dp_stat_inc(x->hst, w->id, KM_DP_HS_NO_CLUSTER);
        xs_local_reply(x, 503, "cluster not found");
        return;
    }
    x->ci = ci;
    size_t plen = strlen(path);
    char *rp = km_xmalloc(plen + 4096);
    long rl = km_dp_route_rewrite_path(r, path, plen, rp, plen + 4096);
    if (rl > 0)
        x->upath = rp;
    else
        free(rp);
    if (r->host_rewrite)
        x->uauth = km_xstrdup(r->host_rewrite);
    km_dp_stat_inc(x->pub->cst[ci], w->id, KM_DP_CS_RQ_TOTAL);
    if (r->timeout_ms) {
        x->timer = km_timer_new(w->loop, r->timeout_ms, xs_on_timeout, x);
    }
    xs_connect(x, -1);
}

/* ---- upstream HTTP/2 connections ---- */

static ssize_t
u_req_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
           uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct xs *x = source->ptr;
    size_t n = km_bq_pop(&x->rqb, buf, length);
    if (x->rqb.len == 0 && x->rq_end) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
        x->u_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    xs_rq_consumed(x, n);
    return (ssize_t)n;
}

static void
u2_unlink_stream(struct km_dp_h2up *uc, struct xs *x)
{
    if (x->uprev)
        x->uprev->unext = x->unext;
    else
        uc->streams = x->unext;
    if (x->unext)
        x->unext->uprev = x->uprev;
    x->uprev = x->unext = NULL;
    uc->nstreams--;
    if (uc->nstreams == 0 && !uc->dead && !uc->connecting)
        km_timer_arm(uc->timer, X_UP_IDLE_MS);
}

static void
u2_list_remove(struct km_dp_h2up *uc)
{
    if (!uc->listed)
        return;
    struct km_dp_worker *w = uc->w;
    if (uc->prev)
        uc->prev->next = uc->next;
    else
        w->h2up = uc->next;
    if (uc->next)
        uc->next->prev = uc->prev;
    uc->prev = uc->next = NULL;
    uc->listed = false;
}

/* The connection failed or ended: every stream on it ends (retried when <retry>). */
static void
u2_fail(struct km_dp_h2up *uc, bool retry, const char *why)
{
    if (uc->dead)
        return;
    uc->dead = true;
    u2_list_remove(uc);
    while (uc->streams) {
        struct xs *x = uc->streams;
        if (x->uid > 0 && uc->h2)
            nghttp2_session_set_stream_user_data(uc->h2, x->uid, NULL);
        xs_drop_rsb(x);
        u2_unlink_stream(uc, x);
        x->uc = NULL;
        x->uid = 0;
        xs_up_ended(x, retry, NGHTTP2_INTERNAL_ERROR, why);
        xs_maybe_free(x);
    }
}

static void
u2_destroy(struct km_dp_h2up *uc)
{
    u2_fail(uc, false, "upstream connection closed");
    size_t w = uc->w->id;
    km_io_free(uc->io);
    km_timer_free(uc->timer);
    km_timer_free(uc->kick);
    if (uc->h2)
        nghttp2_session_del(uc->h2);
    if (uc->fd >= 0)
        close(uc->fd);
    km_bq_deinit(&uc->out);
    km_dp_stat_add(uc->cst, w, KM_DP_CS_CX_ACTIVE, -1);
    km_dp_stat_add(uc->est, w, KM_DP_ES_CX_ACTIVE, -1);
    km_dp_stats_unref(uc->w->eng->stats, uc->cst);
    km_dp_stats_unref(uc->w->eng->stats, uc->est);
    free(uc->cluster);
    free(uc->addr);
    free(uc);
}

static void
u2_connect_failed(struct km_dp_h2up *uc, bool timeout)
{
    size_t w = uc->w->id;
    km_dp_stat_inc(uc->cst, w, KM_DP_CS_CONNECT_FAIL);
    if (timeout)
        km_dp_stat_inc(uc->cst, w, KM_DP_CS_CONNECT_TIMEOUT);
    km_dp_stat_inc(uc->est, w, KM_DP_ES_CONNECT_FAIL);
    u2_fail(uc, true, "upstream connect error or disconnect/reset before headers. reset reason: "
                      "connection failure");
}

static int
u2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
             size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct xs *x = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!x || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            st = st * 10 + (value[i] - '0');
        x->status = st;
        return 0;
    }
    struct hdrs *h = x->rs_head ? &x->tr : &x->rs;
    if (hdrs_add(h, name, namelen, value, valuelen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int
u2_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        struct km_dp_h2up *uc = ud;
        uc->settings_seen = true;
        u2_dispatch(uc);
        return 0;
    }
    if (frame->hd.stream_id == 0)
        return 0;
    struct xs *x = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!x || x->local)
        return 0;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        if (!x->rs_head) {
            if (x->status < 200 && !end) {
                hdrs_free(&x->rs); /* interim response: not forwarded */
                return 0;
            }
            x->rs_head = true;
            x_timer_stop(x->timer);
            x_count_class(x->pub->cst[x->ci], x->w->id, x->status, KM_DP_CS_RQ_2XX,
                          KM_DP_CS_RQ_4XX, KM_DP_CS_RQ_5XX);
        }
        if (end)
            x->rs_end = true;
        xs_push_down(x);
    } else if (frame->hd.type == NGHTTP2_DATA && end) {
        x->rs_end = true;
        xs_push_down(x);
    }
    return 0;
}

static int
u2_on_data(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
           size_t len, void *ud)
{
    struct km_dp_h2up *uc = ud;
    struct xs *x = nghttp2_session_get_stream_user_data(session, stream_id);
    km_dp_stat_add(uc->cst, uc->w->id, KM_DP_CS_RX_BYTES, (int64_t)len);
    if (!x || x->local || !xs_down(x)) {
        nghttp2_session_consume(session, stream_id, len);
        return 0;
    }
    km_bq_push(&x->rsb, data, len);
    xs_push_down(x);
    return 0;
}

static int
u2_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t code, void *ud)
{
    struct km_dp_h2up *uc = ud;
    struct xs *x = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!x)
        return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    if (x->rsb.len > 0 && !x->rs_end)
        xs_drop_rsb(x); /* cut short: nothing more to send */
    else if (x->rsb.len > 0)
        nghttp2_session_consume_connection(session, x->rsb.len); /* credit now */
    u2_unlink_stream(uc, x);
    x->uc = NULL;
    char why[160];
    snprintf(why, sizeof(why), "upstream connect error or disconnect/reset before headers. "
             "reset reason: %s", code == NGHTTP2_REFUSED_STREAM ? "remote refused stream reset"
                                                               : "remote reset");
    xs_up_ended(x, code == NGHTTP2_REFUSED_STREAM, code, why);
    xs_maybe_free(x);
    return 0;
}

static int
u2_pump(struct km_dp_h2up *uc)
{
    for (;;) {
        bool produced = false;
        while (uc->out.len < X_OUT_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(uc->h2, &data);
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            km_bq_push(&uc->out, data, (size_t)n);
            produced = true;
        }
        while (uc->out.len > 0) {
            ssize_t n = send(uc->fd, km_bq_data(&uc->out), uc->out.len, MSG_NOSIGNAL);
            if (n > 0) {
                km_dp_stat_add(uc->cst, uc->w->id, KM_DP_CS_TX_BYTES, n);
                km_bq_pop(&uc->out, NULL, (size_t)n);
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                break;
            return -1;
        }
        if (!produced || uc->out.len > 0)
            return 0;
    }
}

static void
u2_process(struct km_dp_h2up *uc, unsigned events)
{
    uc->depth++;
    if (uc->connecting && !uc->dead && (events & (KM_IO_WRITE | KM_IO_READ))) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (getsockopt(uc->fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1)
            err = errno;
        if (err != 0) {
            u2_connect_failed(uc, false);
        } else {
            uc->connecting = false;
            km_timer_stop(uc->timer);
            events |= KM_IO_READ;
        }
    }
    if (!uc->dead && !uc->connecting && (events & KM_IO_READ)) {
        uint8_t *buf = uc->w->scratch;
        for (int i = 0; i < 16 && !uc->dead && uc->out.len < X_OUT_HIGH; i++) {
            ssize_t n = recv(uc->fd, buf, X_READ_CHUNK, 0);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                break;
            if (n <= 0) {
                u2_fail(uc, false, "upstream connect error or disconnect/reset before headers. "
                                   "reset reason: connection termination");
                break;
            }
            if (nghttp2_session_mem_recv(uc->h2, buf, (size_t)n) < 0) {
                u2_fail(uc, false, "upstream protocol error");
                break;
            }
        }
    }
    if (!uc->dead && !uc->connecting) {
        if (u2_pump(uc) != 0)
            u2_fail(uc, false, "upstream connect error or disconnect/reset before headers. "
                               "reset reason: connection termination");
        else if (!nghttp2_session_want_read(uc->h2) && !nghttp2_session_want_write(uc->h2) &&
                 uc->out.len == 0)
            u2_fail(uc, true, "upstream connection ended (GOAWAY)");
        else if (!nghttp2_session_check_request_allowed(uc->h2))
            u2_list_remove(uc); /* GOAWAY received: no new streams here */
    }
    uc->depth--;
    if (uc->dead) {
        if (uc->depth == 0)
            u2_destroy(uc);
        return;
    }
    unsigned ev = uc->connecting ? KM_IO_WRITE
                                 : ((uc->out.len < X_OUT_HIGH ? KM_IO_READ : 0) |
                                    (uc->out.len > 0 ? KM_IO_WRITE : 0));
    km_io_set(uc->io, ev);
}

static void
u2_on_io(struct km_io *io, int fd, unsigned events, void *arg)
{
    u2_process(arg, events);
}

static void
u2_on_kick(struct km_timer *t, void *arg)
{
    u2_process(arg, 0);
}

static void
u2_on_timer(struct km_timer *t, void *arg)
{
    struct km_dp_h2up *uc = arg;
    if (uc->connecting)
        u2_connect_failed(uc, true);
    else if (uc->nstreams == 0)
        u2_fail(uc, false, "idle");
    if (uc->dead && uc->depth == 0)
        u2_destroy(uc);
}

static void
u2_kick(struct km_dp_h2up *uc)
{
    if (!uc->dead)
        km_timer_arm(uc->kick, 0);
}

static struct km_dp_h2up *
u2_new(struct km_dp_worker *w, const struct km_dp_cluster *cl, const struct km_dp_endpoint *ep,
       int fd)
{
    struct km_dp_h2up *uc = km_xcalloc(1, sizeof(*uc));
    uc->w = w;
    uc->fd = fd;
    uc->cluster = km_xstrdup(cl->name);
    uc->addr = km_xstrdup(ep->addr_str);
    uc->tls = cl->tls != NULL;
    uc->cst = km_dp_stats_ref(w->eng->stats, KM_DP_STAT_CLUSTER, cl->name, NULL);
    uc->est = km_dp_stats_ref(w->eng->stats, KM_DP_STAT_ENDPOINT, cl->name, ep->addr_str);
    km_dp_stat_inc(uc->cst, w->id, KM_DP_CS_CX_TOTAL);
    km_dp_stat_inc(uc->cst, w->id, KM_DP_CS_CX_ACTIVE);
    km_dp_stat_inc(uc->est, w->id, KM_DP_ES_CX_TOTAL);
    km_dp_stat_inc(uc->est, w->id, KM_DP_ES_CX_ACTIVE);
    uc->connecting = true;
    uc->timer = km_timer_new(w->loop, cl->connect_timeout_ms ? cl->connect_timeout_ms : 5000,
                             u2_on_timer, uc);
    uc->kick = km_timer_new(w->loop, 0, u2_on_kick, uc);
    km_timer_stop(uc->kick);
    uc->io = km_io_new(w->loop, fd, KM_IO_WRITE, u2_on_io, uc);
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_session_callbacks_set_on_header_callback(cbs, u2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, u2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, u2_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, u2_on_stream_close);
    int rc = nghttp2_session_client_new2(&uc->h2, cbs, uc, opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    if (rc != 0 || !uc->io) {
        uc->h2 = NULL;
        uc->dead = true;
        return uc;
    }
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    nghttp2_submit_settings(uc->h2, NGHTTP2_FLAG_NONE, iv, KM_ARRAY_LEN(iv));
    nghttp2_session_set_local_window_size(uc->h2, NGHTTP2_FLAG_NONE, 0, X_CONN_WINDOW);
    uc->next = w->h2up;
    if (w->h2up)
        w->h2up->prev = uc;
    w->h2up = uc;
    uc->listed = true;
    return uc;
}

/* Streams a connection may carry: the peer's limit (at most 128) once known; before its
 * SETTINGS arrive, streams wait attached (not submitted) up to 128. */
static size_t
u2_capacity(const struct km_dp_h2up *uc)
{
    if (!uc->settings_seen)
        return X_UP_MAX_STREAMS;
    uint32_t max = nghttp2_session_get_remote_settings(uc->h2,
                                                       NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return max > X_UP_MAX_STREAMS ? X_UP_MAX_STREAMS : max;
}

/* A connection to <ep> with room for one more stream, made with the transport the cluster
 * has now (<tls>: a cluster switched to mTLS or off it never reuses the other kind). */
static struct km_dp_h2up *
u2_find(struct km_dp_worker *w, const char *cluster, const char *addr, bool tls)
{
    for (struct km_dp_h2up *uc = w->h2up; uc; uc = uc->next) {
        if (uc->dead || uc->tls != tls || strcmp(uc->addr, addr) != 0 ||
            strcmp(uc->cluster, cluster) != 0)
            continue;
        if (!nghttp2_session_check_request_allowed(uc->h2))
            continue;
        if (uc->nstreams < u2_capacity(uc))
            return uc;
    }
    return NULL;
}

void
km__dp_h2_worker_deinit(struct km_dp_worker *w)
{
    while (w->h2up) {
        struct km_dp_h2up *uc = w->h2up;
        u2_list_remove(uc);
        u2_destroy(uc);
    }
}

/* Submits the attached exchange's request on its connection. Returns 0 or -1. */
static int
xs_submit_h2(struct xs *x)
{
    struct km_dp_h2up *uc = x->uc;
    nghttp2_nv *nv = km_xcalloc(x->rq.n + 1, sizeof(*nv));
    size_t n = 0;
    bool has_auth = hdrs_get(&x->rq, ":authority") != NULL;
    for (size_t i = 0; i < x->rq.n; i++) {
        nghttp2_nv f = x->rq.nv[i];
        const char *name = (const char *)f.name;
        if (x->upath && strcmp(name, ":path") == 0) {
            f.value = (uint8_t *)x->upath;
            f.valuelen = strlen(x->upath);
        } else if (x->uauth && strcmp(name, ":authority") == 0) {
            f.value = (uint8_t *)x->uauth;
            f.valuelen = strlen(x->uauth);
        } else if (has_auth && strcmp(name, "host") == 0) {
            continue;
        }
        nv[n++] = f;
    }
    if (!has_auth && x->uauth)
        nv[n++] = (nghttp2_nv){.name = (uint8_t *)":authority", .namelen = 10,
                               .value = (uint8_t *)x->uauth, .valuelen = strlen(x->uauth)};
    nghttp2_data_provider dp = {.source.ptr = x, .read_callback = u_req_read};
    bool body = !(x->rq_end && x->rqb.len == 0);
    int32_t id = nghttp2_submit_request(uc->h2, NULL, nv, n, body ? &dp : NULL, x);
    free(nv);
    if (id < 0)
        return -1;
    x->uid = id;
    x->u_deferred = false;
    km_dp_stat_inc(x->pub->est[x->ci][x->ei], x->w->id, KM_DP_ES_RQ_TOTAL);
    u2_kick(uc);
    return 0;
}

/* Attaches the exchange to <uc>; submitted at once when the peer's limit is known. */
static void
xs_attach_h2(struct xs *x, struct km_dp_h2up *uc)
{
    x->uc = uc;
    x->uid = 0;
    x->ukind = UP_H2;
    x->uprev = NULL;
    x->unext = uc->streams;
    if (uc->streams)
        uc->streams->uprev = x;
    uc->streams = x;
    uc->nstreams++;
    if (!uc->connecting)
        km_timer_stop(uc->timer);
    if (uc->settings_seen)
        u2_dispatch(uc);
}

/* Submits the waiting streams within the peer's limit and sends the others elsewhere. */
static void
u2_dispatch(struct km_dp_h2up *uc)
{
    size_t cap = u2_capacity(uc), nsub = 0;
    for (struct xs *x = uc->streams; x; x = x->unext)
        if (x->uid > 0)
            nsub++;
    struct xs *x = uc->streams, *next;
    for (; x; x = next) {
        next = x->unext;
        if (x->uid > 0)
            continue;
        if (nsub < cap && xs_submit_h2(x) == 0) {
            nsub++;
            continue;
        }
        /* no room here after all: another connection (not counted as an attempt) */
        u2_unlink_stream(uc, x);
        x->uc = NULL;
        x->ep_active = false;
        km__dp_endpoint_done(x->pub, x->w->id, (size_t)x->ci, x->ei);
        x->attempts--;
        if (nsub < cap)
            xs_local_reply(x, 503, "upstream stream could not be opened");
        else
            xs_connect(x, -1);
        next = uc->streams; /* the list may have changed: rescan (submitted ones are skipped) */
        if (uc->dead)
            return;
    }
}

/* ---- upstream HTTP/1.1 (translation) ---- */

static void u1_run(struct u1 *u);

static void
u1_free(struct xs *x)
{
    struct u1 *u = x->u1;
    if (!u)
        return;
    x->u1 = NULL;
    size_t w = x->w->id;
    km_io_free(u->io);
    km_timer_free(u->timer);
    km_timer_free(u->kick);
    close(u->fd);
    km_bq_deinit(&u->out);
    km_bq_deinit(&u->in);
    km_dp_stat_add(u->cst, w, KM_DP_CS_CX_ACTIVE, -1);
    km_dp_stat_add(u->est, w, KM_DP_ES_CX_ACTIVE, -1);
    km_dp_stats_unref(x->w->eng->stats, u->cst);
    km_dp_stats_unref(x->w->eng->stats, u->est);
    free(u);
}

static void
u1_kick(struct u1 *u)
{
    km_timer_arm(u->kick, 0);
}

static void
u1_on_kick(struct km_timer *t, void *arg)
{
    u1_run(arg);
}

static void
u1_on_io(struct km_io *io, int fd, unsigned events, void *arg)
{
    u1_run(arg);
}

static void
u1_connect_failed(struct u1 *u, bool timeout)
{
    struct xs *x = u->x;
    size_t w = x->w->id;
    km_dp_stat_inc(u->cst, w, KM_DP_CS_CONNECT_FAIL);
    if (timeout)
        km_dp_stat_inc(u->cst, w, KM_DP_CS_CONNECT_TIMEOUT);
    km_dp_stat_inc(u->est, w, KM_DP_ES_CONNECT_FAIL);
    u1_free(x);
    xs_up_ended(x, true, NGHTTP2_INTERNAL_ERROR,
                "upstream connect error or disconnect/reset before headers. reset reason: "
                "connection failure");
}

static void
u1_on_timer(struct km_timer *t, void *arg)
{
    struct u1 *u = arg;
    if (u->connecting)
        u1_connect_failed(u, true);
}

/* Builds the HTTP/1.1 request head. */
static void
u1_head(struct u1 *u, const struct xs *x, const char *cluster)
{
    const char *method = hdrs_get(&x->rq, ":method");
    const char *path = x->upath ? x->upath : hdrs_get(&x->rq, ":path");
    const char *auth = x->uauth ? x->uauth : hdrs_get(&x->rq, ":authority");
    if (!auth)
        auth = hdrs_get(&x->rq, "host");
    struct km_sbuf b;
    km_sbuf_init(&b);
    km_sbuf_printf(&b, "%s %s HTTP/1.1\r\nhost: %s\r\n", method, path, auth ? auth : cluster);
    bool has_cl = false;
    for (size_t i = 0; i < x->rq.n; i++) {
        const char *n = (const char *)x->rq.nv[i].name;
        size_t nl = x->rq.nv[i].namelen;
        if (n[0] == ':' || x_hop_by_hop(n, nl))
            continue;
        if (strcmp(n, "content-length") == 0)
            has_cl = true;
        km_sbuf_add(&b, n, nl);
        km_sbuf_add(&b, ": ", 2);
        km_sbuf_add(&b, (const char *)x->rq.nv[i].value, x->rq.nv[i].valuelen);
        km_sbuf_add(&b, "\r\n", 2);
    }
    bool body = !(x->rq_end && x->rqb.len == 0);
    u->chunked_req = body && !has_cl;
    if (u->chunked_req)
        km_sbuf_puts(&b, "transfer-encoding: chunked\r\n");
    km_sbuf_puts(&b, "\r\n");
    km_bq_push(&u->out, b.ptr, b.len);
    km_sbuf_deinit(&b);
    if (!u->chunked_req)
        u->final_sent = true;
}

/* The response head from u->in; returns false when more bytes are needed. */
static bool
u1_resp_head(struct u1 *u, struct xs *x)
{
    struct km_http1_response r;
    int st = 0;
    char err[128];
    int rc = km_http1_parse_response(km_bq_data(&u->in), u->in.len, NULL,
                                     x->head_req ? KM_HTTP1_REQ_HEAD : 0, &r, &st, err,
                                     sizeof(err));
    if (rc == KM_HTTP1_INCOMPLETE && u->in.len < X_HIGH)
        return false;
    if (rc != KM_HTTP1_DONE || r.status == 101 || r.framing == KM_HTTP1_BODY_TUNNEL) {
        u1_free(x);
        xs_endpoint_done(x, false);
        xs_local_reply(x, 502, "upstream sent an invalid response");
        return false;
    }
    if (r.status < 200) {
        km_bq_pop(&u->in, NULL, r.head_len);
        return true;
    }
    hdrs_free(&x->rs);
    char name[256];
    for (size_t i = 0; i < r.nheaders; i++) {
        const struct km_http1_header *h = &r.headers[i];
        if (h->name_len >= sizeof(name) || x_hop_by_hop(h->name, h->name_len))
            continue;
        for (size_t k = 0; k < h->name_len; k++)
            name[k] = (char)((h->name[k] >= 'A' && h->name[k] <= 'Z') ? h->name[k] + 32
                                                                        : h->name[k]);
        if (hdrs_add(&x->rs, name, h->name_len, h->value, h->value_len) != 0)
            break;
    }
    x->status = r.status;
    u->framing = r.framing;
    u->left = r.content_length;
    if (r.framing == KM_HTTP1_BODY_CHUNKED)
        km_http1_chunked_init(&u->ck, 0, 0);
    km_bq_pop(&u->in, NULL, r.head_len);
    u->head_done = true;
    x->rs_head = true;
    x_timer_stop(x->timer);
    x_count_class(x->pub->cst[x->ci], x->w->id, x->status, KM_DP_CS_RQ_2XX, KM_DP_CS_RQ_4XX,
                  KM_DP_CS_RQ_5XX);
    if (r.framing == KM_HTTP1_BODY_NONE ||
        (r.framing == KM_HTTP1_BODY_LENGTH && r.content_length == 0))
        x->rs_end = true;
    return true;
}

static void
u1_run(struct u1 *u)
{
    struct xs *x = u->x;
    size_t w = x->w->id;
    if (u->connecting) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1)
            err = errno;
        if (err != 0) {
            u1_connect_failed(u, false);
            return;
        }
        struct pollfd p = {.fd = u->fd, .events = POLLOUT};
        if (poll(&p, 1, 0) != 1) {
            km_io_set(u->io, KM_IO_WRITE);
            return; /* still connecting */
        }
        u->connecting = false;
        km_timer_stop(u->timer);
        km_dp_stat_inc(x->pub->est[x->ci][x->ei], w, KM_DP_ES_RQ_TOTAL);
    }
    for (int round = 0; round < 64; round++) {
        bool progress = false;
        /* request body */
        while (u->out.len < X_HIGH && x->rqb.len > 0) {
            uint8_t *tmp = x->w->scratch;
            size_t n = km_bq_pop(&x->rqb, tmp, X_READ_CHUNK);
            if (u->chunked_req) {
                char head[24];
                size_t hl = km_http1_chunk_head(head, n);
                km_bq_push(&u->out, head, hl);
                km_bq_push(&u->out, tmp, n);
                km_bq_push(&u->out, "\r\n", 2);
            } else {
                km_bq_push(&u->out, tmp, n);
            }
            xs_rq_consumed(x, n);
            progress = true;
        }
        if (x->rq_end && x->rqb.len == 0 && !u->final_sent) {
            km_bq_push(&u->out, "0\r\n\r\n", 5);
            u->final_sent = true;
        }
        if (u->out.len > 0 && !u->eof) {
            ssize_t n = send(u->fd, km_bq_data(&u->out), u->out.len, MSG_NOSIGNAL);
            if (n > 0) {
                km_bq_pop(&u->out, NULL, (size_t)n);
                km_dp_stat_add(u->cst, w, KM_DP_CS_TX_BYTES, n);
                progress = true;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                u->eof = true;
            }
        }
        /* response */
        if (!u->eof && !x->rs_end && x->rsb.len < X_HIGH && u->in.len < X_HIGH) {
            uint8_t *buf = x->w->scratch;
            ssize_t n = recv(u->fd, buf, X_READ_CHUNK, 0);
            if (n > 0) {
                km_bq_push(&u->in, buf, (size_t)n);
                km_dp_stat_add(u->cst, w, KM_DP_CS_RX_BYTES, n);
                progress = true;
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                u->eof = true;
                progress = true;
            }
        }
        if (!u->head_done && u->in.len > 0) {
            if (!u1_resp_head(u, x)) {
                if (!x->u1)
                    return; /* answered 502 */
            } else {
                progress = true;
                xs_push_down(x);
            }
        }
        while (u->head_done && !x->rs_end && u->in.len > 0 && x->rsb.len < X_HIGH) {
            const uint8_t *in = km_bq_data(&u->in);
            if (u->framing == KM_HTTP1_BODY_LENGTH) {
                size_t n = u->in.len < u->left ? u->in.len : (size_t)u->left;
                km_bq_push(&x->rsb, in, n);
                km_bq_pop(&u->in, NULL, n);
                u->left -= n;
                x->rs_end = u->left == 0;
            } else if (u->framing == KM_HTTP1_BODY_CLOSE) {
                km_bq_push(&x->rsb, in, u->in.len);
                km_bq_pop(&u->in, NULL, u->in.len);
            } else {
                size_t consumed = 0, dlen = 0;
                const uint8_t *data = NULL;
                int st = 0;
                char err[128];
                int rc = km_http1_chunked_parse(&u->ck, in, u->in.len, &consumed, &data, &dlen,
                                                &st, err, sizeof(err));
                if (rc == KM_HTTP1_ERROR) {
                    u->eof = true;
                    break;
                }
                km_bq_push(&x->rsb, data, dlen);
                km_bq_pop(&u->in, NULL, consumed);
                if (rc == KM_HTTP1_DONE)
                    x->rs_end = true;
                else if (consumed == 0)
                    break;
            }
            progress = true;
            xs_push_down(x);
        }
        if (x->rs_end) {
            /* complete: the connection is not pooled */
            u1_free(x);
            xs_up_ended(x, false, NGHTTP2_NO_ERROR, "");
            return;
        }
        if (u->eof && u->in.len == 0) {
            if (u->head_done && u->framing == KM_HTTP1_BODY_CLOSE) {
                x->rs_end = true;
                continue;
            }
            bool no_head = !u->head_done;
            u1_free(x);
            xs_up_ended(x, false, NGHTTP2_INTERNAL_ERROR,
                        no_head ? "upstream connect error or disconnect/reset before "
                                         "headers. reset reason: connection termination"
                                       : "");
            return;
        }
        if (!progress)
            break;
    }
    unsigned ev = 0;
    if (!u->eof && !x->rs_end && x->rsb.len < X_HIGH && u->in.len < X_HIGH)
        ev |= KM_IO_READ;
    if (u->out.len > 0 && !u->eof)
        ev |= KM_IO_WRITE;
    km_io_set(u->io, ev);
}

/* Starts an HTTP/1.1 exchange with <ep> on the connected-or-connecting <fd>. */
static void
u1_start(struct xs *x, const struct km_dp_cluster *cl, const struct km_dp_endpoint *ep, int fd)
{
    struct km_dp_worker *w = x->w;
    struct u1 *u = km_xcalloc(1, sizeof(*u));
    u->x = x;
    u->fd = fd;
    u->cst = km_dp_stats_ref(w->eng->stats, KM_DP_STAT_CLUSTER, cl->name, NULL);
    u->est = km_dp_stats_ref(w->eng->stats, KM_DP_STAT_ENDPOINT, cl->name, ep->addr_str);
    km_dp_stat_inc(u->cst, w->id, KM_DP_CS_CX_TOTAL);
    km_dp_stat_inc(u->cst, w->id, KM_DP_CS_CX_ACTIVE);
    km_dp_stat_inc(u->est, w->id, KM_DP_ES_CX_TOTAL);
    km_dp_stat_inc(u->est, w->id, KM_DP_ES_CX_ACTIVE);
    u->connecting = true;
    u->timer = km_timer_new(w->loop, cl->connect_timeout_ms ? cl->connect_timeout_ms : 5000,
                            u1_on_timer, u);
    u->kick = km_timer_new(w->loop, 0, u1_on_kick, u);
    km_timer_stop(u->kick);
    u->io = km_io_new(w->loop, fd, KM_IO_WRITE, u1_on_io, u);
    x->u1 = u;
    x->ukind = UP_H1;
    u1_head(u, x, cl->name);
}

/* ---- choosing the upstream ---- */

static void
xs_connect(struct xs *x, long exclude)
{
    struct km_dp_worker *w = x->w;
    struct km_dp_pub *pub = x->pub;
    const struct km_dp_cluster *cl = &pub->snap->clusters[x->ci];
    struct km_dp_stat_block *cst = pub->cst[x->ci];
    if (!cl->http2 && x->grpc) {
        xs_local_reply(x, 503, "gRPC needs an HTTP/2 upstream");
        return;
    }
    x->ukind = UP_NONE;
    for (;;) {
        long ei = km__dp_endpoint_pick(pub, w->id, (size_t)x->ci, exclude);
        if (ei < 0) {
            km_dp_stat_inc(cst, w->id,
                           x->attempts == 0 ? KM_DP_CS_NONE_HEALTHY : KM_DP_CS_CONNECT_EXCEEDED);
            xs_local_reply(x, 503, "no healthy upstream");
            return;
        }
        const struct km_dp_endpoint *ep = &cl->eps[ei];
        x->ei = ei;
        x->ep_active = true;
        x->attempts++;
        struct km_dp_h2up *uc = cl->http2 ? u2_find(w, cl->name, ep->addr_str, cl->tls != NULL)
                                           : NULL;
        if (uc) {
            xs_attach_h2(x, uc);
            return;
        }
        int fd = km__dp_connect(ep);
        if (fd < 0) {
            xs_endpoint_done(x, false);
            km_dp_stat_inc(cst, w->id, KM_DP_CS_CONNECT_FAIL);
            km_dp_stat_inc(pub->est[x->ci][ei], w->id, KM_DP_ES_CONNECT_FAIL);
            if (x->attempts >= X_MAX_ATTEMPTS) {
                km_dp_stat_inc(cst, w->id, KM_DP_CS_CONNECT_EXCEEDED);
                xs_local_reply(x, 503, "upstream connect error or disconnect/reset before "
                                       "headers. reset reason: connection failure");
                return;
            }
            exclude = ei;
            continue;
        }
        if (!cl->http2) {
            u1_start(x, cl, ep, fd);
            return;
        }
        uc = u2_new(w, cl, ep, fd);
        if (uc->dead) {
            u2_destroy(uc);
            xs_local_reply(x, 503, "upstream connection could not be set up");
            return;
        }
        xs_attach_h2(x, uc);
        return;
    }
}

/* ---- downstream HTTP/2 connections ---- */

static void
d2_unlink_stream(struct d2conn *dc, struct xs *x)
{
    if (x->dprev)
        x->dprev->dnext = x->dnext;
    else
        dc->streams = x->dnext;
    if (x->dnext)
        x->dnext->dprev = x->dprev;
    x->dprev = x->dnext = NULL;
}

/* The downstream stream is gone (closed, reset, connection lost). */
static void
xs_down_gone(struct xs *x, bool complete)
{
    struct d2conn *dc = x->dc;
    xs_drop_rqb(x);
    d2_unlink_stream(dc, x);
    x->dc = NULL;
    x_timer_stop(x->timer);
    if (!complete || !x->rs_end) {
        /* the client cancelled or the connection broke: cancel upstream */
        if (x->ukind == UP_H2 && x->uc)
            xs_drop_rsb(x);
        xs_up_cancel(x);
    }
    xs_maybe_free(x);
}

static int
d2_on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct d2conn *dc = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct xs *x = km_xcalloc(1, sizeof(*x));
    x->w = dc->base.w;
    x->dc = dc;
    x->did = frame->hd.stream_id;
    x->ci = x->ei = -1;
    x->dnext = dc->streams;
    if (dc->streams)
        dc->streams->dprev = x;
    dc->streams = x;
    nghttp2_session_set_stream_user_data(session, x->did, x);
    return 0;
}

static int
d2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
             size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct xs *x = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!x || frame->hd.type != NGHTTP2_HEADERS || x->started)
        return 0; /* request trailers are dropped */
    if (hdrs_add(&x->rq, name, namelen, value, valuelen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int
d2_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct xs *x = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!x)
        return 0;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (end)
        x->rq_end = true;
    if (frame->hd.type == NGHTTP2_HEADERS && !x->started) {
        xs_start(x);
        return 0;
    }
    if (end)
        xs_notify_up(x);
    return 0;
}

static int
d2_on_data(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
           size_t len, void *ud)
{
    struct xs *x = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!x || x->local || x->rs_end || (x->ukind == UP_H2 && !x->uc) ||
        (x->ukind == UP_H1 && !x->u1)) {
        nghttp2_session_consume(session, stream_id, len); /* nobody wants it */
        return 0;
    }
    km_bq_push(&x->rqb, data, len);
    xs_notify_up(x);
    return 0;
}

static int
d2_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t code, void *ud)
{
    struct xs *x = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!x)
        return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    xs_down_gone(x, code == NGHTTP2_NO_ERROR);
    return 0;
}

static void
d2_destroy(struct d2conn *dc)
{
    while (dc->streams) {
        struct xs *x = dc->streams;
        if (dc->h2)
            nghttp2_session_set_stream_user_data(dc->h2, x->did, NULL);
        xs_down_gone(x, false);
    }
    km_io_free(dc->io);
    km_timer_free(dc->kick);
    if (dc->h2)
        nghttp2_session_del(dc->h2);
    close(dc->fd);
    km_bq_deinit(&dc->out);
    km__dp_conn_unlink(&dc->base);
    km__dp_pub_unref(dc->base.pub);
    km__dp_peer_free(dc->base.peer);
    free(dc);
}

static int
d2_pump(struct d2conn *dc)
{
    size_t w = dc->base.w->id;
    for (;;) {
        bool produced = false;
        while (dc->out.len < X_OUT_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(dc->h2, &data);
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            km_bq_push(&dc->out, data, (size_t)n);
            produced = true;
        }
        while (dc->out.len > 0) {
            ssize_t n = send(dc->fd, km_bq_data(&dc->out), dc->out.len, MSG_NOSIGNAL);
            if (n > 0) {
                km_dp_stat_add(dc->base.lst, w, KM_DP_LS_TX_BYTES, n);
                km_bq_pop(&dc->out, NULL, (size_t)n);
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                break;
            return -1;
        }
        if (!produced || dc->out.len > 0)
            return 0;
    }
}

static void
d2_process(struct d2conn *dc, unsigned events)
{
    size_t w = dc->base.w->id;
    dc->depth++;
    if (!dc->dead && (events & KM_IO_READ)) {
        uint8_t *buf = dc->base.w->scratch;
        for (int i = 0; i < 16 && !dc->dead && dc->out.len < X_OUT_HIGH; i++) {
            ssize_t n = recv(dc->fd, buf, X_READ_CHUNK, 0);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                break;
            if (n <= 0) {
                dc->dead = true;
                break;
            }
            km_dp_stat_add(dc->base.lst, w, KM_DP_LS_RX_BYTES, n);
            if (nghttp2_session_mem_recv(dc->h2, buf, (size_t)n) < 0) {
                /* a protocol error: nghttp2 queued a GOAWAY, try to send it */
                (void)d2_pump(dc);
                dc->dead = true;
                break;
            }
        }
    }
    if (!dc->dead) {
        if (d2_pump(dc) != 0)
            dc->dead = true;
        else if (!nghttp2_session_want_read(dc->h2) && !nghttp2_session_want_write(dc->h2) &&
                 dc->out.len == 0)
            dc->dead = true;
    }
    dc->depth--;
    if (dc->depth > 0)
        return;
    if (dc->dead) {
        d2_destroy(dc);
        return;
    }
    unsigned ev = (dc->out.len < X_OUT_HIGH ? KM_IO_READ : 0) | (dc->out.len ? KM_IO_WRITE : 0);
    km_io_set(dc->io, ev);
}

static void
d2_on_io(struct km_io *io, int fd, unsigned events, void *arg)
{
    d2_process(arg, events);
}

static void
d2_on_kick(struct km_timer *t, void *arg)
{
    d2_process(arg, 0);
}

static void
d2_kick(struct d2conn *dc)
{
    if (!dc->dead)
        km_timer_arm(dc->kick, 0);
}

static void
d2_close(struct km_dp_conn *base)
{
    struct d2conn *dc = (struct d2conn *)base;
    if (dc->depth > 0) {
        dc->dead = true;
        return;
    }
    d2_destroy(dc);
}

static void
d2_drain(struct km_dp_conn *base)
{
    struct d2conn *dc = (struct d2conn *)base;
    if (dc->draining || dc->dead)
        return;
    dc->draining = true;
    nghttp2_submit_goaway(dc->h2, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(dc->h2), NGHTTP2_NO_ERROR,
                          NULL, 0);
    d2_kick(dc);
}

void
km__dp_h2_takeover(struct km_dp_conn *old, int fd, const struct sockaddr_storage *local,
                   const uint8_t *data, size_t len)
{
    struct d2conn *dc = km_xcalloc(1, sizeof(*dc));
    dc->base.pub = km__dp_pub_ref(old->pub);
    dc->base.l = old->l;
    dc->base.chain = old->chain;
    dc->base.lst = old->lst;
    dc->base.peer = old->peer; /* moved */
    old->peer = NULL;
    dc->base.close = d2_close;
    dc->base.drain = d2_drain;
    km__dp_conn_replace(old, &dc->base);
    struct km_dp_worker *w = dc->base.w;
    dc->fd = fd;
    dc->local = *local;
    dc->kick = km_timer_new(w->loop, 0, d2_on_kick, dc);
    km_timer_stop(dc->kick);
    dc->io = km_io_new(w->loop, fd, KM_IO_READ, d2_on_io, dc);
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, d2_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, d2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, d2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, d2_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, d2_on_stream_close);
    int rc = nghttp2_session_server_new2(&dc->h2, cbs, dc, opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    if (rc != 0 || !dc->io) {
        dc->h2 = NULL;
        d2_destroy(dc);
        return;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, X_DOWN_STREAMS},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(dc->h2, NGHTTP2_FLAG_NONE, iv, KM_ARRAY_LEN(iv));
    nghttp2_session_set_local_window_size(dc->h2, NGHTTP2_FLAG_NONE, 0, X_CONN_WINDOW);
    if (w->draining)
        d2_drain(&dc->base);
    dc->depth++;
    if (len > 0 && nghttp2_session_mem_recv(dc->h2, data, len) < 0)
        dc->dead = true;
    dc->depth--;
    d2_process(dc, KM_IO_READ);
}

/* ---- HTTP/1.1 downstream requests to HTTP/2 clusters (http_proxy.c) ---- */

struct km_dp_h2x *
km__dp_h2x_start(struct km_dp_worker *w, struct km_dp_pub *pub, size_t ci, const char *method,
                 size_t mlen, const char *path, size_t plen, const char *authority,
                 const struct km_http1_header *h, size_t nh, bool body, void (*wake)(void *arg),
                 void *arg)
{
    struct km_dp_h2x *hx = km_xcalloc(1, sizeof(*hx));
    struct xs *x = &hx->x;
    x->w = w;
    x->pub = km__dp_pub_ref(pub);
    x->h1 = true;
    x->wake = wake;
    x->wake_arg = arg;
    x->ci = (long)ci;
    x->ei = -1;
    x->head_req = mlen == 4 && memcmp(method, "HEAD", 4) == 0;
    x->rq_end = !body;
    hdrs_add(&x->rq, ":method", 7, method, mlen);
    hdrs_adds(&x->rq, ":scheme", "http");
    hdrs_adds(&x->rq, ":authority", authority);
    hdrs_add(&x->rq, ":path", 5, path, plen);
    for (size_t i = 0; i < nh; i++) {
        if (x_hop_by_hop(h[i].name, h[i].name_len) ||
            (h[i].name_len == 14 && strncasecmp(h[i].name, "content-length", 14) == 0 &&
             !body))
            continue;
        char name[256];
        if (h[i].name_len >= sizeof(name))
            continue; /* the HTTP/1 parser's limits keep names far shorter */
        for (size_t k = 0; k < h[i].name_len; k++)
            name[k] = (char)((h[i].name[k] >= 'A' && h[i].name[k] <= 'Z') ? h[i].name[k] + 32
                                                                          : h[i].name[k]);
        if (hdrs_add(&x->rq, name, h[i].name_len, h[i].value, h[i].value_len) != 0)
            break; /* bounded like an HTTP/2 request's fields */
    }
    xs_connect(x, -1);
    return hx;
}

size_t
km__dp_h2x_room(const struct km_dp_h2x *hx)
{
    return hx->x.rqb.len < X_HIGH ? X_HIGH - hx->x.rqb.len : 0;
}

void
km__dp_h2x_send(struct km_dp_h2x *hx, const void *data, size_t len, bool end)
{
    struct xs *x = &hx->x;
    if (x->rq_end)
        return;
    if (len > 0)
        km_bq_push(&x->rqb, data, len);
    x->rq_end = end;
    xs_notify_up(x);
}

int
km__dp_h2x_head(struct km_dp_h2x *hx, char *buf, size_t cap, long *hl, int64_t *clen)
{
    struct xs *x = &hx->x;
    *hl = 0;
    *clen = -1;
    if (!x->rs_head || x->rs_head_sent)
        return 0;
    x->rs_head_sent = true;
    size_t at = 0;
    for (size_t i = 0; i < x->rs.n; i++) {
        const nghttp2_nv *f = &x->rs.nv[i];
        if (x_hop_by_hop((const char *)f->name, f->namelen))
            continue;
        if (f->namelen == 14 && memcmp(f->name, "content-length", 14) == 0) {
            char *end = NULL;
            errno = 0;
            long long v = strtoll((const char *)f->value, &end, 10);
            if (errno == 0 && end && *end == 0 && v >= 0)
                *clen = v;
        }
        if (at + f->namelen + f->valuelen + 4 > cap) {
            *hl = -1;
            break;
        }
        memcpy(buf + at, f->name, f->namelen);
        memcpy(buf + at + f->namelen, ": ", 2);
        memcpy(buf + at + f->namelen + 2, f->value, f->valuelen);
        memcpy(buf + at + f->namelen + 2 + f->valuelen, "\r\n", 2);
        at += f->namelen + f->valuelen + 4;
    }
    if (*hl == 0)
        *hl = (long)at;
    return x->status;
}

size_t
km__dp_h2x_read(struct km_dp_h2x *hx, uint8_t *buf, size_t cap)
{
    struct xs *x = &hx->x;
    if (!x->rs_head_sent)
        return 0;
    size_t n = km_bq_pop(&x->rsb, buf, cap);
    xs_rs_consumed(x, n);
    return n;
}

int
km__dp_h2x_state(const struct km_dp_h2x *hx)
{
    const struct xs *x = &hx->x;
    if (x->h1_err)
        return -1;
    return x->rs_head_sent && x->rs_end && x->rsb.len == 0 ? 1 : 0;
}

void
km__dp_h2x_free(struct km_dp_h2x *hx)
{
    if (!hx)
        return;
    struct xs *x = &hx->x;
    x->h1 = false;
    x->wake = NULL;
    xs_drop_rqb(x);
    if (x->ukind == UP_H2 && x->uc)
        xs_drop_rsb(x);
    xs_up_cancel(x);
    xs_maybe_free(x);
}
