/* kuma-dp proxy engine, HTTP connection manager: HTTP/1.1 through the engine to a small HTTP
 * backend on its own loop thread (127.0.0.1 only): keep-alive and the upstream pool, bodies
 * (Content-Length, chunked both ways, until-close), pipelining, local replies (400, 403, 404,
 * 503, 504), and a route change seen by a kept-alive connection. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <km/common/http1.h>
#include <km/common/loop.h>
#include <km/common/util.h>
#include <km/dp/engine.h>
#include <km/dp/snapshot.h>

#include "dp_util.h"
#include "test.h"

/* ---- HTTP backend: GET /x answers "<tag>:<target>", POST /echo echoes the body (it accepts
 * chunked bodies), /chunked answers chunked, /close answers until close, /slow never
 * answers, every answer carries x-seen-te: the request's transfer-encoding. ---- */

struct hb_conn {
    struct hb_srv *s;
    int fd;
    struct km_io *io;
    struct km_sbuf in;
    struct hb_conn *prev, *next;
};

struct hb_srv {
    struct km_loop *loop;
    pthread_t th;
    int lfd;
    uint16_t port;
    char tag;
    struct km_io *lio;
    struct hb_conn *conns;
    atomic_int accepted;
};

static void
hb_close(struct hb_conn *c)
{
    km_io_free(c->io);
    close(c->fd);
    km_sbuf_deinit(&c->in);
    if (c->prev)
        c->prev->next = c->next;
    else
        c->s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

/* Handles complete requests at the start of c->in; returns false when the connection closed. */
static bool
hb_serve(struct hb_conn *c)
{
    for (;;) {
        struct km_http1_request req;
        int st = 0;
        char err[128];
        const uint8_t *in = (const uint8_t *)c->in.ptr;
        int rc = km_http1_parse_request_head(in, c->in.len, NULL, &req, &st, err, sizeof(err));
        if (rc == KM_HTTP1_INCOMPLETE)
            return true;
        if (rc == KM_HTTP1_ERROR) {
            hb_close(c);
            return false;
        }
        struct km_sbuf body;
        km_sbuf_init(&body);
        size_t used = req.head_len;
        if (req.framing == KM_HTTP1_BODY_LENGTH) {
            if (c->in.len - used < req.content_length) {
                km_sbuf_deinit(&body);
                return true;
            }
            km_sbuf_add(&body, (const char *)in + used, req.content_length);
            used += req.content_length;
        } else if (req.framing == KM_HTTP1_BODY_CHUNKED) {
            struct km_http1_chunked ck;
            km_http1_chunked_init(&ck, 0, 0);
            for (;;) {
                size_t consumed = 0, dlen = 0;
                const uint8_t *data = NULL;
                rc = km_http1_chunked_parse(&ck, in + used, c->in.len - used, &consumed, &data,
                                            &dlen, &st, err, sizeof(err));
                ASSERT(rc != KM_HTTP1_ERROR);
                km_sbuf_add(&body, (const char *)data, dlen);
                used += consumed;
                if (rc == KM_HTTP1_DONE)
                    break;
                if (consumed == 0) {
                    km_sbuf_deinit(&body);
                    return true; /* wait for the rest */
                }
            }
        }
        size_t tel = 0;
        const char *te = km_http1_header_get(&req, "transfer-encoding", &tel);
        char target[256];
        size_t tl = req.target_len < 255 ? req.target_len : 255;
        memcpy(target, req.target, tl);
        target[tl] = 0;
        struct km_sbuf out;
        km_sbuf_init(&out);
        bool close_after = false;
        if (strcmp(target, "/slow") == 0) {
            /* never answer */
        } else if (strcmp(target, "/echo") == 0) {
            km_sbuf_printf(&out,
                           "HTTP/1.1 200 OK\r\nx-seen-te: %.*s\r\ncontent-length: %zu\r\n\r\n",
                           (int)tel, te ? te : "", body.len);
            km_sbuf_add(&out, body.ptr ? body.ptr : "", body.len);
        } else if (strcmp(target, "/chunked") == 0) {
            km_sbuf_puts(&out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                               "6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n");
        } else if (strcmp(target, "/close") == 0) {
            km_sbuf_puts(&out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close");
            close_after = true;
        } else if (strcmp(target, "/bye") == 0) {
            /* keep-alive by the headers, but the server closes right after */
            km_sbuf_puts(&out, "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye");
            close_after = true;
        } else if (strncmp(target, "/status/", 8) == 0) {
            km_sbuf_printf(&out, "HTTP/1.1 %s \r\ncontent-length: 0\r\n\r\n", target + 8);
        } else {
            char b[300];
            int n = snprintf(b, sizeof(b), "%c:%s", c->s->tag, target);
            bool head = req.method_len == 4 && memcmp(req.method, "HEAD", 4) == 0;
            km_sbuf_printf(&out, "HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s", n,
                           head ? "" : b);
        }
        km_sbuf_deinit(&body);
        if (out.len)
            dpt_send_all(c->fd, out.ptr, out.len); /* small answers: fits the socket buffer */
        km_sbuf_deinit(&out);
        memmove(c->in.ptr, c->in.ptr + used, c->in.len - used);
        c->in.len -= used;
        if (close_after) {
            shutdown(c->fd, SHUT_WR);
            hb_close(c);
            return false;
        }
    }
}

static void
hb_on_io(struct km_io *io, int fd, unsigned ev, void *arg)
{
    struct hb_conn *c = arg;
    char buf[65536];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        hb_close(c);
        return;
    }
    km_sbuf_add(&c->in, buf, (size_t)n);
    hb_serve(c);
}

static void
hb_on_accept(struct km_io *io, int lfd, unsigned ev, void *arg)
{
    struct hb_srv *s = arg;
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    atomic_fetch_add(&s->accepted, 1);
    struct hb_conn *c = calloc(1, sizeof(*c));
    c->s = s;
    c->fd = fd;
    km_sbuf_init(&c->in);
    c->io = km_io_new(s->loop, fd, KM_IO_READ, hb_on_io, c);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
}

static void *
hb_main(void *arg)
{
    struct hb_srv *s = arg;
    km_loop_run(s->loop);
    return NULL;
}

static void
hb_start(struct hb_srv *s, char tag)
{
    memset(s, 0, sizeof(*s));
    s->tag = tag;
    atomic_init(&s->accepted, 0);
    s->loop = km_loop_new();
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(s->lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    ASSERT(listen(s->lfd, 128) == 0);
    socklen_t sl = sizeof(sin);
    ASSERT(getsockname(s->lfd, (struct sockaddr *)&sin, &sl) == 0);
    s->port = ntohs(sin.sin_port);
    s->lio = km_io_new(s->loop, s->lfd, KM_IO_READ, hb_on_accept, s);
    ASSERT(pthread_create(&s->th, NULL, hb_main, s) == 0);
}

static void
hb_on_stop(void *arg)
{
    struct hb_srv *s = arg;
    while (s->conns)
        hb_close(s->conns);
    km_io_free(s->lio);
    close(s->lfd);
    km_loop_stop(s->loop);
}

static void
hb_stop(struct hb_srv *s)
{
    km_loop_post(s->loop, hb_on_stop, s);
    pthread_join(s->th, NULL);
    km_loop_free(s->loop);
}

/* ---- snapshots: one HCM listener with an inline route config ---- */

struct troute {
    const char *prefix;
    const char *cluster;     /* NULL with direct_status */
    uint32_t timeout_ms;
    uint32_t direct_status;
};

static struct km_dp_snapshot *
hsnap(uint64_t gen, uint16_t lport, const char *domain, const struct troute *routes,
      size_t nroutes, size_t nclusters)
{
    struct km_dp_snapshot *s = km_xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->generation = gen;
    s->nlisteners = 1;
    s->listeners = km_xcalloc(1, sizeof(*s->listeners));
    struct km_dp_listener *l = &s->listeners[0];
    l->name = km_xstrdup("inbound:http");
    struct sockaddr_in sin;
    dpt_sin_loopback(&sin, lport);
    memcpy(&l->addr, &sin, sizeof(sin));
    l->addrlen = sizeof(sin);
    l->addr_str = km_xasprintf("127.0.0.1:%u", lport);
    l->nchains = 1;
    l->chains = km_xcalloc(1, sizeof(*l->chains));
    struct km_dp_chain *ch = &l->chains[0];
    ch->kind = KM_DP_FILTER_HCM;
    ch->codec = KM_DP_CODEC_HTTP1;
    ch->stat_prefix = km_xstrdup("ing");
    struct km_dp_route_config *rc = km_xcalloc(1, sizeof(*rc));
    rc->name = km_xstrdup("rc");
    rc->nvhosts = 1;
    rc->vhosts = km_xcalloc(1, sizeof(*rc->vhosts));
    struct km_dp_vhost *vh = &rc->vhosts[0];
    vh->name = km_xstrdup("vh");
    vh->ndomains = 1;
    vh->domains = km_xcalloc(1, sizeof(char *));
    vh->domains[0] = km_xstrdup(domain);
    vh->nroutes = nroutes;
    vh->routes = km_xcalloc(nroutes, sizeof(*vh->routes));
    for (size_t i = 0; i < nroutes; i++) {
        struct km_dp_route *r = &vh->routes[i];
        r->match = KM_DP_MATCH_PREFIX;
        r->path = km_xstrdup(routes[i].prefix);
        r->case_sensitive = true;
        r->timeout_ms = routes[i].timeout_ms;
        r->direct_status = routes[i].direct_status;
        if (routes[i].cluster) {
            r->nclusters = 1;
            r->clusters = km_xcalloc(1, sizeof(*r->clusters));
            r->clusters[0].cluster = km_xstrdup(routes[i].cluster);
            r->clusters[0].weight = 1;
            r->total_weight = 1;
        }
    }
    ch->inline_rc = rc;
    ch->rc = rc;
    s->nclusters = nclusters;
    s->clusters = km_xcalloc(nclusters ? nclusters : 1, sizeof(*s->clusters));
    return s;
}

static void
hsnap_cluster(struct km_dp_snapshot *s, size_t i, const char *name, const uint16_t *ports,
              size_t n)
{
    struct km_dp_cluster *c = &s->clusters[i];
    c->name = km_xstrdup(name);
    c->connect_timeout_ms = 1000;
    c->neps = n;
    c->eps = km_xcalloc(n ? n : 1, sizeof(*c->eps));
    for (size_t j = 0; j < n; j++) {
        struct sockaddr_in sin;
        dpt_sin_loopback(&sin, ports[j]);
        memcpy(&c->eps[j].addr, &sin, sizeof(sin));
        c->eps[j].addrlen = sizeof(sin);
        c->eps[j].addr_str = km_xasprintf("127.0.0.1:%u", ports[j]);
        c->eps[j].weight = 1;
        c->eps[j].healthy = true;
        c->eps[j].zone = km_xstrdup("");
    }
}

/* ---- client: reads one response, decoding its body ---- */

struct tresp {
    int status;
    bool chunked;
    bool conn_close;
    struct km_sbuf body;
};

/* Reads one response from <fd>; <pending> holds bytes read past the previous response. */
static void
read_response(int fd, struct km_sbuf *pending, struct tresp *r, bool head_req)
{
    memset(r, 0, sizeof(*r));
    km_sbuf_init(&r->body);
    char buf[65536];
    struct km_http1_response resp;
    int st;
    char err[128];
    for (;;) {
        int rc = km_http1_parse_response((const uint8_t *)pending->ptr, pending->len, NULL,
                                         head_req ? KM_HTTP1_REQ_HEAD : 0, &resp, &st, err,
                                         sizeof(err));
        ASSERT(rc != KM_HTTP1_ERROR);
        if (rc == KM_HTTP1_DONE)
            break;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            KM_FAIL_AT("read_response: %zd (%s) with %zu bytes pending", n, strerror(errno),
                       pending->len);
        km_sbuf_add(pending, buf, (size_t)n);
    }
    r->status = resp.status;
    r->chunked = resp.framing == KM_HTTP1_BODY_CHUNKED;
    size_t cl = 0;
    const char *conn = km_http1_headers_get(resp.headers, resp.nheaders, "connection", &cl);
    r->conn_close = conn && cl == 5 && strncasecmp(conn, "close", 5) == 0;
    enum km_http1_body framing = resp.framing;
    size_t left = resp.content_length;
    size_t used = resp.head_len;
    struct km_http1_chunked ck;
    km_http1_chunked_init(&ck, 0, 0);
    for (;;) {
        if (framing == KM_HTTP1_BODY_NONE)
            break;
        if (framing == KM_HTTP1_BODY_LENGTH && pending->len - used >= left) {
            km_sbuf_add(&r->body, pending->ptr + used, left);
            used += left;
            break;
        }
        if (framing == KM_HTTP1_BODY_CHUNKED) {
            bool done = false;
            for (;;) {
                size_t consumed = 0, dlen = 0;
                const uint8_t *data = NULL;
                int rc = km_http1_chunked_parse(&ck, (const uint8_t *)pending->ptr + used,
                                                pending->len - used, &consumed, &data, &dlen,
                                                &st, err, sizeof(err));
                ASSERT(rc != KM_HTTP1_ERROR);
                km_sbuf_add(&r->body, (const char *)data, dlen);
                used += consumed;
                if (rc == KM_HTTP1_DONE) {
                    done = true;
                    break;
                }
                if (consumed == 0)
                    break;
            }
            if (done)
                break;
        }
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (framing == KM_HTTP1_BODY_CLOSE && n == 0) {
            km_sbuf_add(&r->body, pending->ptr + used, pending->len - used);
            used = pending->len;
            break;
        }
        if (n <= 0)
            KM_FAIL_AT("read_response body: %zd (%s)", n, strerror(errno));
        km_sbuf_add(pending, buf, (size_t)n);
    }
    memmove(pending->ptr, pending->ptr + used, pending->len - used);
    pending->len -= used;
    if (r->body.ptr == NULL)
        km_sbuf_add(&r->body, "", 0);
}

static void
exchange(int fd, struct km_sbuf *pending, const char *req, struct tresp *r)
{
    dpt_send_all(fd, req, strlen(req));
    read_response(fd, pending, r, strncmp(req, "HEAD ", 5) == 0);
}

struct henv {
    struct hb_srv a, b;
    int hold;
    uint16_t lport;
    struct km_dp_engine *e;
};

static void
henv_start(struct henv *h, unsigned workers)
{
    hb_start(&h->a, 'A');
    hb_start(&h->b, 'B');
    h->lport = dpt_reserve_port(&h->hold);
    struct km_dp_engine_opts o = {.concurrency = workers};
    h->e = km_dp_engine_new(&o);
    ASSERT(h->e != NULL);
}

static void
henv_stop(struct henv *h)
{
    km_dp_engine_free(h->e);
    close(h->hold);
    hb_stop(&h->a);
    hb_stop(&h->b);
}

/* ---- tests ---- */

KM_TEST(dp_engine_http_keepalive_and_pool)
{
    struct henv h;
    henv_start(&h, 1);
    struct troute routes[] = {{"/", "a", 0, 0}};
    struct km_dp_snapshot *s = hsnap(1, h.lport, "*", routes, 1, 1);
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    dpt_publish_and_wait(h.e, s);

    int fd = dpt_tconnect(h.lport);
    ASSERT(fd >= 0);
    struct km_sbuf pend;
    km_sbuf_init(&pend);
    for (int i = 0; i < 3; i++) {
        struct tresp r;
        exchange(fd, &pend, "GET /hello?x=1 HTTP/1.1\r\nHost: svc\r\n\r\n", &r);
        ASSERT_INT_EQ(r.status, 200);
        ASSERT_STR_EQ(r.body.ptr, "A:/hello?x=1");
        ASSERT(!r.conn_close);
        km_sbuf_deinit(&r.body);
    }
    /* HEAD: no body even with a content-length */
    struct tresp r;
    exchange(fd, &pend, "HEAD /h HTTP/1.1\r\nHost: svc\r\n\r\n", &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT_INT_EQ(r.body.len, 0);
    km_sbuf_deinit(&r.body);
    /* HTTP/1.0 without keep-alive: answered, then closed */
    exchange(fd, &pend, "GET /ten HTTP/1.0\r\n\r\n", &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body.ptr, "A:/ten");
    ASSERT(r.conn_close);
    km_sbuf_deinit(&r.body);
    char b;
    ASSERT_INT_EQ(recv(fd, &b, 1, 0), 0);
    close(fd);
    km_sbuf_deinit(&pend);

    ASSERT_INT_EQ(dpt_stat_of(h.e, "cluster.a.upstream_rq_total"), 5);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "cluster.a.upstream_rq_2xx"), 5);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "cluster.a.upstream_cx_total"), 1); /* one pooled connection */
    ASSERT_INT_EQ(atomic_load(&h.a.accepted), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.downstream_rq_total"), 5);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.downstream_rq_2xx"), 5);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.downstream_rq_active"), 0);
    henv_stop(&h);
}

