/* gRPC server over HTTP/2 (nghttp2) with plain HTTP/1.1 and HTTP/2 requests on the same port.
 *
 * Connection life: accept -> TLS handshake (ALPN picks h2 or http/1.1) or, in plaintext, a
 * sniff of the first bytes for the HTTP/2 preface -> h2 (nghttp2 server session) or h1 (the
 * strict parser in http1.c). All work happens in the connection's io callback or its "kick"
 * timer; application calls (send, finish) only queue and arm the kick, so no application
 * callback ever runs inside another application call. A connection is destroyed only at the
 * end of its own callbacks (conn_close_later), and on_close runs exactly once for every stream
 * whose on_open accepted it. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <km/common/grpc.h>
#include <km/common/h2conn.h>
#include <km/common/http1.h>
#include <km/common/util.h>

#define SRV_READ_CHUNK        16384
#define SRV_OUT_HIGH          (64 * 1024) /* stop pulling frames from nghttp2 above this */
#define SRV_HANDSHAKE_MS      10000
#define SRV_PING_TIMEOUT_MS   20000
#define SRV_MAX_HEADER_BYTES  16384
#define SRV_H1_MAX_HEAD       16384
#define SRV_ACCEPT_BATCH      64
#define SRV_WINDOW            (1 << 20)

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN (sizeof(h2_preface) - 1)

struct srv_listener {
    struct km_grpc_server *srv; /* borrowed */
    int fd;                     /* owned */
    struct km_io *io;           /* owned */
    SSL_CTX *ctx;               /* owned, NULL = plaintext */
    struct km_timer *backoff;   /* owned: re-enables accepting after EMFILE and friends */
    struct srv_listener *next;
};

enum conn_state { CONN_HANDSHAKE = 0, CONN_SNIFF, CONN_H2, CONN_H1 };

struct srv_conn {
    struct km_grpc_server *srv; /* borrowed */
    struct km_xport x;
    struct km_io *io;       /* owned */
    struct km_timer *tick;  /* owned: handshake deadline, keepalive, idle */
    struct km_timer *kick;  /* owned: deferred flush / close */
    enum conn_state state;
    nghttp2_session *h2;    /* owned (CONN_H2) */
    struct km_bq in;        /* sniffed / HTTP/1.1 bytes */
    struct km_grpc_stream *streams; /* owned list */
    size_t pending;         /* bytes queued in streams, not yet given to nghttp2 */
    uint64_t last_rx_ms;
    uint64_t ping_deadline_ms; /* 0 = no ping outstanding */
    bool dead;              /* close at the end of the current callback */
    bool close_after_flush; /* HTTP/1.1 "Connection: close" or a 400 */
    int depth;              /* > 0 while inside the connection's own processing */
    char peer[64];
    struct srv_conn *prev, *next;
};

enum stream_kind { STREAM_NEW = 0, STREAM_GRPC, STREAM_HTTP, STREAM_REJECTED };

struct km_grpc_stream {
    struct srv_conn *conn; /* borrowed */
    int32_t id;
    enum stream_kind kind;
    const struct km_grpc_method *method; /* borrowed (server options) */
    struct km_sbuf hdrs;   /* "name\0value\0" pairs */
    size_t nhdrs;
    struct km_grpc_rx rx;
    struct km_bq out;      /* framed response bytes not yet given to nghttp2 */
    struct km_sbuf body;   /* HTTP request body */
    bool opened;           /* on_open accepted: on_close is owed */
    bool resp_started;     /* response HEADERS submitted */
    bool finishing;        /* finish requested: trailers after the queued data */
    bool deferred;         /* data provider returned DEFERRED */
    bool remote_closed;    /* peer sent END_STREAM */
    bool local_closed;     /* our END_STREAM went out */
    bool closed;           /* being destroyed: sends fail */
    int fin_status;
    char *fin_msg;         /* owned, percent-encoded */
    struct km_timer *deadline; /* owned: the client's grpc-timeout, NULL when none */
    void *data;
    struct km_grpc_stream *prev, *next;
};

struct km_grpc_server {
    struct km_loop *loop; /* borrowed */
    struct km_grpc_server_opts opts;
    nghttp2_session_callbacks *cbs; /* owned */
    nghttp2_option *h2opt;          /* owned */
    struct srv_listener *listeners;
    struct srv_conn *conns;
};

