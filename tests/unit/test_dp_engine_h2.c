/* kuma-dp proxy engine, HTTP/2: h2c downstream (prior knowledge) and HTTP/2 or HTTP/1.1
 * upstreams, with the gRPC server (include/km/common/grpc.h) as backend on its own loop thread
 * and the gRPC client or a small blocking nghttp2 client as downstream (127.0.0.1 only). */
#include <errno.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/loop.h>
#include <km/common/util.h>
#include <km/dp/engine.h>
#include <km/dp/snapshot.h>

#include "dp_util.h"
#include "test.h"

/* ---- backend: gRPC echo (and plain HTTP) on its own thread ---- */

struct gb {
    struct km_loop *loop;
    pthread_t th;
    struct km_grpc_server *srv;
    uint16_t port;
    atomic_int opened, closed, messages;
};

static int
gb_open(struct km_grpc_stream *s, void *ud)
{
    struct gb *b = ud;
    atomic_fetch_add(&b->opened, 1);
    return 0;
}

static void
gb_message(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    struct gb *b = ud;
    atomic_fetch_add(&b->messages, 1);
    km_grpc_stream_send(s, msg, len);
}

static void
gb_half_close(struct km_grpc_stream *s, void *ud)
{
    struct gb *b = ud;
    char m[64];
    snprintf(m, sizeof(m), "echoed %d, ok", atomic_load(&b->messages));
    km_grpc_stream_finish(s, KM_GRPC_FAILED_PRECONDITION, m);
}

static void
gb_close(struct km_grpc_stream *s, void *ud)
{
    struct gb *b = ud;
    atomic_fetch_add(&b->closed, 1);
}

static void
gb_http(const struct km_http_request *req, struct km_http_response *resp, void *ud)
{
    resp->status = strcmp(req->path, "/teapot") == 0 ? 418 : 200;
    resp->content_type = km_xstrdup("text/plain");
    resp->body = km_xasprintf("h1:%s %s [%.*s]", req->method, req->path, (int)req->body_len,
                              req->body ? (const char *)req->body : "");
    resp->body_len = strlen(resp->body);
}

static const struct km_grpc_method gb_methods_tmpl[] = {
    {.path = "/test.Echo/Bidi", .on_open = gb_open, .on_message = gb_message,
     .on_half_close = gb_half_close, .on_close = gb_close},
};
static struct km_grpc_method gb_methods[1];

static void *
gb_main(void *arg)
{
    struct gb *b = arg;
    km_loop_run(b->loop);
    return NULL;
}

static void
gb_start(struct gb *b)
{
    memset(b, 0, sizeof(*b));
    b->loop = km_loop_new();
    gb_methods[0] = gb_methods_tmpl[0];
    gb_methods[0].ud = b;
    struct km_grpc_server_opts o = {.methods = gb_methods, .nmethods = 1,
                                    .http_handler = gb_http, .http_ud = b,
                                    .max_concurrent_streams = 4};
    b->srv = km_grpc_server_new(b->loop, &o);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    ASSERT(listen(fd, 128) == 0);
    socklen_t sl = sizeof(sin);
    ASSERT(getsockname(fd, (struct sockaddr *)&sin, &sl) == 0);
    b->port = ntohs(sin.sin_port);
    char err[256];
    ASSERT(km_grpc_server_listen(b->srv, fd, NULL, NULL, err, sizeof(err)) == 0);
    ASSERT(pthread_create(&b->th, NULL, gb_main, b) == 0);
}

static void
gb_on_stop(void *arg)
{
    struct gb *b = arg;
    km_grpc_server_free(b->srv);
    km_loop_stop(b->loop);
}

static void
gb_stop(struct gb *b)
{
    km_loop_post(b->loop, gb_on_stop, b);
    pthread_join(b->th, NULL);
    km_loop_free(b->loop);
}

/* ---- snapshots: one HCM listener (codec AUTO), one route, one cluster ---- */

