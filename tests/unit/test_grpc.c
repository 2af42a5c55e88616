/* gRPC server and client over real sockets on 127.0.0.1 (plaintext h2c and TLS), plain HTTP on
 * the same port (HTTP/1.1 and HTTP/2, also with curl as an independent client), limits and
 * stream lifecycle (every server stream closes exactly once). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <km/common/grpc.h>
#include <km/common/h2conn.h>
#include <km/common/loop.h>
#include <km/common/tlsgen.h>
#include <km/common/util.h>

#include "test.h"

/* ---- server side ---- */

struct srv_state {
    int opens, closes, half_closes, msgs;
    int send_failures;
};
static struct srv_state S;

static int
echo_open(struct km_grpc_stream *s, void *ud)
{
    S.opens++;
    ASSERT(km_grpc_stream_peer(s) != NULL);
    ASSERT_STR_EQ(km_grpc_stream_header(s, "content-type"), "application/grpc");
    return 0;
}

static void
echo_message(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    S.msgs++;
    ASSERT_INT_EQ(km_grpc_stream_send(s, msg, len), 0);
}

static void
echo_half_close(struct km_grpc_stream *s, void *ud)
{
    S.half_closes++;
    km_grpc_stream_finish(s, KM_GRPC_OK, NULL);
}

static void
count_close(struct km_grpc_stream *s, void *ud)
{
    S.closes++;
}

/* message "N:text" -> finish with status N and message text */
static void
fail_message(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%.*s", (int)len, (const char *)msg);
    char *colon = strchr(buf, ':');
    ASSERT(colon);
    *colon = '\0';
    km_grpc_stream_finish(s, atoi(buf), colon + 1);
    /* a second finish and a send after finish are refused quietly */
    km_grpc_stream_finish(s, KM_GRPC_OK, NULL);
    ASSERT_INT_EQ(km_grpc_stream_send(s, msg, len), -1);
}

static int
refuse_open(struct km_grpc_stream *s, void *ud)
{
    return KM_GRPC_PERMISSION_DENIED;
}

static void
hold_message(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    S.msgs++;
}

static void
flood_message(struct km_grpc_stream *s, const uint8_t *msg, size_t len, void *ud)
{
    static uint8_t big[256 * 1024];
    for (int i = 0; i < 1000; i++) {
        if (km_grpc_stream_send(s, big, sizeof(big)) != 0) {
            S.send_failures++;
            return;
        }
    }
}

static const struct km_grpc_method methods[] = {
    {"/test.Echo/Echo", echo_open, echo_message, echo_half_close, count_close, NULL},
    {"/test.Echo/Fail", echo_open, fail_message, NULL, count_close, NULL},
    {"/test.Echo/Refuse", refuse_open, hold_message, NULL, count_close, NULL},
    {"/test.Echo/Hold", echo_open, hold_message, NULL, count_close, NULL},
    {"/test.Echo/Flood", echo_open, flood_message, NULL, count_close, NULL},
};

static void
http_handler(const struct km_http_request *req, struct km_http_response *resp, void *ud)
{
    resp->status = 200;
    resp->content_type = km_xstrdup("text/plain");
    resp->body = km_xasprintf("%s %s %s %.*s", req->method, req->path,
                              req->content_type ? req->content_type : "-",
                              (int)req->body_len, (const char *)req->body);
    resp->body_len = strlen(resp->body);
}

struct fixture {
    struct km_loop *loop;
    struct km_grpc_server *srv;
    int port;
    bool tls;
    char ca_path[64];
};