static void conn_close_later(struct srv_conn *c);
static void conn_kick(struct srv_conn *c);

/* ---- streams ---- */

static struct km_grpc_stream *
stream_new(struct srv_conn *c, int32_t id)
{
    struct km_grpc_stream *s = km_xcalloc(1, sizeof(*s));
    s->conn = c;
    s->id = id;
    km_sbuf_init(&s->hdrs);
    km_sbuf_init(&s->body);
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    return s;
}

/* Unlinks and frees; runs on_close when owed. */
static void
stream_destroy(struct km_grpc_stream *s)
{
    struct srv_conn *c = s->conn;
    s->closed = true;
    if (s->opened && s->method && s->method->on_close) {
        s->opened = false;
        s->method->on_close(s, s->method->ud);
    }
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    c->pending -= s->out.len;
    km_sbuf_deinit(&s->hdrs);
    km_sbuf_deinit(&s->body);
    km_grpc_rx_deinit(&s->rx);
    km_bq_deinit(&s->out);
    km_timer_free(s->deadline);
    free(s->fin_msg);
    free(s);
}

const char *
km_grpc_stream_header(struct km_grpc_stream *s, const char *name)
{
    const char *p = s->hdrs.ptr;
    for (size_t i = 0; i < s->nhdrs; i++) {
        const char *v = p + strlen(p) + 1;
        if (strcasecmp(p, name) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

const char *
km_grpc_stream_peer(struct km_grpc_stream *s)
{
    return s->conn->peer;
}

void
km_grpc_stream_set_data(struct km_grpc_stream *s, void *data)
{
    s->data = data;
}

void *
km_grpc_stream_get_data(struct km_grpc_stream *s)
{
    return s->data;
}

#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME     \
    }

static ssize_t
stream_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
               uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct km_grpc_stream *s = source->ptr;
    struct srv_conn *c = s->conn;
    size_t n = km_bq_pop(&s->out, buf, length);
    c->pending -= n;
    if (s->out.len == 0 && s->finishing) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->kind == STREAM_GRPC) {
            char st[16];
            snprintf(st, sizeof(st), "%d", s->fin_status);
            nghttp2_nv tr[2] = {NV("grpc-status", st), NV("grpc-message", "")};
            size_t ntr = 1;
            if (s->fin_msg && s->fin_msg[0]) {
                tr[1].value = (uint8_t *)s->fin_msg;
                tr[1].valuelen = strlen(s->fin_msg);
                ntr = 2;
            }
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(session, stream_id, tr, ntr) != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return (ssize_t)n;
    }
    if (n == 0) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* Submits the response HEADERS (once) with a data provider reading s->out. */
static int
stream_start_response(struct km_grpc_stream *s, int status, const char *content_type,
                      const char *content_length)
{
    struct srv_conn *c = s->conn;
    char st[8];
    snprintf(st, sizeof(st), "%d", status);
    nghttp2_nv hd[3] = {NV(":status", st)};
    size_t n = 1;
    if (content_type)
        hd[n++] = (nghttp2_nv)NV("content-type", content_type);
    if (content_length)
        hd[n++] = (nghttp2_nv)NV("content-length", content_length);
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = stream_read_cb};
    s->resp_started = true;
    if (nghttp2_submit_response(c->h2, s->id, hd, n, &dp) != 0)
        return -1;
    conn_kick(c);
    return 0;
}

/* A gRPC response made of headers only: status and message at once, END_STREAM. */
static void
stream_trailers_only(struct km_grpc_stream *s, int status, const char *msg)
{
    struct srv_conn *c = s->conn;
    char st[16];
    snprintf(st, sizeof(st), "%d", status);
    char *enc = km_grpc_pct_encode(msg ? msg : "");
    nghttp2_nv hd[4] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                        NV("grpc-status", st), NV("grpc-message", enc)};
    s->resp_started = true;
    s->finishing = true;
    nghttp2_submit_response(c->h2, s->id, hd, enc[0] ? 4 : 3, NULL);
    free(enc);
    conn_kick(c);
}

