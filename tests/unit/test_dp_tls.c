/* kuma-dp mTLS: the CP's TLS shapes (km_xds_tls_*) accepted by the snapshot, NACKs of what is
 * not supported, ClientHello parsing, chain matching, and the engine end to end over real
 * sockets with certificates from the CP's CA: mutual TLS through an outbound and an inbound
 * listener, a foreign CA and plaintext refused (STRICT), plaintext accepted (PERMISSIVE),
 * upstream SAN mismatch counted, RBAC by SPIFFE ID (network filter: connection refused; HTTP
 * filter: 403 / PERMISSION_DENIED per request, following config changes on kept-alive
 * connections), and secret rotation. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "dp_util.h"
#include "test.h"

#include <km/common/grpc.h>
#include <km/common/loop.h>
#include <km/common/pbjson.h>
#include <km/common/util.h>
#include <km/cp/ca.h>
#include <km/cp/xds_tls.h>
#include <km/cp/xds_types.h>
#include <km/dp/engine.h>
#include <km/dp/rbac.h>
#include <km/dp/snapshot.h>
#include <km/dp/tls.h>

#include "envoy/config/cluster/v3/cluster.pb-c.h"
#include "envoy/config/listener/v3/listener.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"

#define TCP_URL "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
#define RBAC_URL "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
#define MESH "default"

/* ---- time, sockets ---- */

/* Sends <msg> and expects it back; false when the connection fails or closes. */
static bool
plain_echo(int fd, const char *msg)
{
    char buf[256];
    size_t n = strlen(msg), got = 0;
    if (send(fd, msg, n, MSG_NOSIGNAL) != (ssize_t)n)
        return false;
    while (got < n) {
        ssize_t k = recv(fd, buf + got, n - got, 0);
        if (k <= 0)
            return false;
        got += (size_t)k;
    }
    return memcmp(buf, msg, n) == 0;
}

/* ---- an echo backend on its own thread (poll, up to 32 connections) ---- */

struct echo {
    int lfd, stop[2];
    uint16_t port;
    pthread_t th;
};

static void *
echo_main(void *arg)
{
    struct echo *e = arg;
    struct pollfd pf[34];
    size_t n = 2;
    pf[0] = (struct pollfd){.fd = e->lfd, .events = POLLIN};
    pf[1] = (struct pollfd){.fd = e->stop[0], .events = POLLIN};
    for (;;) {
        if (poll(pf, n, 1000) < 0)
            continue;
        if (pf[1].revents)
            break;
        if ((pf[0].revents & POLLIN) && n < 34) {
            int fd = accept(e->lfd, NULL, NULL);
            if (fd >= 0)
                pf[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
        for (size_t i = 2; i < n; i++) {
            if (!pf[i].revents)
                continue;
            char buf[4096];
            ssize_t k = recv(pf[i].fd, buf, sizeof(buf), 0);
            if (k <= 0 || send(pf[i].fd, buf, (size_t)k, MSG_NOSIGNAL) != k) {
                close(pf[i].fd);
                pf[i--] = pf[--n];
            }
        }
    }
    for (size_t i = 2; i < n; i++)
        close(pf[i].fd);
    return NULL;
}

static void
echo_start(struct echo *e)
{
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);
    e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(e->lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    ASSERT(listen(e->lfd, 64) == 0);
    ASSERT(getsockname(e->lfd, (struct sockaddr *)&sin, &sl) == 0);
    e->port = ntohs(sin.sin_port);
    ASSERT(pipe(e->stop) == 0);
    ASSERT(pthread_create(&e->th, NULL, echo_main, e) == 0);
}

static void
echo_stop(struct echo *e)
{
    ASSERT(write(e->stop[1], "x", 1) == 1);
    pthread_join(e->th, NULL);
    close(e->lfd);
    close(e->stop[0]);
    close(e->stop[1]);
}

/* ---- certificates (the CP's CA) ---- */

struct pki {
    char *ca_cert, *ca_key;
};

static void
pki_new(struct pki *p, const char *mesh)
{
    struct km_errs errs;
    struct km_ca_params cp = {.mesh = mesh};
    km_errs_init(&errs);
    ASSERT(km_ca_generate(&cp, &p->ca_cert, &p->ca_key, &errs) == 0);
    km_errs_deinit(&errs);
}

static void
pki_issue(const struct pki *p, const char *mesh, const char *service, char **cert, char **key)
{
    struct km_errs errs;
    struct km_tag tag = {.key = "kuma.io/service", .value = service};
    struct km_identity id = {.mesh = mesh, .tags = &tag, .ntags = 1};
    km_errs_init(&errs);
    ASSERT(km_ca_issue(p->ca_cert, p->ca_key, &id, 3600, cert, key, &errs) == 0);
    km_errs_deinit(&errs);
}

static void
pki_free(struct pki *p)
{
    free(p->ca_cert);
    free(p->ca_key);
}

/* ---- resources ---- */

struct res {
    struct km_dp_xds_set sets[KM_DP_TYPES];
};

static const ProtobufCMessageDescriptor *
desc(int t)
{
    switch (t) {
    case KM_DP_LDS:
        return &envoy__config__listener__v3__listener__descriptor;
    case KM_DP_CDS:
        return &envoy__config__cluster__v3__cluster__descriptor;
    default:
        return &envoy__extensions__transport_sockets__tls__v3__secret__descriptor;
    }
}

/* Adds (or replaces) resource <name>; steals <j>. */
static void
res_put(struct res *r, int t, const char *name, json_t *j)
{
    uint8_t *bytes;
    size_t len;
    char err[256];
    km_xds_register_types();
    if (km_pbjson_encode(desc(t), j, &bytes, &len, err, sizeof(err)) != 0)
        KM_FAIL_AT("encode %s: %s", name, err);
    json_decref(j);
    struct km_dp_xds_set *s = &r->sets[t];
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].name, name) == 0) {
            free(s->v[i].bytes);
            s->v[i].bytes = bytes;
            s->v[i].len = len;
            return;
        }
    s->v = realloc(s->v, (s->n + 1) * sizeof(*s->v));
    s->v[s->n].name = strdup(name);
    s->v[s->n].bytes = bytes;
    s->v[s->n].len = len;
    s->v[s->n].version = strdup("1");
    s->n++;
}

