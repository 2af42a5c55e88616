/* `kuma-cp run` and `kuma-cp migrate up`: wiring of config, store and servers. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <km/common/tlsgen.h>
#include <km/cp/cp.h>
#include <km/cp/dp_server.h>
#include <km/cp/tokens.h>

int
km_listen_tcp(const char *iface, int port, const char *what, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t slen;
    int family;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, iface, &sin->sin_addr) == 1) {
        family = sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        slen = sizeof(*sin);
    } else if (inet_pton(AF_INET6, iface, &sin6->sin6_addr) == 1) {
        family = sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        slen = sizeof(*sin6);
    } else {
        snprintf(err, errlen, "%s: interface \"%s\" is not an IP address", what, iface);
        return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "%s: socket: %s", what, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, slen) == -1) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot listen on %s:%d: %s%s", what, iface, port, strerror(e),
                 e == EADDRINUSE ? " (is another kuma-cp running? change the port in the config)"
                                 : "");
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) == -1) {
        snprintf(err, errlen, "%s: listen on %s:%d: %s", what, iface, port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

void
km_cp_pg_config(const struct km_cp_config *cfg, struct km_pg_config *pg)
{
    pg->host = cfg->store.postgres.host;
    pg->port = cfg->store.postgres.port;
    pg->user = cfg->store.postgres.user;
    pg->password = cfg->store.postgres.password;
    pg->db_name = cfg->store.postgres.db_name;
    pg->tls_mode = cfg->store.postgres.tls.mode;
    pg->max_open_connections = cfg->store.postgres.max_open_connections;
    pg->connection_timeout_s = cfg->store.postgres.connection_timeout_s;
    pg->tls_ca_path = cfg->store.postgres.tls.ca_path;
    pg->tls_cert_path = cfg->store.postgres.tls.cert_path;
    pg->tls_key_path = cfg->store.postgres.tls.key_path;
}

static void
on_store_event(void *ctx, enum km_store_event_kind kind, const char *type, const char *mesh,
               const char *name)
{
    static const char *const names[] = {"create", "update", "delete"};
    struct km_cp *cp = ctx;
    atomic_fetch_add(&cp->events[kind], 1);
    if (strcmp(type, "DataplaneInsight") != 0)
        km_log_info("store", "store event: %s %s %s/%s", names[kind], type, mesh ? mesh : "",
                    name);
    km_dp_server_notify(cp->dp, kind, type, mesh, name);
}

static void
random_hex(char *out, size_t nbytes)
{
    unsigned char buf[32];
    if (nbytes > sizeof(buf))
        nbytes = sizeof(buf);
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, buf, nbytes) : -1;
    if (fd >= 0)
        close(fd);
    for (size_t i = 0; i < nbytes; i++) {
        unsigned v = got == (ssize_t)nbytes ? buf[i] : (unsigned)rand();
        sprintf(out + 2 * i, "%02x", v & 0xff); /* NOLINT: bounded, 3 bytes per step */
    }
}

static void
make_ids(struct km_cp *cp)
{
    if (gethostname(cp->hostname, sizeof(cp->hostname) - 1) != 0)
        strcpy(cp->hostname, "localhost"); /* NOLINT: constant fits */
    char h[40];
    random_hex(h, 2);
    snprintf(cp->instance_id, sizeof(cp->instance_id), "%s-%s", cp->hostname, h);
    random_hex(h, 16);
    snprintf(cp->cluster_id, sizeof(cp->cluster_id), "%.8s-%.4s-4%.3s-a%.3s-%.12s", h, h + 8,
             h + 13, h + 17, h + 20);
}

/* The HTTPS certificate: from apiServer.https.tlsCertFile/tlsKeyFile when set, otherwise a
 * self-signed one made at start (Kuma also generates one when none is configured). */
static int
load_api_cert(struct km_cp *cp, char *err, size_t errlen)
{
    const char *cf = cp->cfg->api_server.https.tls_cert_file;
    const char *kf = cp->cfg->api_server.https.tls_key_file;
    if (cf && *cf) {
        cp->tls_cert_pem = km_read_file(cf, 1 << 20, NULL);
        cp->tls_key_pem = km_read_file(kf, 1 << 20, NULL);
        if (!cp->tls_cert_pem || !cp->tls_key_pem) {
            snprintf(err, errlen, "apiServer.https: cannot read %s: %s",
                     cp->tls_cert_pem ? kf : cf, strerror(errno));
            return -1;
        }
        return 0;
    }
    const char *names[] = {"localhost", cp->hostname};
    return km_tls_selfsigned(names, 2, 3650, &cp->tls_cert_pem, &cp->tls_key_pem, err, errlen);
}

static struct km_store *
open_store(struct km_cp_config *cfg)
{
    if (strcmp(cfg->store.type, "memory") == 0)
        return km_store_memory_new();
    struct km_pg_config pg;
    km_cp_pg_config(cfg, &pg);
    char err[512];
    int code = 0;
    struct km_store *s = km_store_postgres_new(&pg, err, sizeof(err), &code);
    if (!s)
        km_log_error("store", "cannot use the postgres store: %s", err);
    return s;
}