KM_TEST(dp_engine_http_bodies)
{
    struct henv h;
    henv_start(&h, 2);
    struct troute routes[] = {{"/", "a", 0, 0}};
    struct km_dp_snapshot *s = hsnap(1, h.lport, "*", routes, 1, 1);
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    dpt_publish_and_wait(h.e, s);
    int fd = dpt_tconnect(h.lport);
    ASSERT(fd >= 0);
    struct km_sbuf pend;
    km_sbuf_init(&pend);

    /* a 1 MB Content-Length body, streamed */
    size_t big = 1024u * 1024u;
    char *body = km_xmalloc(big);
    for (size_t i = 0; i < big; i++)
        body[i] = (char)('a' + (i * 7) % 26);
    char head[128];
    snprintf(head, sizeof(head), "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n",
             big);
    dpt_send_all(fd, head, strlen(head));
    dpt_send_all(fd, body, big);
    struct tresp r;
    read_response(fd, &pend, &r, false);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT_INT_EQ(r.body.len, big);
    ASSERT(memcmp(r.body.ptr, body, big) == 0);
    km_sbuf_deinit(&r.body);
    free(body);

    /* a chunked request body: decoded, re-chunked upstream */
    exchange(fd, &pend,
             "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n1;a=b\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
             &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body.ptr, "hello world");
    km_sbuf_deinit(&r.body);

    /* a chunked response (extensions and trailers dropped), re-chunked downstream */
    exchange(fd, &pend, "GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT(r.chunked);
    ASSERT_STR_EQ(r.body.ptr, "hello world");
    km_sbuf_deinit(&r.body);

    /* a response delimited by close: chunked to the client, which keeps its connection */
    exchange(fd, &pend, "GET /close HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    ASSERT_INT_EQ(r.status, 200);
    ASSERT(r.chunked);
    ASSERT(!r.conn_close);
    ASSERT_STR_EQ(r.body.ptr, "until close");
    km_sbuf_deinit(&r.body);
    exchange(fd, &pend, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    ASSERT_STR_EQ(r.body.ptr, "A:/after");
    km_sbuf_deinit(&r.body);

    /* pipelining: two requests in one write, answered in order */
    dpt_send_all(fd, "GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n", 58);
    read_response(fd, &pend, &r, false);
    ASSERT_STR_EQ(r.body.ptr, "A:/p1");
    km_sbuf_deinit(&r.body);
    read_response(fd, &pend, &r, false);
    ASSERT_STR_EQ(r.body.ptr, "A:/p2");
    km_sbuf_deinit(&r.body);
    close(fd);
    km_sbuf_deinit(&pend);
    henv_stop(&h);
}

KM_TEST(dp_engine_http_local_replies)
{
    struct henv h;
    henv_start(&h, 1);
    int dead_hold;
    uint16_t dead = dpt_reserve_port(&dead_hold);
    struct troute routes[] = {
        {"/direct", NULL, 0, 418},  {"/nocluster", "missing", 0, 0},
        {"/noeps", "empty", 0, 0},  {"/dead", "dead", 0, 0},
        {"/slow", "a", 200, 0},     {"/", "a", 0, 0},
    };
    struct km_dp_snapshot *s = hsnap(1, h.lport, "svc", routes, 6, 3);
    /* clusters sorted by name */
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    hsnap_cluster(s, 1, "dead", &dead, 1);
    hsnap_cluster(s, 2, "empty", NULL, 0);
    dpt_publish_and_wait(h.e, s);

    struct {
        const char *req;
        int status;
        bool closes;
    } cases[] = {
        {"GET /direct HTTP/1.1\r\nHost: svc\r\n\r\n", 418, false},
        {"GET /x HTTP/1.1\r\nHost: other\r\n\r\n", 404, false},
        {"GET /nocluster HTTP/1.1\r\nHost: svc\r\n\r\n", 503, false},
        {"GET /noeps HTTP/1.1\r\nHost: svc\r\n\r\n", 503, false},
        {"GET /dead HTTP/1.1\r\nHost: svc\r\n\r\n", 503, false},
        {"GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n", 504, false},
        {"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
         403, false},
        {"GET / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         400, true},
    };
    for (size_t i = 0; i < KM_ARRAY_LEN(cases); i++) {
        int fd = dpt_tconnect(h.lport);
        ASSERT(fd >= 0);
        struct km_sbuf pend;
        km_sbuf_init(&pend);
        struct tresp r;
        exchange(fd, &pend, cases[i].req, &r);
        if (r.status != cases[i].status)
            KM_FAIL_AT("case %zu: status %d, want %d", i, r.status, cases[i].status);
        ASSERT_INT_EQ(r.conn_close, cases[i].closes);
        km_sbuf_deinit(&r.body);
        if (!cases[i].closes) { /* the connection still serves */
            exchange(fd, &pend, "GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n", &r);
            ASSERT_INT_EQ(r.status, 200);
            km_sbuf_deinit(&r.body);
        }
        close(fd);
        km_sbuf_deinit(&pend);
    }
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.no_route"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.no_cluster"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.downstream_rq_rx_parse_error"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.downstream_rq_unsupported"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.downstream_rq_timeout"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "cluster.a.upstream_rq_timeout"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "cluster.dead.upstream_cx_connect_fail"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "cluster.empty.upstream_cx_none_healthy"), 1);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "http.ing.downstream_rq_active"), 0);
    henv_stop(&h);
    close(dead_hold);
}

KM_TEST(dp_engine_http_route_change_on_kept_alive_connection)
{
    struct henv h;
    henv_start(&h, 2);
    struct troute ra[] = {{"/", "a", 0, 0}};
    struct km_dp_snapshot *s = hsnap(1, h.lport, "*", ra, 1, 2);
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    hsnap_cluster(s, 1, "b", &h.b.port, 1);
    dpt_publish_and_wait(h.e, s);
    int fd = dpt_tconnect(h.lport);
    ASSERT(fd >= 0);
    struct km_sbuf pend;
    km_sbuf_init(&pend);
    struct tresp r;
    exchange(fd, &pend, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    ASSERT_STR_EQ(r.body.ptr, "A:/1");
    km_sbuf_deinit(&r.body);

    struct troute rb[] = {{"/", "b", 0, 0}};
    s = hsnap(2, h.lport, "*", rb, 1, 2);
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    hsnap_cluster(s, 1, "b", &h.b.port, 1);
    dpt_publish_and_wait(h.e, s);
    exchange(fd, &pend, "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    ASSERT_STR_EQ(r.body.ptr, "B:/2");
    ASSERT(!r.conn_close);
    km_sbuf_deinit(&r.body);
    close(fd);
    km_sbuf_deinit(&pend);
    henv_stop(&h);
}

KM_TEST(dp_engine_http_drain_closes_idle_keepalive)
{
    struct henv h;
    henv_start(&h, 2);
    struct troute ra[] = {{"/", "a", 0, 0}};
    struct km_dp_snapshot *s = hsnap(1, h.lport, "*", ra, 1, 1);
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    dpt_publish_and_wait(h.e, s);
    int fd = dpt_tconnect(h.lport);
    ASSERT(fd >= 0);
    struct km_sbuf pend;
    km_sbuf_init(&pend);
    struct tresp r;
    exchange(fd, &pend, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    ASSERT_STR_EQ(r.body.ptr, "A:/1");
    km_sbuf_deinit(&r.body);
    km_dp_engine_drain(h.e);
    char b;
    ASSERT_INT_EQ(recv(fd, &b, 1, 0), 0); /* the idle kept-alive connection is closed */
    close(fd);
    km_sbuf_deinit(&pend);
    uint64_t end = dpt_now_ms() + 3000;
    while (km_dp_engine_active_connections(h.e) != 0 && dpt_now_ms() < end)
        dpt_sleep_ms(2);
    ASSERT_INT_EQ(km_dp_engine_active_connections(h.e), 0);
    henv_stop(&h);
}

KM_TEST(dp_engine_http_upstream_closing_kept_alive_connections)
{
    /* The backend closes every connection right after a response that allowed keep-alive:
     * pooled connections go stale, and no request may fail because of it. */
    struct henv h;
    henv_start(&h, 1);
    struct troute ra[] = {{"/", "a", 0, 0}};
    struct km_dp_snapshot *s = hsnap(1, h.lport, "*", ra, 1, 1);
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    dpt_publish_and_wait(h.e, s);
    int fd = dpt_tconnect(h.lport);
    ASSERT(fd >= 0);
    struct km_sbuf pend;
    km_sbuf_init(&pend);
    for (int i = 0; i < 30; i++) {
        struct tresp r;
        exchange(fd, &pend, "GET /bye HTTP/1.1\r\nHost: x\r\n\r\n", &r);
        ASSERT_INT_EQ(r.status, 200);
        ASSERT_STR_EQ(r.body.ptr, "bye");
        km_sbuf_deinit(&r.body);
    }
    close(fd);
    km_sbuf_deinit(&pend);
    ASSERT_INT_EQ(dpt_stat_of(h.e, "cluster.a.upstream_rq_2xx"), 30);
    henv_stop(&h);
}

struct load_client {
    uint16_t port;
    int requests;
    atomic_int *failures;
    atomic_bool *stop;
    int done;
    pthread_t th;
};

static void *
load_main(void *arg)
{
    struct load_client *lc = arg;
    int fd = -1;
    struct km_sbuf pend;
    km_sbuf_init(&pend);
    const char *req = "GET /load HTTP/1.1\r\nHost: x\r\n\r\n";
    while (!atomic_load(lc->stop) && lc->done < lc->requests) {
        if (fd < 0) {
            fd = dpt_tconnect(lc->port);
            pend.len = 0;
            if (fd < 0) {
                atomic_fetch_add(lc->failures, 1);
                break;
            }
        }
        if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req)) {
            atomic_fetch_add(lc->failures, 1);
            break;
        }
        struct tresp r;
        read_response(fd, &pend, &r, false); /* fails the test (exit) on a broken response */
        bool ok = r.status == 200 && (strcmp(r.body.ptr, "A:/load") == 0 ||
                                      strcmp(r.body.ptr, "B:/load") == 0);
        if (!ok)
            atomic_fetch_add(lc->failures, 1);
        if (r.conn_close) {
            close(fd);
            fd = -1;
        }
        km_sbuf_deinit(&r.body);
        lc->done++;
    }
    if (fd >= 0)
        close(fd);
    km_sbuf_deinit(&pend);
    return NULL;
}

KM_TEST(dp_engine_http_config_changes_under_load)
{
    struct henv h;
    henv_start(&h, 2);
    struct troute ra[] = {{"/", "a", 0, 0}}, rb[] = {{"/", "b", 0, 0}};
    struct km_dp_snapshot *s = hsnap(1, h.lport, "*", ra, 1, 2);
    hsnap_cluster(s, 0, "a", &h.a.port, 1);
    hsnap_cluster(s, 1, "b", &h.b.port, 1);
    dpt_publish_and_wait(h.e, s);
    enum { NC = 8 };
    struct load_client lc[NC];
    atomic_int failures;
    atomic_bool stop;
    atomic_init(&failures, 0);
    atomic_init(&stop, false);
    for (int i = 0; i < NC; i++) {
        lc[i] = (struct load_client){.port = h.lport, .requests = 300, .failures = &failures,
                                     .stop = &stop};
        ASSERT(pthread_create(&lc[i].th, NULL, load_main, &lc[i]) == 0);
    }
    /* routes flip between the clusters, endpoints change */
    for (uint64_t g = 2; g < 22; g++) {
        s = hsnap(g, h.lport, "*", g % 2 ? ra : rb, 1, 2);
        hsnap_cluster(s, 0, "a", &h.a.port, 1);
        uint16_t both[2] = {h.b.port, h.a.port};
        hsnap_cluster(s, 1, "b", g % 3 ? &h.b.port : both, g % 3 ? 1 : 2);
        dpt_publish_and_wait(h.e, s);
        dpt_sleep_ms(10);
    }
    int total = 0;
    for (int i = 0; i < NC; i++) {
        pthread_join(lc[i].th, NULL);
        total += lc[i].done;
    }
    ASSERT_INT_EQ(atomic_load(&failures), 0);
    ASSERT_INT_EQ(total, NC * 300);
    henv_stop(&h);
}