static void
res_free(struct res *r)
{
    for (int t = 0; t < KM_DP_TYPES; t++)
        km_dp_xds_set_clear(&r->sets[t]);
}

static void
put_secrets(struct res *r, const char *cert, const char *key, const char *ca)
{
    char *n1 = km_xds_tls_identity_name(MESH), *n2 = km_xds_tls_mesh_ca_name(MESH);
    res_put(r, KM_DP_SDS, n1, km_xds_tls_identity_secret(MESH, cert, key));
    res_put(r, KM_DP_SDS, n2, km_xds_tls_mesh_ca_secret(MESH, ca));
    free(n1);
    free(n2);
}

static json_t *
rbac_filter(const char *allowed_spiffe)
{
    return json_pack("{s:s, s:{s:s, s:s, s:{s:s, s:{s:{s:[{s:b}], s:[{s:{s:{s:s}}}]}}}}}",
                     "name", "envoy.filters.network.rbac", "typed_config", "@type", RBAC_URL,
                     "stat_prefix", "inbound_test.", "rules", "action", "ALLOW", "policies",
                     "p", "permissions", "any", 1, "principals", "authenticated",
                     "principal_name", "exact", allowed_spiffe);
}

/* A TCP proxy listener on <port> to <cluster>; mTLS inbound when <tls> (1 STRICT, 2
 * PERMISSIVE), with an RBAC filter allowing <rbac_allow> when not NULL. */
static json_t *
listener_json(const char *name, uint16_t port, const char *cluster, int tls,
              const char *rbac_allow)
{
    json_t *filters = json_array();
    if (rbac_allow)
        json_array_append_new(filters, rbac_filter(rbac_allow));
    json_array_append_new(filters, json_pack("{s:s, s:{s:s, s:s, s:s}}", "name",
                                             "envoy.filters.network.tcp_proxy", "typed_config",
                                             "@type", TCP_URL, "stat_prefix", name, "cluster",
                                             cluster));
    json_t *l = json_pack("{s:s, s:{s:{s:s, s:i}}, s:s, s:[{s:o}]}", "name", name, "address",
                          "socket_address", "address", "127.0.0.1", "port_value", (int)port,
                          "traffic_direction", tls ? "INBOUND" : "OUTBOUND", "filter_chains",
                          "filters", filters);
    if (tls) {
        struct km_xds_tls_opts o = {.mesh = MESH};
        ASSERT(km_xds_tls_inbound_listener(l, &o, tls == 2) == 0);
    }
    return l;
}

/* A static cluster to 127.0.0.1:<port>; mTLS to <service> when not NULL. */
static json_t *
cluster_json(const char *name, uint16_t port, const char *service)
{
    json_t *c = json_pack("{s:s, s:s, s:s, s:{s:s, s:[{s:[{s:{s:{s:{s:s, s:i}}}}]}]}}", "name",
                          name, "type", "STATIC", "connect_timeout", "2s", "load_assignment",
                          "cluster_name", name, "endpoints", "lb_endpoints", "endpoint",
                          "address", "socket_address", "address", "127.0.0.1", "port_value",
                          (int)port);
    if (service) {
        struct km_xds_tls_opts o = {.mesh = MESH};
        char *sni = km_xds_tls_sni(service, MESH, NULL);
        ASSERT(km_xds_tls_outbound_cluster(c, &o, service, sni) == 0);
        free(sni);
    }
    return c;
}

static struct km_dp_snapshot *
build_ok(struct res *r, uint64_t gen)
{
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_dp_snapshot *s = km_dp_snapshot_build(r->sets, gen, &errs);
    if (!s) {
        char *e = km_errs_join(&errs);
        KM_FAIL_AT("snapshot: %s", e);
    }
    km_errs_deinit(&errs);
    return s;
}

static char *
build_fail(struct res *r)
{
    struct km_errs errs;
    km_errs_init(&errs);
    struct km_dp_snapshot *s = km_dp_snapshot_build(r->sets, 1, &errs);
    ASSERT(s == NULL);
    char *e = km_errs_join(&errs);
    km_errs_deinit(&errs);
    return e;
}

/* ---- engine ---- */

static void
wait_stat(struct km_dp_engine *e, const char *name, int64_t want)
{
    uint64_t end = dpt_now_ms() + 5000;
    while (dpt_stat_of(e, name) < want && dpt_now_ms() < end)
        dpt_sleep_ms(2);
    if (dpt_stat_of(e, name) < want)
        KM_FAIL_AT("%s: %lld < %lld", name, (long long)dpt_stat_of(e, name), (long long)want);
}

/* ---- a TLS test client ---- */

struct tcli {
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
};

