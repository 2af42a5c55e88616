/* tls-handshake: full TLS 1.3 handshakes per second against a server (bench/dp_mtls.sh).
 *
 *   tls-handshake run -p PORT [-n N] [-t THREADS] [--cert F --key F] [--ca F] [--alpn P]
 *   tls-handshake issue CA_CERT CA_KEY MESH SERVICE OUT_CERT OUT_KEY [VALIDITY_S]
 *
 * run: N handshakes (default 2000) spread over THREADS client threads (default 1), each one on
 * a new TCP connection to 127.0.0.1:PORT: TLS 1.3 only, no session resumption (no ticket
 * kept, a fresh SSL per connection), ECDHE on X25519/P-256 as the server picks; the client
 * presents --cert/--key when given (mutual TLS) and verifies the server's chain against --ca
 * when given (no host name check: mesh certificates carry only URI SANs). After the
 * handshake it sends close_notify and reads until the server closes (so the server has
 * processed the client's last flight, including the client certificate), then resets the
 * connection (SO_LINGER 0: no TIME_WAIT build-up). Any failure is counted and the first
 * errors are printed. Prints: handshakes, failures, wall seconds, handshakes/s (wall),
 * client CPU us/handshake.
 *
 * issue: a workload certificate for spiffe://MESH/SERVICE (ECDSA P-256 leaf, the mesh CA's
 * km_ca_issue, as kuma-cp issues them) from a CA certificate and key in PEM files. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <km/common/errs.h>
#include <km/cp/ca.h>

#define MAX_THREADS 64
#define MAX_FILE    (256 * 1024)

struct run_opts {
    int port;
    long n;
    int threads;
    const char *cert;
    const char *key;
    const char *ca;
    const char *alpn;
};

static SSL_CTX *g_ctx;
static struct run_opts g_opts;
static atomic_long g_next;
static atomic_long g_ok;
static atomic_long g_fail;
static atomic_int g_errs_printed;

static double
clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
report_error(const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();

    if (atomic_fetch_add(&g_errs_printed, 1) < 5) {
        if (e)
            ERR_error_string_n(e, buf, sizeof(buf));
        else
            snprintf(buf, sizeof(buf), "%s", errno ? strerror(errno) : "no detail");
        fprintf(stderr, "tls-handshake: %s: %s\n", what, buf);
    }
    ERR_clear_error();
}

static int
connect_loopback(int port)
{
    struct sockaddr_in a;
    struct timeval tv = {.tv_sec = 5};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One connection, one full handshake. 0 on success. */
static int
one_handshake(void)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    char buf[4096];
    int rc = -1;
    int fd = connect_loopback(g_opts.port);
    SSL *ssl = NULL;

    if (fd < 0) {
        report_error("connect");
        return -1;
    }
    ssl = SSL_new(g_ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1) {
        report_error("SSL_new");
        goto cleanup;
    }
    if (SSL_connect(ssl) != 1) {
        report_error("handshake");
        goto cleanup;
    }
    /* close_notify, then read until the server's EOF: the server has read our Finished (and
     * certificate) by then. Tickets and the server's close_notify are read and dropped. */
    SSL_shutdown(ssl);
    for (int i = 0; i < 64; i++) {
        int r = SSL_read(ssl, buf, sizeof(buf));
        if (r > 0)
            continue;
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL) {
            rc = 0; /* orderly close or EOF */
        } else {
            report_error("after handshake");
        }
        break;
    }
    ERR_clear_error();

cleanup:
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    SSL_free(ssl);
    close(fd);
    return rc;
}

static void *
worker(void *arg)
{
    (void)arg;
    while (atomic_fetch_add(&g_next, 1) < g_opts.n) {
        if (one_handshake() == 0)
            atomic_fetch_add(&g_ok, 1);
        else
            atomic_fetch_add(&g_fail, 1);
    }
    return NULL;
}

static SSL_CTX *
make_ctx(const struct run_opts *o)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL)
        return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
        goto fail;
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* a server may close without its close_notify after ours (nginx): that is a clean end */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (o->cert && SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1) {
        fprintf(stderr, "tls-handshake: --cert %s: cannot load\n", o->cert);
        goto fail;
    }
    if (o->key && (SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1 ||
                   SSL_CTX_check_private_key(ctx) != 1)) {
        fprintf(stderr, "tls-handshake: --key %s: cannot load or does not match\n", o->key);
        goto fail;
    }
    if (o->ca) {
        if (SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1) {
            fprintf(stderr, "tls-handshake: --ca %s: cannot load\n", o->ca);
            goto fail;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    if (o->alpn) {
        unsigned char wire[256];
        size_t l = strlen(o->alpn);
        if (l == 0 || l > 255) {
            fprintf(stderr, "tls-handshake: --alpn: 1 to 255 characters\n");
            goto fail;
        }
        wire[0] = (unsigned char)l;
        memcpy(wire + 1, o->alpn, l);
        if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)l + 1) != 0)
            goto fail;
    }
    return ctx;
fail:
    ERR_print_errors_fp(stderr);
    SSL_CTX_free(ctx);
    return NULL;
}

