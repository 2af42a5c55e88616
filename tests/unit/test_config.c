/* Unit tests for the kuma-cp configuration loader (src/cp/config.c). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/cp/config.h>

#include "test.h"

/* Writes <text> into a new file under /tmp; <path> receives its name (remove it after). */
static void
cfgt_write(char *path, size_t len, const char *text)
{
    snprintf(path, len, "/tmp/km-test-config-XXXXXX");
    int fd = mkstemp(path);
    ASSERT(fd != -1);
    size_t n = strlen(text);
    ASSERT(write(fd, text, n) == (ssize_t)n);
    ASSERT(close(fd) == 0);
}

/* Loads <yaml> (NULL = no file) and <envp> (NULL = no environment) into <cfg>/<errs>. */
static int
cfgt_load(struct km_cp_config *cfg, const char *yaml, char *const *envp, struct km_errs *errs)
{
    char path[64];
    km_errs_init(errs);
    if (!yaml)
        return km_cp_config_load(cfg, NULL, envp, errs);
    cfgt_write(path, sizeof(path), yaml);
    int rc = km_cp_config_load(cfg, path, envp, errs);
    unlink(path);
    return rc;
}

/* True when <errs> holds an error for <field> whose reason contains <needle>. */
static bool
cfgt_has(const struct km_errs *errs, const char *field, const char *needle)
{
    for (size_t i = 0; i < errs->n; i++)
        if (strcmp(errs->v[i].field, field) == 0 && strstr(errs->v[i].reason, needle))
            return true;
    return false;
}

#define ASSERT_ERR(errs, field, needle)                                                           \
    do {                                                                                          \
        if (!cfgt_has((errs), (field), (needle))) {                                               \
            char *all_ = km_errs_join(errs);                                                      \
            KM_FAIL_AT("no error for %s containing \"%s\"; errors: %s", (field), (needle), all_); \
        }                                                                                         \
    } while (0)