static struct km_dp_snapshot *
h2snap(uint64_t gen, uint16_t lport, const char *prefix, uint32_t timeout_ms, bool http2,
       const uint16_t *ports, size_t nports)
{
    struct km_dp_snapshot *s = km_xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->generation = gen;
    s->nlisteners = 1;
    s->listeners = km_xcalloc(1, sizeof(*s->listeners));
    struct km_dp_listener *l = &s->listeners[0];
    l->name = km_xstrdup("inbound:h2");
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, lport);
    memcpy(&l->addr, &sin, sizeof(sin));
    l->addrlen = sizeof(sin);
    l->addr_str = km_xasprintf("127.0.0.1:%u", lport);
    l->nchains = 1;
    l->chains = km_xcalloc(1, sizeof(*l->chains));
    struct km_dp_chain *ch = &l->chains[0];
    ch->kind = KM_DP_FILTER_HCM;
    ch->codec = KM_DP_CODEC_AUTO;
    ch->stat_prefix = km_xstrdup("h2in");
    struct km_dp_route_config *rc = km_xcalloc(1, sizeof(*rc));
    rc->name = km_xstrdup("rc");
    rc->nvhosts = 1;
    rc->vhosts = km_xcalloc(1, sizeof(*rc->vhosts));
    struct km_dp_vhost *vh = &rc->vhosts[0];
    vh->name = km_xstrdup("vh");
    vh->ndomains = 1;
    vh->domains = km_xcalloc(1, sizeof(char *));
    vh->domains[0] = km_xstrdup("*");
    vh->nroutes = 1;
    vh->routes = km_xcalloc(1, sizeof(*vh->routes));
    struct km_dp_route *r = &vh->routes[0];
    r->match = KM_DP_MATCH_PREFIX;
    r->path = km_xstrdup(prefix);
    r->case_sensitive = true;
    r->timeout_ms = timeout_ms;
    r->nclusters = 1;
    r->clusters = km_xcalloc(1, sizeof(*r->clusters));
    r->clusters[0].cluster = km_xstrdup("be");
    r->clusters[0].weight = 1;
    r->total_weight = 1;
    ch->inline_rc = rc;
    ch->rc = rc;
    s->nclusters = 1;
    s->clusters = km_xcalloc(1, sizeof(*s->clusters));
    struct km_dp_cluster *c = &s->clusters[0];
    c->name = km_xstrdup("be");
    c->connect_timeout_ms = 1000;
    c->http2 = http2;
    c->neps = nports;
    c->eps = km_xcalloc(nports ? nports : 1, sizeof(*c->eps));
    for (size_t j = 0; j < nports; j++) {
        dpt_sin_loopback(&sin, ports[j]);
        memcpy(&c->eps[j].addr, &sin, sizeof(sin));
        c->eps[j].addrlen = sizeof(sin);
        c->eps[j].addr_str = km_xasprintf("127.0.0.1:%u", ports[j]);
        c->eps[j].weight = 1;
        c->eps[j].healthy = true;
        c->eps[j].zone = km_xstrdup("");
    }
    return s;
}

/* ---- gRPC client side ---- */

struct tcall {
    struct km_sbuf got; /* concatenated echoed messages */
    int nmsg;
    bool closed;
    int status;
    char message[128];
};

static void
tc_message(struct km_grpc_call *c, const uint8_t *msg, size_t len, void *ud)
{
    struct tcall *t = ud;
    km_sbuf_add(&t->got, (const char *)msg, len);
    t->nmsg++;
}

static void
tc_close(struct km_grpc_call *c, int status, const char *message, void *ud)
{
    struct tcall *t = ud;
    t->closed = true;
    t->status = status;
    snprintf(t->message, sizeof(t->message), "%s", message ? message : "");
}

static bool
run_until(struct km_loop *l, const bool *flag, const int *count, int want, uint64_t ms)
{
    uint64_t end = dpt_now_ms() + ms;
    while (dpt_now_ms() < end) {
        if (flag && *flag)
            return true;
        if (count && *count >= want)
            return true;
        km_loop_run_once(l, 10);
    }
    return (flag && *flag) || (count && *count >= want);
}

struct env {
    struct gb b;
    int hold;
    uint16_t lport;
    struct km_dp_engine *e;
    struct km_loop *cl;
};

static void
env_start(struct env *v, unsigned workers)
{
    gb_start(&v->b);
    v->lport = dpt_reserve_port(&v->hold);
    struct km_dp_engine_opts o = {.concurrency = workers};
    v->e = km_dp_engine_new(&o);
    ASSERT(v->e != NULL);
    v->cl = km_loop_new();
}

static void
env_stop(struct env *v)
{
    km_dp_engine_free(v->e);
    close(v->hold);
    gb_stop(&v->b);
    km_loop_free(v->cl);
}

/* Sends <n> messages of varying sizes on <call> (echoed), checking each round trip when
 * <lockstep>, else all at once. */
