/* kuma-cp configuration loader.
 *
 * Design (house rule C1): one option table, cfg_opts[], describes every supported key: its
 * YAML path with Kuma's names, its KUMA_* environment variable, its type, where it lives in
 * struct km_cp_config (offsetof), its bounds or allowed values and its default. The same
 * table fills the defaults, reads the YAML file, reads the environment, checks values and
 * prints the effective configuration, so a key added to the table is supported everywhere.
 *
 * Load order: defaults < YAML file < environment. A value that fails its check leaves the
 * previous value in place and adds an error naming the key path (file) or the variable
 * (environment); the scan always goes on so that every problem is reported at once. Keys
 * that are not in the table are ignored, as Kuma does. After the scan, cross-field checks
 * that Kuma also makes (store.type postgres needs host/user/password/dbName, TLS files) run
 * on the merged result.
 *
 * Leniency: Kuma reads the file with Go's JSON rules (a quoted "5681" is refused for a port)
 * and the environment with envconfig (strings only). We accept a number or a boolean either
 * as a YAML scalar or as a string in both places, which only accepts more valid configs. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include <km/common/errs.h>
#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/cp/config.h>

#define CFG_MAX_FILE_BYTES (1024 * 1024) /* a config file is a few KiB; refuse huge input */
#define CFG_MAX_STR_LEN    4096          /* longest accepted string value */
#define CFG_SHOW_MAX       64            /* longest value echoed back in an error */
#define CFG_API_MAX_BODY   (1024 * 1024) /* api_server.max_body_bytes: fixed, not a Kuma key */

enum cfg_type {
    CFG_STR = 0, /* char * (owned) */
    CFG_INT,     /* int, within [min, max] */
    CFG_BOOL,    /* bool */
    CFG_ENUM,    /* char * (owned), one of choices[] */
};

#define CFG_F_SECRET   0x1u /* never printed: masked in the dump, not echoed in errors */
#define CFG_F_NONEMPTY 0x2u /* the empty string is refused */

/* Where the current value of a row came from, to name it in cross-field errors. */
enum cfg_origin { CFG_FROM_DEFAULT = 0, CFG_FROM_FILE, CFG_FROM_ENV };

struct cfg_opt {
    const char *path; /* YAML key path with Kuma's names: "store.postgres.dbName" */
    const char *env;  /* environment variable: "KUMA_STORE_POSTGRES_DB_NAME" */
    enum cfg_type type;
    size_t off; /* offset of the field in struct km_cp_config */
    unsigned flags;
    long long min, max;         /* CFG_INT */
    const char *const *choices; /* CFG_ENUM: NULL-terminated */
    const char *def_str;        /* CFG_STR, CFG_ENUM */
    long long def_int;          /* CFG_INT, CFG_BOOL */
};

/* offsetof() plus a compile-time check that <field> has type <ctype>: _Generic has no
 * matching association (a compile error) when a row names a field of the wrong type. */
#define CFG_OFF(field, ctype)               \
    (offsetof(struct km_cp_config, field) + \
     0 * _Generic(((struct km_cp_config *)0)->field, ctype : 0))

#define OPT_STR(p, e, field, def, fl)                                                           \
    {                                                                                           \
        .path = (p), .env = (e), .type = CFG_STR, .off = CFG_OFF(field, char *), .flags = (fl), \
        .def_str = (def)                                                                        \
    }
#define OPT_INT(p, e, field, lo, hi, def)                                                  \
    {                                                                                      \
        .path = (p), .env = (e), .type = CFG_INT, .off = CFG_OFF(field, int), .min = (lo), \
        .max = (hi), .def_int = (def)                                                      \
    }
#define OPT_BOOL(p, e, field, def)                                                               \
    {                                                                                            \
        .path = (p), .env = (e), .type = CFG_BOOL, .off = CFG_OFF(field, bool), .def_int = (def) \
    }
#define OPT_ENUM(p, e, field, ch, def)                                                             \
    {                                                                                              \
        .path = (p), .env = (e), .type = CFG_ENUM, .off = CFG_OFF(field, char *), .choices = (ch), \
        .def_str = (def)                                                                           \
    }