KM_TEST(config_defaults)
{
    struct km_cp_config c;
    struct km_errs e;
    char *const env[] = {NULL};
    ASSERT_INT_EQ(cfgt_load(&c, NULL, env, &e), 0);
    ASSERT_INT_EQ(e.n, 0);
    ASSERT_STR_EQ(c.mode, "zone");
    ASSERT_STR_EQ(c.environment, "universal");
    ASSERT_STR_EQ(c.store.type, "memory");
    ASSERT_STR_EQ(c.store.postgres.host, "127.0.0.1");
    ASSERT_INT_EQ(c.store.postgres.port, 15432);
    ASSERT_STR_EQ(c.store.postgres.user, "kuma");
    ASSERT_STR_EQ(c.store.postgres.password, "kuma");
    ASSERT_STR_EQ(c.store.postgres.db_name, "kuma");
    ASSERT_INT_EQ(c.store.postgres.connection_timeout_s, 5);
    ASSERT_INT_EQ(c.store.postgres.max_open_connections, 50);
    ASSERT_STR_EQ(c.store.postgres.tls.mode, "disable");
    ASSERT_STR_EQ(c.store.postgres.tls.ca_path, "");
    ASSERT_INT_EQ(c.api_server.http.port, 5681);
    ASSERT_STR_EQ(c.api_server.http.interface, "0.0.0.0");
    ASSERT(c.api_server.https.enabled);
    ASSERT_INT_EQ(c.api_server.https.port, 5682);
    ASSERT_STR_EQ(c.api_server.https.interface, "0.0.0.0");
    ASSERT(!c.api_server.read_only);
    ASSERT_INT_EQ(c.api_server.max_body_bytes, 1024 * 1024);
    ASSERT_INT_EQ(c.dp_server.port, 5678);
    ASSERT_INT_EQ(c.diagnostics.server_port, 5680);
    ASSERT_STR_EQ(c.general.work_dir, "");
    ASSERT(!c.defaults.skip_mesh_creation);
    ASSERT_STR_EQ(c.log_level, "info");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* NULL environment and an empty file give the same defaults */
    ASSERT_INT_EQ(cfgt_load(&c, "", NULL, &e), 0);
    ASSERT_INT_EQ(c.api_server.http.port, 5681);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_file_overrides)
{
    struct km_cp_config c;
    struct km_errs e;
    const char *yaml = "mode: global\n"
                       "store:\n"
                       "  type: postgres\n"
                       "  postgres:\n"
                       "    host: db.example\n"
                       "    port: 5432\n"
                       "    user: alice\n"
                       "    password: s3cret\n"
                       "    dbName: mesh\n"
                       "    connectionTimeout: 10\n"
                       "    maxOpenConnections: 0\n"
                       "    tls:\n"
                       "      mode: verifyCa\n"
                       "      caPath: /etc/ca.pem\n"
                       "apiServer:\n"
                       "  http: {port: 15681, interface: 127.0.0.1}\n"
                       "  https: {enabled: false, port: \"15682\"}\n"
                       "  readOnly: true\n"
                       "dpServer: {port: 15678}\n"
                       "diagnostics: {serverPort: 15680}\n"
                       "general: {workDir: /var/lib/kuma}\n"
                       "defaults: {skipMeshCreation: true}\n";
    ASSERT_INT_EQ(cfgt_load(&c, yaml, NULL, &e), 0);
    ASSERT_STR_EQ(c.mode, "global");
    ASSERT_STR_EQ(c.store.type, "postgres");
    ASSERT_STR_EQ(c.store.postgres.host, "db.example");
    ASSERT_INT_EQ(c.store.postgres.port, 5432);
    ASSERT_STR_EQ(c.store.postgres.user, "alice");
    ASSERT_STR_EQ(c.store.postgres.password, "s3cret");
    ASSERT_STR_EQ(c.store.postgres.db_name, "mesh");
    ASSERT_INT_EQ(c.store.postgres.connection_timeout_s, 10);
    ASSERT_INT_EQ(c.store.postgres.max_open_connections, 0);
    ASSERT_STR_EQ(c.store.postgres.tls.mode, "verifyCa");
    ASSERT_STR_EQ(c.store.postgres.tls.ca_path, "/etc/ca.pem");
    ASSERT_INT_EQ(c.api_server.http.port, 15681);
    ASSERT_STR_EQ(c.api_server.http.interface, "127.0.0.1");
    ASSERT(!c.api_server.https.enabled);
    ASSERT_INT_EQ(c.api_server.https.port, 15682); /* a quoted number is accepted */
    ASSERT(c.api_server.read_only);
    ASSERT_INT_EQ(c.dp_server.port, 15678);
    ASSERT_INT_EQ(c.diagnostics.server_port, 15680);
    ASSERT_STR_EQ(c.general.work_dir, "/var/lib/kuma");
    ASSERT(c.defaults.skip_mesh_creation);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_env_overrides_file)
{
    struct km_cp_config c;
    struct km_errs e;
    const char *yaml = "store: {type: memory}\n"
                       "apiServer: {http: {port: 7000}, readOnly: false}\n"
                       "dpServer: {port: 7001}\n";
    char *const env[] = {
        "PATH=/usr/bin",
        "KUMA_STORE_TYPE=postgres",
        "KUMA_STORE_POSTGRES_HOST=pg",
        "KUMA_STORE_POSTGRES_PORT=6543",
        "KUMA_STORE_POSTGRES_USER=bob",
        "KUMA_STORE_POSTGRES_PASSWORD=pw=with=equals",
        "KUMA_STORE_POSTGRES_DB_NAME=db",
        "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT=3",
        "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS=7",
        "KUMA_STORE_POSTGRES_TLS_MODE=verifyNone",
        "KUMA_STORE_POSTGRES_TLS_CERT_PATH=/c.pem",
        "KUMA_STORE_POSTGRES_TLS_KEY_PATH=/k.pem",
        "KUMA_STORE_POSTGRES_TLS_CA_PATH=/ca.pem",
        "KUMA_API_SERVER_HTTP_PORT=7100",
        "KUMA_API_SERVER_HTTP_INTERFACE=::1",
        "KUMA_API_SERVER_HTTPS_ENABLED=F",
        "KUMA_API_SERVER_HTTPS_PORT=7102",
        "KUMA_API_SERVER_HTTPS_INTERFACE=127.0.0.2",
        "KUMA_API_SERVER_READ_ONLY=1",
        "KUMA_DP_SERVER_PORT=7101",
        "KUMA_DIAGNOSTICS_SERVER_PORT=7103",
        "KUMA_GENERAL_WORK_DIR=/w",
        "KUMA_DEFAULTS_SKIP_MESH_CREATION=True",
        "KUMA_MODE=global",
        "KUMA_ENVIRONMENT=universal",
        NULL,
    };
    ASSERT_INT_EQ(cfgt_load(&c, yaml, env, &e), 0);
    ASSERT_STR_EQ(c.store.type, "postgres");
    ASSERT_STR_EQ(c.store.postgres.host, "pg");
    ASSERT_INT_EQ(c.store.postgres.port, 6543);
    ASSERT_STR_EQ(c.store.postgres.user, "bob");
    ASSERT_STR_EQ(c.store.postgres.password, "pw=with=equals");
    ASSERT_STR_EQ(c.store.postgres.db_name, "db");
    ASSERT_INT_EQ(c.store.postgres.connection_timeout_s, 3);
    ASSERT_INT_EQ(c.store.postgres.max_open_connections, 7);
    ASSERT_STR_EQ(c.store.postgres.tls.mode, "verifyNone");
    ASSERT_STR_EQ(c.store.postgres.tls.cert_path, "/c.pem");
    ASSERT_STR_EQ(c.store.postgres.tls.key_path, "/k.pem");
    ASSERT_STR_EQ(c.store.postgres.tls.ca_path, "/ca.pem");
    ASSERT_INT_EQ(c.api_server.http.port, 7100);
    ASSERT_STR_EQ(c.api_server.http.interface, "::1");
    ASSERT(!c.api_server.https.enabled);
    ASSERT_INT_EQ(c.api_server.https.port, 7102);
    ASSERT_STR_EQ(c.api_server.https.interface, "127.0.0.2");
    ASSERT(c.api_server.read_only);
    ASSERT_INT_EQ(c.dp_server.port, 7101);
    ASSERT_INT_EQ(c.diagnostics.server_port, 7103);
    ASSERT_STR_EQ(c.general.work_dir, "/w");
    ASSERT(c.defaults.skip_mesh_creation);
    ASSERT_STR_EQ(c.mode, "global");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_env_bool_spellings)
{
    static const char *const yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const no[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < KM_ARRAY_LEN(yes); i++) {
        for (int want = 0; want < 2; want++) {
            struct km_cp_config c;
            struct km_errs e;
            char *var = km_xasprintf("KUMA_DEFAULTS_SKIP_MESH_CREATION=%s", want ? yes[i] : no[i]);
            char *const env[] = {var, NULL};
            ASSERT_INT_EQ(cfgt_load(&c, "defaults: {skipMeshCreation: true}\n", env, &e), 0);
            ASSERT_INT_EQ(c.defaults.skip_mesh_creation, want);
            km_cp_config_deinit(&c);
            km_errs_deinit(&e);
            free(var);
        }
    }
}