static void
stream_messages(struct env *v, struct km_grpc_call *call, struct tcall *t, struct km_sbuf *sent,
                int from, int n)
{
    for (int i = from; i < from + n; i++) {
        size_t len = (size_t)(i % 7 == 0 ? 70000 + i : 10 + (i * 37) % 3000);
        char *m = km_xmalloc(len);
        for (size_t k = 0; k < len; k++)
            m[k] = (char)('a' + (k + (size_t)i) % 26);
        ASSERT(km_grpc_call_send(call, (const uint8_t *)m, len) == 0);
        km_sbuf_add(sent, m, len);
        free(m);
    }
}

KM_TEST(dp_engine_h2_grpc_bidi_echo)
{
    struct env v;
    env_start(&v, 2);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, &v.b.port, 1));
    struct km_grpc_client *c = km_grpc_client_new(v.cl, "127.0.0.1", v.lport, false, NULL);
    struct tcall t;
    memset(&t, 0, sizeof(t));
    km_sbuf_init(&t.got);
    struct km_grpc_call_cbs cbs = {.on_message = tc_message, .on_close = tc_close, .ud = &t};
    struct km_grpc_call *call = km_grpc_call_start(c, "/test.Echo/Bidi", NULL, &cbs);
    ASSERT(call != NULL);
    struct km_sbuf sent;
    km_sbuf_init(&sent);
    /* interleaved: 10 rounds of 20 messages, each round echoed before the next */
    for (int round = 0; round < 10; round++) {
        stream_messages(&v, call, &t, &sent, round * 20, 20);
        ASSERT(run_until(v.cl, NULL, &t.nmsg, (round + 1) * 20, 8000));
    }
    km_grpc_call_close_send(call);
    ASSERT(run_until(v.cl, &t.closed, NULL, 0, 8000));
    ASSERT_INT_EQ(t.nmsg, 200);
    ASSERT_INT_EQ(t.got.len, sent.len);
    ASSERT(memcmp(t.got.ptr, sent.ptr, sent.len) == 0);
    ASSERT_INT_EQ(t.status, KM_GRPC_FAILED_PRECONDITION);
    ASSERT_STR_EQ(t.message, "echoed 200, ok");
    km_sbuf_deinit(&t.got);
    km_sbuf_deinit(&sent);
    km_grpc_client_free(c);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_total"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_2xx"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_rq_total"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_rq_2xx"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_cx_total"), 1);
    env_stop(&v);
}

/* Many concurrent calls on one client connection: the backend allows 4 streams per
 * connection, so the engine opens more upstream connections. */
KM_TEST(dp_engine_h2_grpc_concurrent_streams)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, &v.b.port, 1));
    struct km_grpc_client *c = km_grpc_client_new(v.cl, "127.0.0.1", v.lport, false, NULL);
    enum { N = 10 };
    struct tcall t[N];
    struct km_grpc_call *calls[N];
    struct km_grpc_call_cbs cbs[N];
    for (int i = 0; i < N; i++) {
        memset(&t[i], 0, sizeof(t[i]));
        km_sbuf_init(&t[i].got);
        cbs[i] = (struct km_grpc_call_cbs){.on_message = tc_message, .on_close = tc_close,
                                           .ud = &t[i]};
        calls[i] = km_grpc_call_start(c, "/test.Echo/Bidi", NULL, &cbs[i]);
        ASSERT(calls[i] != NULL);
        char m[32];
        snprintf(m, sizeof(m), "call %d", i);
        ASSERT(km_grpc_call_send(calls[i], (const uint8_t *)m, strlen(m)) == 0);
    }
    for (int i = 0; i < N; i++)
        ASSERT(run_until(v.cl, NULL, &t[i].nmsg, 1, 8000));
    for (int i = 0; i < N; i++)
        km_grpc_call_close_send(calls[i]);
    for (int i = 0; i < N; i++) {
        ASSERT(run_until(v.cl, &t[i].closed, NULL, 0, 8000));
        char m[32];
        snprintf(m, sizeof(m), "call %d", i);
        ASSERT_STR_EQ(t[i].got.ptr, m);
        ASSERT_INT_EQ(t[i].status, KM_GRPC_FAILED_PRECONDITION);
        km_sbuf_deinit(&t[i].got);
    }
    km_grpc_client_free(c);
    ASSERT(dpt_stat_of(v.e, "cluster.be.upstream_cx_total") >= 3);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_rq_total"), N);
    env_stop(&v);
}