/* "standalone" is Kuma's deprecated name for "zone"; it is turned into "zone" after loading. */
static const char *const modes[] = {"zone", "global", "standalone", NULL};
/* "kubernetes" is a valid Kuma value that kuma-c refuses with its own message (cfg_check). */
static const char *const environments[] = {"universal", "kubernetes", NULL};
/* Kuma also has "kubernetes"; kuma-c runs Universal only. */
static const char *const store_types[] = {"memory", "postgres", NULL};
static const char *const dp_authn_types[] = {"dpToken", "none", NULL};
static const char *const tls_modes[] = {"disable", "verifyNone", "verifyCa", "verifyFull", NULL};

/* Ports: Kuma accepts 0..65535; 0 would mean "any free port", which nothing here reports
 * back, so kuma-c asks for a real port (documented in docs/configuration.md). */
#define PORT_MIN 1
#define PORT_MAX 65535

static const struct cfg_opt cfg_opts[] = {
    OPT_ENUM("environment", "KUMA_ENVIRONMENT", environment, environments, "universal"),
    OPT_ENUM("mode", "KUMA_MODE", mode, modes, "zone"),
    OPT_ENUM("store.type", "KUMA_STORE_TYPE", store.type, store_types, "memory"),
    OPT_STR("store.postgres.host", "KUMA_STORE_POSTGRES_HOST", store.postgres.host, "127.0.0.1", 0),
    OPT_INT("store.postgres.port", "KUMA_STORE_POSTGRES_PORT", store.postgres.port, PORT_MIN,
            PORT_MAX, 15432),
    OPT_STR("store.postgres.user", "KUMA_STORE_POSTGRES_USER", store.postgres.user, "kuma", 0),
    OPT_STR("store.postgres.password", "KUMA_STORE_POSTGRES_PASSWORD", store.postgres.password,
            "kuma", CFG_F_SECRET),
    OPT_STR("store.postgres.dbName", "KUMA_STORE_POSTGRES_DB_NAME", store.postgres.db_name, "kuma",
            0),
    /* whole seconds as in Kuma; Kuma lets 0 mean "wait forever", kuma-c wants a bound */
    OPT_INT("store.postgres.connectionTimeout", "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT",
            store.postgres.connection_timeout_s, 1, 3600, 5),
    /* 0: no limit of our own, as in Kuma (the store's pool size still applies) */
    OPT_INT("store.postgres.maxOpenConnections", "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS",
            store.postgres.max_open_connections, 0, 100000, 50),
    OPT_ENUM("store.postgres.tls.mode", "KUMA_STORE_POSTGRES_TLS_MODE", store.postgres.tls.mode,
             tls_modes, "disable"),
    OPT_STR("store.postgres.tls.certPath", "KUMA_STORE_POSTGRES_TLS_CERT_PATH",
            store.postgres.tls.cert_path, "", 0),
    OPT_STR("store.postgres.tls.keyPath", "KUMA_STORE_POSTGRES_TLS_KEY_PATH",
            store.postgres.tls.key_path, "", 0),
    OPT_STR("store.postgres.tls.caPath", "KUMA_STORE_POSTGRES_TLS_CA_PATH",
            store.postgres.tls.ca_path, "", 0),
    OPT_STR("apiServer.http.interface", "KUMA_API_SERVER_HTTP_INTERFACE", api_server.http.interface,
            "0.0.0.0", CFG_F_NONEMPTY),
    OPT_INT("apiServer.http.port", "KUMA_API_SERVER_HTTP_PORT", api_server.http.port, PORT_MIN,
            PORT_MAX, 5681),
    OPT_BOOL("apiServer.https.enabled", "KUMA_API_SERVER_HTTPS_ENABLED", api_server.https.enabled,
             true),
    OPT_STR("apiServer.https.interface", "KUMA_API_SERVER_HTTPS_INTERFACE",
            api_server.https.interface, "0.0.0.0", CFG_F_NONEMPTY),
    OPT_INT("apiServer.https.port", "KUMA_API_SERVER_HTTPS_PORT", api_server.https.port, PORT_MIN,
            PORT_MAX, 5682),
    OPT_STR("apiServer.https.tlsCertFile", "KUMA_API_SERVER_HTTPS_TLS_CERT_FILE",
            api_server.https.tls_cert_file, "", 0),
    OPT_STR("apiServer.https.tlsKeyFile", "KUMA_API_SERVER_HTTPS_TLS_KEY_FILE",
            api_server.https.tls_key_file, "", 0),
    OPT_BOOL("apiServer.readOnly", "KUMA_API_SERVER_READ_ONLY", api_server.read_only, false),
    OPT_BOOL("apiServer.authn.tokens.bootstrapAdminToken",
             "KUMA_API_SERVER_AUTHN_TOKENS_BOOTSTRAP_ADMIN_TOKEN",
             api_server.bootstrap_admin_token, true),
    OPT_INT("dpServer.port", "KUMA_DP_SERVER_PORT", dp_server.port, PORT_MIN, PORT_MAX, 5678),
    OPT_INT("dpServer.plaintextPort", "KUMA_DP_SERVER_PLAINTEXT_PORT", dp_server.plaintext_port, 0,
            PORT_MAX, 0),
    OPT_STR("dpServer.plaintextInterface", "KUMA_DP_SERVER_PLAINTEXT_INTERFACE",
            dp_server.plaintext_interface, "127.0.0.1", CFG_F_NONEMPTY),
    OPT_ENUM("dpServer.authn.dpProxy.type", "KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE",
             dp_server.authn_dp_proxy_type, dp_authn_types, "dpToken"),
    OPT_INT("diagnostics.serverPort", "KUMA_DIAGNOSTICS_SERVER_PORT", diagnostics.server_port,
            PORT_MIN, PORT_MAX, 5680),
    OPT_STR("general.workDir", "KUMA_GENERAL_WORK_DIR", general.work_dir, "", 0),
    OPT_STR("general.tlsCertFile", "KUMA_GENERAL_TLS_CERT_FILE", general.tls_cert_file, "", 0),
    OPT_STR("general.tlsKeyFile", "KUMA_GENERAL_TLS_KEY_FILE", general.tls_key_file, "", 0),
    OPT_BOOL("defaults.skipMeshCreation", "KUMA_DEFAULTS_SKIP_MESH_CREATION",
             defaults.skip_mesh_creation, false),
};