static void
ensure_default_mesh(struct km_cp *cp)
{
    if (cp->cfg->defaults.skip_mesh_creation)
        return;
    struct km_resource *m = km_resource_new(km_registry_mesh(), "", "default");
    int rc = km_store_create(cp->store, m);
    if (rc == 0)
        km_log_info("defaults", "created Mesh \"default\"");
    else if (rc != KM_ECONFLICT)
        km_log_warn("defaults", "could not create Mesh \"default\": %s", km_strerror(rc));
    km_resource_free(m);
}

/* The user token signing key and admin token, and a dataplane token signing key for every
 * existing mesh (meshes created later get theirs from the API, see api.c). Failures are logged:
 * the control plane still serves everything but token issuing. */
static void
ensure_signing_keys(struct km_cp *cp)
{
    char err[256];
    if (cp->cfg->api_server.bootstrap_admin_token &&
        km_tokens_bootstrap(cp->store, err, sizeof(err)) != 0)
        km_log_warn("tokens", "user token signing key and admin token: %s", err);
    struct km_resource_list meshes;
    km_resource_list_init(&meshes);
    if (km_store_list(cp->store, km_registry_mesh(), NULL, &meshes) == 0)
        for (size_t i = 0; i < meshes.n; i++)
            if (km_tokens_ensure_signing_key(cp->store, meshes.items[i]->name, err,
                                             sizeof(err)) != 0)
                km_log_warn("tokens", "mesh %s: dataplane token signing key: %s",
                            meshes.items[i]->name, err);
    km_resource_list_deinit(&meshes);
}

int
km_cp_run(struct km_cp_config *cfg)
{
    struct km_cp cp;
    memset(&cp, 0, sizeof(cp));
    cp.cfg = cfg;
    cp.api_fd = cp.diag_fd = cp.https_fd = -1;
    cp.start_us = km_now_us();
    make_ids(&cp);
    int ret = 1;
    char err[512];

    /* One descriptor per connected proxy: use all the descriptors the system allows. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Claim the ports first: a second instance stops here with a clear message. */
    cp.api_fd = km_listen_tcp(cfg->api_server.http.interface, cfg->api_server.http.port,
                              "API server (apiServer.http.port)", err, sizeof(err));
    if (cp.api_fd < 0)
        goto fail;
    cp.diag_fd = km_listen_tcp("0.0.0.0", cfg->diagnostics.server_port,
                               "diagnostics server (diagnostics.serverPort)", err, sizeof(err));
    if (cp.diag_fd < 0)
        goto fail;
    if (cfg->api_server.https.enabled) {
        cp.https_fd = km_listen_tcp(cfg->api_server.https.interface, cfg->api_server.https.port,
                                    "HTTPS API server (apiServer.https.port)", err, sizeof(err));
        if (cp.https_fd < 0 || load_api_cert(&cp, err, sizeof(err)) != 0)
            goto fail;
    }

    cp.dp = km_dp_server_new(&cp, err, sizeof(err));
    if (!cp.dp)
        goto fail;

    cp.store = open_store(cfg);
    if (!cp.store) {
        snprintf(err, sizeof(err), "store \"%s\" could not be opened", cfg->store.type);
        goto fail;
    }
    cp.store->on_event = on_store_event;
    cp.store->event_ctx = &cp;
    ensure_default_mesh(&cp);
    ensure_signing_keys(&cp);

    if (km_dp_server_start(cp.dp, err, sizeof(err)) != 0 ||
        km_diag_start(&cp, err, sizeof(err)) != 0 || km_api_start(&cp, err, sizeof(err)) != 0)
        goto fail;
    km_log_info("cp", "kuma-cp %s (Kuma %s compatible) started: API http://%s:%d, diagnostics :%d, "
                      "store %s",
                KM_VERSION, KM_KUMA_VERSION, cfg->api_server.http.interface,
                cfg->api_server.http.port, cfg->diagnostics.server_port, cfg->store.type);

    int sig = 0;
    sigwait(&set, &sig);
    km_log_info("cp", "received %s, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    ret = 0;
    goto out;
fail:
    km_log_error("cp", "%s", err);
out:
    km_api_stop(&cp);
    km_diag_stop(&cp);
    km_dp_server_free(cp.dp);
    cp.dp = NULL;
    if (cp.api_fd >= 0)
        close(cp.api_fd);
    if (cp.diag_fd >= 0)
        close(cp.diag_fd);
    if (cp.https_fd >= 0)
        close(cp.https_fd);
    free(cp.tls_cert_pem);
    free(cp.tls_key_pem);
    km_store_free(cp.store);
    if (ret == 0)
        km_log_info("cp", "stopped");
    return ret;
}

int
km_cp_migrate(struct km_cp_config *cfg)
{
    if (strcmp(cfg->store.type, "postgres") != 0) {
        km_log_error("migrate", "store.type is \"%s\": migrations apply to the postgres store "
                                "only (set KUMA_STORE_TYPE=postgres)",
                     cfg->store.type);
        return 1;
    }
    struct km_pg_config pg;
    km_cp_pg_config(cfg, &pg);
    char err[512];
    if (km_store_postgres_migrate(&pg, err, sizeof(err)) != 0) {
        km_log_error("migrate", "%s", err);
        return 1;
    }
    km_log_info("migrate", "database schema is up to date");
    return 0;
}