static void
one_call(struct env *v, const char *path, struct tcall *t)
{
    struct km_grpc_client *c = km_grpc_client_new(v->cl, "127.0.0.1", v->lport, false, NULL);
    memset(t, 0, sizeof(*t));
    km_sbuf_init(&t->got);
    struct km_grpc_call_cbs cbs = {.on_message = tc_message, .on_close = tc_close, .ud = t};
    struct km_grpc_call *call = km_grpc_call_start(c, path, NULL, &cbs);
    ASSERT(call != NULL);
    km_grpc_call_send(call, (const uint8_t *)"x", 1);
    km_grpc_call_close_send(call);
    ASSERT(run_until(v->cl, &t->closed, NULL, 0, 8000));
    km_grpc_client_free(c);
    km_sbuf_deinit(&t->got);
}

KM_TEST(dp_engine_h2_grpc_local_replies)
{
    struct env v;
    env_start(&v, 1);
    /* no endpoint: UNAVAILABLE */
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, NULL, 0));
    struct tcall t;
    one_call(&v, "/test.Echo/Bidi", &t);
    ASSERT_INT_EQ(t.status, KM_GRPC_UNAVAILABLE);
    ASSERT_STR_CONTAINS(t.message, "no healthy upstream");
    /* no route: UNIMPLEMENTED (Envoy maps 404 to 12) */
    dpt_publish_and_wait(v.e, h2snap(2, v.lport, "/other", 0, true, &v.b.port, 1));
    one_call(&v, "/test.Echo/Bidi", &t);
    ASSERT_INT_EQ(t.status, KM_GRPC_UNIMPLEMENTED);
    /* gRPC to an HTTP/1.1 cluster: UNAVAILABLE */
    dpt_publish_and_wait(v.e, h2snap(3, v.lport, "/", 0, false, &v.b.port, 1));
    one_call(&v, "/test.Echo/Bidi", &t);
    ASSERT_INT_EQ(t.status, KM_GRPC_UNAVAILABLE);
    /* a closed port: connect failure, UNAVAILABLE */
    int hold2;
    uint16_t dead = dpt_reserve_port(&hold2);
    dpt_publish_and_wait(v.e, h2snap(4, v.lport, "/", 0, true, &dead, 1));
    one_call(&v, "/test.Echo/Bidi", &t);
    ASSERT_INT_EQ(t.status, KM_GRPC_UNAVAILABLE);
    close(hold2);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_total"), 4);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.no_route"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_active"), 0);
    env_stop(&v);
}

KM_TEST(dp_engine_h2_grpc_backend_status_and_timeout)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, &v.b.port, 1));
    /* the backend's own trailers-only answer passes through */
    struct tcall t;
    one_call(&v, "/test.Unknown/None", &t);
    ASSERT_INT_EQ(t.status, KM_GRPC_UNIMPLEMENTED);
    /* a backend that accepts and never answers: the route timeout (300 ms) answers
     * DEADLINE_EXCEEDED */
    int silent;
    uint16_t sport = dpt_reserve_port(&silent);
    ASSERT(listen(silent, 16) == 0);
    dpt_publish_and_wait(v.e, h2snap(2, v.lport, "/", 300, true, &sport, 1));
    uint64_t t0 = dpt_now_ms();
    one_call(&v, "/test.Echo/Bidi", &t);
    ASSERT_INT_EQ(t.status, KM_GRPC_DEADLINE_EXCEEDED);
    ASSERT(dpt_now_ms() - t0 >= 250);
    close(silent);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_timeout"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_rq_timeout"), 1);
    env_stop(&v);
}

