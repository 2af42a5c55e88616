/* `kuma-dp run` flags and KUMA_* variables. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <km/common/util.h>
#include <km/common/yamljson.h>
#include <km/ctl/template.h>
#include <km/dp/dp_config.h>

#define MAX_FILE (1u * 1024 * 1024)
#define MAX_VARS 256

const char km_dp_run_usage[] =
    "Usage: kuma-dp run [flags]\n"
    "\n"
    "Registers with the control plane and runs the proxy, configured over xDS.\n"
    "\n"
    "Flags (environment variable in brackets):\n"
    "      --cp-address URL            DP server of the control plane, https://HOST:5678 or\n"
    "                                  http://HOST:PORT for a plaintext port\n"
    "                                  (KUMA_CONTROL_PLANE_URL; default https://localhost:5678)\n"
    "      --ca-cert-file FILE         CA certificate that signs the DP server's certificate\n"
    "                                  (KUMA_CONTROL_PLANE_CA_CERT_FILE)\n"
    "  -d, --dataplane-file FILE       Dataplane resource template (YAML or JSON)\n"
    "                                  (KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH)\n"
    "      --dataplane YAML            Dataplane resource template inline\n"
    "                                  (KUMA_DATAPLANE_RUNTIME_RESOURCE)\n"
    "  -v, --dataplane-var KEY=VALUE   template variable, repeatable\n"
    "      --dataplane-token TOKEN     dataplane token (KUMA_DATAPLANE_RUNTIME_TOKEN)\n"
    "      --dataplane-token-file FILE (KUMA_DATAPLANE_RUNTIME_TOKEN_PATH)\n"
    "      --name NAME                 Dataplane name (KUMA_DATAPLANE_NAME)\n"
    "      --mesh MESH                 mesh (KUMA_DATAPLANE_MESH)\n"
    "      --proxy-type TYPE           dataplane (KUMA_DATAPLANE_PROXY_TYPE)\n"
    "      --admin-port PORT           admin listener on 127.0.0.1, 0 = none\n"
    "                                  (KUMA_DATAPLANE_ADMIN_PORT; default 9901)\n"
    "      --concurrency N             worker threads, 0 = one per CPU\n"
    "                                  (KUMA_DATAPLANE_RUNTIME_CONCURRENCY)\n"
    "      --drain-time DURATION       drain time on SIGTERM (KUMA_DATAPLANE_DRAIN_TIME; 30s)\n"
    "      --retry-backoff DURATION    wait between attempts to reach the control plane\n"
    "                                  (KUMA_CONTROL_PLANE_RETRY_BACKOFF; 3s)\n"
    "      --xds-sotw                  state-of-the-world xDS instead of delta\n"
    "                                  (KUMA_DATAPLANE_XDS_SOTW=true)\n"
    "      --log-level LEVEL           error, warn, info, debug (default info)\n"
    "  -h, --help                      this text\n";

static int KM_PRINTF(3, 4)
    fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static void
set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? km_xstrdup(v) : NULL;
}

static bool
parse_duration_ms(const char *v, int64_t *ms)
{
    int64_t ns;
    if (!km_duration_parse(v, false, &ns) || ns < 0)
        return false;
    *ms = ns / 1000000;
    return true;
}

static bool
parse_int(const char *v, long lo, long hi, long *out)
{
    if (!v || !*v)
        return false;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < lo || n > hi)
        return false;
    *out = n;
    return true;
}

static bool
parse_bool(const char *v, bool *out)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || !*v) {
        *out = false;
        return true;
    }
    return false;
}

static int
add_var(struct km_dp_config *c, const char *who, const char *kv, char *err, size_t errlen)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return fail(err, errlen, "%s: \"%s\" is not of the form KEY=VALUE", who, kv);
    if (c->nvars >= MAX_VARS)
        return fail(err, errlen, "%s: more than %d variables", who, MAX_VARS);
    c->var_keys = km_xrealloc(c->var_keys, (c->nvars + 1) * sizeof(char *));
    c->var_vals = km_xrealloc(c->var_vals, (c->nvars + 1) * sizeof(char *));
    c->var_keys[c->nvars] = km_xstrndup(kv, (size_t)(eq - kv));
    c->var_vals[c->nvars] = km_xstrdup(eq + 1);
    c->nvars++;
    return 0;
}

/* One setting by its flag name (without "--"); <who> names the flag or variable in errors. */
static int
apply(struct km_dp_config *c, const char *key, const char *v, const char *who, char *err,
      size_t errlen)
{
    long n;
    if (strcmp(key, "cp-address") == 0) {
        set_str(&c->cp_address, v);
    } else if (strcmp(key, "ca-cert-file") == 0) {
        set_str(&c->ca_cert_file, v);
    } else if (strcmp(key, "ca-cert") == 0) {
        set_str(&c->ca_cert, v);
    } else if (strcmp(key, "dataplane-file") == 0) {
        set_str(&c->resource_file, v);
    } else if (strcmp(key, "dataplane") == 0) {
        set_str(&c->resource, v);
    } else if (strcmp(key, "dataplane-var") == 0) {
        return add_var(c, who, v, err, errlen);
    } else if (strcmp(key, "dataplane-token") == 0) {
        set_str(&c->token, v);
    } else if (strcmp(key, "dataplane-token-file") == 0) {
        set_str(&c->token_file, v);
    } else if (strcmp(key, "name") == 0) {
        set_str(&c->name, v);
    } else if (strcmp(key, "mesh") == 0) {
        set_str(&c->mesh, v);
    } else if (strcmp(key, "proxy-type") == 0) {
        if (strcmp(v, "dataplane") != 0)
            return fail(err, errlen,
                        "%s: \"%s\" is not supported (only dataplane; ingress and egress are "
                        "not implemented)",
                        who, v);
        set_str(&c->proxy_type, v);
    } else if (strcmp(key, "admin-port") == 0) {
        if (!parse_int(v, 0, 65535, &n))
            return fail(err, errlen, "%s: \"%s\" is not a port number (0..65535)", who, v);
        c->admin_port = (int)n;
    } else if (strcmp(key, "concurrency") == 0) {
        if (!parse_int(v, 0, 1024, &n))
            return fail(err, errlen, "%s: \"%s\" is not a number of threads (0..1024)", who, v);
        c->concurrency = (unsigned)n;
    } else if (strcmp(key, "drain-time") == 0) {
        if (!parse_duration_ms(v, &c->drain_ms))
            return fail(err, errlen, "%s: \"%s\" is not a duration (e.g. 30s)", who, v);
    } else if (strcmp(key, "retry-backoff") == 0) {
        if (!parse_duration_ms(v, &c->retry_backoff_ms) || c->retry_backoff_ms <= 0)
            return fail(err, errlen, "%s: \"%s\" is not a positive duration (e.g. 3s)", who, v);
    } else if (strcmp(key, "retry-max-duration") == 0) {
        if (!parse_duration_ms(v, &c->retry_max_ms) || c->retry_max_ms <= 0)
            return fail(err, errlen, "%s: \"%s\" is not a positive duration (e.g. 5m)", who, v);
    } else if (strcmp(key, "xds-sotw") == 0) {
        if (!parse_bool(v, &c->xds_sotw))
            return fail(err, errlen, "%s: \"%s\" is not true or false", who, v);
    } else if (strcmp(key, "log-level") == 0) {
        enum km_log_level l;
        if (!km_log_level_parse(v, &l))
            return fail(err, errlen, "%s: \"%s\" is not one of error, warn, info, debug", who, v);
        set_str(&c->log_level, v);
    } else {
        return fail(err, errlen, "unknown flag %s", who);
    }
    return 0;
}

