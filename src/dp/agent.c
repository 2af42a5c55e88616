/* kuma-dp's agent: bootstrap, ADS client (delta or state of the world), snapshots, drain.
 *
 * Life of the agent, all on one km_loop:
 *   BOOTSTRAP: POST /bootstrap (our own HTTP/1.1 client, blocking with short timeouts); on failure retry after
 *              the backoff. The first bootstrap gives up after retry-max-duration or on a 4xx
 *              answer (exit 1); later ones (after the stream broke) retry for ever, because
 *              the control plane may have restarted without our Dataplane.
 *   ADS:       one gRPC stream; CDS and LDS wildcard at once, then EDS and RDS for the names
 *              the accepted snapshot references. Each response becomes a candidate resource
 *              set; a snapshot built from it is published and ACKed, a failed build is NACKed
 *              with the joined errors and the last good snapshot stays.
 *   stream gone: keep the snapshot, wait the backoff, bootstrap again, reopen the stream
 *              (delta: initial_resource_versions = what we hold). UNIMPLEMENTED on the delta
 *              method switches to state of the world for good.
 *   SIGTERM/SIGINT: engine stop_accepting hook, wait the drain time, exit 0. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <km/common/errs.h>
#include <km/common/grpc.h>
#include <km/common/http1.h>
#include <km/common/pb.h>
#include <km/common/pbjson.h>
#include <km/common/yamljson.h>
#include <km/cp/xds_gen.h>
#include <km/cp/xds_types.h>
#include <km/dp/agent.h>
#include <km/dp/tls.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/core/v3/core.pb-c.h"
#include "envoy/config/endpoint/v3/endpoint.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/config/route/v3/route.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "google/rpc/status.pb-c.h"

typedef Envoy__Service__Discovery__V3__DiscoveryRequest sotw_req;
typedef Envoy__Service__Discovery__V3__DiscoveryResponse sotw_resp;
typedef Envoy__Service__Discovery__V3__DeltaDiscoveryRequest delta_req;
typedef Envoy__Service__Discovery__V3__DeltaDiscoveryResponse delta_resp;

#define ADS_SOTW "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#define ADS_DELTA "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
#define MAX_BOOTSTRAP_ANSWER (4u * 1024 * 1024)
#define MAX_NACK_DETAIL 16384

enum state { ST_BOOTSTRAP = 0, ST_ADS, ST_DRAINING, ST_DONE };

struct type_state {
    char **names;      /* subscribed names (EDS, RDS); LDS and CDS are wildcard */
    size_t nnames;
    bool subscribed;
    char *version;     /* SotW: last accepted version_info */
    char *nonce;       /* last response nonce */
};

struct km_dp_agent {
    const struct km_dp_config *cfg;
    struct km_loop *loop;
    struct km_dp_engine_hooks hooks;
    enum state st;
    int exit_code;
    bool sotw;
    bool ever_bootstrapped;
    uint64_t first_attempt_ms;
    /* from the bootstrap answer */
    char *node_id;
    json_t *node_json;
    char *ads_host; /* IP literal */
    int ads_port;
    bool ads_tls;
    char *ads_ca_file; /* file the ADS client verifies with (maybe our temp file) */
    char *tmp_ca_file; /* owned temp file to unlink, or NULL */
    /* ADS */
    struct km_grpc_client *client;
    struct km_grpc_call *call;
    bool node_sent;
    bool connected; /* got a response on the current stream */
    struct km_dp_xds_set held[KM_DP_TYPES];
    struct type_state ts[KM_DP_TYPES];
    struct km_dp_xds_stats stats[KM_DP_TYPES];
    struct km_dp_snapshot *snap;
    uint64_t generation;
    /* timers and signals */
    struct km_timer *retry_timer;
    struct km_timer *drain_timer;
    struct km_timer *drain_poll;
    int sigfd;
    struct km_io *sig_io;
};

static const char *const type_short[KM_DP_TYPES] = {"lds", "rds", "cds", "eds", "sds"};

static const ProtobufCMessageDescriptor *
type_desc(int t)
{
    switch (t) {
    case KM_DP_LDS:
        return &envoy__config__listener__v3__listener__descriptor;
    case KM_DP_RDS:
        return &envoy__config__route__v3__route_configuration__descriptor;
    case KM_DP_CDS:
        return &envoy__config__cluster__v3__cluster__descriptor;
    case KM_DP_SDS:
        return &envoy__extensions__transport_sockets__tls__v3__secret__descriptor;
    default:
        return &envoy__config__endpoint__v3__cluster_load_assignment__descriptor;
    }
}

/* Our type index of a type URL (the KM_DP_* order is the KM_XDS_* order). */
static int
type_index(const char *url)
{
    int t = url ? km_xds_type_index(url) : -1;
    return t >= 0 && t < KM_DP_TYPES ? t : -1;
}

static void ads_start(struct km_dp_agent *a);
static void schedule_retry(struct km_dp_agent *a, uint64_t ms);

/* ---- bootstrap ---- */

/* The bootstrap request is one small blocking HTTP/1.1 exchange (Connection: close), so kuma-dp
 * does it itself with a socket and OpenSSL instead of linking libcurl: libcurl and what it
 * loads (GnuTLS, Kerberos, LDAP, libssh2, ...) were about 4 MB of the idle sidecar's RSS. */
#define BS_CONNECT_MS 5000
#define BS_TOTAL_MS   15000

struct bs_conn {
    int fd;
    SSL_CTX *ctx; /* owned, TLS only */
    SSL *ssl;     /* owned, TLS only */
    uint64_t deadline;
};

static uint64_t
bs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Waits for <ev> on the socket until <deadline>. 0, or -1 with errno (ETIMEDOUT). */
static int
bs_wait(int fd, short ev, uint64_t deadline)
{
    for (;;) {
        uint64_t now = bs_now_ms();
        if (now >= deadline) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = ev};
        int n = poll(&p, 1, (int)(deadline - now));
        if (n > 0)
            return 0;
        if (n == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR)
            return -1;
    }
}

static int
bs_connect(struct bs_conn *b, const struct km_dp_config *cfg, char *err, size_t errlen)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->cp_port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(cfg->cp_host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", cfg->cp_host, gai_strerror(gai));
        return -1;
    }
    int e = 0;
    for (struct addrinfo *ai = res; ai && b->fd < 0; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1) {
            e = errno;
            continue;
        }
        uint64_t cd = bs_now_ms() + BS_CONNECT_MS;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == -1) {
            e = errno;
            socklen_t sl = sizeof(e);
            if (e != EINPROGRESS ||
                bs_wait(fd, POLLOUT, cd < b->deadline ? cd : b->deadline) == -1 ||
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) == -1 || e != 0) {
                if (e == EINPROGRESS || e == 0)
                    e = errno;
                close(fd);
                continue;
            }
        }
        b->fd = fd;
    }
    freeaddrinfo(res);
    if (b->fd < 0) {
        snprintf(err, errlen, "cannot connect to %s port %d: %s", cfg->cp_host, cfg->cp_port,
                 strerror(e ? e : ECONNREFUSED));
        return -1;
    }
    return 0;
}