KM_TEST(dp_engine_h2_grpc_cancel_resets_upstream)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, &v.b.port, 1));
    struct km_grpc_client *c = km_grpc_client_new(v.cl, "127.0.0.1", v.lport, false, NULL);
    struct tcall t;
    memset(&t, 0, sizeof(t));
    km_sbuf_init(&t.got);
    struct km_grpc_call_cbs cbs = {.on_message = tc_message, .on_close = tc_close, .ud = &t};
    struct km_grpc_call *call = km_grpc_call_start(c, "/test.Echo/Bidi", NULL, &cbs);
    km_grpc_call_send(call, (const uint8_t *)"ping", 4);
    ASSERT(run_until(v.cl, NULL, &t.nmsg, 1, 8000));
    ASSERT_INT_EQ(atomic_load(&v.b.opened), 1);
    ASSERT_INT_EQ(atomic_load(&v.b.closed), 0);
    km_grpc_call_cancel(call);
    uint64_t end = dpt_now_ms() + 5000;
    while (atomic_load(&v.b.closed) == 0 && dpt_now_ms() < end)
        km_loop_run_once(v.cl, 10);
    ASSERT_INT_EQ(atomic_load(&v.b.closed), 1); /* the upstream stream was reset */
    km_grpc_client_free(c);
    km_sbuf_deinit(&t.got);
    /* the engine holds nothing for it any more */
    end = dpt_now_ms() + 2000;
    while (dpt_stat_of(v.e, "http.h2in.downstream_rq_active") != 0 && dpt_now_ms() < end)
        dpt_sleep_ms(5);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_active"), 0);
    env_stop(&v);
}

KM_TEST(dp_engine_h2_snapshot_swap_keeps_stream)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, &v.b.port, 1));
    struct km_grpc_client *c = km_grpc_client_new(v.cl, "127.0.0.1", v.lport, false, NULL);
    struct tcall t;
    memset(&t, 0, sizeof(t));
    km_sbuf_init(&t.got);
    struct km_sbuf sent;
    km_sbuf_init(&sent);
    struct km_grpc_call_cbs cbs = {.on_message = tc_message, .on_close = tc_close, .ud = &t};
    struct km_grpc_call *call = km_grpc_call_start(c, "/test.Echo/Bidi", NULL, &cbs);
    stream_messages(&v, call, &t, &sent, 0, 10);
    ASSERT(run_until(v.cl, NULL, &t.nmsg, 10, 8000));
    /* the route goes away and the cluster loses its endpoint: the stream goes on */
    dpt_publish_and_wait(v.e, h2snap(2, v.lport, "/nothing-here", 0, true, NULL, 0));
    stream_messages(&v, call, &t, &sent, 10, 10);
    ASSERT(run_until(v.cl, NULL, &t.nmsg, 20, 8000));
    km_grpc_call_close_send(call);
    ASSERT(run_until(v.cl, &t.closed, NULL, 0, 8000));
    ASSERT_INT_EQ(t.status, KM_GRPC_FAILED_PRECONDITION);
    ASSERT_INT_EQ(t.got.len, sent.len);
    ASSERT(memcmp(t.got.ptr, sent.ptr, sent.len) == 0);
    /* a new call on the same connection sees the new config */
    struct tcall t2;
    memset(&t2, 0, sizeof(t2));
    cbs.ud = &t2;
    call = km_grpc_call_start(c, "/test.Echo/Bidi", NULL, &cbs);
    km_grpc_call_close_send(call);
    ASSERT(run_until(v.cl, &t2.closed, NULL, 0, 8000));
    ASSERT_INT_EQ(t2.status, KM_GRPC_UNIMPLEMENTED);
    km_grpc_client_free(c);
    km_sbuf_deinit(&t.got);
    km_sbuf_deinit(&t2.got);
    km_sbuf_deinit(&sent);
    env_stop(&v);
}

/* ---- a blocking nghttp2 client for plain HTTP/2 requests ---- */

struct hresp {
    int status;
    struct km_sbuf body;
    bool closed;
    uint32_t error;
};

static int
hc_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
             const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    struct hresp *r = ud;
    if (nl == 7 && memcmp(name, ":status", 7) == 0)
        r->status = atoi((const char *)value);
    return 0;
}

static int
hc_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
           void *ud)
{
    struct hresp *r = ud;
    km_sbuf_add(&r->body, (const char *)data, len);
    return 0;
}

static int
hc_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct hresp *r = ud;
    r->closed = true;
    r->error = code;
    return 0;
}

struct hbody {
    const char *p;
    size_t left;
};