#define CFG_NOPTS KM_ARRAY_LEN(cfg_opts)

/* ---- field access ---------------------------------------------------------------------- */

static char **
opt_str(struct km_cp_config *cfg, const struct cfg_opt *o)
{
    return (char **)(void *)((char *)cfg + o->off);
}

static int *
opt_int(struct km_cp_config *cfg, const struct cfg_opt *o)
{
    return (int *)(void *)((char *)cfg + o->off);
}

static bool *
opt_bool(struct km_cp_config *cfg, const struct cfg_opt *o)
{
    return (bool *)(void *)((char *)cfg + o->off);
}

static const char *
opt_str_get(const struct km_cp_config *cfg, const struct cfg_opt *o)
{
    return *(char *const *)(const void *)((const char *)cfg + o->off);
}

static int
opt_int_get(const struct km_cp_config *cfg, const struct cfg_opt *o)
{
    return *(const int *)(const void *)((const char *)cfg + o->off);
}

static bool
opt_bool_get(const struct km_cp_config *cfg, const struct cfg_opt *o)
{
    return *(const bool *)(const void *)((const char *)cfg + o->off);
}

static void
opt_set_str(struct km_cp_config *cfg, const struct cfg_opt *o, const char *s)
{
    char **p = opt_str(cfg, o);
    free(*p);
    *p = km_xstrdup(s);
}

static const struct cfg_opt *
opt_by_field(size_t off)
{
    for (size_t i = 0; i < CFG_NOPTS; i++)
        if (cfg_opts[i].off == off)
            return &cfg_opts[i];
    return NULL;
}

/* ---- value parsing (shared by file and environment) ------------------------------------ */

/* Copies at most CFG_SHOW_MAX bytes of <s> into <buf> for an error message, replacing
 * control and non-ASCII bytes so that hostile input cannot garble a terminal or a log. */