/* Finishes an OpenSSL call that may want to wait: 1 = go on (retry), 0 = done, -1 = error. */
static int
bs_ssl_wait(struct bs_conn *b, int rc)
{
    int se = SSL_get_error(b->ssl, rc);
    if (se == SSL_ERROR_WANT_READ)
        return bs_wait(b->fd, POLLIN, b->deadline) == 0 ? 1 : -1;
    if (se == SSL_ERROR_WANT_WRITE)
        return bs_wait(b->fd, POLLOUT, b->deadline) == 0 ? 1 : -1;
    if (se == SSL_ERROR_ZERO_RETURN)
        return 0;
    return -1;
}

static int
bs_tls(struct bs_conn *b, const struct km_dp_config *cfg, char *err, size_t errlen)
{
    b->ctx = SSL_CTX_new(TLS_client_method());
    if (!b->ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(b->ctx, TLS1_2_VERSION);
    /* the response ends with the connection (Connection: close), with or without close_notify */
    SSL_CTX_set_options(b->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    bool verify = true;
    if (cfg->ca_cert) {
        BIO *bio = BIO_new_mem_buf(cfg->ca_cert, -1);
        X509_STORE *st = SSL_CTX_get_cert_store(b->ctx);
        X509 *x;
        int n = 0;
        while (bio && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            n += X509_STORE_add_cert(st, x) == 1;
            X509_free(x);
        }
        BIO_free(bio);
        ERR_clear_error();
        if (n == 0) {
            snprintf(err, errlen, "KUMA_CONTROL_PLANE_CA_CERT: no PEM certificate");
            return -1;
        }
    } else if (cfg->ca_cert_file) {
        if (SSL_CTX_load_verify_locations(b->ctx, cfg->ca_cert_file, NULL) != 1) {
            snprintf(err, errlen, "--ca-cert-file %s: cannot load the CA certificates",
                     cfg->ca_cert_file);
            return -1;
        }
    } else {
        verify = false; /* like Kuma: without a CA the first contact is not verified */
    }
    SSL_CTX_set_verify(b->ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    b->ssl = SSL_new(b->ctx);
    if (!b->ssl || SSL_set_fd(b->ssl, b->fd) != 1)
        goto fail;
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, cfg->cp_host, ip) == 1 ||
                 inet_pton(AF_INET6, cfg->cp_host, ip) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(b->ssl, cfg->cp_host);
    if (verify && (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(b->ssl), cfg->cp_host)
                         : SSL_set1_host(b->ssl, cfg->cp_host)) != 1)
        goto fail;
    for (;;) {
        int rc = SSL_connect(b->ssl);
        if (rc == 1)
            return 0;
        if (bs_ssl_wait(b, rc) != 1)
            break;
    }
fail:;
    long vr = b->ssl ? SSL_get_verify_result(b->ssl) : X509_V_OK;
    unsigned long e = ERR_get_error();
    char es[160] = "";
    if (e)
        ERR_error_string_n(e, es, sizeof(es));
    ERR_clear_error();
    snprintf(err, errlen, "TLS handshake with %s: %s", cfg->cp_host,
             vr != X509_V_OK ? X509_verify_cert_error_string(vr)
             : *es           ? es
             : errno == ETIMEDOUT ? "timed out"
                                  : "failed");
    return -1;
}

static int
bs_send(struct bs_conn *b, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n;
        if (b->ssl) {
            int rc = SSL_write(b->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
            if (rc <= 0) {
                if (bs_ssl_wait(b, rc) != 1)
                    return -1;
                continue;
            }
            n = rc;
        } else {
            n = send(b->fd, p, len, MSG_NOSIGNAL);
            if (n == -1) {
                if ((errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ||
                    bs_wait(b->fd, POLLOUT, b->deadline) == -1)
                    return -1;
                continue;
            }
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads some bytes: > 0, 0 at EOF, -1 on an error or the deadline. */
static ssize_t
bs_recv(struct bs_conn *b, char *p, size_t cap)
{
    for (;;) {
        if (b->ssl) {
            int rc = SSL_read(b->ssl, p, cap > INT32_MAX ? INT32_MAX : (int)cap);
            if (rc > 0)
                return rc;
            int w = bs_ssl_wait(b, rc);
            if (w <= 0)
                return w;
            continue;
        }
        ssize_t n = recv(b->fd, p, cap, 0);
        if (n >= 0)
            return n;
        if ((errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ||
            bs_wait(b->fd, POLLIN, b->deadline) == -1)
            return -1;
    }
}

/* POSTs <body> (JSON) to <path>; the response body goes to <out>, its status to *status.
 * Returns 0, or -1 with <err> set (connection, TLS, timeout or a malformed response). */
static int
bs_post(const struct km_dp_config *cfg, const char *path, const char *body, long *status,
        struct km_sbuf *out, char *err, size_t errlen)
{
    struct bs_conn b = {.fd = -1, .deadline = bs_now_ms() + BS_TOTAL_MS};
    struct km_sbuf in;
    km_sbuf_init(&in);
    int ret = -1;
    if (bs_connect(&b, cfg, err, errlen) != 0 ||
        (cfg->cp_tls && bs_tls(&b, cfg, err, errlen) != 0))
        goto out;
    bool v6 = strchr(cfg->cp_host, ':') != NULL;
    char *head = km_xasprintf("POST %s HTTP/1.1\r\nHost: %s%s%s:%d\r\n"
                              "Content-Type: application/json\r\nAccept: application/json\r\n"
                              "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                              path, v6 ? "[" : "", cfg->cp_host, v6 ? "]" : "", cfg->cp_port,
                              strlen(body));
    int sr = bs_send(&b, head, strlen(head));
    free(head);
    if (sr != 0 || bs_send(&b, body, strlen(body)) != 0) {
        snprintf(err, errlen, "sending the request: %s",
                 errno == ETIMEDOUT ? "timed out" : strerror(errno));
        goto out;
    }
    struct km_http1_response r;
    bool have_head = false;
    for (;;) {
        char buf[16384];
        ssize_t n = bs_recv(&b, buf, sizeof(buf));
        if (n < 0) {
            snprintf(err, errlen, "reading the response: %s",
                     errno == ETIMEDOUT ? "timed out" : "connection error");
            goto out;
        }
        if (n == 0)
            break;
        if (in.len + (size_t)n > MAX_BOOTSTRAP_ANSWER + 65536) {
            snprintf(err, errlen, "the response is over %u bytes", MAX_BOOTSTRAP_ANSWER);
            goto out;
        }
        km_sbuf_add(&in, buf, (size_t)n);
        if (!have_head) {
            int st = 0;
            char perr[128] = "";
            int rc = km_http1_parse_response((const uint8_t *)in.ptr, in.len, NULL, 0, &r, &st,
                                             perr, sizeof(perr));
            if (rc == KM_HTTP1_ERROR) {
                snprintf(err, errlen, "malformed response: %s", perr);
                goto out;
            }
            have_head = rc == KM_HTTP1_DONE && r.status >= 200;
        }
        if (have_head && r.framing == KM_HTTP1_BODY_LENGTH &&
            in.len - r.head_len >= r.content_length)
            break;
    }
    if (!have_head) {
        snprintf(err, errlen, "the connection closed before a complete response");
        goto out;
    }
    const uint8_t *p = (const uint8_t *)in.ptr + r.head_len;
    size_t left = in.len - r.head_len;
    if (r.framing == KM_HTTP1_BODY_LENGTH) {
        if (left < r.content_length) {
            snprintf(err, errlen, "the response body was cut short");
            goto out;
        }
        km_sbuf_add(out, (const char *)p, r.content_length);
    } else if (r.framing == KM_HTTP1_BODY_CHUNKED) {
        struct km_http1_chunked ck;
        km_http1_chunked_init(&ck, MAX_BOOTSTRAP_ANSWER, 0);
        for (;;) {
            size_t used = 0, dlen = 0;
            const uint8_t *data = NULL;
            int st = 0;
            char perr[128] = "";
            int rc = km_http1_chunked_parse(&ck, p, left, &used, &data, &dlen, &st, perr,
                                            sizeof(perr));
            if (rc == KM_HTTP1_ERROR || (rc == KM_HTTP1_INCOMPLETE && used == 0)) {
                snprintf(err, errlen, "malformed chunked response: %s",
                         *perr ? perr : "cut short");
                goto out;
            }
            km_sbuf_add(out, (const char *)data, dlen);
            p += used;
            left -= used;
            if (rc == KM_HTTP1_DONE)
                break;
        }
    } else if (r.framing == KM_HTTP1_BODY_CLOSE) {
        km_sbuf_add(out, (const char *)p, left);
    }
    *status = r.status;
    ret = 0;
out:
    if (b.ssl) {
        if (ret == 0)
            (void)SSL_shutdown(b.ssl);
        SSL_free(b.ssl);
    }
    if (b.ctx) { /* a plaintext bootstrap never touches OpenSSL (its init costs RSS) */
        SSL_CTX_free(b.ctx);
        ERR_clear_error();
    }
    if (b.fd >= 0)
        close(b.fd);
    km_sbuf_deinit(&in);
    return ret;
}

static char *
bootstrap_body(const struct km_dp_config *cfg)
{
    json_t *req = json_pack(
        "{s:s, s:s, s:s, s:s, s:{s:{s:s, s:s, s:s, s:s}, s:{s:s, s:s, s:b}}, s:s, s:[s]}",
        "mesh", cfg->mesh, "name", cfg->name, "proxyType", cfg->proxy_type, "dataplaneToken",
        cfg->token ? cfg->token : "", "version", "kumaDp", "version", KM_KUMA_VERSION, "gitTag",
        KM_VERSION, "gitCommit", "", "buildDate", "", "envoy", "version", "", "build",
        "kuma-c engine " KM_VERSION, "kumaDpCompatible", 1, "operatingSystem", "linux",
        "features", "feature-delta-xds");
    if (cfg->dataplane_json)
        json_object_set_new(req, "dataplaneResource", json_string(cfg->dataplane_json));
    if (cfg->token_file)
        json_object_set_new(req, "dataplaneTokenPath", json_string(cfg->token_file));
    char *s = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    return s;
}

/* Resolves <host> to an IP literal (first address). */
static char *
resolve(const char *host)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return NULL;
    char buf[INET6_ADDRSTRLEN] = "";
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, buf, sizeof(buf));
    else if (res->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, buf, sizeof(buf));
    freeaddrinfo(res);
    return *buf ? km_xstrdup(buf) : NULL;
}

static const char *
jstr(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Writes <pem> to a private temp file for the ADS client's verification. */
static char *
write_temp_ca(const char *pem)
{
    const char *dir = getenv("TMPDIR");
    char *path = km_xasprintf("%s/kuma-dp-ca-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        free(path);
        return NULL;
    }
    size_t len = strlen(pem), off = 0;
    while (off < len) {
        ssize_t w = write(fd, pem + off, len - off);
        if (w <= 0) {
            close(fd);
            unlink(path);
            free(path);
            return NULL;
        }
        off += (size_t)w;
    }
    close(fd);
    return path;
}

/* Reads node id and the ADS cluster from the answer. Returns 0, or -1 with <err>. */
static int
bootstrap_apply(struct km_dp_agent *a, const char *text, size_t len, char *err, size_t errlen)
{
    char perr[256];
    json_t *doc = km_json_parse(text, len, perr, sizeof(perr));
    if (!doc) {
        snprintf(err, errlen, "the answer is not JSON: %s", perr);
        return -1;
    }
    json_t *b = json_object_get(doc, "bootstrap");
    json_t *node = json_object_get(b, "node");
    const char *id = jstr(node, "id");
    json_t *ads = NULL, *clusters = json_object_get(json_object_get(b, "static_resources"),
                                                    "clusters");
    size_t i;
    json_t *cl;
    json_array_foreach(clusters, i, cl) {
        const char *n = jstr(cl, "name");
        if (n && strcmp(n, "ads_cluster") == 0)
            ads = cl;
    }
    json_t *sa = json_object_get(
        json_object_get(
            json_object_get(
                json_array_get(
                    json_object_get(json_array_get(json_object_get(json_object_get(
                                                                       ads, "load_assignment"),
                                                                   "endpoints"),
                                                   0),
                                    "lb_endpoints"),
                    0),
                "endpoint"),
            "address"),
        "socket_address");
    const char *host = jstr(sa, "address");
    json_int_t port = json_integer_value(json_object_get(sa, "port_value"));
    if (!id || !*id || !host || port <= 0 || port > 65535) {
        snprintf(err, errlen, "the answer has no bootstrap.node.id or no ads_cluster address");
        json_decref(doc);
        return -1;
    }
    const struct km_dp_config *cfg = a->cfg;
    char *ip;
    bool tls;
    int aport;
    if (!cfg->cp_tls) {
        /* A plaintext DP server port serves ADS too (h2c): stay on it. */
        ip = resolve(cfg->cp_host);
        tls = false;
        aport = cfg->cp_port;
    } else {
        ip = resolve(host);
        tls = json_object_get(ads, "transport_socket") != NULL;
        aport = (int)port;
    }
    if (!ip) {
        snprintf(err, errlen, "cannot resolve the ADS host %s",
                 cfg->cp_tls ? host : cfg->cp_host);
        json_decref(doc);
        return -1;
    }
    free(a->ads_host);
    a->ads_host = ip;
    a->ads_port = aport;
    a->ads_tls = tls;
    free(a->node_id);
    a->node_id = km_xstrdup(id);
    json_decref(a->node_json);
    a->node_json = json_pack("{s:s, s:s, s:s, s:s}", "id", id, "cluster",
                             jstr(node, "cluster") ? jstr(node, "cluster") : "",
                             "user_agent_name", "kuma-dp", "user_agent_version", KM_VERSION);
    json_t *meta = json_object_get(node, "metadata");
    if (json_is_object(meta))
        json_object_set(a->node_json, "metadata", meta);
    /* The CA that verifies the ADS server: --ca-cert-file, KUMA_CONTROL_PLANE_CA_CERT, or
     * the one the bootstrap names (it came over the channel --ca-cert-file verified). */
    if (tls && !a->ads_ca_file) {
        const char *pem = cfg->ca_cert;
        if (!pem)
            pem = jstr(json_object_get(
                           json_object_get(
                               json_object_get(
                                   json_object_get(json_object_get(ads, "transport_socket"),
                                                   "typed_config"),
                                   "common_tls_context"),
                               "validation_context"),
                           "trusted_ca"),
                       "inline_string");
        if (cfg->ca_cert_file && !cfg->ca_cert) {
            a->ads_ca_file = km_xstrdup(cfg->ca_cert_file);
        } else if (pem) {
            a->tmp_ca_file = write_temp_ca(pem);
            if (a->tmp_ca_file)
                a->ads_ca_file = km_xstrdup(a->tmp_ca_file);
        }
        if (!a->ads_ca_file)
            km_log_warn("kuma-dp", "no CA to verify the ADS server with: TLS is not verified");
    }
    json_decref(doc);
    return 0;
}

/* One POST /bootstrap. Returns 0, 1 for a retryable failure, 2 for a permanent one. */
static int
bootstrap_once(struct km_dp_agent *a, char *err, size_t errlen)
{
    const struct km_dp_config *cfg = a->cfg;
    size_t ul = strlen(cfg->cp_address);
    char *url = km_xasprintf("%.*s/bootstrap", (int)(ul && cfg->cp_address[ul - 1] == '/'
                                                         ? ul - 1
                                                         : ul),
                             cfg->cp_address);
    /* the path: what follows scheme://host:port in the URL */
    const char *path = strstr(url, "://");
    path = path ? strchr(path + 3, '/') : NULL;
    char *body = bootstrap_body(cfg);
    struct km_sbuf out;
    km_sbuf_init(&out);
    char cerr[512] = "";
    long status = 0;
    int rc = bs_post(cfg, path ? path : "/bootstrap", body, &status, &out, cerr, sizeof(cerr));
    int ret = 1;
    if (rc != 0) {
        snprintf(err, errlen, "POST %s: %s", url, cerr);
    } else if (status != 200) {
        const char *detail = out.ptr ? out.ptr : "";
        snprintf(err, errlen, "POST %s: HTTP %ld: %.1000s", url, status, detail);
        /* An invalid request stays invalid; 404 (mesh not there yet) and 409 may pass. */
        ret = status >= 400 && status < 500 && status != 404 && status != 409 && status != 429
                  ? 2
                  : 1;
    } else {
        ret = bootstrap_apply(a, out.ptr ? out.ptr : "", out.len, err, errlen) == 0 ? 0 : 1;
    }
    km_sbuf_deinit(&out);
    free(body);
    free(url);
    return ret;
}

static void
do_bootstrap(struct km_dp_agent *a)
{
    if (a->st != ST_BOOTSTRAP)
        return;
    char err[1200];
    uint64_t now = km_loop_now_ms(a->loop);
    if (!a->first_attempt_ms)
        a->first_attempt_ms = now ? now : 1;
    int rc = bootstrap_once(a, err, sizeof(err));
    if (rc == 0) {
        km_log_info("kuma-dp", "bootstrapped as %s; ADS at %s:%d (%s, %s)", a->node_id,
                    a->ads_host, a->ads_port, a->ads_tls ? "TLS" : "plaintext",
                    a->sotw ? "state of the world" : "delta");
        a->ever_bootstrapped = true;
        a->st = ST_ADS;
        ads_start(a);
        return;
    }
    if (!a->ever_bootstrapped &&
        (rc == 2 || now - a->first_attempt_ms >= (uint64_t)a->cfg->retry_max_ms)) {
        km_log_error("kuma-dp", "bootstrap failed%s: %s",
                     rc == 2 ? "" : " for longer than the retry max duration", err);
        a->exit_code = 1;
        a->st = ST_DONE;
        km_loop_stop(a->loop);
        return;
    }
    km_log_warn("kuma-dp", "bootstrap failed, retrying in %" PRId64 " ms: %s",
                a->cfg->retry_backoff_ms, err);
    schedule_retry(a, (uint64_t)a->cfg->retry_backoff_ms);
}

static void
retry_cb(struct km_timer *t, void *arg)
{
    struct km_dp_agent *a = arg;
    if (a->st == ST_BOOTSTRAP)
        do_bootstrap(a);
}

static void
schedule_retry(struct km_dp_agent *a, uint64_t ms)
{
    km_timer_arm(a->retry_timer, ms);
}

/* ---- held resources ---- */

static void
set_copy(struct km_dp_xds_set *dst, const struct km_dp_xds_set *src)
{
    dst->n = src->n;
    dst->v = km_xcalloc(src->n ? src->n : 1, sizeof(*dst->v));
    for (size_t i = 0; i < src->n; i++) {
        dst->v[i].name = km_xstrdup(src->v[i].name);
        dst->v[i].len = src->v[i].len;
        dst->v[i].bytes = km_xmalloc(src->v[i].len ? src->v[i].len : 1);
        memcpy(dst->v[i].bytes, src->v[i].bytes, src->v[i].len);
        dst->v[i].version = km_xstrdup(src->v[i].version ? src->v[i].version : "");
    }
}

static ssize_t
set_find(const struct km_dp_xds_set *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].name, name) == 0)
            return (ssize_t)i;
    return -1;
}

static void
set_remove(struct km_dp_xds_set *s, const char *name)
{
    ssize_t i = set_find(s, name);
    if (i < 0)
        return;
    free(s->v[i].name);
    free(s->v[i].bytes);
    free(s->v[i].version);
    s->v[i] = s->v[--s->n];
}

static void
set_put(struct km_dp_xds_set *s, const char *name, const uint8_t *bytes, size_t len,
        const char *version)
{
    ssize_t i = set_find(s, name);
    struct km_dp_xds_res *r;
    if (i >= 0) {
        r = &s->v[i];
        free(r->bytes);
        free(r->version);
    } else {
        s->v = km_xrealloc(s->v, (s->n + 1) * sizeof(*s->v));
        r = &s->v[s->n++];
        r->name = km_xstrdup(name);
    }
    r->bytes = km_xmalloc(len ? len : 1);
    memcpy(r->bytes, bytes, len);
    r->len = len;
    r->version = km_xstrdup(version ? version : "");
}

/* The name inside an encoded resource (field 1 of all four types). */
static char *
resource_name(int t, const uint8_t *bytes, size_t len, char *err, size_t errlen)
{
    ProtobufCMessage *m = km_pb_unpack(type_desc(t), bytes, len, err, errlen);
    if (!m)
        return NULL;
    const char *n = NULL;
    switch (t) {
    case KM_DP_LDS:
        n = ((Envoy__Config__Listener__V3__Listener *)m)->name;
        break;
    case KM_DP_RDS:
        n = ((Envoy__Config__Route__V3__RouteConfiguration *)m)->name;
        break;
    case KM_DP_CDS:
        n = ((Envoy__Config__Cluster__V3__Cluster *)m)->name;
        break;
    case KM_DP_SDS:
        n = ((Envoy__Extensions__TransportSockets__Tls__V3__Secret *)m)->name;
        break;
    default:
        n = ((Envoy__Config__Endpoint__V3__ClusterLoadAssignment *)m)->cluster_name;
    }
    char *r = n && *n ? km_xstrdup(n) : NULL;
    if (!r)
        snprintf(err, errlen, "the resource has no name");
    km_pb_free(m);
    return r;
}

/* ---- sending ---- */

static void
send_msg(struct km_dp_agent *a, const ProtobufCMessage *m)
{
    if (!a->call)
        return;
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = km_xmalloc(len ? len : 1);
    protobuf_c_message_pack(m, buf);
    km_grpc_call_send(a->call, buf, len);
    free(buf);
}

/* The Node for the first request of a stream (NULL after it). Free with km_pb_free. */
static ProtobufCMessage *
take_node(struct km_dp_agent *a)
{
    if (a->node_sent)
        return NULL;
    a->node_sent = true;
    uint8_t *bytes = NULL;
    size_t len = 0;
    char err[256];
    if (km_pbjson_encode(&envoy__config__core__v3__node__descriptor, a->node_json, &bytes, &len,
                         err, sizeof(err)) != 0) {
        /* Metadata we cannot encode: send the id alone. */
        km_log_warn("kuma-dp", "node metadata: %s", err);
        json_t *j = json_pack("{s:s}", "id", a->node_id);
        int rc = km_pbjson_encode(&envoy__config__core__v3__node__descriptor, j, &bytes, &len,
                                  err, sizeof(err));
        json_decref(j);
        if (rc != 0)
            return NULL;
    }
    ProtobufCMessage *n = km_pb_unpack(&envoy__config__core__v3__node__descriptor, bytes, len,
                                       err, sizeof(err));
    free(bytes);
    return n;
}

static Google__Rpc__Status *
make_status(const char *detail, Google__Rpc__Status *st)
{
    if (!detail)
        return NULL;
    google__rpc__status__init(st);
    st->code = 3; /* INVALID_ARGUMENT, as Envoy sends */
    st->message = (char *)detail;
    return st;
}

/* Delta request: subscribe/unsubscribe names (may be empty), optional nonce and NACK. */
static void
send_delta(struct km_dp_agent *a, int t, char **sub, size_t nsub, char **unsub, size_t nunsub,
           const char *nonce, const char *nack, bool initial)
{
    delta_req r = ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    ProtobufCMessage *node = take_node(a);
    r.node = (Envoy__Config__Core__V3__Node *)node;
    r.type_url = (char *)km_xds_type_urls[t];
    r.resource_names_subscribe = sub;
    r.n_resource_names_subscribe = nsub;
    r.resource_names_unsubscribe = unsub;
    r.n_resource_names_unsubscribe = nunsub;
    r.response_nonce = (char *)(nonce ? nonce : "");
    Google__Rpc__Status st;
    r.error_detail = make_status(nack, &st);
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *ents =
        NULL, **pents = NULL;
    if (initial && a->held[t].n) {
        size_t n = a->held[t].n;
        ents = km_xcalloc(n, sizeof(*ents));
        pents = km_xcalloc(n, sizeof(*pents));
        for (size_t i = 0; i < n; i++) {
            envoy__service__discovery__v3__delta_discovery_request__initial_resource_versions_entry__init(
                &ents[i]);
            ents[i].key = a->held[t].v[i].name;
            ents[i].value = a->held[t].v[i].version;
            pents[i] = &ents[i];
        }
        r.initial_resource_versions = pents;
        r.n_initial_resource_versions = n;
    }
    send_msg(a, &r.base);
    free(ents);
    free(pents);
    km_pb_free(node);
}

static void
send_sotw(struct km_dp_agent *a, int t, const char *version, const char *nonce,
          const char *nack)
{
    sotw_req r = ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_REQUEST__INIT;
    ProtobufCMessage *node = take_node(a);
    r.node = (Envoy__Config__Core__V3__Node *)node;
    r.type_url = (char *)km_xds_type_urls[t];
    r.version_info = (char *)(version ? version : "");
    r.response_nonce = (char *)(nonce ? nonce : "");
    r.resource_names = a->ts[t].names;
    r.n_resource_names = a->ts[t].nnames;
    Google__Rpc__Status st;
    r.error_detail = make_status(nack, &st);
    send_msg(a, &r.base);
    km_pb_free(node);
}

/* ---- subscriptions ---- */

static int
strp_cmp(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* Sorted, unique names the snapshot references for type <t> (EDS or RDS). */
static char **
wanted_names(const struct km_dp_snapshot *s, int t, size_t *n)
{
    size_t cap = 0, k = 0;
    if (t == KM_DP_SDS) {
        /* the secrets the TLS contexts name: two per cluster and chain at most */
        for (size_t i = 0; i < s->nlisteners; i++)
            cap += 2 * s->listeners[i].nchains;
        cap += 2 * s->nclusters;
        char **v = km_xcalloc(cap + 1, sizeof(char *));
        for (size_t i = 0; i < s->nclusters; i++) {
            const struct km_dp_tls_ctx *tc = s->clusters[i].tls;
            if (tc) {
                v[k++] = tc->cert_secret;
                if (tc->ca_secret)
                    v[k++] = tc->ca_secret;
            }
        }
        for (size_t i = 0; i < s->nlisteners; i++)
            for (size_t j = 0; j < s->listeners[i].nchains; j++) {
                const struct km_dp_tls_ctx *tc = s->listeners[i].chains[j].tls;
                if (tc) {
                    v[k++] = tc->cert_secret;
                    if (tc->ca_secret)
                        v[k++] = tc->ca_secret;
                }
            }
        qsort(v, k, sizeof(char *), strp_cmp);
        size_t u = 0;
        for (size_t i = 0; i < k; i++)
            if (u == 0 || strcmp(v[u - 1], v[i]) != 0)
                v[u++] = v[i];
        *n = u;
        return v;
    }
    if (t == KM_DP_EDS) {
        cap = s->nclusters;
    } else {
        for (size_t i = 0; i < s->nlisteners; i++)
            cap += s->listeners[i].nchains;
    }
    char **v = km_xcalloc(cap + 1, sizeof(char *));
    if (t == KM_DP_EDS) {
        for (size_t i = 0; i < s->nclusters; i++)
            if (s->clusters[i].eds)
                v[k++] = s->clusters[i].eds_name;
    } else {
        for (size_t i = 0; i < s->nlisteners; i++)
            for (size_t j = 0; j < s->listeners[i].nchains; j++)
                if (s->listeners[i].chains[j].rds_name)
                    v[k++] = s->listeners[i].chains[j].rds_name;
    }
    qsort(v, k, sizeof(char *), strp_cmp);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || strcmp(v[u - 1], v[i]) != 0)
            v[u++] = v[i];
    *n = u;
    return v; /* borrowed strings */
}

static bool
has_name(char **v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], name) == 0)
            return true;
    return false;
}