static int
listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    ASSERT(listen(fd, 128) == 0);
    socklen_t sl = sizeof(a);
    ASSERT(getsockname(fd, (struct sockaddr *)&a, &sl) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void
fixture_start(struct fixture *f, bool tls, size_t max_msg, size_t max_pending)
{
    memset(f, 0, sizeof(*f));
    memset(&S, 0, sizeof(S));
    f->loop = km_loop_new();
    f->tls = tls;
    struct km_grpc_server_opts o = {
        .methods = methods,
        .nmethods = KM_ARRAY_LEN(methods),
        .http_handler = http_handler,
        .max_message_bytes = max_msg,
        .max_pending_write_bytes = max_pending,
        .max_http_body = 4096,
    };
    f->srv = km_grpc_server_new(f->loop, &o);
    int fd = listen_any(&f->port);
    char err[256];
    char *cert = NULL, *key = NULL;
    if (tls) {
        const char *dns[] = {"localhost"};
        ASSERT(km_tls_selfsigned(dns, 1, 1, &cert, &key, err, sizeof(err)) == 0);
        snprintf(f->ca_path, sizeof(f->ca_path), "/tmp/km-test-ca-%d.pem", (int)getpid());
        FILE *fp = fopen(f->ca_path, "w");
        ASSERT(fp);
        fputs(cert, fp);
        fclose(fp);
    }
    ASSERT(km_grpc_server_listen(f->srv, fd, cert, key, err, sizeof(err)) == 0);
    free(cert);
    free(key);
}

static void
fixture_stop(struct fixture *f)
{
    km_grpc_server_free(f->srv);
    km_loop_free(f->loop);
    if (f->ca_path[0])
        unlink(f->ca_path);
}

static struct km_grpc_client *
fixture_client(struct fixture *f, struct km_loop *loop)
{
    return km_grpc_client_new(loop ? loop : f->loop, "127.0.0.1", f->port, f->tls,
                              f->tls ? f->ca_path : NULL);
}

static uint64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef bool (*pred_fn)(void *arg);

static bool
wait_until(struct km_loop *l, pred_fn pred, void *arg, int ms)
{
    uint64_t end = mono_ms() + (uint64_t)ms;
    while (!pred(arg)) {
        if (mono_ms() > end)
            return false;
        km_loop_run_once(l, 10);
    }
    return true;
}

static bool
int_at_least(void *arg)
{
    int *p = arg;
    return p[0] >= p[1];
}

#define WAIT_INT(loop, var, n)                                                                     \
    do {                                                                                           \
        int pair_[2];                                                                              \
        uint64_t end_ = mono_ms() + 5000;                                                          \
        for (;;) {                                                                                 \
            pair_[0] = (var);                                                                      \
            pair_[1] = (n);                                                                        \
            if (int_at_least(pair_) || mono_ms() > end_)                                           \
                break;                                                                             \
            km_loop_run_once((loop), 10);                                                          \
        }                                                                                          \
        ASSERT_INT_EQ((var), (n));                                                                 \
    } while (0)

/* ---- client side ---- */

struct call_state {
    int msgs;
    size_t bytes;
    uint8_t *last;
    size_t last_len;
    bool closed;
    int status;
    char message[256];
};

static void
cs_message(struct km_grpc_call *c, const uint8_t *msg, size_t len, void *ud)
{
    struct call_state *cs = ud;
    cs->msgs++;
    cs->bytes += len;
    free(cs->last);
    cs->last = malloc(len ? len : 1);
    memcpy(cs->last, msg, len);
    cs->last_len = len;
}

static void
cs_close(struct km_grpc_call *c, int status, const char *message, void *ud)
{
    struct call_state *cs = ud;
    ASSERT(!cs->closed); /* once */
    cs->closed = true;
    cs->status = status;
    snprintf(cs->message, sizeof(cs->message), "%s", message ? message : "");
}

static bool
cs_is_closed(void *arg)
{
    return ((struct call_state *)arg)->closed;
}

static struct km_grpc_call *
start(struct km_grpc_client *cl, const char *path, struct call_state *cs)
{
    memset(cs, 0, sizeof(*cs));
    struct km_grpc_call_cbs cbs = {cs_message, cs_close, cs};
    struct km_grpc_call *c = km_grpc_call_start(cl, path, NULL, &cbs);
    ASSERT(c != NULL);
    return c;
}

static void
echo_many(bool tls)
{
    struct fixture f;
    fixture_start(&f, tls, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs;
    struct km_grpc_call *c = start(cl, "/test.Echo/Echo", &cs); /* queued before connect */
    size_t sent = 0;
    for (int i = 0; i < 200; i++) {
        uint8_t buf[3000];
        size_t len = (size_t)(i * 13) % sizeof(buf);
        memset(buf, 'a' + i % 26, len);
        ASSERT_INT_EQ(km_grpc_call_send(c, buf, len), 0);
        sent += len;
    }
    WAIT_INT(f.loop, cs.msgs, 200);
    ASSERT_INT_EQ(cs.bytes, sent);
    km_grpc_call_close_send(c);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 5000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_OK);
    WAIT_INT(f.loop, S.closes, 1);
    ASSERT_INT_EQ(S.opens, 1);
    ASSERT_INT_EQ(S.half_closes, 1);
    free(cs.last);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_echo_bidi_plaintext)
{
    echo_many(false);
}

KM_TEST(grpc_echo_bidi_tls_verified)
{
    echo_many(true);
}

KM_TEST(grpc_many_concurrent_streams)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    enum { N = 50 };
    struct call_state *cs = calloc(N, sizeof(*cs));
    for (int i = 0; i < N; i++) {
        struct km_grpc_call *c = start(cl, "/test.Echo/Echo", &cs[i]);
        for (int k = 0; k < 20; k++)
            ASSERT_INT_EQ(km_grpc_call_send(c, (const uint8_t *)"ping", 4), 0);
        km_grpc_call_close_send(c);
    }
    for (int i = 0; i < N; i++) {
        ASSERT(wait_until(f.loop, cs_is_closed, &cs[i], 5000));
        ASSERT_INT_EQ(cs[i].status, KM_GRPC_OK);
        ASSERT_INT_EQ(cs[i].msgs, 20);
        free(cs[i].last);
    }
    WAIT_INT(f.loop, S.closes, N);
    free(cs);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_large_message_at_and_over_the_limit)
{
    struct fixture f;
    size_t max = 1u << 20;
    fixture_start(&f, false, max, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    uint8_t *big = malloc(max + 1);
    for (size_t i = 0; i <= max; i++)
        big[i] = (uint8_t)(i * 7);
    /* exactly the limit: spans many DATA frames, reassembled intact */
    struct call_state cs;
    struct km_grpc_call *c = start(cl, "/test.Echo/Echo", &cs);
    ASSERT_INT_EQ(km_grpc_call_send(c, big, max), 0);
    km_grpc_call_close_send(c);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 10000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_OK);
    ASSERT_INT_EQ(cs.msgs, 1);
    ASSERT_INT_EQ(cs.last_len, max);
    ASSERT(memcmp(cs.last, big, max) == 0);
    free(cs.last);
    /* one byte over */
    c = start(cl, "/test.Echo/Echo", &cs);
    ASSERT_INT_EQ(km_grpc_call_send(c, big, max + 1), 0);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 10000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_RESOURCE_EXHAUSTED);
    ASSERT_STR_CONTAINS(cs.message, "larger than max");
    WAIT_INT(f.loop, S.closes, 2);
    ASSERT_INT_EQ(S.msgs, 1);
    /* the connection still works */
    c = start(cl, "/test.Echo/Echo", &cs);
    km_grpc_call_send(c, (const uint8_t *)"x", 1);
    km_grpc_call_close_send(c);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 5000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_OK);
    free(cs.last);
    free(big);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_unknown_method_is_unimplemented)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs;
    struct km_grpc_call *c = start(cl, "/test.Echo/Nope", &cs);
    km_grpc_call_send(c, (const uint8_t *)"x", 1);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 5000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_UNIMPLEMENTED);
    ASSERT_STR_CONTAINS(cs.message, "/test.Echo/Nope");
    ASSERT_INT_EQ(S.opens, 0);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_finish_status_and_encoded_message)
{
    struct fixture f;
    fixture_start(&f, true, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs;
    struct km_grpc_call *c = start(cl, "/test.Echo/Fail", &cs);
    const char *m = "3:field spec.x: 100% wrong \xc3\xbc\nsecond line";
    km_grpc_call_send(c, (const uint8_t *)m, strlen(m));
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 5000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_INVALID_ARGUMENT);
    ASSERT_STR_EQ(cs.message, "field spec.x: 100% wrong \xc3\xbc\nsecond line");
    WAIT_INT(f.loop, S.closes, 1);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_on_open_refusal)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs;
    start(cl, "/test.Echo/Refuse", &cs);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 5000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_PERMISSION_DENIED);
    for (int i = 0; i < 10; i++)
        km_loop_run_once(f.loop, 5);
    ASSERT_INT_EQ(S.closes, 0);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_client_cancel_closes_server_stream)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs;
    struct km_grpc_call *c = start(cl, "/test.Echo/Hold", &cs);
    km_grpc_call_send(c, (const uint8_t *)"x", 1);
    WAIT_INT(f.loop, S.msgs, 1);
    km_grpc_call_cancel(c);
    WAIT_INT(f.loop, S.closes, 1);
    ASSERT(!cs.closed); /* no callback after cancel */
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_connection_drop_closes_every_stream)
{
    struct fixture f;
    fixture_start(&f, true, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs[3];
    for (int i = 0; i < 3; i++)
        start(cl, "/test.Echo/Hold", &cs[i]);
    WAIT_INT(f.loop, S.opens, 3);
    km_grpc_client_free(cl);
    WAIT_INT(f.loop, S.closes, 3);
    fixture_stop(&f);
    ASSERT_INT_EQ(S.closes, 3);
}

KM_TEST(grpc_server_free_sends_goaway_and_closes_streams)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs;
    start(cl, "/test.Echo/Hold", &cs);
    WAIT_INT(f.loop, S.opens, 1);
    km_grpc_server_free(f.srv);
    f.srv = NULL;
    ASSERT_INT_EQ(S.closes, 1);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 5000));
    ASSERT(cs.status == KM_GRPC_UNAVAILABLE);
    const char *why = NULL;
    ASSERT(km_grpc_client_failed(cl, &why));
    ASSERT(km_grpc_call_start(cl, "/test.Echo/Echo", NULL,
                              &(struct km_grpc_call_cbs){cs_message, cs_close, &cs}) == NULL);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}