KM_TEST(config_unknown_keys_ignored)
{
    struct km_cp_config c;
    struct km_errs e;
    const char *yaml = "xdsServer: {dataplaneConfigurationRefreshInterval: 1s}\n"
                       "store:\n"
                       "  cache: {enabled: false}\n"
                       "  postgres: {driverName: pgx, readReplica: {host: x}}\n"
                       "apiServer: {corsAllowedDomains: ['.*'], http: {enabled: true}}\n"
                       "someFutureKey: [1, 2, 3]\n";
    char *const env[] = {"KUMA_SOMETHING_UNKNOWN=zzz", "KUMA_STORE_CACHE_ENABLED=maybe", NULL};
    ASSERT_INT_EQ(cfgt_load(&c, yaml, env, &e), 0);
    ASSERT_INT_EQ(e.n, 0);
    ASSERT_STR_EQ(c.store.type, "memory");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_file_invalid_values)
{
    struct km_cp_config c;
    struct km_errs e;
    const char *yaml = "environment: space\n"
                       "store:\n"
                       "  type: mongo\n"
                       "  postgres:\n"
                       "    port: abc\n"
                       "    connectionTimeout: -1\n"
                       "    maxOpenConnections: 1.5\n"
                       "    tls: {mode: require}\n"
                       "    host: [a, b]\n"
                       "    password: {x: 1}\n"
                       "apiServer:\n"
                       "  http: {port: 70000, interface: \"\"}\n"
                       "  https: {enabled: yes, port: 0}\n"
                       "  readOnly: 1\n"
                       "dpServer: {port: \"5678x\"}\n"
                       "diagnostics: {serverPort: true}\n"
                       "defaults: {skipMeshCreation: \"maybe\"}\n";
    ASSERT_INT_EQ(cfgt_load(&c, yaml, NULL, &e), KM_EINVAL);
    ASSERT_ERR(&e, "environment", "must be one of: universal, kubernetes; got \"space\"");
    ASSERT_ERR(&e, "store.type", "must be one of: memory, postgres; got \"mongo\"");
    ASSERT_ERR(&e, "store.postgres.port", "between 1 and 65535, got \"abc\"");
    ASSERT_ERR(&e, "store.postgres.connectionTimeout", "between 1 and 3600, got -1");
    ASSERT_ERR(&e, "store.postgres.maxOpenConnections", "got a decimal number");
    ASSERT_ERR(&e, "store.postgres.tls.mode", "verifyNone, verifyCa, verifyFull; got \"require\"");
    ASSERT_ERR(&e, "store.postgres.host", "must be a string, got a list");
    ASSERT_ERR(&e, "store.postgres.password", "must be a string, got a mapping");
    ASSERT_ERR(&e, "apiServer.http.port", "between 1 and 65535, got 70000");
    ASSERT_ERR(&e, "apiServer.http.interface", "must not be empty");
    ASSERT_ERR(&e, "apiServer.https.enabled", "must be true or false, got \"yes\"");
    ASSERT_ERR(&e, "apiServer.https.port", "got 0");
    ASSERT_ERR(&e, "apiServer.readOnly", "must be true or false, got an integer");
    ASSERT_ERR(&e, "dpServer.port", "got \"5678x\"");
    ASSERT_ERR(&e, "diagnostics.serverPort", "got a boolean");
    ASSERT_ERR(&e, "defaults.skipMeshCreation", "got \"maybe\"");
    ASSERT_INT_EQ(e.n, 16);
    /* rejected values leave the defaults in place */
    ASSERT_STR_EQ(c.store.type, "memory");
    ASSERT_INT_EQ(c.api_server.http.port, 5681);
    ASSERT(c.api_server.https.enabled);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_env_invalid_values)
{
    struct km_cp_config c;
    struct km_errs e;
    char *const env[] = {
        "KUMA_MODE=remote",
        "KUMA_STORE_TYPE=kubernetes",
        "KUMA_STORE_POSTGRES_PORT=",
        "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS=0x10",
        "KUMA_API_SERVER_HTTP_PORT=99999999999999999999999",
        "KUMA_API_SERVER_HTTPS_PORT= 5682",
        "KUMA_API_SERVER_HTTPS_ENABLED=yes",
        "KUMA_API_SERVER_HTTP_INTERFACE=",
        "KUMA_API_SERVER_READ_ONLY=2",
        "KUMA_DP_SERVER_PORT=-1",
        "KUMA_DIAGNOSTICS_SERVER_PORT=abc",
        "KUMA_DEFAULTS_SKIP_MESH_CREATION=",
        NULL,
    };
    ASSERT_INT_EQ(cfgt_load(&c, "apiServer: {http: {port: 6000}}\n", env, &e), KM_EINVAL);
    ASSERT_ERR(&e, "KUMA_MODE", "must be one of: zone, global, standalone; got \"remote\"");
    ASSERT_ERR(&e, "KUMA_STORE_TYPE", "got \"kubernetes\"");
    ASSERT_ERR(&e, "KUMA_STORE_POSTGRES_PORT", "got \"\"");
    ASSERT_ERR(&e, "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS", "got \"0x10\"");
    ASSERT_ERR(&e, "KUMA_API_SERVER_HTTP_PORT", "between 1 and 65535");
    ASSERT_ERR(&e, "KUMA_API_SERVER_HTTPS_PORT", "got \" 5682\"");
    ASSERT_ERR(&e, "KUMA_API_SERVER_HTTPS_ENABLED", "must be true or false, got \"yes\"");
    ASSERT_ERR(&e, "KUMA_API_SERVER_HTTP_INTERFACE", "must not be empty");
    ASSERT_ERR(&e, "KUMA_API_SERVER_READ_ONLY", "got \"2\"");
    ASSERT_ERR(&e, "KUMA_DP_SERVER_PORT", "got \"-1\"");
    ASSERT_ERR(&e, "KUMA_DIAGNOSTICS_SERVER_PORT", "got \"abc\"");
    ASSERT_ERR(&e, "KUMA_DEFAULTS_SKIP_MESH_CREATION", "must be true or false");
    ASSERT_INT_EQ(e.n, 12);
    /* the file value stays when the environment value is rejected */
    ASSERT_INT_EQ(c.api_server.http.port, 6000);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_errors_all_listed_in_join)
{
    struct km_cp_config c;
    struct km_errs e;
    char *const env[] = {"KUMA_DP_SERVER_PORT=x", NULL};
    ASSERT_INT_EQ(cfgt_load(&c, "store: {type: mongo}\ndiagnostics: {serverPort: 0}\n", env, &e),
                  KM_EINVAL);
    ASSERT_INT_EQ(e.n, 3);
    char *all = km_errs_join(&e);
    ASSERT_STR_CONTAINS(all, "store.type: must be one of");
    ASSERT_STR_CONTAINS(all, "diagnostics.serverPort: must be an integer");
    ASSERT_STR_CONTAINS(all, "KUMA_DP_SERVER_PORT: must be an integer");
    free(all);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_missing_file)
{
    struct km_cp_config c;
    struct km_errs e;
    km_errs_init(&e);
    const char *path = "/tmp/km-test-config-does-not-exist.yaml";
    ASSERT_INT_EQ(km_cp_config_load(&c, path, NULL, &e), KM_EINVAL);
    ASSERT_INT_EQ(e.n, 1);
    ASSERT_ERR(&e, path, "cannot read the configuration file: No such file or directory");
    /* the defaults are still filled in, so deinit is always safe */
    ASSERT_INT_EQ(c.api_server.http.port, 5681);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    km_errs_init(&e);
    ASSERT_INT_EQ(km_cp_config_load(&c, "/tmp", NULL, &e), KM_EINVAL);
    ASSERT_ERR(&e, "/tmp", "it is a directory");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_yaml_syntax_error)
{
    struct km_cp_config c;
    struct km_errs e;
    char path[64];
    cfgt_write(path, sizeof(path), "store:\n  type: memory\n  postgres: [unclosed\napi: x\n");
    km_errs_init(&e);
    ASSERT_INT_EQ(km_cp_config_load(&c, path, NULL, &e), KM_EINVAL);
    unlink(path);
    ASSERT_INT_EQ(e.n, 1);
    ASSERT_STR_EQ(e.v[0].field, path);
    ASSERT_STR_CONTAINS(e.v[0].reason, "invalid YAML: line ");
    ASSERT_STR_CONTAINS(e.v[0].reason, "column");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* a tab in the indentation is reported on its line */
    ASSERT_INT_EQ(cfgt_load(&c, "store:\n  type: memory\n\tbad: 1\n", NULL, &e), KM_EINVAL);
    ASSERT_INT_EQ(e.n, 1);
    ASSERT_STR_CONTAINS(e.v[0].reason, "line 3");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_file_shape_errors)
{
    struct km_cp_config c;
    struct km_errs e;
    ASSERT_INT_EQ(cfgt_load(&c, "- a\n- b\n", NULL, &e), KM_EINVAL);
    ASSERT_INT_EQ(e.n, 1);
    ASSERT_STR_CONTAINS(e.v[0].reason, "must be a YAML mapping, got a list");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* a scalar where a section belongs is reported once, at the section */
    ASSERT_INT_EQ(cfgt_load(&c, "store: memory\napiServer: {http: 5}\n", NULL, &e), KM_EINVAL);
    ASSERT_INT_EQ(e.n, 2);
    ASSERT_ERR(&e, "store", "must be a mapping, got a string");
    ASSERT_ERR(&e, "apiServer.http", "must be a mapping, got an integer");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* two documents */
    ASSERT_INT_EQ(cfgt_load(&c, "mode: zone\n---\nmode: global\n", NULL, &e), KM_EINVAL);
    ASSERT_INT_EQ(e.n, 1);
    ASSERT_STR_CONTAINS(e.v[0].reason, "expected one YAML document");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* null values (empty keys) keep the defaults, as in Kuma's defaults file */
    ASSERT_INT_EQ(
        cfgt_load(&c, "store:\n  postgres:\n    tls:\n      caPath:\n    port: ~\n", NULL, &e), 0);
    ASSERT_INT_EQ(c.store.postgres.port, 15432);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_hostile_values)
{
    struct km_cp_config c;
    struct km_errs e;
    struct km_sbuf b;
    km_sbuf_init(&b);
    km_sbuf_puts(&b, "general:\n  workDir: \"");
    for (int i = 0; i < 5000; i++)
        km_sbuf_puts(&b, "x");
    km_sbuf_puts(&b, "\"\nstore: {postgres: {host: \"a\\0b\"}}\n"
                     "mode: \"\\e[31mred\\x01");
    for (int i = 0; i < 200; i++)
        km_sbuf_puts(&b, "y");
    km_sbuf_puts(&b, "\"\n");
    ASSERT_INT_EQ(cfgt_load(&c, b.ptr, NULL, &e), KM_EINVAL);
    km_sbuf_deinit(&b);
    ASSERT_ERR(&e, "general.workDir", "at most 4096 characters");
    ASSERT_ERR(&e, "store.postgres.host", "must not contain NUL");
    /* control characters are not echoed and long values are cut */
    ASSERT_ERR(&e, "mode", "got \"?[31mred?yyy");
    ASSERT_ERR(&e, "mode", "...\"");
    ASSERT_INT_EQ(e.n, 3);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* a secret is never echoed back */
    ASSERT_INT_EQ(cfgt_load(&c, "store: {postgres: {password: [a]}}\n", NULL, &e), KM_EINVAL);
    ASSERT_ERR(&e, "store.postgres.password", "must be a string");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* large integers do not wrap around */
    ASSERT_INT_EQ(cfgt_load(&c, "dpServer: {port: 4294972974}\n", NULL, &e), KM_EINVAL);
    ASSERT_ERR(&e, "dpServer.port", "got 4294972974");
    ASSERT_INT_EQ(c.dp_server.port, 5678);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_postgres_cross_checks)
{
    struct km_cp_config c;
    struct km_errs e;
    const char *yaml = "store:\n"
                       "  type: postgres\n"
                       "  postgres: {host: \"\", user: \"\", dbName: \"\",\n"
                       "             tls: {mode: verifyFull, certPath: /c.pem}}\n";
    char *const env[] = {"KUMA_STORE_POSTGRES_PASSWORD=", NULL};
    ASSERT_INT_EQ(cfgt_load(&c, yaml, env, &e), KM_EINVAL);
    ASSERT_ERR(&e, "store.postgres.host", "must not be empty when store.type is postgres");
    ASSERT_ERR(&e, "store.postgres.user", "must not be empty");
    ASSERT_ERR(&e, "store.postgres.dbName", "must not be empty");
    ASSERT_ERR(&e, "KUMA_STORE_POSTGRES_PASSWORD", "must not be empty"); /* named by its source */
    ASSERT_ERR(&e, "store.postgres.tls.caPath",
               "must be set when store.postgres.tls.mode is "
               "verifyFull");
    ASSERT_ERR(&e, "store.postgres.tls.keyPath", "must be set when");
    ASSERT_INT_EQ(e.n, 6);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    /* the same values are fine on the memory store (Kuma checks them for postgres only) */
    ASSERT_INT_EQ(
        cfgt_load(&c, "store: {postgres: {host: \"\", tls: {mode: verifyCa}}}\n", NULL, &e), 0);
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_mode_environment)
{
    struct km_cp_config c;
    struct km_errs e;
    char *const env[] = {"KUMA_MODE=standalone", NULL};
    ASSERT_INT_EQ(cfgt_load(&c, NULL, env, &e), 0);
    ASSERT_STR_EQ(c.mode, "zone");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);

    ASSERT_INT_EQ(cfgt_load(&c, "environment: kubernetes\n", NULL, &e), KM_EINVAL);
    ASSERT_ERR(&e, "environment", "not supported by kuma-c");
    km_cp_config_deinit(&c);
    km_errs_deinit(&e);
}