static void
names_free(struct type_state *ts)
{
    for (size_t i = 0; i < ts->nnames; i++)
        free(ts->names[i]);
    free(ts->names);
    ts->names = NULL;
    ts->nnames = 0;
}

/* Brings the EDS and RDS subscriptions in line with the current snapshot. */
static void
update_subscriptions(struct km_dp_agent *a)
{
    if (!a->snap || !a->call)
        return;
    static const int types[] = {KM_DP_EDS, KM_DP_RDS, KM_DP_SDS};
    for (size_t k = 0; k < KM_ARRAY_LEN(types); k++) {
        int t = types[k];
        struct type_state *ts = &a->ts[t];
        size_t nw;
        char **want = wanted_names(a->snap, t, &nw);
        char **sub = km_xcalloc(nw + 1, sizeof(char *));
        char **unsub = km_xcalloc(ts->nnames + 1, sizeof(char *));
        size_t nsub = 0, nunsub = 0;
        for (size_t i = 0; i < nw; i++)
            if (!has_name(ts->names, ts->nnames, want[i]))
                sub[nsub++] = want[i];
        for (size_t i = 0; i < ts->nnames; i++)
            if (!has_name(want, nw, ts->names[i]))
                unsub[nunsub++] = ts->names[i];
        bool changed = nsub || nunsub || (!ts->subscribed && nw);
        if (changed && (nw || ts->subscribed)) {
            if (a->sotw && nw == 0) {
                /* An empty SotW list would mean "everything": keep the old one. */
            } else {
                bool first = !ts->subscribed;
                /* Names we no longer want: forget their resources. */
                for (size_t i = 0; i < nunsub; i++)
                    set_remove(&a->held[t], unsub[i]);
                char **copy = km_xcalloc(nw + 1, sizeof(char *));
                for (size_t i = 0; i < nw; i++)
                    copy[i] = km_xstrdup(want[i]);
                if (a->sotw) {
                    names_free(ts);
                    ts->names = copy;
                    ts->nnames = nw;
                    send_sotw(a, t, ts->version, ts->nonce, NULL);
                } else {
                    send_delta(a, t, sub, nsub, unsub, nunsub, NULL, NULL, first);
                    names_free(ts);
                    ts->names = copy;
                    ts->nnames = nw;
                }
                ts->subscribed = true;
                km_log_debug("xds", "%s: subscribed to %zu names (+%zu -%zu)", type_short[t], nw,
                             nsub, nunsub);
            }
        }
        free(sub);
        free(unsub);
        free(want);
    }
}

