/* gRPC client over HTTP/2 (nghttp2): one connection per client, h2c with prior knowledge or
 * TLS with ALPN "h2". Calls may start before the connection is up: nghttp2 queues them and
 * nothing is written until the socket (and TLS) is ready. Application calls only queue and
 * arm the "kick" timer; callbacks run from the client's io callback or that timer. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/h2conn.h>
#include <km/common/util.h>

#define CL_READ_CHUNK    16384
#define CL_OUT_HIGH      (64 * 1024)
#define CL_MAX_MESSAGE   (64u << 20)
#define CL_WINDOW        (1 << 20)

enum cl_state { CL_CONNECTING = 0, CL_HANDSHAKE, CL_OPEN, CL_FAILED };

struct km_grpc_call {
    struct km_grpc_client *cl; /* borrowed */
    int32_t id;
    struct km_grpc_call_cbs cbs;
    struct km_grpc_rx rx;
    struct km_bq out;     /* framed request bytes not yet given to nghttp2 */
    bool send_closed;     /* close_send called */
    bool deferred;
    bool cancelled;       /* no more callbacks */
    bool done;            /* on_close delivered */
    bool have_status;
    int status;
    int http_status;
    char *message;        /* owned, decoded grpc-message */
    struct km_grpc_call *prev, *next;
};

struct km_grpc_client {
    struct km_loop *loop; /* borrowed */
    struct km_xport x;
    struct km_io *io;     /* owned */
    struct km_timer *kick; /* owned */
    SSL_CTX *ctx;         /* owned */
    nghttp2_session *h2;  /* owned */
    enum cl_state state;
    bool tls;
    char authority[80];
    char fail_msg[512];
    int depth;
    bool free_requested;
    struct km_grpc_call *calls; /* owned list */
};

static void cl_process(struct km_grpc_client *cl, unsigned events);

static void
cl_kick(struct km_grpc_client *cl)
{
    if (cl->depth == 0 && cl->kick)
        km_timer_arm(cl->kick, 0);
}

static void
call_unlink_free(struct km_grpc_call *call)
{
    struct km_grpc_client *cl = call->cl;
    if (call->prev)
        call->prev->next = call->next;
    else
        cl->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    km_grpc_rx_deinit(&call->rx);
    km_bq_deinit(&call->out);
    free(call->message);
    free(call);
}

static void
call_deliver_close(struct km_grpc_call *call, int status, const char *msg)
{
    if (call->done || call->cancelled)
        return;
    call->done = true;
    if (call->cbs.on_close)
        call->cbs.on_close(call, status, msg, call->cbs.ud);
}

/* ---- nghttp2 callbacks ---- */

static ssize_t
call_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
             uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    struct km_grpc_call *call = source->ptr;
    size_t n = km_bq_pop(&call->out, buf, length);
    if (call->out.len == 0 && call->send_closed) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    if (n == 0) {
        call->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static int
cl_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
             size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
             void *user_data)
{
    struct km_grpc_call *call = nghttp2_session_get_stream_user_data(session,
                                                                      frame->hd.stream_id);
    if (!call || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            st = st * 10 + (value[i] - '0');
        call->http_status = st;
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 4; i++) {
            if (value[i] < '0' || value[i] > '9') {
                st = KM_GRPC_UNKNOWN;
                break;
            }
            st = st * 10 + (value[i] - '0');
        }
        call->status = st;
        call->have_status = true;
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        free(call->message);
        call->message = km_grpc_pct_decode((const char *)value, valuelen);
    }
    return 0;
}

static int
cl_deliver(void *arg, const uint8_t *msg, size_t len)
{
    struct km_grpc_call *call = arg;
    if (call->cancelled || call->done || call->cl->free_requested)
        return 1;
    if (call->cbs.on_message)
        call->cbs.on_message(call, msg, len, call->cbs.ud);
    return call->cancelled || call->done || call->cl->free_requested;
}

static int
cl_on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                      const uint8_t *data, size_t len, void *user_data)
{
    struct km_grpc_call *call = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!call || call->cancelled || call->done)
        return 0;
    int status = 0;
    char err[160];
    if (km_grpc_rx_feed(&call->rx, data, len, CL_MAX_MESSAGE, cl_deliver, call, &status, err,
                        sizeof(err)) < 0) {
        call_deliver_close(call, status, err);
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
    }
    return 0;
}

static int
http_to_grpc_status(int http)
{
    switch (http) {
    case 400: return KM_GRPC_INTERNAL;
    case 401: return KM_GRPC_UNAUTHENTICATED;
    case 403: return KM_GRPC_PERMISSION_DENIED;
    case 404: return KM_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504: return KM_GRPC_UNAVAILABLE;
    default: return KM_GRPC_UNKNOWN;
    }
}