static const struct {
    const char *env, *key;
} env_map[] = {
    {"KUMA_CONTROL_PLANE_URL", "cp-address"},
    {"KUMA_CONTROL_PLANE_CA_CERT_FILE", "ca-cert-file"},
    {"KUMA_CONTROL_PLANE_CA_CERT", "ca-cert"},
    {"KUMA_CONTROL_PLANE_RETRY_BACKOFF", "retry-backoff"},
    {"KUMA_CONTROL_PLANE_RETRY_MAX_DURATION", "retry-max-duration"},
    {"KUMA_DATAPLANE_NAME", "name"},
    {"KUMA_DATAPLANE_MESH", "mesh"},
    {"KUMA_DATAPLANE_PROXY_TYPE", "proxy-type"},
    {"KUMA_DATAPLANE_DRAIN_TIME", "drain-time"},
    {"KUMA_DATAPLANE_ADMIN_PORT", "admin-port"},
    {"KUMA_DATAPLANE_RUNTIME_CONCURRENCY", "concurrency"},
    {"KUMA_DATAPLANE_RUNTIME_TOKEN", "dataplane-token"},
    {"KUMA_DATAPLANE_RUNTIME_TOKEN_PATH", "dataplane-token-file"},
    {"KUMA_DATAPLANE_RUNTIME_RESOURCE", "dataplane"},
    {"KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH", "dataplane-file"},
    {"KUMA_DATAPLANE_XDS_SOTW", "xds-sotw"},
};