/* ---- applying responses ---- */

static void
publish(struct km_dp_agent *a, struct km_dp_snapshot *s)
{
    km_dp_snapshot_unref(a->snap);
    a->snap = s;
    size_t neps = 0;
    for (size_t i = 0; i < s->nclusters; i++)
        neps += s->clusters[i].neps;
    km_log_info("kuma-dp", "config %" PRIu64 " applied: %zu listeners, %zu routes, %zu clusters, "
                "%zu endpoints",
                s->generation, s->nlisteners, s->nroutes, s->nclusters, neps);
    if (a->hooks.publish)
        a->hooks.publish(s, a->hooks.ud);
}

/* Tries <cand> as the new set of type <t>. On success it replaces the held set (taken) and
 * returns NULL; otherwise returns the joined errors (caller frees) and frees <cand>. */
static char *
try_apply(struct km_dp_agent *a, int t, struct km_dp_xds_set *cand)
{
    struct km_dp_xds_set sets[KM_DP_TYPES];
    for (int i = 0; i < KM_DP_TYPES; i++)
        sets[i] = i == t ? *cand : a->held[i];
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_dp_snapshot *s = km_dp_snapshot_build(sets, a->generation + 1, &errs);
    if (!s) {
        char *detail = km_errs_join(&errs);
        km_errs_deinit(&errs);
        km_dp_xds_set_clear(cand);
        if (strlen(detail) > MAX_NACK_DETAIL)
            strcpy(detail + MAX_NACK_DETAIL - 4, "...");
        return detail;
    }
    km_errs_deinit(&errs);
    km_dp_xds_set_clear(&a->held[t]);
    a->held[t] = *cand;
    memset(cand, 0, sizeof(*cand));
    a->generation++;
    publish(a, s);
    return NULL;
}