static SSL_CTX *
client_ctx(const char *cert, const char *key, const char *ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    BIO *b;
    X509 *x;
    EVP_PKEY *k;
    ASSERT(ctx);
    if (cert) {
        b = BIO_new_mem_buf(cert, -1);
        x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        BIO_free(b);
        b = BIO_new_mem_buf(key, -1);
        k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
        BIO_free(b);
        ASSERT(x && k);
        ASSERT(SSL_CTX_use_certificate(ctx, x) == 1);
        ASSERT(SSL_CTX_use_PrivateKey(ctx, k) == 1);
        X509_free(x);
        EVP_PKEY_free(k);
    }
    if (ca) {
        b = BIO_new_mem_buf(ca, -1);
        x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        BIO_free(b);
        ASSERT(x);
        X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), x);
        X509_free(x);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;
}

/* Connects with TLS (ALPN "kuma"); returns false when the handshake fails. */
static bool
tcli_open(struct tcli *c, uint16_t port, const char *cert, const char *key, const char *ca)
{
    static const unsigned char alpn[] = "\x04kuma";
    memset(c, 0, sizeof(*c));
    c->ctx = client_ctx(cert, key, ca);
    c->fd = dpt_tconnect(port);
    ASSERT(c->fd >= 0);
    c->ssl = SSL_new(c->ctx);
    SSL_set_alpn_protos(c->ssl, alpn, sizeof(alpn) - 1);
    SSL_set_fd(c->ssl, c->fd);
    bool ok = SSL_connect(c->ssl) == 1;
    ERR_clear_error();
    return ok;
}

static bool
tcli_echo(struct tcli *c, const char *msg)
{
    char buf[256];
    int n = (int)strlen(msg), got = 0;
    if (SSL_write(c->ssl, msg, n) != n) {
        ERR_clear_error();
        return false;
    }
    while (got < n) {
        int k = SSL_read(c->ssl, buf + got, n - got);
        if (k <= 0) {
            ERR_clear_error();
            return false;
        }
        got += k;
    }
    return memcmp(buf, msg, (size_t)n) == 0;
}

static void
tcli_close(struct tcli *c)
{
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    close(c->fd);
}

/* ---- config tests ---- */

KM_TEST(dp_tls_snapshot_accepts_cp_shapes)
{
    struct pki p;
    struct res r = {0};
    char *cert, *key;
    pki_new(&p, MESH);
    pki_issue(&p, MESH, "web", &cert, &key);
    res_put(&r, KM_DP_LDS, "in", listener_json("in", 20001, "local", 2, "spiffe://default/x"));
    res_put(&r, KM_DP_CDS, "backend", cluster_json("backend", 20002, "backend"));
    /* without the secrets: accepted, no TLS yet */
    struct km_dp_snapshot *s = build_ok(&r, 1);
    const struct km_dp_listener *l = km_dp_snapshot_listener(s, "in");
    ASSERT_INT_EQ(l->nchains, 3);
    ASSERT_STR_EQ(l->chains[0].transport_protocol, "raw_buffer");
    ASSERT(l->chains[0].tls == NULL && l->chains[1].tls == NULL);
    ASSERT(l->chains[2].tls != NULL && l->chains[2].tls->ssl_ctx == NULL);
    ASSERT_STR_EQ(l->chains[2].tls->cert_secret, "identity_cert:secret:default");
    ASSERT_STR_EQ(l->chains[2].tls->ca_secret, "mesh_ca:secret:default");
    ASSERT(l->chains[2].tls->require_client_cert);
    ASSERT_INT_EQ(l->chains[2].tls->nsans, 1);
    ASSERT_STR_EQ(l->chains[2].tls->sans[0].value, "spiffe://default/");
    ASSERT(l->chains[0].rbac != NULL);
    const struct km_dp_cluster *c = km_dp_snapshot_cluster(s, "backend");
    ASSERT(c->tls && c->tls->ssl_ctx == NULL);
    ASSERT_STR_EQ(c->tls->sni, "backend{mesh=default}");
    ASSERT_STR_EQ(c->tls->sans[0].value, "spiffe://default/backend");
    ASSERT_INT_EQ(c->tls->nalpn, 1);
    km_dp_snapshot_unref(s);
    /* with them: SSL_CTXs */
    put_secrets(&r, cert, key, p.ca_cert);
    s = build_ok(&r, 2);
    ASSERT(km_dp_snapshot_listener(s, "in")->chains[2].tls->ssl_ctx != NULL);
    ASSERT(km_dp_snapshot_cluster(s, "backend")->tls->ssl_ctx != NULL);
    ASSERT_INT_EQ(s->nsecrets, 2);
    km_dp_snapshot_unref(s);
    res_free(&r);
    free(cert);
    free(key);
    pki_free(&p);
}