KM_TEST(config_dump_yaml_round_trip)
{
    struct km_cp_config c, d;
    struct km_errs e;
    char *const env[] = {"KUMA_STORE_POSTGRES_PASSWORD=topsecret",
                         "KUMA_API_SERVER_HTTP_PORT=6001",
                         "KUMA_GENERAL_WORK_DIR=123",
                         "KUMA_API_SERVER_HTTP_INTERFACE=true",
                         "KUMA_DEFAULTS_SKIP_MESH_CREATION=true",
                         NULL};
    ASSERT_INT_EQ(cfgt_load(&c, NULL, env, &e), 0);
    km_errs_deinit(&e);
    char *yaml = km_cp_config_dump_yaml(&c);
    ASSERT(yaml != NULL);
    ASSERT(strstr(yaml, "topsecret") == NULL);
    ASSERT_STR_CONTAINS(yaml, "*****");
    ASSERT_STR_CONTAINS(yaml, "dbName: kuma");
    ASSERT_STR_CONTAINS(yaml, "serverPort: 5680");
    ASSERT_STR_CONTAINS(yaml, "port: 6001");

    /* reading the dump back gives the same configuration, except for the masked password */
    ASSERT_INT_EQ(cfgt_load(&d, yaml, NULL, &e), 0);
    ASSERT_STR_EQ(d.store.postgres.password, "*****");
    ASSERT_INT_EQ(d.api_server.http.port, 6001);
    ASSERT_STR_EQ(d.general.work_dir, "123");           /* stays a string */
    ASSERT_STR_EQ(d.api_server.http.interface, "true"); /* stays a string */
    ASSERT(d.defaults.skip_mesh_creation);
    ASSERT_INT_EQ(d.store.postgres.port, c.store.postgres.port);
    ASSERT_STR_EQ(d.store.postgres.tls.mode, c.store.postgres.tls.mode);
    km_cp_config_deinit(&d);
    km_errs_deinit(&e);
    free(yaml);
    km_cp_config_deinit(&c);
}

