/* kuma-dp's admin listener on the main thread's loop (see engine.h for the endpoints): one
 * request per connection, parsed with the strict HTTP/1.1 parser, answered from a table. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/http1.h>
#include <km/common/util.h>
#include <km/dp/engine.h>

#define ADMIN_MAX_REQUEST (16u * 1024u)
#define ADMIN_MAX_CONNS   64
#define ADMIN_TIMEOUT_MS  10000

struct admin_conn {
    struct km_dp_admin *a;      /* borrowed */
    int fd;
    struct km_io *io;           /* owned */
    struct km_timer *timer;     /* owned */
    uint8_t in[ADMIN_MAX_REQUEST];
    size_t inlen;
    char *out;                  /* owned: the whole response */
    size_t outlen, outoff;
    bool quit_after;            /* call hooks.quit once the answer is sent */
    struct admin_conn *prev, *next;
};

struct km_dp_admin {
    struct km_loop *loop;           /* borrowed */
    struct km_dp_engine *e;         /* borrowed */
    struct km_dp_admin_hooks hooks;
    int fd;
    uint16_t port;
    struct km_io *io;               /* owned */
    struct admin_conn *conns;       /* owned list */
    size_t nconns;
};

struct admin_resp {
    int status;
    const char *ctype;
    char *body; /* owned */
    bool quit;
};

static void
admin_conn_close(struct admin_conn *c)
{
    struct km_dp_admin *a = c->a;
    km_io_free(c->io);
    km_timer_free(c->timer);
    close(c->fd);
    free(c->out);
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    free(c);
}

static void
admin_set_response(struct admin_conn *c, int status, const char *ctype, const char *body,
                   bool head_only)
{
    size_t blen = strlen(body);
    struct km_sbuf b;
    km_sbuf_init(&b);
    km_sbuf_printf(&b,
                   "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                   "cache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\n"
                   "connection: close\r\n\r\n",
                   status, km_http1_reason(status), ctype, blen);
    if (!head_only)
        km_sbuf_add(&b, body, blen);
    c->outlen = b.len;
    c->outoff = 0;
    c->out = km_sbuf_take(&b);
    km_io_set(c->io, KM_IO_WRITE);
}

static bool
admin_path_is(const char *target, size_t len, const char *path)
{
    size_t plen = strlen(path);
    const char *q = memchr(target, '?', len);
    size_t tlen = q ? (size_t)(q - target) : len;
    return tlen == plen && memcmp(target, path, plen) == 0;
}

static bool
admin_query_has(const char *target, size_t len, const char *kv)
{
    const char *q = memchr(target, '?', len);
    if (!q)
        return false;
    size_t qlen = len - (size_t)(q - target) - 1, kvlen = strlen(kv);
    const char *p = q + 1;
    while (qlen >= kvlen) {
        if (memcmp(p, kv, kvlen) == 0 && (qlen == kvlen || p[kvlen] == '&'))
            return true;
        const char *amp = memchr(p, '&', qlen);
        if (!amp)
            break;
        qlen -= (size_t)(amp - p) + 1;
        p = amp + 1;
    }
    return false;
}

static void
admin_route(struct km_dp_admin *a, const struct km_http1_request *req, struct admin_resp *r)
{
    const char *t = req->target;
    size_t tl = req->target_len;
    bool get = (req->method_len == 3 && memcmp(req->method, "GET", 3) == 0) ||
               (req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0);
    bool post = req->method_len == 4 && memcmp(req->method, "POST", 4) == 0;
    r->status = 200;
    r->ctype = "text/plain; charset=UTF-8";
    if (admin_path_is(t, tl, "/quitquitquit")) {
        if (!post) {
            r->status = 405;
            r->body = km_xstrdup("This endpoint requires POST\n");
            return;
        }
        r->body = km_xstrdup("OK\n");
        r->quit = true;
        return;
    }
    if (!get) {
        r->status = 405;
        r->body = km_xstrdup("Method Not Allowed\n");
        return;
    }
    if (admin_path_is(t, tl, "/ready")) {
        bool ready = km_dp_engine_is_ready(a->e);
        r->status = ready ? 200 : 503;
        r->body = km_xstrdup(ready ? "LIVE\n"
                                   : km_dp_engine_is_draining(a->e) ? "DRAINING\n"
                                                                    : "PRE_INITIALIZING\n");
    } else if (admin_path_is(t, tl, "/stats/prometheus") ||
               (admin_path_is(t, tl, "/stats") && admin_query_has(t, tl, "format=prometheus"))) {
        struct km_sbuf b;
        km_sbuf_init(&b);
        km_dp_stats_render_prometheus(km_dp_engine_stats(a->e), &b);
        r->ctype = "text/plain; version=0.0.4";
        r->body = km_sbuf_take(&b);
    } else if (admin_path_is(t, tl, "/stats")) {
        struct km_sbuf b;
        km_sbuf_init(&b);
        km_dp_stats_render_text(km_dp_engine_stats(a->e), &b);
        r->body = km_sbuf_take(&b);
    } else if (admin_path_is(t, tl, "/config_dump") ||
               admin_path_is(t, tl, "/config_dump/engine")) {
        char *j = NULL;
        if (admin_path_is(t, tl, "/config_dump") && a->hooks.config_dump)
            j = a->hooks.config_dump(a->hooks.arg);
        r->ctype = "application/json";
        r->body = j ? j : km_dp_engine_config_json(a->e);
    } else if (admin_path_is(t, tl, "/clusters")) {
        r->body = km_dp_engine_clusters_text(a->e);
    } else {
        r->status = 404;
        r->body = km_xstrdup("invalid path. admin commands are: /clusters /config_dump "
                             "/config_dump/engine /quitquitquit /ready /stats "
                             "/stats/prometheus\n");
    }
}