static ssize_t
hc_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
        nghttp2_data_source *src, void *ud)
{
    struct hbody *b = src->ptr;
    size_t n = b->left < len ? b->left : len;
    memcpy(buf, b->p, n);
    b->p += n;
    b->left -= n;
    if (b->left == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* One request on a fresh h2c connection to <port>. */
static void
h2_request(uint16_t port, const char *method, const char *path, const char *body,
           struct hresp *r)
{
    memset(r, 0, sizeof(*r));
    km_sbuf_init(&r->body);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, port);
    ASSERT(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, hc_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, hc_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, hc_on_close);
    nghttp2_session *s;
    ASSERT(nghttp2_session_client_new(&s, cbs, r) == 0);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, NULL, 0);
    /* the HTTP/1.1 backend (the gRPC server's) wants a content-length, not chunked */
    char clen[24];
    snprintf(clen, sizeof(clen), "%zu", body ? strlen(body) : 0);
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)method, 7, strlen(method), 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
        {(uint8_t *)":authority", (uint8_t *)"svc", 10, 3, 0},
        {(uint8_t *)"content-length", (uint8_t *)clen, 14, strlen(clen), 0},
    };
    struct hbody hb = {body, body ? strlen(body) : 0};
    nghttp2_data_provider dp = {.source.ptr = &hb, .read_callback = hc_read};
    ASSERT(nghttp2_submit_request(s, NULL, nv, body ? 5 : 4, body ? &dp : NULL, NULL) > 0);
    uint64_t end = dpt_now_ms() + 8000;
    while (!r->closed && dpt_now_ms() < end) {
        const uint8_t *out;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(s, &out)) > 0) {
            ssize_t k = send(fd, out, (size_t)n, MSG_NOSIGNAL);
            ASSERT(k == n);
        }
        if (r->closed)
            break;
        uint8_t buf[16384];
        n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        ASSERT(nghttp2_session_mem_recv(s, buf, (size_t)n) == n);
    }
    ASSERT(r->closed);
    nghttp2_session_del(s);
    close(fd);
    if (!r->body.ptr)
        km_sbuf_add(&r->body, "", 0);
}

KM_TEST(dp_engine_h2_to_http1_upstream)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, false, &v.b.port, 1));
    struct hresp r;
    h2_request(v.lport, "GET", "/hello?x=1", NULL, &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body.ptr, "h1:GET /hello?x=1 []");
    km_sbuf_deinit(&r.body);
    h2_request(v.lport, "POST", "/echo", "some body bytes", &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body.ptr, "h1:POST /echo [some body bytes]");
    km_sbuf_deinit(&r.body);
    h2_request(v.lport, "GET", "/teapot", NULL, &r);
    ASSERT_INT_EQ(r.status, 418);
    km_sbuf_deinit(&r.body);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_total"), 3);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_2xx"), 2);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_4xx"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_rq_4xx"), 1);
    env_stop(&v);
}

KM_TEST(dp_engine_h2_plain_local_replies)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/only", 0, true, NULL, 0));
    struct hresp r;
    h2_request(v.lport, "GET", "/elsewhere", NULL, &r);
    ASSERT_INT_EQ(r.status, 404);
    km_sbuf_deinit(&r.body);
    h2_request(v.lport, "POST", "/only/x", "body", &r);
    ASSERT_INT_EQ(r.status, 503);
    ASSERT_STR_EQ(r.body.ptr, "no healthy upstream");
    km_sbuf_deinit(&r.body);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_4xx"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_5xx"), 1);
    env_stop(&v);
}

/* An HTTP/2 plain request to an HTTP/2 upstream (the gRPC server's plain HTTP handler). */
KM_TEST(dp_engine_h2_plain_to_h2_upstream)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, &v.b.port, 1));
    struct hresp r;
    h2_request(v.lport, "POST", "/p", "payload", &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body.ptr, "h1:POST /p [payload]");
    km_sbuf_deinit(&r.body);
    env_stop(&v);
}

/* ---- HTTP/1.1 downstream to an HTTP/2 upstream (protocol translation) ---- */

/* Sends <req> on <fd> and reads one response: status, body (Content-Length or chunked),
 * whether it was chunked. */