KM_TEST(config_table_and_docs_agree)
{
    size_t n = km_cp_config_key_count();
    ASSERT(n >= 20);
    const char *path, *env;
    ASSERT(!km_cp_config_key_get(n, &path, &env));

    /* docs/configuration.md lists every key and variable; find it from the test data dir
     * (<root>/tests/unit/data) so the test also works from another directory. */
    const char *data = km_test_data_dir();
    const char *suffix = "tests/unit/data";
    size_t dl = strlen(data), sl = strlen(suffix);
    char *root = (dl >= sl && strcmp(data + dl - sl, suffix) == 0) ? km_xstrndup(data, dl - sl)
                                                                   : km_xstrdup("");
    char *doc_path = km_xasprintf("%sdocs/configuration.md", root);
    size_t len = 0;
    char *doc = km_read_file(doc_path, 1 << 20, &len);
    if (!doc)
        KM_FAIL_AT("cannot read %s", doc_path);
    for (size_t i = 0; i < n; i++) {
        ASSERT(km_cp_config_key_get(i, &path, &env));
        ASSERT(strncmp(env, "KUMA_", 5) == 0);
        char *p = km_xasprintf("`%s`", path);
        char *v = km_xasprintf("`%s`", env);
        ASSERT_STR_CONTAINS(doc, p);
        ASSERT_STR_CONTAINS(doc, v);
        free(p);
        free(v);
    }
    free(doc);
    free(doc_path);
    free(root);
}