static void
admin_on_io(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct admin_conn *c = arg;
    if (c->out) {
        if (!(events & KM_IO_WRITE))
            return;
        while (c->outoff < c->outlen) {
            ssize_t n = send(fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
            if (n == -1) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                admin_conn_close(c);
                return;
            }
            c->outoff += (size_t)n;
        }
        struct km_dp_admin_hooks hooks = c->a->hooks;
        bool quit = c->quit_after;
        admin_conn_close(c);
        if (quit && hooks.quit)
            hooks.quit(hooks.arg); /* last: the hook may free the admin */
        return;
    }
    ssize_t n = recv(fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        admin_conn_close(c);
        return;
    }
    c->inlen += (size_t)n;
    struct km_http1_request req;
    struct km_http1_limits lim = {.max_head = ADMIN_MAX_REQUEST, .max_body = ADMIN_MAX_REQUEST};
    int status = 0;
    char err[128] = "";
    int rc = km_http1_parse_request(c->in, c->inlen, &lim, &req, &status, err, sizeof(err));
    if (rc == KM_HTTP1_INCOMPLETE) {
        if (c->inlen < sizeof(c->in))
            return;
        rc = KM_HTTP1_ERROR;
        status = 413;
        snprintf(err, sizeof(err), "request larger than %u bytes", ADMIN_MAX_REQUEST);
    }
    if (rc == KM_HTTP1_ERROR) {
        char *body = km_xasprintf("%s\n", err);
        admin_set_response(c, status ? status : 400, "text/plain", body, false);
        free(body);
        return;
    }
    struct admin_resp r = {0};
    admin_route(c->a, &req, &r);
    bool head = req.method_len == 4 && memcmp(req.method, "HEAD", 4) == 0;
    admin_set_response(c, r.status, r.ctype, r.body ? r.body : "", head);
    c->quit_after = r.quit;
    free(r.body);
}

static void
admin_on_timeout(struct km_timer *t, void *arg)
{
    admin_conn_close(arg);
}

static void
admin_on_accept(struct km_io *io, int lfd, unsigned events, void *arg)
{
    struct km_dp_admin *a = arg;
    for (int i = 0; i < 16; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1)
            return;
        if (a->nconns >= ADMIN_MAX_CONNS) {
            close(fd);
            continue;
        }
        struct admin_conn *c = km_xcalloc(1, sizeof(*c));
        c->a = a;
        c->fd = fd;
        c->io = km_io_new(a->loop, fd, KM_IO_READ, admin_on_io, c);
        if (!c->io) {
            close(fd);
            free(c);
            continue;
        }
        c->timer = km_timer_new(a->loop, ADMIN_TIMEOUT_MS, admin_on_timeout, c);
        c->next = a->conns;
        if (a->conns)
            a->conns->prev = c;
        a->conns = c;
        a->nconns++;
    }
}

struct km_dp_admin *
km_dp_admin_start(struct km_loop *loop, struct km_dp_engine *e, uint16_t port,
                  const struct km_dp_admin_hooks *hooks)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return NULL;
    int one = 1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sin);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 || listen(fd, 64) == -1 ||
        getsockname(fd, (struct sockaddr *)&sin, &sl) == -1) {
        km_log_error("dp", "admin: cannot listen on 127.0.0.1:%u: %s", port, strerror(errno));
        close(fd);
        return NULL;
    }
    struct km_dp_admin *a = km_xcalloc(1, sizeof(*a));
    a->loop = loop;
    a->e = e;
    if (hooks)
        a->hooks = *hooks;
    a->fd = fd;
    a->port = ntohs(sin.sin_port);
    a->io = km_io_new(loop, fd, KM_IO_READ, admin_on_accept, a);
    if (!a->io) {
        close(fd);
        free(a);
        return NULL;
    }
    return a;
}

uint16_t
km_dp_admin_port(const struct km_dp_admin *a)
{
    return a->port;
}

void
km_dp_admin_free(struct km_dp_admin *a)
{
    if (!a)
        return;
    while (a->conns)
        admin_conn_close(a->conns);
    km_io_free(a->io);
    close(a->fd);
    free(a);
}