static void
note_result(struct km_dp_agent *a, int t, const char *nack)
{
    struct km_dp_xds_stats *st = &a->stats[t];
    st->responses++;
    if (nack) {
        st->nacks++;
        free(st->last_nack);
        st->last_nack = km_xstrdup(nack);
        km_log_warn("xds", "rejected %s: %s", type_short[t], nack);
    } else {
        st->acks++;
    }
}

static void
on_delta_response(struct km_dp_agent *a, const delta_resp *r)
{
    int t = type_index(r->type_url);
    if (t < 0) {
        km_log_warn("xds", "ignoring a response of unknown type %.200s",
                    r->type_url ? r->type_url : "");
        delta_req q = ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
        q.type_url = r->type_url;
        q.response_nonce = r->nonce;
        Google__Rpc__Status st;
        q.error_detail = make_status("type not supported by kuma-dp", &st);
        send_msg(a, &q.base);
        return;
    }
    struct km_dp_xds_set cand;
    set_copy(&cand, &a->held[t]);
    char *nack = NULL;
    for (size_t i = 0; i < r->n_removed_resources; i++)
        set_remove(&cand, r->removed_resources[i]);
    for (size_t i = 0; i < r->n_resources && !nack; i++) {
        const Envoy__Service__Discovery__V3__Resource *res = r->resources[i];
        const char *name = res->name && *res->name ? res->name : NULL;
        if (!res->resource) {
            /* A resource without body: Envoy treats it as removed (TTL heartbeats aside). */
            if (name)
                set_remove(&cand, name);
            continue;
        }
        if (type_index(res->resource->type_url) != t) {
            nack = km_xasprintf("resources[%zu] (%s): type %s is not %s", i, name ? name : "",
                                res->resource->type_url ? res->resource->type_url : "",
                                km_xds_type_urls[t]);
            break;
        }
        char err[256];
        char *inner = resource_name(t, res->resource->value.data, res->resource->value.len, err,
                                    sizeof(err));
        if (!inner) {
            nack = km_xasprintf("resources[%zu] (%s): %s", i, name ? name : "", err);
            break;
        }
        if (name && strcmp(name, inner) != 0) {
            nack = km_xasprintf("resources[%zu]: name \"%s\" differs from the resource's own "
                                "name \"%s\"",
                                i, name, inner);
            free(inner);
            break;
        }
        set_put(&cand, inner, res->resource->value.data, res->resource->value.len,
                res->version);
        free(inner);
    }
    if (nack)
        km_dp_xds_set_clear(&cand);
    else
        nack = try_apply(a, t, &cand);
    note_result(a, t, nack);
    free(a->ts[t].nonce);
    a->ts[t].nonce = km_xstrdup(r->nonce ? r->nonce : "");
    send_delta(a, t, NULL, 0, NULL, 0, r->nonce, nack, false);
    free(nack);
    update_subscriptions(a);
}