int
km_grpc_stream_send(struct km_grpc_stream *s, const uint8_t *msg, size_t len)
{
    struct srv_conn *c = s->conn;
    if (c->dead || s->closed || s->kind != STREAM_GRPC || s->finishing || s->local_closed)
        return -1;
    size_t limit = c->srv->opts.max_pending_write_bytes;
    if (c->pending + c->x.out.len + len + 5 > limit) {
        km_log_warn("grpc", "%s: write queue over %zu bytes, closing the connection", c->peer,
                    limit);
        conn_close_later(c);
        return -1;
    }
    km_grpc_frame_push(&s->out, msg, len);
    c->pending += len + 5;
    if (!s->resp_started) {
        if (stream_start_response(s, 200, "application/grpc", NULL) != 0) {
            conn_close_later(c);
            return -1;
        }
    } else if (s->deferred) {
        s->deferred = false;
        nghttp2_session_resume_data(c->h2, s->id);
    }
    conn_kick(c);
    return 0;
}

void
km_grpc_stream_finish(struct km_grpc_stream *s, int status, const char *message)
{
    struct srv_conn *c = s->conn;
    if (c->dead || s->closed || s->kind != STREAM_GRPC || s->finishing || s->local_closed)
        return;
    if (!s->resp_started) {
        stream_trailers_only(s, status, message);
        return;
    }
    s->finishing = true;
    s->fin_status = status;
    s->fin_msg = message ? km_grpc_pct_encode(message) : NULL;
    if (s->deferred) {
        s->deferred = false;
        nghttp2_session_resume_data(c->h2, s->id);
    }
    conn_kick(c);
}

/* ---- HTTP handler (HTTP/2 and HTTP/1.1) ---- */

static void
http_dispatch(struct km_grpc_server *srv, const struct km_http_request *req,
              struct km_http_response *resp)
{
    memset(resp, 0, sizeof(*resp));
    if (srv->opts.http_handler) {
        srv->opts.http_handler(req, resp, srv->opts.http_ud);
        if (resp->status < 100 || resp->status > 999)
            resp->status = 500;
        if (resp->body && resp->body_len == 0)
            resp->body_len = 0;
    } else {
        resp->status = 404;
        resp->content_type = km_xstrdup("text/plain");
        resp->body = km_xstrdup("not found\n");
        resp->body_len = strlen(resp->body);
    }
}

static void
h2_http_respond(struct km_grpc_stream *s, int status, const char *ctype, const char *body,
                size_t len)
{
    char cl[24];
    snprintf(cl, sizeof(cl), "%zu", len);
    km_bq_push(&s->out, body, len);
    s->conn->pending += len;
    s->finishing = true;
    stream_start_response(s, status, ctype, cl);
}

static void
h2_http_request_done(struct km_grpc_stream *s)
{
    if (s->resp_started)
        return;
    struct km_http_request req = {
        .method = km_grpc_stream_header(s, ":method"),
        .path = km_grpc_stream_header(s, ":path"),
        .content_type = km_grpc_stream_header(s, "content-type"),
        .authorization = km_grpc_stream_header(s, "authorization"),
        .body = (const uint8_t *)(s->body.ptr ? s->body.ptr : ""),
        .body_len = s->body.len,
    };
    if (!req.method)
        req.method = "GET";
    if (!req.path)
        req.path = "/";
    struct km_http_response resp;
    http_dispatch(s->conn->srv, &req, &resp);
    h2_http_respond(s, resp.status, resp.content_type, resp.body ? resp.body : "",
                    resp.body ? resp.body_len : 0);
    free(resp.content_type);
    free(resp.body);
}

/* ---- nghttp2 server callbacks ---- */

static bool
is_grpc_content_type(const char *ct)
{
    if (!ct || strncasecmp(ct, "application/grpc", 16) != 0)
        return false;
    return ct[16] == '\0' || ct[16] == '+' || ct[16] == ';';
}


bool
km_grpc_timeout_parse(const char *v, uint64_t *ms)
{
    /* gRPC's grpc-timeout: 1 to 8 ASCII digits and a unit (H M S m u n). */
    if (!v)
        return false;
    size_t n = strspn(v, "0123456789");
    if (n == 0 || n > 8 || strlen(v) != n + 1)
        return false;
    uint64_t x = strtoull(v, NULL, 10);
    switch (v[n]) {
    case 'H':
        x *= 3600000;
        break;
    case 'M':
        x *= 60000;
        break;
    case 'S':
        x *= 1000;
        break;
    case 'm':
        break;
    case 'u':
        x = (x + 999) / 1000;
        break;
    case 'n':
        x = (x + 999999) / 1000000;
        break;
    default:
        return false;
    }
    *ms = x;
    return true;
}