static int
cl_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                   void *user_data)
{
    struct km_grpc_call *call = nghttp2_session_get_stream_user_data(session, stream_id);
    if (!call)
        return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    if (call->have_status) {
        call_deliver_close(call, call->status, call->message);
    } else if (error_code == NGHTTP2_REFUSED_STREAM) {
        call_deliver_close(call, KM_GRPC_UNAVAILABLE, "stream refused");
    } else if (error_code != NGHTTP2_NO_ERROR) {
        char msg[96];
        snprintf(msg, sizeof(msg), "stream reset: %s", nghttp2_http2_strerror(error_code));
        call_deliver_close(call, error_code == NGHTTP2_CANCEL ? KM_GRPC_CANCELLED
                                                               : KM_GRPC_INTERNAL, msg);
    } else if (call->http_status && call->http_status != 200) {
        char msg[64];
        snprintf(msg, sizeof(msg), "HTTP status %d", call->http_status);
        call_deliver_close(call, http_to_grpc_status(call->http_status), msg);
    } else {
        call_deliver_close(call, KM_GRPC_INTERNAL, "stream ended without grpc-status");
    }
    call_unlink_free(call);
    return 0;
}

/* ---- connection ---- */

static void
cl_fail(struct km_grpc_client *cl, const char *why)
{
    if (cl->state == CL_FAILED)
        return;
    cl->state = CL_FAILED;
    snprintf(cl->fail_msg, sizeof(cl->fail_msg), "%s", why);
    if (cl->io) {
        km_io_free(cl->io);
        cl->io = NULL;
    }
    km_xport_deinit(&cl->x);
    /* every open call ends UNAVAILABLE; on_close may free the client (free_requested) */
    cl->depth++;
    for (struct km_grpc_call *call = cl->calls; call; call = call->next)
        call_deliver_close(call, KM_GRPC_UNAVAILABLE, cl->fail_msg);
    cl->depth--;
    while (cl->calls) {
        if (cl->h2)
            nghttp2_session_set_stream_user_data(cl->h2, cl->calls->id, NULL);
        call_unlink_free(cl->calls);
    }
    if (cl->h2) {
        nghttp2_session_del(cl->h2);
        cl->h2 = NULL;
    }
}

static int
cl_pump(struct km_grpc_client *cl)
{
    if (cl->state != CL_OPEN)
        return 0;
    for (;;) {
        bool produced = false;
        while (cl->x.out.len < CL_OUT_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(cl->h2, &data);
            if (n < 0)
                return -1;
            if (n == 0)
                break;
            km_bq_push(&cl->x.out, data, (size_t)n);
            produced = true;
        }
        if (km_xport_flush(&cl->x) != 0)
            return -1;
        if (!produced || cl->x.out.len > 0)
            break;
    }
    return 0;
}

static void
cl_destroy(struct km_grpc_client *cl)
{
    for (struct km_grpc_call *call = cl->calls; call; call = call->next)
        call->cancelled = true; /* no callbacks while tearing down */
    while (cl->calls)
        call_unlink_free(cl->calls);
    if (cl->h2)
        nghttp2_session_del(cl->h2);
    km_io_free(cl->io);
    km_timer_free(cl->kick);
    if (cl->state != CL_FAILED)
        km_xport_deinit(&cl->x);
    SSL_CTX_free(cl->ctx);
    free(cl);
}