static const char *
cfg_show(const char *s, char *buf, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 4 < len; i++) {
        if (i == CFG_SHOW_MAX) {
            buf[j++] = '.';
            buf[j++] = '.';
            buf[j++] = '.';
            break;
        }
        unsigned char c = (unsigned char)s[i];
        buf[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    buf[j] = '\0';
    return buf;
}

/* Go's strconv.ParseBool set, which Kuma's envconfig uses. */
static bool
cfg_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const no[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < KM_ARRAY_LEN(yes); i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* Decimal integer with an optional sign, nothing else (no spaces, no hex). */
static bool
cfg_parse_ll(const char *s, long long *out)
{
    const char *p = s;
    if (*p == '-' || *p == '+')
        p++;
    if (*p < '0' || *p > '9')
        return false;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9')
            return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE || *end != '\0')
        return false;
    *out = v;
    return true;
}

static void
cfg_choices_text(const struct cfg_opt *o, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; o->choices[i] && used < len; i++) {
        int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", o->choices[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static void
cfg_err_int(struct km_errs *errs, const char *name, const struct cfg_opt *o, const char *got)
{
    km_errs_add(errs, name, "must be an integer between %lld and %lld, got %s", o->min, o->max,
                got);
}

/* Sets option <o> from the text <s> (an environment value or a YAML string). On a bad value
 * adds an error under <name> and leaves the field unchanged. Returns true when set. */
static bool
cfg_set_text(struct km_cp_config *cfg, const struct cfg_opt *o, const char *s, const char *name,
             struct km_errs *errs)
{
    char show[CFG_SHOW_MAX + 8];
    char quoted[CFG_SHOW_MAX + 16];
    if (o->flags & CFG_F_SECRET)
        snprintf(quoted, sizeof(quoted), "a hidden value");
    else
        snprintf(quoted, sizeof(quoted), "\"%s\"", cfg_show(s, show, sizeof(show)));

    switch (o->type) {
    case CFG_STR:
        if (strlen(s) > CFG_MAX_STR_LEN) {
            km_errs_add(errs, name, "must be at most %d characters long", CFG_MAX_STR_LEN);
            return false;
        }
        opt_set_str(cfg, o, s);
        return true;
    case CFG_ENUM:
        for (size_t i = 0; o->choices[i]; i++) {
            if (strcmp(s, o->choices[i]) == 0) {
                opt_set_str(cfg, o, s);
                return true;
            }
        }
        char list[256];
        cfg_choices_text(o, list, sizeof(list));
        km_errs_add(errs, name, "must be one of: %s; got %s", list, quoted);
        return false;
    case CFG_INT: {
        long long v;
        if (!cfg_parse_ll(s, &v) || v < o->min || v > o->max) {
            cfg_err_int(errs, name, o, quoted);
            return false;
        }
        *opt_int(cfg, o) = (int)v;
        return true;
    }
    case CFG_BOOL: {
        bool b;
        if (!cfg_parse_bool(s, &b)) {
            km_errs_add(errs, name, "must be true or false, got %s", quoted);
            return false;
        }
        *opt_bool(cfg, o) = b;
        return true;
    }
    }
    return false;
}

static const char *
cfg_json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "a mapping";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a decimal number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown value";
}

/* Sets option <o> from the YAML value <v> (not null). Adds an error under <o->path> when the
 * value has the wrong type or is out of range. Returns true when set. */
static bool
cfg_set_json(struct km_cp_config *cfg, const struct cfg_opt *o, const json_t *v,
             struct km_errs *errs)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strlen(s) != json_string_length(v)) {
            km_errs_add(errs, o->path, "must not contain NUL characters");
            return false;
        }
        return cfg_set_text(cfg, o, s, o->path, errs);
    }
    switch (o->type) {
    case CFG_STR:
    case CFG_ENUM:
        /* An unquoted number is a YAML integer; for a string key take its decimal text
         * (password: 12345). Anything else is most likely a mistake. */
        if (json_is_integer(v)) {
            char num[32];
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            return cfg_set_text(cfg, o, num, o->path, errs);
        }
        km_errs_add(errs, o->path, "must be a string, got %s", cfg_json_kind(v));
        return false;
    case CFG_INT:
        if (json_is_integer(v)) {
            json_int_t n = json_integer_value(v);
            if (n < o->min || n > o->max) {
                char got[32];
                snprintf(got, sizeof(got), "%" JSON_INTEGER_FORMAT, n);
                cfg_err_int(errs, o->path, o, got);
                return false;
            }
            *opt_int(cfg, o) = (int)n;
            return true;
        }
        cfg_err_int(errs, o->path, o, cfg_json_kind(v));
        return false;
    case CFG_BOOL:
        if (json_is_boolean(v)) {
            *opt_bool(cfg, o) = json_is_true(v);
            return true;
        }
        km_errs_add(errs, o->path, "must be true or false, got %s", cfg_json_kind(v));
        return false;
    }
    return false;
}

