/* The running control plane: what the servers of kuma-cp share. */
#ifndef KM_CP_CP_H
#define KM_CP_CP_H

#include <stdatomic.h>
#include <stdbool.h>

#include <km/cp/config.h>
#include <km/cp/store.h>

struct MHD_Daemon;
struct km_dp_server;

struct km_cp {
    struct km_cp_config *cfg; /* borrowed (from main) */
    struct km_store *store;   /* owned */
    char hostname[256];
    char instance_id[320];    /* "<hostname>-<4 hex>" like Kuma */
    char cluster_id[40];      /* UUID */
    int64_t start_us;
    atomic_bool api_listening;
    atomic_uint_fast64_t events[3];          /* store events by kind, for /metrics */
    atomic_uint_fast64_t api_requests[6];    /* by status class 1xx..5xx (index 1..5) */
    int api_fd;                              /* listening sockets, owned until handed over */
    int diag_fd;
    int https_fd;            /* -1 when apiServer.https.enabled is false */
    char *tls_cert_pem;      /* owned; HTTPS certificate (configured or self-signed) */
    char *tls_key_pem;       /* owned */
    struct MHD_Daemon *api;  /* owned */
    struct MHD_Daemon *api_tls; /* owned; the HTTPS listener, same handler */
    struct km_dp_server *dp;    /* owned; DP server (bootstrap + ADS) */
    struct MHD_Daemon *diag; /* owned */
};

/* Opens a listening TCP socket on <iface>:<port>; on failure writes a message naming
 * <what> and the address into <err> and returns -1. */
int km_listen_tcp(const char *iface, int port, const char *what, char *err, size_t errlen);

/* Starts the REST API server on cp->api_fd (libmicrohttpd, internal thread pool), and on
 * cp->https_fd with cp->tls_cert_pem/tls_key_pem when that socket is open. */
int km_api_start(struct km_cp *cp, char *err, size_t errlen);
void km_api_stop(struct km_cp *cp);

/* Starts the diagnostics server (/ready, /healthy, /metrics) on cp->diag_fd. */
int km_diag_start(struct km_cp *cp, char *err, size_t errlen);
void km_diag_stop(struct km_cp *cp);

/* `kuma-cp run`: returns the process exit code. */
int km_cp_run(struct km_cp_config *cfg);
/* `kuma-cp migrate up`. */
int km_cp_migrate(struct km_cp_config *cfg);

/* Fills a km_pg_config from the loaded configuration (strings borrowed). */
void km_cp_pg_config(const struct km_cp_config *cfg, struct km_pg_config *pg);

#endif