/* The client's deadline passed: end the call as gRPC does. */
static void
stream_deadline(struct km_timer *t, void *arg)
{
    struct km_grpc_stream *s = arg;
    km_timer_free(s->deadline);
    s->deadline = NULL;
    if (!s->finishing && !s->closed)
        km_grpc_stream_finish(s, KM_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
}

static void
stream_begin(struct srv_conn *c, struct km_grpc_stream *s)
{
    const char *path = km_grpc_stream_header(s, ":path");
    const char *ct = km_grpc_stream_header(s, "content-type");
    const char *method = km_grpc_stream_header(s, ":method");
    if (!is_grpc_content_type(ct) || !method || strcmp(method, "POST") != 0) {
        s->kind = STREAM_HTTP;
        return;
    }
    const struct km_grpc_server_opts *o = &c->srv->opts;
    for (size_t i = 0; path && i < o->nmethods; i++) {
        if (strcmp(o->methods[i].path, path) == 0) {
            s->method = &o->methods[i];
            break;
        }
    }
    if (!s->method) {
        char msg[300];
        snprintf(msg, sizeof(msg), "unknown method %.256s", path ? path : "");
        s->kind = STREAM_REJECTED;
        stream_trailers_only(s, KM_GRPC_UNIMPLEMENTED, msg);
        return;
    }
    s->kind = STREAM_GRPC;
    int st = s->method->on_open ? s->method->on_open(s, s->method->ud) : 0;
    if (st != 0) {
        s->kind = STREAM_REJECTED;
        if (!s->resp_started)
            stream_trailers_only(s, st, "refused");
        return;
    }
    s->opened = true;
    uint64_t ms;
    if (km_grpc_timeout_parse(km_grpc_stream_header(s, "grpc-timeout"), &ms))
        s->deadline = km_timer_new(s->conn->srv->loop, ms, stream_deadline, s);
}

static void
stream_remote_end(struct srv_conn *c, struct km_grpc_stream *s)
{
    if (s->remote_closed)
        return;
    s->remote_closed = true;
    if (s->kind == STREAM_HTTP) {
        h2_http_request_done(s);
    } else if (s->kind == STREAM_GRPC && !s->finishing) {
        if (km_grpc_rx_partial(&s->rx)) {
            km_grpc_stream_finish(s, KM_GRPC_INTERNAL, "stream ended inside a message");
            return;
        }
        if (s->method->on_half_close)
            s->method->on_half_close(s, s->method->ud);
    }
}

static int
on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct srv_conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct km_grpc_stream *s = stream_new(c, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
    return 0;
}

static int
on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
          size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    struct km_grpc_stream *s = nghttp2_session_get_stream_user_data(session,
                                                                    frame->hd.stream_id);
    if (!s || s->kind != STREAM_NEW)
        return 0; /* trailers: ignored */
    if (s->hdrs.len + namelen + valuelen + 2 > SRV_MAX_HEADER_BYTES)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    km_sbuf_add(&s->hdrs, (const char *)name, namelen);
    km_sbuf_add(&s->hdrs, "", 1);
    km_sbuf_add(&s->hdrs, (const char *)value, valuelen);
    km_sbuf_add(&s->hdrs, "", 1);
    s->nhdrs++;
    return 0;
}

static int
on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct srv_conn *c = user_data;
    if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        c->ping_deadline_ms = 0;
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    struct km_grpc_stream *s = nghttp2_session_get_stream_user_data(session,
                                                                    frame->hd.stream_id);
    if (!s)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && s->kind == STREAM_NEW)
        stream_begin(c, s);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        stream_remote_end(c, s);
    return 0;
}

static int
deliver_message(void *arg, const uint8_t *msg, size_t len)
{
    struct km_grpc_stream *s = arg;
    if (s->finishing || s->local_closed || s->conn->dead)
        return 1;
    s->method->on_message(s, msg, len, s->method->ud);
    return s->finishing || s->conn->dead;
}