static int
cmd_run(int argc, char **argv)
{
    struct run_opts *o = &g_opts;
    pthread_t th[MAX_THREADS];
    double w0, c0, w, c;
    int started = 0;

    o->n = 2000;
    o->threads = 1;
    if (argc % 2 != 0)
        goto usage; /* "run" and flag/value pairs */
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *a = argv[i];
        const char *v = argv[i + 1];
        if (strcmp(a, "-p") == 0)
            o->port = atoi(v);
        else if (strcmp(a, "-n") == 0)
            o->n = atol(v);
        else if (strcmp(a, "-t") == 0)
            o->threads = atoi(v);
        else if (strcmp(a, "--cert") == 0)
            o->cert = v;
        else if (strcmp(a, "--key") == 0)
            o->key = v;
        else if (strcmp(a, "--ca") == 0)
            o->ca = v;
        else if (strcmp(a, "--alpn") == 0)
            o->alpn = v;
        else
            goto usage;
    }
    if (o->port < 1 || o->port > 65535 || o->n < 1 || o->n > 10000000 || o->threads < 1 ||
        o->threads > MAX_THREADS || (o->cert == NULL) != (o->key == NULL)) {
        fprintf(stderr, "tls-handshake: -p 1..65535, -n 1..10000000, -t 1..%d, --cert and "
                "--key together\n", MAX_THREADS);
        return 2;
    }
    g_ctx = make_ctx(o);
    if (g_ctx == NULL)
        return 1;
    w0 = clock_s(CLOCK_MONOTONIC);
    c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < o->threads; i++) {
        if (pthread_create(&th[i], NULL, worker, NULL) != 0) {
            fprintf(stderr, "tls-handshake: pthread_create failed\n");
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    w = clock_s(CLOCK_MONOTONIC) - w0;
    c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    long ok = atomic_load(&g_ok), fail = atomic_load(&g_fail);
    printf("handshakes=%ld failed=%ld threads=%d wall_s=%.3f hs_per_s=%.0f "
           "client_cpu_us_per_hs=%.1f\n",
           ok, fail, started, w, w > 0 ? (double)ok / w : 0.0,
           ok ? c / (double)ok * 1e6 : 0.0);
    SSL_CTX_free(g_ctx);
    return fail == 0 && started == o->threads ? 0 : 1;
usage:
    fprintf(stderr, "usage: tls-handshake run -p PORT [-n N] [-t THREADS] [--cert F --key F] "
            "[--ca F] [--alpn P]\n");
    return 2;
}

/* The whole of a small file, NUL-terminated, or NULL. */
static char *
read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n;

    if (f == NULL)
        return NULL;
    buf = malloc(MAX_FILE + 1);
    if (buf) {
        n = fread(buf, 1, MAX_FILE + 1, f);
        if (n > MAX_FILE || ferror(f)) {
            free(buf);
            buf = NULL;
        } else {
            buf[n] = '\0';
        }
    }
    fclose(f);
    return buf;
}

static int
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    int rc = -1;

    if (f == NULL)
        return -1;
    if (fputs(text, f) >= 0)
        rc = 0;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

static int
cmd_issue(int argc, char **argv)
{
    struct km_tag tags[] = {{"kuma.io/service", NULL}};
    struct km_identity id = {.tags = tags, .ntags = 1, .key_type = KM_CA_KEY_ECDSA_P256};
    struct km_errs e;
    char *ca_cert = NULL, *ca_key = NULL, *cert = NULL, *key = NULL;
    int64_t validity = 0;
    int rc = 1;

    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: tls-handshake issue CA_CERT CA_KEY MESH SERVICE OUT_CERT "
                "OUT_KEY [VALIDITY_S]\n");
        return 2;
    }
    id.mesh = argv[4];
    tags[0].value = argv[5];
    if (argc == 9)
        validity = strtoll(argv[8], NULL, 10);
    km_errs_init(&e);
    ca_cert = read_file(argv[2]);
    ca_key = read_file(argv[3]);
    if (ca_cert == NULL || ca_key == NULL) {
        fprintf(stderr, "tls-handshake: cannot read %s\n", ca_cert ? argv[3] : argv[2]);
        goto cleanup;
    }
    if (km_ca_issue(ca_cert, ca_key, &id, validity, &cert, &key, &e) != 0) {
        char *j = km_errs_join(&e);
        fprintf(stderr, "tls-handshake: issue: %s\n", j);
        free(j);
        goto cleanup;
    }
    if (write_file(argv[6], cert) != 0 || write_file(argv[7], key) != 0) {
        fprintf(stderr, "tls-handshake: cannot write %s or %s\n", argv[6], argv[7]);
        goto cleanup;
    }
    rc = 0;
cleanup:
    free(ca_cert);
    free(ca_key);
    free(cert);
    free(key);
    km_errs_deinit(&e);
    return rc;
}

int
main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "run") == 0)
        return cmd_run(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "issue") == 0)
        return cmd_issue(argc, argv);
    fprintf(stderr, "usage: tls-handshake run ... | tls-handshake issue ...\n");
    return 2;
}