static void
on_sotw_response(struct km_dp_agent *a, const sotw_resp *r)
{
    int t = type_index(r->type_url);
    if (t < 0) {
        km_log_warn("xds", "ignoring a response of unknown type %.200s",
                    r->type_url ? r->type_url : "");
        return;
    }
    struct km_dp_xds_set cand = {0};
    char *nack = NULL;
    for (size_t i = 0; i < r->n_resources && !nack; i++) {
        const Google__Protobuf__Any *any = r->resources[i];
        if (type_index(any->type_url) != t) {
            nack = km_xasprintf("resources[%zu]: type %s is not %s", i,
                                any->type_url ? any->type_url : "", km_xds_type_urls[t]);
            break;
        }
        char err[256];
        char *name = resource_name(t, any->value.data, any->value.len, err, sizeof(err));
        if (!name) {
            nack = km_xasprintf("resources[%zu]: %s", i, err);
            break;
        }
        if (set_find(&cand, name) >= 0) {
            nack = km_xasprintf("resources[%zu]: \"%s\" appears twice", i, name);
            free(name);
            break;
        }
        set_put(&cand, name, any->value.data, any->value.len, r->version_info);
        free(name);
    }
    if (nack)
        km_dp_xds_set_clear(&cand);
    else
        nack = try_apply(a, t, &cand);
    note_result(a, t, nack);
    struct type_state *ts = &a->ts[t];
    free(ts->nonce);
    ts->nonce = km_xstrdup(r->nonce ? r->nonce : "");
    if (!nack) {
        free(ts->version);
        ts->version = km_xstrdup(r->version_info ? r->version_info : "");
    }
    send_sotw(a, t, ts->version, ts->nonce, nack);
    free(nack);
    update_subscriptions(a);
}