static int
on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                   const uint8_t *data, size_t len, void *user_data)
{
    struct srv_conn *c = user_data;
    struct km_grpc_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!s)
        return 0;
    if (s->kind == STREAM_GRPC && !s->finishing) {
        int status = 0;
        char err[160];
        int r = km_grpc_rx_feed(&s->rx, data, len, c->srv->opts.max_message_bytes,
                                deliver_message, s, &status, err, sizeof(err));
        if (r < 0)
            km_grpc_stream_finish(s, status, err);
    } else if (s->kind == STREAM_HTTP && !s->resp_started) {
        if (s->body.len + len > c->srv->opts.max_http_body) {
            static const char msg[] = "request body too large\n";
            h2_http_respond(s, 413, "text/plain", msg, sizeof(msg) - 1);
        } else {
            km_sbuf_add(&s->body, (const char *)data, len);
        }
    }
    return 0;
}

static int
on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct km_grpc_stream *s = nghttp2_session_get_stream_user_data(session,
                                                                    frame->hd.stream_id);
    if (!s)
        return 0;
    s->local_closed = true;
    /* the response is complete; a client still sending gets RST_STREAM(NO_ERROR) */
    if (!s->remote_closed)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    return 0;
}

static int
on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                void *user_data)
{
    struct km_grpc_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    stream_destroy(s);
    return 0;
}

/* ---- connections ---- */

static void
conn_destroy(struct srv_conn *c)
{
    struct km_grpc_server *srv = c->srv;
    c->dead = true;
    while (c->streams)
        stream_destroy(c->streams);
    if (c->h2)
        nghttp2_session_del(c->h2);
    km_io_free(c->io);
    km_timer_free(c->tick);
    km_timer_free(c->kick);
    km_xport_deinit(&c->x);
    km_bq_deinit(&c->in);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void
conn_close_later(struct srv_conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    if (c->depth == 0)
        km_timer_arm(c->kick, 0);
}

static void
conn_kick(struct srv_conn *c)
{
    if (c->depth == 0)
        km_timer_arm(c->kick, 0);
}

/* Moves frames from nghttp2 to the socket. Returns -1 when the connection must close. */
static int
conn_pump(struct srv_conn *c)
{
    for (;;) {
        bool produced = false;
        while (c->h2 && c->x.out.len < SRV_OUT_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->h2, &data);
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            km_bq_push(&c->x.out, data, (size_t)n);
            produced = true;
        }
        if (km_xport_flush(&c->x) != 0)
            return -1;
        /* the socket took everything: pull more, or nothing would ask again */
        if (!produced || c->x.out.len > 0)
            break;
    }
    if (c->h2 && !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2) &&
        c->x.out.len == 0)
        return -1;
    if (c->close_after_flush && c->x.out.len == 0)
        return -1;
    return 0;
}

static void
conn_update_events(struct srv_conn *c)
{
    bool rd = !c->close_after_flush && c->x.out.len < SRV_OUT_HIGH;
    km_io_set(c->io, km_xport_events(&c->x, rd));
}

static void
conn_arm_tick(struct srv_conn *c)
{
    km_timer_arm(c->tick, c->srv->opts.keepalive_ms);
}

static int
conn_start_h2(struct srv_conn *c)
{
    struct km_grpc_server *srv = c->srv;
    if (nghttp2_session_server_new2(&c->h2, srv->cbs, c, srv->h2opt) != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, srv->opts.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, SRV_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, SRV_MAX_HEADER_BYTES},
    };
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, KM_ARRAY_LEN(iv)) != 0)
        return -1;
    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 4 * SRV_WINDOW);
    c->state = CONN_H2;
    conn_arm_tick(c);
    return 0;
}

static int
conn_h2_feed(struct srv_conn *c, const uint8_t *p, size_t n)
{
    ssize_t r = nghttp2_session_mem_recv(c->h2, p, n);
    if (r < 0) {
        km_log_debug("grpc", "%s: HTTP/2 error: %s", c->peer, nghttp2_strerror((int)r));
        return -1;
    }
    return 0;
}

static void
h1_write_response(struct srv_conn *c, int status, const char *ctype, const char *body,
                  size_t len, bool keep_alive)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n%s%s%s%s\r\n", status,
                     km_http1_reason(status), len, ctype ? "Content-Type: " : "",
                     ctype ? ctype : "", ctype ? "\r\n" : "",
                     keep_alive ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof(head))
        n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n\r\n",
                     status, km_http1_reason(status), len);
    km_bq_push(&c->x.out, head, (size_t)n);
    km_bq_push(&c->x.out, body, len);
    if (!keep_alive)
        c->close_after_flush = true;
}