static void
h1_roundtrip(int fd, const char *req, int *status, struct km_sbuf *body, bool *chunked)
{
    dpt_send_all(fd, req, strlen(req));
    static char buf[1 << 19];
    size_t have = 0;
    char *eoh = NULL;
    while (!eoh) {
        ASSERT(have < sizeof(buf) - 1);
        ssize_t n = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        ASSERT(n > 0);
        have += (size_t)n;
        buf[have] = 0;
        eoh = strstr(buf, "\r\n\r\n");
    }
    *status = atoi(buf + 9);
    *eoh = 0;
    for (char *p = buf; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    const char *cl = strstr(buf, "\r\ncontent-length: ");
    *chunked = strstr(buf, "\r\ntransfer-encoding: chunked") != NULL;
    size_t off = (size_t)(eoh + 4 - buf);
    km_sbuf_init(body);
    for (;;) {
        if (cl && !*chunked && have - off >= (size_t)atol(cl + 18)) {
            km_sbuf_add(body, buf + off, (size_t)atol(cl + 18));
            return;
        }
        if (*chunked) {
            buf[have] = 0;
            char *end = NULL;
            char *crlf = strstr(buf + off, "\r\n");
            if (crlf) {
                size_t sz = strtoul(buf + off, &end, 16);
                size_t data = (size_t)(crlf + 2 - buf);
                if (sz == 0 && have >= data + 2)
                    return;
                if (sz > 0 && have >= data + sz + 2) {
                    km_sbuf_add(body, buf + data, sz);
                    off = data + sz + 2;
                    continue;
                }
            }
        }
        ASSERT(have < sizeof(buf) - 1);
        ssize_t n = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        ASSERT(n > 0);
        have += (size_t)n;
    }
}

/* An HTTP/1.1 client, HTTP/2 cluster: GET, POST (Content-Length and chunked), a 418 and a
 * 200 KB body both ways (past the flow control windows) on one kept-alive connection, then a
 * local 503 from a cluster without endpoints. */
KM_TEST(dp_engine_h2_http1_client_to_h2_upstream)
{
    struct env v;
    env_start(&v, 1);
    dpt_publish_and_wait(v.e, h2snap(1, v.lport, "/", 0, true, &v.b.port, 1));
    int fd = dpt_tconnect(v.lport);
    ASSERT(fd >= 0);
    int st = 0;
    bool chunked = false;
    struct km_sbuf b = {0};
    h1_roundtrip(fd, "GET /hello?x=1 HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive\r\n\r\n",
                 &st, &b, &chunked);
    ASSERT_INT_EQ(st, 200);
    ASSERT_STR_EQ(b.ptr, "h1:GET /hello?x=1 []");
    km_sbuf_deinit(&b);
    h1_roundtrip(fd, "POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 15\r\n\r\n"
                     "some body bytes", &st, &b, &chunked);
    ASSERT_INT_EQ(st, 200);
    ASSERT_STR_EQ(b.ptr, "h1:POST /echo [some body bytes]");
    km_sbuf_deinit(&b);
    h1_roundtrip(fd, "POST /c HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", &st, &b, &chunked);
    ASSERT_INT_EQ(st, 200);
    ASSERT_STR_EQ(b.ptr, "h1:POST /c [hello world]");
    km_sbuf_deinit(&b);
    h1_roundtrip(fd, "GET /teapot HTTP/1.1\r\nHost: svc\r\n\r\n", &st, &b, &chunked);
    ASSERT_INT_EQ(st, 418);
    km_sbuf_deinit(&b);
    /* a body larger than the flow control windows, both ways */
    size_t big = 200000;
    char *req = km_xasprintf("POST /big HTTP/1.1\r\nHost: svc\r\nContent-Length: %zu\r\n\r\n",
                             big);
    char *payload = km_xmalloc(big + 1);
    for (size_t k = 0; k < big; k++)
        payload[k] = (char)('a' + k % 26);
    payload[big] = 0;
    dpt_send_all(fd, req, strlen(req));
    h1_roundtrip(fd, payload, &st, &b, &chunked);
    ASSERT_INT_EQ(st, 200);
    ASSERT_INT_EQ(b.len, big + strlen("h1:POST /big []"));
    ASSERT(memcmp(b.ptr + strlen("h1:POST /big ["), payload, big) == 0);
    km_sbuf_deinit(&b);
    free(req);
    free(payload);
    close(fd);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_total"), 5);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.h2in.downstream_rq_2xx"), 4);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_rq_4xx"), 1);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "cluster.be.upstream_cx_total"), 1); /* one multiplexed */
    dpt_publish_and_wait(v.e, h2snap(2, v.lport, "/", 0, true, NULL, 0));
    fd = dpt_tconnect(v.lport);
    ASSERT(fd >= 0);
    h1_roundtrip(fd, "GET /x HTTP/1.1\r\nHost: svc\r\n\r\n", &st, &b, &chunked);
    ASSERT_INT_EQ(st, 503);
    ASSERT_STR_EQ(b.ptr, "no healthy upstream");
    km_sbuf_deinit(&b);
    close(fd);
    env_stop(&v);
}