KM_TEST(grpc_connect_refused_is_unavailable)
{
    struct km_loop *l = km_loop_new();
    int port;
    int fd = listen_any(&port);
    close(fd); /* nothing listens there now */
    struct km_grpc_client *cl = km_grpc_client_new(l, "127.0.0.1", port, false, NULL);
    struct call_state cs;
    start(cl, "/x/y", &cs);
    ASSERT(wait_until(l, cs_is_closed, &cs, 5000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_UNAVAILABLE);
    ASSERT_STR_CONTAINS(cs.message, "connect");
    km_grpc_client_free(cl);
    km_loop_free(l);
}

/* on_close freeing the client from inside its own callback */
static void
free_client_on_close(struct km_grpc_call *c, int status, const char *message, void *ud)
{
    struct km_grpc_client **cl = ud;
    km_grpc_client_free(*cl);
    *cl = NULL;
}

KM_TEST(grpc_client_free_inside_callback)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct km_grpc_call_cbs cbs = {NULL, free_client_on_close, &cl};
    km_grpc_call_start(cl, "/test.Echo/Nope", NULL, &cbs);
    km_grpc_call_start(cl, "/test.Echo/Hold", NULL, &cbs);
    uint64_t end = mono_ms() + 5000;
    while (cl && mono_ms() < end)
        km_loop_run_once(f.loop, 10);
    ASSERT(cl == NULL);
    WAIT_INT(f.loop, S.closes, 1); /* the Hold stream went with the connection */
    fixture_stop(&f);
}