static void
conn_h1_process(struct srv_conn *c)
{
    struct km_grpc_server *srv = c->srv;
    struct km_http1_limits lim = {.max_head = SRV_H1_MAX_HEAD, .max_body = srv->opts.max_http_body};
    struct km_http1_request *req = km_xmalloc(sizeof(*req));
    while (!c->close_after_flush && c->in.len > 0 && c->x.out.len < SRV_OUT_HIGH) {
        int status;
        char err[200];
        int r = km_http1_parse_request(km_bq_data(&c->in), c->in.len, &lim, req, &status, err,
                                       sizeof(err));
        if (r == KM_HTTP1_INCOMPLETE)
            break;
        if (r == KM_HTTP1_ERROR) {
            char body[256];
            int n = snprintf(body, sizeof(body), "%s\n", err);
            h1_write_response(c, status, "text/plain", body, (size_t)n, false);
            break;
        }
        char *method = km_xstrndup(req->method, req->method_len);
        char *path = km_xstrndup(req->target, req->target_len);
        size_t vl;
        const char *v = km_http1_header_get(req, "content-type", &vl);
        char *ctype = v ? km_xstrndup(v, vl) : NULL;
        v = km_http1_header_get(req, "authorization", &vl);
        char *authz = v ? km_xstrndup(v, vl) : NULL;
        struct km_http_request hreq = {
            .method = method,
            .path = path,
            .content_type = ctype,
            .authorization = authz,
            .body = req->body,
            .body_len = req->body_len,
        };
        struct km_http_response resp;
        http_dispatch(srv, &hreq, &resp);
        h1_write_response(c, resp.status, resp.content_type, resp.body ? resp.body : "",
                          resp.body ? resp.body_len : 0, req->keep_alive);
        free(resp.content_type);
        free(resp.body);
        free(method);
        free(path);
        free(ctype);
        free(authz);
        km_bq_pop(&c->in, NULL, req->consumed);
    }
    free(req);
}

/* Bytes from the peer, by connection state. Returns -1 to close. */
static int
conn_on_bytes(struct srv_conn *c, const uint8_t *p, size_t n)
{
    if (c->state == CONN_H2)
        return conn_h2_feed(c, p, n);
    if (c->state == CONN_SNIFF) {
        km_bq_push(&c->in, p, n);
        size_t k = c->in.len < H2_PREFACE_LEN ? c->in.len : H2_PREFACE_LEN;
        if (memcmp(km_bq_data(&c->in), h2_preface, k) == 0) {
            if (k < H2_PREFACE_LEN)
                return 0;
            if (conn_start_h2(c) != 0)
                return -1;
            int r = conn_h2_feed(c, km_bq_data(&c->in), c->in.len);
            km_bq_deinit(&c->in);
            return r;
        }
        c->state = CONN_H1;
        conn_arm_tick(c);
        conn_h1_process(c);
        return 0;
    }
    /* HTTP/1.1: bounded buffer (head + body limit) */
    size_t max = SRV_H1_MAX_HEAD + c->srv->opts.max_http_body;
    if (c->in.len + n > max + SRV_READ_CHUNK) {
        return -1;
    }
    km_bq_push(&c->in, p, n);
    conn_h1_process(c);
    return 0;
}

static void
conn_after_handshake(struct srv_conn *c)
{
    char alpn[32];
    km_xport_alpn(&c->x, alpn, sizeof(alpn));
    if (strcmp(alpn, "h2") == 0) {
        if (conn_start_h2(c) != 0)
            conn_close_later(c);
    } else if (strcmp(alpn, "http/1.1") == 0) {
        c->state = CONN_H1;
        conn_arm_tick(c);
    } else {
        c->state = CONN_SNIFF;
    }
}