/* ---- sources ----------------------------------------------------------------------------- */

/* True when an error for <field> is already listed (a non-mapping parent such as
 * "store: memory" is reported once, not once per key below it). */
static bool
cfg_err_listed(const struct km_errs *errs, const char *field)
{
    for (size_t i = 0; i < errs->n; i++)
        if (strcmp(errs->v[i].field, field) == 0)
            return true;
    return false;
}

/* Looks up the dotted <path> in <root>. Returns the value, or NULL when a key is missing or
 * the value is null; a parent that is not a mapping is reported under its own path. */
static const json_t *
cfg_lookup(const json_t *root, const char *path, struct km_errs *errs)
{
    const json_t *cur = root;
    const char *seg = path;
    for (;;) {
        const char *dot = strchr(seg, '.');
        size_t len = dot ? (size_t)(dot - seg) : strlen(seg);
        const json_t *next = json_object_getn(cur, seg, len);
        if (!next || json_is_null(next))
            return NULL;
        if (!dot)
            return next;
        if (!json_is_object(next)) {
            char *parent = km_xstrndup(path, (size_t)(dot - path));
            if (!cfg_err_listed(errs, parent))
                km_errs_add(errs, parent, "must be a mapping, got %s", cfg_json_kind(next));
            free(parent);
            return NULL;
        }
        cur = next;
        seg = dot + 1;
    }
}

static void
cfg_load_file(struct km_cp_config *cfg, const char *path, enum cfg_origin *origin,
              struct km_errs *errs)
{
    struct stat st;
    if (stat(path, &st) == -1) {
        km_errs_add(errs, path, "cannot read the configuration file: %s", strerror(errno));
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        km_errs_add(errs, path, "cannot read the configuration file: it is a directory");
        return;
    }
    size_t len = 0;
    char *buf = km_read_file(path, CFG_MAX_FILE_BYTES, &len);
    if (!buf) {
        if (errno == EFBIG)
            km_errs_add(errs, path, "the configuration file is larger than %d bytes",
                        CFG_MAX_FILE_BYTES);
        else
            km_errs_add(errs, path, "cannot read the configuration file: %s", strerror(errno));
        return;
    }
    char yerr[256] = "";
    json_t *root = km_yaml_load(buf, len, yerr, sizeof(yerr));
    free(buf);
    if (!root) {
        km_errs_add(errs, path, "invalid YAML: %s", yerr[0] ? yerr : "parse error");
        return;
    }
    if (!json_is_object(root)) {
        km_errs_add(errs, path, "the configuration must be a YAML mapping, got %s",
                    cfg_json_kind(root));
        json_decref(root);
        return;
    }
    for (size_t i = 0; i < CFG_NOPTS; i++) {
        const json_t *v = cfg_lookup(root, cfg_opts[i].path, errs);
        if (v && cfg_set_json(cfg, &cfg_opts[i], v, errs))
            origin[i] = CFG_FROM_FILE;
    }
    json_decref(root);
}

static const char *
cfg_getenv(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; envp[i]; i++)
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
            return envp[i] + n + 1;
    return NULL;
}