static void
cl_process(struct km_grpc_client *cl, unsigned events)
{
    uint8_t buf[CL_READ_CHUNK];
    char err[512];
    cl->depth++;
    if (cl->state == CL_CONNECTING && (events & KM_IO_WRITE)) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        getsockopt(cl->x.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr != 0) {
            snprintf(err, sizeof(err), "connect %s: %s", cl->authority, strerror(soerr));
            cl_fail(cl, err);
        } else {
            cl->state = cl->tls ? CL_HANDSHAKE : CL_OPEN;
        }
    }
    if (cl->state == CL_HANDSHAKE) {
        int r = km_xport_handshake(&cl->x, err, sizeof(err));
        if (r < 0) {
            cl_fail(cl, err);
        } else if (r == 1) {
            char alpn[32];
            km_xport_alpn(&cl->x, alpn, sizeof(alpn));
            if (strcmp(alpn, "h2") != 0) {
                cl_fail(cl, "TLS: the server did not select ALPN h2");
            } else {
                cl->state = CL_OPEN;
                events |= KM_IO_READ;
            }
        }
    }
    if (cl->state == CL_OPEN && (events & KM_IO_READ)) {
        for (int i = 0; i < 16 && cl->state == CL_OPEN && !cl->free_requested; i++) {
            ssize_t n = km_xport_read(&cl->x, buf, sizeof(buf));
            if (n == -1)
                break;
            if (n <= 0) {
                snprintf(err, sizeof(err), "connection to %s closed", cl->authority);
                cl_fail(cl, err);
                break;
            }
            ssize_t r = nghttp2_session_mem_recv(cl->h2, buf, (size_t)n);
            if (r < 0) {
                snprintf(err, sizeof(err), "HTTP/2 error: %s", nghttp2_strerror((int)r));
                cl_fail(cl, err);
                break;
            }
            if (cl->x.out.len >= CL_OUT_HIGH)
                break;
        }
    }
    if (cl->state == CL_OPEN && !cl->free_requested) {
        if (cl_pump(cl) != 0) {
            snprintf(err, sizeof(err), "write to %s failed", cl->authority);
            cl_fail(cl, err);
        } else if (!nghttp2_session_want_read(cl->h2) && !nghttp2_session_want_write(cl->h2) &&
                   cl->x.out.len == 0) {
            snprintf(err, sizeof(err), "connection to %s ended (GOAWAY)", cl->authority);
            cl_fail(cl, err);
        }
    }
    cl->depth--;
    if (cl->free_requested) {
        if (cl->depth == 0)
            cl_destroy(cl);
        return;
    }
    if (cl->io) {
        unsigned ev;
        if (cl->state == CL_CONNECTING)
            ev = KM_IO_WRITE;
        else
            ev = km_xport_events(&cl->x, cl->x.out.len < CL_OUT_HIGH);
        km_io_set(cl->io, ev);
    }
}

static void
cl_io_cb(struct km_io *io, int fd, unsigned events, void *arg)
{
    cl_process(arg, events);
}

static void
cl_kick_cb(struct km_timer *t, void *arg)
{
    cl_process(arg, 0);
}

static SSL_CTX *
cl_tls_ctx(const char *host, const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    static const unsigned char alpn[] = "\x02h2";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            snprintf(err, errlen, "TLS: cannot load CA file %s", ca_file);
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
        if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
            X509_VERIFY_PARAM_set1_host(param, host, 0);
    }
    return ctx;
}

struct km_grpc_client *
km_grpc_client_new(struct km_loop *loop, const char *host, int port, bool tls,
                   const char *ca_file)
{
    struct km_grpc_client *cl = km_xcalloc(1, sizeof(*cl));
    char err[512];
    cl->loop = loop;
    cl->tls = tls;
    km_xport_init(&cl->x, -1, NULL);
    bool v6 = strchr(host, ':') != NULL;
    snprintf(cl->authority, sizeof(cl->authority), v6 ? "[%s]:%d" : "%s:%d", host, port);
    cl->kick = km_timer_new(loop, 0, cl_kick_cb, cl);

    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, cl_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, cl_on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, cl_on_stream_close);
    int r = nghttp2_session_client_new(&cl->h2, cbs, cl);
    nghttp2_session_callbacks_del(cbs);
    if (r != 0) {
        cl->h2 = NULL;
        cl_fail(cl, "HTTP/2: cannot create session");
        return cl;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, CL_WINDOW},
    };
    nghttp2_submit_settings(cl->h2, NGHTTP2_FLAG_NONE, iv, KM_ARRAY_LEN(iv));
    nghttp2_session_set_local_window_size(cl->h2, NGHTTP2_FLAG_NONE, 0, 4 * CL_WINDOW);

    struct sockaddr_storage sa;
    socklen_t slen;
    memset(&sa, 0, sizeof(sa));
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        r = inet_pton(AF_INET6, host, &a->sin6_addr);
        slen = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&sa;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        r = inet_pton(AF_INET, host, &a->sin_addr);
        slen = sizeof(*a);
    }
    if (r != 1 || port <= 0 || port > 65535) {
        snprintf(err, sizeof(err), "address %s: not an IP literal and port", cl->authority);
        cl_fail(cl, err);
        return cl;
    }
    SSL *ssl = NULL;
    if (tls) {
        cl->ctx = cl_tls_ctx(host, ca_file, err, sizeof(err));
        if (!cl->ctx) {
            cl_fail(cl, err);
            return cl;
        }
    }
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, sizeof(err), "socket: %s", strerror(errno));
        cl_fail(cl, err);
        return cl;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (tls) {
        ssl = SSL_new(cl->ctx);
        if (!ssl || SSL_set_fd(ssl, fd) != 1) {
            SSL_free(ssl);
            close(fd);
            cl_fail(cl, "TLS: cannot create connection");
            return cl;
        }
        SSL_set_connect_state(ssl);
    }
    km_xport_init(&cl->x, fd, ssl);
    if (connect(fd, (struct sockaddr *)&sa, slen) != 0 && errno != EINPROGRESS) {
        snprintf(err, sizeof(err), "connect %s: %s", cl->authority, strerror(errno));
        cl_fail(cl, err);
        return cl;
    }
    cl->state = CL_CONNECTING;
    cl->io = km_io_new(loop, fd, KM_IO_WRITE, cl_io_cb, cl);
    if (!cl->io)
        cl_fail(cl, "cannot watch the socket");
    return cl;
}