static void
conn_process(struct srv_conn *c, unsigned events)
{
    uint8_t buf[SRV_READ_CHUNK];
    c->depth++;
    if (c->state == CONN_HANDSHAKE) {
        char err[256];
        int r = km_xport_handshake(&c->x, err, sizeof(err));
        if (r < 0) {
            km_log_debug("grpc", "%s: %s", c->peer, err);
            c->dead = true;
        } else if (r == 1) {
            conn_after_handshake(c);
            events |= KM_IO_READ; /* TLS may hold application bytes already */
        }
    }
    if (!c->dead && c->state != CONN_HANDSHAKE && (events & KM_IO_READ) &&
        !c->close_after_flush) {
        for (int i = 0; i < 16 && !c->dead && !c->close_after_flush; i++) {
            ssize_t n = km_xport_read(&c->x, buf, sizeof(buf));
            if (n == -1)
                break;
            if (n <= 0) {
                c->dead = true;
                break;
            }
            c->last_rx_ms = km_loop_now_ms(c->srv->loop);
            if (conn_on_bytes(c, buf, (size_t)n) != 0) {
                conn_pump(c); /* GOAWAY or 400 on the way out, best effort */
                c->dead = true;
                break;
            }
            if (c->x.out.len >= SRV_OUT_HIGH)
                break;
        }
    }
    if (!c->dead && c->state == CONN_H1 && !c->close_after_flush)
        conn_h1_process(c);
    if (!c->dead && conn_pump(c) != 0)
        c->dead = true;
    c->depth--;
    if (c->dead) {
        conn_destroy(c);
        return;
    }
    conn_update_events(c);
}

static void
conn_io_cb(struct km_io *io, int fd, unsigned events, void *arg)
{
    conn_process(arg, events);
}

static void
conn_kick_cb(struct km_timer *t, void *arg)
{
    conn_process(arg, 0);
}

static void
conn_tick_cb(struct km_timer *t, void *arg)
{
    struct srv_conn *c = arg;
    struct km_grpc_server *srv = c->srv;
    uint64_t now = km_loop_now_ms(srv->loop);
    uint64_t ka = srv->opts.keepalive_ms;
    switch (c->state) {
    case CONN_HANDSHAKE:
    case CONN_SNIFF:
        km_log_debug("grpc", "%s: no request within %d ms, closing", c->peer, SRV_HANDSHAKE_MS);
        conn_destroy(c);
        return;
    case CONN_H1:
        if (now - c->last_rx_ms >= 2 * ka && c->in.len == 0 && c->x.out.len == 0) {
            conn_destroy(c);
            return;
        }
        km_timer_arm(t, ka);
        return;
    case CONN_H2:
        if (c->ping_deadline_ms) {
            if (now >= c->ping_deadline_ms) {
                km_log_info("grpc", "%s: keepalive ping not answered, closing", c->peer);
                conn_destroy(c);
                return;
            }
            km_timer_arm(t, c->ping_deadline_ms - now);
            return;
        }
        if (now - c->last_rx_ms >= ka) {
            nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
            c->ping_deadline_ms = now + SRV_PING_TIMEOUT_MS;
            km_timer_arm(t, SRV_PING_TIMEOUT_MS < ka ? SRV_PING_TIMEOUT_MS : ka);
            conn_process(c, 0);
            return;
        }
        km_timer_arm(t, ka - (now - c->last_rx_ms));
        return;
    }
}

static void
conn_new(struct srv_listener *ls, int fd, const struct sockaddr_storage *sa)
{
    struct km_grpc_server *srv = ls->srv;
    SSL *ssl = NULL;
    if (ls->ctx) {
        ssl = SSL_new(ls->ctx);
        if (!ssl || SSL_set_fd(ssl, fd) != 1) {
            SSL_free(ssl);
            close(fd);
            return;
        }
        SSL_set_accept_state(ssl);
    }
    struct srv_conn *c = km_xcalloc(1, sizeof(*c));
    c->srv = srv;
    km_xport_init(&c->x, fd, ssl);
    c->state = ssl ? CONN_HANDSHAKE : CONN_SNIFF;
    c->last_rx_ms = km_loop_now_ms(srv->loop);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        snprintf(c->peer, sizeof(c->peer), "[%s]:%d", ip, port);
    } else {
        snprintf(c->peer, sizeof(c->peer), "local");
    }
    c->io = km_io_new(srv->loop, fd, KM_IO_READ, conn_io_cb, c);
    c->tick = km_timer_new(srv->loop, SRV_HANDSHAKE_MS, conn_tick_cb, c);
    c->kick = km_timer_new(srv->loop, 0, conn_kick_cb, c);
    km_timer_stop(c->kick);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    if (!c->io) {
        conn_destroy(c);
        return;
    }
}