static void
cfg_load_env(struct km_cp_config *cfg, char *const *envp, enum cfg_origin *origin,
             struct km_errs *errs)
{
    for (size_t i = 0; i < CFG_NOPTS; i++) {
        const char *v = cfg_getenv(envp, cfg_opts[i].env);
        if (v && cfg_set_text(cfg, &cfg_opts[i], v, cfg_opts[i].env, errs))
            origin[i] = CFG_FROM_ENV;
    }
}

/* ---- checks on the merged configuration ------------------------------------------------- */

/* The name to report for the row that holds <off>: the variable when the value came from the
 * environment, otherwise the key path. */
static const char *
cfg_name(size_t off, const enum cfg_origin *origin)
{
    const struct cfg_opt *o = opt_by_field(off);
    if (!o)
        return "";
    return origin[o - cfg_opts] == CFG_FROM_ENV ? o->env : o->path;
}

#define CFG_NAME(field) cfg_name(offsetof(struct km_cp_config, field), origin)

static void
cfg_check(struct km_cp_config *cfg, const enum cfg_origin *origin, struct km_errs *errs)
{
    for (size_t i = 0; i < CFG_NOPTS; i++) {
        const struct cfg_opt *o = &cfg_opts[i];
        if ((o->flags & CFG_F_NONEMPTY) && opt_str_get(cfg, o)[0] == '\0')
            km_errs_add(errs, origin[i] == CFG_FROM_ENV ? o->env : o->path, "must not be empty");
    }

    if (strcmp(cfg->mode, "standalone") == 0) {
        km_log_warn("config", "mode \"standalone\" is deprecated, using \"zone\"");
        KM_FREE(cfg->mode);
        cfg->mode = km_xstrdup("zone");
    }
    if (strcmp(cfg->environment, "kubernetes") == 0)
        km_errs_add(errs, CFG_NAME(environment),
                    "\"kubernetes\" is not supported by kuma-c, which runs in universal mode only");

    if (strcmp(cfg->store.type, "postgres") == 0) {
        /* The same requirements as Kuma's postgres store validation. */
        const struct {
            size_t off;
        } required[] = {
            {offsetof(struct km_cp_config, store.postgres.host)},
            {offsetof(struct km_cp_config, store.postgres.user)},
            {offsetof(struct km_cp_config, store.postgres.password)},
            {offsetof(struct km_cp_config, store.postgres.db_name)},
        };
        for (size_t i = 0; i < KM_ARRAY_LEN(required); i++) {
            const struct cfg_opt *o = opt_by_field(required[i].off);
            if (o && opt_str_get(cfg, o)[0] == '\0')
                km_errs_add(errs, cfg_name(o->off, origin),
                            "must not be empty when store.type is postgres");
        }
        const char *mode = cfg->store.postgres.tls.mode;
        bool verify = strcmp(mode, "verifyCa") == 0 || strcmp(mode, "verifyFull") == 0;
        if (verify && cfg->store.postgres.tls.ca_path[0] == '\0')
            km_errs_add(errs, CFG_NAME(store.postgres.tls.ca_path),
                        "must be set when store.postgres.tls.mode is %s", mode);
        bool has_cert = cfg->store.postgres.tls.cert_path[0] != '\0';
        bool has_key = cfg->store.postgres.tls.key_path[0] != '\0';
        if (has_cert && !has_key)
            km_errs_add(errs, CFG_NAME(store.postgres.tls.key_path),
                        "must be set when store.postgres.tls.certPath is set");
        if (has_key && !has_cert)
            km_errs_add(errs, CFG_NAME(store.postgres.tls.cert_path),
                        "must be set when store.postgres.tls.keyPath is set");
    }
    if ((cfg->general.tls_cert_file[0] != '\0') != (cfg->general.tls_key_file[0] != '\0'))
        km_errs_add(errs,
                    cfg->general.tls_cert_file[0] ? CFG_NAME(general.tls_key_file)
                                                  : CFG_NAME(general.tls_cert_file),
                    "general.tlsCertFile and tlsKeyFile must be set together");
    bool api_cert = cfg->api_server.https.tls_cert_file[0] != '\0';
    bool api_key = cfg->api_server.https.tls_key_file[0] != '\0';
    if (api_cert != api_key)
        km_errs_add(errs,
                    api_cert ? CFG_NAME(api_server.https.tls_key_file)
                             : CFG_NAME(api_server.https.tls_cert_file),
                    "apiServer.https.tlsCertFile and tlsKeyFile must be set together");
}