void
km_grpc_client_free(struct km_grpc_client *cl)
{
    if (!cl)
        return;
    if (cl->depth > 0) {
        /* inside one of our callbacks: finish there */
        cl->free_requested = true;
        for (struct km_grpc_call *call = cl->calls; call; call = call->next)
            call->cancelled = true;
        return;
    }
    cl_destroy(cl);
}

bool
km_grpc_client_failed(const struct km_grpc_client *cl, const char **why)
{
    if (why)
        *why = cl->fail_msg;
    return cl->state == CL_FAILED;
}

struct km_grpc_call *
km_grpc_call_start(struct km_grpc_client *cl, const char *path, const char *const *headers,
                   const struct km_grpc_call_cbs *cbs)
{
    if (cl->state == CL_FAILED || cl->free_requested)
        return NULL;
    size_t nextra = 0;
    while (headers && headers[2 * nextra] && headers[2 * nextra + 1])
        nextra++;
    if (nextra > 64)
        return NULL;
    nghttp2_nv *nv = km_xcalloc(6 + nextra, sizeof(*nv));
    const char *fixed[6][2] = {
        {":method", "POST"},
        {":scheme", cl->tls ? "https" : "http"},
        {":path", path},
        {":authority", cl->authority},
        {"content-type", "application/grpc"},
        {"te", "trailers"},
    };
    size_t n = 0;
    for (size_t i = 0; i < 6; i++, n++) {
        nv[n].name = (uint8_t *)fixed[i][0];
        nv[n].namelen = strlen(fixed[i][0]);
        nv[n].value = (uint8_t *)fixed[i][1];
        nv[n].valuelen = strlen(fixed[i][1]);
    }
    for (size_t i = 0; i < nextra; i++, n++) {
        nv[n].name = (uint8_t *)headers[2 * i];
        nv[n].namelen = strlen(headers[2 * i]);
        nv[n].value = (uint8_t *)headers[2 * i + 1];
        nv[n].valuelen = strlen(headers[2 * i + 1]);
    }
    struct km_grpc_call *call = km_xcalloc(1, sizeof(*call));
    call->cl = cl;
    call->cbs = *cbs;
    nghttp2_data_provider dp = {.source.ptr = call, .read_callback = call_read_cb};
    int32_t id = nghttp2_submit_request(cl->h2, NULL, nv, n, &dp, call);
    free(nv);
    if (id < 0) {
        free(call);
        return NULL;
    }
    call->id = id;
    call->next = cl->calls;
    if (cl->calls)
        cl->calls->prev = call;
    cl->calls = call;
    cl_kick(cl);
    return call;
}

int
km_grpc_call_send(struct km_grpc_call *call, const uint8_t *msg, size_t len)
{
    struct km_grpc_client *cl = call->cl;
    if (call->send_closed || call->cancelled || call->done || cl->state == CL_FAILED)
        return -1;
    km_grpc_frame_push(&call->out, msg, len);
    if (call->deferred) {
        call->deferred = false;
        nghttp2_session_resume_data(cl->h2, call->id);
    }
    cl_kick(cl);
    return 0;
}

void
km_grpc_call_close_send(struct km_grpc_call *call)
{
    struct km_grpc_client *cl = call->cl;
    if (call->send_closed || call->cancelled || call->done || cl->state == CL_FAILED)
        return;
    call->send_closed = true;
    if (call->deferred) {
        call->deferred = false;
        nghttp2_session_resume_data(cl->h2, call->id);
    }
    cl_kick(cl);
}

void
km_grpc_call_cancel(struct km_grpc_call *call)
{
    struct km_grpc_client *cl = call->cl;
    if (call->cancelled)
        return;
    call->cancelled = true;
    if (cl->state == CL_FAILED || call->done)
        return;
    nghttp2_submit_rst_stream(cl->h2, NGHTTP2_FLAG_NONE, call->id, NGHTTP2_CANCEL);
    cl_kick(cl);
}