/* ---- the stream ---- */

static void
on_message(struct km_grpc_call *c, const uint8_t *msg, size_t len, void *ud)
{
    struct km_dp_agent *a = ud;
    char err[256];
    if (!a->connected) {
        a->connected = true;
        km_log_info("kuma-dp", "ADS stream to %s:%d established", a->ads_host, a->ads_port);
    }
    ProtobufCMessage *m = km_pb_unpack(
        a->sotw ? &envoy__service__discovery__v3__discovery_response__descriptor
                : &envoy__service__discovery__v3__delta_discovery_response__descriptor,
        msg, len, err, sizeof(err));
    if (!m) {
        km_log_warn("xds", "cannot decode a %s: %s",
                    a->sotw ? "DiscoveryResponse" : "DeltaDiscoveryResponse", err);
        return;
    }
    if (a->sotw)
        on_sotw_response(a, (const sotw_resp *)m);
    else
        on_delta_response(a, (const delta_resp *)m);
    km_pb_free(m);
    /* Decoding a response and building a snapshot leave free heap pages behind (the old
     * snapshot, the decoded messages): give them back, the sidecar's RSS is what stays. */
    malloc_trim(0);
}

static void
reset_stream_state(struct km_dp_agent *a)
{
    for (int t = 0; t < KM_DP_TYPES; t++) {
        names_free(&a->ts[t]);
        a->ts[t].subscribed = false;
        KM_FREE(a->ts[t].nonce);
    }
    a->node_sent = false;
    a->connected = false;
}

static void
on_close(struct km_grpc_call *c, int status, const char *message, void *ud)
{
    struct km_dp_agent *a = ud;
    a->call = NULL;
    if (a->st != ST_ADS)
        return;
    if (status == KM_GRPC_UNIMPLEMENTED && !a->sotw) {
        km_log_warn("kuma-dp", "the control plane does not serve delta xDS (%s): switching to "
                    "state of the world",
                    message ? message : "UNIMPLEMENTED");
        a->sotw = true;
        a->st = ST_BOOTSTRAP;
        schedule_retry(a, 0);
        return;
    }
    km_log_warn("kuma-dp", "ADS stream closed (status %d: %s); keeping the last config, "
                "reconnecting in %" PRId64 " ms",
                status, message ? message : "", a->cfg->retry_backoff_ms);
    a->st = ST_BOOTSTRAP;
    schedule_retry(a, (uint64_t)a->cfg->retry_backoff_ms);
}

static void
ads_stop(struct km_dp_agent *a)
{
    if (a->call) {
        km_grpc_call_cancel(a->call);
        a->call = NULL;
    }
    if (a->client) {
        km_grpc_client_free(a->client);
        a->client = NULL;
    }
}