/* ---- public API -------------------------------------------------------------------------- */

void
km_cp_config_defaults(struct km_cp_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < CFG_NOPTS; i++) {
        const struct cfg_opt *o = &cfg_opts[i];
        switch (o->type) {
        case CFG_STR:
        case CFG_ENUM:
            *opt_str(cfg, o) = km_xstrdup(o->def_str);
            break;
        case CFG_INT:
            *opt_int(cfg, o) = (int)o->def_int;
            break;
        case CFG_BOOL:
            *opt_bool(cfg, o) = o->def_int != 0;
            break;
        }
    }
    cfg->api_server.max_body_bytes = CFG_API_MAX_BODY;
    cfg->log_level = km_xstrdup("info");
}

int
km_cp_config_load(struct km_cp_config *cfg, const char *path, char *const *envp,
                  struct km_errs *errs)
{
    enum cfg_origin origin[CFG_NOPTS] = {CFG_FROM_DEFAULT};

    km_cp_config_defaults(cfg);
    if (path)
        cfg_load_file(cfg, path, origin, errs);
    if (envp)
        cfg_load_env(cfg, envp, origin, errs);
    cfg_check(cfg, origin, errs);
    return km_errs_any(errs) ? KM_EINVAL : 0;
}

void
km_cp_config_deinit(struct km_cp_config *cfg)
{
    for (size_t i = 0; i < CFG_NOPTS; i++) {
        const struct cfg_opt *o = &cfg_opts[i];
        if (o->type == CFG_STR || o->type == CFG_ENUM)
            KM_FREE(*opt_str(cfg, o));
    }
    KM_FREE(cfg->log_level);
}

/* Returns the mapping at the parent of dotted <path> inside <root>, creating the missing
 * levels; <*leaf> points at the last key. */
static json_t *
cfg_dump_parent(json_t *root, const char *path, const char **leaf)
{
    json_t *cur = root;
    const char *seg = path;
    const char *dot;
    while ((dot = strchr(seg, '.')) != NULL) {
        size_t len = (size_t)(dot - seg);
        json_t *next = json_object_getn(cur, seg, len);
        if (!next) {
            next = json_object();
            json_object_setn_new(cur, seg, len, next);
        }
        cur = next;
        seg = dot + 1;
    }
    *leaf = seg;
    return cur;
}

char *
km_cp_config_dump_yaml(const struct km_cp_config *cfg)
{
    json_t *root = json_object();
    for (size_t i = 0; i < CFG_NOPTS; i++) {
        const struct cfg_opt *o = &cfg_opts[i];
        const char *leaf;
        json_t *parent = cfg_dump_parent(root, o->path, &leaf);
        json_t *v = NULL;
        switch (o->type) {
        case CFG_STR:
        case CFG_ENUM: {
            const char *s = opt_str_get(cfg, o);
            /* Kuma prints secrets as "*****" (config.SanitizedValue). */
            v = json_string((o->flags & CFG_F_SECRET) ? "*****" : (s ? s : ""));
            break;
        }
        case CFG_INT:
            v = json_integer(opt_int_get(cfg, o));
            break;
        case CFG_BOOL:
            v = json_boolean(opt_bool_get(cfg, o));
            break;
        }
        if (!v) /* invalid UTF-8 in a value: print it empty rather than fail */
            v = json_string("");
        json_object_set_new(parent, leaf, v);
    }
    char *out = km_yaml_dump(root);
    json_decref(root);
    return out;
}

size_t
km_cp_config_key_count(void)
{
    return CFG_NOPTS;
}

bool
km_cp_config_key_get(size_t i, const char **path, const char **env)
{
    if (i >= CFG_NOPTS)
        return false;
    if (path)
        *path = cfg_opts[i].path;
    if (env)
        *env = cfg_opts[i].env;
    return true;
}