KM_TEST(dp_tls_snapshot_nacks)
{
    struct pki p, p2;
    struct res r = {0};
    char *cert, *key, *cert2, *key2, *e;
    pki_new(&p, MESH);
    pki_new(&p2, MESH);
    pki_issue(&p, MESH, "web", &cert, &key);
    pki_issue(&p2, MESH, "web", &cert2, &key2);
    /* a key that is not the certificate's */
    put_secrets(&r, cert, key2, p.ca_cert);
    e = build_fail(&r);
    ASSERT_STR_EQ(e, "secret \"identity_cert:secret:default\".tls_certificate.private_key: does "
                     "not match the certificate");
    free(e);
    res_free(&r);
    memset(&r, 0, sizeof(r));
    /* cipher suites, TLS 1.0 */
    json_t *c = cluster_json("backend", 20002, "backend");
    json_t *ctc = json_object_get(json_object_get(json_object_get(c, "transport_socket"),
                                                  "typed_config"), "common_tls_context");
    json_object_set_new(json_object_get(ctc, "tls_params"), "cipher_suites",
                        json_pack("[s]", "ECDHE-RSA-AES128-GCM-SHA256"));
    json_object_set_new(json_object_get(ctc, "tls_params"), "tls_minimum_protocol_version",
                        json_string("TLSv1_0"));
    res_put(&r, KM_DP_CDS, "backend", c);
    e = build_fail(&r);
    ASSERT_STR_CONTAINS(e, "cluster \"backend\".transport_socket.typed_config.common_tls_context."
                           "tls_params.tls_minimum_protocol_version: only TLSv1_2 and TLSv1_3 "
                           "are supported");
    ASSERT_STR_CONTAINS(e, "tls_params.cipher_suites: is not supported");
    free(e);
    /* a downstream context on a cluster */
    c = cluster_json("backend", 20002, NULL);
    json_object_set_new(c, "transport_socket",
                        json_pack("{s:s, s:{s:s}}", "name", "tls", "typed_config", "@type",
                                  KM_XDS_TLS_URL_DOWNSTREAM));
    res_put(&r, KM_DP_CDS, "backend", c);
    e = build_fail(&r);
    ASSERT_STR_CONTAINS(e, "cluster \"backend\".transport_socket.typed_config: transport socket "
                           "tls (envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext) "
                           "is not supported");
    free(e);
    res_free(&r);
    free(cert);
    free(key);
    free(cert2);
    free(key2);
    pki_free(&p);
    pki_free(&p2);
}

/* A real ClientHello from OpenSSL (memory BIOs). */
static size_t
make_hello(uint8_t *out, size_t cap, const char *sni, const unsigned char *alpn, size_t alpnlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rb, wb);
    if (sni)
        SSL_set_tlsext_host_name(ssl, sni);
    if (alpn)
        SSL_set_alpn_protos(ssl, alpn, (unsigned)alpnlen);
    SSL_set_connect_state(ssl);
    ASSERT(SSL_do_handshake(ssl) <= 0);
    int n = BIO_read(wb, out, (int)cap);
    ASSERT(n > 0);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return (size_t)n;
}