/* Flags that take no value. */
static bool
is_switch(const char *key)
{
    return strcmp(key, "xds-sotw") == 0;
}

int
km_dp_config_load(struct km_dp_config *c, int argc, char **argv, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    c->cp_address = km_xstrdup("https://localhost:5678");
    c->proxy_type = km_xstrdup("dataplane");
    c->retry_backoff_ms = 3000;
    c->retry_max_ms = 5 * 60 * 1000;
    c->drain_ms = 30000;
    c->admin_port = 9901;
    for (size_t i = 0; i < KM_ARRAY_LEN(env_map); i++) {
        const char *v = getenv(env_map[i].env);
        if (v && *v && apply(c, env_map[i].key, v, env_map[i].env, err, errlen) != 0)
            return -1;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        char key[64];
        const char *val = NULL;
        if (strcmp(a, "-d") == 0 || strcmp(a, "-v") == 0) {
            snprintf(key, sizeof(key), "%s", a[1] == 'd' ? "dataplane-file" : "dataplane-var");
        } else if (strncmp(a, "--", 2) == 0 && a[2]) {
            const char *eq = strchr(a + 2, '=');
            size_t kl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (kl >= sizeof(key))
                return fail(err, errlen, "unknown flag %.80s", a);
            memcpy(key, a + 2, kl);
            key[kl] = '\0';
            if (eq)
                val = eq + 1;
        } else {
            return fail(err, errlen, "unexpected argument \"%.200s\" (see kuma-dp run --help)",
                        a);
        }
        char who[80];
        snprintf(who, sizeof(who), "--%s", key);
        if (is_switch(key)) {
            if (apply(c, key, val ? val : "true", who, err, errlen) != 0)
                return -1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc)
                return fail(err, errlen, "%s: a value is required", who);
            val = argv[++i];
        }
        if (apply(c, key, val, who, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* Splits the CP URL into scheme, host and port. */
static int
parse_url(struct km_dp_config *c, char *err, size_t errlen)
{
    const char *u = c->cp_address, *rest;
    if (strncmp(u, "https://", 8) == 0) {
        c->cp_tls = true;
        rest = u + 8;
    } else if (strncmp(u, "http://", 7) == 0) {
        c->cp_tls = false;
        rest = u + 7;
    } else {
        return fail(err, errlen,
                    "--cp-address: \"%.200s\" must start with https:// (or http:// for a "
                    "plaintext port)",
                    u);
    }
    const char *end = rest + strcspn(rest, "/?#");
    if (*end && strcmp(end, "/") != 0)
        return fail(err, errlen, "--cp-address: \"%.200s\" must not have a path", u);
    const char *host = rest, *hend, *colon;
    if (*rest == '[') {
        host = rest + 1;
        hend = memchr(rest, ']', (size_t)(end - rest));
        if (!hend)
            return fail(err, errlen, "--cp-address: \"%.200s\": unclosed [", u);
        colon = hend[1] == ':' ? hend + 1 : NULL;
    } else {
        colon = memchr(rest, ':', (size_t)(end - rest));
        hend = colon ? colon : end;
    }
    if (hend == host)
        return fail(err, errlen, "--cp-address: \"%.200s\" has no host", u);
    long port = c->cp_tls ? 5678 : 80;
    if (colon) {
        char pbuf[16];
        size_t pl = (size_t)(end - colon - 1);
        if (pl == 0 || pl >= sizeof(pbuf))
            return fail(err, errlen, "--cp-address: \"%.200s\" has an invalid port", u);
        memcpy(pbuf, colon + 1, pl);
        pbuf[pl] = '\0';
        if (!parse_int(pbuf, 1, 65535, &port))
            return fail(err, errlen, "--cp-address: \"%.200s\" has an invalid port", u);
    }
    free(c->cp_host);
    c->cp_host = km_xstrndup(host, (size_t)(hend - host));
    c->cp_port = (int)port;
    return 0;
}

static const char *
jstr(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int
km_dp_config_finish(struct km_dp_config *c, char *err, size_t errlen)
{
    if (parse_url(c, err, errlen) != 0)
        return -1;
    if (c->ca_cert_file) {
        FILE *f = fopen(c->ca_cert_file, "r");
        if (!f)
            return fail(err, errlen, "--ca-cert-file: cannot read %s: %s", c->ca_cert_file,
                        strerror(errno));
        fclose(f);
    }
    if (c->drain_ms <= 0)
        return fail(err, errlen, "--drain-time: must be a positive duration");
    if (c->token && c->token_file)
        return fail(err, errlen,
                    "--dataplane-token and --dataplane-token-file cannot be used together");
    if (c->token_file) {
        size_t len;
        char *t = km_read_file(c->token_file, 64 * 1024, &len);
        if (!t)
            return fail(err, errlen, "--dataplane-token-file: cannot read %s: %s",
                        c->token_file, strerror(errno));
        /* Token files usually end with a newline. */
        while (len && (t[len - 1] == '\n' || t[len - 1] == '\r' || t[len - 1] == ' '))
            t[--len] = '\0';
        free(c->token);
        c->token = t;
    }
    if (c->resource && c->resource_file)
        return fail(err, errlen, "--dataplane and --dataplane-file cannot be used together");
    char *tmpl = NULL;
    size_t tlen = 0;
    const char *src = "--dataplane";
    if (c->resource_file) {
        src = "--dataplane-file";
        tmpl = km_read_file(c->resource_file, MAX_FILE, &tlen);
        if (!tmpl)
            return fail(err, errlen, "--dataplane-file: cannot read %s: %s", c->resource_file,
                        errno == EFBIG ? "larger than 1 MiB" : strerror(errno));
    } else if (c->resource) {
        tmpl = km_xstrdup(c->resource);
        tlen = strlen(tmpl);
    } else if (c->nvars) {
        return fail(err, errlen, "--dataplane-var: needs --dataplane or --dataplane-file");
    }
    if (tmpl) {
        char terr[256];
        char *text = km_ctl_template_render(tmpl, tlen, c->var_keys, c->var_vals, c->nvars,
                                            terr, sizeof(terr));
        free(tmpl);
        if (!text)
            return fail(err, errlen, "%s: template: %s", src, terr);
        json_t *doc = km_yaml_load(text, strlen(text), terr, sizeof(terr));
        free(text);
        if (!doc)
            return fail(err, errlen, "%s: not valid YAML: %s", src, terr);
        if (!json_is_object(doc)) {
            json_decref(doc);
            return fail(err, errlen, "%s: must be a Dataplane resource (a YAML mapping)", src);
        }
        const char *type = jstr(doc, "type"), *name = jstr(doc, "name"), *mesh = jstr(doc, "mesh");
        if (!type || strcmp(type, "Dataplane") != 0) {
            json_decref(doc);
            return fail(err, errlen, "%s: type: must be Dataplane", src);
        }
        if (c->name && name && strcmp(c->name, name) != 0) {
            fail(err, errlen, "--name \"%s\" differs from the name in %s (\"%s\")", c->name,
                 src, name);
            json_decref(doc);
            return -1;
        }
        if (c->mesh && mesh && strcmp(c->mesh, mesh) != 0) {
            fail(err, errlen, "--mesh \"%s\" differs from the mesh in %s (\"%s\")", c->mesh,
                 src, mesh);
            json_decref(doc);
            return -1;
        }
        if (!c->name && name)
            c->name = km_xstrdup(name);
        if (!c->mesh)
            c->mesh = km_xstrdup(mesh && *mesh ? mesh : "default");
        free(c->dataplane_json);
        c->dataplane_json = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
    }
    if (!c->name || !*c->name)
        return fail(err, errlen, "--name: must be set (or given as name in the Dataplane)");
    if (!c->mesh || !*c->mesh)
        return fail(err, errlen, "--mesh: must be set (or given as mesh in the Dataplane)");
    if (strpbrk(c->name, "$(){}"))
        return fail(err, errlen, "--name: \"%s\" contains invalid characters", c->name);
    return 0;
}

void
km_dp_config_deinit(struct km_dp_config *c)
{
    free(c->cp_address);
    free(c->ca_cert_file);
    free(c->ca_cert);
    free(c->cp_host);
    free(c->name);
    free(c->mesh);
    free(c->proxy_type);
    free(c->token);
    free(c->token_file);
    free(c->resource_file);
    free(c->resource);
    for (size_t i = 0; i < c->nvars; i++) {
        free(c->var_keys[i]);
        free(c->var_vals[i]);
    }
    free(c->var_keys);
    free(c->var_vals);
    free(c->log_level);
    free(c->dataplane_json);
    memset(c, 0, sizeof(*c));
}
