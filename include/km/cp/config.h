/* kuma-cp configuration: Kuma's key names, read from a YAML file (--config-file) and from
 * KUMA_* environment variables (env wins over the file, the file over defaults).
 *
 * One option table (src/cp/config.c) maps each key path ("store.postgres.host") to its
 * environment name (KUMA_STORE_POSTGRES_HOST), its type, its place in struct km_cp_config,
 * its default and its bounds; the same table loads, validates and prints the config. */
#ifndef KM_CP_CONFIG_H
#define KM_CP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <km/common/errs.h>

struct km_cp_config {
    char *mode;        /* "zone" (default) | "global"; "standalone" accepted as zone */
    char *environment; /* "universal" (default) | "kubernetes" */

    struct {
        char *type; /* "memory" (default) | "postgres" */
        struct {
            char *host;     /* "127.0.0.1" */
            int port;       /* 15432 in Kuma's defaults */
            char *user;     /* "kuma" */
            char *password; /* "kuma" */
            char *db_name;  /* "kuma" */
            int connection_timeout_s;     /* 5 */
            int max_open_connections;     /* 50 */
            struct {
                char *mode;      /* "disable" | "verifyNone" | "verifyCa" | "verifyFull" */
                char *cert_path; /* tls.certPath, "" = none (libpq sslcert) */
                char *key_path;  /* tls.keyPath, "" = none (libpq sslkey) */
                char *ca_path;   /* tls.caPath, required by verifyCa/verifyFull (sslrootcert) */
            } tls;
        } postgres;
    } store;

    struct {
        struct {
            int port;        /* 5681 */
            char *interface; /* "0.0.0.0" */
        } http;
        struct {
            bool enabled; /* true */
            int port;     /* 5682 */
            char *interface;
            char *tls_cert_file; /* apiServer.https.tlsCertFile, "" = self-signed at start */
            char *tls_key_file;  /* apiServer.https.tlsKeyFile */
        } https;
        bool read_only;    /* apiServer.readOnly, false */
        bool bootstrap_admin_token; /* apiServer.authn.tokens.bootstrapAdminToken, true */
        int64_t max_body_bytes; /* not a Kuma key: fixed 1 MiB limit, see config.c */
    } api_server;

    struct {
        int port; /* 5678 */
        int plaintext_port;         /* dpServer.plaintextPort, 0 = off (not a Kuma key) */
        char *plaintext_interface;  /* dpServer.plaintextInterface, "127.0.0.1" */
        char *authn_dp_proxy_type;  /* dpServer.authn.dpProxy.type: "dpToken" | "none" */
    } dp_server;

    struct {
        int server_port; /* 5680 */
    } diagnostics;

    struct {
        char *work_dir; /* general.workDir, "" = $HOME/.kuma */
        char *tls_cert_file; /* general.tlsCertFile: DP server certificate, "" = generated */
        char *tls_key_file;  /* general.tlsKeyFile */
    } general;

    struct {
        bool skip_mesh_creation; /* defaults.skipMeshCreation, false */
    } defaults;

    char *log_level; /* not a Kuma config key; set by --log-level; "info" */
};

/* Fills <cfg> with Kuma's defaults. */
void km_cp_config_defaults(struct km_cp_config *cfg);

/* Loads defaults, then <path> (may be NULL) and then the environment <envp> (NULL-terminated
 * "K=V" array; pass `environ`). Unknown keys are ignored, as Kuma does. Every problem (YAML
 * syntax with line/column, wrong type, value out of range, unknown enum value) is appended to
 * <errs> under the key path ("store.postgres.port") or the variable name
 * ("KUMA_STORE_POSTGRES_PORT"). Returns 0 when <errs> is empty. */
int km_cp_config_load(struct km_cp_config *cfg, const char *path, char *const *envp,
                      struct km_errs *errs);

/* Frees the strings of <cfg>. */
void km_cp_config_deinit(struct km_cp_config *cfg);

/* Prints the effective config as YAML with Kuma's key names (passwords masked). Caller frees. */
char *km_cp_config_dump_yaml(const struct km_cp_config *cfg);

/* The option table, read-only, for docs checks and help texts: row <i> (0 <= i <
 * km_cp_config_key_count()) has the key path <*path> ("store.postgres.port") and the
 * environment variable <*env> ("KUMA_STORE_POSTGRES_PORT"). Returns false when <i> is out of
 * range. The strings are static. */
size_t km_cp_config_key_count(void);
bool km_cp_config_key_get(size_t i, const char **path, const char **env);

#endif