static void
ads_start(struct km_dp_agent *a)
{
    ads_stop(a);
    reset_stream_state(a);
    a->client = km_grpc_client_new(a->loop, a->ads_host, a->ads_port, a->ads_tls,
                                   a->ads_ca_file);
    /* The dataplane token goes in the "authorization" metadata of the stream, as Kuma's. */
    const char *tok = a->cfg->token && *a->cfg->token ? a->cfg->token : NULL;
    const char *hdrs[] = {"user-agent", "kuma-dp/" KM_VERSION, tok ? "authorization" : NULL, tok,
                          NULL};
    struct km_grpc_call_cbs cbs = {.on_message = on_message, .on_close = on_close, .ud = a};
    a->call = km_grpc_call_start(a->client, a->sotw ? ADS_SOTW : ADS_DELTA,
                                 (const char *const *)hdrs, &cbs);
    if (!a->call) {
        const char *why = NULL;
        km_grpc_client_failed(a->client, &why);
        km_log_warn("kuma-dp", "cannot open the ADS stream to %s:%d: %s; retrying in %" PRId64
                    " ms",
                    a->ads_host, a->ads_port, why ? why : "unknown error",
                    a->cfg->retry_backoff_ms);
        a->st = ST_BOOTSTRAP;
        schedule_retry(a, (uint64_t)a->cfg->retry_backoff_ms);
        return;
    }
    /* Like Envoy: clusters first, then listeners; EDS and RDS follow the snapshot. */
    static const int first[] = {KM_DP_CDS, KM_DP_LDS};
    for (size_t i = 0; i < KM_ARRAY_LEN(first); i++) {
        int t = first[i];
        a->ts[t].subscribed = true;
        if (a->sotw)
            send_sotw(a, t, a->ts[t].version, NULL, NULL);
        else
            send_delta(a, t, NULL, 0, NULL, 0, NULL, NULL, true);
    }
    /* Reconnecting with a snapshot: ask again for what it references. */
    update_subscriptions(a);
}

/* ---- signals and drain ---- */

static void
drain_end(struct km_dp_agent *a, const char *why)
{
    if (a->st == ST_DONE)
        return;
    km_log_info("kuma-dp", "drain finished (%s): exiting", why);
    a->st = ST_DONE;
    ads_stop(a);
    km_loop_stop(a->loop);
}

static void
drain_cb(struct km_timer *t, void *arg)
{
    drain_end(arg, "drain time elapsed");
}

static void
drain_poll_cb(struct km_timer *t, void *arg)
{
    struct km_dp_agent *a = arg;
    if (a->hooks.active_connections && a->hooks.active_connections(a->hooks.ud) == 0) {
        drain_end(a, "no connections left");
        return;
    }
    km_timer_arm(t, 100);
}

void
km_dp_agent_shutdown(struct km_dp_agent *a)
{
    if (a->st == ST_DRAINING || a->st == ST_DONE)
        return;
    km_log_info("kuma-dp", "stopping: no new connections, draining for %" PRId64 " ms",
                a->cfg->drain_ms);
    a->st = ST_DRAINING;
    km_timer_stop(a->retry_timer);
    if (a->hooks.stop_accepting)
        a->hooks.stop_accepting(a->hooks.ud);
    a->drain_timer = km_timer_new(a->loop, (uint64_t)a->cfg->drain_ms, drain_cb, a);
    if (a->hooks.active_connections)
        a->drain_poll = km_timer_new(a->loop, 0, drain_poll_cb, a);
}

static void
sig_cb(struct km_io *io, int fd, unsigned events, void *arg)
{
    struct km_dp_agent *a = arg;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        km_log_info("kuma-dp", "received %s", strsignal((int)si.ssi_signo));
        if (a->st == ST_DRAINING)
            drain_end(a, "second signal");
        else
            km_dp_agent_shutdown(a);
    }
}

/* ---- lifecycle ---- */

struct km_dp_agent *
km_dp_agent_new(const struct km_dp_config *cfg, struct km_loop *loop,
                const struct km_dp_engine_hooks *hooks)
{
    struct km_dp_agent *a = km_xcalloc(1, sizeof(*a));
    a->cfg = cfg;
    a->loop = loop;
    if (hooks)
        a->hooks = *hooks;
    a->sotw = cfg->xds_sotw;
    a->sigfd = -1;
    km_xds_register_types();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    a->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (a->sigfd >= 0)
        a->sig_io = km_io_new(loop, a->sigfd, KM_IO_READ, sig_cb, a);
    else
        km_log_warn("kuma-dp", "signalfd: %s (SIGTERM will not drain)", strerror(errno));
    a->retry_timer = km_timer_new(loop, 0, retry_cb, a);
    return a;
}

void
km_dp_agent_start(struct km_dp_agent *a)
{
    schedule_retry(a, 0);
}

int
km_dp_agent_run(struct km_dp_agent *a)
{
    km_dp_agent_start(a);
    km_loop_run(a->loop);
    return a->exit_code;
}

void
km_dp_agent_free(struct km_dp_agent *a)
{
    if (!a)
        return;
    ads_stop(a);
    reset_stream_state(a);
    for (int t = 0; t < KM_DP_TYPES; t++) {
        km_dp_xds_set_clear(&a->held[t]);
        free(a->ts[t].version);
        free(a->stats[t].last_nack);
    }
    km_dp_snapshot_unref(a->snap);
    km_timer_free(a->retry_timer);
    km_timer_free(a->drain_timer);
    km_timer_free(a->drain_poll);
    km_io_free(a->sig_io);
    if (a->sigfd >= 0)
        close(a->sigfd);
    if (a->tmp_ca_file) {
        unlink(a->tmp_ca_file);
        free(a->tmp_ca_file);
    }
    free(a->ads_ca_file);
    free(a->ads_host);
    free(a->node_id);
    json_decref(a->node_json);
    free(a);
}

struct km_dp_snapshot *
km_dp_agent_snapshot(const struct km_dp_agent *a)
{
    return a->snap;
}

const struct km_dp_xds_set *
km_dp_agent_resources(const struct km_dp_agent *a)
{
    return a->held;
}

const struct km_dp_xds_stats *
km_dp_agent_stats(const struct km_dp_agent *a)
{
    return a->stats;
}

bool
km_dp_agent_connected(const struct km_dp_agent *a)
{
    return a->st == ST_ADS && a->connected;
}

const char *
km_dp_agent_node_id(const struct km_dp_agent *a)
{
    return a->node_id;
}

char *
km_dp_agent_config_dump(const struct km_dp_agent *a)
{
    json_t *root = json_object();
    for (int t = 0; t < KM_DP_TYPES; t++) {
        json_t *o = json_object();
        for (size_t i = 0; i < a->held[t].n; i++) {
            const struct km_dp_xds_res *r = &a->held[t].v[i];
            char err[256];
            json_t *j = km_pbjson_decode(type_desc(t), r->bytes, r->len, err, sizeof(err));
            json_t *tc = t == KM_DP_SDS ? json_object_get(j, "tls_certificate") : NULL;
            if (json_object_get(tc, "private_key"))
                json_object_set_new(tc, "private_key", json_string("[redacted]"));
            if (!j)
                j = json_pack("{s:s}", "error", err);
            json_object_set_new(o, r->name, json_pack("{s:s, s:o}", "version", r->version,
                                                      "resource", j));
        }
        json_object_set_new(root, type_short[t], o);
    }
    char *s = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(root);
    return s;
}