static void
listener_resume_cb(struct km_timer *t, void *arg)
{
    struct srv_listener *ls = arg;
    km_io_set(ls->io, KM_IO_READ);
}

static void
listener_cb(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct srv_listener *ls = arg;
    for (int i = 0; i < SRV_ACCEPT_BATCH; i++) {
        struct sockaddr_storage sa;
        socklen_t slen = sizeof(sa);
        int cfd = accept4(fd, (struct sockaddr *)&sa, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            /* out of descriptors or memory: the level-triggered socket would spin, so pause */
            km_log_warn("grpc", "accept: %s (pausing 100 ms)", strerror(errno));
            km_io_set(io, 0);
            km_timer_arm(ls->backoff, 100);
            return;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_new(ls, cfd, &sa);
    }
}

/* ---- server ---- */

struct km_grpc_server *
km_grpc_server_new(struct km_loop *loop, const struct km_grpc_server_opts *opts)
{
    struct km_grpc_server *srv = km_xcalloc(1, sizeof(*srv));
    srv->loop = loop;
    srv->opts = *opts;
    if (!srv->opts.max_message_bytes)
        srv->opts.max_message_bytes = 4u << 20;
    if (!srv->opts.max_http_body)
        srv->opts.max_http_body = 1u << 20;
    if (!srv->opts.max_concurrent_streams)
        srv->opts.max_concurrent_streams = 100;
    if (!srv->opts.max_pending_write_bytes)
        srv->opts.max_pending_write_bytes = 16u << 20;
    if (!srv->opts.keepalive_ms)
        srv->opts.keepalive_ms = 30000;
    nghttp2_session_callbacks_new(&srv->cbs);
    nghttp2_session_callbacks_set_on_begin_headers_callback(srv->cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(srv->cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(srv->cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(srv->cbs, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(srv->cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(srv->cbs, on_stream_close);
    nghttp2_option_new(&srv->h2opt);
    nghttp2_option_set_max_outbound_ack(srv->h2opt, 1000);
    return srv;
}

int
km_grpc_server_listen(struct km_grpc_server *srv, int fd, const char *cert_pem,
                      const char *key_pem, char *err, size_t errlen)
{
    SSL_CTX *ctx = NULL;
    if (cert_pem && key_pem) {
        ctx = km_tls_server_ctx(cert_pem, key_pem, err, errlen);
        if (!ctx) {
            close(fd);
            return -1;
        }
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        snprintf(err, errlen, "listen: fcntl: %s", strerror(errno));
        SSL_CTX_free(ctx);
        close(fd);
        return -1;
    }
    struct srv_listener *ls = km_xcalloc(1, sizeof(*ls));
    ls->srv = srv;
    ls->fd = fd;
    ls->ctx = ctx;
    ls->io = km_io_new(srv->loop, fd, KM_IO_READ, listener_cb, ls);
    if (!ls->io) {
        snprintf(err, errlen, "listen: cannot watch socket: %s", strerror(errno));
        SSL_CTX_free(ctx);
        close(fd);
        free(ls);
        return -1;
    }
    ls->backoff = km_timer_new(srv->loop, 0, listener_resume_cb, ls);
    km_timer_stop(ls->backoff);
    ls->next = srv->listeners;
    srv->listeners = ls;
    return 0;
}

void
km_grpc_server_free(struct km_grpc_server *srv)
{
    if (!srv)
        return;
    while (srv->listeners) {
        struct srv_listener *ls = srv->listeners;
        srv->listeners = ls->next;
        km_io_free(ls->io);
        km_timer_free(ls->backoff);
        close(ls->fd);
        SSL_CTX_free(ls->ctx);
        free(ls);
    }
    /* GOAWAY to every HTTP/2 peer, one best-effort write, then tear down */
    for (struct srv_conn *c = srv->conns; c; c = c->next) {
        if (c->h2 && !c->dead) {
            nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(c->h2),
                                  NGHTTP2_NO_ERROR, NULL, 0);
            c->depth++;
            conn_pump(c);
            c->depth--;
        }
    }
    while (srv->conns)
        conn_destroy(srv->conns);
    nghttp2_session_callbacks_del(srv->cbs);
    nghttp2_option_del(srv->h2opt);
    free(srv);
}