KM_TEST(grpc_write_queue_limit_closes_connection)
{
    struct fixture f;
    fixture_start(&f, false, 0, 2u << 20);
    /* the client runs on its own loop, which stops after the request went out: it never
     * reads, so the server's queue grows past the limit */
    struct km_loop *cloop = km_loop_new();
    struct km_grpc_client *cl = fixture_client(&f, cloop);
    struct call_state cs;
    struct km_grpc_call *c = start(cl, "/test.Echo/Flood", &cs);
    km_grpc_call_send(c, (const uint8_t *)"go", 2);
    uint64_t end = mono_ms() + 5000;
    while (S.send_failures == 0 && mono_ms() < end) {
        km_loop_run_once(cloop, 0);
        km_loop_run_once(f.loop, 10);
    }
    ASSERT_INT_EQ(S.send_failures, 1);
    WAIT_INT(f.loop, S.closes, 1);
    km_grpc_client_free(cl);
    km_loop_free(cloop);
    fixture_stop(&f);
}

/* ---- plain HTTP on the same port ---- */

struct raw_conn {
    int fd;
    char buf[65536];
    size_t len;
    int want; /* responses expected */
};

static bool
raw_have(void *arg)
{
    struct raw_conn *r = arg;
    ssize_t n = recv(r->fd, r->buf + r->len, sizeof(r->buf) - 1 - r->len, MSG_DONTWAIT);
    if (n > 0)
        r->len += (size_t)n;
    r->buf[r->len] = '\0';
    int count = 0;
    for (const char *p = r->buf; (p = strstr(p, "HTTP/1.1 ")) != NULL; p++)
        count++;
    if (count < r->want)
        return n == 0; /* EOF */
    /* complete when the last body is in: bodies here end with a known marker */
    const char *last = strstr(r->buf, "\r\n\r\n");
    return last != NULL && (r->buf[r->len - 1] == '\n' || strstr(r->buf, "END") != NULL);
}

static int
raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    return fd;
}