KM_TEST(dp_tls_client_hello)
{
    uint8_t buf[4096];
    struct km_dp_client_hello h;
    static const unsigned char alpn[] = "\x04kuma\x02h2";
    size_t n = make_hello(buf, sizeof(buf), "Backend{mesh=default}", alpn, sizeof(alpn) - 1);
    ASSERT_INT_EQ(km_dp_tls_parse_client_hello(buf, n, &h), 1);
    ASSERT_STR_EQ(h.sni, "backend{mesh=default}");
    ASSERT_INT_EQ(h.nalpn, 2);
    ASSERT_STR_EQ(h.alpn[0], "kuma");
    ASSERT_STR_EQ(h.alpn[1], "h2");
    /* partial: more bytes needed, at every cut */
    for (size_t cut = 0; cut < n; cut++)
        ASSERT_INT_EQ(km_dp_tls_parse_client_hello(buf, cut, &h), 0);
    n = make_hello(buf, sizeof(buf), NULL, NULL, 0);
    ASSERT_INT_EQ(km_dp_tls_parse_client_hello(buf, n, &h), 1);
    ASSERT_STR_EQ(h.sni, "");
    ASSERT_INT_EQ(h.nalpn, 0);
    ASSERT_INT_EQ(km_dp_tls_parse_client_hello((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &h),
                  -1);
    /* hostile lengths never read out of bounds (ASan) */
    for (size_t i = 5; i < n; i++) {
        uint8_t copy[4096];
        memcpy(copy, buf, n);
        copy[i] = 0xff;
        (void)km_dp_tls_parse_client_hello(copy, n, &h);
    }
}

KM_TEST(dp_tls_chain_select_permissive)
{
    struct res r = {0};
    struct km_dp_client_hello h = {0};
    res_put(&r, KM_DP_LDS, "in", listener_json("in", 20001, "local", 2, NULL));
    struct km_dp_snapshot *s = build_ok(&r, 1);
    const struct km_dp_listener *l = km_dp_snapshot_listener(s, "in");
    ASSERT(km_dp_tls_listener_inspects(l));
    ASSERT(km_dp_tls_chain_select(l, 20001, NULL, false) == &l->chains[0]);
    ASSERT(km_dp_tls_chain_select(l, 20001, &h, true) == &l->chains[1]);
    strcpy(h.alpn[0], "h2");
    strcpy(h.alpn[1], "kuma");
    h.nalpn = 2;
    ASSERT(km_dp_tls_chain_select(l, 20001, &h, true) == &l->chains[2]);
    km_dp_snapshot_unref(s);
    res_free(&r);
}

/* ---- engine tests ---- */

struct env {
    struct pki p;
    char *web_cert, *web_key;   /* the caller (outbound side) */
    char *be_cert, *be_key;     /* the inbound's own identity */
    struct echo echo;
    int hold_in, hold_out;
    uint16_t in_port, out_port;
    struct km_dp_engine *e;
    struct res r;
    uint64_t gen;
};

/* Outbound "out" -> cluster "backend" (mTLS, expects <expect_service>) -> inbound "in" (mode
 * <tls>, RBAC allowing <rbac>) -> cluster "local" -> echo. Both sides share one identity
 * secret in this test (one proxy): the inbound presents <be_cert>. */
static void
env_start(struct env *v, int tls, const char *expect_service, const char *rbac)
{
    memset(v, 0, sizeof(*v));
    signal(SIGPIPE, SIG_IGN);
    pki_new(&v->p, MESH);
    pki_issue(&v->p, MESH, "web", &v->web_cert, &v->web_key);
    pki_issue(&v->p, MESH, "backend", &v->be_cert, &v->be_key);
    echo_start(&v->echo);
    v->in_port = dpt_reserve_port(&v->hold_in);
    v->out_port = dpt_reserve_port(&v->hold_out);
    res_put(&v->r, KM_DP_LDS, "in", listener_json("in", v->in_port, "local", tls, rbac));
    res_put(&v->r, KM_DP_LDS, "out", listener_json("out", v->out_port, "backend", 0, NULL));
    res_put(&v->r, KM_DP_CDS, "local", cluster_json("local", v->echo.port, NULL));
    res_put(&v->r, KM_DP_CDS, "backend", cluster_json("backend", v->in_port, expect_service));
    put_secrets(&v->r, v->be_cert, v->be_key, v->p.ca_cert);
    struct km_dp_engine_opts o = {.concurrency = 2};
    v->e = km_dp_engine_new(&o);
    ASSERT(v->e);
    dpt_publish_and_wait(v->e, build_ok(&v->r, ++v->gen));
}

static void
env_stop(struct env *v)
{
    km_dp_engine_free(v->e);
    echo_stop(&v->echo);
    close(v->hold_in);
    close(v->hold_out);
    res_free(&v->r);
    free(v->web_cert);
    free(v->web_key);
    free(v->be_cert);
    free(v->be_key);
    pki_free(&v->p);
}

KM_TEST(dp_tls_engine_mtls_strict)
{
    struct env v;
    struct tcli c;
    env_start(&v, 1, "backend", NULL);
    /* through the sidecar pair */
    int fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(plain_echo(fd, "hello over mtls"));
    ASSERT(plain_echo(fd, "second message"));
    close(fd);
    wait_stat(v.e, "cluster.backend.ssl.handshake", 1);
    /* the next connection resumes the session (tickets) */
    fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(plain_echo(fd, "resumed"));
    close(fd);
    wait_stat(v.e, "cluster.backend.ssl.session_reused", 1);
    char name[128];
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.ssl.handshake", v.in_port);
    wait_stat(v.e, name, 1);
    /* a direct mesh client with a valid certificate works too */
    ASSERT(tcli_open(&c, v.in_port, v.web_cert, v.web_key, v.p.ca_cert));
    ASSERT(tcli_echo(&c, "direct"));
    tcli_close(&c);
    /* plaintext to the inbound: refused */
    fd = dpt_tconnect(v.in_port);
    ASSERT(fd >= 0);
    ASSERT(!plain_echo(fd, "plaintext"));
    close(fd);
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.ssl.connection_error", v.in_port);
    wait_stat(v.e, name, 1);
    /* no client certificate: refused */
    if (tcli_open(&c, v.in_port, NULL, NULL, v.p.ca_cert))
        ASSERT(!tcli_echo(&c, "nocert"));
    tcli_close(&c);
    /* a certificate of a foreign CA: refused */
    struct pki foreign;
    char *fc, *fk;
    pki_new(&foreign, MESH);
    pki_issue(&foreign, MESH, "web", &fc, &fk);
    if (tcli_open(&c, v.in_port, fc, fk, v.p.ca_cert))
        ASSERT(!tcli_echo(&c, "foreign"));
    tcli_close(&c);
    snprintf(name, sizeof(name), "listener.127.0.0.1_%u.ssl.fail_verify_error", v.in_port);
    wait_stat(v.e, name, 1);
    free(fc);
    free(fk);
    pki_free(&foreign);
    env_stop(&v);
}

KM_TEST(dp_tls_engine_upstream_san_mismatch)
{
    struct env v;
    env_start(&v, 1, "other-service", NULL);
    int fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(!plain_echo(fd, "must not pass"));
    close(fd);
    wait_stat(v.e, "cluster.backend.ssl.fail_verify_san", 1);
    wait_stat(v.e, "cluster.backend.upstream_cx_connect_fail", 1);
    env_stop(&v);
}

KM_TEST(dp_tls_engine_permissive)
{
    struct env v;
    struct tcli c;
    env_start(&v, 2, "backend", NULL);
    int fd = dpt_tconnect(v.in_port);
    ASSERT(fd >= 0);
    ASSERT(plain_echo(fd, "plaintext is fine in PERMISSIVE"));
    close(fd);
    fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(plain_echo(fd, "mtls in PERMISSIVE"));
    close(fd);
    ASSERT(tcli_open(&c, v.in_port, v.web_cert, v.web_key, v.p.ca_cert));
    ASSERT(tcli_echo(&c, "direct mtls"));
    tcli_close(&c);
    /* the application's own TLS (no "kuma" ALPN) passes through untouched, also when the
     * ClientHello comes in pieces */
    uint8_t hello[4096], back[4096];
    size_t n = make_hello(hello, sizeof(hello), "app.example", NULL, 0), got = 0;
    fd = dpt_tconnect(v.in_port);
    ASSERT(fd >= 0);
    ASSERT(send(fd, hello, 7, MSG_NOSIGNAL) == 7);
    dpt_sleep_ms(60);
    ASSERT(send(fd, hello + 7, n - 7, MSG_NOSIGNAL) == (ssize_t)(n - 7));
    while (got < n) {
        ssize_t k = recv(fd, back + got, n - got, 0);
        ASSERT(k > 0);
        got += (size_t)k;
    }
    ASSERT(memcmp(hello, back, n) == 0);
    close(fd);
    env_stop(&v);
}

KM_TEST(dp_tls_engine_rbac)
{
    struct env v;
    struct tcli c;
    env_start(&v, 1, "backend", "spiffe://default/web");
    ASSERT(tcli_open(&c, v.in_port, v.web_cert, v.web_key, v.p.ca_cert));
    ASSERT(tcli_echo(&c, "web is allowed"));
    tcli_close(&c);
    wait_stat(v.e, "inbound_test.rbac.allowed", 1);
    /* the outbound presents the "backend" identity: not allowed */
    int fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(!plain_echo(fd, "backend is denied"));
    close(fd);
    wait_stat(v.e, "inbound_test.rbac.denied", 1);
    env_stop(&v);
}

/* Whether the peer presented the certificate <pem>. */
static bool
peer_is(SSL *ssl, const char *pem)
{
    X509 *x = SSL_get1_peer_certificate(ssl);
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *y = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    ASSERT(x && y);
    bool same = X509_cmp(x, y) == 0;
    X509_free(x);
    X509_free(y);
    return same;
}

KM_TEST(dp_tls_engine_rotation)
{
    struct env v;
    struct tcli old, c;
    char *cert2, *key2;
    env_start(&v, 1, "backend", NULL);
    int fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(plain_echo(fd, "before rotation"));
    ASSERT(tcli_open(&old, v.in_port, v.web_cert, v.web_key, v.p.ca_cert));
    ASSERT(tcli_echo(&old, "old"));
    ASSERT(peer_is(old.ssl, v.be_cert));
    /* a new identity certificate */
    pki_issue(&v.p, MESH, "backend", &cert2, &key2);
    put_secrets(&v.r, cert2, key2, v.p.ca_cert);
    dpt_publish_and_wait(v.e, build_ok(&v.r, ++v.gen));
    /* established connections keep going */
    ASSERT(plain_echo(fd, "after rotation, same connection"));
    ASSERT(tcli_echo(&old, "old again"));
    /* new ones get the new certificate */
    ASSERT(tcli_open(&c, v.in_port, v.web_cert, v.web_key, v.p.ca_cert));
    ASSERT(tcli_echo(&c, "new"));
    ASSERT(peer_is(c.ssl, cert2));
    ASSERT(!peer_is(c.ssl, v.be_cert));
    tcli_close(&c);
    tcli_close(&old);
    close(fd);
    int fd2 = dpt_tconnect(v.out_port);
    ASSERT(fd2 >= 0);
    ASSERT(plain_echo(fd2, "new connection through the pair"));
    close(fd2);
    free(cert2);
    free(key2);
    env_stop(&v);
}

KM_TEST(dp_tls_engine_missing_secret)
{
    struct env v;
    env_start(&v, 1, "backend", NULL);
    /* drop the secrets: TLS contexts have nothing to serve with */
    km_dp_xds_set_clear(&v.r.sets[KM_DP_SDS]);
    dpt_publish_and_wait(v.e, build_ok(&v.r, ++v.gen));
    int fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(!plain_echo(fd, "no secret"));
    close(fd);
    wait_stat(v.e, "cluster.backend.ssl.connection_error", 1);
    env_stop(&v);
}

/* ---- HTTP RBAC: 403 per request ---- */

#define HCM_URL                                                                                 \
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."          \
    "HttpConnectionManager"
#define HTTP_RBAC_URL "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
#define ROUTER_URL "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

/* An HTTP/1.1 server on its own thread answering every request "200 ok" (keep-alive). */
static void *
http_ok_main(void *arg)
{
    struct echo *e = arg;
    static const char resp[] = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    struct pollfd pf[34];
    size_t n = 2;
    pf[0] = (struct pollfd){.fd = e->lfd, .events = POLLIN};
    pf[1] = (struct pollfd){.fd = e->stop[0], .events = POLLIN};
    for (;;) {
        if (poll(pf, n, 1000) < 0)
            continue;
        if (pf[1].revents)
            break;
        if ((pf[0].revents & POLLIN) && n < 34) {
            int fd = accept(e->lfd, NULL, NULL);
            if (fd >= 0)
                pf[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
        for (size_t i = 2; i < n; i++) {
            if (!pf[i].revents)
                continue;
            char buf[4096];
            ssize_t k = recv(pf[i].fd, buf, sizeof(buf), 0);
            /* the test's requests are small and have no body: one read, one request */
            if (k <= 0 || send(pf[i].fd, resp, sizeof(resp) - 1, MSG_NOSIGNAL) < 0) {
                close(pf[i].fd);
                pf[i--] = pf[--n];
            }
        }
    }
    for (size_t i = 2; i < n; i++)
        close(pf[i].fd);
    return NULL;
}

static void
http_ok_start(struct echo *e)
{
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);
    e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    dpt_sin_loopback(&sin, 0);
    ASSERT(bind(e->lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    ASSERT(listen(e->lfd, 64) == 0);
    ASSERT(getsockname(e->lfd, (struct sockaddr *)&sin, &sl) == 0);
    e->port = ntohs(sin.sin_port);
    ASSERT(pipe(e->stop) == 0);
    ASSERT(pthread_create(&e->th, NULL, http_ok_main, e) == 0);
}

/* An mTLS (STRICT) inbound "in" on <port> with an HTTP connection manager (stat_prefix "in")
 * routing everything to cluster "local", its HTTP RBAC filter allowing <allowed_spiffe>. */
static json_t *
http_rbac_listener(uint16_t port, const char *allowed_spiffe)
{
    json_t *rbac = json_pack(
        "{s:s, s:{s:s, s:{s:s, s:{s:{s:[{s:b}], s:[{s:{s:{s:s}}}]}}}, s:{s:s, s:{s:{s:[{s:b}], "
        "s:[{s:b}]}}}}}",
        "name", "envoy.filters.http.rbac", "typed_config", "@type", HTTP_RBAC_URL, "rules",
        "action", "ALLOW", "policies", "p", "permissions", "any", 1, "principals",
        "authenticated", "principal_name", "exact", allowed_spiffe, "shadow_rules", "action",
        "DENY", "policies", "s", "permissions", "any", 1, "principals", "any", 1);
    json_t *hcm = json_pack(
        "{s:s, s:s, s:{s:s, s:[{s:s, s:[s], s:[{s:{s:s}, s:{s:s}}]}]}, s:[o, {s:s, s:{s:s}}]}",
        "@type", HCM_URL, "stat_prefix", "in", "route_config", "name", "in", "virtual_hosts",
        "name", "local", "domains", "*", "routes", "match", "prefix", "/", "route", "cluster",
        "local", "http_filters", rbac, "name", "envoy.filters.http.router", "typed_config",
        "@type", ROUTER_URL);
    ASSERT(hcm != NULL);
    json_t *l = json_pack("{s:s, s:{s:{s:s, s:i}}, s:s, s:[{s:[{s:s, s:o}]}]}", "name", "in",
                          "address", "socket_address", "address", "127.0.0.1", "port_value",
                          (int)port, "traffic_direction", "INBOUND", "filter_chains", "filters",
                          "name", "envoy.filters.network.http_connection_manager",
                          "typed_config", hcm);
    struct km_xds_tls_opts o = {.mesh = MESH};
    ASSERT(km_xds_tls_inbound_listener(l, &o, false) == 0);
    return l;
}

/* Reads one HTTP/1.1 response with a content-length body into <buf>; false on EOF. */
static bool
tcli_http(struct tcli *c, const char *req, char *buf, size_t cap)
{
    int n = (int)strlen(req);
    size_t got = 0;
    if (SSL_write(c->ssl, req, n) != n) {
        ERR_clear_error();
        return false;
    }
    buf[0] = 0;
    while (got + 1 < cap) {
        int k = SSL_read(c->ssl, buf + got, (int)(cap - 1 - got));
        if (k <= 0) {
            ERR_clear_error();
            return false;
        }
        got += (size_t)k;
        buf[got] = 0;
        const char *end = strstr(buf, "\r\n\r\n"), *cl = strstr(buf, "content-length: ");
        if (end && cl && got >= (size_t)(end + 4 - buf) + (size_t)atoi(cl + 16))
            return true;
    }
    return false;
}

static bool
plain_http(int fd, const char *req, char *buf, size_t cap)
{
    size_t n = strlen(req), got = 0;
    if (send(fd, req, n, MSG_NOSIGNAL) != (ssize_t)n)
        return false;
    buf[0] = 0;
    while (got + 1 < cap) {
        ssize_t k = recv(fd, buf + got, cap - 1 - got, 0);
        if (k <= 0)
            return false;
        got += (size_t)k;
        buf[got] = 0;
        const char *end = strstr(buf, "\r\n\r\n"), *cl = strstr(buf, "content-length: ");
        if (end && cl && got >= (size_t)(end + 4 - buf) + (size_t)atoi(cl + 16))
            return true;
    }
    return false;
}

struct grpc_res {
    bool closed;
    int status;
    char message[128];
};

static void
grpc_res_close(struct km_grpc_call *c, int status, const char *message, void *ud)
{
    struct grpc_res *t = ud;
    (void)c;
    t->closed = true;
    t->status = status;
    snprintf(t->message, sizeof(t->message), "%s", message ? message : "");
}

KM_TEST(dp_tls_engine_http_rbac_403)
{
    static const char req[] = "GET /x HTTP/1.1\r\nhost: backend\r\n\r\n";
    struct env v;
    struct tcli c;
    char buf[1024];
    env_start(&v, 1, "backend", NULL);
    /* the echo backend becomes an HTTP server (echo_stop stops either) */
    echo_stop(&v.echo);
    http_ok_start(&v.echo);
    res_put(&v.r, KM_DP_CDS, "local", cluster_json("local", v.echo.port, NULL));
    res_put(&v.r, KM_DP_LDS, "in", http_rbac_listener(v.in_port, "spiffe://default/web"));
    dpt_publish_and_wait(v.e, build_ok(&v.r, ++v.gen));

    /* web is allowed: 200, twice on one kept-alive connection */
    ASSERT(tcli_open(&c, v.in_port, v.web_cert, v.web_key, v.p.ca_cert));
    ASSERT(tcli_http(&c, req, buf, sizeof(buf)));
    ASSERT_STR_CONTAINS(buf, "HTTP/1.1 200");
    ASSERT(tcli_http(&c, req, buf, sizeof(buf)));
    ASSERT_STR_CONTAINS(buf, "HTTP/1.1 200");
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.in.rbac.allowed"), 2);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.in.rbac.shadow_denied"), 2);

    /* the outbound presents the "backend" identity: 403 per request, the connection stays */
    int fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(plain_http(fd, req, buf, sizeof(buf)));
    ASSERT_STR_CONTAINS(buf, "HTTP/1.1 403 Forbidden");
    ASSERT_STR_CONTAINS(buf, "RBAC: access denied");
    ASSERT(plain_http(fd, req, buf, sizeof(buf)));
    ASSERT_STR_CONTAINS(buf, "HTTP/1.1 403");
    close(fd);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.in.rbac.denied"), 2);
    ASSERT(dpt_stat_of(v.e, "http.in.downstream_rq_4xx") >= 2);

    /* gRPC (HTTP/2 through the pair): PERMISSION_DENIED, trailers-only */
    struct km_loop *loop = km_loop_new();
    struct km_grpc_client *gc = km_grpc_client_new(loop, "127.0.0.1", v.out_port, false, NULL);
    struct grpc_res gr = {0};
    struct km_grpc_call_cbs cbs = {.on_close = grpc_res_close, .ud = &gr};
    struct km_grpc_call *call = km_grpc_call_start(gc, "/test.Echo/Unary", NULL, &cbs);
    ASSERT(call != NULL);
    km_grpc_call_send(call, (const uint8_t *)"x", 1);
    km_grpc_call_close_send(call);
    uint64_t end = dpt_now_ms() + 5000;
    while (!gr.closed && dpt_now_ms() < end)
        km_loop_run_once(loop, 10);
    ASSERT(gr.closed);
    ASSERT_INT_EQ(gr.status, KM_GRPC_PERMISSION_DENIED);
    ASSERT_STR_CONTAINS(gr.message, "RBAC: access denied");
    km_grpc_client_free(gc);
    km_loop_free(loop);
    ASSERT_INT_EQ(dpt_stat_of(v.e, "http.in.rbac.denied"), 3);

    /* the permission changes: the next request on web's kept-alive connection is refused,
     * and allowed again once it comes back */
    res_put(&v.r, KM_DP_LDS, "in", http_rbac_listener(v.in_port, "spiffe://default/other"));
    dpt_publish_and_wait(v.e, build_ok(&v.r, ++v.gen));
    ASSERT(tcli_http(&c, req, buf, sizeof(buf)));
    ASSERT_STR_CONTAINS(buf, "HTTP/1.1 403");
    res_put(&v.r, KM_DP_LDS, "in", http_rbac_listener(v.in_port, "spiffe://default/web"));
    dpt_publish_and_wait(v.e, build_ok(&v.r, ++v.gen));
    ASSERT(tcli_http(&c, req, buf, sizeof(buf)));
    ASSERT_STR_CONTAINS(buf, "HTTP/1.1 200");
    tcli_close(&c);
    env_stop(&v);
}

KM_TEST(dp_tls_snapshot_http_rbac)
{
    struct res r = {0};
    res_put(&r, KM_DP_LDS, "in", http_rbac_listener(20001, "spiffe://default/web"));
    struct km_dp_snapshot *s = build_ok(&r, 1);
    const struct km_dp_listener *l = km_dp_snapshot_listener(s, "in");
    ASSERT(l && l->nchains == 1);
    ASSERT(l->chains[0].rbac == NULL);
    ASSERT(l->chains[0].http_rbac != NULL);
    ASSERT_STR_EQ(l->chains[0].http_rbac->stat_prefix, "http.in.");
    ASSERT(l->chains[0].http_rbac->rules.present && l->chains[0].http_rbac->shadow.present);
    km_dp_snapshot_unref(s);
    /* after the router: NACKed */
    json_t *bad = http_rbac_listener(20001, "spiffe://default/web");
    json_t *hf = json_object_get(
        json_object_get(json_array_get(json_object_get(json_array_get(json_object_get(
                                                           bad, "filter_chains"), 0),
                                                       "filters"), 0),
                        "typed_config"),
        "http_filters");
    json_t *first = json_incref(json_array_get(hf, 0));
    json_array_remove(hf, 0);
    json_array_append_new(hf, first);
    res_put(&r, KM_DP_LDS, "in", bad);
    char *e = build_fail(&r);
    ASSERT_STR_CONTAINS(e, "the router must be the last HTTP filter");
    free(e);
    res_free(&r);
}

/* A bulk stream both ways through the pair (TCP proxy reading and writing through its SSL on
 * both TLS sides, no relay): backpressure, blocked SSL_write retries, then a half-close that
 * must come back as EOF after every byte. */
KM_TEST(dp_tls_engine_bulk_half_close)
{
    struct env v;
    env_start(&v, 1, "backend", NULL);
    int fd = dpt_tconnect(v.out_port);
    ASSERT(fd >= 0);
    ASSERT(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
    const size_t total = 3u * 1024u * 1024u;
    size_t sent = 0, got = 0;
    bool shut = false, eof = false, ok = true;
    uint8_t buf[32768];
    uint64_t deadline = dpt_now_ms() + 20000;
    while (!eof && ok && dpt_now_ms() < deadline) {
        struct pollfd pf = {.fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0)};
        if (poll(&pf, 1, 500) < 0)
            continue;
        while (sent < total) {
            size_t n = total - sent < sizeof(buf) ? total - sent : sizeof(buf);
            for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t)((sent + i) * 7u);
            ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);
            if (k <= 0)
                break;
            sent += (size_t)k;
        }
        if (sent == total && !shut) {
            ASSERT(shutdown(fd, SHUT_WR) == 0);
            shut = true;
        }
        for (;;) {
            ssize_t k = recv(fd, buf, sizeof(buf), 0);
            if (k == 0) {
                eof = true;
                break;
            }
            if (k < 0)
                break;
            for (ssize_t i = 0; i < k && ok; i++)
                ok = buf[i] == (uint8_t)((got + (size_t)i) * 7u);
            got += (size_t)k;
        }
    }
    ASSERT(ok);
    ASSERT(eof);
    ASSERT_INT_EQ((long long)got, (long long)total);
    close(fd);
    env_stop(&v);
}