KM_TEST(http1_post_with_body_keepalive_pipelined)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct raw_conn r = {.fd = raw_connect(f.port), .want = 2};
    const char *req = "POST /bootstrap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 10\r\n\r\n{\"a\":\"b1\"}"
                      "POST /again?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nEND";
    /* dribble the bytes in two writes split inside the first body */
    ASSERT_INT_EQ(write(r.fd, req, 60), 60);
    for (int i = 0; i < 5; i++)
        km_loop_run_once(f.loop, 5);
    ASSERT_INT_EQ(write(r.fd, req + 60, strlen(req) - 60), strlen(req) - 60);
    ASSERT(wait_until(f.loop, raw_have, &r, 5000));
    ASSERT_STR_CONTAINS(r.buf, "HTTP/1.1 200 OK\r\n");
    ASSERT_STR_CONTAINS(r.buf, "POST /bootstrap application/json {\"a\":\"b1\"}");
    ASSERT_STR_CONTAINS(r.buf, "POST /again?q=1 - END");
    ASSERT(strstr(r.buf, "Connection: close") == NULL);
    close(r.fd);
    fixture_stop(&f);
}

static void
http1_bad(const char *req, const char *status, const char *text)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct raw_conn r = {.fd = raw_connect(f.port), .want = 1};
    ASSERT_INT_EQ(write(r.fd, req, strlen(req)), strlen(req));
    ASSERT(wait_until(f.loop, raw_have, &r, 5000));
    ASSERT_STR_CONTAINS(r.buf, status);
    ASSERT_STR_CONTAINS(r.buf, text);
    ASSERT_STR_CONTAINS(r.buf, "Connection: close");
    close(r.fd);
    fixture_stop(&f);
}

KM_TEST(http1_malformed_requests_get_400)
{
    http1_bad("GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", "HTTP/1.1 400 ",
              "malformed header name");
    http1_bad("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
              "HTTP/1.1 400 ", "content-length: repeated");
    http1_bad("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
              "\r\n\r\n", "HTTP/1.1 400 ", "both content-length and transfer-encoding");
    http1_bad("GET / HTTP/1.1\nHost: x\n\n", "HTTP/1.1 400 ", "bare LF");
    http1_bad("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n", "HTTP/1.1 413 ",
              "over the limit");
}

/* curl against a server running in its own thread */
static void *
loop_thread(void *arg)
{
    km_loop_run(arg);
    return NULL;
}

static bool
have_curl(void)
{
    return system("curl --version >/dev/null 2>&1") == 0;
}

static char *
run_cmd(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    ASSERT(p);
    struct km_sbuf b;
    km_sbuf_init(&b);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
        km_sbuf_add(&b, buf, n);
    pclose(p);
    km_sbuf_add(&b, "", 0);
    return km_sbuf_take(&b);
}

static void
curl_check(bool tls, const char *flags, const char *want_version)
{
    if (!have_curl()) {
        fprintf(stderr, "curl not installed: skipped\n");
        return;
    }
    struct fixture f;
    fixture_start(&f, tls, 0, 0);
    pthread_t th;
    pthread_create(&th, NULL, loop_thread, f.loop);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "curl -sS %s -w ' http=%%{http_version} code=%%{http_code}' -H 'Content-Type: "
             "application/json' --data-binary '{\"mesh\":\"default\"}' %s://127.0.0.1:%d/bootstrap "
             "2>&1", flags, tls ? "https" : "http", f.port);
    char *out = run_cmd(cmd);
    km_loop_stop(f.loop);
    pthread_join(th, NULL);
    ASSERT_STR_CONTAINS(out, "POST /bootstrap application/json {\"mesh\":\"default\"}");
    ASSERT_STR_CONTAINS(out, want_version);
    ASSERT_STR_CONTAINS(out, "code=200");
    free(out);
    fixture_stop(&f);
}

KM_TEST(http_curl_h2c_prior_knowledge)
{
    curl_check(false, "--http2-prior-knowledge", "http=2");
}

KM_TEST(http_curl_http1_plaintext)
{
    curl_check(false, "--http1.1", "http=1.1");
}

KM_TEST(http_curl_https_alpn_h2)
{
    curl_check(true, "-k --http2", "http=2");
}

KM_TEST(http_curl_https_alpn_http1)
{
    curl_check(true, "-k --http1.1", "http=1.1");
}

/* ---- helpers ---- */

static int
rx_collect(void *arg, const uint8_t *msg, size_t len)
{
    struct km_sbuf *b = arg;
    km_sbuf_add(b, (const char *)msg, len);
    km_sbuf_add(b, "|", 1);
    return 0;
}

KM_TEST(grpc_rx_reassembles_byte_by_byte)
{
    struct km_bq q = {0};
    km_grpc_frame_push(&q, (const uint8_t *)"hello", 5);
    km_grpc_frame_push(&q, (const uint8_t *)"", 0);
    km_grpc_frame_push(&q, (const uint8_t *)"world!", 6);
    struct km_grpc_rx rx = {0};
    struct km_sbuf out;
    km_sbuf_init(&out);
    int st;
    char err[128];
    for (size_t i = 0; i < q.len; i++)
        ASSERT_INT_EQ(km_grpc_rx_feed(&rx, km_bq_data(&q) + i, 1, 100, rx_collect, &out, &st, err,
                                      sizeof(err)), 0);
    ASSERT_STR_EQ(out.ptr, "hello||world!|");
    ASSERT(!km_grpc_rx_partial(&rx));
    /* compressed flag and oversize */
    uint8_t comp[6] = {1, 0, 0, 0, 1, 'x'};
    ASSERT_INT_EQ(km_grpc_rx_feed(&rx, comp, 6, 100, rx_collect, &out, &st, err, sizeof(err)), -1);
    ASSERT_INT_EQ(st, KM_GRPC_UNIMPLEMENTED);
    struct km_grpc_rx rx2 = {0};
    uint8_t big[5] = {0, 0, 0, 1, 0};
    ASSERT_INT_EQ(km_grpc_rx_feed(&rx2, big, 5, 100, rx_collect, &out, &st, err, sizeof(err)), -1);
    ASSERT_INT_EQ(st, KM_GRPC_RESOURCE_EXHAUSTED);
    km_grpc_rx_deinit(&rx);
    km_grpc_rx_deinit(&rx2);
    km_sbuf_deinit(&out);
    km_bq_deinit(&q);
}

KM_TEST(grpc_message_percent_encoding)
{
    char *e = km_grpc_pct_encode("a b%c\xc3\xa9\n");
    ASSERT_STR_EQ(e, "a b%25c%C3%A9%0A");
    char *d = km_grpc_pct_decode(e, strlen(e));
    ASSERT_STR_EQ(d, "a b%c\xc3\xa9\n");
    free(e);
    free(d);
    d = km_grpc_pct_decode("bad %zz %4", 10);
    ASSERT_STR_EQ(d, "bad %zz %4");
    free(d);
}

KM_TEST(grpc_timeout_header_parsing)
{
    uint64_t ms = 0;
    ASSERT(km_grpc_timeout_parse("100m", &ms));
    ASSERT_INT_EQ(ms, 100);
    ASSERT(km_grpc_timeout_parse("2S", &ms));
    ASSERT_INT_EQ(ms, 2000);
    ASSERT(km_grpc_timeout_parse("1H", &ms));
    ASSERT_INT_EQ(ms, 3600000);
    ASSERT(km_grpc_timeout_parse("1500u", &ms));
    ASSERT_INT_EQ(ms, 2); /* rounded up */
    ASSERT(km_grpc_timeout_parse("1n", &ms));
    ASSERT_INT_EQ(ms, 1);
    const char *bad[] = {"", "m", "123456789m", "10x", "10", "-1S", "1.5S", "10mm"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (km_grpc_timeout_parse(bad[i], &ms))
            KM_FAIL_AT("accepted \"%s\"", bad[i]);
    ASSERT(!km_grpc_timeout_parse(NULL, &ms));
}

KM_TEST(grpc_deadline_exceeded_ends_the_call)
{
    struct fixture f;
    fixture_start(&f, false, 0, 0);
    struct km_grpc_client *cl = fixture_client(&f, NULL);
    struct call_state cs;
    memset(&cs, 0, sizeof(cs));
    struct km_grpc_call_cbs cbs = {cs_message, cs_close, &cs};
    const char *hdrs[] = {"grpc-timeout", "150m", NULL};
    struct km_grpc_call *c = km_grpc_call_start(cl, "/test.Echo/Hold", hdrs, &cbs);
    ASSERT(c != NULL);
    km_grpc_call_send(c, (const uint8_t *)"x", 1);
    ASSERT(wait_until(f.loop, cs_is_closed, &cs, 5000));
    ASSERT_INT_EQ(cs.status, KM_GRPC_DEADLINE_EXCEEDED);
    ASSERT_STR_CONTAINS(cs.message, "deadline exceeded");
    WAIT_INT(f.loop, S.closes, 1);
    km_grpc_client_free(cl);
    fixture_stop(&f);
}
